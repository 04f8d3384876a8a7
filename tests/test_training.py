import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minifm.training import History, TrainConfig, batches, fit, learning_rate


def make_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x.sum(1) > 0).long()


class DropoutNet(nn.Sequential):
    """A model with dropout, so resuming must also restore the random generator."""

    def __init__(self):
        super().__init__(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def loss_fn(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def config(**overrides):
    fields = {"steps": 12, "batch_size": 16, "lr": 1e-2, "warmup_steps": 2, "progress": False}
    return TrainConfig(**{**fields, **overrides})


class Interrupted(Exception):
    pass


def test_resumed_run_repeats_uninterrupted_losses(tmp_path):
    data = make_data()
    torch.manual_seed(0)
    uninterrupted = fit(DropoutNet(), loss_fn, data, config())

    calls = []

    def crashing_loss(model, batch):
        calls.append(1)
        if len(calls) == 8:
            raise Interrupted
        return loss_fn(model, batch)

    checkpoint = tmp_path / "run.safetensors"
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        fit(
            DropoutNet(),
            crashing_loss,
            data,
            config(checkpoint_every=5),
            checkpoint_path=checkpoint,
        )
    torch.manual_seed(123)  # a different initialisation, overwritten by the checkpoint
    resumed = fit(DropoutNet(), loss_fn, data, config(), checkpoint_path=checkpoint, resume=True)

    assert len(resumed.losses) == 12
    assert resumed.losses == uninterrupted.losses


def checkpointed_run(tmp_path):
    checkpoint = tmp_path / "run.safetensors"
    torch.manual_seed(0)
    fit(DropoutNet(), loss_fn, make_data(), config(), checkpoint_path=checkpoint)
    return checkpoint


def test_resume_other_parameters_is_rejected(tmp_path):
    checkpoint = checkpointed_run(tmp_path)
    model = DropoutNet()
    model[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"optimizes \['0.weight', '3.weight', '3.bias'\]"):
        fit(model, loss_fn, make_data(), config(), checkpoint_path=checkpoint, resume=True)


def test_resume_other_data_order_is_rejected(tmp_path):
    checkpoint = checkpointed_run(tmp_path)
    with pytest.raises(ValueError, match="resume with the same seed and batch size"):
        fit(DropoutNet(), loss_fn, make_data(), config(seed=1), checkpoint_path=checkpoint,
            resume=True)  # fmt: skip


def test_resume_past_last_step_is_rejected(tmp_path):
    checkpoint = checkpointed_run(tmp_path)
    with pytest.raises(ValueError, match="is at step 12, past config.steps=6"):
        fit(DropoutNet(), loss_fn, make_data(), config(steps=6), checkpoint_path=checkpoint,
            resume=True)  # fmt: skip


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    data = make_data()
    torch.manual_seed(0)
    history = fit(
        DropoutNet(),
        loss_fn,
        data,
        config(),
        checkpoint_path=tmp_path / "none.safetensors",
        resume=True,
    )
    assert len(history.losses) == 12


def test_training_reduces_the_loss():
    data = make_data(256)
    torch.manual_seed(0)
    history = fit(nn.Linear(8, 2), loss_fn, data, config(steps=60, batch_size=32, lr=5e-2))
    assert sum(history.losses[-5:]) / 5 < 0.5 * sum(history.losses[:5]) / 5


def test_non_finite_loss_stops_training():
    def exploding(model, batch):
        return model(batch[0]).sum() * float("inf")

    with pytest.raises(FloatingPointError, match="loss is .* at step 0"):
        fit(nn.Linear(8, 2), exploding, make_data(), config())


def test_evaluation_runs_on_schedule_in_eval_mode():
    seen = []

    def evaluate(model):
        seen.append(model.training)
        return {"accuracy": 0.5}

    history = fit(DropoutNet(), loss_fn, make_data(), config(eval_every=5), evaluate=evaluate)
    assert history.metric("accuracy")[0] == [5, 10, 12]
    assert seen == [False, False, False]


def test_progress_bar_redraw_rate(capsys):
    history = fit(nn.Linear(8, 2), loss_fn, make_data(), config(steps=300, progress=True))
    redraws = capsys.readouterr().err.count("\r")
    assert redraws <= 3 + history.seconds, redraws


def test_batches_cover_an_epoch_without_repeats():
    data = (torch.arange(40),)
    stream = batches(data, batch_size=8, seed=3)
    epoch = torch.cat([next(stream)[0] for _ in range(5)])
    assert sorted(epoch.tolist()) == list(range(40))
    later = batches(data, batch_size=8, seed=3, start_step=7)
    replay = batches(data, batch_size=8, seed=3)
    for _ in range(7):
        next(replay)
    assert torch.equal(next(later)[0], next(replay)[0])


def test_learning_rate_warms_up_then_decays():
    cfg = config(steps=10, warmup_steps=2, lr=1.0)
    assert learning_rate(0, cfg) == 0.5
    assert learning_rate(1, cfg) == 1.0
    assert learning_rate(2, cfg) == 1.0
    assert math.isclose(learning_rate(6, cfg), 0.5)
    assert learning_rate(9, cfg) < 0.05


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", 0, "steps must be an integer of at least 1; got 0"),
        ("steps", 2.5, "steps must be an integer of at least 1; got 2.5"),
        ("warmup_steps", -1, "warmup_steps must be an integer of at least 0; got -1"),
        ("lr", float("nan"), "lr must be a positive finite number; got nan"),
        ("weight_decay", -0.1, "weight_decay must be at least 0; got -0.1"),
        ("betas", (0.9, 1.0), r"betas must be two numbers in \[0, 1\); got \(0.9, 1.0\)"),
        ("min_lr_ratio", 2.0, r"min_lr_ratio must lie in \[0, 1\]; got 2.0"),
        ("grad_clip", -1.0, "grad_clip must be positive, or None for no clipping; got -1.0"),
        ("grad_clip", 0.0, "grad_clip must be positive, or None for no clipping; got 0.0"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"steps": 10, "batch_size": 4, field: value})


def test_batch_larger_than_data_is_rejected():
    with pytest.raises(ValueError, match="batch_size=100 exceeds the 64 training examples"):
        fit(nn.Linear(8, 2), loss_fn, make_data(), config(batch_size=100))


def test_history_metric_reads_evaluations():
    history = History(evaluations=[{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}])
    assert history.metric("loss") == ([2, 4], [1.0, 0.5])
