"""Convert diffusers' `DDPMScheduler` and `DDIMScheduler` into minifm samplers.

The converter reads every field of the scheduler's config. It raises ValueError for the
settings minifm does not implement: dynamic thresholding, learned or log variances, custom
timestep lists, and beta schedules other than "linear", "scaled_linear" and
"squaredcos_cap_v2" unless `trained_betas` gives the betas. Config keys that the diffusers
constructor does not take, such as the "tensor_format" of old hub configs, are ignored, as
diffusers ignores them.
"""

from __future__ import annotations

import inspect

from minifm.diffusion.samplers import DDIMConfig, DDIMSampler, DDPMConfig, DDPMSampler

# Config fields read into SamplerConfig, named alike in diffusers and minifm.
SHARED_FIELDS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "clip_sample",
    "clip_sample_range",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
)
SAMPLERS = {
    "DDPMScheduler": (DDPMConfig, DDPMSampler, ("variance_type",)),
    "DDIMScheduler": (DDIMConfig, DDIMSampler, ("set_alpha_to_one",)),
}
# Fields that only matter when thresholding=True, which is rejected.
THRESHOLDING_FIELDS = ("thresholding", "dynamic_thresholding_ratio", "sample_max_value")


def scheduler_from_diffusers(scheduler) -> DDPMSampler | DDIMSampler:
    """Return the minifm sampler with the configuration of a diffusers DDPM or DDIM scheduler.

    If `set_timesteps` was called on the scheduler, the sampler gets the same number of
    inference steps.
    """
    name = type(scheduler).__name__
    if name not in SAMPLERS:
        raise TypeError(f"cannot convert a {name}; expected one of {sorted(SAMPLERS)}")
    config_class, sampler_class, own_fields = SAMPLERS[name]
    config = dict(scheduler.config)
    _check_fields(scheduler, config, SHARED_FIELDS + own_fields)
    if config.get("thresholding"):
        raise ValueError(f"{name} with thresholding=True is not supported by minifm")

    fields = {field: config[field] for field in SHARED_FIELDS + own_fields}
    if fields["trained_betas"] is not None:
        fields["trained_betas"] = tuple(float(b) for b in fields["trained_betas"])
    sampler = sampler_class(config_class(**fields))

    if getattr(scheduler, "custom_timesteps", False):
        raise ValueError(f"{name} has a custom timestep list, which minifm does not support")
    if scheduler.num_inference_steps is not None:
        sampler.set_timesteps(scheduler.num_inference_steps)
    return sampler


def _check_fields(scheduler, config: dict, read: tuple[str, ...]) -> None:
    """Raise ValueError if the constructor takes a config field that this module does not read."""
    parameters = set(inspect.signature(type(scheduler).__init__).parameters) - {"self"}
    missing = [field for field in read if field not in config]
    unread = sorted(parameters - set(read) - set(THRESHOLDING_FIELDS))
    if missing or unread:
        raise ValueError(
            f"{type(scheduler).__name__} config does not match what minifm reads: "
            f"missing fields {missing}, fields minifm does not read {unread}"
        )
