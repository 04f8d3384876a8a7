"""The Triton attention kernels against the `math` backend: outputs, gradients, masks, errors.

Without a GPU these run on Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so the shapes stay small. Lengths such as 17, 100 and 130 leave a ragged last tile.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minifm.attention import attend, key_padding_mask
from minifm.datasets import load_digits
from minifm.kernels import flash_attention
from minifm.vit import ViT, ViTConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (atol, rtol) against `math` run in float32 on the same (rounded) inputs: every element must
# satisfy |ours - math| <= atol + rtol * |math|. In float32 the bound is purely absolute.
OUTPUT_TOLERANCE = {
    torch.float32: (1e-5, 0.0),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
GRADIENT_TOLERANCE = {
    torch.float32: (1e-4, 0.0),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_close(name, actual, expected, tolerance):
    """Assert |actual - expected| <= atol + rtol * |expected| everywhere."""
    atol, rtol = tolerance
    difference = (actual.float() - expected).abs()
    within = difference <= atol + rtol * expected.abs()
    error = difference.max().item() if difference.numel() else 0.0
    assert within.all(), f"{name}: max error {error:.2e}, tolerance atol={atol}, rtol={rtol}"


SHAPES = [  # (B, H, Nq, Nk)
    (1, 1, 1, 1),
    (2, 2, 17, 17),
    (1, 2, 100, 130),
    (2, 1, 130, 64),
    (1, 1, 64, 100),
]
HEAD_DIMS = [16, 32, 64, 128]


def make_inputs(B, H, Nq, Nk, Dh, dtype=torch.float32, seed=0):
    """Return q, k, v, and an upstream gradient for the output, all on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, Nq, Dh), (B, H, Nk, Dh), (B, H, Nk, Dh), (B, H, Nq, Dh)]
    q, k, v, grad = (torch.randn(shape, generator=g).to(DEVICE, dtype) for shape in shapes)
    return q, k, v, grad


def padding_lengths(B, Nk, seed=0):
    """Return valid key counts (B,): the first sample keeps every key, the others fewer."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, Nk + 1, (B,), generator=g)
    lengths[0] = Nk
    return lengths.to(DEVICE)


def run_with_gradients(backend, q, k, v, grad, **options):
    """Return the output and the gradients of q, k, v for one backend, computed from copies."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    if backend == "triton_lengths":
        out = flash_attention(q, k, v, **options)
    else:
        out = attend(q, k, v, backend=backend, **options)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out, dq, dk, dv


def assert_matches_math(q, k, v, grad, *, lengths=None, causal=False, backend="triton"):
    """Compare the triton backend's output and gradients with `math` in float32."""
    dtype = q.dtype
    Nk = k.shape[2]
    mask = None if lengths is None else key_padding_mask(lengths, Nk)
    options = {"causal": causal}
    if backend == "triton_lengths":
        options["key_lengths"] = lengths
    else:
        options["mask"] = mask
    ours = run_with_gradients(backend, q, k, v, grad, **options)
    inputs = (t.float() for t in (q, k, v, grad))
    reference = run_with_gradients("math", *inputs, causal=causal, mask=mask)

    for name, a, b in zip(("output", "dq", "dk", "dv"), ours, reference, strict=True):
        assert a.dtype == dtype, f"{name} has dtype {a.dtype}, expected {dtype}"
        assert torch.isfinite(a).all(), f"{name} is not finite"
        tolerance = OUTPUT_TOLERANCE[dtype] if name == "output" else GRADIENT_TOLERANCE[dtype]
        assert_close(name, a, b, tolerance)


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_math_over_shapes(shape, causal, padded):
    B, H, Nq, Nk = shape
    q, k, v, grad = make_inputs(B, H, Nq, Nk, Dh=32)
    lengths = padding_lengths(B, Nk) if padded else None
    assert_matches_math(q, k, v, grad, lengths=lengths, causal=causal)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_triton_matches_math_for_head_dim(head_dim, causal):
    q, k, v, grad = make_inputs(2, 2, 65, 47, head_dim)
    assert_matches_math(q, k, v, grad, lengths=padding_lengths(2, 47), causal=causal)


