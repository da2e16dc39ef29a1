"""Configuration of jina-clip-v2 (Koukounas et al., 2024): an XLM-R text tower with rotary positions
(transformers' own `JinaEmbeddingsV3Config`) and an EVA02-L/14 vision tower, both 1024-d.

This file is Hub remote code: it imports only torch/transformers and nothing of this repository.
The defaults reproduce the released checkpoint (865M parameters: text 561M, vision 304M).
"""

from __future__ import annotations

# The first transformers release with `JinaEmbeddingsV3` (the text tower) and `CLIPImageProcessorPil` (the
# base of the image processor); older ones get an error that says what to install, not a bare ImportError.
MIN_TRANSFORMERS_VERSION = "5.4"


def transformers_version_error() -> ImportError:
    import transformers

    return ImportError(
        f"jina-clip-v2 needs transformers>={MIN_TRANSFORMERS_VERSION} (the first release with JinaEmbeddingsV3), "
        f"but transformers {transformers.__version__} is installed: pip install -U 'transformers>={MIN_TRANSFORMERS_VERSION}'"
    )


try:
    from transformers import JinaEmbeddingsV3Config, PreTrainedConfig
except ImportError as err:
    raise transformers_version_error() from err

# The release's only instruction (config.json: text_config.hf_model_config_kwargs.task_instructions).
RETRIEVAL_QUERY_INSTRUCTION = "Represent the query for retrieving evidence documents: "

# Keys that only the original jinaai/jina-clip-v2 config.json has. Its weights are laid out differently
# (LoRA parametrizations, fused Wqkv), so such a folder must be converted, not loaded.
_RELEASE_TOP_LEVEL_KEYS = ("use_text_flash_attn", "use_vision_xformers", "add_projections", "initializer_factor")
_RELEASE_TEXT_KEYS = ("hf_model_name_or_path", "hf_model_config_kwargs", "pooler_type", "default_lora_task")
_RELEASE_VISION_KEYS = ("width", "layers", "head_width", "x_attention", "naive_swiglu", "pt_hw_seq_len")
CONVERTER_HINT = (
    "This is a config.json of the original jinaai/jina-clip-v2 release, whose weights use another layout "
    "(LoRA parametrizations, fused Wqkv). Convert the snapshot first: "
    "`jina-clip convert --from <release snapshot folder> --out <folder>` (the `jina-clip-v2` package; also "
    "`python -m jina_clip_v2.hub.convert`), then load <folder>."
)


