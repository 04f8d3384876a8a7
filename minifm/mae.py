"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

Pretraining follows Sec. 3 of the paper:

1. Cut the image into patches, embed them and add fixed 2-D sin-cos position embeddings.
2. Keep a random subset of the patches per sample (the ones with the smallest noise) and drop
   the rest (`mask_ratio` of them).
3. Run the encoder, a plain `minifm.vit.ViT`, on the class token and the visible patches only.
4. A light decoder of its own width and depth embeds the encoder output, puts a shared mask
   token at every dropped position, restores the original patch order, adds its own sin-cos
   position embeddings and predicts the pixels of every patch.
5. The loss is the mean squared error on the masked patches only, optionally against each
   patch's pixels normalised by that patch's mean and variance (`norm_pix_loss`).

Patches are flattened in (P, P, C) order, the layout of the reference code and of transformers'
`ViTMAEForPreTraining`, so the same pixels and the same `noise` give the same loss, predictions,
mask and restore indices as transformers. The image size must be the configured one, because the
fixed position embeddings are built for that patch grid and are not interpolated.

Shape comments use the package glossary plus N_keep, the number of visible patches per image,
int(N * (1 - mask_ratio)), and Dd, the decoder width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from minifm.nn import TransformerBlock, init_weights, pair, patch_grid, sincos_2d_position_embedding
from minifm.vit import ViT, ViTConfig

NORM_PIX_EPS = 1e-6  # added to each patch's variance before normalising the target


@dataclass
class MAEConfig:
    """An encoder `ViTConfig` plus the decoder and masking fields of transformers' ViTMAEConfig."""

    encoder: ViTConfig = field(default_factory=ViTConfig)
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False

    def __post_init__(self) -> None:
        check_mask_ratio(self.mask_ratio)
        if self.encoder.num_labels:
            raise ValueError(
                f"the MAE encoder has no classification head; got encoder.num_labels="
                f"{self.encoder.num_labels}, expected 0 (add the head for fine-tuning with "
                "vit_classifier_from_mae)"
            )
        if self.encoder.pooler_act is not None:
            raise ValueError(
                f"the MAE encoder has no pooler; got encoder.pooler_act={self.encoder.pooler_act!r}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if getattr(self.encoder, name):
                raise ValueError(
                    f"MAE pretraining has no dropout; got encoder.{name}="
                    f"{getattr(self.encoder, name)}, expected 0"
                )

    @property
    def num_kept(self) -> int:
        """Number of visible patches per image, rounded down as in the reference code."""
        return kept_patch_count(self.encoder.num_patches, self.mask_ratio)

    @classmethod
    def digits(cls, **overrides) -> MAEConfig:
        """MAE for 16 x 16 digits: the `ViTConfig.digits` encoder, a width-64 depth-2 decoder."""
        preset = dict(
            encoder=ViTConfig.digits(num_labels=0),
            decoder_hidden_size=64,
            decoder_num_hidden_layers=2,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=128,
        )
        return cls(**{**preset, **overrides})

    @classmethod
    def base(cls, **overrides) -> MAEConfig:
        """ViT-B/16 at 224 x 224 with the paper's default decoder: 8 blocks of width 512."""
        return cls(**{"encoder": ViTConfig.base(num_labels=0), **overrides})


@dataclass
class MAEOutput:
    """Loss (scalar), predicted patches (B, N, P * P * C), mask (B, N) with 1 = masked, and the
    restore indices (B, N) that put shuffled patches back in raster order."""

    loss: Tensor
    pred: Tensor
    mask: Tensor
    ids_restore: Tensor


def check_mask_ratio(mask_ratio: float) -> None:
    """Raise ValueError for a mask ratio outside [0, 1). At 1 no patch is left for the encoder."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1); got {mask_ratio}")


def kept_patch_count(num_patches: int, mask_ratio: float) -> int:
    """Return int(N * (1 - mask_ratio)), the visible patch count of the reference code."""
    check_mask_ratio(mask_ratio)
    return int(num_patches * (1 - mask_ratio))


def patchify(pixel_values: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """Flatten each patch in (P, P, C) order: (B, C, Hi, Wi) -> (B, Gh * Gw, P * P * C)."""
    ph, pw = pair(patch_size)
    patch_grid(pixel_values.shape[-2:], (ph, pw))
    return rearrange(pixel_values, "b c (gh p) (gw q) -> b (gh gw) (p q c)", p=ph, q=pw)


def unpatchify(
    patches: Tensor, patch_size: int | tuple[int, int], grid_size: tuple[int, int]
) -> Tensor:
    """Invert `patchify`: (B, Gh * Gw, P * P * C) -> (B, C, Gh * P, Gw * P)."""
    (ph, pw), (gh, gw) = pair(patch_size), grid_size
    if patches.shape[1] != gh * gw or patches.shape[2] % (ph * pw):
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit a {gh} x {gw} grid of "
            f"{ph} x {pw} patches; expected (batch, {gh * gw}, {ph} * {pw} * channels)"
        )
    return rearrange(patches, "b (gh gw) (p q c) -> b c (gh p) (gw q)", gh=gh, p=ph, q=pw)


def random_masking(
    x: Tensor, mask_ratio: float, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep, per sample, the int(N * (1 - mask_ratio)) tokens with the smallest noise.

    Takes tokens (B, N, D) and optional noise (B, N), uniform in [0, 1) when not given. Returns
    the visible tokens (B, N_keep, D) in order of increasing noise, the mask (B, N) with 1 for a
    dropped token and 0 for a kept one, and `ids_restore` (B, N), the rank of each token's noise.
    """
    B, N, D = x.shape
    num_kept = kept_patch_count(N, mask_ratio)
    if noise is None:
        noise = torch.rand(B, N, device=x.device)
    if noise.shape != (B, N):
        raise ValueError(
            f"noise must have shape (batch, num_patches) = {(B, N)}; got {tuple(noise.shape)}"
        )

    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # (B, N), kept tokens first
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)  # (B, N)
    ids_keep = ids_shuffle[:, :num_kept]  # (B, N_keep)
    visible = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, N_keep, D)

    mask = torch.ones(B, N, device=x.device)
    mask[:, :num_kept] = 0  # in shuffled order
    mask = torch.gather(mask, 1, ids_restore)  # (B, N), back in raster order
    return visible, mask, ids_restore


