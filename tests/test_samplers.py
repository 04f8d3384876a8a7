"""DDPM and DDIM samplers against diffusers step by step, and the loops built on them.

Parity runs whole trajectories in float64 on both sides. diffusers computes each step's
coefficients from 0-dim tensors in the dtype of its tables, and with float32 tables their
rounding adds up to about 1e-4 over 1000 DDPM steps. `reference_in_float64` casts the
diffusers tables to float64, so both implementations start from the same float32 table
values and differ only in float64 rounding. minifm's own float32 trajectories are checked
against that reference with a tolerance of 1e-4.
"""

import itertools

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from minifm.diffusion import (
    DDIMConfig,
    DDIMSampler,
    DDPMConfig,
    DDPMSampler,
    classifier_free_guidance,
    guided_model_fn,
    image_to_image,
    inpaint,
    sample,
    schedule,
    timestep_schedule,
)
from minifm.diffusion.samplers import standard_normal
from minifm.hf import from_diffusers

TOLERANCE = 1e-6  # float64 trajectories, every step
SHAPE = (2, 3, 4, 4)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SCHEDULES = {
    "linear": {"beta_start": 1e-4, "beta_end": 0.02},
    "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {},
}
SPACINGS = ("leading", "trailing", "linspace")


def fake_model(x, t):
    """A fixed nonlinear function of (x, t), so that trajectories are nontrivial."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.5 * x + 0.3 * torch.sin(3 * x + 0.01 * t)


def reference_in_float64(scheduler):
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    return scheduler


def assert_same_trajectory(reference, ours, num_inference_steps, eta=None):
    """Step both samplers in float64 from the same start and noise, comparing every step."""
    reference.set_timesteps(num_inference_steps)
    ours.set_timesteps(num_inference_steps)
    assert ours.timesteps.tolist() == reference.timesteps.tolist()

    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_reference, x_ours = start, start
    generator_reference = torch.Generator().manual_seed(1)
    generator_ours = torch.Generator().manual_seed(1)
    kwargs = {} if eta is None else {"eta": eta}
    errors = []
    for t in reference.timesteps:
        output = fake_model(x_reference, t)
        x_reference = reference.step(
            output, t, x_reference, generator=generator_reference, **kwargs
        ).prev_sample
        output = fake_model(x_ours, t)
        x_ours = ours.step(output, t, x_ours, generator=generator_ours, **kwargs)
        errors.append((x_ours - x_reference).abs().max().item())

    worst = max(range(len(errors)), key=errors.__getitem__)
    t_worst = int(reference.timesteps[worst])
    assert errors[worst] <= TOLERANCE, f"error {errors[worst]:.3g} at step {worst}, t={t_worst}"
    assert torch.isfinite(x_ours).all()
    assert not torch.allclose(x_ours, start, atol=0.1)


DDPM_CASES = list(
    itertools.product(PREDICTION_TYPES, SCHEDULES, ("fixed_small", "fixed_large"), (True, False))
)


@pytest.mark.parametrize(("prediction_type", "beta_schedule", "variance_type", "clip"), DDPM_CASES)
def test_ddpm_1000_steps_match_diffusers(prediction_type, beta_schedule, variance_type, clip):
    reference = DDPMScheduler(
        prediction_type=prediction_type,
        beta_schedule=beta_schedule,
        variance_type=variance_type,
        clip_sample=clip,
        **SCHEDULES[beta_schedule],
    )
    ours = from_diffusers(reference)
    assert_same_trajectory(reference_in_float64(reference), ours, 1000)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddpm_50_steps_match_diffusers(prediction_type, spacing):
    reference = DDPMScheduler(
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        steps_offset=1 if spacing == "leading" else 0,
        clip_sample=False,
    )
    ours = from_diffusers(reference)
    assert_same_trajectory(reference_in_float64(reference), ours, 50)


DDIM_CASES = list(
    itertools.product(PREDICTION_TYPES, SCHEDULES, SPACINGS, (0.0, 1.0), (True, False), (50, 10))
)


@pytest.mark.parametrize(
    ("prediction_type", "beta_schedule", "spacing", "eta", "clip", "steps"), DDIM_CASES
)
def test_ddim_matches_diffusers(prediction_type, beta_schedule, spacing, eta, clip, steps):
    reference = DDIMScheduler(
        prediction_type=prediction_type,
        beta_schedule=beta_schedule,
        timestep_spacing=spacing,
        clip_sample=clip,
        **SCHEDULES[beta_schedule],
    )
    ours = from_diffusers(reference)
    assert_same_trajectory(reference_in_float64(reference), ours, steps, eta=eta)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_offset_without_alpha_one_matches_diffusers(spacing, eta):
    reference = DDIMScheduler(
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing=spacing,
        clip_sample_range=0.5,
    )
    ours = from_diffusers(reference)
    assert_same_trajectory(reference_in_float64(reference), ours, 25, eta=eta)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_zero_terminal_snr_matches_diffusers(eta):
    reference = DDIMScheduler(
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        beta_schedule="scaled_linear",
        **SCHEDULES["scaled_linear"],
    )
    ours = from_diffusers(reference)
    assert ours.alphas_cumprod[-1] == 0
    assert_same_trajectory(reference_in_float64(reference), ours, 10, eta=eta)


def test_ddpm_zero_terminal_snr_matches_diffusers():
    reference = DDPMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    assert_same_trajectory(reference_in_float64(reference), from_diffusers(reference), 1000)


def test_trained_betas_match_diffusers():
    betas = torch.linspace(1e-3, 0.05, 200).tolist()
    reference = DDIMScheduler(num_train_timesteps=200, trained_betas=betas, clip_sample=False)
    ours = from_diffusers(reference)
    torch.testing.assert_close(ours.betas, reference.betas, rtol=0, atol=0)
    assert_same_trajectory(reference_in_float64(reference), ours, 20, eta=1.0)


def test_float32_trajectory_stays_near_float64_reference():
    reference = reference_in_float64(DDPMScheduler(clip_sample=False))
    ours = DDPMSampler(clip_sample=False)
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_reference, x_ours = start, start.float()
    generator_reference = torch.Generator().manual_seed(1)
    generator_ours = torch.Generator().manual_seed(1)
    for t in reference.timesteps:
        x_reference = reference.step(
            fake_model(x_reference, t), t, x_reference, generator=generator_reference
        ).prev_sample
        # The same draws as diffusers' float64 noise, rounded to float32.
        noise = torch.randn(SHAPE, generator=generator_ours, dtype=torch.float64).float()
        x_ours = ours.step(fake_model(x_ours, t), t, x_ours, noise=noise if t > 0 else None)
    # float32 rounding of the sample over 1000 steps; measured 1.1e-5.
    torch.testing.assert_close(x_ours.double(), x_reference, rtol=0, atol=1e-4)


def test_ddim_variance_noise_matches_diffusers():
    reference, ours = DDIMScheduler(), DDIMSampler(eta=1.0)
    reference.set_timesteps(10)
    ours.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator)
    noise = torch.randn(SHAPE, generator=generator)
    t = reference.timesteps[3]

    expected = reference.step(fake_model(x, t), t, x, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours.step(fake_model(x, t), t, x, noise=noise), expected)


def test_ddpm_noise_argument_equals_generator_draw():
    sampler = DDPMSampler()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    output = fake_model(x, 500)

    from_generator = sampler.step(output, 500, x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sampler.step(output, 500, x, noise=noise), from_generator)
    assert not torch.allclose(sampler.step(output, 500, x, noise=-noise), from_generator)


def test_add_noise_of_sampler_matches_diffusers():
    reference, ours = DDIMScheduler(beta_schedule="squaredcos_cap_v2"), None
    ours = from_diffusers(reference)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    timesteps = torch.tensor([3, 990])

    torch.testing.assert_close(
        ours.add_noise(x0, noise, timesteps),
        reference.add_noise(x0, noise, timesteps),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_train_timesteps", [10, 100, 1000])
def test_timestep_schedule_matches_diffusers(num_train_timesteps, spacing):
    reference = DDIMScheduler(num_train_timesteps=num_train_timesteps, timestep_spacing=spacing)
    step_counts = range(1, num_train_timesteps + 1, 1 if num_train_timesteps <= 100 else 7)
    for steps in step_counts:
        ours = timestep_schedule(num_train_timesteps, steps, spacing)
        reference.set_timesteps(steps)
        theirs = reference.timesteps.tolist()
        assert len(ours) == steps
        assert (ours.diff() < 0).all()
        assert ours.min() >= 0
        assert ours.max() < num_train_timesteps
        # diffusers' trailing spacing sometimes appends a timestep -1, which minifm leaves out.
        if len(theirs) == steps + 1:
            assert theirs[-1] == -1
        assert ours.tolist() == theirs[:steps], f"{steps} steps"


def test_leading_spacing_adds_steps_offset():
    reference = DDIMScheduler(steps_offset=1)
    reference.set_timesteps(50)
    ours = timestep_schedule(1000, 50, "leading", steps_offset=1)
    assert ours.tolist() == reference.timesteps.tolist()
    assert ours[-1] == 1


def test_converter_rejects_unsupported_settings():
    with pytest.raises(ValueError, match="thresholding"):
        from_diffusers(DDPMScheduler(thresholding=True))
    with pytest.raises(ValueError, match="variance_type='fixed_small_log'"):
        from_diffusers(DDPMScheduler(variance_type="fixed_small_log"))
    with pytest.raises(ValueError, match="variance_type='learned_range'"):
        from_diffusers(DDPMScheduler(variance_type="learned_range"))
    with pytest.raises(ValueError, match="beta_schedule='sigmoid'"):
        from_diffusers(DDPMScheduler(beta_schedule="sigmoid"))
    custom = DDPMScheduler()
    custom.set_timesteps(timesteps=[900, 500, 100])
    with pytest.raises(ValueError, match="custom timestep list"):
        from_diffusers(custom)


def test_converter_rejects_unknown_spacing():
    with pytest.raises(ValueError, match="timestep_spacing='uniform'"):
        from_diffusers(DDIMScheduler(timestep_spacing="uniform"))


def test_converter_keeps_inference_steps():
    reference = DDIMScheduler(timestep_spacing="trailing")
    reference.set_timesteps(25)
    ours = from_diffusers(reference)
    assert ours.num_inference_steps == 25
    assert ours.timesteps.tolist() == reference.timesteps.tolist()


def test_more_inference_steps_than_training_is_rejected():
    for sampler in (DDPMSampler(num_train_timesteps=100), DDIMSampler(num_train_timesteps=100)):
        with pytest.raises(ValueError, match="num_inference_steps=101 exceeds"):
            sampler.set_timesteps(101)
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        DDIMSampler().set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps must be an int"):
        DDIMSampler().set_timesteps(2.5)


def test_unknown_config_values_are_rejected():
    with pytest.raises(ValueError, match="beta_schedule='cosine'"):
        DDPMConfig(beta_schedule="cosine")
    with pytest.raises(ValueError, match="timestep_spacing='uniform'"):
        DDIMConfig(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="prediction_type='noise'"):
        DDIMConfig(prediction_type="noise")
    with pytest.raises(ValueError, match="variance_type='learned'"):
        DDPMConfig(variance_type="learned")
    with pytest.raises(ValueError, match="beta_start=0.1 and beta_end=0.01"):
        DDPMConfig(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="trained_betas has 3 values"):
        DDPMConfig(num_train_timesteps=4, trained_betas=[0.1, 0.2, 0.3])
    with pytest.raises(TypeError, match="num_train_timesteps must be an int"):
        DDPMConfig(num_train_timesteps=1000.0)


def test_bad_step_inputs_are_rejected():
    sampler = DDIMSampler()
    sampler.set_timesteps(10)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="model_output has shape"):
        sampler.step(torch.zeros(2, 6, 4, 4), 900, x)
    with pytest.raises(ValueError, match="t=1000 is outside"):
        sampler.step(x, 1000, x)
    with pytest.raises(ValueError, match="t=899.5 must be an integer timestep"):
        sampler.step(x, 899.5, x)
    with pytest.raises(ValueError, match="t=899.5 must be an integer timestep"):
        DDPMSampler().step(x, torch.tensor(899.5), x)
    with pytest.raises(ValueError, match="eta=1.5"):
        sampler.step(x, 900, x, eta=1.5)
    with pytest.raises(TypeError, match="eta must be a number"):
        DDIMSampler(eta="1")
    with pytest.raises(ValueError, match="either noise or generator"):
        sampler.step(x, 900, x, eta=1.0, noise=x, generator=torch.Generator())
    with pytest.raises(ValueError, match="noise has shape"):
        sampler.step(x, 900, x, eta=1.0, noise=torch.zeros(1, 3, 4, 4))
    ddpm = DDPMSampler()
    ddpm.set_timesteps(10)
    with pytest.raises(ValueError, match="t=901 is not one of the timesteps"):
        ddpm.step(x, 901, x)
    with pytest.raises(ValueError, match="steps_offset=30"):
        DDPMSampler(steps_offset=30).set_timesteps(50)


def test_epsilon_at_zero_terminal_snr_is_rejected():
    sampler = DDIMSampler(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    sampler.set_timesteps(10)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="epsilon prediction cannot give x_0"):
        sampler.step(x, 999, x)


# The loops. An oracle model is built from one clean image `target`, so it returns the exact
# training target of every x_t. Sampling with it must land on `target`.


def oracle_model(sampler, target):
    def model_fn(x, t):
        alpha_bar = schedule.expand_to(sampler.alphas_cumprod[t.cpu()], x).to(x)
        noise = schedule.epsilon_from_x0(x, target, alpha_bar)
        return schedule.training_target(target, noise, alpha_bar, sampler.config.prediction_type)

    return model_fn


def target_image():
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(7)) * 1.6 - 0.8


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("sampler_class", [DDPMSampler, DDIMSampler])
def test_sampling_with_an_oracle_returns_its_image(sampler_class, prediction_type):
    sampler = sampler_class(prediction_type=prediction_type)
    target = target_image()
    generator = torch.Generator().manual_seed(0)
    steps = 100 if sampler_class is DDPMSampler else 10

    result = sample(
        oracle_model(sampler, target),
        sampler,
        SHAPE,
        num_inference_steps=steps,
        generator=generator,
        progress=False,
    )
    torch.testing.assert_close(result, target, rtol=0, atol=1e-4)


def test_sample_is_reproducible_and_returns_its_trajectory():
    sampler = DDIMSampler(eta=1.0)
    run = {
        "num_inference_steps": 10,
        "progress": False,
        "return_trajectory": True,
    }
    result, trajectory = sample(
        fake_model, sampler, SHAPE, generator=torch.Generator().manual_seed(3), **run
    )
    again, _ = sample(fake_model, sampler, SHAPE, generator=torch.Generator().manual_seed(3), **run)
    other, _ = sample(fake_model, sampler, SHAPE, generator=torch.Generator().manual_seed(4), **run)

    assert trajectory.shape == (11, *SHAPE)
    torch.testing.assert_close(
        trajectory[0], standard_normal(SHAPE, torch.Generator().manual_seed(3))
    )
    torch.testing.assert_close(trajectory[-1], result)
    torch.testing.assert_close(again, result, rtol=0, atol=0)
    assert not torch.allclose(other, result)


def test_sample_equals_a_manual_loop_over_step():
    sampler = DDPMSampler(variance_type="fixed_large")
    sampler.set_timesteps(20)
    generator = torch.Generator().manual_seed(5)
    result = sample(fake_model, sampler, SHAPE, generator=generator, progress=False)

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(SHAPE, generator=generator)
    for t in sampler.timesteps:
        x = sampler.step(fake_model(x, t), t, x, generator=generator)
    torch.testing.assert_close(result, x, rtol=0, atol=0)


def test_guidance_scale_interpolates_between_predictions():
    generator = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)

    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0), uncond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 3.0), 3 * cond - 2 * uncond)


def test_non_numeric_guidance_scale_is_rejected():
    x = torch.zeros(SHAPE)
    for bad in ["7.5", None, True, torch.tensor(2.0)]:
        with pytest.raises(TypeError, match="guidance_scale must be a number"):
            classifier_free_guidance(x, x, bad)
    with pytest.raises(ValueError, match="guidance_scale=nan must be finite"):
        guided_model_fn(lambda x, t, c: x, torch.zeros(2), torch.zeros(2), float("nan"))
    with pytest.raises(ValueError, match="cond has shape"):
        classifier_free_guidance(x, x[:1], 2.0)


class CountingModel:
    """A conditional model that records the batch size of each call."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, x, t, labels):
        self.batch_sizes.append(x.shape[0])
        return fake_model(x, t) + labels.view(-1, 1, 1, 1).to(x)


