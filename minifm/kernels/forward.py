"""Fused attention forward pass: stream key / value tiles through an online softmax.

For one tile of queries the kernel keeps three running quantities per row (Dao 2023,
FlashAttention-2, arXiv:2307.08691, Algorithm 1): the maximum score seen so far `m`, the sum
of exponentials relative to it `l`, and the unnormalised output `acc`. Each new key tile may
raise the maximum, so `l` and `acc` are first rescaled by exp(m_old - m_new), then the tile's
terms are added. The (Nq, Nk) score matrix never exists in memory, only (BLOCK_M, BLOCK_N)
tiles of it.

The kernel works in base 2, since `exp2` is the hardware instruction: scores are multiplied by
scale * log2(e), so 2^(s * scale * log2 e) = e^(s * scale). The log-sum-exp that it stores for
the backward pass is in the same units: lse2 = log2(sum_j 2^(s_j * scale * log2 e)).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from minifm.kernels.common import (
    FORWARD_TILES,
    allowed_pairs,
    autotuned,
    dot_options,
    head_offset,
    launch,
    load_rows,
    matmul,
    store_rows,
)


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, key_mask_ptr,
    q_stride_b, q_stride_h, q_stride_n,
    k_stride_b, k_stride_h, k_stride_n,
    v_stride_b, v_stride_h, v_stride_n,
    o_stride_b, o_stride_h, o_stride_n,
    key_mask_stride_b, qk_scale_log2,
    N_Q, N_K, HEAD_DIM,
    HEAD_DIM_PAD: tl.constexpr, CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
    DOT_IN_FLOAT32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # 1. Tiling: this program owns BLOCK_M query rows of one (batch, head).
    q_ptr += head_offset(q_stride_b, q_stride_h)
    k_ptr += head_offset(k_stride_b, k_stride_h)
    v_ptr += head_offset(v_stride_b, v_stride_h)
    o_ptr += head_offset(o_stride_b, o_stride_h)
    lse_ptr += head_offset(tl.num_programs(1) * N_Q, N_Q)  # lse2 is contiguous (B, H, Nq)
    if HAS_KEY_MASK:
        key_mask_ptr += tl.program_id(2).to(tl.int64) * key_mask_stride_b
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_DIM_PAD)
    q = load_rows(q_ptr, q_stride_n, rows, N_Q, cols, HEAD_DIM)  # (BLOCK_M, Dh)

    # 2. Running statistics of the online softmax.
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)  # m
    row_sum = tl.zeros([BLOCK_M], tl.float32)  # l
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)

    # Causal: keys past the last row's diagonal are hidden from the whole tile, so stop there.
    key_end = N_K
    if CAUSAL:
        key_end = tl.minimum(N_K, (tl.program_id(0) + 1) * BLOCK_M)
    for start_n in range(0, key_end, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        k = load_rows(k_ptr, k_stride_n, keys, N_K, cols, HEAD_DIM)  # (BLOCK_N, Dh)
        v = load_rows(v_ptr, v_stride_n, keys, N_K, cols, HEAD_DIM)  # (BLOCK_N, Dh)

        # 3. Scores of this tile, masked to -inf where a query may not see a key.
        scores = matmul(q, tl.trans(k), DOT_IN_FLOAT32, DOT_PRECISION) * qk_scale_log2
        allowed = allowed_pairs(
            rows[:, None], keys[None, :], N_Q, N_K, key_mask_ptr, CAUSAL, HAS_KEY_MASK
        )
        scores = tl.where(allowed, scores, float("-inf"))  # (BLOCK_M, BLOCK_N)

        # 4. Running maximum. A row with no visible key so far keeps m = -inf; subtracting
        # 0 instead of -inf keeps its terms at exp2(-inf) = 0 instead of NaN.
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)

        # 5. Rescaling: bring the old sum and output to the new maximum, then add this tile.
        correction = tl.exp2(row_max - shift)
        p = tl.exp2(scores - shift[:, None])  # (BLOCK_M, BLOCK_N)
        row_sum = row_sum * correction + tl.sum(p, axis=1)
        pv = matmul(p.to(v.dtype), v, DOT_IN_FLOAT32, DOT_PRECISION)  # (BLOCK_M, Dh)
        acc = acc * correction[:, None] + pv
        row_max = new_max

    # 6. Normalise. A row that saw no key returns zeros and stores lse2 = +inf, which makes
    # every probability the backward pass recomputes for it exp2(s - inf) = 0.
    has_keys = row_sum > 0
    safe_sum = tl.where(has_keys, row_sum, 1.0)
    store_rows(o_ptr, o_stride_n, rows, N_Q, cols, HEAD_DIM, acc / safe_sum[:, None])
    lse2 = tl.where(has_keys, row_max + tl.log2(safe_sum), float("inf"))
    tl.store(lse_ptr + rows, lse2, mask=rows < N_Q)


_forward_tuned = autotuned(_forward_kernel, FORWARD_TILES)


def attention_forward(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    """Run the forward kernel; return the output (B, H, Nq, Dh) and lse2 (B, H, Nq), float32.

    `key_mask` is None or an int8 tensor (B, Nk), nonzero where a key may be attended to.
    Every tensor's last dimension must be contiguous.
    """
    B, H, Nq, Dh = q.shape
    Nk = k.shape[2]
    o = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, H, Nq, Dh)
    lse2 = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)

    def grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(Nq, meta["BLOCK_M"]), H, B)

    launch(
        _forward_kernel, _forward_tuned, grid,
        q, k, v, o, lse2, key_mask,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        key_mask.stride(0) if key_mask is not None else 0, scale * math.log2(math.e),
        Nq, Nk, Dh,
        HEAD_DIM_PAD=max(16, triton.next_power_of_2(Dh)),
        CAUSAL=causal,
        HAS_KEY_MASK=key_mask is not None,
        **dot_options(q.dtype == torch.float32),
    )  # fmt: skip
    return o, lse2
