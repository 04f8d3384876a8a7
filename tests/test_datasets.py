import pytest
import torch

from minifm.datasets import load_digits, load_faces, load_photograph, to_hf_dataset


def test_digits_split_is_seeded_stratified_and_disjoint():
    split = load_digits(image_size=16, seed=0)
    again = load_digits(image_size=16, seed=0)
    other = load_digits(image_size=16, seed=1)
    assert split.train_images.shape == (1438, 1, 16, 16)
    assert split.test_images.shape == (359, 1, 16, 16)
    assert torch.equal(split.test_labels, again.test_labels)
    assert not torch.equal(split.test_labels, other.test_labels)
    assert split.train_images.min() >= 0 and split.train_images.max() <= 1
    counts = torch.bincount(split.test_labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    train_rows = {tuple(x.flatten().tolist()) for x in split.train_images[:, :, ::2, ::2]}
    overlap = sum(
        tuple(x.flatten().tolist()) in train_rows for x in split.test_images[:, :, ::2, ::2]
    )
    assert overlap < 5  # the raw data holds a few duplicate digits, never the same sample twice


def test_faces_are_labelled_and_resized():
    split = load_faces(image_size=24)
    assert split.train_images.shape[1:] == (1, 24, 24)
    assert len(split.train_labels) + len(split.test_labels) == 200
    assert split.test_labels.sum() == 20


@pytest.mark.parametrize(("name", "channels"), [("chelsea", 3), ("camera", 1), ("horse", 1)])
def test_photographs_load_as_channels_first(name, channels):
    image = load_photograph(name, size=64)
    assert image.shape == (channels, 64, 64)
    assert image.min() >= 0 and image.max() <= 1


def test_unknown_photograph_is_rejected():
    with pytest.raises(ValueError, match="unknown photograph 'lena'"):
        load_photograph("lena")


def test_hf_dataset_round_trip():
    split = load_digits()
    dataset = to_hf_dataset(split.test_images[:10], split.test_labels[:10]).with_format("torch")
    assert torch.allclose(dataset["pixel_values"][:], split.test_images[:10])
    assert torch.equal(dataset["label"][:], split.test_labels[:10])
