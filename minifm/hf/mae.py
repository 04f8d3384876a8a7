"""Convert transformers' `ViTMAEForPreTraining` into `minifm.mae.MAE`.

The encoder side reuses the ViT renaming rules under the `vit.` prefix. The decoder blocks are
ViT layers too, stored under `decoder.decoder_layers.N.` in transformers 4 and 5 alike, so their
rules are the ViT block rules with that prefix.
"""

from __future__ import annotations

from minifm.hf.common import load_converted, reject_unsupported
from minifm.hf.vit import VIT_BLOCK_RULES, VIT_EMBEDDING_RULES, vit_config_from_transformers
from minifm.mae import MAE, MAEConfig

# Prefixes under which VIT_BLOCK_RULES find the blocks (transformers >= 5, then older versions).
VIT_LAYER_PREFIXES = (r"^layers\.", r"^encoder\.layer\.")


def encoder_rules() -> list[tuple[str, str]]:
    """Rules for `vit.*` keys: the ViT embedding, block and final-norm rules, into `encoder.`."""
    rules = [*VIT_EMBEDDING_RULES, *VIT_BLOCK_RULES, (r"^layernorm\.", "norm.")]
    return [(r"^vit\." + pattern[1:], "encoder." + target) for pattern, target in rules]


def decoder_block_rules() -> list[tuple[str, str]]:
    """Rules for `decoder.decoder_layers.N.*` keys, into `decoder_blocks.N.`."""
    rules = []
    for pattern, target in VIT_BLOCK_RULES:
        prefix = next(p for p in VIT_LAYER_PREFIXES if pattern.startswith(p))
        rules.append((r"^decoder\.decoder_layers\." + pattern[len(prefix) :], "decoder_" + target))
    return rules


MAE_RULES = [
    *encoder_rules(),
    *decoder_block_rules(),
    (r"^decoder\.(decoder_embed|decoder_norm|decoder_pred)\.", r"\1."),
    (r"^decoder\.(mask_token|decoder_pos_embed)$", r"\1"),
]


def mae_config_from_transformers(hf_config) -> MAEConfig:
    """Translate a transformers `ViTMAEConfig` into an `MAEConfig`, rejecting what MAE lacks."""
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        reject_unsupported(hf_config, name, [0.0], "MAE")
    return MAEConfig(
        encoder=vit_config_from_transformers(hf_config),
        decoder_hidden_size=hf_config.decoder_hidden_size,
        decoder_num_hidden_layers=hf_config.decoder_num_hidden_layers,
        decoder_num_attention_heads=hf_config.decoder_num_attention_heads,
        decoder_intermediate_size=hf_config.decoder_intermediate_size,
        mask_ratio=hf_config.mask_ratio,
        norm_pix_loss=hf_config.norm_pix_loss,
    )


def mae_from_transformers(model) -> MAE:
    """Build a minifm MAE equal to a transformers `ViTMAEForPreTraining`, with its weights."""
    ours = MAE(mae_config_from_transformers(model.config))
    return load_converted(ours, model.state_dict(), MAE_RULES, "ViTMAEForPreTraining state dict")
