"""Configuration of JinaBERT, the text tower of jina-clip-v1 (Koukounas et al., 2024; Günther et al., 2023).

A BERT-base encoder without position embeddings: ALiBi biases the attention scores instead (Press et al.,
2022), the feed-forward block is a GELU-gated linear unit, the blocks are post-LN. transformers has no
native class for it, so this file (and `modeling_jina_bert.py`) provide one in the transformers style.

This file is Hub remote code: it imports only transformers and nothing of this repository. The defaults
are those of the released jina-clip-v1 text tower (jinaai/jina-bert-flash-implementation's config:
137M parameters; see docs/jina-clip-v1-release.md).
"""

from __future__ import annotations

from transformers import PreTrainedConfig


class JinaBertConfig(PreTrainedConfig):
    r"""JinaBERT text tower.

    Args:
        vocab_size: rows of the word embedding (release: 30528, the 30522-token BERT WordPiece vocabulary
            padded to a multiple of 8).
        hidden_size: width of the encoder (768).
        num_hidden_layers: number of post-LN blocks (12).
        num_attention_heads: attention heads (12); each has its own ALiBi slope.
        intermediate_size: width of the gated feed-forward unit (3072; its input projection holds twice as
            many rows: the gate and the value halves).
        hidden_act: activation of the gate ("gelu", the exact erf GELU).
        hidden_dropout_prob: dropout after the embeddings, the attention output and the feed-forward unit.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        type_vocab_size: token-type rows (2, BERT's; the release always uses type 0).
        initializer_range: std of the normal init of fresh weights.
        layer_norm_eps: epsilon of every LayerNorm (1e-12, BERT's).
        pad_token_id: id of [PAD] (0); padded positions are masked out of attention and pooling.
        max_position_embeddings: the longest input the model is documented for (8192, as the release's model
            card). There is no position table: ALiBi extrapolates past it; this only sets tokenizer defaults.
    """

    model_type = "jina_bert"
    base_config_key = "text_config"

    def __init__(
        self,
        vocab_size: int = 30528,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        max_position_embeddings: int = 8192,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.pad_token_id = pad_token_id
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)
        self.validate_shapes()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_shapes(self) -> None:
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"text hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.type_vocab_size < 1:
            raise ValueError(f"text type_vocab_size must be >= 1, got {self.type_vocab_size}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"text pad_token_id ({self.pad_token_id}) is outside the vocabulary ({self.vocab_size})")


__all__ = ["JinaBertConfig"]
