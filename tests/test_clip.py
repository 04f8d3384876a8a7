import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel

from minifm.clip import (
    CLIP,
    CLIPConfig,
    CLIPTextConfig,
    ZeroShotClassifier,
    clip_loss,
    retrieve,
)
from minifm.datasets import SceneConfig, generate_scenes
from minifm.hf import from_transformers
from minifm.tokenizer import BPETokenizer
from minifm.training import TrainConfig, fit
from minifm.vit import ViTConfig

TOLERANCE = 1e-5  # float32, eval mode, depth 2

VOCAB, CONTEXT = 64, 12
# Three configurations: both end-of-text rules, both activations, unequal tower widths.
CONFIGS = {
    "legacy_eos_quick_gelu": dict(eos=2, act="quick_gelu", text_width=32, vision_width=32),
    "first_eos_gelu": dict(eos=VOCAB - 1, act="gelu", text_width=32, vision_width=48),
    "eos_inside_vocab_wide_text": dict(eos=5, act="gelu", text_width=48, vision_width=32),
}


def hf_clip(eos, act, text_width, vision_width, logit_scale=3.1):
    text = dict(
        vocab_size=VOCAB,
        hidden_size=text_width,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=CONTEXT,
        hidden_act=act,
        layer_norm_eps=1e-6,
        eos_token_id=eos,
        bos_token_id=1,
        pad_token_id=0,
    )
    vision = dict(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=vision_width,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act=act,
        layer_norm_eps=1e-5,
    )
    config = HFCLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=24,
        logit_scale_init_value=logit_scale,
    )
    torch.manual_seed(0)
    return CLIPModel(config).eval()


def test_clip_temperature_above_clamp():
    # exp(5) = 148, above minifm's clamp of 100
    reference = hf_clip(**CONFIGS["eos_inside_vocab_wide_text"], logit_scale=5.0)
    ours = from_transformers(reference)
    ids, mask = padded_ids(CONFIGS["eos_inside_vocab_wide_text"]["eos"])
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values=images, attention_mask=mask)
        torch.testing.assert_close(
            ours(images, ids, mask), expected.logits_per_image, atol=1e-4, rtol=0
        )


def padded_ids(eos, lengths=(12, 7, 4)):
    """Rows of `[1, tokens..., eos]` followed by padding 0; the legacy rule needs eos on top."""
    generator = torch.Generator().manual_seed(2)
    top = VOCAB - 1 if eos == 2 else VOCAB - 2
    ids = torch.zeros(len(lengths), CONTEXT, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        body = torch.randint(6, top, (length - 2,), generator=generator)
        ids[row, :length] = torch.cat([torch.tensor([1]), body, torch.tensor([eos])])
        mask[row, :length] = 1
    if eos == 2:
        ids[ids == 2] = VOCAB - 1  # the legacy rule pools at the highest id
    return ids, mask


@pytest.mark.parametrize("name", CONFIGS)
def test_features_and_logits_match_transformers(name):
    reference = hf_clip(**CONFIGS[name])
    ours = from_transformers(reference)
    ids, mask = padded_ids(CONFIGS[name]["eos"])
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values=images, attention_mask=mask)
        image_features = reference.get_image_features(pixel_values=images).pooler_output
        text_features = reference.get_text_features(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(
            ours.encode_image(images), image_features, atol=TOLERANCE, rtol=0
        )
        torch.testing.assert_close(
            ours.encode_text(ids, mask), text_features.pooler_output, atol=TOLERANCE, rtol=0
        )
        torch.testing.assert_close(
            ours(images, ids, mask), expected.logits_per_image, atol=TOLERANCE, rtol=0
        )


def test_contrastive_loss_matches_transformers():
    reference = hf_clip(**CONFIGS["first_eos_gelu"])
    ours = from_transformers(reference)
    ids, mask = padded_ids(VOCAB - 1)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(
            input_ids=ids, pixel_values=images, attention_mask=mask, return_loss=True
        )
        torch.testing.assert_close(
            ours.loss(images, ids, mask), expected.loss, atol=TOLERANCE, rtol=0
        )


def test_converter_reads_the_config_fields():
    reference = hf_clip(**CONFIGS["eos_inside_vocab_wide_text"])
    config = from_transformers(reference).config
    assert config.projection_dim == 24
    assert config.logit_scale_init_value == pytest.approx(3.1)
    assert config.text_config.eos_token_id == 5
    assert config.text_config.hidden_size == 48
    assert config.text_config.layer_norm_eps == 1e-6
    assert config.vision_config.hidden_size == 32
    assert config.vision_config.image_size == 16


def test_converter_rejects_an_unknown_activation():
    reference = hf_clip(**CONFIGS["first_eos_gelu"])
    reference.config.text_config.hidden_act = "mish_v2"
    with pytest.raises(ValueError, match="hidden_act"):
        from_transformers(reference)


def tiny_clip(eos_token_id=VOCAB - 1, vocab_size=VOCAB):
    text = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=CONTEXT,
        eos_token_id=eos_token_id,
    )
    vision = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    return CLIP(CLIPConfig(text, vision, projection_dim=8)).eval()


