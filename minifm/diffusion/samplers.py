"""DDPM and DDIM samplers: one reverse step of a diffusion model at a time.

The objects follow the shape of diffusers' `DDPMScheduler` and `DDIMScheduler`:

    sampler = DDIMSampler(DDIMConfig(prediction_type="v_prediction"))
    sampler.set_timesteps(50)
    for t in sampler.timesteps:
        x = sampler.step(model(x, t), t, x)

The schedule tables (`betas`, `alphas_cumprod`) are float32 and built exactly as diffusers
builds them, because models trained with diffusers saw those values. The coefficients of
each step are computed in float64 from those tables and applied in the sample's dtype.

Limits: no learned variances (`variance_type` "learned", "learned_range"), no dynamic
thresholding, no custom timestep lists. All randomness comes from a `torch.Generator`, drawn
on the generator's device, so that a seeded CPU generator gives the same noise on every device.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from minifm.diffusion import schedule

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")


@dataclass(frozen=True)
class SamplerConfig:
    """Schedule and sampling options shared by DDPM and DDIM, named as in diffusers' configs.

    `trained_betas`, when given, replaces `beta_schedule`, `beta_start` and `beta_end`.
    `steps_offset` shifts the "leading" timesteps only, as in diffusers.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        _check_int("num_train_timesteps", self.num_train_timesteps, minimum=1)
        _check_int("steps_offset", self.steps_offset, minimum=0)
        if self.trained_betas is not None:
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in self.trained_betas))
            self._check_trained_betas()
        else:
            self._check_beta_schedule()
        schedule.check_prediction_type(self.prediction_type)
        _check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        if not self.clip_sample_range > 0:
            raise ValueError(f"clip_sample_range={self.clip_sample_range} must be positive")

    def _check_beta_schedule(self) -> None:
        _check_choice("beta_schedule", self.beta_schedule, schedule.BETA_SCHEDULES)
        if self.beta_schedule != "squaredcos_cap_v2" and not (
            0 < self.beta_start <= self.beta_end < 1
        ):
            raise ValueError(
                f"beta_start={self.beta_start} and beta_end={self.beta_end} must satisfy "
                "0 < beta_start <= beta_end < 1"
            )

    def _check_trained_betas(self) -> None:
        if len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError(
                f"trained_betas has {len(self.trained_betas)} values, expected "
                f"num_train_timesteps={self.num_train_timesteps}"
            )
        if not all(0 < b <= 1 for b in self.trained_betas):
            raise ValueError("trained_betas must all lie in (0, 1]")


@dataclass(frozen=True)
class DDPMConfig(SamplerConfig):
    """DDPM options. `variance_type` picks sigma_t^2 = beta~_t ("fixed_small") or beta_t."""

    variance_type: str = "fixed_small"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("variance_type", self.variance_type, VARIANCE_TYPES)


@dataclass(frozen=True)
class DDIMConfig(SamplerConfig):
    """DDIM options. `set_alpha_to_one` makes the last step land on alpha_bar = 1, else on t = 0."""

    set_alpha_to_one: bool = True


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported, expected one of {choices}")


