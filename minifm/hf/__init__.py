"""Bridges to Hugging Face: converters from transformers / diffusers objects, and a loader.

This package is the only place in minifm that imports transformers or diffusers. Each converter
reads the Hugging Face config, builds the matching minifm module, copies every tensor and raises
ValueError listing missing or unexpected keys.

    from minifm.hf import from_transformers, from_diffusers
    ours = from_transformers(hf_model)      # ViTModel, ViTForImageClassification, ...
    ours = from_diffusers(hf_object)        # UNet2DModel, DDPMScheduler, DDIMScheduler, ...
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

# Class name -> "module:function" of its converter. Modules are imported on first use.
TRANSFORMERS_CONVERTERS = {
    "ViTModel": "minifm.hf.vit:vit_from_transformers",
    "ViTForImageClassification": "minifm.hf.vit:vit_from_transformers",
    "ViTMAEForPreTraining": "minifm.hf.mae:mae_from_transformers",
    "CLIPModel": "minifm.hf.clip:clip_from_transformers",
    "BertModel": "minifm.hf.bert:bert_from_transformers",
}
DIFFUSERS_CONVERTERS = {
    "DDPMScheduler": "minifm.hf.diffusers_schedulers:scheduler_from_diffusers",
    "DDIMScheduler": "minifm.hf.diffusers_schedulers:scheduler_from_diffusers",
    "UNet2DModel": "minifm.hf.unet:unet_from_diffusers",
}


def _convert(obj, table: dict[str, str], library: str):
    name = type(obj).__name__
    if name not in table:
        raise TypeError(f"cannot convert a {name} from {library}; supported: {sorted(table)}")
    module_name, function_name = table[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)(obj)


def from_transformers(model):
    """Convert a transformers model into the equivalent minifm module, with its weights."""
    return _convert(model, TRANSFORMERS_CONVERTERS, "transformers")


def from_diffusers(obj):
    """Convert a diffusers model or scheduler into the equivalent minifm object."""
    return _convert(obj, DIFFUSERS_CONVERTERS, "diffusers")


def _read_config(name_or_path: str, subfolder: str = "") -> dict:
    """Read config.json (or scheduler_config.json) from a local folder or the hub cache."""
    for filename in ("config.json", "scheduler_config.json"):
        local = Path(name_or_path, subfolder, filename)
        if local.is_file():
            return json.loads(local.read_text())
        if not os.path.isdir(name_or_path):
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                path = hf_hub_download(name_or_path, filename, subfolder=subfolder or None)
            except EntryNotFoundError:
                continue
            return json.loads(Path(path).read_text())
    raise FileNotFoundError(f"no config.json or scheduler_config.json found in {name_or_path!r}")


def load_pretrained(name_or_path: str, *, subfolder: str = "", **kwargs):
    """Load a Hugging Face model with `from_pretrained` and convert it to minifm.

    `name_or_path` is a local folder (works offline) or a hub id (downloads where the hub is
    reachable, or reads the local cache with `HF_HUB_OFFLINE=1`). Extra keyword arguments go to
    `from_pretrained`, for example `local_files_only=True`.
    """
    config = _read_config(name_or_path, subfolder)
    if "_class_name" in config:
        import diffusers

        cls = getattr(diffusers, config["_class_name"])
        extra = {"subfolder": subfolder} if subfolder else {}
        return from_diffusers(cls.from_pretrained(name_or_path, **extra, **kwargs))
    import transformers

    architectures = config.get("architectures") or []
    if not architectures:
        raise ValueError(f"config of {name_or_path!r} names no architecture to load")
    model = getattr(transformers, architectures[0]).from_pretrained(name_or_path, **kwargs)
    return from_transformers(model.eval())


__all__ = ["from_diffusers", "from_transformers", "load_pretrained"]
