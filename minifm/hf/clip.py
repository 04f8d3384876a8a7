"""Convert transformers' `CLIPModel` into `minifm.clip.CLIP`, and wrap transformers tokenizers.

transformers stores the class token as a (D,) vector and the position embeddings as an
embedding table (1 + N, D). minifm's ViT keeps them as (1, 1, D) and (1, 1 + N, D) parameters,
so the converter reshapes both before loading.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

from torch import Tensor

from minifm.clip import CLIP, CLIPConfig, CLIPTextConfig
from minifm.hf.common import load_converted, reject_unsupported
from minifm.nn import ACTIVATIONS
from minifm.tokenizer import PADDINGS, TokenBatch
from minifm.vit import ViTConfig


def tower_block_rules(source: str, target: str) -> list[tuple[str, str]]:
    """Rules that rename one tower's `<source>encoder.layers.<i>` keys to `<target>blocks.<i>`."""
    layer = rf"^{source}encoder\.layers\.(\d+)\."
    return [
        (layer + r"self_attn\.([qkv])_proj\.", rf"{target}blocks.\1.attn.\2."),
        (layer + r"self_attn\.out_proj\.", rf"{target}blocks.\1.attn.out."),
        (layer + r"layer_norm1\.", rf"{target}blocks.\1.norm1."),
        (layer + r"layer_norm2\.", rf"{target}blocks.\1.norm2."),
        (layer + r"mlp\.", rf"{target}blocks.\1.mlp."),
    ]


CLIP_RULES = [
    (r"^text_model\.embeddings\.token_embedding\.", "text.token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.", "text.position_embedding."),
    *tower_block_rules(r"text_model\.", "text."),
    (r"^text_model\.final_layer_norm\.", "text.norm."),
    (r"^vision_model\.embeddings\.class_embedding$", "vision.vit.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "vision.vit.pos_embed"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "vision.vit.patch_embed.projection."),
    (r"^vision_model\.pre_layrnorm\.", "vision.pre_layernorm."),
    *tower_block_rules(r"vision_model\.", "vision.vit."),
    (r"^vision_model\.post_layernorm\.", "vision.vit.norm."),
]


def clip_config_from_transformers(hf_config) -> CLIPConfig:
    """Translate a transformers `CLIPConfig` to minifm's, field by field."""
    text, vision = hf_config.text_config, hf_config.vision_config
    reject_unsupported(text, "hidden_act", sorted(ACTIVATIONS), "CLIP text tower")
    reject_unsupported(vision, "hidden_act", sorted(ACTIVATIONS), "CLIP vision tower")
    text_config = CLIPTextConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        intermediate_size=text.intermediate_size,
        max_position_embeddings=text.max_position_embeddings,
        hidden_act=text.hidden_act,
        layer_norm_eps=text.layer_norm_eps,
        eos_token_id=text.eos_token_id,
    )
    vision_config = ViTConfig(
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        num_channels=vision.num_channels,
        hidden_size=vision.hidden_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        intermediate_size=vision.intermediate_size,
        hidden_act=vision.hidden_act,
        layer_norm_eps=vision.layer_norm_eps,
        qkv_bias=True,
        num_labels=0,
    )
    return CLIPConfig(
        text_config,
        vision_config,
        projection_dim=hf_config.projection_dim,
        logit_scale_init_value=hf_config.logit_scale_init_value,
    )


def clip_from_transformers(model) -> CLIP:
    """Build a minifm CLIP equal to a transformers `CLIPModel`, with all its weights."""
    config = clip_config_from_transformers(model.config)
    # transformers does not clamp the temperature, so keep a checkpoint's larger value exact.
    scale = math.exp(model.logit_scale.item())
    if scale > config.logit_scale_max:
        config = dataclasses.replace(config, logit_scale_max=scale)
    ours = CLIP(config)
    state = dict(model.state_dict())
    cls_key = "vision_model.embeddings.class_embedding"
    position_key = "vision_model.embeddings.position_embedding.weight"
    if cls_key in state:
        state[cls_key] = state[cls_key].reshape(1, 1, -1)  # (D,) -> (1, 1, D)
    if position_key in state:
        state[position_key] = state[position_key][None]  # (1 + N, D) -> (1, 1 + N, D)
    return load_converted(ours, state, CLIP_RULES, "CLIPModel state dict")


class PretrainedTokenizer:
    """A transformers tokenizer behind the call interface of `minifm.tokenizer.BPETokenizer`."""

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        padding: str = "max_length",
        truncation: bool = False,
    ) -> TokenBatch:
        """Encode texts with the tokenizer's own special tokens; arguments as `BPETokenizer`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        max_length = self.context_length if max_length is None else max_length
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}; got {padding!r}")
        encoded = self.tokenizer(
            texts,
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            return_tensors="pt",
        )
        lengths = encoded["attention_mask"].sum(dim=1)
        if (lengths > max_length).any():
            index = int((lengths > max_length).nonzero()[0])
            raise ValueError(
                f"text {index} ({texts[index][:40]!r}...) is {int(lengths[index])} tokens long, "
                f"more than max_length={max_length}; pass truncation=True to cut it"
            )
        return TokenBatch(encoded["input_ids"], encoded["attention_mask"])


def load_cached_clip(
    name_or_path: str = "openai/clip-vit-base-patch32",
) -> tuple[CLIP, PretrainedTokenizer, Callable[[Tensor], Tensor]] | None:
    """Load a CLIP checkpoint from a local folder or the local Hugging Face cache, never the hub.

    Returns the converted model, its tokenizer and a function that turns images (B, C, Hi, Wi)
    in [0, 1] into the model's resized, cropped and normalised input. Returns None when the
    checkpoint is neither a folder nor in the cache.
    """
    from huggingface_hub import try_to_load_from_cache

    local = os.path.isdir(name_or_path)
    if not local and not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return None
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(name_or_path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(name_or_path, local_files_only=True)

    def preprocess(images: Tensor) -> Tensor:
        return processor(images=list(images), do_rescale=False, return_tensors="pt")["pixel_values"]

    context_length = model.config.text_config.max_position_embeddings
    return clip_from_transformers(model), PretrainedTokenizer(tokenizer, context_length), preprocess
