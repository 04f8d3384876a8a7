"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

    z_0 = [x_cls; x_p^1 E; ...; x_p^N E] + E_pos          (eq. 1)
    z_l = z_{l-1} + MSA(LN(z_{l-1})) ...                    (eqs. 2-3, pre-norm blocks)
    y = LN(z_L^0)                                           (eq. 4, the class token)

Images may be non-square; any input resolution that the patch size divides works with
`interpolate_pos_encoding=True`, which resamples the learned position embeddings bicubically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from minifm.attention import resolve_backend
from minifm.nn import (
    PatchEmbedding,
    TransformerBlock,
    activation,
    check_transformer_config,
    init_weights,
    interpolate_position_embedding,
    patch_grid,
)

POOLINGS = ("cls", "mean")


@dataclass
class ViTConfig:
    """Architecture of a ViT. Field names follow transformers' `ViTConfig` where one exists."""

    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    num_labels: int = 0
    pooling: str = "cls"
    pooler_act: str | None = None
    pooler_output_size: int | None = None
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        self.grid_size = patch_grid(self.image_size, self.patch_size)
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
        check_transformer_config(self)
        if self.pooler_act is not None:
            activation(self.pooler_act)
        elif self.pooler_output_size is not None:
            raise ValueError(
                f"pooler_output_size={self.pooler_output_size} needs a pooler; set pooler_act "
                "(transformers uses 'tanh') or leave pooler_output_size as None"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1)")
        resolve_backend(self.attention_backend, torch.device("cpu"))

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @classmethod
    def digits(cls, **overrides) -> ViTConfig:
        """A ViT for 16 x 16 greyscale digits: 16 patches of 4 x 4, width 64, depth 4."""
        preset = dict(
            image_size=16,
            patch_size=4,
            num_channels=1,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            layer_norm_eps=1e-6,
            num_labels=10,
        )
        return cls(**{**preset, **overrides})

    @classmethod
    def base(cls, **overrides) -> ViTConfig:
        """ViT-B/16 at 224 x 224, the configuration of `google/vit-base-patch16-224`."""
        return cls(**{"num_labels": 1000, **overrides})


class ViT(nn.Module):
    """Patch embedding, class token, learned position embeddings, pre-norm blocks, final norm."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.patch_embed = PatchEmbedding(config.patch_size, config.num_channels, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, D))
        self.blocks = nn.ModuleList(
            TransformerBlock(
                D,
                config.num_attention_heads,
                config.intermediate_size,
                qkv_bias=config.qkv_bias,
                layer_norm_eps=config.layer_norm_eps,
                act=config.hidden_act,
                dropout=config.hidden_dropout_prob,
                attention_dropout=config.attention_probs_dropout_prob,
                attention_backend=config.attention_backend,
            )
            for _ in range(config.num_hidden_layers)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        pooled_dim = config.pooler_output_size or D
        self.pooler = nn.Linear(D, pooled_dim) if config.pooler_act else None
        self.head = nn.Linear(pooled_dim, config.num_labels) if config.num_labels else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embedding(self, grid_size: tuple[int, int], interpolate: bool) -> Tensor:
        """Return position embeddings (1, 1 + Gh * Gw, D) for a patch grid of `grid_size`."""
        if grid_size == self.config.grid_size:
            return self.pos_embed
        if not interpolate:
            raise ValueError(
                f"input patch grid {grid_size} differs from the configured grid "
                f"{self.config.grid_size} (image_size={self.config.image_size}); pass "
                "interpolate_pos_encoding=True to resample the position embeddings"
            )
        return interpolate_position_embedding(self.pos_embed, self.config.grid_size, grid_size)

    def embed(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        """Embed images (B, C, Hi, Wi) as tokens (B, 1 + N, D), class token first."""
        grid_size = patch_grid(pixel_values.shape[-2:], self.config.patch_size)
        x = self.patch_embed(pixel_values)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        return self.dropout(x + self.position_embedding(grid_size, interpolate_pos_encoding))

    def encode(
        self, x: Tensor, return_attentions: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Run the blocks and the final norm on tokens (B, N, D)."""
        attentions = []
        for block in self.blocks:
            if return_attentions:
                x, weights = block(x, return_attention=True)
                attentions.append(weights)  # (B, H, N, N)
            else:
                x = block(x)
        x = self.norm(x)
        return (x, attentions) if return_attentions else x

    def forward_features(
        self,
        pixel_values: Tensor,
        *,
        interpolate_pos_encoding: bool = False,
        return_attentions: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Map images (B, C, Hi, Wi) to normalised tokens (B, 1 + N, D).

        With `return_attentions`, also return one (B, H, 1 + N, 1 + N) map per layer; the maps are
        recomputed explicitly, so they are available whichever attention backend runs the pass.
        """
        x = self.embed(pixel_values, interpolate_pos_encoding)
        return self.encode(x, return_attentions)

    def pool(self, features: Tensor) -> Tensor:
        """Reduce tokens (B, 1 + N, D) to one vector (B, D): the class token or the patch mean."""
        pooled = features[:, 0] if self.config.pooling == "cls" else features[:, 1:].mean(1)
        if self.pooler is not None:
            pooled = activation(self.config.pooler_act)(self.pooler(pooled))
        return pooled

    def forward(self, pixel_values: Tensor, *, interpolate_pos_encoding: bool = False) -> Tensor:
        """Map images (B, C, Hi, Wi) to logits (B, num_labels), or pooled features if none."""
        features = self.forward_features(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
        )
        return self.head(self.pool(features))
