"""Fused attention backward pass: recompute the probabilities tile by tile, never store them.

With S = scale * Q K^T, P = softmax(S) and O = P V, the gradients are (Dao 2023,
FlashAttention-2, arXiv:2307.08691, Algorithm 2):

    dV = P^T dO      dP = dO V^T      dS = P * (dP - delta)      dQ = scale * dS K
    dK = scale * dS^T Q,     where delta_i = sum_j P_ij dP_ij = rowsum(dO * O)_i

P is rebuilt from the scores and the log-sum-exp saved by the forward pass, in the base-2 units
of `minifm.kernels.forward`: P = exp2(S log2(e) - lse2). The work is split between two
kernels, so no two programs write the same output and no atomics are needed. The first keeps a
key tile resident and streams query tiles past it to build dK and dV. The second keeps a query
tile resident and streams key tiles past it to build dQ. The price is computing P twice.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from minifm.kernels.common import (
    BACKWARD_KV_TILES,
    BACKWARD_Q_TILES,
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
def _backward_kv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, key_mask_ptr,
    q_stride_b, q_stride_h, q_stride_n,
    k_stride_b, k_stride_h, k_stride_n,
    v_stride_b, v_stride_h, v_stride_n,
    do_stride_b, do_stride_h, do_stride_n,
    dkv_stride_b, dkv_stride_h, dkv_stride_n,
    key_mask_stride_b, scale, qk_scale_log2,
    N_Q, N_K, HEAD_DIM,
    HEAD_DIM_PAD: tl.constexpr, CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
    DOT_IN_FLOAT32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # 1. Tiling: this program owns BLOCK_N key rows of one (batch, head).
    q_ptr += head_offset(q_stride_b, q_stride_h)
    k_ptr += head_offset(k_stride_b, k_stride_h)
    v_ptr += head_offset(v_stride_b, v_stride_h)
    do_ptr += head_offset(do_stride_b, do_stride_h)
    dk_ptr += head_offset(dkv_stride_b, dkv_stride_h)
    dv_ptr += head_offset(dkv_stride_b, dkv_stride_h)
    lse_ptr += head_offset(tl.num_programs(1) * N_Q, N_Q)  # lse2 and delta are (B, H, Nq)
    delta_ptr += head_offset(tl.num_programs(1) * N_Q, N_Q)
    if HAS_KEY_MASK:
        key_mask_ptr += tl.program_id(2).to(tl.int64) * key_mask_stride_b
    keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, HEAD_DIM_PAD)
    k = load_rows(k_ptr, k_stride_n, keys, N_K, cols, HEAD_DIM)  # (BLOCK_N, Dh)
    v = load_rows(v_ptr, v_stride_n, keys, N_K, cols, HEAD_DIM)  # (BLOCK_N, Dh)
    dk = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)

    # Causal: queries before the first key's diagonal see none of this tile, so start after.
    query_start = 0
    if CAUSAL:
        query_start = tl.program_id(0) * BLOCK_N
    for start_m in range(query_start, N_Q, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q = load_rows(q_ptr, q_stride_n, rows, N_Q, cols, HEAD_DIM)  # (BLOCK_M, Dh)
        do = load_rows(do_ptr, do_stride_n, rows, N_Q, cols, HEAD_DIM)  # (BLOCK_M, Dh)
        lse2 = tl.load(lse_ptr + rows, mask=rows < N_Q, other=float("inf"))  # (BLOCK_M,)
        delta = tl.load(delta_ptr + rows, mask=rows < N_Q, other=0.0)  # (BLOCK_M,)

        # 2. Recompute P^T for this tile pair, transposed so that keys run along the rows.
        scores_t = matmul(k, tl.trans(q), DOT_IN_FLOAT32, DOT_PRECISION) * qk_scale_log2
        allowed_t = allowed_pairs(
            rows[None, :], keys[:, None], N_Q, N_K, key_mask_ptr, CAUSAL, HAS_KEY_MASK
        )
        p_t = tl.where(allowed_t, tl.exp2(scores_t - lse2[None, :]), 0.0)  # (BLOCK_N, BLOCK_M)

        # 3. dV += P^T dO, then dS^T = P^T * (dP^T - delta) and dK += dS^T Q.
        dv += matmul(p_t.to(do.dtype), do, DOT_IN_FLOAT32, DOT_PRECISION)
        dp_t = matmul(v, tl.trans(do), DOT_IN_FLOAT32, DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += matmul(ds_t.to(q.dtype), q, DOT_IN_FLOAT32, DOT_PRECISION)

    store_rows(dk_ptr, dkv_stride_n, keys, N_K, cols, HEAD_DIM, dk * scale)
    store_rows(dv_ptr, dkv_stride_n, keys, N_K, cols, HEAD_DIM, dv)


@triton.jit
def _backward_q_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, key_mask_ptr,
    q_stride_b, q_stride_h, q_stride_n,
    k_stride_b, k_stride_h, k_stride_n,
    v_stride_b, v_stride_h, v_stride_n,
    do_stride_b, do_stride_h, do_stride_n,
    dq_stride_b, dq_stride_h, dq_stride_n,
    key_mask_stride_b, scale, qk_scale_log2,
    N_Q, N_K, HEAD_DIM,
    HEAD_DIM_PAD: tl.constexpr, CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
    DOT_IN_FLOAT32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # 1. Tiling: this program owns BLOCK_M query rows of one (batch, head).
    q_ptr += head_offset(q_stride_b, q_stride_h)
    k_ptr += head_offset(k_stride_b, k_stride_h)
    v_ptr += head_offset(v_stride_b, v_stride_h)
    do_ptr += head_offset(do_stride_b, do_stride_h)
    dq_ptr += head_offset(dq_stride_b, dq_stride_h)
    lse_ptr += head_offset(tl.num_programs(1) * N_Q, N_Q)  # lse2 and delta are (B, H, Nq)
    delta_ptr += head_offset(tl.num_programs(1) * N_Q, N_Q)
    if HAS_KEY_MASK:
        key_mask_ptr += tl.program_id(2).to(tl.int64) * key_mask_stride_b
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_DIM_PAD)
    q = load_rows(q_ptr, q_stride_n, rows, N_Q, cols, HEAD_DIM)  # (BLOCK_M, Dh)
    do = load_rows(do_ptr, do_stride_n, rows, N_Q, cols, HEAD_DIM)  # (BLOCK_M, Dh)
    lse2 = tl.load(lse_ptr + rows, mask=rows < N_Q, other=float("inf"))  # (BLOCK_M,)
    delta = tl.load(delta_ptr + rows, mask=rows < N_Q, other=0.0)  # (BLOCK_M,)
    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)

    # Causal: keys past the last row's diagonal are hidden from the whole tile, so stop there.
    key_end = N_K
    if CAUSAL:
        key_end = tl.minimum(N_K, (tl.program_id(0) + 1) * BLOCK_M)
    for start_n in range(0, key_end, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        k = load_rows(k_ptr, k_stride_n, keys, N_K, cols, HEAD_DIM)  # (BLOCK_N, Dh)
        v = load_rows(v_ptr, v_stride_n, keys, N_K, cols, HEAD_DIM)  # (BLOCK_N, Dh)

        # 2. Recompute P for this tile pair from the saved log-sum-exp.
        scores = matmul(q, tl.trans(k), DOT_IN_FLOAT32, DOT_PRECISION) * qk_scale_log2
        allowed = allowed_pairs(
            rows[:, None], keys[None, :], N_Q, N_K, key_mask_ptr, CAUSAL, HAS_KEY_MASK
        )
        p = tl.where(allowed, tl.exp2(scores - lse2[:, None]), 0.0)  # (BLOCK_M, BLOCK_N)

        # 3. dS = P * (dP - delta) with dP = dO V^T, then dQ += dS K.
        dp = matmul(do, tl.trans(v), DOT_IN_FLOAT32, DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq += matmul(ds.to(k.dtype), k, DOT_IN_FLOAT32, DOT_PRECISION)

    store_rows(dq_ptr, dq_stride_n, rows, N_Q, cols, HEAD_DIM, dq * scale)


_backward_kv_tuned = autotuned(_backward_kv_kernel, BACKWARD_KV_TILES)
_backward_q_tuned = autotuned(_backward_q_kernel, BACKWARD_Q_TILES)


def attention_backward(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse2: Tensor,
    key_mask: Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the two backward kernels; return dQ, dK, dV with the shapes of q, k, v.

    `o` and `lse2` are the outputs of `attention_forward` for the same inputs. Every tensor's
    last dimension must be contiguous.
    """
    B, H, Nq, Dh = q.shape
    Nk = k.shape[2]
    delta = (do.float() * o.float()).sum(dim=-1)  # (B, H, Nq), rowsum(dO * O)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, H, Nq, Dh)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)  # (B, H, Nk, Dh)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)  # (B, H, Nk, Dh)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    key_mask_stride = key_mask.stride(0) if key_mask is not None else 0
    constants = {
        "HEAD_DIM_PAD": max(16, triton.next_power_of_2(Dh)),
        "CAUSAL": causal,
        "HAS_KEY_MASK": key_mask is not None,
        **dot_options(q.dtype == torch.float32),
    }

    def kv_grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(Nk, meta["BLOCK_N"]), H, B)

    def q_grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(Nq, meta["BLOCK_M"]), H, B)

    launch(
        _backward_kv_kernel, _backward_kv_tuned, kv_grid,
        q, k, v, do, lse2, delta, dk, dv, key_mask,
        *strides, *dk.stride()[:3],
        key_mask_stride, scale, scale * math.log2(math.e),
        Nq, Nk, Dh, **constants,
    )  # fmt: skip
    launch(
        _backward_q_kernel, _backward_q_tuned, q_grid,
        q, k, v, do, lse2, delta, dq, key_mask,
        *strides, *dq.stride()[:3],
        key_mask_stride, scale, scale * math.log2(math.e),
        Nq, Nk, Dh, **constants,
    )  # fmt: skip
    return dq, dk, dv
