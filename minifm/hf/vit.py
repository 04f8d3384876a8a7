"""Convert transformers' `ViTModel` and `ViTForImageClassification` into `minifm.vit.ViT`."""

from __future__ import annotations

from minifm.hf.common import load_converted, reject_unsupported, strip_prefix
from minifm.nn import ACTIVATIONS
from minifm.vit import ViT, ViTConfig

# transformers >= 5 names, then the older names still found in checkpoints on disk.
VIT_BLOCK_RULES = [
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"blocks.\1.attn.q."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"blocks.\1.attn.k."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"blocks.\1.attn.v."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.out."),
    (r"^layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^layers\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"blocks.\1.attn.q."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"blocks.\1.attn.k."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"blocks.\1.attn.v."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.out."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
]
VIT_EMBEDDING_RULES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.projection."),
]
VIT_RULES = [
    *VIT_EMBEDDING_RULES,
    *VIT_BLOCK_RULES,
    (r"^layernorm\.", "norm."),
    (r"^pooler\.dense\.", "pooler."),
    (r"^classifier\.", "head."),
]


def vit_config_from_transformers(hf_config, **overrides) -> ViTConfig:
    """Translate a transformers `ViTConfig` (or a config with the same fields) to minifm's."""
    reject_unsupported(hf_config, "hidden_act", sorted(ACTIVATIONS), "ViT")
    fields = dict(
        image_size=hf_config.image_size,
        patch_size=hf_config.patch_size,
        num_channels=hf_config.num_channels,
        hidden_size=hf_config.hidden_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_attention_heads=hf_config.num_attention_heads,
        intermediate_size=hf_config.intermediate_size,
        hidden_act=hf_config.hidden_act,
        layer_norm_eps=hf_config.layer_norm_eps,
        qkv_bias=hf_config.qkv_bias,
        hidden_dropout_prob=hf_config.hidden_dropout_prob,
        attention_probs_dropout_prob=hf_config.attention_probs_dropout_prob,
    )
    return ViTConfig(**{**fields, **overrides})


def vit_from_transformers(model) -> ViT:
    """Build a minifm ViT equal to a transformers `ViTModel` or `ViTForImageClassification`."""
    config = model.config
    if type(model).__name__ == "ViTForImageClassification":
        ours = ViT(vit_config_from_transformers(config, num_labels=config.num_labels))
    else:
        pooler = getattr(model, "pooler", None) is not None
        ours = ViT(
            vit_config_from_transformers(
                config,
                pooler_act=config.pooler_act if pooler else None,
                pooler_output_size=config.pooler_output_size if pooler else None,
            )
        )
    state = strip_prefix(model.state_dict(), "vit.")
    return load_converted(ours, state, VIT_RULES, f"{type(model).__name__} state dict")
