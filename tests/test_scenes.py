import math

import numpy as np
import pytest
import torch

from minifm.datasets import (
    COLOURS,
    POSITIONS,
    RELATIONS,
    SIZES,
    SceneConfig,
    generate_scenes,
    render_scene,
    resize,
)


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(300, seed=0)


def test_generate_scenes_is_seeded(scenes):
    again = generate_scenes(300, seed=0)
    other = generate_scenes(300, seed=1)
    assert torch.equal(scenes.images, again.images)
    assert scenes.captions == again.captions
    assert not torch.equal(scenes.images, other.images)


def test_images_masks_and_labels_have_documented_shapes(scenes):
    assert scenes.images.shape == (300, 3, 32, 32)
    assert scenes.masks.shape == (300, 2, 32, 32)
    assert scenes.masks.dtype == torch.bool
    assert scenes.images.min() >= 0
    assert scenes.images.max() <= 1
    assert set(scenes.num_shapes.tolist()) == {1, 2}
    one = scenes.num_shapes == 1
    assert (scenes.shapes[one, 1] == -1).all()
    assert not scenes.masks[one, 1].any()
    assert (scenes.relations[one] == -1).all()
    assert (scenes.relations[~one] >= 0).all()


def held_out_hits(scenes, config):
    pairs = set(config.held_out)
    hits = []
    for i in range(len(scenes)):
        for k in range(int(scenes.num_shapes[i])):
            shape = config.shapes[scenes.shapes[i, k]]
            colour = config.colours[scenes.colours[i, k]]
            hits.append((shape, colour) in pairs)
    return hits


def test_seen_scenes_never_contain_a_held_out_pair(scenes):
    assert not any(held_out_hits(scenes, scenes.config))


def test_unseen_scenes_contain_only_held_out_pairs():
    unseen = generate_scenes(100, seed=0, combinations="unseen")
    assert all(held_out_hits(unseen, unseen.config))


def test_masked_pixels_have_the_shape_colour_and_the_rest_is_background(scenes):
    background = torch.tensor(scenes.config.background)
    for i in range(40):
        covered = torch.zeros(32, 32, dtype=torch.bool)
        for k in range(int(scenes.num_shapes[i])):
            mask = scenes.masks[i, k]
            colour = torch.tensor(COLOURS[scenes.config.colours[scenes.colours[i, k]]])
            inner = mask & ~covered
            pixels = scenes.images[i][:, inner].T  # (pixels, 3)
            # Edge pixels blend with the background, so compare the median pixel.
            assert torch.allclose(pixels.median(dim=0).values, colour, atol=1e-6)
            assert not (mask & covered).any(), "masks of one scene overlap"
            covered |= mask
        far = scenes.images[i][:, ~covered].T
        assert (far - background).abs().max(dim=1).values.median() < 1e-6


def test_painted_area_matches_the_shape_geometry():
    config = SceneConfig(shapes=("circle", "square"), max_shapes=1, held_out=())
    scenes = generate_scenes(100, config, seed=2)
    background = torch.tensor(config.background)
    for i in range(len(scenes)):
        radius = SIZES[config.sizes[scenes.sizes[i, 0]]] * 32  # pixels
        shape = config.shapes[scenes.shapes[i, 0]]
        expected = math.pi * radius**2 if shape == "circle" else (1.7 * radius) ** 2
        colour = torch.tensor(COLOURS[config.colours[scenes.colours[i, 0]]])
        channel = (colour - background).abs().argmax()
        coverage = (scenes.images[i, channel] - background[channel]) / (
            colour[channel] - background[channel]
        )
        # 4 x 4 supersampling misplaces edges by at most 1/8 pixel: 1/8 of the perimeter.
        assert abs(coverage.sum().item() - expected) < 0.125 * 4 * 1.7 * radius