def test_guided_model_fn_runs_one_batched_pass():
    model = CountingModel()
    labels, null = torch.tensor([3, 5]), torch.tensor([10, 10])
    x, t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)), torch.tensor([700, 700])

    guided = guided_model_fn(model, labels, null, 4.0)(x, t)
    assert model.batch_sizes == [4]
    expected = classifier_free_guidance(model(x, t, labels), model(x, t, null), 4.0)
    torch.testing.assert_close(guided, expected)

    model.batch_sizes.clear()
    conditional = guided_model_fn(model, labels, null, 1)(x, t)
    assert model.batch_sizes == [2]
    torch.testing.assert_close(conditional, model(x, t, labels), rtol=0, atol=0)
    with pytest.raises(ValueError, match="x has batch size 1, but cond has 2"):
        guided_model_fn(model, labels, null, 2.0)(x[:1], t[:1])


def test_full_strength_img2img_at_zero_snr_equals_sampling():
    config = DDIMConfig(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    )
    sampler = DDIMSampler(config)
    image = target_image()
    run = {"num_inference_steps": 10, "progress": False}

    edited = image_to_image(
        fake_model, sampler, image, 1.0, generator=torch.Generator().manual_seed(2), **run
    )
    sampled = sample(fake_model, sampler, SHAPE, generator=torch.Generator().manual_seed(2), **run)
    torch.testing.assert_close(edited, sampled, rtol=0, atol=1e-6)


