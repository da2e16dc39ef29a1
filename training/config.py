"""The stage config: its schema (the typed dataclasses below, one per YAML section) and how it is read.

A stage is configured by one YAML file (``training/configs/*.yaml``), then ``key=value`` overrides with
dotted keys whose values are YAML (``train.steps=10``, ``optim.text_lr=1e-4``, ``peft=null``,
``data.text.sources.0.path=org/pairs``). A file may hold a ``stages: {1: {...}, 2: {...}}`` map of
per-stage blocks merged in when ``stage=N`` is chosen (the tiny CPU config runs all three stages from one
file). Reading goes through ``jina_clip_v2._config`` (OmegaConf structured configs; the evaluation suites
and the benchmarks read YAML the same way): unknown keys, values of the wrong type, missing required
values and values out of range are a ``ConfigError`` naming the dotted key and the value.

Batch sizes are global (Table 6 gives them for 8 GPUs); every process draws ``batch_size /
num_processes`` examples.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jina_clip_v2._config import (
    ConfigError,
    at_least,
    between,
    build,
    checked,
    each,
    load_yaml,
    non_negative,
    one_of,
    parse_overrides,
    positive,
    to_dict,
    to_yaml,
)
from jina_clip_v2.training.sources import SourceConfig

__all__ = [
    "ConfigError",
    "DataSection",
    "GradCacheSection",
    "LossSection",
    "ModelSection",
    "OptimSection",
    "PeftSection",
    "ResolutionSwitch",
    "StageConfig",
    "TaskSection",
    "TrainSection",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
    "parse_overrides",
    "resolve_path",
    "tracker_config",
    "validate_config",
]

TEXT_KINDS = ("text_pairs", "text_triplets")
IMAGE_TEXT_KINDS = ("image_text_short", "image_text_long")
# The folder that holds training/ and data/: the repository root in a checkout, site-packages/jina_clip_v2
# when installed (the package data mirrors the checkout's layout).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
ASSETS_PREFIX = "assets://"


@dataclass
class ModelSection:
    init_from: str | None = None
    """Folder of a saved model (the previous stage's ``output_dir`` or its ``model/``); None: fresh init
    from ``config``."""
    config: dict[str, Any] | None = None
    """``JinaCLIPConfig`` keyword arguments for a fresh model (``text_config``, ``vision_config``, ...)."""
    processor_from: str | None = None
    """Folder with the tokenizer (a processor folder or a bare tokenizer); default: ``init_from``.
    ``assets://<name>`` is a folder fetched by ``jina-clip fetch-assets`` (``$JINA_CLIP_ASSETS/<name>``)."""
    image_size: int | None = checked(None, check=at_least(1))
    """Resolution at the start of the stage (resamples the position table); None: the model's own."""
    attn_implementation: str | None = None
    """"sdpa", "eager", "flash_attention_2", ... for both towers; None: transformers' default."""
    gradient_checkpointing: bool = False


@dataclass
class TaskSection:
    kind: str
    """text_pairs | text_triplets (data.text); image_text_short | image_text_long (data.image_text)."""
    sources: list[SourceConfig]
    """One or more sources, interleaved by ``weight``; ``path: demo://<name>`` is the bundled demo data."""
    batch_size: int = checked(check=at_least(1))
    """Global batch size (all processes together); must be divisible by the number of processes."""
    max_length: int = checked(77, check=at_least(1))
    """Tokens per text (longer ones are truncated)."""
    num_negatives: int = checked(7, check=at_least(1))
    shuffle_buffer: int = checked(1000, check=non_negative)
    seed: int = 0
    num_threads: int = checked(0, check=non_negative)
    """Threads decoding and cropping images (0: in the training loop)."""
    exact_resume: bool = True
    query_instruction: str | None = None
    """Text prepended to every query of the text task (``data.text`` only). The export records it as the
    model's ``task_instructions["retrieval.query"]`` (``""`` when null), so ``encode_text(task=
    "retrieval.query")``, Sentence-Transformers' query prompt and the evaluation add what training added.
    The paper does not say its stages used one; null (none) is the shipped configs' choice."""


@dataclass
class DataSection:
    text: TaskSection
    image_text: TaskSection
    demo_dir: str | None = None
    """Where ``demo://`` sources are written (default ``<output_dir>/demo_data``); reused if present."""
    demo_langs: list[str] | None = None
    """Languages of the ``demo://`` sources (None: ``training.demo_data.DEMO_LANGS``, 12 languages)."""
    max_consecutive_skips: int = checked(1000, check=at_least(1))
    """Unusable examples in a row (undecodable image, empty text, too few negatives, bad row) from one
    source that stop the run with an error naming the source and the reasons."""
    on_bad_row: str = checked("skip", check=one_of("skip", "error"))
    """A row that cannot be read (invalid JSON, a field of the wrong type or missing): skip it with a
    warning naming the file and row, or stop with that error."""
    max_text_chars: int | None = checked(None, check=at_least(1))
    """Texts are cut at this many characters before they are tokenized (None: 64 per token of the task's
    ``max_length``, beyond what its tokens ever span): a huge text cannot take the tokenizer's memory."""
    max_fetch_failure_seconds: float = checked(120.0, check=positive)
    """Seconds that failed image URL fetches in a row may cost one source (``fetch_urls: true`` sources)
    before the run stops with an error naming it: a source of stalling URLs fails in minutes, not hours."""
    max_fetch_failure_rate: float = checked(0.9, check=between(0, 1))
    """Largest failed share of a source's image URL fetches, once it has made 100."""


@dataclass
class OptimSection:
    text_lr: float = checked(1e-4, check=positive)
    vision_lr: float = checked(2e-4, check=positive)
    text_layer_decay: float = checked(1.0, check=between(0, 1, low_open=True))
    vision_layer_decay: float = checked(1.0, check=between(0, 1, low_open=True))
    temperature_lr: float | None = checked(None, check=positive)
    """LR of the temperatures; None: the larger tower LR."""
    betas: list[float] = checked(check=each(between(0, 1, high_open=True), length=2), default_factory=lambda: [0.9, 0.98])
    eps: float = checked(1e-6, check=positive)
    weight_decay: float = checked(0.02, check=non_negative)
    warmup_steps: int = checked(0, check=non_negative)
    """Linear warmup steps (at most ``train.steps``)."""
    min_lr_ratio: float = checked(0.0, check=between(0, 1))
    """The cosine schedule ends at ``min_lr_ratio`` x the peak LR."""
    max_grad_norm: float | None = checked(None, check=positive)
    """Clip the global gradient norm to this; None: no clipping."""
    fused: bool | None = None


@dataclass
class LossSection:
    matryoshka_dims: list[int] | None = checked(None, check=each(at_least(1)))
    """Prefix widths the losses are summed over; None: the paper's (64..1024) that fit the width, plus
    the width itself."""
    text_temperature_init: float | None = checked(None, check=positive)
    image_text_temperature_init: float | None = checked(None, check=positive)
    """Initial temperatures; None: continue from the previous stage (``init_from``'s
    ``training_summary.json``; the image-text one else from the model's ``logit_scale``), else 0.07."""
    max_logit_scale: float = checked(100.0, check=positive)
    learn_temperature: bool = True
    gather: bool = True
    """Global in-batch negatives: score every row against the rows of all processes."""
    unified_batch: bool = False
    """Section 5.2 ablation: one InfoNCE over [images; queries; view A] vs [captions; documents; view B]
    with one shared temperature, instead of eq. 3."""
    ssl_views: bool = True
    """Unified batch: add the SimCLR-like pair of two augmented views of every image."""
    ssl_crop_scale: list[float] = checked(
        check=each(between(0, 1, low_open=True), length=2), default_factory=lambda: [0.25, 1.0]
    )


@dataclass
class GradCacheSection:
    enabled: bool = False
    # Samples per forward with activations, per process (the contrastive batch itself is unchanged). The
    # defaults fit the largest shapes of the paper (512 tokens, 512 px) in ~32 GiB of bf16 activations on an
    # 80 GB GPU by the arithmetic of training/README.md ("Memory"); 256 / 128 needed ~132 / ~213 GiB there.
    text_chunk_size: int = checked(32, check=at_least(1))
    image_chunk_size: int = checked(16, check=at_least(1))


@dataclass
class ResolutionSwitch:
    at_step: int = checked(check=non_negative)
    """Steps done before the switch (at most ``train.steps``)."""
    image_size: int = checked(check=at_least(1))


@dataclass
class PeftSection:
    tower: str = checked("text", check=one_of("text", "vision", "both"))
    r: int = checked(8, check=at_least(1))
    alpha: float = checked(16.0, check=positive)
    dropout: float = checked(0.0, check=between(0, 1, high_open=True))
    target_modules: list[str] | None = None
    """Module name suffixes to adapt; None: every linear layer of the adapted tower's blocks."""
    train_other_tower: bool = False
    """Also train the tower without adapters (fully); default: only adapters and temperatures train."""


@dataclass
class TrainSection:
    steps: int = checked(check=at_least(1))
    seed: int = 42
    mixed_precision: str = checked("bf16", check=one_of("bf16", "fp16", "no"))
    """bf16 | fp16 | no; on CPU always "no" (logged)."""
    deterministic: bool = False
    log_every: int = checked(10, check=at_least(1))
    checkpoint_every: int = checked(1000, check=at_least(1))
    keep_last: int = checked(3, check=at_least(1))
    """Complete checkpoints kept (older ones are deleted once a new one is complete)."""
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Trackers (``Accelerator(log_with=...)``); ones that are not installed are skipped."""
    resolution_switch: ResolutionSwitch | None = None
    grad_cache: GradCacheSection = field(default_factory=GradCacheSection)
    peak_tflops: float | None = checked(None, check=positive)
    """Peak TFLOP/s of one device for the MFU estimate; None: looked up from the GPU name."""
    progress_bar: bool = True
    cpu_threads: int | None = checked(None, check=at_least(1))
    """torch intra-op threads (``torch.set_num_threads``); None: torch's default. Tiny CPU runs use 1:
    their matmuls are too small to share, and spare cores then serve a second process."""
    export: bool = True
    export_dtype: str | None = None
    overwrite_output_dir: bool = False
    on_nonfinite_loss: str = checked("stop", check=one_of("stop", "skip"))
    """A step whose loss (or a part of it) is NaN / inf: ``stop`` the run with an error naming the step
    and the loss parts (checked at every log and before every checkpoint, so no checkpoint holds what
    followed; the last good one stays the newest), or ``skip`` that step's update (a check and a device
    sync every step; 100 skipped steps in a row stop the run)."""
    dump_batches: int = checked(0, check=non_negative)
    """Debug: save the first N steps' batches of every process under ``output_dir/debug``."""
    project_name: str = "jina-clip-v2"