@pytest.mark.parametrize("head_dim", [1, 8, 24, 80])
def test_triton_pads_other_head_dims(head_dim):
    q, k, v, grad = make_inputs(1, 2, 40, 33, head_dim)
    assert_matches_math(q, k, v, grad, causal=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_triton_matches_math_in_half_precision(dtype, causal):
    q, k, v, grad = make_inputs(1, 2, 100, 70, 64, dtype=dtype)
    assert_matches_math(q, k, v, grad, lengths=padding_lengths(1, 70), causal=causal)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_key_lengths_match_key_padding_mask(causal):
    q, k, v, grad = make_inputs(3, 2, 50, 90, 32)
    lengths = torch.tensor([90, 41, 7], device=DEVICE)
    assert_matches_math(q, k, v, grad, lengths=lengths, causal=causal, backend="triton_lengths")


def test_arbitrary_key_mask_matches_math():
    q, k, v, grad = make_inputs(2, 2, 40, 70, 32)
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(2, 1, 1, 70, generator=g) > 0.5).to(DEVICE)  # gaps, not only a tail
    ours = run_with_gradients("triton", q, k, v, grad, mask=mask)
    reference = run_with_gradients("math", q, k, v, grad, mask=mask)
    assert_close("output", ours[0], reference[0], OUTPUT_TOLERANCE[torch.float32])
    for name, a, b in zip(("dq", "dk", "dv"), ours[1:], reference[1:], strict=True):
        assert_close(name, a, b, GRADIENT_TOLERANCE[torch.float32])


@pytest.mark.parametrize("mask_shape", [(70,), (1, 70), (1, 1, 1, 70), (2, 1, 1, 1)])
def test_broadcast_key_masks_are_accepted(mask_shape):
    q, k, v, _ = make_inputs(2, 2, 20, 70, 16)
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(mask_shape, generator=g) > 0.5
    mask.view(-1)[0] = False  # at least one key hidden and one visible
    mask.view(-1)[-1] = True
    mask = mask.to(DEVICE)
    ours = attend(q, k, v, mask=mask, backend="triton")
    reference = attend(q, k, v, mask=mask, backend="math")
    assert (ours - reference).abs().max().item() <= 1e-5


def test_custom_scale_matches_math():
    q, k, v, grad = make_inputs(1, 2, 30, 30, 32)
    ours = run_with_gradients("triton", q, k, v, grad, scale=0.37, causal=True)
    reference = run_with_gradients("math", q, k, v, grad, scale=0.37, causal=True)
    assert (ours[0] - reference[0]).abs().max().item() <= 1e-5
    assert (ours[1] - reference[1]).abs().max().item() <= 1e-4


def test_non_contiguous_inputs_match_contiguous():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 3, 3, 32, generator=g).to(DEVICE)  # (B, N, qkv, H, Dh)
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, Dh), strided
    assert not q.is_contiguous()
    strided = flash_attention(q, k, v, causal=True)
    contiguous = flash_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert torch.equal(strided, contiguous)


def test_fully_masked_rows_give_zeros_and_zero_gradients():
    q, k, v, grad = make_inputs(2, 2, 40, 40, 32)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    mask = key_padding_mask(torch.tensor([40, 0], device=DEVICE), 40)
    out = attend(q, k, v, mask=mask, backend="triton")
    out.backward(grad)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        assert torch.isfinite(tensor.grad).all(), f"d{name} is not finite"
        assert torch.equal(tensor.grad[1], torch.zeros_like(tensor.grad[1])), f"d{name}[1] != 0"
        assert tensor.grad[0].abs().sum() > 0, f"d{name}[0] is zero, the valid sample"


