"""Benchmark the attention backends: time, TFLOP/s and peak memory, forward and forward+backward.

    python -m benchmarks.attention --output benchmarks/results/attention-cuda.json

Backends: `math` (minifm's explicit softmax), `sdpa` (`torch.nn.functional.
scaled_dot_product_attention` with `is_causal`, so PyTorch may pick its flash kernel) and
`triton` (`minifm.kernels.flash_attention`). Queries and keys have the same length N.

On a CUDA device the defaults are bfloat16, N = 512 ... 16384, Dh = 64 and 128, causal on and
off. Every row has B * N = 16384 tokens and H * Dh = 2048 channels, so the work per row grows
only linearly with N, and the TFLOP/s of short and long sequences compare fairly.

Without CUDA it runs `math` and `sdpa` on the CPU in float32 at N = 128 ... 512, and `triton`
on Triton's interpreter at the shortest N only. Interpreter times measure the simulator, not the
kernel. The GPU rows need a GPU.

FLOPs count the matrix products only: forward 4 B H N^2 Dh, backward 2.5 times that (five
products against two, recomputation not counted), both halved when causal.

NOTE: the CUDA path of this script has not been run yet, so expect to fix small problems on the
first GPU run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton

from minifm.attention import attend  # noqa: E402
from minifm.kernels import flash_attention  # noqa: E402

BACKENDS = ("math", "sdpa", "triton")
MODES = ("forward", "forward+backward")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MIB = 2**20


@dataclass
class Row:
    """One measurement: a backend on one shape and mode."""

    backend: str
    mode: str
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    causal: bool
    dtype: str
    ms: float | None = None
    tflops: float | None = None
    peak_mib: float | None = None
    max_abs_error: float | None = None
    note: str = ""


class TensorMemoryCounter(TorchDispatchMode):
    """Count the peak bytes of tensor storage that PyTorch operators allocate inside the block.

    Works on any device, including the CPU, where PyTorch keeps no allocator statistics. Each
    storage is counted once when an operator first returns it and uncounted when it is freed.
    Memory allocated outside PyTorch (for example NumPy arrays) is not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._counted: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live_bytes -= nbytes
        self._counted.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if storage.nbytes() == 0 or key in self._counted:
                continue
            self._counted.add(key)
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def attention_fn(backend: str) -> Callable:
    """Return a function (q, k, v, causal) -> output (B, H, N, Dh) for a backend name."""
    if backend == "math":
        return lambda q, k, v, causal: attend(q, k, v, causal=causal, backend="math")
    if backend == "sdpa":
        return lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if backend == "triton":
        return lambda q, k, v, causal: flash_attention(q, k, v, causal=causal)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def attention_flops(row: Row) -> float:
    """Return the FLOPs of the matrix products of one call in `row.mode`."""
    forward = 4 * row.batch * row.heads * row.seq_len**2 * row.head_dim
    total = forward * (3.5 if row.mode == "forward+backward" else 1.0)
    return total / 2 if row.causal else total


def make_step(row: Row, device: torch.device) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """Build the inputs of `row` and a no-argument function that runs one call."""
    g = torch.Generator(device=device).manual_seed(0)
    shape = (row.batch, row.heads, row.seq_len, row.head_dim)
    dtype = DTYPES[row.dtype]
    backward = row.mode == "forward+backward"
    q, k, v = (
        torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(backward)
        for _ in range(3)
    )
    grad = torch.randn(shape, generator=g, device=device, dtype=dtype)
    fn = attention_fn(row.backend)

    def step() -> None:
        out = fn(q, k, v, row.causal)
        if backward:
            out.backward(grad)

    return step, [q, k, v]


def time_cuda(step: Callable[[], None], inputs: list[torch.Tensor]) -> tuple[float, float]:
    """Return the median milliseconds per call and the peak MiB allocated above the inputs."""
    import triton.testing

    step()  # compile, autotune and warm up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak_mib = (torch.cuda.max_memory_allocated() - before) / MIB
    grads = inputs if inputs[0].requires_grad else None
    ms = triton.testing.do_bench(step, grad_to_none=grads, return_mode="median")
    return ms, peak_mib


def time_cpu(
    step: Callable[[], None], inputs: list[torch.Tensor], repeats: int
) -> tuple[float, float]:
    """Return the median milliseconds of `repeats` calls and the peak tensor MiB of one call."""
    step()  # warm up
    for tensor in inputs:
        tensor.grad = None
    with TensorMemoryCounter() as counter:
        step()
    times = []
    for _ in range(repeats):
        for tensor in inputs:
            tensor.grad = None
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), counter.peak_bytes / MIB


