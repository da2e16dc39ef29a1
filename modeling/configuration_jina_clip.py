"""Configuration of jina-clip-v2 (Koukounas et al., 2024) and of its predecessor jina-clip-v1.

One `JinaCLIPConfig` describes both; the text tower's type (`text_config.model_type`) tells them apart:

- jina-clip-v2: `jina_embeddings_v3`, transformers' own `JinaEmbeddingsV3Config` (XLM-R with rotary
  positions), an EVA02-L/14 vision tower at 512 px, 1024-d, Matryoshka-trained, a query instruction;
- jina-clip-v1: `jina_bert`, `JinaBertConfig` (BERT with ALiBi and a gated MLP), an EVA02-B/16 vision tower
  at 224 px, 768-d, no Matryoshka training, no instructions.

Whatever a config does not give takes the defaults of its version, so `JinaCLIPConfig()` is the released
jina-clip-v2 (865M parameters: text 561M, vision 304M) and `JinaCLIPConfig(text_config={"model_type":
"jina_bert"})` the released jina-clip-v1 (223M: text 137M, vision 86M).

Values are checked when the config is made, before any model is built: every size is an int inside a sane range
(`JinaCLIPVisionConfig.value_ranges`, `JinaCLIPConfig.text_value_ranges`: far above both releases, far below what a
hostile config.json would need to allocate terabytes or build for hours), and the model the config describes has at
most `JinaCLIPConfig.max_parameters` parameters (10 billion). A deliberate larger model sets those class attributes
(e.g. `JinaCLIPConfig.max_parameters = 4 * 10**10`) before loading.

This file is Hub remote code: it imports only torch/transformers and nothing of this repository.
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

from .configuration_jina_bert import JinaBertConfig

# The release's only instruction (config.json: text_config.hf_model_config_kwargs.task_instructions).
RETRIEVAL_QUERY_INSTRUCTION = "Represent the query for retrieving evidence documents: "

# Text tower types (text_config.model_type) and their config classes; a text_config without a model_type
# is jina-clip-v2's.
TEXT_CONFIG_CLASSES = {"jina_embeddings_v3": JinaEmbeddingsV3Config, "jina_bert": JinaBertConfig}
V2_MATRYOSHKA_DIMENSIONS = (32, 64, 128, 256, 512, 768, 1024)
# jina-clip-v1's vision tower: EVA02-B/16 at 224 px (docs/jina-clip-v1-release.md, section 1.3). Its RoPE
# is not interpolated (config.json: intp_freq false): positions are the plain patch indices of the 14x14
# grid, i.e. rope_grid_size 14 (v2 scales to the 16x16 EVA02 pretraining grid). The rest is as v2's.
V1_VISION_DEFAULTS = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 2048,  # int(768 * 2.6667)
    "image_size": 224,
    "patch_size": 16,
    "rope_grid_size": 14,
}

# Keys that only the original jinaai/jina-clip-v1 / -v2 config.json has. Their weights are laid out
# differently (fused Wqkv, LoRA parametrizations), so such a folder must be converted, not loaded.
_RELEASE_TOP_LEVEL_KEYS = ("use_text_flash_attn", "use_vision_xformers", "add_projections", "initializer_factor")
_RELEASE_TEXT_KEYS = ("hf_model_name_or_path", "hf_model_config_kwargs", "pooler_type", "default_lora_task")
_RELEASE_VISION_KEYS = ("width", "layers", "head_width", "x_attention", "naive_swiglu", "pt_hw_seq_len")
CONVERTER_HINT = (
    "This is a config.json of the original jinaai/jina-clip-v1 or jina-clip-v2 release, whose weights use "
    "another layout (fused Wqkv; LoRA parametrizations in v2). Convert the snapshot first: "
    "`jina-clip convert --from <release snapshot folder> --out <folder>` (the `jina-clip-v2` package; also "
    "`python -m jina_clip_v2.hub.convert`), then load <folder>."
)


def check_value_ranges(config, ranges: dict[str, tuple[int, int]], where: str, setting: str) -> None:
    """Every `name` of `ranges` on `config` an int (not a bool or float) in [low, high]; a ValueError naming the
    field, its value, the range and the `setting` that holds the range otherwise."""
    for name, (low, high) in ranges.items():
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}.{name} must be an int, got {value!r} ({type(value).__name__})")
        if not low <= value <= high:
            raise ValueError(
                f"{where}.{name}={value} is outside [{low}, {high}], the range this model accepts ({setting} "
                "holds it: widen it to load a deliberately larger model)"
            )


class JinaCLIPVisionConfig(PreTrainedConfig):
    r"""EVA02 vision tower. Defaults are EVA02-L/14 at 512 px as in jina-clip-v2 (jina-clip-v1's B/16 at
    224 px: `V1_VISION_DEFAULTS`).

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
            position i on a grid of side G is i * rope_grid_size / G (release: `pt_hw_seq_len`, `intp_freq`;
            jina-clip-v1 does not interpolate: 14, its own 224 px / 16 grid, so positions are plain indices).
        rope_theta: RoPE frequency base (10000).
        layer_norm_eps: epsilon of every LayerNorm in the tower (1e-6).
        patch_dropout: fraction of patch tokens dropped at train time (release: 0.1); identity in eval.
        drop_path_rate: stochastic depth, linearly increasing over blocks; identity in eval.
        initializer_range: std of the truncated normal used for fresh weights.
    """

    model_type = "jina_clip_vision"
    base_config_key = "vision_config"
    # Sane ranges (checked before anything is allocated; EVA02-L/14 at 512 px is 1024 / 24 / 16 / 2730 / 512 / 14).
    value_ranges = {
        "hidden_size": (1, 16384),
        "num_hidden_layers": (1, 512),
        "num_attention_heads": (1, 1024),
        "intermediate_size": (1, 131072),
        "image_size": (1, 4096),
        "patch_size": (1, 1024),
        "num_channels": (1, 16),
        "rope_grid_size": (1, 4096),
    }

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
        check_value_ranges(self, self.value_ranges, "vision_config", "JinaCLIPVisionConfig.value_ranges")
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
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"vision drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    def num_parameters_estimate(self) -> int:
        """The tower's parameter count from the config alone (blocks, patch embedding, position table)."""
        width, inner = self.hidden_size, self.intermediate_size
        block = 4 * width * width + 3 * width * inner + 8 * width + 2 * inner
        patch = self.num_channels * self.patch_size**2 * width + width
        return self.num_hidden_layers * block + patch + (self.num_positions + 3) * width


