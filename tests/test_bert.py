import pytest
import torch
from transformers import BertConfig as HFBertConfig
from transformers import BertModel

from minifm.bert import Bert, BertConfig, SentenceEncoder, mean_pool
from minifm.hf import from_transformers
from minifm.hf.bert import load_minilm, minilm_folder

TOLERANCE = 1e-5  # float32, eval mode; MiniLM has 6 layers

SENTENCES = [
    "a small red circle on the left",
    "there is a large crimson disc in the middle of a dark picture",
    "hi",
]


@pytest.fixture(scope="module")
def minilm():
    folder = minilm_folder()
    reference = BertModel.from_pretrained(folder).eval()
    encoder, tokenizer = load_minilm(context_length=32)
    return reference, encoder, tokenizer


def test_minilm_hidden_states_and_pooler_match_transformers(minilm):
    reference, encoder, tokenizer = minilm
    batch = tokenizer(SENTENCES, padding="longest")
    with torch.no_grad():
        expected = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        hidden = encoder.bert(batch.input_ids, batch.attention_mask)
        pooled = encoder.bert.pool(hidden)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(
        hidden[real], expected.last_hidden_state[real], atol=TOLERANCE, rtol=0
    )
    # Outputs at padding positions are ill-conditioned: transformers' own eager and sdpa
    # attention differ there by about 1.2e-5, so they get a looser bound.
    torch.testing.assert_close(
        hidden[~real], expected.last_hidden_state[~real], atol=10 * TOLERANCE, rtol=0
    )
    torch.testing.assert_close(pooled, expected.pooler_output, atol=TOLERANCE, rtol=0)


def test_minilm_sentence_embedding_matches_mean_pooled_transformers(minilm):
    reference, encoder, tokenizer = minilm
    batch = tokenizer(SENTENCES, padding="longest")
    with torch.no_grad():
        hidden = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        mask = batch.attention_mask[..., None].float()
        expected = (hidden.last_hidden_state * mask).sum(1) / mask.sum(1)
        expected = torch.nn.functional.normalize(expected, dim=-1)
        ours = encoder.encode(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)


def test_minilm_sentence_embedding_matches_sentence_transformers(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    _, encoder, tokenizer = minilm
    model = sentence_transformers.SentenceTransformer(str(minilm_folder()), device="cpu")
    expected = model.encode(SENTENCES, convert_to_tensor=True)
    batch = tokenizer(SENTENCES, padding="longest")
    with torch.no_grad():
        ours = encoder.encode(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)


def test_padding_does_not_change_the_sentence_embedding(minilm):
    _, encoder, tokenizer = minilm
    short = tokenizer(SENTENCES[:1], padding="longest")
    padded = tokenizer(SENTENCES[:1], padding="max_length")
    assert padded.input_ids.shape[1] > short.input_ids.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(
            encoder.encode(padded.input_ids, padded.attention_mask),
            encoder.encode(short.input_ids, short.attention_mask),
            atol=TOLERANCE,
            rtol=0,
        )


def small_hf_config(**overrides):
    fields = dict(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=20,
        type_vocab_size=3,
    )
    return HFBertConfig(**{**fields, **overrides})


@pytest.mark.parametrize(
    "overrides, pooling",
    [({}, True), ({"hidden_act": "gelu_new", "layer_norm_eps": 1e-6}, False)],
)
def test_small_bert_matches_transformers_with_segments_and_padding(overrides, pooling):
    torch.manual_seed(0)
    reference = BertModel(small_hf_config(**overrides), add_pooling_layer=pooling).eval()
    ours = from_transformers(reference)
    assert (ours.pooler is not None) == pooling
    ids = torch.randint(0, 60, (3, 12))
    segments = torch.randint(0, 3, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, token_type_ids=segments)
        hidden = ours(ids, mask, segments)
    torch.testing.assert_close(hidden, expected.last_hidden_state, atol=TOLERANCE, rtol=0)
    if pooling:
        torch.testing.assert_close(
            ours.pool(hidden), expected.pooler_output, atol=TOLERANCE, rtol=0
        )


def test_converter_rejects_relative_position_embeddings():
    config = small_hf_config()
    config.position_embedding_type = "relative_key"
    reference = BertModel(small_hf_config())
    reference.config = config
    with pytest.raises(ValueError, match="position_embedding_type"):
        from_transformers(reference)


def test_mean_pool_averages_only_real_tokens():
    hidden = torch.arange(12.0).view(1, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0]])
    assert torch.equal(mean_pool(hidden, mask), hidden[:, :2].mean(dim=1))


def test_bert_rejects_bad_token_ids():
    bert = Bert(
        BertConfig(
            vocab_size=10,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=6,
        )
    )
    encoder = SentenceEncoder(bert)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encoder.encode(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="context length"):
        encoder.encode(torch.ones(1, 7, dtype=torch.long))


def test_wordpiece_tokenizer_rejects_long_text_unless_truncated(minilm):
    _, _, tokenizer = minilm
    long_text = "a red circle " * 20
    with pytest.raises(ValueError, match="truncation=True"):
        tokenizer([long_text])
    batch = tokenizer([long_text], truncation=True)
    assert batch.input_ids.shape == (1, 32)
    assert batch.input_ids[0, -1] == tokenizer.tokenizer.sep_token_id