def test_whole_shape_stays_inside_the_image():
    config = SceneConfig(max_shapes=1, sizes=("large",), position_jitter=0.2)
    scenes = generate_scenes(100, config, seed=3)
    border = scenes.masks[:, 0].clone()
    border[:, 1:-1, 1:-1] = False
    assert not border.any()


def test_captions_agree_with_the_labels(scenes):
    config = scenes.config
    for i, caption in enumerate(scenes.captions):
        words = caption.split()
        named_shapes = [w for w in words if w in config.shapes]
        named_colours = [w for w in words if w in config.colours]
        true_shapes = {config.shapes[s] for s in scenes.shapes[i] if s >= 0}
        true_colours = {config.colours[c] for c in scenes.colours[i] if c >= 0}
        assert set(named_shapes) <= true_shapes, caption
        assert set(named_colours) <= true_colours, caption
        if scenes.num_shapes[i] == 1:
            position = list(POSITIONS)[scenes.positions[i, 0]]
            phrases = [phrase for _, phrase in POSITIONS.values() if phrase in caption]
            assert phrases in ([], [POSITIONS[position][1]]), caption


def test_relation_in_the_caption_matches_the_centres(scenes):
    two = (scenes.num_shapes == 2).nonzero().flatten()
    assert len(two) > 50
    for i in two.tolist():
        relation = list(RELATIONS)[scenes.relations[i]]
        assert RELATIONS[relation][2] in scenes.captions[i]
        (x0, y0), (x1, y1) = scenes.centres[i].tolist()
        holds = {"left of": x0 < x1, "right of": x0 > x1, "above": y0 < y1, "below": y0 > y1}
        assert holds[relation], scenes.captions[i]


def test_captions_sometimes_name_only_the_colour_or_only_the_shape(scenes):
    colour_only = [c for c in scenes.captions if " shape" in c]
    shape_only = [c for c in scenes.captions if not any(colour in c.split() for colour in COLOURS)]
    assert colour_only and shape_only


def test_layout_is_the_same_at_any_image_size():
    small = generate_scenes(20, SceneConfig(image_size=32), seed=4)
    large = generate_scenes(20, SceneConfig(image_size=64), seed=4)
    assert small.captions == large.captions
    assert (resize(large.images, 32) - small.images).abs().mean() < 0.02


def test_a_shape_painted_on_top_hides_that_part_of_the_mask_below():
    config = SceneConfig()
    scene = {
        "shapes": [("square", "red", "large", "centre"), ("circle", "blue", "small", "centre")],
        "centres": np.array([[0.5, 0.5], [0.5, 0.5]]),
    }
    image, masks = render_scene(config, scene)
    alone, alone_masks = render_scene(
        config, {"shapes": scene["shapes"][:1], "centres": scene["centres"][:1]}
    )
    assert masks[1].any()
    assert not (masks[0] & masks[1]).any()
    assert torch.equal(masks[0] | masks[1], alone_masks[0] | masks[1])
    assert torch.allclose(image[:, 16, 16], torch.tensor(COLOURS["blue"]))
    assert torch.allclose(alone[:, 16, 16], torch.tensor(COLOURS["red"]))


@pytest.mark.parametrize(
    "fields",
    [
        {"shapes": ("circle", "hexagon")},
        {"colours": ("red", "teal")},
        {"min_shapes": 2, "max_shapes": 1},
        {"max_shapes": 3},
        {"held_out": (("circle", "white"),)},
        {"image_size": 4},
    ],
)
def test_scene_config_rejects_invalid_fields(fields):
    with pytest.raises(ValueError):
        SceneConfig(**fields)


def test_generate_rejects_unknown_combinations_and_empty_sets():
    with pytest.raises(ValueError, match="combinations"):
        generate_scenes(4, combinations="held_out")
    with pytest.raises(ValueError, match="unseen"):
        generate_scenes(4, SceneConfig(held_out=()), combinations="unseen")
    with pytest.raises(ValueError, match="n must"):
        generate_scenes(0)