def max_error_against_math(row: Row, device: torch.device) -> float:
    """Return the max |output - math in float32| on the first sample and first two heads."""
    g = torch.Generator(device=device).manual_seed(1)
    shape = (1, min(2, row.heads), row.seq_len, row.head_dim)
    q, k, v = (
        torch.randn(shape, generator=g, device=device, dtype=DTYPES[row.dtype]) for _ in "qkv"
    )
    with torch.no_grad():
        out = attention_fn(row.backend)(q, k, v, row.causal).float()
        reference = attend(q.float(), k.float(), v.float(), causal=row.causal, backend="math")
    return (out - reference).abs().max().item()


def measure(row: Row, device: torch.device, repeats: int) -> Row:
    """Fill in the time, TFLOP/s, peak memory and (forward rows) error of `row`."""
    try:
        step, inputs = make_step(row, device)
        if device.type == "cuda":
            row.ms, row.peak_mib = time_cuda(step, inputs)
        else:
            row.ms, row.peak_mib = time_cpu(step, inputs, repeats)
        row.tflops = attention_flops(row) / (row.ms * 1e-3) / 1e12
        if row.mode == "forward":
            row.max_abs_error = max_error_against_math(row, device)
    except torch.OutOfMemoryError:
        row.note = "out of memory"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def plan_rows(args: argparse.Namespace, device: torch.device) -> tuple[list[Row], list[str]]:
    """List the rows to measure, and the reasons for the rows left out."""
    rows, skipped = [], []
    grid = itertools.product(args.head_dims, (False, True), args.lengths, MODES, args.backends)
    for head_dim, causal, seq_len, mode, backend in grid:
        row = Row(
            backend=backend,
            mode=mode,
            batch=max(1, args.tokens // seq_len),
            heads=max(1, args.width // head_dim),
            seq_len=seq_len,
            head_dim=head_dim,
            causal=causal,
            dtype=args.dtype,
        )
        rows.append(row)
    if device.type == "cpu" and "triton" in args.backends:
        limit = args.interpreter_max_length
        rows = [r for r in rows if r.backend != "triton" or r.seq_len <= limit]
        skipped.append(
            f"triton runs on Triton's CPU interpreter here, so only at N <= {limit} "
            "(--interpreter-max-length); its times measure the simulator, not the kernel"
        )
    if device.type == "cpu":
        skipped.append("GPU rows need a CUDA device: none found, so none were measured")
    return rows, skipped


def memory_slope(rows: list[Row]) -> float | None:
    """Fit log(peak memory per sequence) against log(N); ~1 means linear, ~2 quadratic."""
    points = [(r.seq_len, r.peak_mib / r.batch) for r in rows if r.peak_mib]
    if len(points) < 2:
        return None
    (n0, m0), (n1, m1) = min(points), max(points)
    return math.log(m1 / m0) / math.log(n1 / n0)


def summarize(rows: list[Row], min_length: int = 4096, head_dim: int = 128) -> dict:
    """Compare triton with sdpa (N >= min_length, Dh = head_dim) and fit the memory growth."""
    by_key = {(r.backend, r.mode, r.seq_len, r.head_dim, r.causal): r for r in rows}
    ratios = {}
    for mode in MODES:
        values = []
        for (backend, row_mode, seq_len, dh, causal), row in by_key.items():
            sdpa = by_key.get(("sdpa", row_mode, seq_len, dh, causal))
            chosen = backend == "triton" and row_mode == mode and dh == head_dim
            if chosen and seq_len >= min_length and row.tflops and sdpa and sdpa.tflops:
                values.append(row.tflops / sdpa.tflops)
        ratios[mode] = min(values) if values else None
    slopes = {}
    for backend in {r.backend for r in rows}:
        for mode in MODES:
            group = [
                r for r in rows if (r.backend, r.mode, r.head_dim) == (backend, mode, head_dim)
            ]
            slopes[f"{backend} {mode}"] = memory_slope([r for r in group if not r.causal])
    errors = [
        r.max_abs_error for r in rows if r.backend == "triton" and r.max_abs_error is not None
    ]
    return {
        "triton_over_sdpa_tflops_min": ratios,
        "peak_memory_per_sequence_slope": slopes,
        "triton_max_abs_error": max(errors) if errors else None,
        "conditions": f"N >= {min_length}, Dh = {head_dim}; slopes from non-causal rows",
    }


def format_value(value, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict]) -> str:
    """Format measured rows (as dicts) as a markdown table."""
    header = (
        "| backend | mode | N | Dh | causal | B x H | ms | TFLOP/s | peak MiB | max error | note |"
    )
    lines = [header, "|" + " --- |" * 11]
    for r in rows:
        cells = [
            r["backend"],
            r["mode"],
            r["seq_len"],
            r["head_dim"],
            "yes" if r["causal"] else "no",
            f"{r['batch']} x {r['heads']}",
            format_value(r["ms"], 3),
            format_value(r["tflops"], 4),
            format_value(r["peak_mib"], 1),
            "-" if r["max_abs_error"] is None else f"{r['max_abs_error']:.1e}",
            r["note"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot_results(results: dict, head_dim: int, causal: bool = False):
    """Plot TFLOP/s and peak memory per sequence against N for each backend and mode."""
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["head_dim"] == head_dim and r["causal"] == causal]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("forward", "tflops"), ("forward+backward", "tflops"), ("forward+backward", "peak")]
    for ax, (mode, quantity) in zip(axes, panels, strict=True):
        for backend in BACKENDS:
            points = [r for r in rows if r["backend"] == backend and r["mode"] == mode]
            points = [r for r in points if r["ms"] is not None]
            if not points:
                continue
            lengths = [r["seq_len"] for r in points]
            if quantity == "tflops":
                values = [r["tflops"] for r in points]
            else:
                values = [r["peak_mib"] / r["batch"] for r in points]
            ax.plot(lengths, values, marker="o", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N")
        if quantity == "tflops":
            ax.set_title(f"{mode}: TFLOP/s")
        else:
            ax.set_yscale("log", base=2)
            ax.set_title(f"{mode}: peak MiB per sequence")
        ax.legend()
    env = results["environment"]
    fig.suptitle(f"{env['device_name']}, {env['dtype']}, Dh = {head_dim}, causal = {causal}")
    fig.tight_layout()
    return fig


def environment(device: torch.device, dtype: str) -> dict:
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": device.type,
        "device_name": name or platform.machine(),
        "dtype": dtype,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def parse_args(argv: list[str] | None, on_gpu: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_output = f"benchmarks/results/attention-{'cuda' if on_gpu else 'cpu'}.json"
    parser.add_argument("--output", default=default_output, help="JSON file to write")
    default_lengths = [512, 1024, 2048, 4096, 8192, 16384] if on_gpu else [128, 256, 512]
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=default_lengths, help="sequence lengths N"
    )
    parser.add_argument(
        "--head-dims",
        type=int,
        nargs="+",
        default=[64, 128] if on_gpu else [64],
        help="head dimensions Dh",
    )
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="bfloat16" if on_gpu else "float32"
    )
    parser.add_argument(
        "--tokens", type=int, default=16384 if on_gpu else 512, help="B * N of every row"
    )
    parser.add_argument(
        "--width", type=int, default=2048 if on_gpu else 128, help="H * Dh of every row"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed calls per CPU row (median reported)"
    )
    parser.add_argument(
        "--interpreter-max-length",
        type=int,
        default=128,
        help="longest N that runs triton on the CPU interpreter",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = parse_args(argv, device.type == "cuda")
    rows, skipped = plan_rows(args, device)
    for note in skipped:
        print(f"note: {note}")
    for i, row in enumerate(rows):
        repeats = 1 if row.backend == "triton" and device.type == "cpu" else args.repeats
        measure(row, device, repeats)
        if row.backend == "triton" and device.type == "cpu":
            row.note = "interpreter: times and memory include the simulator's copies"
        print(f"[{i + 1}/{len(rows)}] {row.backend} {row.mode} N={row.seq_len} "
              f"Dh={row.head_dim} causal={row.causal}: {format_value(row.ms, 3)} ms",
              file=sys.stderr)  # fmt: skip
    results = {
        "environment": environment(device, args.dtype),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "skipped": skipped,
        "rows": [asdict(r) for r in rows],
        "summary": summarize(rows) if device.type == "cuda" else None,
    }
    print(markdown_table(results["rows"]))
    if results["summary"] is not None:
        print(json.dumps(results["summary"], indent=2))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
