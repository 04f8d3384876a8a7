"""The UNet: parity with diffusers' UNet2DModel, conditioning, input checks, the training recipe."""

from types import SimpleNamespace

import pytest
import torch

from minifm.diffusion import DDPMSampler
from minifm.diffusion.blocks import timestep_embedding
from minifm.diffusion.training import (
    DDPMRecipe,
    diffusion_loss,
    drop_labels,
    load_ddpm,
    min_snr_weights,
    save_ddpm,
    train_class_conditional_ddpm,
)
from minifm.diffusion.unet import UNet, UNetConfig
from minifm.hf import from_diffusers
from minifm.hf.unet import unet_config_from_diffusers, unet_to_diffusers

diffusers = pytest.importorskip("diffusers")

PLAIN = ("DownBlock2D", "DownBlock2D"), ("UpBlock2D", "UpBlock2D")
ATTENTION = ("AttnDownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "AttnUpBlock2D")

# Small diffusers configs, one per feature the converter maps. Sizes 8 x 8 unless stated.
PARITY_CONFIGS = {
    "digits_preset": dict(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
        num_class_embeds=11,
    ),
    "no_attention_two_layers": dict(
        block_out_channels=(16, 24),
        down_block_types=PLAIN[0],
        up_block_types=PLAIN[1],
        layers_per_block=2,
        norm_num_groups=4,
        add_attention=False,
        in_channels=3,
        out_channels=2,
    ),
    "attention_everywhere_scale_shift": dict(
        block_out_channels=(16, 32),
        down_block_types=ATTENTION[0],
        up_block_types=ATTENTION[1],
        layers_per_block=2,
        norm_num_groups=8,
        attention_head_dim=None,
        resnet_time_scale_shift="scale_shift",
        mid_block_scale_factor=1.414,
        norm_eps=1e-6,
    ),
    "sin_first_shifted_frequencies": dict(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=4,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        center_input_sample=True,
        time_embedding_dim=20,
        attn_norm_num_groups=2,
    ),
    "no_mid_block_with_classes": dict(
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        mid_block_type=None,
        num_class_embeds=3,
    ),
}


def diffusers_unet(**config):
    """Build a seeded UNet2DModel with perturbed weights, so no tensor keeps its initial value."""
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**{"in_channels": 3, "out_channels": 3, **config}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_unet_matches_diffusers(name):
    config = PARITY_CONFIGS[name]
    reference = diffusers_unet(**config)
    ours = from_diffusers(reference)
    size = config.get("sample_size", 8)
    sample = torch.randn(3, reference.config.in_channels, size, size)
    timesteps = torch.tensor([0, 417, 999])
    labels = torch.tensor([0, 1, 2]) if config.get("num_class_embeds") else None

    with torch.no_grad():
        expected = reference(sample, timesteps, class_labels=labels).sample
        actual = ours(sample, timesteps, labels)

    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_unet_parity_non_square_scalar_timestep():
    reference = diffusers_unet(**PARITY_CONFIGS["attention_everywhere_scale_shift"])
    ours = from_diffusers(reference)
    sample = torch.randn(2, 3, 8, 16)
    with torch.no_grad():
        expected = reference(sample, 250).sample
        actual = ours(sample, 250)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_unet_gradients_match_diffusers():
    reference = diffusers_unet(**PARITY_CONFIGS["digits_preset"])
    ours = from_diffusers(reference)
    sample, timesteps = torch.randn(2, 1, 16, 16), torch.tensor([10, 900])
    labels = torch.tensor([3, 10])

    reference(sample, timesteps, class_labels=labels).sample.square().mean().backward()
    ours(sample, timesteps, labels).square().mean().backward()

    expected = reference.conv_in.weight.grad
    torch.testing.assert_close(ours.conv_in.weight.grad, expected, atol=1e-5, rtol=1e-4)


def test_digits_preset_has_the_reference_layout():
    reference = diffusers.UNet2DModel(**PARITY_CONFIGS["digits_preset"])
    converted = from_diffusers(reference).state_dict()
    preset = UNet(UNetConfig.digits()).state_dict()
    assert {k: v.shape for k, v in preset.items()} == {k: v.shape for k, v in converted.items()}
    assert sum(p.numel() for p in preset.values()) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", ["digits_preset", "sin_first_shifted_frequencies"])
def test_unet_to_diffusers_matches(name):
    torch.manual_seed(0)
    config = unet_config_from_diffusers(
        SimpleNamespace(**diffusers_unet(**PARITY_CONFIGS[name]).config)
    )
    ours = UNet(config).eval()
    theirs = unet_to_diffusers(ours)
    size = config.sample_size or 8
    sample, timesteps = torch.randn(2, config.in_channels, size, size), torch.tensor([3, 800])
    labels = torch.tensor([1, 2]) if config.num_class_embeds else None
    with torch.no_grad():
        expected = ours(sample, timesteps, labels)
        actual = theirs(sample, timesteps, class_labels=labels).sample
    assert type(theirs).__name__ == "UNet2DModel"
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dim", [7, 16])
@pytest.mark.parametrize("flip_sin_to_cos", [True, False])
def test_timestep_embedding_matches_diffusers(dim, flip_sin_to_cos):
    from diffusers.models.embeddings import get_timestep_embedding

    timesteps = torch.tensor([0.0, 1.0, 37.5, 999.0])
    expected = get_timestep_embedding(
        timesteps, dim, flip_sin_to_cos=flip_sin_to_cos, downscale_freq_shift=1
    )
    actual = timestep_embedding(timesteps, dim, flip_sin_to_cos=flip_sin_to_cos, freq_shift=1)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


def hf_config_with(**changes):
    config = dict(diffusers.UNet2DModel(**PARITY_CONFIGS["no_mid_block_with_classes"]).config)
    return SimpleNamespace(**{**config, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        ({"downsample_type": "resnet"}, "downsample_type='resnet'"),
        ({"upsample_type": "resnet"}, "upsample_type='resnet'"),
        ({"act_fn": "mish"}, "act_fn='mish'"),
        ({"norm_num_groups": None}, "norm_num_groups=None"),
        ({"down_block_types": ("SkipDownBlock2D", "DownBlock2D")}, "SkipDownBlock2D"),
        ({"up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}, "CrossAttnUpBlock2D"),
        ({"mid_block_type": "UNetMidBlock2DCrossAttn"}, "UNetMidBlock2DCrossAttn"),
    ],
)
def test_converter_rejects_unsupported_options(changes, message):
    with pytest.raises(ValueError, match=message):
        unet_config_from_diffusers(hf_config_with(**changes))


def test_converter_accepts_unet_res_prefix():
    config = unet_config_from_diffusers(
        hf_config_with(down_block_types=("UNetResDownBlock2D", "AttnDownBlock2D"))
    )
    assert config.down_block_types == ("DownBlock2D", "AttnDownBlock2D")


def test_converter_lists_unexpected_keys():
    reference = diffusers_unet(**PARITY_CONFIGS["no_attention_two_layers"])
    reference.register_buffer("extra_table", torch.zeros(2))
    with pytest.raises(ValueError, match="unexpected keys \\['extra_table'\\]"):
        from_diffusers(reference)


def small_config(**overrides):
    preset = dict(
        sample_size=8,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
        num_class_embeds=4,
        null_class=True,
        in_channels=1,
        out_channels=1,
    )
    return UNetConfig.digits(**{**preset, **overrides})


def test_omitted_labels_mean_the_null_class():
    torch.manual_seed(0)
    model = UNet(small_config()).eval()
    sample, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 500])
    with torch.no_grad():
        unconditional = model(sample, t)
        null = model(sample, t, torch.tensor([3, 3]))
        digit = model(sample, t, torch.tensor([0, 0]))
    assert model.config.null_class_index == 3
    torch.testing.assert_close(unconditional, null, atol=0, rtol=0)
    assert (unconditional - digit).abs().max() > 1e-4


def test_class_label_out_of_range_is_rejected():
    model = UNet(small_config()).eval()
    sample = torch.randn(2, 1, 8, 8)
    for labels in (torch.tensor([0, 4]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 3\]"):
            model(sample, 10, labels)
    with pytest.raises(TypeError, match="class_labels must be integers"):
        model(sample, 10, torch.tensor([0.0, 1.0]))


def test_labels_without_class_embedding_are_rejected():
    model = UNet(small_config(num_class_embeds=None, null_class=False))
    with pytest.raises(ValueError, match="no class embedding"):
        model(torch.randn(1, 1, 8, 8), 10, torch.tensor([0]))


def test_missing_labels_without_null_class_are_rejected():
    model = UNet(small_config(null_class=False))
    with pytest.raises(ValueError, match="class_labels is required"):
        model(torch.randn(1, 1, 8, 8), 10)


def test_image_size_the_downsampling_cannot_divide_is_rejected():
    model = UNet(
        small_config(
            block_out_channels=(8, 16, 16),
            down_block_types=("DownBlock2D",) * 3,
            up_block_types=("UpBlock2D",) * 3,
        )
    )
    with pytest.raises(ValueError, match=r"image size \(8, 6\) is not divisible by 4"):
        model(torch.randn(1, 1, 8, 6), 10)
    with pytest.raises(ValueError, match=r"sample_size \(9, 9\) is not divisible by 2"):
        small_config(sample_size=9)


def test_wrong_channel_count_and_context_are_rejected():
    model = UNet(small_config())
    with pytest.raises(ValueError, match=r"sample must have shape \(batch, 1, height, width\)"):
        model(torch.randn(1, 3, 8, 8), 10)
    with pytest.raises(ValueError, match="no cross-attention layers"):
        model(torch.randn(1, 1, 8, 8), 10, context=torch.randn(1, 4, 16))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"down_block_types": ("DownBlock2D",)}, "must have the same length"),
        ({"down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D")}, "CrossAttnDownBlock2D"),
        ({"attention_head_dim": 3}, "divisible by attention_head_dim=3"),
        ({"norm_num_groups": 3}, "divisible by the GroupNorm group count 3"),
        ({"resnet_time_scale_shift": "spatial"}, "resnet_time_scale_shift 'spatial'"),
        ({"act_fn": "gelu"}, "act_fn 'gelu' is not supported"),
        ({"num_class_embeds": 1}, "null_class=True needs num_class_embeds >= 2"),
        ({"layers_per_block": 0}, "layers_per_block must be at least 1"),
        ({"downsample_padding": 2}, "downsample_padding must be 0 or 1"),
        ({"attention_backend": "flash"}, "unknown attention backend"),
    ],
)
def test_invalid_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_attention_backends_agree():
    torch.manual_seed(0)
    reference = UNet(small_config(attention_backend="math")).eval()
    fused = UNet(small_config(attention_backend="sdpa")).eval()
    fused.load_state_dict(reference.state_dict())
    sample, t, labels = torch.randn(2, 1, 8, 8), torch.tensor([1, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(
            fused(sample, t, labels), reference(sample, t, labels), atol=1e-5, rtol=0
        )


def test_dropout_acts_only_in_training():
    torch.manual_seed(0)
    model = UNet(small_config(dropout=0.5))
    sample, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 700])
    with torch.no_grad():
        first, second = model(sample, t), model(sample, t)
        model.eval()
        third, fourth = model(sample, t), model(sample, t)
    assert (first - second).abs().max() > 1e-4
    torch.testing.assert_close(third, fourth, atol=0, rtol=0)


