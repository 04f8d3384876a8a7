import pytest
import torch
import torch.nn.functional as F

from minifm.attention import (
    MultiHeadAttention,
    attend,
    attention_weights,
    auto_backend,
    causal_mask,
    key_padding_mask,
)

TOLERANCE = 1e-5  # float32, math against PyTorch's fused kernel


def qkv(B=2, H=3, Nq=7, Nk=7, Dh=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, n, Dh, generator=g) for n in (Nq, Nk, Nk))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [(7, 7), (5, 9), (9, 5), (1, 13)])
def test_math_and_sdpa_agree(causal, lengths):
    q, k, v = qkv(Nq=lengths[0], Nk=lengths[1])
    math_out = attend(q, k, v, causal=causal, backend="math")
    sdpa_out = attend(q, k, v, causal=causal, backend="sdpa")
    torch.testing.assert_close(math_out, sdpa_out, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("lengths", [(4, 9), (9, 4)])
def test_causal_alignment_matches_pytorch_is_causal(lengths):
    q, k, v = qkv(Nq=lengths[0], Nk=lengths[1])
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ours = attend(q, k, v, causal=True, backend="math")
    torch.testing.assert_close(ours, reference, atol=TOLERANCE, rtol=0)
    mask = causal_mask(*lengths)
    assert mask[0].sum() == 1, "the first query sees only the first key"
    assert mask[3].sum() == 4


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_causal_with_padding_mask_combines_both(backend):
    q, k, v = qkv(Nq=6, Nk=6)
    padding = key_padding_mask(torch.tensor([6, 4]), 6)
    ours = attend(q, k, v, causal=True, mask=padding, backend=backend)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=padding & causal_mask(6, 6))
    torch.testing.assert_close(ours, reference, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_padding_mask_ignores_padded_keys(backend):
    q, k, v = qkv(Nk=6)
    mask = key_padding_mask(torch.tensor([6, 3]), 6)
    out = attend(q, k, v, mask=mask, backend=backend)
    truncated = attend(q[1:], k[1:, :, :3], v[1:, :, :3], backend="math")
    torch.testing.assert_close(out[1:], truncated, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_fully_masked_rows_give_zeros_and_zero_gradients(backend):
    q, k, v = (t.requires_grad_() for t in qkv(Nk=5))
    mask = key_padding_mask(torch.tensor([5, 0]), 5)
    out = attend(q, k, v, mask=mask, backend=backend)
    out.sum().backward()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for tensor in (q, k, v):
        assert torch.isfinite(tensor.grad).all()
        assert torch.equal(tensor.grad[1], torch.zeros_like(tensor.grad[1]))


def test_attention_weights_rows_sum_to_one():
    q, k, _ = qkv()
    weights = attention_weights(q, k, causal=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 7))
    assert torch.equal(weights[..., 0, 1:], torch.zeros(2, 3, 6))


def test_unknown_backend_is_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attend(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        MultiHeadAttention(8, 2, backend="cuda")


def test_non_boolean_mask_is_rejected():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="boolean"):
        attend(q, k, v, mask=torch.zeros(7, 7))


def test_mismatched_shapes_are_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="incompatible"):
        attend(q, k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="4-D"):
        attend(q[0], k[0], v[0])


def test_multi_head_attention_weights_match_across_backends():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    math_layer = MultiHeadAttention(16, 4, backend="math")
    sdpa_layer = MultiHeadAttention(16, 4, backend="sdpa")
    sdpa_layer.load_state_dict(math_layer.state_dict())
    math_out, math_weights = math_layer(x, return_attention=True)
    sdpa_out, sdpa_weights = sdpa_layer(x, return_attention=True)
    torch.testing.assert_close(math_out, sdpa_out, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(math_weights, sdpa_weights)
    assert math_weights.shape == (2, 4, 5, 5)


def test_cross_attention_uses_context_length():
    layer = MultiHeadAttention(16, 2, context_dim=8)
    out, weights = layer(torch.randn(2, 5, 16), torch.randn(2, 11, 8), return_attention=True)
    assert out.shape == (2, 5, 16)
    assert weights.shape == (2, 2, 5, 11)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_attention_dropout_is_unbiased(backend):
    q, k, v = qkv(B=1, H=1, Nq=4, Nk=6)
    expected = attend(q, k, v, backend=backend)
    copies = 4000  # dropout draws a fresh mask for every batch element
    q, k, v = (t.expand(copies, -1, -1, -1) for t in (q, k, v))
    torch.manual_seed(0)
    dropped = attend(q, k, v, dropout_p=0.5, backend=backend)
    assert not torch.allclose(dropped[0], expected[0], atol=1e-3)
    torch.testing.assert_close(dropped.mean(0, keepdim=True), expected, atol=0.05, rtol=0)


@pytest.mark.parametrize("dropout_p", [-0.1, 1.0, float("nan")])
def test_dropout_out_of_range_is_rejected(dropout_p):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="dropout_p=.* must lie in"):
        attend(q, k, v, dropout_p=dropout_p)


def test_triton_rejects_attention_dropout():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="triton backend has no attention dropout"):
        attend(q, k, v, dropout_p=0.1, backend="triton")


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attention = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(2, 5, 16)
    attention.eval()
    torch.testing.assert_close(attention(x), attention(x))
    attention.train()
    assert not torch.allclose(attention(x), attention(x))


@pytest.mark.parametrize(
    "head_dim, dtype, mask_shape, dropout_p, expected",
    [
        (64, torch.float16, None, 0.0, "triton"),
        (64, torch.float32, (2, 1, 1, 7), 0.0, "triton"),
        (256, torch.float16, None, 0.0, "sdpa"),
        (64, torch.float64, None, 0.0, "sdpa"),
        (64, torch.float16, (2, 1, 7, 7), 0.0, "sdpa"),
        (64, torch.float16, None, 0.1, "sdpa"),
    ],
)
def test_auto_backend_falls_back_to_sdpa(
    monkeypatch, head_dim, dtype, mask_shape, dropout_p, expected
):
    import minifm.attention as attention

    monkeypatch.setattr(attention, "resolve_backend", lambda backend, device: "triton")
    q, k, _ = (t.to(dtype) for t in qkv(B=2, Nq=7, Nk=7, Dh=head_dim))
    mask = None if mask_shape is None else torch.ones(mask_shape, dtype=torch.bool)
    assert attention.auto_backend(q, k, mask, dropout_p) == expected


def test_auto_runs_sdpa_off_cuda():
    q, k, _ = qkv()
    assert auto_backend(q, k, None, 0.0) == "sdpa"