def mask_to_pixels(
    mask: Tensor, patch_size: int | tuple[int, int], grid_size: tuple[int, int]
) -> Tensor:
    """Spread a patch mask (B, N) over the pixels of its patches: (B, 1, Gh * P, Gw * P)."""
    ph, pw = pair(patch_size)
    grid = rearrange(mask, "b (gh gw) -> b 1 gh gw", gh=grid_size[0], gw=grid_size[1])
    return grid.repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3)


class MAE(nn.Module):
    """ViT encoder on the visible patches, light transformer decoder, masked pixel loss."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        encoder_config, Dd = config.encoder, config.decoder_hidden_size
        self.encoder = ViT(encoder_config)
        self.encoder.pos_embed.requires_grad_(False)  # fixed sin-cos, set in reset_parameters

        self.decoder_embed = nn.Linear(encoder_config.hidden_size, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.register_buffer(
            "decoder_pos_embed", torch.zeros(1, 1 + encoder_config.num_patches, Dd)
        )
        self.decoder_blocks = nn.ModuleList(
            TransformerBlock(
                Dd,
                config.decoder_num_attention_heads,
                config.decoder_intermediate_size,
                qkv_bias=encoder_config.qkv_bias,
                layer_norm_eps=encoder_config.layer_norm_eps,
                act=encoder_config.hidden_act,
                attention_backend=encoder_config.attention_backend,
            )
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.decoder_norm = nn.LayerNorm(Dd, eps=encoder_config.layer_norm_eps)
        ph, pw = pair(encoder_config.patch_size)
        self.decoder_pred = nn.Linear(Dd, ph * pw * encoder_config.num_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as `ViT` does (truncated normal, std 0.02), with fixed sin-cos positions."""
        self.encoder.reset_parameters()
        init_weights(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        grid, D = self.config.encoder.grid_size, self.config.encoder.hidden_size
        with torch.no_grad():
            self.encoder.pos_embed.copy_(sincos_2d_position_embedding(grid, D, cls_token=True))
            self.decoder_pos_embed.copy_(
                sincos_2d_position_embedding(grid, self.config.decoder_hidden_size, cls_token=True)
            )

    def _check_image_size(self, pixel_values: Tensor) -> None:
        grid_size = patch_grid(pixel_values.shape[-2:], self.config.encoder.patch_size)
        if grid_size != self.config.encoder.grid_size:
            raise ValueError(
                f"pixel_values of size {tuple(pixel_values.shape[-2:])} give a {grid_size} patch "
                f"grid; this MAE is built for image_size={self.config.encoder.image_size}"
            )

    def encode_visible(
        self, pixel_values: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the class token and the visible patches of images (B, C, Hi, Wi).

        Returns the latent tokens (B, 1 + N_keep, D), the mask (B, N) and `ids_restore` (B, N).
        """
        self._check_image_size(pixel_values)
        encoder = self.encoder
        x = encoder.patch_embed(pixel_values)  # (B, N, D)
        x = x + encoder.pos_embed[:, 1:]
        visible, mask, ids_restore = random_masking(x, self.config.mask_ratio, noise)

        cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, visible], dim=1)  # (B, 1 + N_keep, D)
        return encoder.encode(x), mask, ids_restore

    def decode(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Predict every patch (B, N, P * P * C) from latent tokens (B, 1 + N_keep, D)."""
        x = self.decoder_embed(latent)  # (B, 1 + N_keep, Dd)
        B, N = ids_restore.shape
        mask_tokens = self.mask_token.expand(B, N + 1 - x.shape[1], -1)  # (B, N - N_keep, Dd)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, N, Dd), shuffled order
        index = ids_restore[..., None].expand(-1, -1, x.shape[2])
        patches = torch.gather(patches, 1, index)  # (B, N, Dd), raster order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (B, 1 + N, Dd)

        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # (B, N, P * P * C)

    def target(self, pixel_values: Tensor) -> Tensor:
        """Return the patches (B, N, P * P * C) the decoder must predict (Sec. 3, "Reconstruction
        target"): pixels, or with `norm_pix_loss` each patch's pixels standardised."""
        target = patchify(pixel_values, self.config.encoder.patch_size)
        if not self.config.norm_pix_loss:
            return target
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the reference code
        return (target - mean) / (var + NORM_PIX_EPS).sqrt()

    def loss(self, pixel_values: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the masked patches only (Sec. 3); zero if none is masked."""
        per_patch = (pred - self.target(pixel_values)).pow(2).mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)

    def forward(self, pixel_values: Tensor, noise: Tensor | None = None) -> MAEOutput:
        """Mask images (B, C, Hi, Wi) with `noise` (B, N), reconstruct them, return the loss."""
        latent, mask, ids_restore = self.encode_visible(pixel_values, noise)
        pred = self.decode(latent, ids_restore)
        return MAEOutput(self.loss(pixel_values, pred, mask), pred, mask, ids_restore)

    def predicted_pixels(self, pixel_values: Tensor, pred: Tensor) -> Tensor:
        """Turn predictions (B, N, P * P * C) into images (B, C, Hi, Wi) for viewing.

        With `norm_pix_loss` the predictions are standardised patches, so each one is rescaled by
        the mean and variance of the true patch. The model has no access to those statistics for
        a masked patch, so such a picture borrows them from the original image.
        """
        if self.config.norm_pix_loss:
            target = patchify(pixel_values, self.config.encoder.patch_size)
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
            pred = pred * std + mean
        return unpatchify(pred, self.config.encoder.patch_size, self.config.encoder.grid_size)

    def paste_visible(self, pixel_values: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Return the reconstruction (B, C, Hi, Wi) with the visible patches of the input kept."""
        config = self.config.encoder
        pixel_mask = mask_to_pixels(mask, config.patch_size, config.grid_size)  # (B, 1, Hi, Wi)
        reconstruction = self.predicted_pixels(pixel_values, pred)
        return pixel_values * (1 - pixel_mask) + reconstruction * pixel_mask


def vit_classifier_from_mae(mae: MAE, num_labels: int, **overrides) -> ViT:
    """Build a ViT classifier whose encoder weights are those of `mae`, with a new linear head.

    `overrides` change other `ViTConfig` fields that leave the weights' shapes alone, for example
    `pooling="mean"`. The position embeddings stay the fixed sin-cos ones.
    """
    config = dataclasses.replace(mae.config.encoder, num_labels=num_labels, **overrides)
    classifier = ViT(config)
    weights = {k: v for k, v in mae.encoder.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = classifier.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    classifier.pos_embed.requires_grad_(False)
    return classifier


__all__ = [
    "MAE",
    "MAEConfig",
    "MAEOutput",
    "kept_patch_count",
    "mask_to_pixels",
    "patchify",
    "random_masking",
    "unpatchify",
    "vit_classifier_from_mae",
]