def timestep_schedule(
    num_train_timesteps: int, num_inference_steps: int, spacing: str, steps_offset: int = 0
) -> Tensor:
    """Return the descending timesteps of a sampling run, shape (S,) int64.

    The spacings are those of Lin et al. 2023, Table 2, computed as diffusers 0.42 does.
    "leading" takes multiples of T // S from 0, plus `steps_offset`. "trailing" counts down
    from T - 1 in strides of T / S. "linspace" rounds S evenly spaced points of [0, T - 1].
    For some (T, S), such as (1000, 61), diffusers' "trailing" returns one extra timestep -1.
    This function returns exactly S timesteps there.
    """
    total, steps = num_train_timesteps, num_inference_steps
    _check_int("num_inference_steps", steps, minimum=1)
    if steps > total:
        raise ValueError(
            f"num_inference_steps={steps} exceeds num_train_timesteps={total}: the model was "
            f"trained on {total} noise levels, so a run can visit at most {total}"
        )
    _check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    if spacing == "leading":
        timesteps = np.arange(steps)[::-1] * (total // steps) + steps_offset
    elif spacing == "trailing":
        timesteps = np.round(np.arange(total, 0, -total / steps)[:steps]) - 1
    else:
        timesteps = np.linspace(0, total - 1, steps).round()[::-1]
    timesteps = torch.from_numpy(timesteps.astype(np.int64))
    if timesteps.max() >= total:
        raise ValueError(
            f"steps_offset={steps_offset} moves the first timestep to {int(timesteps.max())}, "
            f"past the last training timestep {total - 1}"
        )
    return timesteps


class DiffusionSampler:
    """The schedule tables, the timesteps of a run, and what DDPM and DDIM steps share."""

    config: SamplerConfig

    def __init__(self, config: SamplerConfig) -> None:
        self.config = config
        if config.trained_betas is not None:
            betas = torch.tensor(config.trained_betas, dtype=torch.float32)
        else:
            betas = schedule.make_betas(
                config.beta_schedule,
                config.num_train_timesteps,
                config.beta_start,
                config.beta_end,
            )
        if config.rescale_betas_zero_snr:
            betas = schedule.rescale_zero_terminal_snr(betas)
        self.betas = betas  # (T,)
        self.alphas_cumprod = schedule.alphas_cumprod(betas)  # (T,)
        self._alpha_bar = self.alphas_cumprod.double().tolist()
        self.num_inference_steps = config.num_train_timesteps
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1)  # (T,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the `num_inference_steps` timesteps of the next run, stored in `timesteps`."""
        config = self.config
        timesteps = timestep_schedule(
            config.num_train_timesteps,
            num_inference_steps,
            config.timestep_spacing,
            config.steps_offset,
        )
        self.num_inference_steps = num_inference_steps
        self.timesteps = timesteps

    def previous_timestep(self, t: int) -> int:
        """Return the timestep a step from `t` lands on, -1 for the clean end of the chain."""
        raise NotImplementedError

    def alpha_bar(self, t: int) -> float:
        """Return alpha_bar at timestep t as a float64, and 1.0 for the clean end t = -1."""
        return self._alpha_bar[t] if t >= 0 else 1.0

    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) for per-sample timesteps (B,), see `schedule.add_noise`."""
        return schedule.add_noise(x0, noise, self.alphas_cumprod, timesteps)

    def training_target(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Return the `prediction_type` target for x_t = add_noise(x0, noise, timesteps)."""
        table = self.alphas_cumprod.to(x0)
        alpha_bar = schedule.expand_to(table[timesteps.to(x0.device)], x0)
        return schedule.training_target(x0, noise, alpha_bar, self.config.prediction_type)

    def _timestep(self, t: int | Tensor) -> int:
        if isinstance(t, Tensor):
            if t.numel() != 1:
                raise ValueError(f"t must be a single timestep, got a tensor of shape {t.shape}")
            t = t.item()
        if t != int(t):
            raise ValueError(f"t={t} must be an integer timestep")
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"t={t} is outside [0, {self.num_train_timesteps - 1}]")
        return int(t)

    def _x0_and_epsilon(
        self, model_output: Tensor, x: Tensor, alpha_bar: float
    ) -> tuple[Tensor, Tensor]:
        """Return (x_0, eps) from the model output, with x_0 clipped when `clip_sample` is set."""
        if model_output.shape != x.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)}, expected the sample's "
                f"{tuple(x.shape)} (learned variances are not supported)"
            )
        if self.config.prediction_type == "epsilon" and alpha_bar == 0:
            raise ValueError(
                "alphas_cumprod is 0 at this timestep (zero terminal SNR), where an epsilon "
                "prediction cannot give x_0. Use prediction_type 'v_prediction' or 'sample', "
                "or a timestep spacing that starts below the last training timestep."
            )
        prediction_type = self.config.prediction_type
        x0, epsilon = schedule.x0_and_epsilon(model_output, x, alpha_bar, prediction_type)
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            x0 = x0.clamp(-limit, limit)
        return x0, epsilon


