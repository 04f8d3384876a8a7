"""A byte-pair-encoding tokenizer trained from scratch (Sennrich et al. 2016), as CLIP uses one.

Text is lowercased and split into words and punctuation runs. Each word becomes its UTF-8 bytes
(written as the latin-1 characters with those byte values) and its last byte carries the
end-of-word mark `</w>`, as in CLIP. Training repeatedly merges the most frequent adjacent pair
of symbols in the corpus. Encoding replays the merges in the order they were learned. The 512
byte symbols (with and without `</w>`) are always in the vocabulary, so any text can be encoded
and no unknown token is needed.

Vocabulary layout: `<pad>` is id 0, then the byte symbols, then the merged symbols, and the
start and end tokens are the last two ids. With that layout the end token is both the highest id
in every sequence and its first `eos_token_id`, so either CLIP pooling rule finds it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor

END_OF_WORD = "</w>"
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<|startoftext|>", "<|endoftext|>"
BYTE_SYMBOLS = [chr(b) for b in range(256)] + [chr(b) + END_OF_WORD for b in range(256)]
WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")
PADDINGS = ("max_length", "longest")


@dataclass
class TokenBatch:
    """Padded token ids and the mask of real tokens, both (B, N) int64. The mask is 0 at padding."""

    input_ids: Tensor
    attention_mask: Tensor

    def __len__(self) -> int:
        return len(self.input_ids)


def validate_input_ids(
    input_ids: Tensor, attention_mask: Tensor | None, vocab_size: int, max_length: int
) -> None:
    """Raise if token ids (B, N) are not integers, exceed `max_length` or leave the vocabulary."""
    if input_ids.ndim != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(
            f"input_ids must be an integer tensor of shape (batch, tokens); got dtype "
            f"{input_ids.dtype} and shape {tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] > max_length:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} tokens, more than the context length "
            f"{max_length}; tokenize with truncation=True or a shorter max_length"
        )
    outside = (input_ids < 0) | (input_ids >= vocab_size)
    if outside.any():
        raise ValueError(
            f"token id {input_ids[outside][0].item()} is outside the vocabulary "
            f"[0, {vocab_size}); the tokenizer and the model disagree on the vocabulary"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected the shape of "
            f"input_ids {tuple(input_ids.shape)}"
        )


def split_words(text: str) -> list[str]:
    """Lowercase `text` and split it into words and punctuation runs."""
    return WORD_PATTERN.findall(text.lower())


def word_symbols(word: str) -> tuple[str, ...]:
    """Spell a word as byte symbols, the last one marked with `</w>`."""
    symbols = [chr(b) for b in word.encode("utf-8")]
    symbols[-1] += END_OF_WORD
    return tuple(symbols)


def merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every adjacent occurrence of `pair` in `symbols` with the merged symbol."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def learn_merges(word_counts: Counter, num_merges: int) -> list[tuple[str, str]]:
    """Learn up to `num_merges` merges from word frequencies (Sennrich et al. 2016, Algorithm 1).

    Ties between equally frequent pairs go to the lexicographically smallest pair, so training
    is deterministic. Training stops early when no pair occurs twice.
    """
    words = {word_symbols(word): count for word, count in word_counts.items()}
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for symbols, count in words.items():
            for pair in pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        merges.append(best)
        words = {merge_pair(symbols, best): count for symbols, count in words.items()}
    return merges


class BPETokenizer:
    """Byte-level BPE with CLIP's start and end tokens, padding, truncation and save / load."""

    def __init__(self, merges: Sequence[tuple[str, str]], context_length: int = 32) -> None:
        if context_length < 2:
            raise ValueError(
                f"context_length must be at least 2 (start and end); got {context_length}"
            )
        self.merges = [tuple(pair) for pair in merges]
        self.context_length = context_length
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        merged = [a + b for a, b in self.merges]
        self.vocab = [PAD_TOKEN, *BYTE_SYMBOLS, *merged, BOS_TOKEN, EOS_TOKEN]
        self.token_to_id = {token: i for i, token in enumerate(self.vocab)}
        self.cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def train(
        cls, corpus: Iterable[str], vocab_size: int, context_length: int = 32
    ) -> BPETokenizer:
        """Learn merges from `corpus` until the vocabulary has `vocab_size` tokens (or fewer)."""
        fixed = 1 + len(BYTE_SYMBOLS) + 2
        if vocab_size <= fixed:
            raise ValueError(
                f"vocab_size must exceed the {fixed} fixed tokens (pad, 512 bytes, start, end); "
                f"got {vocab_size}"
            )
        counts = Counter(word for text in corpus for word in split_words(text))
        return cls(learn_merges(counts, vocab_size - fixed), context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_token_id(self) -> int:
        return 0

    @property
    def bos_token_id(self) -> int:
        return self.vocab_size - 2

    @property
    def eos_token_id(self) -> int:
        return self.vocab_size - 1

    def bpe(self, word: str) -> tuple[str, ...]:
        """Apply the learned merges to one word, lowest rank first."""
        if word in self.cache:
            return self.cache[word]
        symbols = word_symbols(word)
        while len(symbols) > 1:
            pairs = [p for p in pairwise(symbols) if p in self.ranks]
            if not pairs:
                break
            symbols = merge_pair(symbols, min(pairs, key=self.ranks.__getitem__))
        self.cache[word] = symbols
        return symbols

    def tokenize(self, text: str) -> list[str]:
        """Split `text` into BPE tokens, without start or end tokens."""
        return [token for word in split_words(text) for token in self.bpe(word)]

    def encode(self, text: str) -> list[int]:
        """Map `text` to token ids, without start or end tokens."""
        return [self.token_to_id[token] for token in self.tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Map token ids back to text; pad, start and end tokens are dropped."""
        special = {self.pad_token_id, self.bos_token_id, self.eos_token_id}
        pieces = "".join(self.vocab[i] for i in map(int, ids) if i not in special)
        words = pieces.split(END_OF_WORD)
        return " ".join(w.encode("latin-1").decode("utf-8", errors="replace") for w in words if w)

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        padding: str = "max_length",
        truncation: bool = False,
    ) -> TokenBatch:
        """Encode texts as `<|startoftext|> tokens <|endoftext|>`, padded with `<pad>`.

        `max_length` defaults to `context_length`. A text longer than that raises ValueError,
        unless `truncation` is set, which cuts it and keeps the end token. `padding="max_length"`
        pads every row to `max_length`, `padding="longest"` to the longest row of the batch.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        max_length = self.context_length if max_length is None else max_length
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}; got {padding!r}")
        rows = [
            self.encode_with_special_tokens(t, i, max_length, truncation)
            for i, t in enumerate(texts)
        ]
        width = max_length if padding == "max_length" else max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        return TokenBatch(input_ids, attention_mask)

    def encode_with_special_tokens(
        self, text: str, index: int, max_length: int, truncation: bool
    ) -> list[int]:
        """Encode one text with start and end tokens, cut to `max_length` if `truncation`."""
        ids = [self.bos_token_id, *self.encode(text), self.eos_token_id]
        if len(ids) <= max_length:
            return ids
        if not truncation:
            raise ValueError(
                f"text {index} ({text[:40]!r}...) is {len(ids)} tokens long with start and end "
                f"tokens, more than max_length={max_length}; pass truncation=True to cut it"
            )
        return [*ids[: max_length - 1], self.eos_token_id]

    def save(self, path: str | os.PathLike) -> None:
        """Write the merges and the context length to a JSON file."""
        payload = {"context_length": self.context_length, "merges": [list(p) for p in self.merges]}
        Path(path).write_text(json.dumps(payload, ensure_ascii=True, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a tokenizer that `save` wrote."""
        payload = json.loads(Path(path).read_text())
        return cls([tuple(pair) for pair in payload["merges"]], payload["context_length"])

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"context_length={self.context_length})"
        )
