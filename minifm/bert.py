"""BERT as a text encoder (Devlin et al. 2019), and sentence embeddings by mean pooling.

    h_0 = LN(E_token + E_position + E_segment)                     (Sec. 3, Fig. 2)
    h_l = LN(u + MLP(u)),  u = LN(h_{l-1} + MSA(h_{l-1}))           (post-norm blocks)

Attention is bidirectional. `attention_mask` only hides padding keys from every query.
`SentenceEncoder` averages the final hidden states over the real tokens and normalises the
mean to unit length. That is the sentence embedding of sentence-transformers models such as
all-MiniLM-L6-v2 (Reimers and Gurevych 2019). It is also the interface CLIP expects of a text
tower (`hidden_size`, `encode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minifm.nn import TransformerBlock, check_transformer_config, init_weights
from minifm.tokenizer import validate_input_ids


@dataclass
class BertConfig:
    """Architecture of a BERT encoder. Field names follow transformers' `BertConfig`."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    add_pooling_layer: bool = True
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        check_transformer_config(self)

    @classmethod
    def minilm_l6(cls, **overrides) -> BertConfig:
        """all-MiniLM-L6-v2: width 384, 6 layers, 12 heads, the 30,522-token uncased vocabulary."""
        preset = dict(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
        )
        return cls(**{**preset, **overrides})


class Bert(nn.Module):
    """Token, position and segment embeddings, post-norm bidirectional blocks, optional pooler."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, D)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, D)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, D)
        self.embedding_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                D,
                config.num_attention_heads,
                config.intermediate_size,
                layer_norm_eps=config.layer_norm_eps,
                act=config.hidden_act,
                norm_first=False,
                attention_backend=config.attention_backend,
            )
            for _ in range(config.num_hidden_layers)
        )
        self.pooler = nn.Linear(D, D) if config.add_pooling_layer else None
        init_weights(self)
        for embedding in (
            self.word_embeddings,
            self.position_embeddings,
            self.token_type_embeddings,
        ):
            nn.init.normal_(embedding.weight, std=0.02)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Sum the three embeddings of token ids (B, N) and normalise them: (B, N, D)."""
        N = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:N]
        x = x + self.token_type_embeddings(token_type_ids)  # (B, N, D)
        return self.embedding_norm(x)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Map token ids (B, N) to the last hidden state (B, N, D).

        `attention_mask` (B, N) marks real tokens with 1 and padding with 0.
        """
        validate_input_ids(
            input_ids, attention_mask, self.config.vocab_size, self.config.max_position_embeddings
        )
        x = self.embed(input_ids, token_type_ids)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask=mask)  # (B, N, D)
        return x

    def pool(self, hidden: Tensor) -> Tensor:
        """BERT's pooler output (B, D): tanh of a linear map of the first token's state."""
        if self.pooler is None:
            raise ValueError("this Bert has no pooler; build it with add_pooling_layer=True")
        return torch.tanh(self.pooler(hidden[:, 0]))


def mean_pool(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Average hidden states (B, N, D) over the real tokens of each row: (B, D)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype)[..., None]  # (B, N, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """A BERT whose mean-pooled (and, by default, unit-length) output embeds each sentence."""

    def __init__(self, bert: Bert, normalize: bool = True) -> None:
        super().__init__()
        self.bert = bert
        self.normalize = normalize

    @property
    def hidden_size(self) -> int:
        return self.bert.hidden_size

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Map token ids (B, N) to sentence embeddings (B, D)."""
        pooled = mean_pool(self.bert(input_ids, attention_mask), attention_mask)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.encode(input_ids, attention_mask)