class JinaCLIPConfig(PreTrainedConfig):
    r"""jina-clip-v2 or jina-clip-v1: text and vision towers embedding into one space.

    Args:
        text_config: the text tower (config or dict). Its `model_type` picks the version: "jina_embeddings_v3"
            (default; `JinaEmbeddingsV3Config`, jina-clip-v2) or "jina_bert" (`JinaBertConfig`, jina-clip-v1).
        vision_config: `JinaCLIPVisionConfig` (or dict) of the EVA02 vision tower; keys a dict leaves out take
            the version's defaults (v2: L/14 at 512 px, v1: B/16 at 224 px).
        projection_dim: embedding width (default: the text tower's width). The releases have no projection
            layers (identity), so both towers' hidden sizes must equal it.
        logit_scale_init_value: initial log inverse temperature, ln(1 / 0.07) = 2.6592 as in CLIP.
        matryoshka_dimensions: the prefix lengths embeddings may be truncated to (Matryoshka training, v2
            paper section 3.4); the largest must equal `projection_dim`. An empty list: the model was not
            trained for truncation (jina-clip-v1, the default there), and `truncate_dim` is refused.
        truncate_dim: default truncation of `encode_text` / `encode_image` (None: full width).
        task_instructions: text prefixes per task; `encode_text(task=...)` prepends them (v2: the release's
            "retrieval.query" instruction; v1: none).
        max_text_length: default `max_length` of `encode_text` (the releases truncate at 512 tokens).
    """

    model_type = "jina_clip"
    # Sane ranges of the text tower's sizes (either version; jina-embeddings-v3 is 250002 / 1024 / 24 / 16 / 4096 /
    # 8194 / 1), of `max_text_length`, and of the whole model's parameter count (see the module docstring).
    text_value_ranges = {
        "vocab_size": (1, 2**22),
        "hidden_size": (1, 16384),
        "num_hidden_layers": (1, 512),
        "num_attention_heads": (1, 1024),
        "intermediate_size": (1, 131072),
        "max_position_embeddings": (1, 2**20),
        "type_vocab_size": (1, 1024),
    }
    max_text_length_range = (1, 2**20)
    max_parameters = 10**10
    # transformers reads only the keys (to pass attn_implementation on); the text class depends on the version.
    sub_configs = {"text_config": JinaEmbeddingsV3Config, "vision_config": JinaCLIPVisionConfig}

    def __init__(
        self,
        text_config: JinaEmbeddingsV3Config | JinaBertConfig | dict | None = None,
        vision_config: JinaCLIPVisionConfig | dict | None = None,
        projection_dim: int | None = None,
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
        if text_config is None or isinstance(text_config, dict):
            text_config = dict(text_config or {})
            text_type = text_config.get("model_type", JinaEmbeddingsV3Config.model_type)
            if text_type not in TEXT_CONFIG_CLASSES:
                raise ValueError(
                    f"unknown text tower type text_config.model_type={text_type!r}; expected one of "
                    f"{sorted(TEXT_CONFIG_CLASSES)} (jina_embeddings_v3: jina-clip-v2, jina_bert: jina-clip-v1)"
                )
            text_config = TEXT_CONFIG_CLASSES[text_type](**text_config)
        v1 = text_config.model_type == JinaBertConfig.model_type
        if vision_config is None or isinstance(vision_config, dict):
            vision_config = JinaCLIPVisionConfig(**{**(V1_VISION_DEFAULTS if v1 else {}), **(vision_config or {})})
        self.text_config = text_config
        self.vision_config = vision_config
        self.projection_dim = projection_dim if projection_dim is not None else text_config.hidden_size
        self.logit_scale_init_value = logit_scale_init_value
        if matryoshka_dimensions is not None:
            self.matryoshka_dimensions = list(matryoshka_dimensions)
        elif v1:
            self.matryoshka_dimensions = []  # jina-clip-v1 was not trained for truncation
        else:
            dims = [d for d in V2_MATRYOSHKA_DIMENSIONS if d < self.projection_dim]
            self.matryoshka_dimensions = dims + [self.projection_dim]
        self.truncate_dim = truncate_dim
        if task_instructions is not None:
            self.task_instructions = dict(task_instructions)
        else:
            self.task_instructions = {} if v1 else {"retrieval.query": RETRIEVAL_QUERY_INSTRUCTION}
        self.max_text_length = max_text_length
        super().__init__(**kwargs)
        self.validate_shapes()

    @property
    def version(self) -> str:
        """"v1" (JinaBERT text tower) or "v2" (jina-embeddings-v3 text tower)."""
        return "v1" if self.text_config.model_type == JinaBertConfig.model_type else "v2"

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # transformers would fail on `cls(**config_dict)` with "argument after ** must be a mapping".
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"a jina-clip config.json must hold a JSON object of settings, got a JSON {type(config_dict).__name__}"
            )
        return super().from_dict(config_dict, **kwargs)

    def validate_ranges(self) -> None:
        """Sizes, lengths, instructions and the parameter count (see the module docstring); before any allocation."""
        check_value_ranges(self.text_config, self.text_value_ranges, "text_config", "JinaCLIPConfig.text_value_ranges")
        self.vision_config.validate_shapes()  # its own ranges (a config object given as is was not checked yet)
        check_value_ranges(self, {"max_text_length": self.max_text_length_range}, "config", "JinaCLIPConfig.max_text_length_range")
        widths = {"projection_dim": self.text_value_ranges["hidden_size"], "truncate_dim": self.text_value_ranges["hidden_size"]}
        check_value_ranges(self, widths, "config", "JinaCLIPConfig.text_value_ranges['hidden_size']")
        dims = self.matryoshka_dimensions
        if not isinstance(dims, list) or any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
            raise ValueError(f"matryoshka_dimensions must be a list of ints, got {dims!r}")
        instructions = self.task_instructions
        if not isinstance(instructions, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in instructions.items()):
            bad = instructions if not isinstance(instructions, dict) else {k: v for k, v in instructions.items() if not (isinstance(k, str) and isinstance(v, str))}
            raise ValueError(f"task_instructions must map task names to instruction strings, got {bad!r}")
        text = self.text_config
        width, inner = text.hidden_size, text.intermediate_size
        ffn = 3 * width * inner if self.version == "v1" else 2 * width * inner  # v1's gated unit: two input halves
        text_params = (text.vocab_size + text.type_vocab_size) * width + text.num_hidden_layers * (4 * width * width + ffn)
        total = text_params + self.vision_config.num_parameters_estimate()
        if total > self.max_parameters:
            raise ValueError(
                f"this config describes a model of about {total / 1e9:.1f} billion parameters (text {text_params / 1e9:.2f}B, "
                f"vision {(total - text_params) / 1e9:.2f}B), more than max_parameters={self.max_parameters:.3g}; "
                "jina-clip-v2 has 0.87 billion (set JinaCLIPConfig.max_parameters to build a deliberately larger model)"
            )

    def validate_shapes(self) -> None:
        self.validate_ranges()
        text_width, vision_width = self.text_config.hidden_size, self.vision_config.hidden_size
        if not text_width == vision_width == self.projection_dim:
            raise ValueError(
                "jina-clip has identity projections, so text hidden_size, vision hidden_size and "
                f"projection_dim must be equal; got {text_width}, {vision_width} and {self.projection_dim}"
            )
        dims = self.matryoshka_dimensions
        if dims and (sorted(set(dims)) != list(dims) or dims[0] < 1 or dims[-1] != self.projection_dim):
            raise ValueError(
                f"matryoshka_dimensions must be strictly increasing positive ints ending at projection_dim "
                f"({self.projection_dim}), or empty (not trained for truncation); got {dims}"
            )
        if self.truncate_dim is not None and not dims:
            raise ValueError(
                f"truncate_dim={self.truncate_dim}, but this model was not trained with Matryoshka representation "
                "learning (matryoshka_dimensions is empty, as jina-clip-v1): its embeddings cannot be truncated"
            )
        if self.truncate_dim is not None and self.truncate_dim not in dims:
            raise ValueError(f"truncate_dim={self.truncate_dim} is not one of matryoshka_dimensions {dims}")


