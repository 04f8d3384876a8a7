"""The denoising UNet of DDPM (Ho et al. 2020, App. B), with optional class conditioning.

    x_t (B, C, Hi, Wi), t (B,) [, y (B,)]  ->  prediction (B, Cout, Hi, Wi)

An encoder of levels, each residual blocks (and self-attention where configured) followed by a
stride-2 downsampling except at the last level, a bottleneck, and a mirrored decoder whose
residual blocks take the encoder's activations as skip connections. The timestep enters every
residual block through a sinusoidal embedding and an MLP. A class label adds a learned
embedding to it. With `null_class=True` the last row of that table is the "no class" label that
classifier-free guidance trains and samples with (Ho & Salimans 2022).

The configuration and the module layout follow diffusers' `UNet2DModel`, so that
`minifm.hf.from_diffusers` can load its weights. The levels are named by diffusers' block types:
"DownBlock2D" / "UpBlock2D" without attention, "AttnDownBlock2D" / "AttnUpBlock2D" with it.

Limits: positional (sinusoidal) time embedding only, learned class tables only, SiLU only,
convolutional down- and upsampling only, no cross-attention yet (`context` must be None).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minifm.attention import resolve_backend
from minifm.diffusion.blocks import (
    TIME_EMBEDDING_NORMS,
    BlockSettings,
    DownBlock,
    MidBlock,
    TimestepEmbedding,
    UpBlock,
    timestep_embedding,
)
from minifm.nn import pair

DOWN_BLOCK_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}  # name -> has attention
UP_BLOCK_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}
MID_BLOCK_TYPES = ("UNetMidBlock2D", None)
ACT_FNS = ("silu", "swish")


@dataclass
class UNetConfig:
    """Architecture of a UNet. Field names follow diffusers' `UNet2DModel`.

    So do the defaults, except that the default layout has three levels (diffusers has four,
    wider ones) and `sample_size` is 32 (None in diffusers).

    `sample_size` is the training resolution, or None if unknown. Any size that the
    downsampling divides works at run time. `attention_head_dim=None` gives one head over all
    channels at each attention level.
    `attn_norm_num_groups` sets the mid-block attention's GroupNorm. When it is None, that
    GroupNorm has `norm_num_groups` groups with `resnet_time_scale_shift="default"` and does not
    exist with "scale_shift", as in diffusers. `num_class_embeds` is the number of rows of the
    class table. With `null_class`, the last row is the unconditional label.
    """

    sample_size: int | tuple[int, int] | None = 32
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    time_embedding_dim: int | None = None
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    dropout: float = 0.0
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    num_class_embeds: int | None = None
    null_class: bool = False
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        self.block_out_channels = tuple(self.block_out_channels)
        self._check_block_types()
        self._check_widths()
        self._check_classes()
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be at least 1; got {self.layers_per_block}")
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"downsample_padding must be 0 or 1; got {self.downsample_padding}")
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn {self.act_fn!r} is not supported; expected one of {ACT_FNS}")
        if self.resnet_time_scale_shift not in TIME_EMBEDDING_NORMS:
            raise ValueError(
                f"unknown resnet_time_scale_shift {self.resnet_time_scale_shift!r}; expected one "
                f"of {TIME_EMBEDDING_NORMS}"
            )
        resolve_backend(self.attention_backend, torch.device("cpu"))
        if self.sample_size is not None:
            check_image_size(pair(self.sample_size), self.downsampling_factor, "sample_size")

    def _check_block_types(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"down_block_types {self.down_block_types}, up_block_types {self.up_block_types} "
                f"and block_out_channels {self.block_out_channels} must have the same length"
            )
        for name, value, table in (
            ("down_block_types", self.down_block_types, DOWN_BLOCK_TYPES),
            ("up_block_types", self.up_block_types, UP_BLOCK_TYPES),
        ):
            unknown = [block for block in value if block not in table]
            if unknown:
                raise ValueError(f"unsupported {name} {unknown}; expected names from {list(table)}")
        if self.mid_block_type not in MID_BLOCK_TYPES:
            raise ValueError(
                f"unsupported mid_block_type {self.mid_block_type!r}; expected one of "
                f"{MID_BLOCK_TYPES}"
            )

    def _check_widths(self) -> None:
        groups = [self.norm_num_groups]
        if self.attn_norm_num_groups is not None:
            groups.append(self.attn_norm_num_groups)
        for width in self.block_out_channels:
            for group_count in groups:
                if width % group_count:
                    raise ValueError(
                        f"block_out_channels {self.block_out_channels} must be divisible by the "
                        f"GroupNorm group count {group_count}"
                    )
        head_dim = self.attention_head_dim
        for width in self.attention_widths():
            if head_dim is not None and width % head_dim:
                raise ValueError(
                    f"attention at width {width} needs a width divisible by "
                    f"attention_head_dim={head_dim}"
                )

    def attention_widths(self) -> list[int]:
        """Return the channel width of every attention layer's level, encoder to decoder."""
        widths = self.block_out_channels
        up_levels = [UP_BLOCK_TYPES[name] for name in self.up_block_types]
        down = [w for w, a in zip(widths, self.attention_levels, strict=True) if a]
        up = [w for w, a in zip(widths[::-1], up_levels, strict=True) if a]
        mid = [widths[-1]] if self.mid_block_type is not None and self.add_attention else []
        return down + mid + up

    def _check_classes(self) -> None:
        if self.num_class_embeds is not None and self.num_class_embeds < 1:
            raise ValueError(f"num_class_embeds must be at least 1; got {self.num_class_embeds}")
        if self.null_class and (self.num_class_embeds or 0) < 2:
            raise ValueError(
                f"null_class=True needs num_class_embeds >= 2 (the classes plus the null class); "
                f"got {self.num_class_embeds}"
            )

    @property
    def attention_levels(self) -> tuple[bool, ...]:
        """Whether each encoder level, from the highest resolution down, has attention."""
        return tuple(DOWN_BLOCK_TYPES[name] for name in self.down_block_types)

    @property
    def downsampling_factor(self) -> int:
        """How many times smaller the lowest-resolution feature map is than the input."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def num_classes(self) -> int:
        """The number of real classes, without the null class; 0 for an unconditional UNet."""
        return (self.num_class_embeds or 0) - int(self.null_class)

    @property
    def null_class_index(self) -> int | None:
        """The label that means "no class", or None when the UNet has no null class."""
        return self.num_classes if self.null_class else None

    @classmethod
    def digits(cls, **overrides) -> UNetConfig:
        """Return the config of a class-conditional UNet for 16 x 16 digits, 1.1 M weights.

        Widths 32 / 64 / 64 at 16 x 16 / 8 x 8 / 4 x 4, one residual block per level, attention
        at 8 x 8 and in the bottleneck, 10 classes and a null class.
        """
        preset = dict(
            sample_size=16,
            in_channels=1,
            out_channels=1,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=8,
            num_class_embeds=11,
            null_class=True,
        )
        return cls(**{**preset, **overrides})


def check_image_size(size: tuple[int, int], factor: int, name: str) -> None:
    """Raise ValueError unless the downsampling factor divides both image sides."""
    if size[0] % factor or size[1] % factor:
        raise ValueError(
            f"{name} {size} is not divisible by {factor}, the UNet's total downsampling "
            f"(2 ** (levels - 1)); use a size that is a multiple of {factor}"
        )


class UNet(nn.Module):
    """Predict the noise (or x0, or v) of a noisy sample x_t at timestep t."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.block_out_channels
        temb_channels = config.time_embedding_dim or 4 * widths[0]
        settings = BlockSettings(
            temb_channels=temb_channels,
            groups=config.norm_num_groups,
            eps=config.norm_eps,
            dropout=config.dropout,
            time_embedding_norm=config.resnet_time_scale_shift,
            attention_head_dim=config.attention_head_dim,
            attention_backend=config.attention_backend,
        )

        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], temb_channels)
        self.class_embedding = (
            nn.Embedding(config.num_class_embeds, temb_channels)
            if config.num_class_embeds is not None
            else None
        )
        self.down_blocks = self._down_blocks(settings)
        self.mid_block = self._mid_block(settings)
        self.up_blocks = self._up_blocks(settings)
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, widths[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, 3, padding=1)

    def _down_blocks(self, settings: BlockSettings) -> nn.ModuleList:
        config, widths = self.config, self.config.block_out_channels
        return nn.ModuleList(
            DownBlock(
                widths[max(i - 1, 0)],
                widths[i],
                settings,
                config.layers_per_block,
                with_attention=config.attention_levels[i],
                add_downsample=i < len(widths) - 1,
                downsample_padding=config.downsample_padding,
            )
            for i in range(len(widths))
        )

    def _mid_block(self, settings: BlockSettings) -> MidBlock | None:
        config = self.config
        if config.mid_block_type is None:
            return None
        attention_groups = config.attn_norm_num_groups
        if attention_groups is None and config.resnet_time_scale_shift == "default":
            attention_groups = config.norm_num_groups
        return MidBlock(
            config.block_out_channels[-1],
            settings,
            with_attention=config.add_attention,
            attention_groups=attention_groups,
            output_scale_factor=config.mid_block_scale_factor,
        )

    def _up_blocks(self, settings: BlockSettings) -> nn.ModuleList:
        config = self.config
        widths = config.block_out_channels[::-1]  # lowest resolution first
        has_attention = [UP_BLOCK_TYPES[name] for name in config.up_block_types]
        return nn.ModuleList(
            UpBlock(
                in_channels=widths[max(i - 1, 0)],
                skip_channels=widths[min(i + 1, len(widths) - 1)],
                out_channels=widths[i],
                settings=settings,
                num_layers=config.layers_per_block + 1,
                with_attention=has_attention[i],
                add_upsample=i < len(widths) - 1,
            )
            for i in range(len(widths))
        )

    def embed(self, timestep: Tensor | float, class_labels: Tensor | None, batch: int) -> Tensor:
        """Return the conditioning vector (B, temb_channels) of timesteps and class labels."""
        device = self.conv_in.weight.device
        timesteps = torch.as_tensor(timestep, device=device).expand(batch)  # (B,)
        sinusoid = timestep_embedding(
            timesteps,
            self.config.block_out_channels[0],
            flip_sin_to_cos=self.config.flip_sin_to_cos,
            freq_shift=self.config.freq_shift,
        )
        emb = self.time_embedding(sinusoid.to(self.conv_in.weight.dtype))  # (B, temb)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(self._class_labels(class_labels, batch))
        elif class_labels is not None:
            raise ValueError("class_labels were given but this UNet has no class embedding")
        return emb

    def _class_labels(self, class_labels: Tensor | None, batch: int) -> Tensor:
        config = self.config
        if class_labels is None:
            if config.null_class_index is None:
                raise ValueError(
                    "class_labels is required: this UNet is class-conditional without a null class"
                )
            class_labels = torch.tensor(config.null_class_index)
        labels = torch.as_tensor(class_labels, device=self.conv_in.weight.device)
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"class_labels must be integers; got dtype {labels.dtype}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= config.num_class_embeds):
            raise ValueError(
                f"class_labels must lie in [0, {config.num_class_embeds - 1}]; got values from "
                f"{labels.min().item()} to {labels.max().item()}"
            )
        return labels.expand(batch)  # (B,)

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Map a noisy sample (B, C, Hi, Wi) at timesteps (B,) or () to (B, Cout, Hi, Wi).

        `class_labels` (B,) or () pick the class. When they are omitted, a UNet with a null
        class predicts unconditionally. `context` is reserved for cross-attention and must be
        None.
        """
        self._check_sample(sample)
        if context is not None:
            raise ValueError("this UNet has no cross-attention layers; context must be None")
        emb = self.embed(timestep, class_labels, sample.shape[0])  # (B, temb)
        if self.config.center_input_sample:
            sample = 2 * sample - 1

        h = self.conv_in(sample)  # (B, C0, Hi, Wi)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context)  # (B, Cl, Hi / 2^l, Wi / 2^l)
            skips.extend(block_skips)

        if self.mid_block is not None:
            h = self.mid_block(h, emb, context)

        for block in self.up_blocks:
            count = len(block.resnets)
            skips, level_skips = skips[:-count], skips[-count:]
            h = block(h, level_skips, emb, context)  # (B, Cl, Hi / 2^l, Wi / 2^l)

        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, Cout, Hi, Wi)

    def _check_sample(self, sample: Tensor) -> None:
        config = self.config
        if sample.ndim != 4 or sample.shape[1] != config.in_channels:
            raise ValueError(
                f"sample must have shape (batch, {config.in_channels}, height, width); got "
                f"{tuple(sample.shape)}"
            )
        check_image_size(tuple(sample.shape[-2:]), config.downsampling_factor, "image size")