@dataclass
class StageConfig:
    stage: int = checked(check=one_of(1, 2, 3))
    """Which stage of the paper's recipe this is (selects the file's ``stages`` block)."""
    output_dir: str
    """Holds ``model/`` (the export), ``checkpoints/``, ``metrics.jsonl``, ``logs/``, ``config.yaml``."""
    model: ModelSection
    data: DataSection
    train: TrainSection
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    peft: PeftSection | None = None
    description: str | None = None


# --------------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike | None, overrides: list[str] | dict | None = None) -> StageConfig:
    """Read a stage YAML (as given, else relative to the installed package: ``training/configs/tiny.yaml``
    works from any folder), merge the chosen ``stages`` block, apply the ``key=value`` overrides (a list of
    strings, or a dict of dotted key -> value) and validate (``validate_config``)."""
    raw: Any = {}
    if path is not None:
        raw = load_yaml(resolve_path(path)) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    pairs = list(overrides.items()) if isinstance(overrides, dict) else parse_overrides(overrides or [], StageConfig)
    stages = raw.pop("stages", None) or {}
    if not isinstance(stages, dict):
        raise ConfigError("'stages' must map stage numbers to blocks of overrides")
    chosen = [value for key, value in pairs if key == "stage"]
    stage = chosen[-1] if chosen else raw.get("stage")
    block = stages.get(stage, stages.get(str(stage)))  # no block: the base config is that stage
    cfg = build(StageConfig, raw, block, overrides=pairs)
    validate_config(cfg)
    return cfg


