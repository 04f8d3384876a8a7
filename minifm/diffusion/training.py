"""Train a class-conditional DDPM on the digits, and save and load the result.

    L_simple = E_{x_0, eps, t} || eps - eps_theta(x_t, t, y) ||^2      (Ho et al. 2020, eq. 14)

with t uniform over the T training timesteps and x_t = sqrt(alpha_bar_t) x_0 +
sqrt(1 - alpha_bar_t) eps, optionally weighted per timestep by Min-SNR-gamma. The class label
y is replaced by the null class with probability `class_dropout`, so that one network learns
both the conditional and the unconditional prediction that classifier-free guidance combines
(Ho & Salimans 2022, Algorithm 1).

`train_class_conditional_ddpm` is the one recipe behind the notebook that trains a DDPM and
behind the shipped checkpoint `data/ddpm_digits.safetensors`. The checkpoint's metadata stores
the recipe, the UNet config and the sampler config, so `load_ddpm` rebuilds all three.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minifm.checkpoint import load_state_dict_strict, load_tensors, save_model
from minifm.datasets import load_digits
from minifm.diffusion.pipelines import guided_model_fn, sample
from minifm.diffusion.samplers import (
    DDIMConfig,
    DDIMSampler,
    DDPMConfig,
    DDPMSampler,
    DiffusionSampler,
    SamplerConfig,
)
from minifm.diffusion.schedule import snr
from minifm.diffusion.unet import UNet, UNetConfig
from minifm.training import EvaluateFn, History, TrainConfig, fit, seed_everything


@dataclass
class DDPMRecipe:
    """Training settings of the class-conditional digit DDPM.

    Images are scaled from [0, 1] to [-1, 1]. `schedule` is the noise schedule and prediction
    type the UNet learns: 1000 steps of the cosine schedule, predicting the noise.
    `min_snr_gamma` weights the loss by Min-SNR-gamma (see `min_snr_weights`), or not at all
    when None. Both choices raised the share of guided samples that the judge classifies as
    the requested digit after 350 steps: in one comparison on 300 samples (DDIM, 50 steps,
    guidance 1.5), from 0.97 with the linear schedule and the plain loss to 0.99.
    """

    steps: int = 350
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    class_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0
    image_size: int = 16
    seed: int = 0
    schedule: DDPMConfig = field(
        default_factory=lambda: DDPMConfig(beta_schedule="squaredcos_cap_v2")
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"class_dropout must lie in [0, 1); got {self.class_dropout}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive or None; got {self.min_snr_gamma}")


def to_model_range(images: Tensor) -> Tensor:
    """Map images in [0, 1] to the [-1, 1] range the DDPM is trained on."""
    return images * 2 - 1


def to_image_range(samples: Tensor) -> Tensor:
    """Map samples in [-1, 1] back to images in [0, 1], clipping what lies outside."""
    return ((samples + 1) / 2).clamp(0, 1)


def drop_labels(labels: Tensor, probability: float, null_class: int) -> Tensor:
    """Replace each label (B,) by `null_class` with the given probability."""
    dropped = torch.rand(labels.shape, device=labels.device) < probability  # (B,)
    return torch.where(dropped, torch.full_like(labels, null_class), labels)


def min_snr_weights(alpha_bar: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Return the Min-SNR-gamma loss weights (B,) for timesteps with the given alpha_bar (B,).

    Min-SNR-gamma (Hang et al. 2023) weights the squared x0 error at each timestep by
    min(SNR, gamma), which caps the weight of the nearly clean timesteps. The squared errors of
    epsilon and v predictions are SNR and SNR + 1 times the x0 error, so their weights are
    min(SNR, gamma) / SNR and min(SNR, gamma) / (SNR + 1).
    """
    ratio = snr(alpha_bar)  # (B,)
    capped = ratio.clamp(max=gamma)
    if prediction_type == "epsilon":
        return (gamma / ratio).clamp(max=1.0)  # min(SNR, gamma) / SNR, and 1 where SNR = 0
    if prediction_type == "v_prediction":
        return capped / (ratio + 1)
    return capped


def diffusion_loss(
    model: UNet,
    x0: Tensor,
    labels: Tensor,
    sampler: DiffusionSampler,
    class_dropout: float,
    min_snr_gamma: float | None = None,
) -> Tensor:
    """Return the mean squared error of the model's prediction at random timesteps (eq. 14).

    With `min_snr_gamma`, each sample's error is weighted by `min_snr_weights`.
    """
    B = x0.shape[0]
    t = torch.randint(0, sampler.num_train_timesteps, (B,), device=x0.device)  # (B,)
    noise = torch.randn_like(x0)
    x_t = sampler.add_noise(x0, noise, t)  # (B, C, Hi, Wi)
    if class_dropout > 0:
        labels = drop_labels(labels, class_dropout, model.config.null_class_index)
    target = sampler.training_target(x0, noise, t)
    if min_snr_gamma is None:
        return F.mse_loss(model(x_t, t, labels), target)

    errors = (model(x_t, t, labels) - target).square().flatten(1).mean(1)  # (B,)
    alpha_bar = sampler.alphas_cumprod.to(x0.device)[t]  # (B,)
    weights = min_snr_weights(alpha_bar, min_snr_gamma, sampler.config.prediction_type)
    return (weights * errors).mean()


