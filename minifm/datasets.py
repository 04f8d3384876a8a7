"""Data that needs no download: scikit-learn's digits and scikit-image's photographs and faces.

Images are float32 tensors (N, C, Hi, Wi) with values in [0, 1]. Splits are stratified by
label and seeded, so every notebook sees the same train and test images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PHOTOGRAPHS = ("astronaut", "camera", "chelsea", "coffee", "horse", "rocket")


@dataclass
class ImageSplit:
    """Images (N, C, Hi, Wi) in [0, 1] with integer labels (N,), split into train and test."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor

    def __repr__(self) -> str:
        return (
            f"ImageSplit(train={tuple(self.train_images.shape)}, "
            f"test={tuple(self.test_images.shape)})"
        )


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return train and test indices with each label's share of `test_fraction` in the test set."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(members)))
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return rng.permutation(np.array(train)), rng.permutation(np.array(test))


def resize(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resize images (N, C, Hi, Wi) bilinearly, with antialiasing when shrinking."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def load_digits(image_size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> ImageSplit:
    """Load scikit-learn's 1,797 handwritten digits (8 x 8, 10 classes) as 1-channel images.

    The 17 grey levels are scaled to [0, 1], and the images resized to `image_size`.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.from_numpy(digits.images / 16.0).float()[:, None]  # (N, 1, 8, 8)
    images = resize(images, image_size).clamp(0, 1)  # (N, 1, image_size, image_size)
    labels = torch.from_numpy(digits.target).long()
    train, test = stratified_split(digits.target, test_fraction, seed)
    return ImageSplit(images[train], labels[train], images[test], labels[test])


def load_faces(image_size: int = 24, test_fraction: float = 0.2, seed: int = 0) -> ImageSplit:
    """Load scikit-image's 200 LFW face crops (100 faces, then 100 non-faces; label 1 = face)."""
    from skimage.data import lfw_subset

    images = torch.from_numpy(lfw_subset()).float()[:, None]  # (200, 1, 25, 25)
    images = resize(images, image_size).clamp(0, 1)
    labels = torch.cat([torch.ones(100), torch.zeros(100)]).long()
    train, test = stratified_split(labels.numpy(), test_fraction, seed)
    return ImageSplit(images[train], labels[train], images[test], labels[test])


def load_photograph(name: str, size: int | None = None) -> Tensor:
    """Load a scikit-image photograph as (C, Hi, Wi) in [0, 1]; with `size`, centre-crop and resize.

    Greyscale and binary photographs (camera, horse) have one channel, the others three.
    """
    if name not in PHOTOGRAPHS:
        raise ValueError(f"unknown photograph {name!r}; expected one of {PHOTOGRAPHS}")
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    image = torch.from_numpy(array.astype(np.float32) / (1.0 if array.dtype == bool else 255.0))
    image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)  # (C, Hi, Wi)
    if size is None:
        return image
    height, width = image.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, top : top + side, left : left + side]
    return resize(square[None], size)[0].clamp(0, 1)


def to_hf_dataset(images: Tensor, labels: Tensor):
    """Wrap images (N, C, Hi, Wi) and labels (N,) as a Hugging Face `datasets.Dataset`.

    Columns: `pixel_values` (nested float lists) and `label`; `.with_format("torch")` on the result
    gives tensors back.
    """
    from datasets import Dataset

    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    return Dataset.from_dict({"pixel_values": images.numpy(), "label": labels.numpy()})
