"""Convert diffusers' `UNet2DModel` into `minifm.diffusion.unet.UNet`, and back.

The converter reads every field of the diffusers config that changes the computation. It
raises ValueError for the options minifm's UNet does not implement. These are Fourier or
learned time embeddings, "timestep" or "identity" class embeddings, block types other than
(Attn)DownBlock2D, (Attn)UpBlock2D and UNetMidBlock2D, resnet resampling, and activations
other than SiLU.
"""

from __future__ import annotations

from minifm.checkpoint import check_keys
from minifm.diffusion.unet import ACT_FNS, UNet, UNetConfig
from minifm.hf.common import load_converted, reject_unsupported, rename_keys

LEVEL = r"^((?:down|up)_blocks\.\d+)"
MID_ATTENTION = r"^mid_block\.attentions\.0\."
ATTENTION_PARTS = [
    ("group_norm", "norm"),
    ("to_q", "attention.q"),
    ("to_k", "attention.k"),
    ("to_v", "attention.v"),
    (r"to_out\.0", "attention.out"),
]
# diffusers names -> minifm names. Residual blocks, time and class embeddings keep their names.
UNET_RULES = [
    *[(MID_ATTENTION + rf"{old}\.", f"mid_block.attention.{new}.") for old, new in ATTENTION_PARTS],
    *[
        (LEVEL + rf"\.attentions\.(\d+)\.{old}\.", rf"\1.attentions.\2.{new}.")
        for old, new in ATTENTION_PARTS
    ],
    (LEVEL + r"\.downsamplers\.0\.conv\.", r"\1.downsample.conv."),
    (LEVEL + r"\.upsamplers\.0\.conv\.", r"\1.upsample.conv."),
]


def block_types(names) -> tuple[str, ...]:
    """Drop the optional "UNetRes" prefix that diffusers accepts on block type names."""
    return tuple(name.removeprefix("UNetRes") for name in names)


def unet_config_from_diffusers(hf_config, **overrides) -> UNetConfig:
    """Translate the config of a diffusers `UNet2DModel` to a minifm `UNetConfig`."""
    model = "UNet2DModel"
    reject_unsupported(hf_config, "time_embedding_type", ["positional"], model)
    reject_unsupported(hf_config, "class_embed_type", [None], model)
    reject_unsupported(hf_config, "downsample_type", ["conv"], model)
    reject_unsupported(hf_config, "upsample_type", ["conv"], model)
    reject_unsupported(hf_config, "act_fn", list(ACT_FNS), model)
    if hf_config.norm_num_groups is None:
        raise ValueError(f"{model} with norm_num_groups=None is not supported; set a group count")
    fields = dict(
        sample_size=hf_config.sample_size,
        in_channels=hf_config.in_channels,
        out_channels=hf_config.out_channels,
        center_input_sample=hf_config.center_input_sample,
        flip_sin_to_cos=hf_config.flip_sin_to_cos,
        freq_shift=hf_config.freq_shift,
        time_embedding_dim=hf_config.time_embedding_dim,
        down_block_types=block_types(hf_config.down_block_types),
        up_block_types=block_types(hf_config.up_block_types),
        mid_block_type=hf_config.mid_block_type,
        block_out_channels=tuple(hf_config.block_out_channels),
        layers_per_block=hf_config.layers_per_block,
        mid_block_scale_factor=hf_config.mid_block_scale_factor,
        downsample_padding=hf_config.downsample_padding,
        dropout=hf_config.dropout,
        act_fn=hf_config.act_fn,
        attention_head_dim=hf_config.attention_head_dim,
        norm_num_groups=hf_config.norm_num_groups,
        attn_norm_num_groups=hf_config.attn_norm_num_groups,
        norm_eps=hf_config.norm_eps,
        resnet_time_scale_shift=hf_config.resnet_time_scale_shift,
        add_attention=hf_config.add_attention,
        num_class_embeds=hf_config.num_class_embeds,
    )
    return UNetConfig(**{**fields, **overrides})


def unet_from_diffusers(model, **overrides) -> UNet:
    """Build a minifm UNet equal to a diffusers `UNet2DModel`, with its weights.

    `overrides` set `UNetConfig` fields the diffusers config does not have, for example
    `null_class=True` for a model trained with its last class as the unconditional label.
    """
    ours = UNet(unet_config_from_diffusers(model.config, **overrides))
    return load_converted(ours, model.state_dict(), UNET_RULES, "UNet2DModel state dict")


# UNetConfig fields that UNet2DModel takes under the same name and meaning.
SHARED_FIELDS = (
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "flip_sin_to_cos",
    "freq_shift",
    "time_embedding_dim",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "resnet_time_scale_shift",
    "add_attention",
    "num_class_embeds",
)


def unet_to_diffusers(unet: UNet):
    """Build a diffusers `UNet2DModel` equal to a minifm UNet, with its weights, in eval mode.

    The null class has no counterpart in diffusers' config: it is the last row of the class
    table, so a diffusers pipeline passes that index as the unconditional label.
    """
    from diffusers import UNet2DModel

    config = unet.config
    model = UNet2DModel(**{name: getattr(config, name) for name in SHARED_FIELDS})
    their_names = list(model.state_dict())
    our_names = list(rename_keys(dict.fromkeys(their_names), UNET_RULES))
    to_theirs = dict(zip(our_names, their_names, strict=True))
    ours = unet.state_dict()
    check_keys(to_theirs, ours, "minifm UNet state dict")
    model.load_state_dict({to_theirs[name]: tensor for name, tensor in ours.items()})
    return model.eval()