def validate_config(cfg: StageConfig) -> None:
    """Checks across fields (each field's own range is checked when the config is built)."""
    if cfg.data.text.kind not in TEXT_KINDS:
        raise ConfigError(f"'data.text.kind' must be one of {list(TEXT_KINDS)}, got {cfg.data.text.kind!r}")
    if cfg.data.image_text.kind not in IMAGE_TEXT_KINDS:
        raise ConfigError(
            f"'data.image_text.kind' must be one of {list(IMAGE_TEXT_KINDS)}, got {cfg.data.image_text.kind!r}"
        )
    for name, task in (("text", cfg.data.text), ("image_text", cfg.data.image_text)):
        if not task.sources:
            raise ConfigError(f"'data.{name}.sources' must hold at least one source")
    if cfg.data.image_text.query_instruction is not None:
        raise ConfigError("'data.image_text.query_instruction' must be null: only the text task has queries")
    if cfg.model.init_from is None and cfg.model.config is None:
        raise ConfigError("'model.init_from' is null: give 'model.config' (JinaCLIPConfig arguments) for a fresh model")
    if cfg.model.init_from is None and cfg.model.processor_from is None:
        raise ConfigError("'model.processor_from' is needed for a fresh model (a tokenizer folder)")
    steps = cfg.train.steps
    if cfg.optim.warmup_steps > steps:
        raise ConfigError(f"'optim.warmup_steps' must be <= train.steps={steps}, got {cfg.optim.warmup_steps}")
    switch = cfg.train.resolution_switch
    if switch is not None and switch.at_step > steps:
        raise ConfigError(f"'train.resolution_switch.at_step' must be <= train.steps={steps}, got {switch.at_step}")
    loss = cfg.loss
    if loss.unified_batch and cfg.data.text.kind != "text_pairs":
        raise ConfigError("'loss.unified_batch' needs data.text.kind=text_pairs (hard negatives have no place in one InfoNCE)")
    low, high = loss.ssl_crop_scale
    if low > high:
        raise ConfigError(f"'loss.ssl_crop_scale' must be [low, high] with low <= high, got {loss.ssl_crop_scale}")
    floor = 1.0 / loss.max_logit_scale
    for name in ("text_temperature_init", "image_text_temperature_init"):
        value = getattr(loss, name)
        if value is not None and value < floor:
            raise ConfigError(f"'loss.{name}' must be >= 1 / loss.max_logit_scale = {floor:g}, got {value!r}")


