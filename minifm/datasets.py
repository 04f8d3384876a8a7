"""Data that needs no download: scikit-learn's digits, scikit-image's photographs and faces,
and generated scenes of coloured shapes with captions and masks.

Images are float32 tensors (N, C, Hi, Wi) with values in [0, 1]. Splits are stratified by
label and seeded, so every notebook sees the same train and test images. Scenes are seeded too.
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


# Captioned scenes: one or more coloured shapes on a plain background, with a caption and a mask
# per shape. Shape sizes are fractions of the image side, so any image size renders the same
# layout. Everything is drawn on a grid `SUPERSAMPLE` times finer and averaged down, which
# antialiases the edges.

SUPERSAMPLE = 4
COLOURS = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.80),
    "orange": (0.98, 0.55, 0.10),
    "white": (0.95, 0.95, 0.95),
}
SIZES = {"small": 0.14, "large": 0.22}  # shape radius as a fraction of the image side
MAX_EXTENT = 1.2  # no shape extends more than 1.2 radii from its centre along x or y
# Where a lone shape sits, as (x, y) fractions of the image side, and its caption phrase.
POSITIONS = {
    "left": ((0.27, 0.50), "on the left"),
    "right": ((0.73, 0.50), "on the right"),
    "top": ((0.50, 0.27), "at the top"),
    "bottom": ((0.50, 0.73), "at the bottom"),
    "centre": ((0.50, 0.50), "in the centre"),
}
# Two shapes sit side by side or one above the other, and the caption relates the first to the
# second: (position of the first, position of the second, phrase).
RELATIONS = {
    "left of": ("left", "right", "to the left of"),
    "right of": ("right", "left", "to the right of"),
    "above": ("top", "bottom", "above"),
    "below": ("bottom", "top", "below"),
}


def _circle(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return dx**2 + dy**2 <= r**2


def _square(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return torch.maximum(dx.abs(), dy.abs()) <= 0.85 * r


def _triangle(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Equilateral and apex up. The apex is R above the centre and the base R / 2 below it."""
    R = 1.2 * r
    return (dy >= -R) & (dy <= R / 2) & (dx.abs() <= (dy + R) / 3**0.5)


