"""CLIP: contrastive language-image pre-training (Radford et al. 2021).

    I_e = normalize(I_f W_i),  T_e = normalize(T_f W_t)          (Fig. 3, the projections)
    logits = I_e T_e^T * exp(t)                                  (Fig. 3, t a learned log scale)
    loss = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2 (Fig. 3, symmetric InfoNCE)

The text tower is a causal pre-norm transformer whose output at the end-of-text token is the
sequence's feature (Sec. 2.4). The image tower is minifm's ViT with one LayerNorm before the
blocks, and its class token passes the ViT's final LayerNorm. exp(t) is clamped at
`logit_scale_max` (100 in the paper, Sec. 2.5). Above the clamp the gradient of t is zero, so t
stops changing.

Any module with a `hidden_size` attribute and `encode(input_ids, attention_mask)` returning
(B, D) can replace the text tower, for example a pretrained `minifm.bert.SentenceEncoder`.
`lock_text_tower` then freezes it, which trains only the image tower and the projections (LiT,
Zhai et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minifm.nn import (
    PatchEmbedding,
    TransformerBlock,
    check_transformer_config,
    init_weights,
    pair,
)
from minifm.tokenizer import validate_input_ids
from minifm.vit import ViT, ViTConfig


@dataclass
class CLIPTextConfig:
    """Architecture of the text tower. Field names follow transformers' `CLIPTextConfig`.

    `eos_token_id == 2` selects the rule of early CLIP checkpoints: pool at the highest token
    id of each row. Any other value pools at the first occurrence of `eos_token_id`.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        check_transformer_config(self)


def _clip_vision_config() -> ViTConfig:
    return ViTConfig(
        image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_labels=0
    )


@dataclass
class CLIPConfig:
    """Both towers and the shared embedding.

    The defaults are the architecture of `openai/clip-vit-base-patch32`. That checkpoint's own
    config sets `eos_token_id=2`, the rule of early checkpoints, and the converter reads it.
    """

    text_config: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    vision_config: ViTConfig = field(default_factory=_clip_vision_config)
    projection_dim: int = 512
    logit_scale_init_value: float = math.log(1 / 0.07)  # 2.6592, Sec. 2.5
    logit_scale_max: float = 100.0

    def __post_init__(self) -> None:
        if self.vision_config.num_labels:
            raise ValueError(
                f"the vision tower has no classifier head; got num_labels="
                f"{self.vision_config.num_labels}, expected 0"
            )

    @classmethod
    def scenes(cls, vocab_size: int, eos_token_id: int, context_length: int) -> CLIPConfig:
        """Return a CLIP small enough to train on 32 x 32 scenes on a laptop CPU in minutes.

        Image tower: 8 x 8 patches (16 tokens and a class token), width 64, depth 3. Text
        tower: width 64, depth 2. Shared embedding of width 64.
        """
        text = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=context_length,
            hidden_act="gelu",
            eos_token_id=eos_token_id,
        )
        vision = ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            layer_norm_eps=1e-5,
        )
        return cls(text, vision, projection_dim=64)


def init_clip_blocks(blocks: nn.ModuleList, width: int) -> None:
    """Initialise transformer blocks as OpenAI's CLIP code does, scaled by width and depth.

    Queries, keys and values get std width^-1/2, the first MLP layer (2 width)^-1/2, and the two
    projections back into the residual stream width^-1/2 (2 depth)^-1/2. With a flat std of 0.02
    instead, the text tower of `CLIPConfig.scenes` starts out giving different captions of one
    length features with a cosine similarity near 0.96. A contrastive loss then takes much
    longer to learn the attributes that are hard to see.
    """
    residual_std = width**-0.5 * (2 * len(blocks)) ** -0.5
    for block in blocks:
        for projection in (block.attn.q, block.attn.k, block.attn.v):
            nn.init.normal_(projection.weight, std=width**-0.5)
        nn.init.normal_(block.attn.out.weight, std=residual_std)
        nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(block.mlp.fc2.weight, std=residual_std)


