"""Speed of minifm's UNet and samplers against diffusers' UNet2DModel and schedulers.

Both sides get the same configuration (the digit UNet of `UNetConfig.digits()` by default),
the same weights (minifm's UNet is converted from the diffusers one) and the same inputs:

- training step: add noise at random timesteps, predict it, MSE loss, backward, AdamW update.
  minifm uses `DDPMSampler.add_noise`, diffusers `DDPMScheduler.add_noise`.
- DDIM sampling: `--inference-steps` class-conditional steps from the same starting noise.
  minifm runs `denoise` with `DDIMSampler`, diffusers the usual loop over `DDIMScheduler.step`.
  The table also gives the max absolute difference between the two final samples.
- DDPM scheduler only: all 1000 ancestral steps with a model that returns zeros, which
  measures the per-step cost of the sampler itself.

The two sides alternate, round after round, so that a machine busy with something else slows
both alike. Each figure is the median over rounds, and the ratio is diffusers' time divided
by minifm's, both from this run (above 1 means minifm is faster).

    python -m benchmarks.diffusion                     # CPU-sized default, about 1-2 minutes
    python -m benchmarks.diffusion --batch-size 128 --rounds 7 --json results/diffusion-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from minifm.diffusion import DDIMSampler, DDPMSampler, denoise
from minifm.diffusion.unet import UNetConfig
from minifm.hf import from_diffusers
from minifm.hf.unet import SHARED_FIELDS


def time_call(fn: Callable[[], object], repeats: int) -> float:
    """Return the seconds one call of `fn` takes, averaged over `repeats` calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def training_steps(ours, theirs, args) -> dict[str, Callable[[], None]]:
    sampler, scheduler = DDPMSampler(), DDPMScheduler()
    x0 = torch.rand(args.batch_size, 1, 16, 16) * 2 - 1
    labels = torch.randint(0, 10, (args.batch_size,))
    timesteps = torch.randint(0, 1000, (args.batch_size,))
    noise = torch.randn_like(x0)

    def step(model, add_noise, predict):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            prediction = predict(model, add_noise(x0, noise, timesteps), timesteps, labels)
            loss = F.mse_loss(prediction, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return run

    return {
        "minifm": step(ours, sampler.add_noise, lambda m, x, t, y: m(x, t, y)),
        "diffusers": step(
            theirs, scheduler.add_noise, lambda m, x, t, y: m(x, t, class_labels=y).sample
        ),
    }


def ddim_runs(ours, theirs, args, finals: dict) -> dict[str, Callable[[], None]]:
    """Return the two DDIM sampling runs. Each one stores its final sample in `finals`."""
    sampler, scheduler = DDIMSampler(), DDIMScheduler()
    sampler.set_timesteps(args.inference_steps)
    scheduler.set_timesteps(args.inference_steps)
    start = torch.randn(args.sample_batch, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(args.sample_batch) % 10

    @torch.no_grad()
    def run_ours():
        finals["minifm"] = denoise(lambda x, t: ours(x, t, labels), sampler, start, progress=False)

    @torch.no_grad()
    def run_theirs():
        x = start
        for t in scheduler.timesteps:
            x = scheduler.step(theirs(x, t, class_labels=labels).sample, t, x).prev_sample
        finals["diffusers"] = x

    return {"minifm": run_ours, "diffusers": run_theirs}


def ddpm_scheduler_runs(args) -> dict[str, Callable[[], None]]:
    sampler, scheduler = DDPMSampler(), DDPMScheduler()
    start = torch.randn(args.sample_batch, 1, 16, 16)
    zeros = torch.zeros_like(start)

    def run_ours():
        generator, x = torch.Generator().manual_seed(0), start
        for t in sampler.timesteps.tolist():
            x = sampler.step(zeros, t, x, generator=generator)

    def run_theirs():
        generator, x = torch.Generator().manual_seed(0), start
        for t in scheduler.timesteps:
            x = scheduler.step(zeros, t, x, generator=generator).prev_sample

    return {"minifm": run_ours, "diffusers": run_theirs}


def median_seconds(runs: dict[str, Callable[[], None]], args, repeats: int) -> dict[str, float]:
    for run in runs.values():
        run()  # warm-up, untimed
    seconds = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            seconds[name].append(time_call(run, repeats))
    return {name: statistics.median(values) for name, values in seconds.items()}


def measure(args) -> dict:
    torch.manual_seed(0)
    config = UNetConfig.digits()
    theirs = UNet2DModel(**{name: getattr(config, name) for name in SHARED_FIELDS})
    ours = from_diffusers(theirs)
    finals = {}
    theirs.train(), ours.train()
    train = median_seconds(training_steps(ours, theirs, args), args, args.repeats)
    theirs.eval(), ours.eval()
    ddim = median_seconds(ddim_runs(ours, theirs, args, finals), args, 1)
    ddpm = median_seconds(ddpm_scheduler_runs(args), args, 1)
    difference = (finals["minifm"] - finals["diffusers"]).abs().max().item()
    return {
        "parameters": sum(p.numel() for p in ours.parameters()),
        "train_steps_per_second": {name: 1 / s for name, s in train.items()},
        "train_ratio": train["diffusers"] / train["minifm"],
        "ddim_seconds": ddim,
        "ddim_ratio": ddim["diffusers"] / ddim["minifm"],
        "ddim_max_difference": difference,
        "ddpm_scheduler_seconds": ddpm,
        "ddpm_scheduler_ratio": ddpm["diffusers"] / ddpm["minifm"],
    }


def print_table(results: dict, args) -> None:
    print(
        f"UNet of {results['parameters'] / 1e6:.2f} M parameters (UNetConfig.digits), 16 x 16, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}\n"
    )
    print("| measurement | minifm | diffusers | diffusers time / minifm time |")
    print("| --- | ---: | ---: | ---: |")
    rate = results["train_steps_per_second"]
    print(
        f"| training steps/s, batch {args.batch_size} | {rate['minifm']:.2f} | "
        f"{rate['diffusers']:.2f} | {results['train_ratio']:.2f} |"
    )
    ddim = results["ddim_seconds"]
    print(
        f"| DDIM {args.inference_steps} steps, batch {args.sample_batch}, s | "
        f"{ddim['minifm']:.3f} | {ddim['diffusers']:.3f} | {results['ddim_ratio']:.2f} |"
    )
    ddpm = results["ddpm_scheduler_seconds"]
    print(
        f"| DDPM scheduler alone, 1000 steps, s | {ddpm['minifm']:.3f} | "
        f"{ddpm['diffusers']:.3f} | {results['ddpm_scheduler_ratio']:.2f} |"
    )
    print(f"\nmax |minifm - diffusers| of the DDIM samples: {results['ddim_max_difference']:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="images per training step")
    parser.add_argument("--sample-batch", type=int, default=16, help="images per sampling run")
    parser.add_argument("--inference-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=2, help="training steps per timing")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = default")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = measure(args)
    print_table(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"args": {k: str(v) for k, v in vars(args).items()}}
        record["machine"] = platform.processor()
        record["threads"] = torch.get_num_threads()
        args.json.write_text(json.dumps({**record, "results": results}, indent=2))


if __name__ == "__main__":
    main()
