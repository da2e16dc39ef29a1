"""jina-clip-v2 (Koukounas et al., 2024): a multilingual text tower and an EVA02 vision tower embedding
into one 1024-d space, with Matryoshka truncation; and its predecessor jina-clip-v1 (English JinaBERT text
tower, EVA02-B/16 at 224 px, 768-d), served by the same class (the config's text tower type decides).

- Text tower: v2: transformers' own `JinaEmbeddingsV3Model` (XLM-R geometry, RoPE base 20000, post-LN);
  v1: `JinaBertModel` (modeling_jina_bert.py: ALiBi, gated MLP, post-LN). Both with masked mean pooling
  over every non-pad token (special tokens included) and no projection, as released.
- Vision tower: EVA02-L/14 (Fang et al., 2023) written here with the release's parameter names:
  2D RoPE on patch tokens, q/v biases only, sub-LN inside attention and SwiGLU, CLS output.
- One `attn_implementation` (eager / sdpa / flash_attention_2) drives both towers through the
  transformers attention interface.

This file is Hub remote code: flat, relative imports only, nothing of this repository.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
try:
    from transformers import AttentionInterface, AttentionMaskInterface, AutoProcessor, JinaEmbeddingsV3Model, PreTrainedModel
except ImportError as err:  # transformers < 5.4: name the version to install
    from .configuration_jina_clip import transformers_version_error

    raise transformers_version_error() from err
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_jina_bert import JinaBertConfig
from .configuration_jina_clip import JinaCLIPConfig, JinaCLIPVisionConfig
from .modeling_jina_bert import JinaBertModel

logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------


@dataclass
class JinaCLIPOutput(ModelOutput):
    """Output of `JinaCLIPModel.forward`.

    Args:
        loss: symmetric contrastive (InfoNCE) loss, when `return_loss=True`.
        logits_per_image: `(n_images, n_texts)` scaled cosine similarities.
        logits_per_text: `(n_texts, n_images)`, the transpose.
        text_embeds / image_embeds: L2-normalised embeddings.
        text_model_output / vision_model_output: the towers' outputs (hidden states and pooled vectors).
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if k not in ("text_model_output", "vision_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


# ----------------------------------------------------------------------------------------------------
# Vision tower: EVA02
# ----------------------------------------------------------------------------------------------------


def vision_rotary_cos_sin(config: JinaCLIPVisionConfig, grid_h: int, grid_w: int, device=None):
    """cos/sin tables of EVA02's 2D RoPE for a `grid_h` x `grid_w` patch grid, shape (grid_h*grid_w, head_dim).

    Positions are scaled to the pretraining grid: t = i * rope_grid_size / grid (so a 36x36 grid at 512 px
    spans the same range as the 16x16 grid at 224 px). The first half of each head's dims follows the row
    index, the second half the column index; each half holds head_dim/4 frequencies, each used for one
    interleaved pair (x0, x1), (x2, x3), ...
    """
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, 2, dtype=torch.float32, device=device) / half))

    def axis(n: int) -> torch.Tensor:
        t = torch.arange(n, dtype=torch.float32, device=device) / n * config.rope_grid_size
        return torch.outer(t, inv_freq).repeat_interleave(2, dim=-1)  # (n, half), pairs share a frequency

    rows = axis(grid_h)[:, None, :].expand(grid_h, grid_w, half)
    cols = axis(grid_w)[None, :, :].expand(grid_h, grid_w, half)
    freqs = torch.cat([rows, cols], dim=-1).reshape(grid_h * grid_w, 2 * half)
    return freqs.cos(), freqs.sin()


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): rotation of interleaved pairs (EVA02), not the
    half-split rotation of the text tower."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_vision_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Rotate in fp32 (the tables are fp32) and return in the input dtype, as the release does.
    x32 = x.float()
    return (x32 * cos + rotate_interleaved(x32) * sin).to(x.dtype)


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
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al., 2016): drop a sample's whole residual branch with probability p."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class JinaCLIPPatchEmbed(nn.Module):
    def __init__(self, config: JinaCLIPVisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The release casts pixels to the weight dtype (so fp32 pixel_values work with a bf16 model).
        return self.proj(pixel_values.to(self.proj.weight.dtype))


class JinaCLIPVisionAttention(nn.Module):
    def __init__(self, config: JinaCLIPVisionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        width = config.hidden_size
        # Separate q/k/v without bias; q and v get their own bias parameters and k has none (EVA02).
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.inner_attn_ln = nn.LayerNorm(width, eps=config.layer_norm_eps)  # sub-LN before the output proj
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary_cos_sin: tuple[torch.Tensor, torch.Tensor],
        **kwargs,
    ) -> torch.Tensor:
        batch, seq, _ = hidden_states.shape
        shape = (batch, seq, self.num_heads, self.head_dim)
        # Calling the Linear modules (not F.linear on their weights) keeps them visible to PEFT adapters.
        query = (self.q_proj(hidden_states) + self.q_bias).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = (self.v_proj(hidden_states) + self.v_bias).view(shape).transpose(1, 2)

        # RoPE on patch tokens only; the CLS token (index 0) keeps no position rotation.
        cos, sin = rotary_cos_sin
        query = torch.cat([query[:, :, :1], apply_vision_rotary(query[:, :, 1:], cos, sin)], dim=2)
        key = torch.cat([key[:, :, :1], apply_vision_rotary(key[:, :, 1:], cos, sin)], dim=2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self, query, key, value, None, dropout=0.0, scaling=self.scaling, is_causal=False, **kwargs
        )
        attn_output = attn_output.reshape(batch, seq, -1)
        return self.proj(self.inner_attn_ln(attn_output))


class JinaCLIPVisionMLP(nn.Module):
    """SwiGLU with a sub-LN: w3(ffn_ln(silu(w1(x)) * w2(x))). w1 is the gate; swapping w1/w2 changes
    everything."""

    def __init__(self, config: JinaCLIPVisionConfig):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.w2 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_ln = nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps)
        self.w3 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(hidden_states)) * self.w2(hidden_states)))


class JinaCLIPVisionBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block, no LayerScale."""

    def __init__(self, config: JinaCLIPVisionConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = JinaCLIPVisionAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = JinaCLIPVisionMLP(config)
        self.drop_path_rate = drop_path_rate

    def forward(
        self, hidden_states: torch.Tensor, rotary_cos_sin: tuple[torch.Tensor, torch.Tensor], **kwargs
    ) -> torch.Tensor:
        attn = self.attn(self.norm1(hidden_states), rotary_cos_sin, **kwargs)
        hidden_states = hidden_states + drop_path(attn, self.drop_path_rate, self.training)
        mlp = self.mlp(self.norm2(hidden_states))
        return hidden_states + drop_path(mlp, self.drop_path_rate, self.training)


def resample_position_embeddings(pos_embed: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Resample a (1, 1 + g*g, D) absolute position table to (1, num_positions, D), keeping the CLS row.

    Used when the resolution changes between training stages (paper section 3.2: 224 -> 384 -> 512).
    Bicubic with antialiasing in fp32, as timm's `resample_abs_pos_embed`.
    """
    old_grid, new_grid = math.isqrt(pos_embed.shape[1] - 1), math.isqrt(num_positions - 1)
    if old_grid**2 + 1 != pos_embed.shape[1] or new_grid**2 + 1 != num_positions:
        raise ValueError(
            f"position tables must hold 1 + a square number of rows; got {pos_embed.shape[1]} -> {num_positions}"
        )
    if old_grid == new_grid:
        return pos_embed
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    grid = grid.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1).to(pos_embed.dtype)
    return torch.cat([cls, grid], dim=1)


class JinaCLIPPreTrainedModel(PreTrainedModel):
    config_class = JinaCLIPConfig
    base_model_prefix = "jina_clip"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["JinaCLIPVisionBlock", "JinaEmbeddingsV3Layer", "JinaBertLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # Called by transformers only for parameters a checkpoint did not fill (torch.nn.init is guarded).
        std = getattr(self.config, "vision_config", self.config).initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, JinaCLIPVisionAttention):
            nn.init.zeros_(module.q_bias)
            nn.init.zeros_(module.v_bias)
        elif isinstance(module, JinaCLIPVisionModel):
            nn.init.trunc_normal_(module.cls_token, std=std)
            nn.init.trunc_normal_(module.pos_embed, std=std)
        elif isinstance(module, JinaCLIPModel):
            nn.init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class JinaCLIPVisionModel(JinaCLIPPreTrainedModel):
    """EVA02 ViT. Returns all token states after the final norm and the CLS token as the embedding.

    A `PreTrainedModel` of its own (like the text tower) so that transformers resolves and checks its
    attention backend, and so the tower can be loaded alone."""

    config_class = JinaCLIPVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config: JinaCLIPVisionConfig):
        super().__init__(config)
        self.patch_embed = JinaCLIPPatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_positions, config.hidden_size))
        # Stochastic depth rises linearly over the blocks (0 ... drop_path_rate). Plain Python, not
        # torch.linspace: a tensor would follow a `torch.device("meta")` context and then have no values.
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([JinaCLIPVisionBlock(config, rate) for rate in rates])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights trained at another resolution (an earlier training stage) load with a resampled table.
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape[1] != self.pos_embed.shape[1]:
            state_dict[key] = resample_position_embeddings(state_dict[key], self.pos_embed.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, height, width); "
                f"got {tuple(pixel_values.shape)}"
            )
        patches = self.patch_embed(pixel_values)  # (B, D, grid_h, grid_w); the conv floors 512/14 to 36
        grid_h, grid_w = patches.shape[-2:]
        if grid_h * grid_w + 1 != self.pos_embed.shape[1]:
            raise ValueError(
                f"pixel_values of {pixel_values.shape[-2]}x{pixel_values.shape[-1]} px give a {grid_h}x{grid_w} "
                f"patch grid, but the model is configured for image_size={self.config.image_size} "
                f"({self.config.grid_size}x{self.config.grid_size}); preprocess the images with this model's "
                "processor or change vision_config.image_size"
            )
        patches = patches.flatten(2).transpose(1, 2)
        batch = patches.shape[0]
        hidden_states = torch.cat([self.cls_token.expand(batch, -1, -1).to(patches.dtype), patches], dim=1)
        hidden_states = hidden_states + self.pos_embed.to(patches.dtype)

        cos, sin = vision_rotary_cos_sin(self.config, grid_h, grid_w, device=hidden_states.device)
        if self.training and self.config.patch_dropout > 0:
            # Patch dropout (Li et al., 2023, used by EVA-CLIP): keep a random subset of patch tokens per
            # image, and the RoPE rows of exactly those tokens.
            num_patches = grid_h * grid_w
            keep = max(1, int(num_patches * (1.0 - self.config.patch_dropout)))
            kept = torch.rand(batch, num_patches, device=hidden_states.device).topk(keep, dim=-1).indices
            patch_states = hidden_states[:, 1:].gather(1, kept[..., None].expand(-1, -1, hidden_states.shape[-1]))
            hidden_states = torch.cat([hidden_states[:, :1], patch_states], dim=1)
            cos, sin = cos[kept][:, None], sin[kept][:, None]  # (B, 1, keep, head_dim): per-image rows

        for block in self.blocks:
            hidden_states = block(hidden_states, (cos, sin), **kwargs)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=hidden_states[:, 0])


# ----------------------------------------------------------------------------------------------------
# Input handling for encode_text / encode_image
# ----------------------------------------------------------------------------------------------------


def _as_list(inputs, kind: str) -> tuple[list, bool]:
    """Normalise `inputs` to a non-empty list; remember whether a single item was given."""
    if inputs is None:
        raise ValueError(f"{kind} must not be None")
    single = isinstance(inputs, (str, bytes)) or not isinstance(inputs, (list, tuple, np.ndarray, torch.Tensor))
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        if kind == "texts":
            single = inputs.ndim == 0  # a 1-D array of strings is a batch
        else:
            # An array is one image (HxW, HxWxC or CxHxW) unless it has a leading batch axis (4-D);
            # iterating a 2-D greyscale image would yield its rows.
            single = inputs.ndim in (2, 3)
    items = [inputs] if single else list(inputs)
    if not items:
        raise ValueError(f"{kind} must not be empty")
    return items, single


# Tasks of jina-embeddings-v3 that jina-clip-v2 users carry over; only retrieval.query exists here.
_EMBEDDINGS_V3_TASKS = ("retrieval.passage", "separation", "classification", "text-matching")


def _refuse_release_only_arguments(tokenizer_kwargs: dict) -> None:
    """Arguments earlier releases took that would otherwise reach the tokenizer (and be ignored there)."""
    if "adapter_mask" in tokenizer_kwargs:
        raise TypeError(
            "encode_text no longer takes adapter_mask (removed from the release's interface too): jina-clip-v2 has "
            "one LoRA adapter, merged into the weights and applied to every text; pass task='retrieval.query' for "
            "the query instruction, or nothing for documents"
        )


