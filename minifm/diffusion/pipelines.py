"""Sampling loops built on the samplers: plain sampling, guidance, image-to-image, inpainting.

Every loop calls `model_fn(x, t) -> output`, with x of shape (B, ...) and t a (B,) int64
tensor of the current timestep on x's device. It returns the target of the sampler's
`prediction_type` (noise, velocity or clean sample), shaped like x. All randomness,
the starting noise included, comes from `generator`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from minifm.diffusion.samplers import DiffusionSampler, standard_normal
from minifm.training import progress_bar

ModelFn = Callable[[Tensor, Tensor], Tensor]
StepHook = Callable[[int, int, Tensor], Tensor]


@torch.no_grad()
def denoise(
    model_fn: ModelFn,
    sampler: DiffusionSampler,
    x: Tensor,
    *,
    timesteps: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
    after_step: StepHook | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the reverse chain from x over `timesteps` (default: all of `sampler.timesteps`).

    `after_step(i, t, x) -> x` can edit the sample after step i (at timestep t). Returns the
    final sample, and with `return_trajectory` also the stack of every intermediate sample,
    start included, shape (S + 1, B, ...) on the CPU.
    """
    timesteps = sampler.timesteps if timesteps is None else timesteps
    trajectory = [x.cpu()] if return_trajectory else None
    for i, t in enumerate(progress_bar(timesteps.tolist(), desc="sampling", disable=not progress)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
        x = sampler.step(model_fn(x, t_batch), t, x, generator=generator)
        if after_step is not None:
            x = after_step(i, t, x)
        if trajectory is not None:
            trajectory.append(x.cpu())
    if trajectory is None:
        return x
    return x, torch.stack(trajectory)


def sample(
    model_fn: ModelFn,
    sampler: DiffusionSampler,
    shape: tuple[int, ...],
    *,
    num_inference_steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Draw samples of `shape` (B, ...) from pure noise, see `denoise` for the return value.

    `num_inference_steps`, when given, calls `sampler.set_timesteps` first. Otherwise the
    sampler's current timesteps are used.
    """
    if num_inference_steps is not None:
        sampler.set_timesteps(num_inference_steps)
    x = standard_normal(shape, generator, device, dtype)
    return denoise(
        model_fn,
        sampler,
        x,
        generator=generator,
        progress=progress,
        return_trajectory=return_trajectory,
    )


def check_guidance_scale(guidance_scale: object) -> float:
    """Return `guidance_scale` as a float, raising unless it is a finite real number."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
        raise TypeError(
            f"guidance_scale must be a number, got {guidance_scale!r} "
            f"of type {type(guidance_scale).__name__}"
        )
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale={guidance_scale} must be finite")
    return float(guidance_scale)


def classifier_free_guidance(cond: Tensor, uncond: Tensor, guidance_scale: float) -> Tensor:
    """Combine conditional and unconditional predictions (Ho & Salimans 2022, eq. 6).

    Returns uncond + guidance_scale * (cond - uncond). The paper's weight w is
    guidance_scale - 1, so 1 gives the conditional prediction and 0 the unconditional one.
    """
    scale = check_guidance_scale(guidance_scale)
    if cond.shape != uncond.shape:
        raise ValueError(f"cond has shape {tuple(cond.shape)} but uncond has {tuple(uncond.shape)}")
    return uncond + scale * (cond - uncond)


def guided_model_fn(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    cond: Tensor,
    uncond: Tensor,
    guidance_scale: float,
) -> ModelFn:
    """Wrap `model(x, t, condition)` into a guided `model_fn(x, t)`.

    `cond` and `uncond` (B, ...) are the conditions for each sample, for example class labels
    and the null class. Each call runs one forward pass on a batch of 2B, conditional half
    first. At guidance_scale 1 the unconditional half is skipped.
    """
    scale = check_guidance_scale(guidance_scale)
    if cond.shape != uncond.shape:
        raise ValueError(f"cond has shape {tuple(cond.shape)} but uncond has {tuple(uncond.shape)}")
    conditions = torch.cat([cond, uncond])  # (2B, ...)

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        if x.shape[0] != cond.shape[0]:
            raise ValueError(f"x has batch size {x.shape[0]}, but cond has {cond.shape[0]}")
        if scale == 1.0:
            return model(x, t, cond)
        output = model(torch.cat([x, x]), torch.cat([t, t]), conditions)  # (2B, ...)
        output_cond, output_uncond = output.chunk(2)
        return classifier_free_guidance(output_cond, output_uncond, scale)

    return model_fn


def _check_strength(strength: object) -> float:
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(f"strength must be a number, got {strength!r}")
    if not 0 < strength <= 1:
        raise ValueError(f"strength={strength} must lie in (0, 1]")
    return float(strength)


def image_to_image(
    model_fn: ModelFn,
    sampler: DiffusionSampler,
    image: Tensor,
    strength: float,
    *,
    num_inference_steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Noise `image` (B, ...) part of the way and denoise it back (SDEdit, Meng et al. 2022).

    Of the S timesteps, the last round(strength * S) run, starting from q(x_t | image) at the
    first of them. At strength 1 that start still contains sqrt(alpha_bar_t) of the image, as in
    diffusers' image-to-image pipelines. It is pure noise, and the result equals `sample`,
    only where alpha_bar_t = 0 (zero terminal SNR with "trailing" spacing).
    """
    strength = _check_strength(strength)
    if num_inference_steps is not None:
        sampler.set_timesteps(num_inference_steps)
    total = len(sampler.timesteps)
    steps_run = round(strength * total)
    if steps_run == 0:
        raise ValueError(
            f"strength={strength} with {total} inference steps runs no step. "
            f"Use strength > {0.5 / total:.3g} or more inference steps."
        )
    timesteps = sampler.timesteps[total - steps_run :]

    noise = standard_normal(image.shape, generator, image.device, image.dtype)
    start = timesteps[:1].expand(image.shape[0])  # (B,)
    x = sampler.add_noise(image, noise, start)
    return denoise(
        model_fn,
        sampler,
        x,
        timesteps=timesteps,
        generator=generator,
        progress=progress,
        return_trajectory=return_trajectory,
    )


def _check_mask(mask: Tensor, image: Tensor) -> Tensor:
    try:
        broadcast = torch.broadcast_shapes(mask.shape, image.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != image.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, which does not broadcast to the image "
            f"shape {tuple(image.shape)}"
        )
    mask = mask.to(device=image.device, dtype=image.dtype)
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError("mask values must lie in [0, 1], with 1 marking known pixels")
    return mask


def inpaint(
    model_fn: ModelFn,
    sampler: DiffusionSampler,
    image: Tensor,
    mask: Tensor,
    *,
    num_inference_steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fill the unknown region of `image` (B, ...) where `mask` is 0, keep it where 1.

    The chain starts from pure noise. Before the first step and after every step, the known
    region is replaced by the image noised to the sample's current timestep with fresh noise
    (the replacement method, as in RePaint by Lugmayr et al. 2022, without resampling). After
    the last step the known region is the image itself. `mask` broadcasts to the image shape,
    and values between 0 and 1 blend the two regions.
    """
    mask = _check_mask(mask, image)
    if num_inference_steps is not None:
        sampler.set_timesteps(num_inference_steps)
    timesteps = sampler.timesteps
    last = len(timesteps) - 1

    def keep_known(x: Tensor, t: int) -> Tensor:
        if t < 0:
            return mask * image + (1 - mask) * x
        noise = standard_normal(image.shape, generator, image.device, image.dtype)
        t_batch = torch.full((image.shape[0],), t, dtype=torch.long)  # (B,)
        return mask * sampler.add_noise(image, noise, t_batch) + (1 - mask) * x

    def after_step(i: int, t: int, x: Tensor) -> Tensor:
        return keep_known(x, -1 if i == last else sampler.previous_timestep(t))

    x = standard_normal(image.shape, generator, image.device, image.dtype)
    x = keep_known(x, int(timesteps[0]))
    return denoise(
        model_fn,
        sampler,
        x,
        generator=generator,
        progress=progress,
        return_trajectory=return_trajectory,
        after_step=after_step,
    )