def test_img2img_starts_from_noised_image():
    sampler = DDIMSampler()
    sampler.set_timesteps(50)
    image = target_image()
    seen = []

    def recording_model(x, t):
        seen.append((x.clone(), int(t[0])))
        return fake_model(x, t)

    image_to_image(
        recording_model,
        sampler,
        image,
        0.3,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    assert [t for _, t in seen] == sampler.timesteps[35:].tolist()
    noise = standard_normal(SHAPE, torch.Generator().manual_seed(1))
    start = sampler.add_noise(image, noise, torch.full((SHAPE[0],), seen[0][1]))
    torch.testing.assert_close(seen[0][0], start, rtol=0, atol=0)


def test_img2img_with_oracle_returns_target():
    sampler = DDIMSampler(prediction_type="v_prediction")
    target = target_image()
    result = image_to_image(
        oracle_model(sampler, target),
        sampler,
        torch.zeros(SHAPE),
        0.5,
        num_inference_steps=20,
        progress=False,
    )
    torch.testing.assert_close(result, target, rtol=0, atol=1e-4)


def test_strength_outside_unit_interval_is_rejected():
    sampler, image = DDIMSampler(), torch.zeros(SHAPE)
    for bad in [0, -0.5, 1.01]:
        with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
            image_to_image(fake_model, sampler, image, bad, progress=False)
    with pytest.raises(TypeError, match="strength must be a number"):
        image_to_image(fake_model, sampler, image, "0.5", progress=False)
    with pytest.raises(ValueError, match="runs no step"):
        image_to_image(fake_model, sampler, image, 0.05, num_inference_steps=5, progress=False)


def half_mask():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :, :2] = 1  # the left half is known
    return mask


