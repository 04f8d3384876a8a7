"""Checkpoints as safetensors files, written atomically, loaded with strict key checks.

safetensors stores raw tensors and a string-to-string metadata header, so loading a checkpoint
never runs code from the file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] = None
) -> None:
    """Write `tensors` to `path` atomically: to a temporary file first, then renamed over `path`.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().clone() for name, t in tensors.items()}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=dict(metadata or {}))
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read every tensor and the metadata header of a safetensors file."""
    with safe_open(str(path), framework="pt") as file:
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
        return tensors, dict(file.metadata() or {})


def check_keys(expected: Iterable[str], found: Iterable[str], source: str) -> None:
    """Raise ValueError listing missing and unexpected keys when the two key sets differ."""
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the model: missing keys {missing}, unexpected keys "
            f"{unexpected}"
        )


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], source: str
) -> None:
    """Load every tensor of `state_dict` into `module`; reject missing, extra or misshapen ones."""
    own = module.state_dict()
    check_keys(own, state_dict, source)
    wrong = {
        name: (tuple(t.shape), tuple(own[name].shape))
        for name, t in state_dict.items()
        if t.shape != own[name].shape
    }
    if wrong:
        details = ", ".join(f"{n}: got {g}, expected {e}" for n, (g, e) in sorted(wrong.items()))
        raise ValueError(f"{source} has tensors of the wrong shape: {details}")
    module.load_state_dict(state_dict, strict=True)


def save_model(
    module: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] = None
) -> None:
    """Save the parameters and buffers of `module` to a safetensors file."""
    save_tensors(path, module.state_dict(), metadata)


def load_model(module: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Load a safetensors file written by `save_model` into `module`; return its metadata."""
    tensors, metadata = load_tensors(path)
    load_state_dict_strict(module, tensors, f"checkpoint {os.fspath(path)!r}")
    return metadata
