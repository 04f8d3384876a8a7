import pytest
import torch
from torch import nn

from minifm.checkpoint import load_model, load_tensors, save_model, save_tensors


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    path = tmp_path / "model.safetensors"
    save_model(model, path, {"recipe": "test"})
    restored = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    assert load_model(restored, path) == {"recipe": "test"}
    for (name, a), b in zip(
        model.state_dict().items(), restored.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"weight": torch.zeros(2, 2), "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"missing keys \['bias'\], unexpected keys \['extra'\]"):
        load_model(nn.Linear(2, 2), path)


def test_unexpected_keys_alone_rejected(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(nn.Linear(2, 2), path)
    tensors, _ = load_tensors(path)
    save_tensors(path, {**tensors, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"missing keys \[\], unexpected keys \['extra'\]"):
        load_model(nn.Linear(2, 2), path)


def test_wrong_shape_is_rejected(tmp_path):
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"weight: got \(3, 2\), expected \(2, 2\)"):
        load_model(nn.Linear(2, 2), path)


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"a": torch.ones(2)})
    with pytest.raises(TypeError):
        save_tensors(path, {"a": torch.zeros(2)}, metadata={"bad": 1})
    tensors, _ = load_tensors(path)
    assert torch.equal(tensors["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
