import pytest
import torch

from minifm.vit import ViT, ViTConfig


def small_config(**overrides):
    return ViTConfig.digits(**{"num_hidden_layers": 2, **overrides})


def test_shapes_of_features_and_logits():
    model = ViT(small_config()).eval()
    images = torch.randn(3, 1, 16, 16)
    assert model.forward_features(images).shape == (3, 17, 64)
    assert model(images).shape == (3, 10)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_attention_maps_are_returned_under_every_backend(backend):
    torch.manual_seed(0)
    reference = ViT(small_config(attention_backend="math")).eval()
    model = ViT(small_config(attention_backend=backend)).eval()
    model.load_state_dict(reference.state_dict())
    images = torch.randn(2, 1, 16, 16)
    features, maps = model.forward_features(images, return_attentions=True)
    _, reference_maps = reference.forward_features(images, return_attentions=True)
    assert len(maps) == 2
    assert maps[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(maps[1], reference_maps[1])
    torch.testing.assert_close(features, reference.forward_features(images), atol=1e-5, rtol=0)


def test_other_resolution_needs_interpolation_flag():
    model = ViT(small_config()).eval()
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(torch.randn(1, 1, 24, 24))
    assert model(torch.randn(1, 1, 24, 32), interpolate_pos_encoding=True).shape == (1, 10)


def test_non_square_image_config():
    model = ViT(small_config(image_size=(12, 20), patch_size=4)).eval()
    assert model.forward_features(torch.randn(2, 1, 12, 20)).shape == (2, 1 + 15, 64)


def test_mean_pooling_averages_patch_tokens():
    model = ViT(small_config(pooling="mean", num_labels=0)).eval()
    images = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(model(images), model.forward_features(images)[:, 1:].mean(1))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="not divisible by patch size"):
        ViTConfig.digits(image_size=18)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        ViTConfig.digits(pooling="max")
    with pytest.raises(ValueError, match="unknown attention backend 'xla'"):
        ViTConfig.digits(attention_backend="xla")
    with pytest.raises(ValueError, match="divisible by num_attention_heads"):
        ViTConfig.digits(num_attention_heads=5)
    with pytest.raises(ValueError, match=r"hidden_dropout_prob=1.0 must lie in \[0, 1\)"):
        ViTConfig.digits(hidden_dropout_prob=1.0)
    with pytest.raises(ValueError, match="pooler_output_size=20 needs a pooler"):
        ViTConfig.digits(pooler_output_size=20)
    with pytest.raises(ValueError, match="unknown activation 'tanh2'"):
        ViTConfig.digits(pooler_act="tanh2")


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = ViT(ViTConfig.digits(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    images = torch.rand(2, 1, 16, 16)
    model.eval()
    torch.testing.assert_close(model(images), model(images))
    model.train()
    assert not torch.allclose(model(images), model(images))
