"""Test-wide settings: offline Hugging Face, Triton's interpreter where no GPU exists."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    # Must be set before triton is first imported: kernels then run on the CPU interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")