def _diamond(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return dx.abs() + dy.abs() <= 1.15 * r


def _cross(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    arm = 0.35 * r
    return ((dx.abs() <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx.abs() <= r))


SHAPES = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "cross": _cross,
}


@dataclass
class SceneConfig:
    """Contents of the scenes, and the (shape, colour) pairs held out of training.

    `held_out` pairs never appear in scenes generated with `combinations="seen"`, and are the only
    pairs in scenes generated with `combinations="unseen"`.
    """

    image_size: int = 32
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
    sizes: tuple[str, ...] = ("small", "large")
    min_shapes: int = 1
    max_shapes: int = 2
    held_out: tuple[tuple[str, str], ...] = (
        ("circle", "green"),
        ("square", "purple"),
        ("triangle", "blue"),
        ("cross", "red"),
    )
    background: tuple[float, float, float] = (0.1, 0.1, 0.1)
    position_jitter: float = 0.06
    # How often a caption names each attribute of a shape, and its position (one-shape scenes).
    mention_colour: float = 0.8
    mention_shape: float = 0.8  # when the colour is named; otherwise the noun is "shape"
    mention_size: float = 0.5
    mention_position: float = 0.5

    def __post_init__(self) -> None:
        for field_name, known in (("shapes", SHAPES), ("colours", COLOURS), ("sizes", SIZES)):
            unknown = [name for name in getattr(self, field_name) if name not in known]
            if unknown:
                raise ValueError(
                    f"unknown {field_name} {unknown}; expected names from {list(known)}"
                )
        if not 1 <= self.min_shapes <= self.max_shapes <= 2:
            raise ValueError(
                f"min_shapes={self.min_shapes}, max_shapes={self.max_shapes}: expected "
                "1 <= min_shapes <= max_shapes <= 2"
            )
        for shape, colour in self.held_out:
            if shape not in self.shapes or colour not in self.colours:
                raise ValueError(
                    f"held_out pair {(shape, colour)} uses a shape or colour not in use"
                )
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels; got {self.image_size}")

    def combinations(self, which: str) -> list[tuple[str, str]]:
        """Return the (shape, colour) pairs of `which`: "seen", "unseen" or "all"."""
        every = [(s, c) for s in self.shapes for c in self.colours]
        held_out = set(self.held_out)
        pairs = {
            "all": every,
            "seen": [p for p in every if p not in held_out],
            "unseen": [p for p in every if p in held_out],
        }
        if which not in pairs:
            raise ValueError(f"combinations must be 'seen', 'unseen' or 'all'; got {which!r}")
        if not pairs[which]:
            raise ValueError(f"no {which!r} (shape, colour) pairs in this SceneConfig")
        return pairs[which]


@dataclass
class Scenes:
    """Rendered scenes and their ground truth. K is the maximum number of shapes in a scene.

    Label tensors index into the `SceneConfig` lists (`shapes`, `colours`, `sizes`) and into
    `POSITIONS`. A scene with fewer than K shapes has -1 labels and an empty mask in the unused
    slots. `relations` indexes `RELATIONS` for two-shape scenes and is -1 for one-shape scenes.
    """

    images: Tensor  # (N, 3, Hi, Wi) in [0, 1]
    captions: list[str]
    masks: Tensor  # (N, K, Hi, Wi) bool, the visible pixels of each shape
    shapes: Tensor  # (N, K)
    colours: Tensor  # (N, K)
    sizes: Tensor  # (N, K)
    positions: Tensor  # (N, K)
    relations: Tensor  # (N,)
    centres: Tensor  # (N, K, 2) as (x, y) fractions of the image side
    config: SceneConfig

    def __len__(self) -> int:
        return len(self.captions)

    def __repr__(self) -> str:
        return f"Scenes(images={tuple(self.images.shape)}, captions={len(self.captions)})"

    @property
    def num_shapes(self) -> Tensor:
        """Number of shapes in each scene, (N,)."""
        return (self.shapes >= 0).sum(dim=1)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(config: SceneConfig, shape: str, colour: str, size: str, rng) -> str:
    """Name one shape: "a [size] [colour] <shape name, or 'shape' when the colour is named>"."""
    with_colour = rng.random() < config.mention_colour
    noun = shape if not with_colour or rng.random() < config.mention_shape else "shape"
    with_size = rng.random() < config.mention_size
    words = " ".join(
        w for w in (size if with_size else None, colour if with_colour else None, noun) if w
    )
    return f"{_article(words)} {words}"


def caption_scene(
    config: SceneConfig, shapes: list[tuple[str, str, str, str]], relation: str | None, rng
) -> str:
    """Describe (shape, colour, size, position) tuples by a small random grammar.

    One shape: "[there is] a [size] [colour] noun [position phrase]". Two shapes: "a [size]
    [colour] noun <relation> a [size] [colour] noun". The noun is the shape's name, or "shape"
    when the colour alone identifies it. The `mention_*` fields of `config` give how often
    each part appears, so some captions name only a colour and others only a shape.
    """
    phrases = [_phrase(config, shape, colour, size, rng) for shape, colour, size, _ in shapes]
    if relation is not None:
        return f"{phrases[0]} {RELATIONS[relation][2]} {phrases[1]}"
    caption = phrases[0]
    if rng.random() < config.mention_position:
        caption = f"{caption} {POSITIONS[shapes[0][3]][1]}"
    return f"there is {caption}" if rng.random() < 0.25 else caption


def _layout(config: SceneConfig, count: int, rng) -> tuple[list[str], str | None, np.ndarray]:
    """Choose position names, a relation (two shapes only) and jittered (x, y) centres."""
    if count == 1:
        names, relation = [str(rng.choice(list(POSITIONS)))], None
    else:
        relation = str(rng.choice(list(RELATIONS)))
        names = list(RELATIONS[relation][:2])
    anchors = np.array([POSITIONS[name][0] for name in names])  # (count, 2)
    jitter = rng.uniform(-config.position_jitter, config.position_jitter, size=anchors.shape)
    return names, relation, anchors + jitter


def _sample_scene(config: SceneConfig, pairs: list[tuple[str, str]], rng) -> dict:
    count = int(rng.integers(config.min_shapes, config.max_shapes + 1))
    names, relation, centres = _layout(config, count, rng)
    shapes = []
    for k, position in enumerate(names):
        shape, colour = pairs[rng.integers(len(pairs))]
        size = str(rng.choice(config.sizes))
        shapes.append((shape, colour, size, position))
        extent = MAX_EXTENT * SIZES[size]
        centres[k] = centres[k].clip(extent, 1 - extent)  # keep the whole shape in the image
    return {"shapes": shapes, "relation": relation, "centres": centres}


def _pixel_range(centre: float, extent: float, size: int) -> tuple[int, int]:
    """Return the [start, stop) pixels of a size-pixel axis within `extent` of `centre`."""
    start = max(0, int(np.floor((centre - extent) * size)))
    return start, min(size, int(np.ceil((centre + extent) * size)))


def _coverage(shape: str, centre: np.ndarray, radius: float, size: int) -> Tensor:
    """Return the fraction of each pixel of a size x size image that the shape covers, (Hi, Wi).

    Only the pixels of the shape's bounding box are sampled. Every other pixel is 0.
    """
    (x0, x1), (y0, y1) = (_pixel_range(c, MAX_EXTENT * radius, size) for c in centre)
    fine = size * SUPERSAMPLE
    xs = (torch.arange(x0 * SUPERSAMPLE, x1 * SUPERSAMPLE) + 0.5) / fine - float(centre[0])
    ys = (torch.arange(y0 * SUPERSAMPLE, y1 * SUPERSAMPLE) + 0.5) / fine - float(centre[1])
    dy, dx = torch.meshgrid(ys, xs, indexing="ij")  # offsets from the centre, as image fractions
    inside = SHAPES[shape](dx, dy, torch.tensor(radius)).float()
    coverage = torch.zeros(size, size)
    coverage[y0:y1, x0:x1] = inside.view(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean((1, 3))
    return coverage


def render_scene(config: SceneConfig, scene: dict) -> tuple[Tensor, Tensor]:
    """Paint a scene's shapes in order; return the image (3, Hi, Wi) and masks (K, Hi, Wi)."""
    S = config.image_size
    image = torch.tensor(config.background, dtype=torch.float32)[:, None, None].repeat(1, S, S)
    masks = torch.zeros(config.max_shapes, S, S, dtype=torch.bool)
    for k, ((shape, colour, size, _), centre) in enumerate(
        zip(scene["shapes"], scene["centres"], strict=True)
    ):
        cover = _coverage(shape, centre, SIZES[size], S)  # (Hi, Wi)
        colour_rgb = torch.tensor(COLOURS[colour])[:, None, None]
        image = image * (1 - cover) + colour_rgb * cover
        masks[:k] &= cover < 0.5  # a later shape hides what it covers
        masks[k] = cover >= 0.5
    return image.clamp(0, 1), masks


def generate_scenes(
    n: int, config: SceneConfig | None = None, *, seed: int = 0, combinations: str = "seen"
) -> Scenes:
    """Render `n` captioned scenes; the same seed and config always give the same scenes.

    `combinations` picks the (shape, colour) pairs drawn: "seen" (all but `config.held_out`),
    "unseen" (only the held-out pairs) or "all".
    """
    config = SceneConfig() if config is None else config
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    pairs = config.combinations(combinations)
    rng = np.random.default_rng(seed)
    K, S = config.max_shapes, config.image_size
    images, masks, captions = torch.empty(n, 3, S, S), torch.empty(n, K, S, S, dtype=torch.bool), []
    labels = {name: torch.full((n, K), -1, dtype=torch.long) for name in ("shapes", "colours")}
    labels.update(
        {name: torch.full((n, K), -1, dtype=torch.long) for name in ("sizes", "positions")}
    )
    relations, centres = torch.full((n,), -1, dtype=torch.long), torch.full((n, K, 2), -1.0)
    for i in range(n):
        scene = _sample_scene(config, pairs, rng)
        images[i], masks[i] = render_scene(config, scene)
        captions.append(caption_scene(config, scene["shapes"], scene["relation"], rng))
        for k, (shape, colour, size, position) in enumerate(scene["shapes"]):
            labels["shapes"][i, k] = config.shapes.index(shape)
            labels["colours"][i, k] = config.colours.index(colour)
            labels["sizes"][i, k] = config.sizes.index(size)
            labels["positions"][i, k] = list(POSITIONS).index(position)
            centres[i, k] = torch.from_numpy(scene["centres"][k])
        if scene["relation"] is not None:
            relations[i] = list(RELATIONS).index(scene["relation"])
    return Scenes(
        images, captions, masks, **labels, relations=relations, centres=centres, config=config
    )