def check_digit_unet(config: UNetConfig, recipe: DDPMRecipe) -> None:
    """Raise ValueError unless `config` fits class-conditional training on the digits."""
    if config.num_classes != 10 or (recipe.class_dropout > 0 and not config.null_class):
        raise ValueError(
            "the digit DDPM needs a UNet with num_class_embeds=11 and null_class=True (10 "
            f"digits and the null class); got num_class_embeds={config.num_class_embeds}, "
            f"null_class={config.null_class}"
        )
    if config.in_channels != 1 or config.out_channels != 1:
        raise ValueError(
            f"the digits have one channel; got in_channels={config.in_channels}, "
            f"out_channels={config.out_channels}"
        )


def train_class_conditional_ddpm(
    recipe: DDPMRecipe | None = None,
    unet_config: UNetConfig | None = None,
    *,
    evaluate: EvaluateFn | None = None,
    eval_every: int = 0,
    progress: bool = True,
) -> tuple[UNet, DDPMSampler, History]:
    """Train a class-conditional UNet on the training digits with `fit`.

    Returns the UNet in eval mode, a DDPM sampler with the training schedule, and the
    training history. The UNet defaults to `UNetConfig.digits()`.
    """
    recipe = DDPMRecipe() if recipe is None else recipe
    unet_config = (
        UNetConfig.digits(sample_size=recipe.image_size) if unet_config is None else unet_config
    )
    check_digit_unet(unet_config, recipe)
    digits = load_digits(recipe.image_size)
    sampler = DDPMSampler(recipe.schedule)

    seed_everything(recipe.seed)
    model = UNet(unet_config)

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        x0 = to_model_range(images)
        return diffusion_loss(
            model, x0, labels, sampler, recipe.class_dropout, recipe.min_snr_gamma
        )

    config = TrainConfig(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_steps,
        grad_clip=recipe.grad_clip,
        eval_every=eval_every,
        seed=recipe.seed,
        progress=progress,
    )
    history = fit(
        model, loss_fn, (digits.train_images, digits.train_labels), config, evaluate=evaluate
    )
    return model.eval(), sampler, history


def recipe_metadata(recipe: DDPMRecipe, unet_config: UNetConfig, **extra: str) -> dict[str, str]:
    """Describe a trained DDPM as the string metadata of a safetensors checkpoint."""
    return {
        "recipe": json.dumps(dataclasses.asdict(recipe)),
        "unet_config": json.dumps(dataclasses.asdict(unet_config)),
        **extra,
    }


def save_ddpm(path: str | os.PathLike, model: UNet, recipe: DDPMRecipe, **extra: str) -> None:
    """Save the UNet's weights with the recipe and config that produced them."""
    save_model(model, path, recipe_metadata(recipe, model.config, **extra))


def load_ddpm(path: str | os.PathLike) -> tuple[UNet, DDPMSampler, DDPMRecipe, dict[str, str]]:
    """Load a checkpoint written by `save_ddpm`.

    Returns the UNet in eval mode, a DDPM sampler with its training schedule, the recipe and
    the whole metadata.
    """
    tensors, metadata = load_tensors(path)
    recipe_fields = json.loads(metadata["recipe"])
    schedule = DDPMConfig(**recipe_fields.pop("schedule"))
    recipe = DDPMRecipe(**recipe_fields, schedule=schedule)
    model = UNet(UNetConfig(**json.loads(metadata["unet_config"])))
    load_state_dict_strict(model, tensors, f"checkpoint {os.fspath(path)!r}")
    return model.eval(), DDPMSampler(schedule), recipe, metadata


def ddim_sampler(schedule: SamplerConfig, *, eta: float = 0.0, **overrides: object) -> DDIMSampler:
    """Return a DDIM sampler over the same training schedule as `schedule`."""
    shared = {f.name: getattr(schedule, f.name) for f in dataclasses.fields(SamplerConfig)}
    return DDIMSampler(DDIMConfig(**{**shared, **overrides}), eta=eta)


@torch.no_grad()
def sample_digits(
    model: UNet,
    sampler: DiffusionSampler,
    labels: Tensor,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Generate one digit per label (B,) with classifier-free guidance; return images in [0, 1].

    Returns (B, 1, Hi, Wi), and with `return_trajectory` also the samples after every step
    (S + 1, B, 1, Hi, Wi), both mapped to [0, 1].
    """
    if model.config.null_class_index is None and guidance_scale != 1.0:
        raise ValueError("guidance needs a UNet with a null class (UNetConfig.null_class=True)")
    uncond = torch.full_like(labels, model.config.null_class_index or 0)
    model_fn = guided_model_fn(model, labels, uncond, guidance_scale)
    size = model.config.sample_size
    shape = (
        len(labels),
        model.config.in_channels,
        *((size, size) if isinstance(size, int) else size),
    )
    result = sample(
        model_fn,
        sampler,
        shape,
        num_inference_steps=num_inference_steps,
        generator=generator,
        progress=progress,
        return_trajectory=return_trajectory,
    )
    if return_trajectory:
        return to_image_range(result[0]), to_image_range(result[1])
    return to_image_range(result)