@pytest.mark.parametrize("sampler_class", [DDPMSampler, DDIMSampler])
def test_inpaint_keeps_known_fills_unknown(sampler_class):
    sampler = sampler_class(prediction_type="epsilon")
    target, mask = target_image(), half_mask()
    corrupted = target * mask  # the unknown half is zeroed

    result = inpaint(
        oracle_model(sampler, target),
        sampler,
        corrupted,
        mask,
        num_inference_steps=50,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    known = mask.expand(SHAPE).bool()
    assert torch.equal(result[known], corrupted[known])
    torch.testing.assert_close(result[~known], target[~known], rtol=0, atol=1e-4)


def test_inpaint_known_region_noise_level():
    sampler = DDIMSampler()
    sampler.set_timesteps(8)
    image = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16] = 1
    seen = []

    def recording_model(x, t):
        seen.append((x.clone(), int(t[0])))
        return fake_model(x, t)

    inpaint(
        recording_model,
        sampler,
        image,
        mask,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    assert len(seen) == 8
    for x, t in seen:
        alpha_bar = sampler.alphas_cumprod[t]
        noise = (x - alpha_bar.sqrt() * image) / (1 - alpha_bar).sqrt()
        known_noise = noise[..., :16]  # 2048 values that must be N(0, 1) draws
        assert abs(known_noise.mean()) < 0.1, f"t={t}"
        assert 0.9 < known_noise.std() < 1.1, f"t={t}"


def test_inpaint_rejects_mismatched_mask():
    sampler, image = DDIMSampler(), torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="mask has shape"):
        inpaint(fake_model, sampler, image, torch.ones(1, 1, 4, 5), progress=False)
    with pytest.raises(ValueError, match="mask has shape"):
        inpaint(fake_model, sampler, image, torch.ones(3, 3, 4, 4), progress=False)
    with pytest.raises(ValueError, match="mask values must lie in"):
        inpaint(fake_model, sampler, image, torch.full((1, 1, 4, 4), 2.0), progress=False)