class CLIPTextTransformer(nn.Module):
    """Token and position embeddings, causal pre-norm blocks, final norm, end-of-text pooling."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.token_embedding = nn.Embedding(config.vocab_size, D)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, D)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                D,
                config.num_attention_heads,
                config.intermediate_size,
                layer_norm_eps=config.layer_norm_eps,
                act=config.hidden_act,
                attention_backend=config.attention_backend,
            )
            for _ in range(config.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        init_weights(self)
        init_clip_blocks(self.blocks, D)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Map token ids (B, N) to normalised hidden states (B, N, D).

        `attention_mask` (B, N) marks real tokens with 1 and padding with 0. Padding keys are
        hidden from every query, on top of the causal rule.
        """
        validate_input_ids(
            input_ids, attention_mask, self.config.vocab_size, self.config.max_position_embeddings
        )
        N = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding.weight[:N]  # (B, N, D)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for block in self.blocks:
            x = block(x, causal=True, mask=mask)  # (B, N, D)
        return self.norm(x)

    def eos_positions(self, input_ids: Tensor) -> Tensor:
        """Return the index (B,) of each row's end-of-text token, by the config's rule."""
        if self.config.eos_token_id == 2:
            return input_ids.argmax(dim=-1)  # early checkpoints: the end token has the top id
        is_eos = input_ids == self.config.eos_token_id  # (B, N)
        if not is_eos.any(dim=-1).all():
            rows = (~is_eos.any(dim=-1)).nonzero().flatten().tolist()
            raise ValueError(
                f"input_ids rows {rows} contain no end-of-text token "
                f"(eos_token_id={self.config.eos_token_id}); tokenize with the end token"
            )
        return is_eos.int().argmax(dim=-1)  # the first occurrence

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Map token ids (B, N) to one feature per sequence (B, D), taken at the end token."""
        hidden = self.forward(input_ids, attention_mask)  # (B, N, D)
        return hidden[torch.arange(len(hidden)), self.eos_positions(input_ids)]


class CLIPVisionTower(nn.Module):
    """A ViT with a LayerNorm before the blocks, pooled at the class token after the final norm.

    The patch projection has no bias, as in CLIP. The ViT's final norm plays CLIP's
    post-layernorm, which transformers applies to the class token only.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = ViT(config)
        self.vit.patch_embed = PatchEmbedding(
            config.patch_size, config.num_channels, config.hidden_size, bias=False
        )
        init_weights(self.vit.patch_embed)
        init_clip_blocks(self.vit.blocks, config.hidden_size)
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        """Map images (B, C, Hi, Wi) to class-token features (B, D)."""
        expected = (self.config.num_channels, *pair(self.config.image_size))
        if pixel_values.ndim != 4 or (
            not interpolate_pos_encoding and tuple(pixel_values.shape[1:]) != expected
        ):
            raise ValueError(
                f"pixel_values must have shape (batch, {', '.join(map(str, expected))}); got "
                f"{tuple(pixel_values.shape)}. Resize the images, or pass "
                "interpolate_pos_encoding=True for another size the patch size divides"
            )
        x = self.vit.embed(pixel_values, interpolate_pos_encoding)  # (B, 1 + N, D)
        x = self.pre_layernorm(x)
        for block in self.vit.blocks:
            x = block(x)  # (B, 1 + N, D)
        return self.vit.norm(x[:, 0])  # (B, D)


