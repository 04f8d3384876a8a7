"""The parts a diffusion UNet is built from: time embedding, residual, attention and resampling.

    emb   = MLP(sinusoid(t)) [+ class embedding]                   (Ho et al. 2020, App. B)
    h     = conv(SiLU(GN(x))) + proj(SiLU(emb)) -> conv(drop(SiLU(GN(h))))
    out   = (shortcut(x) + h) / output_scale_factor                 (residual block)
    attn  = (x + Attention(GN(x))) / output_scale_factor            (self-attention over Hi * Wi)

With `time_embedding_norm="scale_shift"` the embedding modulates the second GroupNorm as
GN(h) * (1 + scale) + shift instead of being added before it (AdaGN, Dhariwal & Nichol 2021).

Every block's `forward` takes a `context` argument and passes it to its attention layers. Those
are self-attention only, so `context` must be None. It is there so that cross-attention layers
can be added without changing the block signatures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minifm.attention import MultiHeadAttention

TIME_EMBEDDING_NORMS = ("default", "scale_shift")


def timestep_embedding(
    timesteps: Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> Tensor:
    """Embed timesteps (B,) as sinusoids (B, dim), as the Transformer embeds positions.

    Frequency i of the dim // 2 is max_period ** (-i / (dim // 2 - freq_shift)) (Vaswani et al.
    2017, Sec. 3.5). The output is [sin, cos], or [cos, sin] with `flip_sin_to_cos`, zero-padded
    to `dim` when `dim` is odd.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - freq_shift)
    frequencies = exponent.exp().to(timesteps.device)  # (dim // 2,)
    angles = timesteps.float()[:, None] * frequencies[None, :]  # (B, dim // 2)
    parts = (angles.cos(), angles.sin()) if flip_sin_to_cos else (angles.sin(), angles.cos())
    return F.pad(torch.cat(parts, dim=-1), (0, dim % 2))  # (B, dim)


class TimestepEmbedding(nn.Module):
    """Two linear layers with SiLU between them, from the sinusoid to the embedding width."""

    def __init__(self, in_features: int, embedding_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, embedding_dim)
        self.linear_2 = nn.Linear(embedding_dim, embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


@dataclass(frozen=True)
class BlockSettings:
    """Options every residual and attention block of one UNet shares."""

    temb_channels: int
    groups: int
    eps: float
    dropout: float = 0.0
    time_embedding_norm: str = "default"
    attention_head_dim: int | None = None
    attention_backend: str = "auto"


class ResnetBlock(nn.Module):
    """A residual block conditioned on the time embedding: (B, Cin, Hi, Wi) -> (B, Cout, Hi, Wi)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        settings: BlockSettings,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.scale_shift = settings.time_embedding_norm == "scale_shift"
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(settings.groups, in_channels, eps=settings.eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        emb_out = 2 * out_channels if self.scale_shift else out_channels
        self.time_emb_proj = nn.Linear(settings.temb_channels, emb_out)
        self.norm2 = nn.GroupNorm(settings.groups, out_channels, eps=settings.eps)
        self.dropout = nn.Dropout(settings.dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, Cout, Hi, Wi)
        emb = self.time_emb_proj(F.silu(emb))[:, :, None, None]  # (B, Cout or 2 Cout, 1, 1)
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb)
        h = self.conv2(self.dropout(F.silu(h)))

        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (shortcut + h) / self.output_scale_factor


class AttentionBlock(nn.Module):
    """Self-attention over the Hi * Wi positions of a feature map, with a residual connection.

    `groups` is the GroupNorm group count before the attention, or None for no normalisation.
    """

    def __init__(
        self,
        channels: int,
        settings: BlockSettings,
        groups: int | None,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        head_dim = settings.attention_head_dim or channels
        self.output_scale_factor = output_scale_factor
        self.norm = nn.GroupNorm(groups, channels, eps=settings.eps) if groups else nn.Identity()
        self.attention = MultiHeadAttention(
            channels, channels // head_dim, backend=settings.attention_backend
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is not None:
            raise ValueError(
                "AttentionBlock is self-attention only; context must be None, got a tensor of "
                f"shape {tuple(context.shape)}"
            )
        B, C, Hi, Wi = x.shape
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")  # (B, Hi * Wi, C)
        attended = self.attention(tokens)  # (B, Hi * Wi, C)
        attended = rearrange(attended, "b (h w) c -> b c h w", h=Hi, w=Wi)
        return (x + attended) / self.output_scale_factor


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3 x 3 convolution.

    With `padding=0` the input is padded on the right and bottom only, so that odd and even
    sizes shrink the same way as with `padding=1`.
    """

    def __init__(self, channels: int, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)  # (B, C, Hi / 2, Wi / 2)


class Upsample(nn.Module):
    """Double the resolution by nearest-neighbour interpolation, then a 3 x 3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2Hi, 2Wi)


def attention_layers(
    count: int, channels: int, settings: BlockSettings, with_attention: bool
) -> nn.ModuleList:
    """Return `count` attention blocks, or an empty list for a level without attention."""
    if not with_attention:
        return nn.ModuleList()
    return nn.ModuleList(AttentionBlock(channels, settings, settings.groups) for _ in range(count))


class DownBlock(nn.Module):
    """One encoder level: residual blocks, each followed by attention if enabled, then downsampling.

    `forward` returns the output and the skip tensors the decoder concatenates: one per residual
    block and one after the downsampling.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        settings: BlockSettings,
        num_layers: int,
        with_attention: bool,
        add_downsample: bool,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, settings)
            for i in range(num_layers)
        )
        self.attentions = attention_layers(num_layers, out_channels, settings, with_attention)
        self.downsample = Downsample(out_channels, downsample_padding) if add_downsample else None

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, emb)
            if self.attentions:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)  # (B, Cout, Hi / 2, Wi / 2)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """One decoder level: residual blocks that each take a skip tensor, then upsampling.

    Residual block i concatenates the input with one skip tensor along the channels. The last
    block of the level takes the skip from the encoder level below, of `skip_channels` channels.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        settings: BlockSettings,
        num_layers: int,
        with_attention: bool,
        add_upsample: bool,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList()
        for i in range(num_layers):
            resnet_in = in_channels if i == 0 else out_channels
            skip = skip_channels if i == num_layers - 1 else out_channels
            self.resnets.append(ResnetBlock(resnet_in + skip, out_channels, settings))
        self.attentions = attention_layers(num_layers, out_channels, settings, with_attention)
        self.upsample = Upsample(out_channels) if add_upsample else None

    def forward(
        self, x: Tensor, skips: list[Tensor], emb: Tensor, context: Tensor | None = None
    ) -> Tensor:
        """Consume the last `len(self.resnets)` tensors of `skips`, latest first."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), emb)  # (B, Cout, Hi, Wi)
            if self.attentions:
                x = self.attentions[i](x, context)
        if self.upsample is not None:
            x = self.upsample(x)  # (B, Cout, 2Hi, 2Wi)
        return x


class MidBlock(nn.Module):
    """The bottleneck: residual block, optional attention, residual block, at constant width."""

    def __init__(
        self,
        channels: int,
        settings: BlockSettings,
        with_attention: bool,
        attention_groups: int | None,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, settings, output_scale_factor) for _ in range(2)
        )
        self.attention = (
            AttentionBlock(channels, settings, attention_groups, output_scale_factor)
            if with_attention
            else None
        )

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:
        x = self.resnets[0](x, emb)
        if self.attention is not None:
            x = self.attention(x, context)
        return self.resnets[1](x, emb)
