"""jina-clip-v2 (Koukounas et al., 2024): a multilingual text tower and an EVA02 vision tower embedding
into one 1024-d space, with Matryoshka truncation; and its predecessor jina-clip-v1 (English JinaBERT text
tower, EVA02-B/16 at 224 px, 768-d), served by the same class (the config's text tower type decides).

- Text tower: v2: transformers' own `JinaEmbeddingsV3Model` (XLM-R geometry, RoPE base 20000, post-LN);
  v1: `JinaBertModel` (modeling_jina_bert.py: ALiBi, gated MLP, post-LN). Both with masked mean pooling
  over every non-pad token (special tokens included) and no projection, as released.
- Vision tower: EVA02-L/14 (Fang et al., 2023) written here with the release's parameter names:
  2D RoPE on patch tokens, q/v biases only, sub-LN inside attention and SwiGLU, CLS output.
- One `attn_implementation` (eager / sdpa / flash_attention_2) drives both towers through the
  transformers attention interface; it also decides, in `get_text_features`, how an unpadded text batch runs.

The encode runtime (`encode_text` / `encode_image`: batching, the image pool, input checks, truncation and
normalisation) is `encoding_jina_clip.py`; what `from_pretrained` adds to transformers' loading (strictness, the
processor) is `loading_jina_clip.py`. This file is Hub remote code: flat, relative imports only, nothing of this
repository.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
try:
    from transformers import JinaEmbeddingsV3Model, PreTrainedModel
except ImportError as err:  # transformers < 5.4: name the version to install
    from .configuration_jina_clip import transformers_version_error

    raise transformers_version_error() from err
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_jina_bert import JinaBertConfig
from .configuration_jina_clip import JinaCLIPConfig, JinaCLIPVisionConfig
from .encoding_jina_clip import (
    check_pixel_values,
    check_text_inputs,
    encode_image,
    encode_text,
    length_buckets,
    pack_texts,
    pool_packed,
    unpack_pixel_values,
    unpack_text_inputs,
)
from .loading_jina_clip import (
    check_loading_report,
    check_processor,
    default_dtype,
    load_folder_processor,
    set_processor_image_size,
    weights_file_errors,
)
from .modeling_jina_bert import JinaBertModel

# transformers 5.4 copies only the direct relative imports of a remote-code module into its module cache, not the
# files those import in turn: the ones the runtime and loading files import are named here, so a folder's copy
# loads there too (tests/test_compat.py loads an exported folder with transformers 5.4).
from .fetching_jina_clip import fetch_url  # noqa: F401
from .policy_jina_clip import positive_int  # noqa: F401
from .processing_jina_clip import JinaCLIPImageProcessor  # noqa: F401
from .tokenization_jina_clip import load_tokenizer  # noqa: F401

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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, load_processor: bool = True, **kwargs):
        """transformers' `from_pretrained`, and what the release's loading did besides (`loading_jina_clip.py`):
        the dtype defaults to bf16 where CUDA is available (fp32 otherwise; on a CPU with native bf16, `dtype=torch.bfloat16`
        is about 2x faster, see `loading_jina_clip.native_bf16`); `strict` (default) makes a missing,
        unexpected, mis-shaped or non-finite tensor and an unreadable weights file errors naming them (`strict=False`
        allows deliberate partial loads); and the processor saved beside the weights is attached, built by this
        package's classes (no code of the folder runs), so `encode_*` can run (`load_processor=False` skips it)."""
        if "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs["dtype"] = default_dtype()
        wants_info = kwargs.pop("output_loading_info", False)
        if strict:  # tensors of another shape then reach the report (named below) instead of a bare error
            kwargs.setdefault("ignore_mismatched_sizes", True)
        with weights_file_errors(pretrained_model_name_or_path):
            model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs)
        if strict:
            check_loading_report(model, info, pretrained_model_name_or_path)
        if load_processor and pretrained_model_name_or_path is not None:
            model._processor, model._processor_error = load_folder_processor(pretrained_model_name_or_path, model.config, strict, kwargs)
        return (model, info) if wants_info else model

    def compile_towers(self, **compile_kwargs) -> "JinaCLIPModel":
        """`torch.compile` both towers in place (kwargs go to `torch.compile`, e.g. mode="max-autotune").
        Opt-in: compilation costs minutes at real size and pays off on long encoding or training runs."""
        self.text_model.compile(**compile_kwargs)
        self.vision_model.compile(**compile_kwargs)
        self._towers_compiled = True  # encode_text then pads (an unpadded layout would recompile per batch)
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
            set_processor_image_size(self._processor, image_size)

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

        `unpadded` computes (almost) no pad token; `last_hidden_state` is then the texts' real tokens in one row.
        How depends on the attention backend (`config.text_config._attn_implementation`), read, never changed:
        FlashAttention runs the packed row with its variable-length kernels (the default there, free); eager /
        SDPA run each bucket of similar lengths as one padded batch, padding at most `BUCKET_PADDING` of its real
        tokens (no (T, T) mask); jina-clip-v1's JinaBERT runs the packed row under a block-diagonal mask. None
        (default) picks it under FlashAttention only; `encode_text` chooses per device (`text_batch_plan`).

        `input_ids` may also be the tokenizer's `BatchEncoding` (or any mapping with `input_ids`), passed
        positionally as release code does; `**tokenizer(...)` works too. `check_inputs=False` skips the value
        checks (ids inside the vocabulary, a token in every mask row), which cost a host sync on accelerators:
        `encode_text` and the trainer pass ids their tokenizer made.
        """
        input_ids, attention_mask = unpack_text_inputs(input_ids, attention_mask)
        if attention_mask is None:
            # The release derives the mask from the ids (pad id 1), so callers may pass input_ids alone.
            attention_mask = (input_ids != self.config.text_config.pad_token_id).long()
        check_text_inputs(input_ids, attention_mask, self.config.text_config.vocab_size, check_inputs)
        kwargs.pop("token_type_ids", None)  # one token type (type_vocab_size=1): the tower adds row 0 itself
        flash = "flash" in (self.config.text_config._attn_implementation or "")
        if not (unpadded if unpadded is not None else flash):
            outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            hidden = outputs.last_hidden_state
            mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
            # Sum in fp32: a bf16 sum over 512 tokens loses digits the mean then keeps.
            pooled = (hidden.float() * mask.float()).sum(1) / mask.float().sum(1).clamp(min=1.0)
            return BaseModelOutputWithPooling(
                last_hidden_state=hidden,
                pooler_output=self.text_projection(pooled.to(hidden.dtype)),
                hidden_states=outputs.hidden_states,
                attentions=outputs.attentions,
            )
        # Positions restart at 0 for each text, which is what the padded path gives a right-padded row.
        packed_ids, position_ids, segment, lengths = pack_texts(input_ids, attention_mask)
        if flash:
            # transformers' FlashAttention integration runs the varlen kernel from these (cu_seqlens).
            cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
            longest = int(lengths.max())
            kwargs.update(cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=longest, max_length_k=longest)
            hidden = self.text_model(input_ids=packed_ids, position_ids=position_ids, **kwargs).last_hidden_state[0]
        elif self.config.version == "v1":
            # JinaBERT adds its ALiBi biases to the mask it is given (distances from the per-text position_ids): a
            # (T, T) block-diagonal mask keeps each text to itself. Quadratic in the packed length, so encode_text
            # pads for this tower (`text_batch_plan`); this is the explicit path.
            same_text = (segment[:, None] == segment[None, :])[None, None]
            hidden = self.text_model(
                input_ids=packed_ids, attention_mask=same_text, position_ids=position_ids, **kwargs
            ).last_hidden_state[0]
        else:
            hidden = self._text_buckets(packed_ids[0], lengths, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden[None],
            pooler_output=self.text_projection(pool_packed(hidden, segment, lengths).to(hidden.dtype)),
        )

    def _text_buckets(self, packed_ids: torch.Tensor, lengths: torch.Tensor, **kwargs) -> torch.Tensor:
        """The hidden states (T, D) of packed texts, each bucket of similar lengths (`length_buckets`) run as one
        right-padded batch: work grows with the buckets' sizes times their lengths, never with the longest text
        times the batch size, and no (T, T) mask is built."""
        starts = torch.cumsum(lengths, 0) - lengths
        hidden = None
        for members in length_buckets(lengths.tolist()):
            rows = torch.tensor(members, device=packed_ids.device)
            offsets = torch.arange(int(lengths[rows[0]]), device=packed_ids.device)
            real = offsets[None] < lengths[rows][:, None]
            index = (starts[rows][:, None] + offsets[None])[real]
            input_ids = torch.full(real.shape, self.config.text_config.pad_token_id, dtype=packed_ids.dtype, device=packed_ids.device)
            input_ids[real] = packed_ids[index]
            states = self.text_model(input_ids=input_ids, attention_mask=real.long(), **kwargs).last_hidden_state
            if hidden is None:
                hidden = states.new_empty(len(packed_ids), states.shape[-1])
            hidden[index] = states[real]
        return hidden

    def get_image_features(self, pixel_values: torch.Tensor, check_inputs: bool = True, **kwargs) -> BaseModelOutputWithPooling:
        """Image embeddings: the CLS token after the final norm, no projection, un-normalised.

        `pixel_values` may also be the image processor's `BatchFeature` (or any mapping with
        `pixel_values`), passed positionally as release code does; `**image_processor(...)` works too.
        `check_inputs=False` skips the NaN / infinity check (a host sync on accelerators): `encode_image` and the
        trainer pass the processor's pixels, whose decoder refuses non-finite arrays."""
        pixel_values = unpack_pixel_values(pixel_values)
        check_pixel_values(pixel_values, check_inputs)
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
            raise ValueError(self._processor_error or (
                "this model has no processor: load it with from_pretrained from a folder that holds one, "
                "or assign one: `model.processor = CLIPProcessor(image_processor=JinaCLIPImageProcessor(...), "
                "tokenizer=PreTrainedTokenizerFast(tokenizer_file='tokenizer.json', ...))`"
            ))
        return self._processor

    @processor.setter
    def processor(self, value) -> None:
        if value is not None:
            check_processor(value, self.config)
        self._processor = value
        self._processor_error = None

    def get_tokenizer(self):
        """The tokenizer saved with the model (the release's `get_tokenizer()`): `self.processor.tokenizer`."""
        return self.processor.tokenizer

    def get_preprocess(self):
        """The image processor saved with the model (the release's `get_preprocess()`):
        `self.processor.image_processor`, which also decodes paths, URLs, bytes and arrays."""
        return self.processor.image_processor

    # The release's encode API: these functions of encoding_jina_clip.py (the model is their first argument), as
    # methods. See them for the arguments.
    encode_text = encode_text
    encode_image = encode_image


__all__ = [
    "JinaBertModel",
    "JinaCLIPModel",
    "JinaCLIPVisionModel",
    "JinaCLIPPreTrainedModel",
    "JinaCLIPOutput",
    "build_text_model",
]