class JinaCLIPVisionConfig(PreTrainedConfig):
    r"""EVA02 vision tower. Defaults are EVA02-L/14 at 512 px as in jina-clip-v2.

    Args:
        hidden_size: width of the transformer (release: `width` 1024).
        num_hidden_layers: number of blocks (release: `layers` 24).
        num_attention_heads: attention heads (release: `width // head_width` = 16).
        intermediate_size: SwiGLU hidden width (release: `int(width * mlp_ratio)` = int(1024 * 2.6667) = 2730).
        image_size: input resolution. Changing it between stages (224 -> 384 -> 512) resamples the position
            table when weights trained at another size are loaded.
        patch_size: side of the square patches (14).
        num_channels: input channels (3).
        rope_grid_size: side of the patch grid RoPE positions are scaled to (EVA02 pretraining grid, 16):
            position i on a grid of side G is i * rope_grid_size / G (release: `pt_hw_seq_len`, `intp_freq`).
        rope_theta: RoPE frequency base (10000).
        layer_norm_eps: epsilon of every LayerNorm in the tower (1e-6).
        patch_dropout: fraction of patch tokens dropped at train time (release: 0.1); identity in eval.
        drop_path_rate: stochastic depth, linearly increasing over blocks; identity in eval.
        initializer_range: std of the truncated normal used for fresh weights.
    """

    model_type = "jina_clip_vision"
    base_config_key = "vision_config"

    def __init__(
        self,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        intermediate_size: int = 2730,
        image_size: int = 512,
        patch_size: int = 14,
        num_channels: int = 3,
        rope_grid_size: int = 16,
        rope_theta: float = 10000.0,
        layer_norm_eps: float = 1e-6,
        patch_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if any(key in kwargs for key in _RELEASE_VISION_KEYS):
            raise ValueError(CONVERTER_HINT)
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.rope_grid_size = rope_grid_size
        self.rope_theta = rope_theta
        self.layer_norm_eps = layer_norm_eps
        self.patch_dropout = patch_dropout
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_shapes()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        # The patch convolution floors: 512 px / 14 px -> a 36x36 grid, the last 8 pixel rows/columns unused.
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid_size**2 + 1  # patches + CLS (1297 at 512 px)

    def validate_shapes(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        # 2D RoPE splits each head in two halves (rows, columns), each rotated in pairs.
        if self.head_dim % 4:
            raise ValueError(f"vision head_dim ({self.head_dim}) must be a multiple of 4 for 2D rotary embeddings")
        if self.image_size < self.patch_size:
            raise ValueError(f"vision image_size ({self.image_size}) is smaller than patch_size ({self.patch_size})")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"vision patch_dropout must be in [0, 1), got {self.patch_dropout}")


class JinaCLIPConfig(PreTrainedConfig):
    r"""jina-clip-v2: text and vision towers embedding into one space.

    Args:
        text_config: `JinaEmbeddingsV3Config` (or dict) of the text tower (jina-embeddings-v3 backbone).
        vision_config: `JinaCLIPVisionConfig` (or dict) of the EVA02 vision tower.
        projection_dim: embedding width. The release has no projection layers (identity), so both towers'
            hidden sizes must equal it.
        logit_scale_init_value: initial log inverse temperature, ln(1 / 0.07) = 2.6592 as in CLIP.
        matryoshka_dimensions: the prefix lengths embeddings may be truncated to (Matryoshka training,
            paper section 3.4). The largest must equal `projection_dim`.
        truncate_dim: default truncation of `encode_text` / `encode_image` (None: full width).
        task_instructions: text prefixes per task; `encode_text(task=...)` prepends them.
        max_text_length: default `max_length` of `encode_text` (the release truncates at 512 tokens).
    """

    model_type = "jina_clip"
    sub_configs = {"text_config": JinaEmbeddingsV3Config, "vision_config": JinaCLIPVisionConfig}

    def __init__(
        self,
        text_config: JinaEmbeddingsV3Config | dict | None = None,
        vision_config: JinaCLIPVisionConfig | dict | None = None,
        projection_dim: int = 1024,
        logit_scale_init_value: float = 2.6592,
        matryoshka_dimensions: list[int] | None = None,
        truncate_dim: int | None = None,
        task_instructions: dict[str, str] | None = None,
        max_text_length: int = 512,
        **kwargs,
    ):
        if any(key in kwargs for key in _RELEASE_TOP_LEVEL_KEYS) or (
            isinstance(text_config, dict) and any(key in text_config for key in _RELEASE_TEXT_KEYS)
        ):
            raise ValueError(CONVERTER_HINT)
        if text_config is None:
            text_config = JinaEmbeddingsV3Config()
        elif isinstance(text_config, dict):
            text_config = JinaEmbeddingsV3Config(**text_config)
        if vision_config is None:
            vision_config = JinaCLIPVisionConfig()
        elif isinstance(vision_config, dict):
            vision_config = JinaCLIPVisionConfig(**vision_config)
        self.text_config = text_config
        self.vision_config = vision_config
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.matryoshka_dimensions = (
            list(matryoshka_dimensions)
            if matryoshka_dimensions is not None
            else [d for d in (32, 64, 128, 256, 512, 768, 1024) if d < projection_dim] + [projection_dim]
        )
        self.truncate_dim = truncate_dim
        self.task_instructions = (
            dict(task_instructions)
            if task_instructions is not None
            else {"retrieval.query": RETRIEVAL_QUERY_INSTRUCTION}
        )
        self.max_text_length = max_text_length
        super().__init__(**kwargs)
        self.validate_shapes()

    def validate_shapes(self) -> None:
        text_width, vision_width = self.text_config.hidden_size, self.vision_config.hidden_size
        if not text_width == vision_width == self.projection_dim:
            raise ValueError(
                "jina-clip-v2 has identity projections, so text hidden_size, vision hidden_size and "
                f"projection_dim must be equal; got {text_width}, {vision_width} and {self.projection_dim}"
            )
        dims = self.matryoshka_dimensions
        if not dims or sorted(set(dims)) != list(dims) or dims[0] < 1 or dims[-1] != self.projection_dim:
            raise ValueError(
                f"matryoshka_dimensions must be strictly increasing positive ints ending at projection_dim "
                f"({self.projection_dim}); got {dims}"
            )
        if self.truncate_dim is not None and self.truncate_dim not in dims:
            raise ValueError(f"truncate_dim={self.truncate_dim} is not one of matryoshka_dimensions {dims}")


def release_config_to_kwargs(release: dict) -> dict:
    """Map the original jinaai/jina-clip-v2 `config.json` onto `JinaCLIPConfig` keyword arguments.

    The release's text tower hyper-parameters are not in its config.json: they come from
    jinaai/jina-embeddings-v3 at load time, and those are `JinaEmbeddingsV3Config`'s defaults. Only the
    fields that change shapes or behaviour are read; anything that would need code we do not have
    (projection layers, a pooler other than mean) is refused.
    """
    text, vision = dict(release.get("text_config") or {}), dict(release.get("vision_config") or {})
    if release.get("add_projections"):
        raise ValueError("release config has add_projections=true; this package implements identity projections")
    if text.get("pooler_type", "mean_pooler") != "mean_pooler" or text.get("proj_type") not in (None, "identity"):
        raise ValueError(f"unsupported release text head: pooler_type={text.get('pooler_type')}, proj_type={text.get('proj_type')}")
    if vision.get("proj_type") not in (None, "identity") or vision.get("post_norm") or vision.get("ls_init_value"):
        raise ValueError("unsupported release vision options (proj_type / post_norm / ls_init_value)")
    if not (vision.get("rope_embeddings", True) and vision.get("naive_swiglu", True) and vision.get("subln", True)):
        raise ValueError("release vision config without rope_embeddings/naive_swiglu/subln is not EVA02 as used here")
    hf_kwargs = dict(text.get("hf_model_config_kwargs") or {})
    width = int(vision.get("width", 1024))
    head_width = int(vision.get("head_width", 64))
    text_width = int(text.get("embed_dim", 1024))
    text_config = {"hidden_size": text_width}
    if hf_kwargs.get("rotary_emb_base") is not None:
        text_config["rope_parameters"] = {"rope_type": "default", "rope_theta": float(hf_kwargs["rotary_emb_base"])}
    instructions = dict(hf_kwargs.get("task_instructions") or {"retrieval.query": RETRIEVAL_QUERY_INSTRUCTION})
    return {
        "text_config": text_config,
        "vision_config": {
            "hidden_size": width,
            "num_hidden_layers": int(vision.get("layers", 24)),
            "num_attention_heads": width // head_width,
            "intermediate_size": int(width * float(vision.get("mlp_ratio", 2.6667))),
            "image_size": int(vision.get("image_size", 512)),
            "patch_size": int(vision.get("patch_size", 14)),
            "rope_grid_size": int(vision.get("pt_hw_seq_len", 16)),
            "patch_dropout": float(vision.get("patch_dropout", 0.0)),
            "drop_path_rate": float(vision.get("drop_path_rate") or 0.0),
        },
        "projection_dim": int(release.get("projection_dim", text_width)),
        "logit_scale_init_value": float(release.get("logit_scale_init_value", 2.6592)),
        "matryoshka_dimensions": release.get("matryoshka_dimensions") or None,
        "truncate_dim": release.get("truncate_dim"),
        "task_instructions": instructions,
    }


__all__ = ["JinaCLIPConfig", "JinaCLIPVisionConfig", "release_config_to_kwargs", "RETRIEVAL_QUERY_INSTRUCTION"]