class CLIP(nn.Module):
    """Image and text towers, linear projections into a shared space, a learned temperature."""

    def __init__(self, config: CLIPConfig, text_tower: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.vision = CLIPVisionTower(config.vision_config)
        self.text = CLIPTextTransformer(config.text_config) if text_tower is None else text_tower
        E = config.projection_dim
        self.visual_projection = nn.Linear(self.vision.hidden_size, E, bias=False)
        self.text_projection = nn.Linear(self.text.hidden_size, E, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=self.vision.hidden_size**-0.5)
        nn.init.normal_(self.text_projection.weight, std=self.text.hidden_size**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))

    def lock_text_tower(self) -> CLIP:
        """Freeze the text tower (LiT), so training updates only the image side and projections."""
        self.text.requires_grad_(False)
        return self

    def exp_logit_scale(self) -> Tensor:
        """Return exp(logit_scale), the inverse temperature, clamped at `logit_scale_max`."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def encode_image(
        self,
        pixel_values: Tensor,
        *,
        normalize: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> Tensor:
        """Map images (B, C, Hi, Wi) to embeddings (B, E), unit length with `normalize`."""
        features = self.visual_projection(self.vision(pixel_values, interpolate_pos_encoding))
        return F.normalize(features, dim=-1) if normalize else features

    def project_text(self, text_features: Tensor, *, normalize: bool = False) -> Tensor:
        """Project text-tower features (B, D) to embeddings (B, E), for precomputed features."""
        embeds = self.text_projection(text_features)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, normalize: bool = False
    ) -> Tensor:
        """Map token ids (B, N) to embeddings (B, E), unit length with `normalize`."""
        return self.project_text(self.text.encode(input_ids, attention_mask), normalize=normalize)

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Return the scaled cosine similarities `logits_per_image` (Bi, Bt) (Fig. 3)."""
        image_embeds = self.encode_image(pixel_values, normalize=True)  # (Bi, E)
        text_embeds = self.encode_text(input_ids, attention_mask, normalize=True)  # (Bt, E)
        return self.exp_logit_scale() * image_embeds @ text_embeds.T

    def loss(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Contrastive loss of a batch of matching (image, text) pairs."""
        image_embeds = self.encode_image(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask)
        return clip_loss(image_embeds, text_embeds, self.exp_logit_scale())


def clip_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric cross-entropy of (B, E) image and text embeddings whose row i matches (Fig. 3).

    The embeddings are normalised here. `logit_scale` is the multiplier exp(t), not t.
    """
    if image_embeds.ndim != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"image_embeds and text_embeds must both have shape (batch, dim), row i of one "
            f"matching row i of the other; got {tuple(image_embeds.shape)} and "
            f"{tuple(text_embeds.shape)}"
        )
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    logits = logit_scale * image_embeds @ text_embeds.T  # (B, B)
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ZeroShotClassifier:
    """Classify images by the class whose prompt embedding is nearest (Sec. 3.1.2).

    Each class embedding is the normalised mean of its prompts' normalised embeddings: one
    prompt per template, the ensembling of Sec. 3.1.4.
    """

    def __init__(
        self, model: CLIP, tokenizer, class_names: Sequence[str], templates: Sequence[str]
    ) -> None:
        if not class_names or not templates:
            raise ValueError(
                f"need at least one class name and one template; got {len(class_names)} "
                f"class names and {len(templates)} templates"
            )
        for template in templates:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain '{{}}' exactly once")
        self.model = model
        self.class_names = list(class_names)
        self.templates = list(templates)
        with torch.no_grad():
            self.class_embeddings = torch.stack(
                [self.embed_class(tokenizer, name) for name in class_names]
            )  # (K, E)

    def embed_class(self, tokenizer, name: str) -> Tensor:
        """Return the ensembled, unit-length embedding (E,) of one class name."""
        batch = tokenizer([template.format(name) for template in self.templates], padding="longest")
        prompts = self.model.encode_text(batch.input_ids, batch.attention_mask, normalize=True)
        return F.normalize(prompts.mean(dim=0), dim=-1)

    @torch.no_grad()
    def __call__(self, pixel_values: Tensor) -> Tensor:
        """Return class logits (B, K) for images (B, C, Hi, Wi)."""
        image_embeds = self.model.encode_image(pixel_values, normalize=True)  # (B, E)
        return self.model.exp_logit_scale() * image_embeds @ self.class_embeddings.T

    def predict(self, pixel_values: Tensor) -> Tensor:
        """Return the index (B,) of the predicted class of each image."""
        return self(pixel_values).argmax(dim=-1)


def retrieve(query_embeds: Tensor, gallery_embeds: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Return the cosine similarities and indices (Q, k) of each query's k nearest gallery items.

    Text-to-image retrieval passes text embeddings as queries and image embeddings as the
    gallery; image-to-text retrieval swaps them.
    """
    if not 1 <= k <= len(gallery_embeds):
        raise ValueError(f"k must lie in [1, {len(gallery_embeds)}] (the gallery size); got {k}")
    similarity = F.normalize(query_embeds, dim=-1) @ F.normalize(gallery_embeds, dim=-1).T
    return similarity.topk(k, dim=-1)