def test_encode_text_ignores_tokens_after_end():
    model = tiny_clip()
    ids, mask = padded_ids(VOCAB - 1)
    changed = ids.clone()
    changed[mask == 0] = 7  # causal attention and end-token pooling ignore what follows
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(changed), model.encode_text(ids, mask))


def test_eos_rules_pool_at_different_positions():
    ids = torch.tensor([[1, 9, 5, 60, 0], [1, 5, 61, 5, 0]])
    assert tiny_clip(eos_token_id=5).text.eos_positions(ids).tolist() == [2, 1]
    assert tiny_clip(eos_token_id=2).text.eos_positions(ids).tolist() == [3, 2]


def test_text_without_an_end_token_is_rejected():
    with pytest.raises(ValueError, match="no end-of-text token"):
        tiny_clip().encode_text(torch.tensor([[1, 8, 9]]))


def test_token_ids_outside_the_vocabulary_are_rejected():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_clip().encode_text(torch.tensor([[1, VOCAB, VOCAB - 1]]))


def test_text_longer_than_the_context_length_is_rejected():
    ids = torch.full((1, CONTEXT + 1), 7)
    ids[0, -1] = VOCAB - 1
    with pytest.raises(ValueError, match="context length"):
        tiny_clip().encode_text(ids)


@pytest.mark.parametrize("shape", [(2, 3, 24, 24), (2, 1, 16, 16), (3, 16, 16)])
def test_images_of_the_wrong_shape_are_rejected(shape):
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        tiny_clip().encode_image(torch.rand(shape))


def test_other_image_sizes_work_with_interpolated_positions():
    features = tiny_clip().encode_image(torch.rand(2, 3, 24, 24), interpolate_pos_encoding=True)
    assert features.shape == (2, 8)


def test_loss_rejects_mismatched_batch_sizes():
    with pytest.raises(ValueError, match="image_embeds and text_embeds"):
        clip_loss(torch.randn(4, 8), torch.randn(3, 8), 10.0)


def test_clip_loss_separates_matched_and_shuffled():
    embeds = torch.nn.functional.normalize(torch.randn(16, 32), dim=-1)
    matched = clip_loss(embeds, embeds, 50.0)
    shuffled = clip_loss(embeds, embeds.roll(1, dims=0), 50.0)
    assert matched < 0.01 < math.log(16) < shuffled


def test_logit_scale_clamped_at_maximum():
    model = tiny_clip()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(200.0))
    scale = model.exp_logit_scale()
    assert scale.item() == pytest.approx(100.0)
    scale.backward()
    assert model.logit_scale.grad.item() == 0.0


def test_lock_text_tower_freezes_only_text():
    model = tiny_clip().train().lock_text_tower()
    text_before = {k: v.clone() for k, v in model.text.state_dict().items()}
    vision_before = model.vision.vit.pos_embed.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids, mask = padded_ids(VOCAB - 1)
    model.loss(torch.rand(3, 3, 16, 16), ids, mask).backward()
    optimizer.step()
    for key, value in model.text.state_dict().items():
        assert torch.equal(value, text_before[key]), key
    assert not torch.equal(model.vision.vit.pos_embed, vision_before)
    assert model.text_projection.weight.grad is not None


def test_zero_shot_single_template_matches_forward():
    names = ["red", "blue", "green"]
    corpus = [f"a {n} shape" for n in names] * 3
    tokenizer = BPETokenizer.train(corpus, vocab_size=560, context_length=CONTEXT)
    model = tiny_clip(tokenizer.eos_token_id, tokenizer.vocab_size)
    classifier = ZeroShotClassifier(model, tokenizer, names, ["a {} shape"])
    images = torch.rand(4, 3, 16, 16)
    batch = tokenizer([f"a {n} shape" for n in names], padding="longest")
    with torch.no_grad():
        expected = model(images, batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(classifier(images), expected)
    assert torch.equal(classifier.predict(images), expected.argmax(dim=1))


def test_zero_shot_ensemble_ignores_template_order():
    templates = ["a {}", "a photo of a {}", "{} again"]
    corpus = ["a photo of a x again", "a photo of a y again"] * 3
    tokenizer = BPETokenizer.train(corpus, vocab_size=560, context_length=CONTEXT)
    model = tiny_clip(tokenizer.eos_token_id, tokenizer.vocab_size)
    forward = ZeroShotClassifier(model, tokenizer, ["x", "y"], templates)
    backward = ZeroShotClassifier(model, tokenizer, ["x", "y"], templates[::-1])
    torch.testing.assert_close(forward.class_embeddings, backward.class_embeddings)
    norms = forward.class_embeddings.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(2))
    with pytest.raises(ValueError, match="exactly once"):
        ZeroShotClassifier(model, tokenizer, ["x"], ["no placeholder"])


