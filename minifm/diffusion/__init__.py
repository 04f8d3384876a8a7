"""Diffusion models: noise schedules, DDPM and DDIM samplers, sampling loops and the UNet."""

from minifm.diffusion.pipelines import (
    classifier_free_guidance,
    denoise,
    guided_model_fn,
    image_to_image,
    inpaint,
    sample,
)
from minifm.diffusion.samplers import (
    DDIMConfig,
    DDIMSampler,
    DDPMConfig,
    DDPMSampler,
    SamplerConfig,
    timestep_schedule,
)
from minifm.diffusion.schedule import add_noise, alphas_cumprod, make_betas, snr
from minifm.diffusion.unet import UNet, UNetConfig

__all__ = [
    "DDIMConfig",
    "DDIMSampler",
    "DDPMConfig",
    "DDPMSampler",
    "SamplerConfig",
    "UNet",
    "UNetConfig",
    "add_noise",
    "alphas_cumprod",
    "classifier_free_guidance",
    "denoise",
    "guided_model_fn",
    "image_to_image",
    "inpaint",
    "make_betas",
    "sample",
    "snr",
    "timestep_schedule",
]