def config_to_dict(cfg: Any) -> Any:
    """The config as plain dicts and lists (``trainer_state.json``, ``training_summary.json``)."""
    return to_dict(cfg)


def config_to_yaml(cfg: StageConfig) -> str:
    """The resolved config as YAML (``output_dir/config.yaml``); ``load_config`` reads it back to the same
    values."""
    return to_yaml(cfg)


def tracker_config(cfg: StageConfig) -> dict[str, Any]:
    """The config flattened to ``section/key`` -> scalar, as trackers (TensorBoard hparams) take it."""
    out: dict[str, Any] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}/{key}" if prefix else str(key), inner)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[prefix] = "null" if value is None else value
        else:
            out[prefix] = json.dumps(value, default=str)

    flatten("", to_dict(cfg))
    return out


def resolve_path(path: str | os.PathLike) -> Path:
    """A path from a config: ``assets://<name>`` -> ``$JINA_CLIP_ASSETS/<name>`` (``jina-clip
    fetch-assets``); else as given, or relative to the package root when it does not exist from the
    working directory (so the shipped configs, e.g. ``training/configs/stage1.yaml``, resolve anywhere)."""
    text = os.fspath(path)
    if text.startswith(ASSETS_PREFIX):
        from jina_clip_v2.assets import asset_dir

        return asset_dir() / text[len(ASSETS_PREFIX):]
    resolved = Path(text)
    if not resolved.exists() and not resolved.is_absolute() and (PACKAGE_ROOT / resolved).exists():
        return PACKAGE_ROOT / resolved
    return resolved
