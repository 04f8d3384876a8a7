import pytest
import torch

from minifm.bert import BertConfig
from minifm.clip import CLIPTextConfig
from minifm.nn import (
    PatchEmbedding,
    TransformerBlock,
    interpolate_position_embedding,
    patchify_unfold,
    sincos_2d_position_embedding,
)
from minifm.vit import ViTConfig


@pytest.mark.parametrize("patch_size", [2, 4, (2, 4)])
def test_patch_convolution_equals_unfold_and_linear(patch_size):
    torch.manual_seed(0)
    embed = PatchEmbedding(patch_size, in_channels=3, dim=8)
    images = torch.randn(2, 3, 8, 12)
    patches = patchify_unfold(images, patch_size)  # (B, N, C*P*P)
    projection = embed.projection
    by_linear = patches @ projection.weight.flatten(1).T + projection.bias
    torch.testing.assert_close(embed(images), by_linear, atol=1e-5, rtol=0)


def test_patch_size_must_divide_image_size():
    embed = PatchEmbedding(4, in_channels=3, dim=8)
    with pytest.raises(ValueError, match=r"image size \(10, 12\) is not divisible by patch size"):
        embed(torch.randn(1, 3, 10, 12))


def test_wrong_channel_count_is_rejected():
    embed = PatchEmbedding(4, in_channels=3, dim=8)
    with pytest.raises(ValueError, match=r"shape \(batch, 3, height, width\); got \(1, 1, 8, 8\)"):
        embed(torch.randn(1, 1, 8, 8))


def test_sincos_embedding_matches_transformers_mae():
    from transformers.models.vit_mae.modeling_vit_mae import (
        build_2d_sinusoidal_position_embedding,
    )

    ours = sincos_2d_position_embedding((5, 5), 16, cls_token=True)[0]
    rows_first = build_2d_sinusoidal_position_embedding(5, 5, 16, cls_token=True)
    columns_first = torch.cat([rows_first[:, 8:], rows_first[:, :8]], dim=1)  # MAE's layout
    torch.testing.assert_close(ours, columns_first, atol=1e-6, rtol=0)


def test_sincos_embedding_separates_rows_and_columns():
    embedding = sincos_2d_position_embedding((3, 4), 8)[0]  # (12, 8)
    same_column = embedding[[0, 4, 8], :4]  # column half, rows 0..2 of column 0
    assert torch.allclose(same_column[0], same_column[1])
    assert not torch.allclose(embedding[0, 4:], embedding[4, 4:])


def test_interpolation_keeps_cls_and_is_identity_on_same_grid():
    position = torch.randn(1, 1 + 16, 8)
    assert interpolate_position_embedding(position, (4, 4), (4, 4)) is position
    resized = interpolate_position_embedding(position, (4, 4), (6, 3))
    assert resized.shape == (1, 1 + 18, 8)
    assert torch.equal(resized[:, 0], position[:, 0])


def test_post_norm_block_follows_bert_order():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, 32, norm_first=False, attention_backend="math")
    x = torch.randn(2, 5, 16)
    h = block.norm1(x + block.attn(x))
    expected = block.norm2(h + block.mlp(h))
    torch.testing.assert_close(block(x), expected)


def test_pre_norm_block_follows_vit_order():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, 32, attention_backend="math")
    x = torch.randn(2, 5, 16)
    h = x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        TransformerBlock(16, 2, 32, act="swish2")


@pytest.mark.parametrize("config_class", [ViTConfig, CLIPTextConfig, BertConfig])
def test_configs_reject_indivisible_width(config_class):
    with pytest.raises(ValueError, match="hidden_size=64 must be divisible by num_attention_heads"):
        config_class(hidden_size=64, num_attention_heads=5)


@pytest.mark.parametrize("config_class", [ViTConfig, CLIPTextConfig, BertConfig])
def test_configs_reject_unknown_activation(config_class):
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        config_class(hidden_act="swish2")
