"""A small CNN digit classifier that scores generated digits.

A class-conditional generator is asked for digit y. The share of its samples that the judge
classifies as y is the quality figure of the diffusion chapters. The judge trains on the real
training digits of `minifm.datasets.load_digits` in seconds. Its accuracy on the held-out test
digits bounds how far that figure can be trusted: a judge that is right 98% of the time on real
digits also mislabels some good samples.

The judge trains with small random rotations, scalings and shifts of the digits, so that
samples drawn slightly off-centre are still judged by their shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minifm.datasets import load_digits
from minifm.training import TrainConfig, fit, seed_everything


class DigitJudge(nn.Module):
    """Three 3 x 3 convolutions and two linear layers: images (B, 1, 16, 16) -> logits (B, 10)."""

    def __init__(self, image_size: int = 16, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4; got {image_size}")
        self.image_size = image_size
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, width, Hi / 2, Wi / 2)
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 2 width, Hi / 4, Wi / 4)
        )
        flat = 2 * width * (image_size // 4) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(flat, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        """Map images (B, 1, Hi, Wi) with values in [0, 1] to class logits (B, num_classes)."""
        expected = (1, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must have shape (batch, {', '.join(map(str, expected))}); got "
                f"{tuple(images.shape)}"
            )
        return self.classifier(self.features(images))

    @torch.no_grad()
    def classify(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """Return the predicted digit (B,) of images (B, 1, Hi, Wi) in [0, 1], in eval mode."""
        was_training = self.training
        self.eval()
        labels = torch.cat([self(chunk).argmax(-1) for chunk in images.split(batch_size)])
        self.train(was_training)
        return labels

    def agreement(self, images: Tensor, requested: Tensor) -> float:
        """Return the share of images (B, 1, Hi, Wi) in [0, 1] classified as `requested` (B,)."""
        if len(images) != len(requested) or len(images) == 0:
            raise ValueError(
                f"images and requested labels must be non-empty and of equal length; got "
                f"{len(images)} and {len(requested)}"
            )
        return (self.classify(images).cpu() == requested.cpu()).float().mean().item()


@dataclass
class JudgeRecipe:
    """Training settings of the judge. Angles are in degrees, shifts in pixels."""

    steps: int = 200
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_rotation: float = 10.0
    max_scale: float = 0.1
    max_shift: float = 1.0
    seed: int = 0


def augment(images: Tensor, recipe: JudgeRecipe) -> Tensor:
    """Rotate, scale and shift each image (B, 1, Hi, Wi) by a random affine map."""
    B, _, Hi, _ = images.shape
    angle = (torch.rand(B) * 2 - 1) * math.radians(recipe.max_rotation)  # (B,)
    scale = 1 + (torch.rand(B) * 2 - 1) * recipe.max_scale  # (B,)
    shift = (torch.rand(B, 2) * 2 - 1) * recipe.max_shift * 2 / Hi  # (B, 2), in [-1, 1] units
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def train_judge(
    recipe: JudgeRecipe | None = None, *, image_size: int = 16, progress: bool = False
) -> tuple[DigitJudge, float]:
    """Train a judge on the training digits; return it in eval mode and its held-out accuracy."""
    recipe = JudgeRecipe() if recipe is None else recipe
    digits = load_digits(image_size)
    seed_everything(recipe.seed)
    judge = DigitJudge(image_size)

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        return F.cross_entropy(model(augment(images, recipe)), labels)

    config = TrainConfig(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.steps // 20,
        seed=recipe.seed,
        progress=progress,
    )
    fit(judge, loss_fn, (digits.train_images, digits.train_labels), config)
    accuracy = judge.agreement(digits.test_images, digits.test_labels)
    return judge.eval(), accuracy