# The text backbones the releases name in text_config.hf_model_name_or_path.
_V1_BACKBONES = ("jina-bert",)  # jinaai/jina-bert-flash-implementation (jina-clip-v1)
_V2_BACKBONES = ("jina-embeddings-v3", "xlm-roberta")  # jinaai/jina-embeddings-v3 (jina-clip-v2)


def release_version(release: dict) -> str:
    """"v1" or "v2": which release a jinaai/jina-clip `config.json` belongs to, from the text backbone it
    names (`text_config.hf_model_name_or_path`; jina-clip-v2 when it names none)."""
    name = str((release.get("text_config") or {}).get("hf_model_name_or_path") or "jinaai/jina-embeddings-v3")
    if any(part in name for part in _V1_BACKBONES):
        return "v1"
    if any(part in name for part in _V2_BACKBONES):
        return "v2"
    raise ValueError(
        f"release config names the text backbone {name!r}; known are jinaai/jina-bert-flash-implementation "
        "(jina-clip-v1) and jinaai/jina-embeddings-v3 (jina-clip-v2)"
    )


def release_config_to_kwargs(release: dict) -> dict:
    """Map the original jinaai/jina-clip-v1 or -v2 `config.json` onto `JinaCLIPConfig` keyword arguments.

    The releases' text tower hyper-parameters are not in their config.json: they come at load time from the
    backbone repository (v2: jinaai/jina-embeddings-v3, whose values are `JinaEmbeddingsV3Config`'s defaults;
    v1: jinaai/jina-bert-flash-implementation, whose values are `JinaBertConfig`'s defaults). Only the fields
    that change shapes or behaviour are read; anything that would need code we do not have (projection
    layers, a pooler other than mean, EVA02 variants without RoPE / SwiGLU / sub-LN) is refused. A key the
    config leaves out takes the released model's value.
    """
    version = release_version(release)
    text, vision = dict(release.get("text_config") or {}), dict(release.get("vision_config") or {})
    if release.get("add_projections"):
        raise ValueError("release config has add_projections=true; this package implements identity projections")
    if text.get("pooler_type", "mean_pooler") != "mean_pooler" or text.get("proj_type") not in (None, "identity"):
        raise ValueError(f"unsupported release text head: pooler_type={text.get('pooler_type')}, proj_type={text.get('proj_type')}")
    if vision.get("proj_type") not in (None, "identity") or vision.get("post_norm") or vision.get("ls_init_value"):
        raise ValueError("unsupported release vision options (proj_type / post_norm / ls_init_value)")
    if not (vision.get("rope_embeddings", True) and vision.get("naive_swiglu", True) and vision.get("subln", True)):
        raise ValueError("release vision config without rope_embeddings/naive_swiglu/subln is not EVA02 as used here")
    if not vision.get("qkv_bias", True):
        raise ValueError("release vision config has qkv_bias=false; the EVA02 tower here has q and v biases")
    hf_kwargs = dict(text.get("hf_model_config_kwargs") or {})
    default_width = 768 if version == "v1" else 1024
    width = int(vision.get("width", default_width))
    head_width = int(vision.get("head_width", 64))
    text_width = int(text.get("embed_dim", default_width))
    image_size = int(vision.get("image_size", 224 if version == "v1" else 512))
    patch_size = int(vision.get("patch_size", 16 if version == "v1" else 14))
    rope_grid = int(vision.get("pt_hw_seq_len", 16))
    if vision.get("intp_freq", True) is False and rope_grid != image_size // patch_size:
        # Without intp_freq the release builds its RoPE table for a pt_hw_seq_len grid and fails on any other.
        raise ValueError(
            f"release vision config has intp_freq=false with pt_hw_seq_len={rope_grid}, but the patch grid is "
            f"{image_size // patch_size}x{image_size // patch_size}; the release itself cannot run it"
        )
    if version == "v1":
        text_config = {"model_type": "jina_bert", "hidden_size": text_width}
        instructions = dict(hf_kwargs.get("task_instructions") or {})
    else:
        text_config = {"hidden_size": text_width}
        if hf_kwargs.get("rotary_emb_base") is not None:
            text_config["rope_parameters"] = {"rope_type": "default", "rope_theta": float(hf_kwargs["rotary_emb_base"])}
        instructions = dict(hf_kwargs.get("task_instructions") or {"retrieval.query": RETRIEVAL_QUERY_INSTRUCTION})
    return {
        "text_config": text_config,
        "vision_config": {
            "hidden_size": width,
            "num_hidden_layers": int(vision.get("layers", 12 if version == "v1" else 24)),
            "num_attention_heads": width // head_width,
            "intermediate_size": int(width * float(vision.get("mlp_ratio", 2.6667))),
            "image_size": image_size,
            "patch_size": patch_size,
            "rope_grid_size": rope_grid,
            "patch_dropout": float(vision.get("patch_dropout", 0.0)),
            "drop_path_rate": float(vision.get("drop_path_rate") or 0.0),
        },
        "projection_dim": int(release.get("projection_dim", text_width)),
        "logit_scale_init_value": float(release.get("logit_scale_init_value", 2.6592)),
        "matryoshka_dimensions": release.get("matryoshka_dimensions") or None,
        "truncate_dim": release.get("truncate_dim"),
        "task_instructions": instructions,
    }


__all__ = [
    "JinaBertConfig",
    "check_value_ranges",
    "JinaCLIPConfig",
    "JinaCLIPVisionConfig",
    "RETRIEVAL_QUERY_INSTRUCTION",
    "release_config_to_kwargs",
    "release_version",
]
