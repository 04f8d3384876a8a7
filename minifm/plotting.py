"""Figures the notebooks share: image grids, training curves, heat maps and attention maps.

Every function draws with matplotlib and returns the figure, so a notebook can show it inline
or save it. Images are tensors (C, Hi, Wi) or (N, C, Hi, Wi) with values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor


def to_numpy_image(image: Tensor) -> np.ndarray:
    """Convert (C, Hi, Wi) in [0, 1] to an array matplotlib shows: (Hi, Wi) or (Hi, Wi, 3)."""
    image = image.detach().float().clamp(0, 1).cpu()
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def image_grid(images: Tensor, ncols: int, padding: int = 1) -> Tensor:
    """Tile images (N, C, Hi, Wi) into one (C, rows * Hi', ncols * Wi') image with white padding."""
    n, channels, height, width = images.shape
    nrows = -(-n // ncols)
    tile_h, tile_w = height + padding, width + padding
    grid = torch.ones(channels, nrows * tile_h + padding, ncols * tile_w + padding)
    for index, image in enumerate(images):
        row, col = divmod(index, ncols)
        top, left = padding + row * tile_h, padding + col * tile_w
        grid[:, top : top + height, left : left + width] = image
    return grid


def show_images(
    images: Tensor | Sequence[Tensor],
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    size: float = 1.6,
    suptitle: str | None = None,
) -> plt.Figure:
    """Show images side by side, one axis each, with optional titles."""
    images = list(images)
    ncols = ncols or len(images)
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images):
            ax.imshow(to_numpy_image(images[index]), cmap="gray", vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[index], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_curves(
    curves: dict[str, Sequence[float]],
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str | None = None,
    smooth: int = 1,
    logy: bool = False,
) -> plt.Figure:
    """Plot one line per named curve; `smooth` > 1 averages over a sliding window."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, values in curves.items():
        values = np.asarray(values, dtype=float)
        if smooth > 1 and len(values) >= smooth:
            values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
        ax.plot(np.arange(len(values)) + (smooth - 1 if smooth > 1 else 0), values, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_heatmap(
    matrix: Tensor | np.ndarray,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    annotate: bool = False,
    cmap: str = "viridis",
) -> plt.Figure:
    """Draw a matrix as a heat map with a colour bar, optionally writing each value in its cell."""
    matrix = np.asarray(matrix.detach().cpu() if isinstance(matrix, Tensor) else matrix)
    fig, ax = plt.subplots(figsize=(0.45 * matrix.shape[1] + 2, 0.45 * matrix.shape[0] + 1))
    shown = ax.imshow(matrix, cmap=cmap)
    fig.colorbar(shown, ax=ax, fraction=0.046)
    if row_labels is not None:
        ax.set_yticks(range(len(row_labels)), row_labels)
    if col_labels is not None:
        ax.set_xticks(range(len(col_labels)), col_labels)
    if annotate:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=7, color="white")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Count (true label, predicted label) pairs into a (num_classes, num_classes) matrix."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def plot_attention_maps(
    image: Tensor, attentions: Sequence[Tensor], grid_size: tuple[int, int]
) -> plt.Figure:
    """Show the class token's attention to each patch, averaged over heads, for every layer.

    `attentions` holds one (H, 1 + N, 1 + N) map per layer for a single image (C, Hi, Wi).
    """
    fig, axes = plt.subplots(1, 1 + len(attentions), figsize=(1.8 * (1 + len(attentions)), 2))
    axes[0].imshow(to_numpy_image(image), cmap="gray")
    axes[0].set_title("input", fontsize=8)
    for layer, (ax, weights) in enumerate(zip(axes[1:], attentions, strict=True)):
        cls_to_patches = weights[:, 0, 1:].mean(0).reshape(grid_size)  # (Gh, Gw)
        ax.imshow(cls_to_patches.detach().cpu().numpy(), cmap="inferno")
        ax.set_title(f"layer {layer + 1}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig
