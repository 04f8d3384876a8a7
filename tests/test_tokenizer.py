from collections import Counter

import pytest
import torch

from minifm.tokenizer import BPETokenizer, learn_merges, split_words, validate_input_ids

CORPUS = [
    "a small red circle on the left",
    "there is a large blue square",
    "a green triangle above a red circle",
    "a yellow cross below a small blue square",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(CORPUS, vocab_size=600, context_length=16)


def test_merges_follow_pair_frequencies():
    # Counts: (p, u) 5 + 12 = 17, (u, n</w>) 12 + 4 = 16, (h, u) 10 + 5 = 15. Merging p + u
    # first leaves (u, n</w>) only in "bun", so (h, u) is next.
    counts = Counter({"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5})
    assert learn_merges(counts, num_merges=2) == [("p", "u"), ("h", "u")]


def test_equally_frequent_pairs_merge_in_lexicographic_order():
    assert learn_merges(Counter({"cd": 2, "ab": 2}), num_merges=1) == [("a", "b</w>")]


def test_training_stops_when_no_pair_repeats():
    assert learn_merges(Counter({"ab": 1}), num_merges=10) == []


def test_frequent_corpus_words_become_single_tokens(tokenizer):
    for word in ("circle", "square", "triangle", "there"):
        assert tokenizer.tokenize(word) == [word + "</w>"]


def test_bpe_round_trips_unseen_words(tokenizer):
    text = "A Crimson disc, café — naïve!"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == " ".join(split_words(text))
    assert len(ids) > len(split_words(text))  # unseen words fall back to smaller pieces


def test_call_adds_start_and_end_tokens_and_pads(tokenizer):
    batch = tokenizer(["a red circle", "there is a large blue square on the left"])
    assert batch.input_ids.shape == (2, 16)
    lengths = batch.attention_mask.sum(dim=1)
    for row, length in zip(batch.input_ids, lengths.tolist(), strict=True):
        assert row[0] == tokenizer.bos_token_id
        assert row[length - 1] == tokenizer.eos_token_id
        assert (row[length:] == tokenizer.pad_token_id).all()
    assert torch.equal(batch.input_ids[0, 1:4], torch.tensor(tokenizer.encode("a red circle")))


def test_longest_padding_stops_at_the_longest_row(tokenizer):
    batch = tokenizer(["a red circle", "a blue square on the left"], padding="longest")
    assert batch.input_ids.shape[1] == batch.attention_mask.sum(dim=1).max()


def test_end_token_is_highest_and_first(tokenizer):
    batch = tokenizer(CORPUS[:4] + ["zzz qqq"])
    first_end = (batch.input_ids == tokenizer.eos_token_id).int().argmax(dim=1)
    assert torch.equal(batch.input_ids.argmax(dim=1), first_end)


def test_text_longer_than_the_context_raises_unless_truncated(tokenizer):
    long_text = "a red circle " * 10
    with pytest.raises(ValueError, match="truncation=True"):
        tokenizer([long_text])
    batch = tokenizer([long_text], truncation=True)
    assert batch.attention_mask.sum() == 16
    assert batch.input_ids[0, -1] == tokenizer.eos_token_id


def test_save_and_load_give_the_same_encoding(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(tmp_path / "bpe.json")
    assert loaded.vocab == tokenizer.vocab
    assert loaded.context_length == tokenizer.context_length
    texts = ["a small red circle", "an unseen phrase"]
    assert torch.equal(loaded(texts).input_ids, tokenizer(texts).input_ids)


def test_vocab_size_below_the_fixed_tokens_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(CORPUS, vocab_size=100)


def test_unknown_padding_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="padding"):
        tokenizer(["a red circle"], padding="right")


def test_validate_input_ids_rejects_bad_ids():
    ids = torch.tensor([[1, 2, 3]])
    validate_input_ids(ids, torch.ones_like(ids), vocab_size=4, max_length=3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        validate_input_ids(ids, None, vocab_size=3, max_length=3)
    with pytest.raises(ValueError, match="context length"):
        validate_input_ids(ids, None, vocab_size=4, max_length=2)
    with pytest.raises(TypeError, match="integer"):
        validate_input_ids(ids.float(), None, vocab_size=4, max_length=3)
    with pytest.raises(ValueError, match="attention_mask"):
        validate_input_ids(ids, torch.ones(1, 2), vocab_size=4, max_length=3)
