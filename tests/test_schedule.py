"""Noise schedules, closed-form noising and the epsilon / x0 / v conversions."""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from minifm.diffusion import schedule

# beta_start, beta_end as the usual configs of each schedule set them.
SCHEDULES = {
    "linear": (1e-4, 0.02),
    "scaled_linear": (0.00085, 0.012),
    "squaredcos_cap_v2": (1e-4, 0.02),
}


def diffusers_scheduler(name, num_train_timesteps=1000):
    beta_start, beta_end = SCHEDULES[name]
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=name,
        beta_start=beta_start,
        beta_end=beta_end,
    )


@pytest.mark.parametrize("num_train_timesteps", [10, 1000, 4000])
@pytest.mark.parametrize("name", SCHEDULES)
def test_betas_and_alphas_cumprod_match_diffusers(name, num_train_timesteps):
    reference = diffusers_scheduler(name, num_train_timesteps)
    betas = schedule.make_betas(name, num_train_timesteps, *SCHEDULES[name])

    # Same float32 construction, so equal up to the last bit in practice; 1e-9 allows one ulp.
    torch.testing.assert_close(betas, reference.betas, rtol=0, atol=1e-9)
    torch.testing.assert_close(
        schedule.alphas_cumprod(betas), reference.alphas_cumprod, rtol=0, atol=1e-9
    )


def test_cosine_schedule_follows_its_closed_form():
    num_train_timesteps, offset = 1000, 0.008
    alpha_bar = schedule.alphas_cumprod(
        schedule.cosine_betas(num_train_timesteps, dtype=torch.float64)
    )

    def f(t):
        return math.cos((t / num_train_timesteps + offset) / (1 + offset) * math.pi / 2) ** 2

    expected = torch.tensor(
        [f(t + 1) / f(0) for t in range(num_train_timesteps)], dtype=torch.float64
    )
    # Only the last beta reaches the 0.999 cap, so every earlier alpha_bar is uncapped.
    torch.testing.assert_close(alpha_bar[:-1], expected[:-1], rtol=1e-9, atol=1e-12)
    capped = (schedule.cosine_betas(num_train_timesteps) >= 0.999).nonzero().flatten()
    assert capped.tolist() == [num_train_timesteps - 1]


@pytest.mark.parametrize("name", SCHEDULES)
def test_add_noise_matches_diffusers(name):
    reference = diffusers_scheduler(name)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 3, 4, 4, generator=generator)
    noise = torch.randn(8, 3, 4, 4, generator=generator)
    timesteps = torch.tensor([0, 1, 17, 250, 500, 750, 998, 999])

    ours = schedule.add_noise(x0, noise, schedule.alphas_cumprod(reference.betas), timesteps)
    torch.testing.assert_close(ours, reference.add_noise(x0, noise, timesteps), rtol=0, atol=1e-6)


def test_add_noise_takes_a_scalar_timestep():
    table = schedule.alphas_cumprod(schedule.make_betas("linear", 1000))
    x0, noise = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)

    noised = schedule.add_noise(x0, noise, table, torch.tensor(400))
    torch.testing.assert_close(noised, x0 * table[400].sqrt())


@pytest.mark.parametrize("name", SCHEDULES)
def test_rescale_zero_terminal_snr_matches_diffusers(name):
    betas = diffusers_scheduler(name).betas
    rescaled = schedule.rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(rescaled, diffusers_rescale(betas), rtol=0, atol=1e-6)

    alpha_bar = schedule.alphas_cumprod(rescaled)
    assert alpha_bar[-1] == 0
    assert schedule.snr(alpha_bar)[-1] == 0
    torch.testing.assert_close(alpha_bar[0], schedule.alphas_cumprod(betas)[0])


@pytest.mark.parametrize("name", SCHEDULES)
def test_snr_decreases_with_t(name):
    alpha_bar = schedule.alphas_cumprod(schedule.make_betas(name, 1000, *SCHEDULES[name]))
    log_snr = schedule.snr(alpha_bar.double()).log()
    assert (log_snr.diff() < 0).all()


@pytest.mark.parametrize("prediction_type", schedule.PREDICTION_TYPES)
def test_each_prediction_type_recovers_x0_and_noise(prediction_type):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 3, 3, generator=generator, dtype=torch.float64)
    noise = torch.randn(4, 2, 3, 3, generator=generator, dtype=torch.float64)
    alpha_bar = torch.tensor([0.9999, 0.7, 0.2, 1e-4], dtype=torch.float64).view(4, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    target = schedule.training_target(x0, noise, alpha_bar, prediction_type)
    x0_back, noise_back = schedule.x0_and_epsilon(target, x_t, alpha_bar, prediction_type)
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(noise_back, noise, rtol=0, atol=1e-9)


def test_velocity_matches_diffusers_get_velocity():
    reference = DDPMScheduler()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 1, 4, 4, generator=generator)
    noise = torch.randn(3, 1, 4, 4, generator=generator)
    timesteps = torch.tensor([5, 500, 995])
    alpha_bar = schedule.expand_to(reference.alphas_cumprod[timesteps], x0)

    torch.testing.assert_close(
        schedule.velocity(x0, noise, alpha_bar),
        reference.get_velocity(x0, noise, timesteps),
        rtol=0,
        atol=1e-6,
    )


def test_unknown_beta_schedule_is_rejected():
    with pytest.raises(ValueError, match="beta_schedule='sigmoid'"):
        schedule.make_betas("sigmoid", 1000)


def test_unknown_prediction_type_is_rejected():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="prediction_type='noise'"):
        schedule.x0_and_epsilon(x, x, 0.5, "noise")
    with pytest.raises(ValueError, match="prediction_type='noise'"):
        schedule.training_target(x, x, 0.5, "noise")