def test_drop_labels_replaces_about_the_requested_share():
    torch.manual_seed(0)
    labels = torch.zeros(10_000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, null_class=10)
    share = (dropped == 10).float().mean().item()
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs(share - 0.1) < 0.01  # 10 standard deviations of a binomial share at n = 10,000


def test_min_snr_weights_cap_high_snr_timesteps():
    alpha_bar = torch.tensor([0.5, 5 / 6, 0.99])  # SNR 1, 5 and 99
    epsilon = min_snr_weights(alpha_bar, 5.0, "epsilon")
    torch.testing.assert_close(epsilon, torch.tensor([1.0, 1.0, 5 / 99]))
    velocity = min_snr_weights(alpha_bar, 5.0, "v_prediction")
    torch.testing.assert_close(velocity, torch.tensor([1 / 2, 5 / 6, 5 / 100]))
    sample = min_snr_weights(alpha_bar, 5.0, "sample")
    torch.testing.assert_close(sample, torch.tensor([1.0, 5.0, 5.0]))


@pytest.mark.parametrize(
    "prediction_type, expected",
    [("epsilon", 1.0), ("v_prediction", 0.0), ("sample", 0.0)],
)
def test_min_snr_weights_at_zero_snr(prediction_type, expected):
    weights = min_snr_weights(torch.tensor([0.0]), 5.0, prediction_type)
    torch.testing.assert_close(weights, torch.tensor([expected]))


