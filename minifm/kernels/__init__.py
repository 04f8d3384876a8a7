"""Triton kernels: fused attention, forward and backward (FlashAttention-2).

`flash_attention(q, k, v, causal=..., mask=..., key_lengths=..., scale=...)` is what
`minifm.attention.attend(..., backend="triton")` calls. Importing this package imports triton,
so set `TRITON_INTERPRET=1` before importing it to run the kernels on the CPU.
"""

from minifm.kernels.flash_attention import FlashAttention, flash_attention, supports

__all__ = ["FlashAttention", "flash_attention", "supports"]