def test_causal_key_tiles_past_the_last_query_get_zero_gradients():
    # With Nq < Nk and top-left alignment, keys j >= Nq are seen by no query.
    q, k, v, grad = make_inputs(1, 2, 30, 70, 32)
    k, v = k.requires_grad_(), v.requires_grad_()
    out = attend(q, k, v, causal=True, backend="triton")
    out.backward(grad)
    assert torch.equal(k.grad[:, :, 30:], torch.zeros_like(k.grad[:, :, 30:]))
    assert torch.equal(v.grad[:, :, 30:], torch.zeros_like(v.grad[:, :, 30:]))
    assert v.grad[:, :, :30].abs().sum() > 0


@pytest.mark.parametrize("lengths", [(30, 70), (70, 30)], ids=["Nq<Nk", "Nq>Nk"])
def test_causal_alignment_matches_pytorch_is_causal(lengths):
    Nq, Nk = lengths
    q, k, v, _ = make_inputs(1, 2, Nq, Nk, 32)
    ours = attend(q, k, v, causal=True, backend="triton")
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close("output", ours, reference, OUTPUT_TOLERANCE[torch.float32])


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 2),
    Nq=st.integers(1, 150),
    Nk=st.integers(1, 150),
    head_dim=st.sampled_from([16, 32, 48, 64, 128]),
    causal=st.booleans(),
    padded=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_triton_matches_math_for_random_shapes(B, H, Nq, Nk, head_dim, causal, padded, seed):
    q, k, v, grad = make_inputs(B, H, Nq, Nk, head_dim, seed=seed)
    lengths = padding_lengths(B, Nk, seed) if padded else None
    assert_matches_math(q, k, v, grad, lengths=lengths, causal=causal)


@pytest.mark.parametrize(
    "mask_shape", [(20, 70), (2, 2, 1, 70), (2, 1, 20, 70), (1, 1, 1, 1, 70), (3, 1, 1, 70)]
)
def test_masks_other_than_key_padding_are_rejected(mask_shape):
    q, k, v, _ = make_inputs(2, 2, 20, 70, 16)
    mask = torch.ones(mask_shape, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="only key padding masks"):
        attend(q, k, v, mask=mask, backend="triton")


@pytest.mark.parametrize("head_dim", [129, 256])
def test_head_dim_above_128_is_rejected(head_dim):
    q, k, v, _ = make_inputs(1, 1, 4, 4, head_dim)
    with pytest.raises(ValueError, match=f"head dimension {head_dim} is not supported"):
        flash_attention(q, k, v)


def test_unsupported_dtypes_are_rejected():
    q, k, v, _ = make_inputs(1, 1, 4, 4, 16)
    with pytest.raises(TypeError, match="share one dtype"):
        flash_attention(q.double(), k.double(), v.double())
    with pytest.raises(TypeError, match="share one dtype"):
        flash_attention(q, k.half(), v)


def test_invalid_key_lengths_are_rejected():
    q, k, v, _ = make_inputs(2, 1, 4, 4, 16)
    with pytest.raises(ValueError, match="key_lengths must be an integer tensor of shape"):
        flash_attention(q, k, v, key_lengths=torch.tensor([4], device=DEVICE))
    with pytest.raises(ValueError, match="key_lengths must be an integer tensor of shape"):
        flash_attention(q, k, v, key_lengths=torch.tensor([4.0, 2.0], device=DEVICE))


def train_losses(backend, steps=3):
    """Train a small digits ViT for a few AdamW steps on 4 digits; return the loss per step."""
    torch.manual_seed(0)
    config = ViTConfig.digits(num_hidden_layers=2, num_attention_heads=2, attention_backend=backend)
    model = ViT(config).to(DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    digits = load_digits(image_size=16)
    images = digits.train_images[:4].to(DEVICE)  # (4, 1, 16, 16)
    labels = digits.train_labels[:4].to(DEVICE)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_vit_training_losses_match_math():
    triton_losses = train_losses("triton")
    math_losses = train_losses("math")
    assert triton_losses[-1] < triton_losses[0], "the loss did not decrease"
    for step, (ours, reference) in enumerate(zip(triton_losses, math_losses, strict=True)):
        assert abs(ours - reference) <= 1e-5, f"step {step}: loss {ours} != {reference}"
