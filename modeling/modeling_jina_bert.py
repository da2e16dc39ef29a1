"""JinaBERT, the English text tower of jina-clip-v1 (Koukounas et al., 2024), in the transformers style.

A BERT-base encoder (Günther et al., 2023, "jina-embeddings-v2") with three changes:

- no position embeddings: ALiBi (Press et al., 2022) adds `-m_h * |i - j|` to the attention score of query
  i and key j in head h, so inputs far longer than the training length still work (the bias only keeps
  growing with the distance);
- a gated feed-forward unit: `down_proj(gelu(gate_proj(x)) * up_proj(x))` (the release fuses gate and up
  into one `gated_layers` matrix, gate rows first);
- post-LN blocks as BERT: `x = LN(x + attn(x)); x = LN(x + mlp(x))`.

Attention goes through the transformers attention interface (`config._attn_implementation`). ALiBi is an
additive float bias (ALiBi + padding mask in one tensor), which eager and SDPA both take; FlashAttention
would need the kernel's own `alibi_slopes` argument, which transformers' flash integration does not pass,
so flash and flex backends are refused with an explanation instead of silently dropping the bias.

This file is Hub remote code: flat, relative imports only, nothing of this repository.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_jina_bert import JinaBertConfig

# Backends that take an additive float mask holding a different bias per head.
ALIBI_ATTENTION_BACKENDS = ("eager", "sdpa")
UNSUPPORTED_BACKEND = (
    "JinaBERT (the jina-clip-v1 text tower) adds ALiBi biases to the attention scores, which needs an "
    "attention backend that takes a per-head additive float mask: use attn_implementation='sdpa' (default) "
    "or 'eager'. FlashAttention could compute ALiBi itself (flash-attn's `alibi_slopes` argument), but "
    "transformers' FlashAttention integration does not pass slopes, and flex attention reads one head of a "
    "float mask; got attn_implementation={!r}."
)


def alibi_slopes(num_heads: int) -> list[float]:
    """The per-head slopes m_h of ALiBi (Press et al., 2022, section 3), as Python floats (exact doubles).

    For n heads, a power of two: the geometric sequence starting at 2^(-8/n) with ratio 2^(-8/n)
    (8 heads: 1/2, 1/4, ..., 1/256). Otherwise: the slopes of the largest power of two below n, followed by
    every other slope of the next power of two (the paper's reference code), e.g. 12 heads: the 8 slopes
    2^-1 .. 2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def alibi_attention_bias(
    position_ids: torch.Tensor,
    num_heads: int,
    attention_mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The additive attention bias `(batch, heads, seq, seq)`: ALiBi `-m_h * |p_i - p_j|` plus the mask.

    Args:
        position_ids: `(batch or 1, seq)` token positions. The distance is taken between positions, not
            indices, so a packed row (several texts one after the other, positions restarting at 0 for each)
            gets each text's own distances; pairs across texts are masked out by `attention_mask`.
        attention_mask: `(batch, seq)` with 1 for real tokens (keys that may be attended to); or a 4D mask
            `(batch, 1 or heads, seq, seq)`: boolean (True = attend) or additive float (0 / large negative).
        dtype: dtype of the result: the query dtype for SDPA (which needs it), float32 for eager attention
            (which adds it to float32 scores). The bias is computed in float32 first.
    """
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float32, device=position_ids.device)
    positions = position_ids.to(torch.float32)
    distance = (positions[:, None, :] - positions[:, :, None]).abs()  # (b, query, key)
    bias = -slopes[None, :, None, None] * distance[:, None]  # (b, heads, query, key)
    lowest = torch.finfo(dtype).min
    if attention_mask is not None:
        if attention_mask.dim() == 2:
            bias = torch.where(attention_mask.bool()[:, None, None, :], bias, lowest)
        elif attention_mask.dim() == 4 and attention_mask.dtype == torch.bool:
            bias = torch.where(attention_mask, bias, lowest)
        elif attention_mask.dim() == 4:
            bias = (bias + attention_mask.to(torch.float32)).clamp(min=lowest)
        else:
            raise ValueError(
                f"attention_mask must be (batch, seq) or (batch, heads, seq, seq); got shape {tuple(attention_mask.shape)}"
            )
    return bias.to(dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    # Scores and bias are added in float32: ALiBi biases reach -m * distance (thousands at 8k tokens),
    # where a bf16 sum would round the small differences between nearby keys away.
    attn_weights = torch.matmul(query, key.transpose(2, 3)).float() * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask.float()
    attn_weights = F.softmax(attn_weights, dim=-1).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class JinaBertEmbeddings(nn.Module):
    """Word + token-type embeddings, LayerNorm, dropout. No position embeddings (ALiBi)."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if token_type_ids is None:  # the release passes input_ids only: every token is of type 0
            token_type_ids = torch.zeros(embeddings.shape[:-1], dtype=torch.long, device=embeddings.device)
        embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class JinaBertAttention(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        # The release fuses these as one `mixer.Wqkv` (rows [Q; K; V]); separate projections keep the
        # transformers names (and PEFT targets) of the other text tower.
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, attention_bias: torch.Tensor, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        implementation = self.config._attn_implementation or "eager"
        if implementation not in ALIBI_ATTENTION_BACKENDS:
            raise ValueError(UNSUPPORTED_BACKEND.format(implementation))
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_bias,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class JinaBertMLP(nn.Module):
    """Gated linear unit (Shazeer, 2020, "GLU variants"): down_proj(act(gate_proj(x)) * up_proj(x)).
    The gate goes through the activation; swapping gate and up changes everything."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gated = self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states)
        return self.down_proj(self.dropout(gated))


class JinaBertLayer(GradientCheckpointingLayer):
    """Post-LN block: LN(x + attn(x)), then LN(x + mlp(x))."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.self_attn = JinaBertAttention(config)
        self.post_attention_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = JinaBertMLP(config)
        self.post_mlp_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.post_mlp_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, attention_bias: torch.Tensor, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention, weights = self.self_attn(hidden_states, attention_bias, **kwargs)
        hidden_states = self.post_attention_layernorm(hidden_states + self.post_attention_dropout(attention))
        mlp = self.mlp(hidden_states)
        hidden_states = self.post_mlp_layernorm(hidden_states + self.post_mlp_dropout(mlp))
        return hidden_states, weights


class JinaBertPreTrainedModel(PreTrainedModel):
    config_class = JinaBertConfig
    base_model_prefix = "jina_bert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # ALiBi needs flash-attn's alibi_slopes (not passed by transformers) or a per-head float mask.
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["JinaBertLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # Called by transformers only for parameters a checkpoint did not fill (torch.nn.init is guarded).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class JinaBertModel(JinaBertPreTrainedModel):
    """JinaBERT encoder: returns every token's last hidden state (pooling is the caller's; jina-clip-v1
    takes the masked mean). No pooler layer, as the release."""

    def __init__(self, config: JinaBertConfig):
        super().__init__(config)
        self.embeddings = JinaBertEmbeddings(config)
        self.layers = nn.ModuleList([JinaBertLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """
        Args:
            input_ids: `(batch, seq)` token ids (or `inputs_embeds`).
            attention_mask: `(batch, seq)` 1 for real tokens, 0 for padding; or a 4D boolean / additive mask
                (e.g. block-diagonal for several texts packed into one row).
            position_ids: `(batch or 1, seq)` positions for the ALiBi distances; default 0..seq-1. For packed
                rows, positions restarting at 0 for each text.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        implementation = self.config._attn_implementation or "eager"
        if implementation not in ALIBI_ATTENTION_BACKENDS:
            raise ValueError(UNSUPPORTED_BACKEND.format(implementation))
        hidden_states = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)
        seq = hidden_states.shape[1]
        if position_ids is None:
            position_ids = torch.arange(seq, device=hidden_states.device)[None]
        # One bias for all layers; SDPA takes a float mask only in the query dtype.
        bias_dtype = hidden_states.dtype if implementation == "sdpa" else torch.float32
        attention_bias = alibi_attention_bias(
            position_ids, self.config.num_attention_heads, attention_mask, dtype=bias_dtype
        )
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        all_hidden = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, attention_bias, **kwargs)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            if all_attentions is not None:
                all_attentions.append(weights)
        return BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attentions) if all_attentions is not None else None,
        )


__all__ = [
    "JinaBertModel",
    "JinaBertPreTrainedModel",
    "alibi_attention_bias",
    "alibi_slopes",
]
