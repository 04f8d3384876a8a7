"""Tile sizes, kernel launching and the Triton helpers that the forward and backward kernels share.

Every kernel program works on one (batch, head) pair and one tile of rows. The program grid is
(row tiles, H, B), so each axis stays under CUDA's limit of 65535 programs on grid axes 1 and 2.

On a GPU, `triton.autotune` picks the tile sizes per head dimension, dtype, sequence lengths and
masking mode from the candidates below, timing each one on the first call with a new combination.
Candidates that do not fit in shared memory fail to compile and are skipped by the autotuner.
Under the interpreter (`TRITON_INTERPRET=1`) the kernels run once with `INTERPRETER_TILES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import triton
import triton.language as tl


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes of one kernel launch: `block_m` query rows by `block_n` key rows."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2

    def to_triton(self) -> triton.Config:
        meta = {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n}
        return triton.Config(meta, num_warps=self.num_warps, num_stages=self.num_stages)


# The interpreter simulates every program with NumPy, so its cost grows with the number of
# programs and loop steps. 32 x 32 tiles still split the test lengths (17 ... 130) into several
# tiles with a ragged last one, which is what the tests need to exercise.
INTERPRETER_TILES = TileConfig(block_m=32, block_n=32, num_warps=1, num_stages=1)

# NOTE: these candidates are educated guesses for recent NVIDIA GPUs (Ampere, Hopper). They have
# not been timed on a GPU yet, so the autotuner's choice among them is the only tuning so far.
FORWARD_TILES = (
    TileConfig(block_m=128, block_n=64, num_warps=4, num_stages=3),
    TileConfig(block_m=128, block_n=64, num_warps=8, num_stages=3),
    TileConfig(block_m=128, block_n=128, num_warps=8, num_stages=3),
    TileConfig(block_m=64, block_n=64, num_warps=4, num_stages=3),
    TileConfig(block_m=64, block_n=32, num_warps=4, num_stages=2),
)
# The dK / dV kernel keeps a key tile (`block_n` rows) resident and streams query tiles past it.
BACKWARD_KV_TILES = (
    TileConfig(block_m=32, block_n=128, num_warps=4, num_stages=3),
    TileConfig(block_m=32, block_n=128, num_warps=8, num_stages=3),
    TileConfig(block_m=64, block_n=64, num_warps=4, num_stages=3),
    TileConfig(block_m=32, block_n=64, num_warps=4, num_stages=2),
)
# The dQ kernel keeps a query tile (`block_m` rows) resident and streams key tiles past it.
BACKWARD_Q_TILES = (
    TileConfig(block_m=128, block_n=32, num_warps=4, num_stages=3),
    TileConfig(block_m=128, block_n=32, num_warps=8, num_stages=3),
    TileConfig(block_m=64, block_n=64, num_warps=4, num_stages=3),
    TileConfig(block_m=64, block_n=32, num_warps=4, num_stages=2),
)

# The autotuner times the candidates again for every new combination of these kernel arguments
# (and of the tensor dtypes, which it always adds).
TUNING_KEY = ["N_Q", "N_K", "HEAD_DIM_PAD", "CAUSAL", "HAS_KEY_MASK"]


def is_interpreting() -> bool:
    """Return whether Triton runs kernels on the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return bool(triton.knobs.runtime.interpret)


def autotuned(
    kernel: triton.JITFunction, candidates: Sequence[TileConfig]
) -> triton.runtime.Autotuner:
    """Wrap `kernel` in `triton.autotune` over `candidates`."""
    configs = [tile.to_triton() for tile in candidates]
    return triton.autotune(configs=configs, key=TUNING_KEY)(kernel)


def launch(
    kernel: triton.JITFunction,
    tuned_kernel: triton.runtime.Autotuner,
    grid: Callable[[dict], tuple[int, ...]],
    *args,
    **constants,
) -> None:
    """Run `kernel` with the interpreter tiles when interpreting, else its autotuned wrapper.

    `grid` maps the launch's meta-parameters (including BLOCK_M and BLOCK_N) to the grid.
    """
    if not is_interpreting():
        tuned_kernel[grid](*args, **constants)
        return
    tile = INTERPRETER_TILES
    meta = {"BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, **constants}
    kernel[grid(meta)](*args, **meta, num_warps=tile.num_warps, num_stages=tile.num_stages)


def dot_options(dtype_is_float32: bool) -> dict:
    """Choose how `matmul` multiplies: float32 inputs in full IEEE precision, not TF32.

    Under the interpreter every product is upcast to float32, because its bfloat16 `tl.dot`
    returns wrong results (triton 3.9), while bfloat16 loads, stores and casts are exact.
    """
    interpreting = is_interpreting()
    precision = "ieee" if dtype_is_float32 or interpreting else "tf32"
    return {"DOT_IN_FLOAT32": interpreting, "DOT_PRECISION": precision}


@triton.jit
def matmul(a, b, DOT_IN_FLOAT32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Multiply two tiles, accumulating in float32."""
    if DOT_IN_FLOAT32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def head_offset(stride_b, stride_h):
    """Return the element offset of this program's (batch, head) slice, in 64-bit."""
    batch = tl.program_id(2).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    return batch * stride_b + head * stride_h


@triton.jit
def load_rows(ptr, stride_n, rows, n_rows, cols, n_cols):
    """Load a (len(rows), len(cols)) tile of a row-major matrix, with zeros outside it."""
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * stride_n + cols[None, :], mask=inside, other=0.0)


@triton.jit
def store_rows(ptr, stride_n, rows, n_rows, cols, n_cols, tile):
    """Store a (len(rows), len(cols)) tile into a row-major matrix, skipping what falls outside."""
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(
        ptr + rows[:, None] * stride_n + cols[None, :], tile.to(ptr.dtype.element_ty), mask=inside
    )


@triton.jit
def allowed_pairs(
    query_index, key_index, N_Q, N_K, key_mask_ptr, CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr
):
    """Return which (query, key) pairs may attend, broadcasting the two index tensors.

    Pass (M, 1) and (1, N) indices for a score tile, or (1, M) and (N, 1) for its transpose.
    Causal attention is aligned top-left, as PyTorch's `is_causal=True`: query i sees keys j <= i.
    """
    allowed = (query_index < N_Q) & (key_index < N_K)
    if CAUSAL:
        allowed = allowed & (key_index <= query_index)
    if HAS_KEY_MASK:
        key_valid = tl.load(key_mask_ptr + key_index, mask=key_index < N_K, other=0)
        allowed = allowed & (key_valid != 0)
    return allowed