def test_min_snr_loss_without_cap_is_plain_loss():
    torch.manual_seed(0)
    model = UNet(small_config(num_class_embeds=11)).eval()
    ddpm = DDPMSampler(DDPMRecipe().schedule)
    x0, labels = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 10])
    torch.manual_seed(1)
    plain = diffusion_loss(model, x0, labels, ddpm, class_dropout=0.0)
    torch.manual_seed(1)
    uncapped = diffusion_loss(model, x0, labels, ddpm, class_dropout=0.0, min_snr_gamma=1e9)
    torch.testing.assert_close(uncapped, plain, atol=1e-6, rtol=1e-5)


def test_training_recipe_lowers_loss_and_saves(tmp_path):
    recipe = DDPMRecipe(steps=30, batch_size=32, lr=3e-3, warmup_steps=3, image_size=8)
    config = small_config(num_class_embeds=11, sample_size=8)
    model, sampler, history = train_class_conditional_ddpm(recipe, config, progress=False)
    first, last = sum(history.losses[:5]) / 5, sum(history.losses[-5:]) / 5
    assert last < 0.8 * first

    save_ddpm(tmp_path / "ddpm.safetensors", model, recipe, note="test")
    loaded, loaded_sampler, loaded_recipe, metadata = load_ddpm(tmp_path / "ddpm.safetensors")
    assert loaded_recipe == recipe
    assert loaded.config == model.config
    assert metadata["note"] == "test"
    torch.testing.assert_close(loaded_sampler.alphas_cumprod, sampler.alphas_cumprod)
    x0, labels = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 10])
    torch.manual_seed(1)
    expected = diffusion_loss(model, x0, labels, sampler, class_dropout=0.0)
    torch.manual_seed(1)
    actual = diffusion_loss(loaded, x0, labels, loaded_sampler, class_dropout=0.0)
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def test_training_recipe_rejects_a_unet_without_null_class():
    with pytest.raises(ValueError, match="num_class_embeds=11 and null_class=True"):
        train_class_conditional_ddpm(
            DDPMRecipe(steps=1), small_config(num_class_embeds=10, null_class=False)
        )
