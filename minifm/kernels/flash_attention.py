"""`flash_attention`: the fused forward and backward kernels behind one autograd function.

Supported inputs, checked at the call:

- q (B, H, Nq, Dh) and k, v (B, H, Nk, Dh), any lengths, Nq and Nk may differ.
- Head dimensions 1 to 128. The kernels pad Dh to a power of two (at least 16) with zeros,
  so 16, 32, 64 and 128 run without padding.
- float32, float16 or bfloat16 (all three the same), accumulated in float32. On a GPU,
  float32 products run in full IEEE precision, not TF32.
- Causal attention aligned as `scaled_dot_product_attention(is_causal=True)` and
  `minifm.attention.causal_mask`: query i attends to keys j <= i (top-left), also when
  Nq != Nk. `torch.nn.attention.bias.causal_lower_right` is the other, bottom-right convention.
- Key padding only: a boolean mask that depends on the batch and key index alone, or
  per-sample valid key counts. A query row with no key to attend to returns zeros and gets zero
  gradients.
- CUDA tensors, or CPU tensors when Triton runs on its interpreter (`TRITON_INTERPRET=1` set
  before triton is imported), which is slow and meant for tests.

NOTE: the kernels have been checked only under the interpreter so far. Their correctness and
speed on a GPU have not been measured yet (see `benchmarks/attention.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from minifm.attention import key_padding_mask
from minifm.kernels.backward import attention_backward
from minifm.kernels.common import is_interpreting
from minifm.kernels.forward import attention_forward

MAX_HEAD_DIM = 128
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class FlashAttention(torch.autograd.Function):
    """Autograd function over `attention_forward` and `attention_backward`.

    Saves q, k, v, the output and the per-row log-sum-exp: memory linear in the sequence length.
    """

    @staticmethod
    def forward(ctx, q, k, v, key_mask, causal, scale):
        o, lse2 = attention_forward(q, k, v, key_mask, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse2, key_mask)
        ctx.causal = causal
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse2, key_mask = ctx.saved_tensors
        do = _contiguous_last_dim(do)
        dq, dk, dv = attention_backward(do, q, k, v, o, lse2, key_mask, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None, None


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    key_lengths: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Attend q (B, H, Nq, Dh) to k, v (B, H, Nk, Dh) with the fused kernels; return (B, H, Nq, Dh).

    `mask` is a boolean key padding mask broadcastable as (B, 1, 1, Nk), True where a key may
    be attended to. `key_lengths` (B,) integer marks keys 0 .. length - 1 of each sample valid.
    With both, a key must be valid in both. `scale` defaults to Dh ** -0.5.
    """
    _check_inputs(q, k, v)
    B, H, Nq, Dh = q.shape
    Nk = k.shape[2]
    key_mask = _key_mask(mask, key_lengths, B, Nk, q.device)
    scale = Dh**-0.5 if scale is None else float(scale)
    q, k, v = (_contiguous_last_dim(x) for x in (q, k, v))
    return FlashAttention.apply(q, k, v, key_mask, causal, scale)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be 4-D (B, H, N, Dh); got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"incompatible q, k, v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}; "
            "expected q (B, H, Nq, Dh) and k, v (B, H, Nk, Dh)"
        )
    head_dim = q.shape[3]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"head dimension {head_dim} is not supported by the triton backend; "
            f"expected 1 to {MAX_HEAD_DIM}"
        )
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"q, k, v must share one dtype among {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not (q.device.type == "cpu" and is_interpreting()):
        raise ValueError(
            f"the triton backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
            f"before triton is imported; got tensors on {q.device}"
        )


def _key_mask(
    mask: Tensor | None, key_lengths: Tensor | None, batch: int, n_keys: int, device: torch.device
) -> Tensor | None:
    """Merge a key padding mask and key lengths into one int8 (B, Nk) tensor, or None."""
    valid = None
    if mask is not None:
        valid = _key_mask_from_mask(mask, batch, n_keys, device)
    if key_lengths is not None:
        if key_lengths.shape != (batch,) or key_lengths.is_floating_point():
            raise ValueError(
                f"key_lengths must be an integer tensor of shape ({batch},); got dtype "
                f"{key_lengths.dtype} and shape {tuple(key_lengths.shape)}"
            )
        if key_lengths.device != device:
            raise ValueError(f"key_lengths is on {key_lengths.device}, expected {device}")
        from_lengths = key_padding_mask(key_lengths, n_keys).view(batch, n_keys)  # (B, Nk)
        valid = from_lengths if valid is None else valid & from_lengths
    return None if valid is None else valid.to(torch.int8).contiguous()


def is_key_padding_mask(mask: Tensor, batch: int, n_keys: int) -> bool:
    """Return whether `mask` depends on the batch and key index alone, as (B, 1, 1, Nk) does."""
    shape = (1,) * (4 - mask.ndim) + tuple(mask.shape)
    return (
        mask.ndim <= 4
        and shape[0] in (1, batch)
        and shape[1] == 1
        and shape[2] == 1
        and shape[3] in (1, n_keys)
    )


def supports(q: Tensor, k: Tensor, mask: Tensor | None = None) -> bool:
    """Return whether `flash_attention` supports the head size, dtype and mask of a call."""
    head_dim_ok = 1 <= q.shape[-1] <= MAX_HEAD_DIM
    mask_ok = mask is None or is_key_padding_mask(mask, q.shape[0], k.shape[-2])
    return head_dim_ok and q.dtype in DTYPES and mask_ok


def _key_mask_from_mask(mask: Tensor, batch: int, n_keys: int, device: torch.device) -> Tensor:
    """Reduce a boolean mask broadcastable as (B, 1, 1, Nk) to shape (B, Nk)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor (True = attend); got dtype {mask.dtype}")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device}, expected {device}")
    shape = (1,) * (4 - mask.ndim) + tuple(mask.shape)
    if not is_key_padding_mask(mask, batch, n_keys):
        raise ValueError(
            f"the triton backend supports only key padding masks, broadcastable as "
            f"(B, 1, 1, Nk) = ({batch}, 1, 1, {n_keys}); got mask of shape {tuple(mask.shape)}. "
            "Use causal=True for causal masking, or the math or sdpa backend for other masks."
        )
    return mask.reshape(shape[0], shape[3]).expand(batch, n_keys)  # (B, Nk)


def _contiguous_last_dim(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()