def test_retrieve_finds_exact_matches():
    gallery = torch.randn(10, 8)
    queries = gallery[[3, 7]] * 2.0  # scaled copies: cosine similarity 1
    scores, indices = retrieve(queries, gallery, k=3)
    assert indices[:, 0].tolist() == [3, 7]
    torch.testing.assert_close(scores[:, 0], torch.ones(2))
    assert (scores[:, 0] >= scores[:, 1]).all()
    with pytest.raises(ValueError, match="gallery size"):
        retrieve(queries, gallery, k=11)


def test_tiny_clip_learns_colour_names():
    config = SceneConfig(max_shapes=1, held_out=(), colours=("red", "green", "blue"))
    scenes = generate_scenes(512, config, seed=0)
    tokenizer = BPETokenizer.train(scenes.captions, vocab_size=600, context_length=24)
    batch = tokenizer(scenes.captions, padding="longest")
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.scenes(tokenizer.vocab_size, tokenizer.eos_token_id, 24))
    classifier = lambda m: ZeroShotClassifier(m, tokenizer, config.colours, ["a {} shape"])  # noqa: E731
    test = generate_scenes(128, config, seed=1)
    before = (classifier(model).predict(test.images) == test.colours[:, 0]).float().mean()
    fit(
        model,
        lambda m, b: m.loss(*b),
        (scenes.images, batch.input_ids, batch.attention_mask),
        TrainConfig(steps=30, batch_size=64, lr=2e-3, warmup_steps=3, progress=False),
    )
    after = (classifier(model).predict(test.images) == test.colours[:, 0]).float().mean()
    assert before < 0.6
    assert after > 0.9


def test_load_cached_clip_from_folder_matches_transformers(tmp_path):
    from transformers import AutoTokenizer, CLIPImageProcessor

    from minifm.hf.bert import minilm_folder
    from minifm.hf.clip import load_cached_clip

    config = HFCLIPConfig(
        text_config=dict(
            vocab_size=30522,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            eos_token_id=102,
        ),
        vision_config=dict(
            image_size=16,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    reference = CLIPModel(config).eval()
    reference.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(tmp_path)  # [SEP] is id 102
    CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    ).save_pretrained(tmp_path)

    model, tokenizer, preprocess = load_cached_clip(str(tmp_path))
    pixel_values = preprocess(torch.rand(2, 3, 40, 30))
    batch = tokenizer(["a cat", "a red dog on a mat"], padding="longest")
    with torch.no_grad():
        expected = reference(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=pixel_values,
        ).logits_per_image
        logits = model(pixel_values, batch.input_ids, batch.attention_mask)
    assert pixel_values.shape == (2, 3, 16, 16)
    torch.testing.assert_close(logits, expected, atol=TOLERANCE, rtol=0)


def test_load_cached_clip_returns_none_when_absent():
    from minifm.hf.clip import load_cached_clip

    assert load_cached_clip("minifm-tests/no-such-checkpoint") is None


def test_clip_init_keeps_captions_apart():
    from minifm.clip import CLIPTextTransformer
    from minifm.nn import init_weights

    captions = ["a red circle", "a red square", "a blue triangle", "a green cross"]
    tokenizer = BPETokenizer.train(captions * 3, vocab_size=560, context_length=CONTEXT)
    config = CLIPConfig.scenes(tokenizer.vocab_size, tokenizer.eos_token_id, CONTEXT).text_config
    batch = tokenizer(captions, padding="longest")
    off_diagonal = ~torch.eye(len(captions), dtype=torch.bool)

    def mean_similarity(tower):
        with torch.no_grad():
            features = F.normalize(tower.encode(batch.input_ids, batch.attention_mask), dim=-1)
        return (features @ features.T)[off_diagonal].mean()

    torch.manual_seed(0)
    tower = CLIPTextTransformer(config)
    assert mean_similarity(tower) < 0.8
    init_weights(tower)  # a flat std of 0.02 everywhere
    assert mean_similarity(tower) > 0.9