def _refuse_unknown_tokenizer_arguments(tokenizer, tokenizer_kwargs: dict) -> None:
    """encode_text passes its extra keywords to the tokenizer, which only warns about names it does not know: a
    typo (`normalise_embeddings=False`) would be ignored silently. Names the tokenizer's __call__ declares pass."""
    import inspect

    known = inspect.signature(type(tokenizer).__call__).parameters
    unknown = sorted(name for name in tokenizer_kwargs if name not in known)
    if unknown:
        raise TypeError(
            f"encode_text got unexpected keyword argument(s) {unknown}: neither an encode_text argument nor a "
            f"setting of the tokenizer ({type(tokenizer).__name__}.__call__)"
        )


def _unpack_text_inputs(input_ids, attention_mask):
    """`get_text_features` inputs as tensors: the release's callers pass the tokenizer's `BatchEncoding`
    positionally (`model.get_text_features(tokenizer(texts))`); its mask is used unless one is given."""
    if isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise ValueError(f"text inputs need 'input_ids'; got a mapping with keys {sorted(input_ids)}")
        if attention_mask is None:
            attention_mask = input_ids.get("attention_mask")
        input_ids = input_ids["input_ids"]
    if input_ids is None:
        raise ValueError("get_text_features needs input_ids (a tensor, or the tokenizer's BatchEncoding)")
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(np.asarray(input_ids))
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        attention_mask = torch.as_tensor(np.asarray(attention_mask))
    return input_ids, attention_mask


def _unpack_pixel_values(pixel_values):
    """`get_image_features` input as a tensor: also the image processor's `BatchFeature` (or any mapping
    holding `pixel_values`) passed positionally, as release code does, and numpy arrays."""
    if isinstance(pixel_values, Mapping):
        if "pixel_values" not in pixel_values:
            raise ValueError(f"image inputs need 'pixel_values'; got a mapping with keys {sorted(pixel_values)}")
        pixel_values = pixel_values["pixel_values"]
    if pixel_values is None:
        raise ValueError("get_image_features needs pixel_values (a tensor, or the image processor's BatchFeature)")
    if not isinstance(pixel_values, torch.Tensor):
        pixel_values = torch.as_tensor(np.asarray(pixel_values))
    return pixel_values


def _positive_int(value, name: str) -> int:
    """`value` as a count >= 1, or a clear error (bools and floats are mistakes, not counts)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_texts(texts: list) -> None:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {index} is {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # lone surrogates: no tokenizer can read them
            raise ValueError(
                f"text {index} is not valid Unicode ({err.reason} at position {err.start}: {text[err.start]!r})"
            ) from None


def _eager() -> bool:
    """False while torch.compile / torch.export / the ONNX exporter trace: value checks (`int(t.max())`) would
    be data-dependent guards there, and traced graphs only see example inputs."""
    compiler = torch.compiler
    exporting = getattr(compiler, "is_exporting", lambda: False)()
    return not (compiler.is_compiling() or exporting or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def _check_text_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int, values: bool) -> None:
    """Shapes, dtypes and (`values`) values a tokenizer gives: ids in [0, vocab_size), a mask of the same
    shape, and at least one token per text (an all-zero mask row would pool to a zero vector)."""
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must have shape (batch, sequence) with at least one token; got {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise TypeError(f"input_ids must hold integer token ids; got dtype {input_ids.dtype}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}")
    if not values or not _eager():
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary (0 .. {vocab_size - 1})")
    empty = (attention_mask.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"text(s) {empty[:10]} have no token (an all-zero attention_mask row): nothing to embed")


# Token budget of one encode_text batch (real tokens when unpadded, texts x longest when padded), per device
# type. CPU: measured with benchmarks/encode.py --table (fp32, one thread, a 1-layer real-width text tower; see
# benchmarks/README.md); larger budgets only add memory there. CUDA: large enough that the default batch_size
# (32 texts) binds first for texts up to 1024 tokens; a memory bound (activations of ~32k tokens), not tuned.
DEFAULT_TEXT_TOKENS_PER_BATCH = {"cpu": 4096, "cuda": 32768}


def text_batches(lengths: Sequence[int], batch_size: int, max_tokens: int, unpadded: bool) -> list[list[int]]:
    """Text indices in batches, longest first (ties in input order): at most `batch_size` texts and `max_tokens`
    tokens per batch (the real tokens when `unpadded`, texts x longest text when padded). A text longer than
    the budget gets a batch of its own. Short texts go in large batches, long ones in small: memory stays flat."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens_per_batch must be >= 1, got {max_tokens}")
    batches: list[list[int]] = []
    tokens = 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        current = batches[-1] if batches else None
        # Descending order: a padded batch's longest text is its first, so it holds len(batch) x that.
        grown = tokens + lengths[index] if unpadded else (len(current) + 1) * lengths[current[0]] if current else 0
        if current and len(current) < batch_size and grown <= max_tokens:
            current.append(index)
            tokens = grown
        else:
            batches.append([index])
            tokens = lengths[index]
    return batches


