"""Blocks shared by the models: patch embedding, position embeddings, MLP, transformer block.

An image (B, C, Hi, Wi) becomes a sequence of Gh * Gw patch tokens by cutting it into P x P
patches and projecting each one linearly (Dosovitskiy et al. 2021, eq. 1). A convolution with
kernel and stride P is that projection; `patchify_unfold` is the same computation written as
unfold + linear, and the notebooks assert the two agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minifm.attention import MultiHeadAttention


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """Return `value` as an (height, width) pair."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def patch_grid(
    image_size: int | tuple[int, int], patch_size: int | tuple[int, int]
) -> tuple[int, int]:
    """Return the (Gh, Gw) patch grid of an image; reject sizes the patch size does not divide."""
    (height, width), (ph, pw) = pair(image_size), pair(patch_size)
    if height % ph or width % pw:
        raise ValueError(
            f"image size {(height, width)} is not divisible by patch size {(ph, pw)}; "
            "resize or crop the image to a multiple of the patch size"
        )
    return height // ph, width // pw


class PatchEmbedding(nn.Module):
    """Cut images (B, C, Hi, Wi) into patches and embed them as tokens (B, Gh * Gw, D)."""

    def __init__(
        self, patch_size: int | tuple[int, int], in_channels: int, dim: int, bias: bool = True
    ) -> None:
        super().__init__()
        self.patch_size = pair(patch_size)
        self.in_channels = in_channels
        self.projection = nn.Conv2d(
            in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias
        )

    def forward(self, pixel_values: Tensor) -> Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.in_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.in_channels}, height, width); "
                f"got {tuple(pixel_values.shape)}"
            )
        patch_grid(pixel_values.shape[-2:], self.patch_size)
        x = self.projection(pixel_values)  # (B, D, Gh, Gw)
        return rearrange(x, "b d gh gw -> b (gh gw) d")


def patchify_unfold(pixel_values: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """Flatten each P x P patch in raster order: (B, C, Hi, Wi) -> (B, Gh * Gw, C * P * P).

    Each patch vector is ordered (C, P, P), matching a convolution kernel's weight layout, so
    `patchify_unfold(x, P) @ conv.weight.flatten(1).T + conv.bias` equals the convolution.
    """
    ph, pw = pair(patch_size)
    patch_grid(pixel_values.shape[-2:], (ph, pw))
    patches = F.unfold(pixel_values, kernel_size=(ph, pw), stride=(ph, pw))  # (B, C*P*P, N)
    return patches.transpose(1, 2)


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """Embed positions (N,) as (N, dim): sines then cosines at geometric frequencies."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even; got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None, :]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_position_embedding(
    grid_size: tuple[int, int], dim: int, cls_token: bool = False
) -> Tensor:
    """Return fixed 2-D sin-cos position embeddings (1, [1 +] Gh * Gw, D), as in MAE.

    Half the channels encode the column index and half the row index; the class token, if any,
    gets a zero vector.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim divisible by 4; got {dim}")
    gh, gw = grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    embedding = torch.cat(
        [sincos_1d(cols.flatten(), dim // 2), sincos_1d(rows.flatten(), dim // 2)], dim=1
    )  # (Gh * Gw, D)
    if cls_token:
        embedding = torch.cat([torch.zeros(1, dim, dtype=embedding.dtype), embedding])
    return embedding.float()[None]


def interpolate_position_embedding(
    position_embedding: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> Tensor:
    """Resize learned embeddings (1, 1 + Gh * Gw, D) to a new grid by bicubic interpolation.

    The class token's embedding is kept as it is. This is the resampling transformers applies
    with `interpolate_pos_encoding=True`.
    """
    if tuple(old_grid) == tuple(new_grid):
        return position_embedding
    cls_embedding, patch_embedding = position_embedding[:, :1], position_embedding[:, 1:]
    grid = rearrange(patch_embedding, "1 (gh gw) d -> 1 d gh gw", gh=old_grid[0], gw=old_grid[1])
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_embedding, rearrange(grid, "1 d gh gw -> 1 (gh gw) d")], dim=1)


def quick_gelu(x: Tensor) -> Tensor:
    """x * sigmoid(1.702 x), the GELU approximation of the original CLIP."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


def activation(name: str):
    """Return the activation function called `name` in Hugging Face configs."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def check_transformer_config(config) -> None:
    """Check the fields `hidden_size`, `num_attention_heads` and `hidden_act` of a config.

    The heads must divide the width, and the activation must be one of `ACTIVATIONS`.
    """
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size={config.hidden_size} must be divisible by "
            f"num_attention_heads={config.num_attention_heads}"
        )
    activation(config.hidden_act)


class MLP(nn.Module):
    """Two linear layers with an activation between them: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act_name = act
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Attention and MLP sub-layers, each with a residual connection and a LayerNorm.

    Pre-norm (`norm_first=True`, ViT and CLIP): x + f(norm(x)). Post-norm (the original
    Transformer and BERT): norm(x + f(x)). In training, `dropout` drops elements of each
    sub-layer's output f before the residual sum, and `attention_dropout` drops attention
    probabilities.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        act: str = "gelu",
        norm_first: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = MultiHeadAttention(
            dim, num_heads, qkv_bias=qkv_bias, dropout=attention_dropout, backend=attention_backend
        )
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = MLP(dim, mlp_dim, act)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool = False,
        mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Map tokens (B, N, D) to (B, N, D); with `return_attention`, also (B, H, N, N) weights."""
        attention_input = self.norm1(x) if self.norm_first else x
        attended = self.attn(
            attention_input, causal=causal, mask=mask, return_attention=return_attention
        )
        attended, weights = attended if return_attention else (attended, None)
        attended = self.dropout(attended)

        if self.norm_first:
            x = x + attended
            x = x + self.dropout(self.mlp(self.norm2(x)))
        else:
            x = self.norm1(x + attended)
            x = self.norm2(x + self.dropout(self.mlp(x)))
        return (x, weights) if return_attention else x


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Initialise linear and convolution weights with a truncated normal, biases with zeros."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def num_parameters(module: nn.Module) -> int:
    """Count the trainable parameters of `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "MLP",
    "PatchEmbedding",
    "TransformerBlock",
    "activation",
    "init_weights",
    "interpolate_position_embedding",
    "num_parameters",
    "pair",
    "patch_grid",
    "patchify_unfold",
    "sincos_2d_position_embedding",
]