def standard_normal(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw N(0, I) noise of `shape` on the generator's device, then move it to `device`.

    Drawing on the generator's device makes a seeded CPU generator give the same noise for
    samples on any device. `device` defaults to the generator's device, else the CPU.
    """
    draw_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=dtype)
    return noise if device is None else noise.to(device)


def draw_noise(like: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    """Return `noise` checked against `like`, or N(0, I) noise shaped like it from `generator`."""
    if noise is None:
        return standard_normal(like.shape, generator, like.device, like.dtype)
    if generator is not None:
        raise ValueError("pass either noise or generator, not both")
    if noise.shape != like.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(like.shape)}")
    return noise


class DDPMSampler(DiffusionSampler):
    """Ancestral sampling of Ho et al. 2020 (Algorithm 2), over any subset of the timesteps.

    With S < T steps, each step from t to the next timestep t' uses the effective
    alpha = alpha_bar_t / alpha_bar_t', so the posterior q(x_t' | x_t, x_0) stays exact.
    """

    config: DDPMConfig

    def __init__(self, config: DDPMConfig | None = None, **overrides: object) -> None:
        config = DDPMConfig() if config is None else config
        super().__init__(dataclasses.replace(config, **overrides))
        self._previous_timesteps = {}

    def set_timesteps(self, num_inference_steps: int) -> None:
        super().set_timesteps(num_inference_steps)
        listed = self.timesteps.tolist()
        self._previous_timesteps = dict(zip(listed, listed[1:] + [-1], strict=True))

    def previous_timestep(self, t: int) -> int:
        if not self._previous_timesteps:
            return t - 1
        if t not in self._previous_timesteps:
            raise ValueError(f"t={t} is not one of the timesteps that set_timesteps chose")
        return self._previous_timesteps[t]

    def step(
        self,
        model_output: Tensor,
        t: int | Tensor,
        x: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Return x at the previous timestep, sampled from p(x_prev | x_t), shaped like x.

        Noise is added for t > 0 only, drawn from `generator` unless `noise` is given.
        """
        t = self._timestep(t)
        alpha_bar_t, alpha_bar_prev = self.alpha_bar(t), self.alpha_bar(self.previous_timestep(t))
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1.0 - alpha_t
        x0, _ = self._x0_and_epsilon(model_output, x, alpha_bar_t)

        # Posterior mean mu~_t(x_t, x_0), Ho et al. 2020, eq. 7
        x0_coef = alpha_bar_prev**0.5 * beta_t / (1.0 - alpha_bar_t)
        x_coef = alpha_t**0.5 * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
        mean = x0_coef * x0 + x_coef * x
        if t == 0:
            return mean

        # sigma_t^2 = beta~_t (eq. 7) or beta_t, the two choices of Ho et al. 2020, Sec. 3.2
        if self.config.variance_type == "fixed_small":
            variance = max((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * beta_t, 1e-20)
        else:
            variance = beta_t
        return mean + variance**0.5 * draw_noise(x, noise, generator)


class DDIMSampler(DiffusionSampler):
    """The DDIM step of Song et al. 2021, eq. 12, with sigma_t of eq. 16 scaled by `eta`.

    `eta` = 0 gives the deterministic DDIM sampler and `eta` = 1 the DDPM posterior variance.
    As in diffusers, each step goes from t to t - T // S for every spacing. With "linspace"
    or "trailing" spacing that need not be the next listed timestep.
    """

    config: DDIMConfig

    def __init__(
        self, config: DDIMConfig | None = None, *, eta: float = 0.0, **overrides: object
    ) -> None:
        config = DDIMConfig() if config is None else config
        super().__init__(dataclasses.replace(config, **overrides))
        self.eta = _check_eta(eta)
        self.final_alpha_bar = 1.0 if self.config.set_alpha_to_one else self._alpha_bar[0]

    def previous_timestep(self, t: int) -> int:
        return t - self.num_train_timesteps // self.num_inference_steps

    def alpha_bar(self, t: int) -> float:
        """Return alpha_bar at timestep t, and `final_alpha_bar` past the end (t < 0)."""
        return self._alpha_bar[t] if t >= 0 else self.final_alpha_bar

    def step(
        self,
        model_output: Tensor,
        t: int | Tensor,
        x: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        eta: float | None = None,
        use_clipped_model_output: bool = False,
    ) -> Tensor:
        """Return x at t - T // S, shaped like x. `eta` overrides the sampler's `eta`.

        Noise is drawn for every step when eta > 0. With `use_clipped_model_output`, eps is
        recomputed from the clipped x_0.
        """
        t = self._timestep(t)
        eta = self.eta if eta is None else _check_eta(eta)
        alpha_bar_t, alpha_bar_prev = self.alpha_bar(t), self.alpha_bar(self.previous_timestep(t))
        x0, epsilon = self._x0_and_epsilon(model_output, x, alpha_bar_t)
        if use_clipped_model_output:
            epsilon = schedule.epsilon_from_x0(x, x0, alpha_bar_t)

        # sigma_t(eta), eq. 16
        variance = (
            (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev)
        )
        sigma = eta * variance**0.5

        # x_prev = sqrt(alpha_bar_prev) x_0 + sqrt(1 - alpha_bar_prev - sigma^2) eps, eq. 12
        direction_coef = max(1.0 - alpha_bar_prev - sigma**2, 0.0) ** 0.5
        x_prev = alpha_bar_prev**0.5 * x0 + direction_coef * epsilon
        if eta > 0:
            x_prev = x_prev + sigma * draw_noise(x, noise, generator)
        return x_prev


def _check_eta(eta: object) -> float:
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a number, got {eta!r} of type {type(eta).__name__}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta={eta} must lie in [0, 1] (0 is DDIM, 1 the DDPM variance)")
    return float(eta)
