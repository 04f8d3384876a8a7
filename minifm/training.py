"""The one training loop every chapter uses: seeded, resumable, with a progress bar.

`fit(model, loss_fn, data, config)` runs AdamW with linear warm-up and cosine decay over
tensors held in memory. Batch order comes from a generator seeded per epoch and model-side
randomness (dropout, masking noise, diffusion noise) from torch's global generator, whose state
the checkpoint stores with the model and optimizer. A run resumed from a checkpoint therefore
continues with the same batches, the same random draws and, on CPU, the same losses as one that
was never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from minifm.checkpoint import load_state_dict_strict, load_tensors, save_tensors

LossFn = Callable[[nn.Module, Sequence[Tensor]], Tensor]
EvaluateFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class TrainConfig:
    """Optimisation settings. `lr` is the peak learning rate reached after `warmup_steps`."""

    steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    eval_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name, least in [("steps", 1), ("batch_size", 1), ("warmup_steps", 0),
                            ("eval_every", 0), ("checkpoint_every", 0)]:  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}; got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number; got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be at least 0; got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1); got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1]; got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(
                f"grad_clip must be positive, or None for no clipping; got {self.grad_clip}"
            )


@dataclass
class History:
    """What a run recorded: the loss at every step and each evaluation's metrics."""

    losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def metric(self, name: str) -> tuple[list[int], list[float]]:
        """Return the steps and values of one evaluation metric."""
        return [e["step"] for e in self.evaluations], [e[name] for e in self.evaluations]


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """Return a tqdm bar that redraws at most once a second (a widget with ipywidgets, else text).

    Every redraw is a message from a notebook kernel. A loop that redraws on every step sends
    thousands of them, which bloats the stored notebook, and nbval can then lose the kernel's
    idle message and time out.
    """
    return tqdm(iterable, mininterval=1.0, **kwargs)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def batches(
    data: Sequence[Tensor], batch_size: int, seed: int, start_step: int = 0
) -> Iterator[tuple[Tensor, ...]]:
    """Yield shuffled batches forever, starting at `start_step`; incomplete batches are dropped.

    Epoch e is shuffled by a generator seeded with `seed + e`, so step s always sees the same batch.
    """
    n = len(data[0])
    if any(len(t) != n for t in data):
        raise ValueError(f"data tensors differ in length: {[len(t) for t in data]}")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples")
    per_epoch = n // batch_size
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(offset, per_epoch):
            index = order[i * batch_size : (i + 1) * batch_size]
            yield tuple(t[index] for t in data)
        epoch, offset = epoch + 1, 0


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels only, not on biases, norms or embeddings."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def optimized_parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Return the names of the optimizer's parameters, in the order its state dict numbers them."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def save_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: History,
    data_order: dict[str, int],
) -> None:
    """Checkpoint model, optimizer moments and the global RNG state after `step` steps.

    `data_order` contains the settings that fix the order of the batches (seed, batch size).
    """
    tensors = {f"model.{name}": t for name, t in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "step": str(step),
        "history": json.dumps(asdict(history)),
        "optimized_parameters": json.dumps(optimized_parameter_names(model, optimizer)),
        "data_order": json.dumps(data_order),
    }
    save_tensors(path, tensors, metadata)


def load_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_order: dict[str, int],
) -> tuple[int, History]:
    """Restore what `save_training_state` wrote; return the step reached and the history so far.

    Raises ValueError when the checkpoint's optimized parameters or data order differ from
    this run's, since the optimizer moments or the batches would then be misassigned.
    """
    tensors, metadata = load_tensors(path)
    source = f"checkpoint {os.fspath(path)!r}"
    model_state = {k[len("model.") :]: t for k, t in tensors.items() if k.startswith("model.")}
    load_state_dict_strict(model, model_state, source)
    saved = json.loads(metadata["optimized_parameters"])
    current = optimized_parameter_names(model, optimizer)
    if saved != current:
        raise ValueError(
            f"{source} optimized the parameters {saved}, but this run optimizes {current}; "
            "resume with the same trainable parameters"
        )
    saved_order = json.loads(metadata["data_order"])
    if saved_order != data_order:
        raise ValueError(
            f"{source} was written with {saved_order}, but this run has {data_order}; "
            "resume with the same seed and batch size"
        )
    optimizer_state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    param_groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": param_groups})
    torch.set_rng_state(tensors["rng.torch"])
    return int(metadata["step"]), History(**json.loads(metadata["history"]))


def evaluate_now(model: nn.Module, evaluate: EvaluateFn, step: int) -> dict[str, float]:
    """Run `evaluate` in eval mode without gradients, tagging the result with the step."""
    model.eval()
    with torch.no_grad():
        metrics = {"step": step, **evaluate(model)}
    model.train()
    return metrics


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: Sequence[Tensor],
    config: TrainConfig,
    *,
    evaluate: EvaluateFn | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
) -> History:
    """Train `model` to minimise `loss_fn(model, batch)` over shuffled batches of `data`.

    `evaluate(model)` runs every `eval_every` steps and after the last. With `checkpoint_path`,
    a checkpoint is written every `checkpoint_every` steps and after the last; with `resume`,
    training continues from that checkpoint when it exists.
    """
    optimizer = make_optimizer(model, config)
    data_order = {"seed": config.seed, "batch_size": config.batch_size}
    step, history = 0, History()
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        step, history = load_training_state(checkpoint_path, model, optimizer, data_order)
        if step > config.steps:
            raise ValueError(
                f"checkpoint {os.fspath(checkpoint_path)!r} is at step {step}, past "
                f"config.steps={config.steps}"
            )
    else:
        seed_everything(config.seed)

    model.train()
    stream = batches(data, config.batch_size, config.seed, start_step=step)
    bar = progress_bar(total=config.steps, initial=step, disable=not config.progress, unit="step")
    start = time.perf_counter()
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = loss_fn(model, next(stream))
        if not torch.isfinite(loss):
            bar.close()
            raise FloatingPointError(
                f"loss is {loss.item()} at step {step}; lower the learning rate or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        history.losses.append(loss.item())
        bar.set_postfix(loss=f"{history.losses[-1]:.4f}", refresh=False)
        bar.update(1)

        last = step == config.steps
        if evaluate is not None and (last or (config.eval_every and step % config.eval_every == 0)):
            history.evaluations.append(evaluate_now(model, evaluate, step))
            metrics = {k: f"{v:.4g}" for k, v in history.evaluations[-1].items()}
            bar.set_postfix(metrics, refresh=False)
        if checkpoint_path is not None and (
            last or (config.checkpoint_every and step % config.checkpoint_every == 0)
        ):
            save_training_state(checkpoint_path, model, optimizer, step, history, data_order)
    bar.close()
    history.seconds += time.perf_counter() - start
    model.eval()
    return history
