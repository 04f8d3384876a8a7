import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import ViTMAEDecoder, ViTMAEEmbeddings

from minifm.hf import from_transformers
from minifm.hf.common import load_converted
from minifm.hf.mae import MAE_RULES, mae_config_from_transformers
from minifm.mae import (
    MAE,
    MAEConfig,
    patchify,
    random_masking,
    unpatchify,
    vit_classifier_from_mae,
)
from minifm.vit import ViTConfig

TOLERANCE = 1e-5  # float32, eval mode, encoder depth 2 and decoder depth up to 3

# 49 patches at mask_ratio 0.6 keep int(49 * 0.4) = 19 patches: the rounded-down count.
PARITY_CONFIGS = {
    "patch4_defaults": {},
    "49_patches_ratio_0.6_norm_pix": {"image_size": 28, "mask_ratio": 0.6, "norm_pix_loss": True},
    "patch8_wide_deep_decoder": {
        "image_size": 32,
        "patch_size": 8,
        "num_channels": 1,
        "decoder_hidden_size": 48,
        "decoder_num_hidden_layers": 3,
        "decoder_num_attention_heads": 3,
        "decoder_intermediate_size": 40,
        "qkv_bias": False,
        "hidden_act": "gelu_new",
        "layer_norm_eps": 1e-6,
    },
    "patch2_ratio_0.9_norm_pix": {
        "image_size": 12,
        "patch_size": 2,
        "mask_ratio": 0.9,
        "norm_pix_loss": True,
    },
}


def hf_config(**overrides) -> ViTMAEConfig:
    fields = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "decoder_hidden_size": 16,
        "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 24,
        "image_size": 16,
        "patch_size": 4,
    }
    return ViTMAEConfig(**{**fields, **overrides})


def random_hf_model(config: ViTMAEConfig) -> ViTMAEForPreTraining:
    """A transformers MAE whose every tensor is random, so no zero or one hides a wrong mapping."""
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(config).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(0.1 * torch.randn_like(tensor))
    return model