def default_image_workers() -> int:
    """Threads decoding images for encode_image: one per available CPU core, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _image_stream(images) -> tuple[Iterator, bool, int | None]:
    """(iterator over the images, single image?, count or None). Lists, tuples and arrays go through `_as_list`;
    any other iterable (a generator, a dataset) is streamed, never materialised."""
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, list, tuple, np.ndarray, torch.Tensor)) or not (
        isinstance(images, Iterable)
    ):
        items, single = _as_list(images, "images")
        return iter(items), single, len(items)
    iterator = iter(images)
    first = next(iterator, _END)
    if first is _END:
        raise ValueError("images must not be empty")
    return itertools.chain([first], iterator), False, len(images) if isinstance(images, Sized) else None


_END = object()


def _preprocess_image(image_processor, item) -> np.ndarray:
    # One image through the processor, which decodes it with the package's one decoder (load_image).
    return image_processor([item], return_tensors="np")["pixel_values"][0]


def _stack_pixels(arrays: list[np.ndarray], pin_memory: bool) -> torch.Tensor:
    # Stacked straight into (pinned, on CUDA) torch memory: one copy, and the host-to-device copy can overlap.
    out = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.from_numpy(arrays[0][:0]).dtype, pin_memory=pin_memory)
    np.stack(arrays, out=out.numpy())
    return out


def _image_batches(items: Iterator, image_processor, batch_size: int, num_workers: int, pin_memory: bool):
    """(indices, {"pixel_values": (n, 3, H, W)}, {}) for consecutive batches of `items`, in order.

    With workers, a thread pool decodes and preprocesses images one by one while the caller embeds the previous
    batch; at most 2 x batch_size images are submitted ahead, so memory stays bounded for any input length.
    Without, the processor runs on each batch in the calling thread. Both give the same pixels: the processor
    treats every image on its own."""
    start = 0
    if num_workers == 0:
        while chunk := list(itertools.islice(items, batch_size)):
            pixels = image_processor(chunk, return_tensors="pt")["pixel_values"]
            yield list(range(start, start + len(chunk))), {"pixel_values": pixels.pin_memory() if pin_memory else pixels}, {}
            start += len(chunk)
        return
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="jina-clip-images")
    pending: deque = deque()
    window = 2 * batch_size

    def top_up() -> None:
        for item in itertools.islice(items, window - len(pending)):
            pending.append(pool.submit(_preprocess_image, image_processor, item))

    try:
        top_up()
        while pending:
            arrays = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            top_up()  # the workers prepare the next batch while this one is embedded
            yield list(range(start, start + len(arrays))), {"pixel_values": _stack_pixels(arrays, pin_memory)}, {}
            start += len(arrays)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda" and (a.index is None) != (b.index is None):
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


def _to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cuda":
        # From pinned memory the copy is asynchronous: the host prepares the next batch meanwhile.
        return {k: (v if v.is_pinned() else v.pin_memory()).to(device, non_blocking=True) for k, v in tensors.items()}
    return {k: v.to(device) for k, v in tensors.items()}


# ----------------------------------------------------------------------------------------------------
# Unpadded text attention without FlashAttention: length buckets instead of a (T, T) block mask
# ----------------------------------------------------------------------------------------------------

# The name under which `packed_attention_forward` is registered in transformers' attention interface. The text
# tower looks its attention function up by `config._attn_implementation`; the unpadded path sets this name for
# the duration of one call.
PACKED_ATTENTION = "jina_clip_packed"
# Texts of a packed batch share one attention call while padding them to the longest of their bucket adds at
# most this fraction of their real tokens (0: only equal lengths share a call). Padding is masked, so it changes
# no output; it only trades a little attention work for fewer, larger kernel calls.
BUCKET_PADDING = 0.125


def length_buckets(lengths: Sequence[int], padding: float = BUCKET_PADDING) -> list[list[int]]:
    """Text indices in buckets, longest first, such that padding each bucket to its longest text costs at most
    `padding` x the bucket's real tokens."""
    buckets: list[list[int]] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if buckets and (len(buckets[-1]) + 1) * lengths[buckets[-1][0]] <= (1.0 + padding) * (real + lengths[index]):
            buckets[-1].append(index)
            real += lengths[index]
        else:
            buckets.append([index])
            real = lengths[index]
    return buckets


@dataclass
class PackedTextLayout:
    """Where the texts of a packed (1, T) row sit, in length buckets (see `length_buckets`).

    Each bucket is (index, key_mask): `index` (n, L) holds the packed positions of the bucket's n texts, padded
    to its longest text L with position 0, and `key_mask` (n, L) marks the real tokens (None: no padding)."""

    base: str  # "sdpa" or "eager": the attention run on each bucket
    buckets: list[tuple[torch.Tensor, torch.Tensor | None]]

    @classmethod
    def build(cls, lengths: torch.Tensor, base: str, padding: float = BUCKET_PADDING) -> "PackedTextLayout":
        starts = torch.cumsum(lengths, 0) - lengths
        host_lengths = lengths.tolist()
        buckets = []
        for members in length_buckets(host_lengths, padding):
            rows = torch.tensor(members, device=lengths.device)
            longest = host_lengths[members[0]]
            offsets = torch.arange(longest, device=lengths.device)
            real = offsets[None] < lengths[rows][:, None]
            index = torch.where(real, starts[rows][:, None] + offsets[None], 0)
            uniform = all(host_lengths[i] == longest for i in members)
            buckets.append((index, None if uniform else real))
        return cls(base=base, buckets=buckets)


