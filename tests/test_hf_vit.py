import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from minifm.attention import set_attention_backend
from minifm.hf import from_transformers, load_pretrained

TOLERANCE = 1e-5  # float32, eval mode, depth 2

CONFIGS = {
    "patch4": {},
    "patch2_no_qkv_bias": {"patch_size": 2, "qkv_bias": False},
    "gelu_new_eps": {"hidden_act": "gelu_new", "layer_norm_eps": 1e-6},
    "quick_gelu_patch8": {"hidden_act": "quick_gelu", "patch_size": 8, "image_size": 32},
    "non_square": {"image_size": (16, 24), "num_channels": 1},
    "dropout": {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.2},
}


def hf_config(**overrides):
    fields = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "image_size": 16,
        "patch_size": 4,
        "num_labels": 5,
    }
    return ViTConfig(**{**fields, **overrides})


def images_for(config, batch=2):
    size = config.image_size
    height, width = size if isinstance(size, (tuple, list)) else (size, size)
    return torch.randn(
        batch, config.num_channels, height, width, generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_vit_model_features_and_pooler_match(name):
    torch.manual_seed(0)
    hf_model = ViTModel(hf_config(**CONFIGS[name])).eval()
    ours = from_transformers(hf_model)
    images = images_for(hf_model.config)
    with torch.no_grad():
        reference = hf_model(images)
        torch.testing.assert_close(
            ours.forward_features(images), reference.last_hidden_state, atol=TOLERANCE, rtol=0
        )
        torch.testing.assert_close(ours(images), reference.pooler_output, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_classifier_logits_match(name):
    torch.manual_seed(0)
    hf_model = ViTForImageClassification(hf_config(**CONFIGS[name])).eval()
    ours = from_transformers(hf_model)
    images = images_for(hf_model.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), hf_model(images).logits, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("size", [(24, 24), (20, 32), (8, 8)])
def test_interpolated_position_embeddings_match(size):
    torch.manual_seed(0)
    hf_model = ViTForImageClassification(hf_config()).eval()
    ours = from_transformers(hf_model)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        reference = hf_model(images, interpolate_pos_encoding=True, output_hidden_states=True)
        torch.testing.assert_close(
            ours(images, interpolate_pos_encoding=True), reference.logits, atol=TOLERANCE, rtol=0
        )


def test_converted_model_keeps_attention_maps_under_sdpa():
    torch.manual_seed(0)
    hf_model = ViTModel(hf_config()).eval()
    hf_model.set_attn_implementation("eager")  # transformers returns maps only from eager
    ours = from_transformers(hf_model)
    images = images_for(hf_model.config)
    with torch.no_grad():
        reference = hf_model(images, output_attentions=True).attentions
        _, maps = ours.forward_features(images, return_attentions=True)
    for ours_layer, reference_layer in zip(maps, reference, strict=True):
        torch.testing.assert_close(ours_layer, reference_layer, atol=TOLERANCE, rtol=0)


def test_unexpected_keys_are_listed():
    hf_model = ViTModel(hf_config(), use_mask_token=True).eval()
    with pytest.raises(ValueError, match=r"unexpected keys \['embeddings\.mask_token'\]"):
        from_transformers(hf_model)


def test_unsupported_activation_is_rejected():
    hf_model = ViTModel(hf_config(hidden_act="gelu_fast")).eval()
    with pytest.raises(ValueError, match="hidden_act='gelu_fast' is not supported"):
        from_transformers(hf_model)


def test_unknown_class_is_rejected():
    with pytest.raises(TypeError, match="cannot convert a Linear"):
        from_transformers(torch.nn.Linear(2, 2))


def test_load_pretrained_reads_a_local_folder(tmp_path):
    torch.manual_seed(0)
    hf_model = ViTForImageClassification(hf_config()).eval()
    hf_model.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))
    images = images_for(hf_model.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), hf_model(images).logits, atol=TOLERANCE, rtol=0)


def test_vit_training_dropout_parity():
    # Same dropout sites in the same order draw the same masks from the same seed.
    config = hf_config(
        hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.2, attn_implementation="eager"
    )
    hf_model = ViTForImageClassification(config).train()
    ours = set_attention_backend(from_transformers(hf_model), "math").train()
    images = images_for(config)
    torch.manual_seed(0)
    expected = hf_model(images).logits
    torch.manual_seed(0)
    torch.testing.assert_close(ours(images), expected, atol=TOLERANCE, rtol=0)
