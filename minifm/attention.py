"""Scaled dot-product attention with interchangeable backends, and multi-head attention.

    attend(q, k, v) = softmax(q k^T * scale + mask) v        (Vaswani et al. 2017, eq. 1)

Every backend takes `q` of shape (B, H, Nq, Dh) and `k`, `v` of shape (B, H, Nk, Dh):

- `"math"`: the explicit softmax, written out as the notebooks teach it. The reference.
- `"sdpa"`: `torch.nn.functional.scaled_dot_product_attention`, PyTorch's fused kernels.
- `"triton"`: minifm's own fused kernel (`minifm.kernels`), forward and backward.

`mask` is boolean and broadcastable to (B, H, Nq, Nk); True marks the keys a query may attend
to. With `causal=True`, query i attends to keys j <= i, the top-left alignment of
`scaled_dot_product_attention(is_causal=True)`, also when Nq != Nk. A query row with no key to
attend to returns zeros, in every backend, instead of NaN. `dropout_p` zeroes attention
probabilities at random during training (math and sdpa only).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("auto", "math", "sdpa", "triton")


def causal_mask(n_queries: int, n_keys: int, device: torch.device | None = None) -> Tensor:
    """Return the (Nq, Nk) boolean mask of keys each query may see: key j <= query i."""
    rows = torch.arange(n_queries, device=device)[:, None]
    cols = torch.arange(n_keys, device=device)[None, :]
    return cols <= rows


def key_padding_mask(lengths: Tensor, n_keys: int) -> Tensor:
    """Turn per-sample valid key counts (B,) into a boolean mask of shape (B, 1, 1, Nk)."""
    keys = torch.arange(n_keys, device=lengths.device)
    return (keys[None, :] < lengths[:, None])[:, None, None, :]


def combined_mask(q: Tensor, k: Tensor, causal: bool, mask: Tensor | None) -> Tensor | None:
    """Merge the causal rule and a user mask into one boolean mask, or None if neither applies."""
    if causal:
        allowed = causal_mask(q.shape[-2], k.shape[-2], q.device)
        mask = allowed if mask is None else mask & allowed
    return mask


def attention_weights(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Return the attention probabilities softmax(q k^T * scale), shape (B, H, Nq, Nk).

    Rows with no allowed key are all zeros. This is the matrix the notebooks picture.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)
    mask = combined_mask(q, k, causal, mask)
    if mask is None:
        return scores.softmax(dim=-1)
    scores = scores.masked_fill(~mask, float("-inf"))
    any_key = mask.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~any_key, 0.0)  # keeps softmax finite on empty rows
    return scores.softmax(dim=-1) * any_key


def _math(q, k, v, causal, mask, scale, dropout_p):
    weights = attention_weights(q, k, causal=causal, mask=mask, scale=scale)  # (B, H, Nq, Nk)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


def _sdpa(q, k, v, causal, mask, scale, dropout_p):
    if mask is None:  # no explicit mask, so PyTorch may pick its flash or memory-efficient kernel
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, dropout_p=dropout_p
        )
    mask = combined_mask(q, k, causal, mask)
    # PyTorch returns NaN for a row with no allowed key: open such rows, then zero them.
    any_key = mask.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask | ~any_key, scale=scale, dropout_p=dropout_p
    )
    return out * any_key


def _triton(q, k, v, causal, mask, scale, dropout_p):
    if dropout_p:
        raise ValueError(
            f"the triton backend has no attention dropout; got dropout_p={dropout_p}, "
            "expected 0 (use backend 'math' or 'sdpa' to train with attention dropout)"
        )
    from minifm.kernels import flash_attention

    return flash_attention(q, k, v, causal=causal, mask=mask, scale=scale)


_IMPLEMENTATIONS: dict[str, Callable[..., Tensor]] = {
    "math": _math,
    "sdpa": _sdpa,
    "triton": _triton,
}


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map `"auto"` to a concrete backend: `"triton"` on CUDA devices, `"sdpa"` elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "sdpa"
    return backend


def auto_backend(q: Tensor, k: Tensor, mask: Tensor | None, dropout_p: float) -> str:
    """Return the backend that `"auto"` runs: triton on CUDA if its kernel supports the call."""
    if resolve_backend("auto", q.device) != "triton" or dropout_p:
        return "sdpa"
    from minifm.kernels import supports

    return "triton" if supports(q, k, mask) else "sdpa"


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> Tensor:
    """Attend queries (B, H, Nq, Dh) to keys and values (B, H, Nk, Dh); return (B, H, Nq, Dh).

    `dropout_p` applies whenever it is nonzero; modules pass 0 in eval mode. `backend="auto"`
    picks triton on CUDA and falls back to sdpa for what the kernel lacks: attention dropout,
    head dimensions above 128, float64, masks other than key padding.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be 4-D (batch, heads, tokens, head_dim); got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"incompatible q, k, v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}; "
            "expected q (B, H, Nq, Dh) and k, v (B, H, Nk, Dh)"
        )
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor (True = attend); got dtype {mask.dtype}")
    if not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p={dropout_p} must lie in [0, 1)")
    resolve_backend(backend, q.device)  # validate the name
    if backend == "auto":
        backend = auto_backend(q, k, mask, dropout_p)
    return _IMPLEMENTATIONS[backend](q, k, v, causal, mask, scale, dropout_p)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query, key, value and output projections.

    Self-attention when `context` is None, cross-attention to `context` otherwise.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        context_dim: int | None = None,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        resolve_backend(backend, torch.device("cpu"))  # validate the name early
        context_dim = dim if context_dim is None else context_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.backend = backend
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.v = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        return x.view(B, N, self.num_heads, D // self.num_heads).transpose(1, 2)  # (B, H, N, Dh)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        causal: bool = False,
        mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Map x (B, N, D) to (B, N, D); with `return_attention`, also the (B, H, N, Nk) weights."""
        B, N, D = x.shape
        context = x if context is None else context
        q = self.split_heads(self.q(x))  # (B, H, N, Dh)
        k = self.split_heads(self.k(context))  # (B, H, Nk, Dh)
        v = self.split_heads(self.v(context))  # (B, H, Nk, Dh)

        dropout_p = self.dropout if self.training else 0.0
        out = attend(
            q, k, v, causal=causal, mask=mask, dropout_p=dropout_p, backend=self.backend
        )  # (B, H, N, Dh)
        out = self.out(out.transpose(1, 2).reshape(B, N, D))  # (B, N, D)

        if not return_attention:
            return out
        with torch.no_grad():
            weights = attention_weights(q, k, causal=causal, mask=mask)  # (B, H, N, Nk)
        return out, weights


def set_attention_backend(module: nn.Module, backend: str) -> nn.Module:
    """Switch every `MultiHeadAttention` inside `module` to `backend`; return `module`."""
    resolve_backend(backend, torch.device("cpu"))
    for layer in module.modules():
        if isinstance(layer, MultiHeadAttention):
            layer.backend = backend
    return module