def packed_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    packed_layout: PackedTextLayout | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of the packed texts (1, H, T, d) -> (1, T, H, d), each text attending to itself only: per
    length bucket, gather the texts into an (n, H, L, d) batch (keys past a text's end masked), attend, scatter
    back. Work and memory grow with sum(n * L^2) over the buckets, not with T^2."""
    if packed_layout is None:
        raise ValueError(f"the {PACKED_ATTENTION!r} attention needs the packed_layout of get_text_features(unpadded=True)")
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, d)
    out = q.new_empty(q.shape)
    for index, key_mask in packed_layout.buckets:
        qb, kb, vb = (t[index].transpose(1, 2) for t in (q, k, v))  # (n, H, L, d)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if packed_layout.base == "eager":
            weights = torch.matmul(qb, kb.transpose(-1, -2)) * scaling
            if mask is not None:
                weights = weights.masked_fill(~mask, torch.finfo(weights.dtype).min)
            weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(qb.dtype)
            weights = F.dropout(weights, p=dropout, training=module.training)
            attended = torch.matmul(weights, vb)
        else:
            attended = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout, scale=scaling)
        attended = attended.transpose(1, 2)  # (n, L, H, d)
        if key_mask is None:
            out[index.flatten()] = attended.flatten(0, 1)
        else:
            out[index[key_mask]] = attended[key_mask]
    return out[None], None


def _no_attention_mask(*args, **kwargs) -> None:
    # The packed path needs no mask tensor: the layout says which tokens attend to which.
    return None


AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
AttentionMaskInterface.register(PACKED_ATTENTION, _no_attention_mask)


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


def build_text_model(config) -> PreTrainedModel:
    """The text tower for `config.text_config`'s type: jina-clip-v1's JinaBERT or jina-clip-v2's
    jina-embeddings-v3 backbone (transformers' own class, without its pooler, as the release)."""
    if config.text_config.model_type == JinaBertConfig.model_type:
        return JinaBertModel(config.text_config)
    return JinaEmbeddingsV3Model(config.text_config, add_pooling_layer=False)


class JinaCLIPModel(JinaCLIPPreTrainedModel):
    """jina-clip-v2 (or jina-clip-v1) dual encoder.

    `get_text_features` / `get_image_features` return raw (un-normalised) embeddings in `pooler_output`;
    `encode_text` / `encode_image` take raw inputs (strings, images) and return truncated, normalised
    embeddings; `forward` returns the scaled similarity logits both ways and an optional contrastive loss.
    """

    main_input_name = "input_ids"

    def __init__(self, config: JinaCLIPConfig):
        super().__init__(config)
        self.text_model = build_text_model(config)
        self.vision_model = JinaCLIPVisionModel(config.vision_config)
        # The releases have no projection layers (add_projections=false): both towers are 1024-d (v1: 768-d).
        self.text_projection = nn.Identity()
        self.visual_projection = nn.Identity()
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self._processor = None
        self._processor_error: str | None = None
        self._towers_compiled = False
        self.post_init()

    # -- resolution -----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *model_args, config=None, load_processor: bool = True, strict: bool = True, **kwargs
    ):
        """As `PreTrainedModel.from_pretrained`; a `config` whose `vision_config.image_size` differs from the
        checkpoint's loads the weights at their own size, then resamples the position table.

        The processor (tokenizer + image processor) saved next to the weights is loaded here too, so the first
        `encode_*` call does not pay for it; a folder without one loads fine and `encode_*` then says how to
        attach one. `load_processor=False` skips it (e.g. when the caller assigns its own `model.processor`).

        `strict` (default): a tensor missing from or extra in the weights, a tensor of another shape, a
        non-finite weight, an unreadable weights file, or a processor folder without its tokenizer.json is an
        error naming it (transformers would re-initialise missing tensors at random with a log line).
        `strict=False` allows deliberate partial loads."""
        if "dtype" not in kwargs and "torch_dtype" not in kwargs:
            # As the release: bf16 where CUDA is available (the towers were trained in bf16, Table 6), fp32 on
            # CPU, where bf16 matmuls are slow and lose digits. An explicit dtype always wins.
            kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        hub_kwargs = {
            k: kwargs[k]
            for k in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            if k in kwargs
        }
        wants_info = kwargs.pop("output_loading_info", False)
        model = info = None
        # Duck-typed, not isinstance: a config built from this package and a model class loaded as remote code
        # (transformers_modules.*) are different classes of the same thing.
        vision_config = getattr(config, "vision_config", None)
        if getattr(vision_config, "image_size", None) is not None and pretrained_model_name_or_path is not None:
            stored = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
            target = config.vision_config.image_size
            if stored.vision_config.image_size != target:
                config = cls.config_class.from_dict(config.to_dict())  # a copy, of the model's own class
                config.vision_config.image_size = stored.vision_config.image_size
                model, info = cls._load_checked(pretrained_model_name_or_path, model_args, config, kwargs, strict)
                model.set_image_size(target)
        if model is None:
            model, info = cls._load_checked(pretrained_model_name_or_path, model_args, config, kwargs, strict)
        if load_processor and pretrained_model_name_or_path is not None:
            model._load_processor(pretrained_model_name_or_path, strict=strict, **hub_kwargs)
        return (model, info) if wants_info else model

    @classmethod
    def _load_checked(cls, source, model_args, config, kwargs, strict: bool):
        """`PreTrainedModel.from_pretrained` -> (model, loading report), the report turned into errors when
        `strict`."""
        if strict and "ignore_mismatched_sizes" not in kwargs:
            # Let transformers list tensors of another shape in its report (not raise with a pointer to its log),
            # so the error below names them.
            kwargs = {**kwargs, "ignore_mismatched_sizes": True}
        try:
            model, info = super().from_pretrained(source, *model_args, config=config, output_loading_info=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - a corrupt weights file: name it
            if type(err).__name__ != "SafetensorError" and "deserializ" not in str(err):
                raise
            raise ValueError(
                f"cannot read the weights of {source}: {err} (a truncated or corrupt .safetensors file; download or "
                "export it again)"
            ) from err
        if strict:
            problems = []
            for label, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys"))):
                if keys:
                    keys = sorted(keys)
                    problems.append(f"{len(keys)} {label} tensor(s): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
            if info.get("mismatched_keys"):
                problems.append(f"tensors of another shape: {[str(m) for m in info['mismatched_keys']][:8]}")
            if problems:
                raise ValueError(
                    f"the weights in {source} do not match the model: {'; '.join(problems)} (strict=False loads "
                    "anyway, initialising missing tensors at random)"
                )
            # A NaN weight makes every embedding NaN: refuse it here, naming the tensor.
            bad = [
                name for name, tensor in model.state_dict().items()
                if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())
            ]  # fmt: skip
            if bad:
                raise ValueError(f"the weights in {source} hold NaN or infinite values in {', '.join(bad[:8])}")
        return model, info

    def _load_processor(self, source, strict: bool = True, **hub_kwargs) -> None:
        """Attach the processor saved at `source`; when there is none, remember why for `encode_*`'s error. A
        local folder that holds a processor without its tokenizer.json is an error when `strict`: transformers
        would build a tokenizer of a few special tokens, under which every text embeds the same."""
        folder = os.fspath(source)
        if strict and os.path.isdir(folder):
            configs = [name for name in ("processor_config.json", "tokenizer_config.json") if os.path.isfile(os.path.join(folder, name))]
            if configs and not os.path.isfile(os.path.join(folder, "tokenizer.json")):
                raise ValueError(
                    f"{folder} holds {', '.join(configs)} but no tokenizer.json: the tokenizer cannot be loaded "
                    "(export or convert the folder again; strict=False loads the model without it)"
                )
        try:
            processor = AutoProcessor.from_pretrained(source, trust_remote_code=True, **hub_kwargs)
        except (OSError, ValueError, KeyError) as err:
            self._processor_error = (
                f"cannot load the processor (tokenizer + image processor) of {str(source)!r}: {err}. Save one next "
                "to the weights with `processor.save_pretrained(folder)` or assign `model.processor`."
            )
            return
        _set_processor_image_size(processor, self.config.vision_config.image_size)
        self._processor = processor

    def compile_towers(self, **compile_kwargs) -> "JinaCLIPModel":
        """`torch.compile` both towers in place (kwargs go to `torch.compile`, e.g. mode="max-autotune").
        Opt-in: compilation costs minutes at real size and pays off on long encoding or training runs."""
        self.text_model.compile(**compile_kwargs)
        self.vision_model.compile(**compile_kwargs)
        self._towers_compiled = True  # encode_text then pads (a packed layout would recompile per batch)
        return self

    def set_image_size(self, image_size: int) -> None:
        """Change the input resolution in place: resample the position table (RoPE follows the grid) and
        update the config and the attached processor (paper section 3.2, 224 -> 384 -> 512)."""
        vision = self.config.vision_config
        if image_size == vision.image_size:
            return
        old = vision.image_size
        vision.image_size = image_size
        try:
            vision.validate_shapes()
        except ValueError:
            vision.image_size = old
            raise
        table = self.vision_model.pos_embed
        self.vision_model.pos_embed = nn.Parameter(
            resample_position_embeddings(table.data, vision.num_positions), requires_grad=table.requires_grad
        )
        if self._processor is not None:
            _set_processor_image_size(self._processor, image_size)

    # -- features ---------------------------------------------------------------------------------------

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        unpadded: bool | None = None,
        check_inputs: bool = True,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text embeddings: masked mean of the last hidden states over every non-pad token (<s> and </s>
        included), no projection. `pooler_output` holds the raw (un-normalised) embedding.

        `unpadded` packs the batch's real tokens into one row (positions restart per text, so RoPE (v2) and
        ALiBi distances (v1) are each text's own; attention stays inside each text), so no pad token is
        computed. None (default) picks it when the text tower runs a FlashAttention backend, whose
        variable-length kernels make it free. Under eager/SDPA the attention runs per bucket of similar lengths
        (`packed_attention_forward`: no (T, T) mask; the text tower's attention setting is switched to it for
        the call, so one model should not run this concurrently with a padded call from another thread).
        `encode_text` chooses per device (`_text_batch_plan`).

        `input_ids` may also be the tokenizer's `BatchEncoding` (or any mapping with `input_ids`), passed
        positionally as release code does; `**tokenizer(...)` works too.

        `check_inputs=False` skips the value checks (ids inside the vocabulary, a token in every mask row), which
        cost a host sync on accelerators: `encode_text` and the trainer pass ids their tokenizer made.
        """
        input_ids, attention_mask = _unpack_text_inputs(input_ids, attention_mask)
        if attention_mask is None:
            # The release derives the mask from the ids (pad id 1), so callers may pass input_ids alone.
            attention_mask = (input_ids != self.config.text_config.pad_token_id).long()
        _check_text_inputs(input_ids, attention_mask, self.config.text_config.vocab_size, check_inputs)
        kwargs.pop("token_type_ids", None)  # one token type (type_vocab_size=1): the tower adds row 0 itself
        flash = "flash" in (self.config.text_config._attn_implementation or "")
        if unpadded if unpadded is not None else flash:
            return self._get_text_features_unpadded(input_ids, attention_mask, flash, **kwargs)
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = outputs.last_hidden_state
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        # Sum in fp32: a bf16 sum over 512 tokens loses digits the mean then keeps.
        pooled = (hidden.float() * mask.float()).sum(1) / mask.float().sum(1).clamp(min=1.0)
        pooled = self.text_projection(pooled.to(hidden.dtype))
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _get_text_features_unpadded(self, input_ids, attention_mask, flash: bool, **kwargs):
        keep = attention_mask.bool()
        lengths = keep.sum(1)
        if bool((lengths == 0).any()):
            raise ValueError("every text needs at least one non-pad token")
        # Real tokens of every row, in order, as one sequence; positions restart at 0 for each text, which is
        # what the padded path gives a right-padded row.
        packed_ids = input_ids[keep][None]
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=input_ids.device), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        position_ids = (torch.arange(packed_ids.shape[1], device=input_ids.device) - starts[segment])[None]
        text_config = self.text_model.config
        if flash:
            # transformers' FlashAttention integration runs the varlen kernel from these (cu_seqlens).
            cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
            longest = int(lengths.max())
            kwargs.update(cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=longest, max_length_k=longest)
            outputs = self.text_model(input_ids=packed_ids, position_ids=position_ids, **kwargs)
        elif not isinstance(self.text_model, JinaEmbeddingsV3Model):
            # jina-clip-v1's JinaBERT adds its ALiBi biases to the mask it is given (distances from the
            # per-text position_ids): a (T, T) block-diagonal mask keeps each text to itself. Quadratic in the
            # packed length, so encode_text pads for this tower (`_text_batch_plan`); this is the explicit path.
            same_text = (segment[:, None] == segment[None, :])[None, None]
            outputs = self.text_model(input_ids=packed_ids, attention_mask=same_text, position_ids=position_ids, **kwargs)
        else:
            # eager / sdpa: attention per bucket of similar lengths (packed_attention_forward); a (T, T)
            # block-diagonal mask over the whole batch would cost T^2 and be slower than padding.
            previous = text_config._attn_implementation
            layout = PackedTextLayout.build(lengths, "eager" if previous == "eager" else "sdpa")
            text_config._attn_implementation = PACKED_ATTENTION
            try:
                outputs = self.text_model(input_ids=packed_ids, position_ids=position_ids, packed_layout=layout, **kwargs)
            finally:
                text_config._attn_implementation = previous
        hidden = outputs.last_hidden_state[0]
        sums = torch.zeros(len(lengths), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
        pooled = sums.index_add_(0, segment, hidden.float()) / lengths[:, None].float()
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state, pooler_output=self.text_projection(pooled.to(hidden.dtype))
        )

    def get_image_features(self, pixel_values: torch.Tensor, check_inputs: bool = True, **kwargs) -> BaseModelOutputWithPooling:
        """Image embeddings: the CLS token after the final norm, no projection, un-normalised.

        `pixel_values` may also be the image processor's `BatchFeature` (or any mapping with
        `pixel_values`), passed positionally as release code does; `**image_processor(...)` works too.
        `check_inputs=False` skips the NaN / infinity check (a host sync on accelerators): `encode_image` and the
        trainer pass the processor's pixels, whose decoder refuses non-finite arrays."""
        pixel_values = _unpack_pixel_values(pixel_values)
        if pixel_values.ndim == 4 and pixel_values.shape[0] == 0:
            raise ValueError("pixel_values holds no image (batch of 0)")
        if not pixel_values.is_floating_point():  # raw 0..255 pixels, not the processor's normalized floats
            raise TypeError(f"pixel_values must be floating point (the image processor's output); got {pixel_values.dtype}")
        if check_inputs and _eager() and not bool(torch.isfinite(pixel_values).all()):
            raise ValueError("pixel_values holds NaN or infinite values")
        outputs = self.vision_model(pixel_values, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.visual_projection(outputs.pooler_output),
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> JinaCLIPOutput | tuple:
        """Both towers, L2-normalised embeddings and CLIP logits: logits_per_text = exp(logit_scale) *
        text @ image.T. With `return_loss`, the symmetric InfoNCE loss (paper eq. 1) over the batch, where
        text i matches image i.

        One modality alone (`input_ids` or `pixel_values`) gives its L2-normalised embeddings and no logits:
        transformers' `feature-extraction` / `image-feature-extraction` pipelines call the model that way and
        read the first output, which is then `text_embeds` / `image_embeds`."""
        if input_ids is None and pixel_values is None:
            raise ValueError("forward needs input_ids, pixel_values or both")
        if return_loss and (input_ids is None or pixel_values is None):
            raise ValueError("return_loss needs both input_ids and pixel_values (text-image pairs)")
        text_outputs = vision_outputs = text_embeds = image_embeds = None
        if input_ids is not None:
            text_outputs = self.get_text_features(input_ids, attention_mask=attention_mask, **kwargs)
            text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        if pixel_values is not None:
            vision_outputs = self.get_image_features(pixel_values)
            image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        if text_embeds is None or image_embeds is None:
            output = JinaCLIPOutput(
                text_embeds=text_embeds,
                image_embeds=image_embeds,
                text_model_output=text_outputs,
                vision_model_output=vision_outputs,
            )
            return output if return_dict is not False else output.to_tuple()
        logits_per_text = self.logit_scale.exp() * text_embeds @ image_embeds.t()
        logits_per_image = logits_per_text.t()
        loss = None
        if return_loss:
            if logits_per_text.shape[0] != logits_per_text.shape[1]:
                raise ValueError(
                    f"return_loss needs as many texts as images (pairs); got {logits_per_text.shape[0]} texts "
                    f"and {logits_per_text.shape[1]} images"
                )
            labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
            loss = (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_image, labels)) / 2
        output = JinaCLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )
        return output if return_dict is not False else output.to_tuple()

    # -- encode API (compatible with the release) ---------------------------------------------------

    @property
    def processor(self):
        """The tokenizer + image processor: loaded by `from_pretrained` from the model's folder, or assigned."""
        if self._processor is None:
            if self._processor_error is not None:
                raise ValueError(self._processor_error)
            raise ValueError(
                "this model has no processor: load it with from_pretrained from a folder that holds one, "
                "or assign one: `model.processor = CLIPProcessor(image_processor=JinaCLIPImageProcessor(...), "
                "tokenizer=PreTrainedTokenizerFast(tokenizer_file='tokenizer.json', ...))`"
            )
        return self._processor

    @processor.setter
    def processor(self, value) -> None:
        self._processor = value
        self._processor_error = None

    def get_tokenizer(self):
        """The tokenizer saved with the model (the release's `get_tokenizer()`): `self.processor.tokenizer`."""
        return self.processor.tokenizer

    def get_preprocess(self):
        """The image processor saved with the model (the release's `get_preprocess()`):
        `self.processor.image_processor`, which also decodes paths, URLs, bytes and arrays."""
        return self.processor.image_processor

    def _check_truncate_dim(self, truncate_dim: int | None) -> int | None:
        truncate_dim = truncate_dim if truncate_dim is not None else self.config.truncate_dim
        if truncate_dim is None:
            return None
        dims = self.config.matryoshka_dimensions
        if not dims:
            raise ValueError(
                f"truncate_dim={truncate_dim!r}: this model was not trained with Matryoshka representation learning "
                f"(jina-clip-v1; config.matryoshka_dimensions is empty), so truncated embeddings would not be "
                f"meaningful; use the full {self.config.projection_dim}-d embeddings (truncate_dim=None)"
            )
        # Only the trained Matryoshka prefixes; bool and float are refused although True == 1 and 8.0 == 8
        # (a float cannot slice, and True is a mistake, not a width).
        if (
            isinstance(truncate_dim, bool)
            or not isinstance(truncate_dim, (int, np.integer))
            or int(truncate_dim) not in dims
        ):
            raise ValueError(f"truncate_dim={truncate_dim!r} is not supported; valid values: {dims}")
        return int(truncate_dim)

    def _finish(
        self,
        embeddings: list[torch.Tensor],
        order: list[int],
        single: bool,
        truncate_dim: int | None,
        normalize_embeddings: bool,
        convert_to_numpy: bool,
        convert_to_tensor: bool,
    ):
        # Restore the caller's order, then truncate, then normalise (Matryoshka: never the other way round).
        stacked = torch.cat(embeddings)[torch.tensor(order).argsort()]
        if truncate_dim is not None:
            stacked = stacked[:, :truncate_dim]
        if normalize_embeddings:
            stacked = F.normalize(stacked.float(), dim=-1).to(stacked.dtype)
        if convert_to_tensor:
            return stacked[0] if single else stacked
        if convert_to_numpy:
            array = stacked.float().cpu().numpy()
            return array[0] if single else array
        rows = list(stacked.unbind(0))
        return rows[0] if single else rows

    @torch.inference_mode()
    def encode_text(
        self,
        sentences: str | Sequence[str],
        task: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | torch.device | None = None,
        normalize_embeddings: bool = True,
        truncate_dim: int | None = None,
        max_length: int | None = None,
        max_tokens_per_batch: int | None = None,
        **tokenizer_kwargs,
    ):
        """Embed texts. Returns a (n, dim) float32 array by default (a vector for a single string).

        The texts are tokenized once, sorted by token count (longest first) and grouped into batches of at most
        `batch_size` texts and `max_tokens_per_batch` tokens; where the backend makes it pay (FlashAttention,
        or eager/SDPA on CPU) the batches are unpadded, so no pad token is computed (`_text_batch_plan`). The
        outputs come back in the input order and equal those of encoding each text alone (to float rounding).

        Args:
            task: "retrieval.query" prepends the release's query instruction; None adds nothing. (jina-clip-v1
                has no instructions: any task is an error there.)
            truncate_dim: keep the first k dims (one of `config.matryoshka_dimensions`), then L2-normalise.
            max_length: tokens per text (default `config.max_text_length`, 512 as in the release).
            max_tokens_per_batch: token budget per batch: real tokens when unpadded, texts x longest text when
                padded (default: `DEFAULT_TEXT_TOKENS_PER_BATCH` for the device). A text longer than the budget
                gets a batch of its own.
            tokenizer_kwargs: passed to the tokenizer (e.g. truncation=False). Padding options (padding,
                pad_to_multiple_of) only shape padded batches: they change no embedding.
        """
        texts, single = _as_list(sentences, "texts")
        _check_texts(texts)
        truncate_dim = self._check_truncate_dim(truncate_dim)
        _refuse_release_only_arguments(tokenizer_kwargs)
        batch_size = _positive_int(batch_size, "batch_size")
        if max_length is not None:
            max_length = _positive_int(max_length, "max_length")
        if max_tokens_per_batch is not None:
            max_tokens_per_batch = _positive_int(max_tokens_per_batch, "max_tokens_per_batch")
        if task is not None:
            if not self.config.task_instructions:
                raise ValueError(
                    f"task={task!r}: this model has no task instructions (jina-clip-v1 embeds queries and documents "
                    "alike); call encode_text without task"
                )
            if task not in self.config.task_instructions:
                hint = ""
                if task in _EMBEDDINGS_V3_TASKS:
                    # jina-clip-v2 kept one of jina-embeddings-v3's five adapters (paper section 3.1).
                    hint = " (a jina-embeddings-v3 task: jina-clip-v2 has only the query instruction; embed documents with task=None)"
                raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(self.config.task_instructions)}{hint}")
            texts = [self.config.task_instructions[task] + text for text in texts]
        tokenizer = self.processor.tokenizer
        _refuse_unknown_tokenizer_arguments(tokenizer, tokenizer_kwargs)
        # The release's defaults, each overridable (truncation=False, max_length=..., ...).
        settings = {"truncation": True, **tokenizer_kwargs}
        settings["max_length"] = max_length if max_length is not None else self.config.max_text_length
        padding = settings.pop("padding", True)
        pad_to_multiple_of = settings.pop("pad_to_multiple_of", None)
        settings.pop("return_tensors", None)
        # The one tokenization: the batching's lengths and every batch's ids come from it.
        ids = tokenizer(texts, padding=False, return_attention_mask=False, **settings)["input_ids"]
        lengths = [len(row) for row in ids]
        empty = [index for index, length in enumerate(lengths) if length == 0]
        if empty:  # e.g. "" with add_special_tokens=False: it would pool to a zero vector
            raise ValueError(f"text(s) {empty[:10]} give no token at all (with these tokenizer settings): nothing to embed")
        batches, unpadded = self._text_batch_plan(lengths, batch_size, max_tokens_per_batch, device)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.config.text_config.pad_token_id
        flat = torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)
        length_table = torch.tensor(lengths, dtype=torch.long)
        starts = torch.cumsum(length_table, 0) - length_table

        def prepare(indices: list[int]):
            rows = torch.tensor(indices, dtype=torch.long)
            row_lengths = length_table[rows]
            packed = unpadded
            width = max(lengths[i] for i in indices)
            if not packed:
                if padding == "max_length":
                    width = max(width, settings["max_length"])
                if pad_to_multiple_of:
                    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
            offsets = torch.arange(width)
            real = offsets[None] < row_lengths[:, None]
            input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
            input_ids[real] = flat[(starts[rows][:, None] + offsets[None])[real]]  # right padding, as the release
            return indices, {"input_ids": input_ids, "attention_mask": real.long()}, {"unpadded": packed}

        return self._encode_batches(
            map(prepare, batches),
            lambda batch, unpadded: self.get_text_features(
                batch["input_ids"], attention_mask=batch["attention_mask"], unpadded=unpadded, check_inputs=False
            ),
            len(batches), single, show_progress_bar, device, truncate_dim, normalize_embeddings,
            convert_to_numpy, convert_to_tensor, "Encoding texts",
        )

    def _text_batch_plan(
        self,
        lengths: Sequence[int],
        batch_size: int = 32,
        max_tokens_per_batch: int | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[list[list[int]], bool]:
        """How `encode_text` batches texts of these token counts: (batches of indices, unpadded).

        Unpadded (packed) batches where they are the fastest exact path: under FlashAttention (varlen kernels)
        and, for eager/SDPA, on CPU (length-bucket attention, `packed_attention_forward`; measured faster than
        padded batches, see benchmarks/README.md). On CUDA without FlashAttention, padded length-sorted batches
        (one fused SDPA kernel per layer; the packed path is not yet measured there). A text tower other than
        `JinaEmbeddingsV3Model`, or one compiled by `compile_towers` (every packed layout would be a new graph),
        is never packed."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = torch.device(device) if device is not None else self.device
        attn = self.config.text_config._attn_implementation or ""
        unpadded = (
            isinstance(self.text_model, JinaEmbeddingsV3Model)
            and not self._towers_compiled
            and ("flash" in attn or (device.type == "cpu" and attn in ("eager", "sdpa")))
        )
        if max_tokens_per_batch is None:
            max_tokens_per_batch = DEFAULT_TEXT_TOKENS_PER_BATCH.get(device.type, DEFAULT_TEXT_TOKENS_PER_BATCH["cuda"])
        return text_batches(lengths, batch_size, max_tokens_per_batch, unpadded), unpadded

    @torch.inference_mode()
    def encode_image(
        self,
        images,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | torch.device | None = None,
        normalize_embeddings: bool = True,
        truncate_dim: int | None = None,
        num_workers: int | None = None,
    ):
        """Embed images given as PIL images, paths, http(s) URLs, data:image URIs, bytes or numpy arrays (one,
        a list, or any iterable, e.g. a generator of paths), decoded as the release decodes them
        (`processing_jina_clip.load_image`, with the options saved in the image processor). Returns a (n, dim)
        float32 array by default (a vector for a single image).

        Args:
            num_workers: threads that decode and preprocess images while the model embeds the previous batch
                (default `min(8, CPU cores)`; 0: everything in the calling thread). At most 2 x `batch_size`
                images are read ahead of the model, so an iterator of any length streams in bounded memory.
                The pixels are the same bit for bit whatever the number of workers.
        """
        truncate_dim = self._check_truncate_dim(truncate_dim)
        batch_size = _positive_int(batch_size, "batch_size")
        if num_workers is None:
            num_workers = default_image_workers()
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        items, single, count = _image_stream(images)
        image_processor = self.processor.image_processor
        target = torch.device(device) if device is not None else self.device
        batches = _image_batches(
            items, image_processor, batch_size, 0 if count == 1 else num_workers, pin_memory=target.type == "cuda"
        )
        return self._encode_batches(
            batches,
            lambda batch: self.get_image_features(batch["pixel_values"], check_inputs=False),
            None if count is None else -(-count // batch_size), single, show_progress_bar, device, truncate_dim,
            normalize_embeddings, convert_to_numpy, convert_to_tensor, "Encoding images",
        )

    def _encode_batches(
        self, batches, embed, total, single, show_progress_bar, device, truncate_dim,
        normalize_embeddings, convert_to_numpy, convert_to_tensor, description,
    ):
        """Run `embed` over `batches` ((indices, CPU tensors, embed kwargs) triples), then restore the input order,
        truncate and normalise. The model is switched to eval mode (and back) only when it is training: sweeping
        every module costs milliseconds per call at real size."""
        from tqdm.auto import tqdm

        if device is not None and not _same_device(torch.device(device), self.device):
            self.to(device)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        was_training = self.training
        if was_training:
            self.eval()
        chunks, order = [], []
        try:
            for indices, batch, options in tqdm(batches, total=total, desc=description, disable=not show_progress_bar):
                chunks.append(embed(_to_device(batch, self.device), **options).pooler_output)
                order.extend(indices)
        finally:
            if was_training:
                self.train()
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops the image workers if the forward pass raised
        return self._finish(
            chunks, order, single, truncate_dim, normalize_embeddings, convert_to_numpy, convert_to_tensor
        )


def _set_processor_image_size(processor, image_size: int) -> None:
    image_processor = getattr(processor, "image_processor", processor)
    image_processor.size = {"shortest_edge": image_size}
    image_processor.crop_size = {"height": image_size, "width": image_size}


__all__ = [
    "JinaBertModel",
    "JinaCLIPModel",
    "JinaCLIPVisionModel",
    "JinaCLIPPreTrainedModel",
    "JinaCLIPOutput",
    "build_text_model",
]
