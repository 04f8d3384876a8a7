"""Noise schedules and the closed-form forward process of diffusion models.

A schedule is a sequence of T variances beta_t. Everything else follows from it:

    alpha_t     = 1 - beta_t
    alpha_bar_t = prod_{s <= t} alpha_s                                (Ho et al. 2020, eq. 4)
    x_t         = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)

A denoising model predicts one of three equivalent targets from (x_t, t): the noise `eps`
("epsilon"), the clean sample `x_0` ("sample"), or the velocity
v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 ("v_prediction", Salimans & Ho 2022).
Given x_t and alpha_bar_t, any one of them determines the other two.

Every function here is a pure function of tensors. `alpha_bar` arguments are a float or a
tensor that broadcasts against the sample, such as `expand_to(alphas_cumprod[t], x)`.
Timesteps are 0-based: index t of `betas` is the paper's step t + 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def linear_betas(
    num_train_timesteps: int, beta_start: float, beta_end: float, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Return evenly spaced betas from `beta_start` to `beta_end`, (T,) (Ho et al. 2020, Sec. 4)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=dtype)


def scaled_linear_betas(
    num_train_timesteps: int, beta_start: float, beta_end: float, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Return betas whose square roots are evenly spaced, shape (T,).

    This is the schedule of latent diffusion (Rombach et al. 2022) and Stable Diffusion.
    """
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=dtype) ** 2


def cosine_betas(
    num_train_timesteps: int,
    offset: float = 0.008,
    max_beta: float = 0.999,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Return the cosine schedule ("squaredcos_cap_v2") of Nichol & Dhariwal 2021, shape (T,).

    alpha_bar(t) = f(t) / f(0) with f(t) = cos((t / T + s) / (1 + s) * pi / 2)^2 and s = `offset`
    (eq. 17). Each beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t) is capped at `max_beta` so that
    the last steps, where alpha_bar reaches 0, stay finite (Sec. 3.2).
    """
    steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2  # (T + 1,)
    betas = 1 - f[1:] / f[:-1]  # the f(0) normalisation cancels in the ratio
    return betas.clamp(max=max_beta).to(dtype)


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Return the betas of a schedule named as in diffusers' `beta_schedule`, shape (T,).

    `beta_start` and `beta_end` are ignored by "squaredcos_cap_v2".
    """
    if beta_schedule == "linear":
        return linear_betas(num_train_timesteps, beta_start, beta_end, dtype)
    if beta_schedule == "scaled_linear":
        return scaled_linear_betas(num_train_timesteps, beta_start, beta_end, dtype)
    if beta_schedule == "squaredcos_cap_v2":
        return cosine_betas(num_train_timesteps, dtype=dtype)
    raise ValueError(
        f"beta_schedule={beta_schedule!r} is not supported, expected one of {BETA_SCHEDULES}"
    )


def alphas_cumprod(betas: Tensor) -> Tensor:
    """Return alpha_bar_t = prod_{s <= t} (1 - beta_s), shape (T,) (Ho et al. 2020, eq. 4)."""
    return torch.cumprod(1.0 - betas, dim=0)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so that the last step has zero SNR, shape (T,) (Lin et al. 2023, Algorithm 1).

    sqrt(alpha_bar) is shifted so that its last value is 0 and scaled so that its first value is
    unchanged. The last beta becomes 1, so x_T is pure noise, as sampling assumes. An epsilon
    prediction cannot recover x_0 at that step, which is why Lin et al. pair it with v_prediction.
    """
    sqrt_alpha_bar = alphas_cumprod(betas).sqrt()  # (T,)
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))

    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])  # undo the cumprod
    return 1.0 - alphas


def snr(alpha_bar: Tensor) -> Tensor:
    """Return the signal-to-noise ratio alpha_bar / (1 - alpha_bar) of x_t (Kingma et al. 2021)."""
    return alpha_bar / (1.0 - alpha_bar)


def expand_to(values: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample values (B,) to (B, 1, ..., 1) so they broadcast against x (B, ...)."""
    return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def add_noise(x0: Tensor, noise: Tensor, alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """Sample x_t ~ q(x_t | x_0) in closed form (Ho et al. 2020, eq. 4).

    x0 and noise have shape (B, ...), timesteps has shape (B,) or is a scalar, and
    `alphas_cumprod` (T,) is the table of the schedule. Returns x_t, shape (B, ...).
    """
    table = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)
    timesteps = torch.as_tensor(timesteps, device=x0.device).long()
    alpha_bar = expand_to(table[timesteps], x0)
    return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise


def x0_from_epsilon(x_t: Tensor, epsilon: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """Return x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) (Ho et al. 2020, eq. 15)."""
    return (x_t - (1.0 - alpha_bar) ** 0.5 * epsilon) / alpha_bar**0.5


def epsilon_from_x0(x_t: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """Return eps = (x_t - sqrt(alpha_bar) x_0) / sqrt(1 - alpha_bar), eq. 4 solved for eps."""
    return (x_t - alpha_bar**0.5 * x0) / (1.0 - alpha_bar) ** 0.5


def velocity(x0: Tensor, epsilon: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """Return v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022, Sec. 4)."""
    return alpha_bar**0.5 * epsilon - (1.0 - alpha_bar) ** 0.5 * x0


def x0_from_v(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """Return x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v (Salimans & Ho 2022, App. D)."""
    return alpha_bar**0.5 * x_t - (1.0 - alpha_bar) ** 0.5 * v


def epsilon_from_v(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """Return eps = sqrt(alpha_bar) v + sqrt(1 - alpha_bar) x_t (Salimans & Ho 2022, App. D)."""
    return alpha_bar**0.5 * v + (1.0 - alpha_bar) ** 0.5 * x_t


def check_prediction_type(prediction_type: str) -> None:
    """Raise ValueError unless `prediction_type` is one of PREDICTION_TYPES."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported, "
            f"expected one of {PREDICTION_TYPES}"
        )


def x0_and_epsilon(
    model_output: Tensor, x_t: Tensor, alpha_bar: Tensor | float, prediction_type: str
) -> tuple[Tensor, Tensor]:
    """Turn a model output of any prediction type into the pair (x_0, eps), each shaped like x_t."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return x0_from_epsilon(x_t, model_output, alpha_bar), model_output
    if prediction_type == "sample":
        return model_output, epsilon_from_x0(x_t, model_output, alpha_bar)
    return x0_from_v(x_t, model_output, alpha_bar), epsilon_from_v(x_t, model_output, alpha_bar)


def training_target(
    x0: Tensor, noise: Tensor, alpha_bar: Tensor | float, prediction_type: str
) -> Tensor:
    """Return what a model of `prediction_type` learns to output for x_t built from (x0, noise)."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return velocity(x0, noise, alpha_bar)