def inputs_for(config: ViTMAEConfig, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    size, channels = config.image_size, config.num_channels
    pixels = torch.randn(batch, channels, size, size, generator=generator)
    noise = torch.rand(batch, (size // config.patch_size) ** 2, generator=generator)
    return pixels, noise


@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_mae_outputs_match_transformers(name):
    hf_model = random_hf_model(hf_config(**PARITY_CONFIGS[name]))
    ours = from_transformers(hf_model)
    pixels, noise = inputs_for(hf_model.config)
    with torch.no_grad():
        reference = hf_model(pixels, noise=noise)
        output = ours(pixels, noise)

    assert torch.equal(output.mask, reference.mask)
    assert torch.equal(output.ids_restore, reference.ids_restore)
    torch.testing.assert_close(output.pred, reference.logits, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(output.loss, reference.loss, atol=TOLERANCE, rtol=0)


def test_kept_count_rounds_down():
    hf_model = random_hf_model(hf_config(**PARITY_CONFIGS["49_patches_ratio_0.6_norm_pix"]))
    ours = from_transformers(hf_model)
    pixels, noise = inputs_for(hf_model.config)
    with torch.no_grad():
        output = ours(pixels, noise)
    assert ours.config.num_kept == 19
    assert (output.mask == 0).sum(dim=1).tolist() == [19, 19, 19]


def test_gradients_match_transformers():
    hf_model = random_hf_model(hf_config(**PARITY_CONFIGS["49_patches_ratio_0.6_norm_pix"]))
    ours = from_transformers(hf_model).train()
    hf_model.train()
    pixels, noise = inputs_for(hf_model.config)
    hf_model(pixels, noise=noise).loss.backward()
    ours(pixels, noise).loss.backward()
    pairs = {
        "encoder.patch_embed.projection.bias": "vit.embeddings.patch_embeddings.projection.bias",
        "encoder.blocks.1.attn.q.weight": "vit.layers.1.attention.q_proj.weight",
        "mask_token": "decoder.mask_token",
        "decoder_pred.weight": "decoder.decoder_pred.weight",
    }
    for ours_name, hf_name in pairs.items():
        torch.testing.assert_close(
            ours.get_parameter(ours_name).grad,
            hf_model.get_parameter(hf_name).grad,
            atol=TOLERANCE,
            rtol=0,
        )


def test_sincos_embeddings_match_transformers():
    config = hf_config(image_size=24)  # a 6 x 6 grid
    hf_embeddings = ViTMAEEmbeddings(config)
    hf_embeddings.initialize_weights()
    hf_decoder = ViTMAEDecoder(config, num_patches=36)
    ours = MAE(
        MAEConfig(
            encoder=ViTConfig(image_size=24, patch_size=4, hidden_size=32, num_attention_heads=4),
            decoder_hidden_size=16,
            decoder_num_attention_heads=2,
        )
    )
    torch.testing.assert_close(ours.encoder.pos_embed, hf_embeddings.position_embeddings)
    torch.testing.assert_close(ours.decoder_pos_embed, hf_decoder.decoder_pos_embed)
    assert not ours.encoder.pos_embed.requires_grad


def test_patchify_matches_transformers_and_inverts():
    hf_model = ViTMAEForPreTraining(hf_config(num_channels=3))
    pixels = torch.randn(2, 3, 16, 16)
    patches = patchify(pixels, 4)
    torch.testing.assert_close(patches, hf_model.patchify(pixels), atol=0, rtol=0)
    torch.testing.assert_close(unpatchify(patches, 4, (4, 4)), pixels, atol=0, rtol=0)


def test_masking_keeps_the_patches_with_the_smallest_noise():
    tokens = torch.arange(8.0).reshape(1, 8, 1)  # token i carries the value i
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.6, 0.5]])
    visible, mask, ids_restore = random_masking(tokens, mask_ratio=0.5, noise=noise)
    assert visible.flatten().tolist() == [1.0, 5.0, 3.0, 7.0]  # by increasing noise
    assert mask.tolist() == [[1, 0, 1, 0, 1, 0, 1, 0]]
    assert torch.equal(ids_restore, noise.argsort(dim=1).argsort(dim=1))


def test_masking_without_noise_varies_per_sample():
    torch.manual_seed(0)
    _, mask, _ = random_masking(torch.zeros(8, 64, 2), mask_ratio=0.75)
    _, second_mask, _ = random_masking(torch.zeros(8, 64, 2), mask_ratio=0.75)
    assert mask.sum(dim=1).tolist() == [48] * 8
    assert len({tuple(row.tolist()) for row in torch.cat([mask, second_mask])}) == 16


def test_loss_ignores_predictions_at_visible_patches():
    torch.manual_seed(0)
    mae = MAE(MAEConfig.digits())
    pixels, noise = torch.rand(2, 1, 16, 16), torch.rand(2, 16)
    output = mae(pixels, noise)
    changed = output.pred + 5.0 * (1 - output.mask)[..., None]  # move visible predictions only
    torch.testing.assert_close(mae.loss(pixels, changed, output.mask), output.loss)
    moved_masked = output.pred + 5.0 * output.mask[..., None]
    assert mae.loss(pixels, moved_masked, output.mask) > output.loss + 1.0


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_perfect_prediction_reconstructs_the_image(norm_pix_loss):
    torch.manual_seed(0)
    mae = MAE(MAEConfig.digits(norm_pix_loss=norm_pix_loss))
    pixels = torch.rand(2, 1, 16, 16)
    output = mae(pixels)
    perfect = mae.target(pixels)
    assert mae.loss(pixels, perfect, output.mask) == 0
    torch.testing.assert_close(mae.predicted_pixels(pixels, perfect), pixels, atol=1e-5, rtol=0)
    pasted = mae.paste_visible(pixels, output.pred, output.mask)
    visible = mae.paste_visible(pixels, output.pred, torch.zeros_like(output.mask))
    torch.testing.assert_close(visible, pixels)
    assert not torch.allclose(pasted, pixels)


def test_zero_mask_ratio_matches_plain_vit():
    torch.manual_seed(0)
    mae = MAE(MAEConfig.digits(mask_ratio=0.0)).eval()
    pixels = torch.rand(2, 1, 16, 16)
    in_order = torch.arange(16.0).expand(2, 16)
    with torch.no_grad():
        latent, mask, _ = mae.encode_visible(pixels, in_order)
        classifier = vit_classifier_from_mae(mae, num_labels=10).eval()
        torch.testing.assert_close(latent, classifier.forward_features(pixels))
        assert mae(pixels, in_order).loss == 0  # nothing is masked, so nothing to reconstruct
    assert mask.sum() == 0
    assert classifier(pixels).shape == (2, 10)
    assert not classifier.pos_embed.requires_grad


@pytest.mark.parametrize("mask_ratio", [1.0, -0.1, 1.5])
def test_mask_ratio_outside_zero_one_is_rejected(mask_ratio):
    with pytest.raises(ValueError, match="mask_ratio must lie in"):
        MAEConfig.digits(mask_ratio=mask_ratio)
    with pytest.raises(ValueError, match="mask_ratio must lie in"):
        random_masking(torch.zeros(1, 4, 2), mask_ratio)


def test_noise_of_the_wrong_shape_is_rejected():
    mae = MAE(MAEConfig.digits())
    with pytest.raises(ValueError, match=r"noise must have shape .* \(2, 16\); got \(2, 15\)"):
        mae(torch.rand(2, 1, 16, 16), torch.rand(2, 15))


def test_indivisible_image_size_is_rejected():
    with pytest.raises(ValueError, match="not divisible by patch size"):
        MAEConfig.digits(encoder=ViTConfig.digits(num_labels=0, image_size=18))
    mae = MAE(MAEConfig.digits())
    with pytest.raises(ValueError, match="not divisible by patch size"):
        mae(torch.rand(1, 1, 18, 18))
    with pytest.raises(ValueError, match="built for image_size=16"):
        mae(torch.rand(1, 1, 20, 20))


def test_encoder_with_head_is_rejected():
    with pytest.raises(ValueError, match="encoder.num_labels=10"):
        MAEConfig(encoder=ViTConfig.digits())


@pytest.mark.parametrize(("field", "value"), [("hidden_dropout_prob", 0.1), ("hidden_act", "mish")])
def test_converter_rejects_unsupported_configs(field, value):
    model = ViTMAEForPreTraining(hf_config(**{field: value}))
    with pytest.raises(ValueError, match=f"{field}={value!r} is not supported"):
        from_transformers(model)


def test_converter_lists_missing_keys():
    hf_model = random_hf_model(hf_config())
    state = dict(hf_model.state_dict())
    del state["decoder.mask_token"]
    ours = MAE(mae_config_from_transformers(hf_model.config))
    with pytest.raises(ValueError, match=r"missing keys \[.*'mask_token'"):
        load_converted(ours, state, MAE_RULES, "test state dict")
