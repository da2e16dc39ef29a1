"""One training stage of jina-clip-v2 (paper section 3.2, Table 6) as a plain Accelerate loop.

    accelerate launch training/stage.py --config training/configs/stage1.yaml [key=value ...] [--resume auto]
    jina-clip train --config training/configs/tiny.yaml stage=2 model.init_from=outputs/tiny/stage1

Every step draws one text batch (pairs in stages 1-2, triplets with 7 hard negatives in stage 3) and one
image-text batch, embeds them in one forward pass, and optimises eq. 3: the text task's InfoNCE (InfoNCE+
with hard negatives) plus the image-text InfoNCE, each summed over the Matryoshka widths (section 3.4),
each with its own learnable temperature, with in-batch negatives gathered from every process. Optional:
gradient caching for contrastive batches larger than memory, LoRA adapters (``peft``), the unified-batch
ablation of section 5.2 (``loss.unified_batch``), the 224 -> 384 px switch at the end of stage 1
(``train.resolution_switch``).

Outputs under ``output_dir``: ``model/`` (the Hub-ready export with ``training_summary.json``; the next
stage's ``model.init_from`` may name ``output_dir`` itself), ``checkpoints/step_XXXXXXX`` (resumable,
atomic, last ``train.keep_last`` kept), ``metrics.jsonl`` (one line per logged step), ``logs/`` (trackers),
``config.yaml`` (the resolved config).

Configuration: a YAML file (schema: the ``*Section`` dataclasses below; unknown keys are errors), then
``key=value`` overrides with dotted keys whose values are parsed as YAML (``train.steps=10``,
``optim.text_lr=1e-4``, ``peft=null``, ``data.text.sources.0.path=org/pairs``). A file may hold a
``stages: {1: {...}, 2: {...}}`` map of per-stage overrides applied when ``stage=N`` is chosen (the tiny
CPU config uses it to run all three stages from one file).

Batch sizes in the config are global (Table 6 gives them for 8 GPUs); every process draws
``batch_size / num_processes`` examples, from its own shard of the data (``split_dataset_by_node``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # `accelerate launch training/stage.py` runs this file as a loose script, with training/ first on sys.path:
    # drop that entry (our module names must not shadow libraries) and run the installed package's module.
    import runpy

    sys.path.pop(0)
    runpy.run_module("jina_clip_v2.training.stage", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from jina_clip_v2.training import checkpoint as ckpt
from jina_clip_v2.training.losses import (
    MATRYOSHKA_DIMS,
    JointLoss,
    LearnableTemperature,
    TaskLoss,
    average_gradients,
    contrastive_loss,
    grad_cache_step,
    joint_loss,
    split_batch,
)
from jina_clip_v2.training.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

# The folder that holds training/ and data/: the repository root in a checkout, site-packages/jina_clip_v2
# when installed (the package data mirrors the checkout's layout).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
TEXT_KINDS = ("text_pairs", "text_triplets")
IMAGE_TEXT_KINDS = ("image_text_short", "image_text_long")
# Default LoRA targets: every linear layer of the blocks.
DEFAULT_LORA_TARGETS = {
    "text": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"],
    "vision": ["q_proj", "k_proj", "v_proj", "attn.proj", "w1", "w2", "w3"],
}
# Dense bf16 peak of one accelerator, for the MFU estimate (TFLOP/s); override with train.peak_tflops.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0,
               "A10G": 125.0, "L4": 121.0, "A6000": 155.0}


# ==================================================================================================
# Configuration
# ==================================================================================================


@dataclass
class ModelSection:
    init_from: str | None = None
    """Folder of a saved model (the previous stage's ``output_dir`` or its ``model/``); None: fresh init
    from ``config``."""
    config: dict | None = None
    """``JinaCLIPConfig`` keyword arguments for a fresh model (``text_config``, ``vision_config``, ...)."""
    processor_from: str | None = None
    """Folder with the tokenizer (a processor folder or a bare tokenizer); default: ``init_from``."""
    image_size: int | None = None
    """Resolution at the start of the stage (resamples the position table); None: the model's own."""
    attn_implementation: str | None = None
    """"sdpa", "eager", "flash_attention_2", ... for both towers; None: transformers' default."""
    gradient_checkpointing: bool = False


@dataclass
class TaskSection:
    kind: str
    """text_pairs | text_triplets (data.text); image_text_short | image_text_long (data.image_text)."""
    sources: list  # list[training.data.SourceConfig]; ``path: demo://<name>`` = the bundled demo data
    batch_size: int
    """Global batch size (all processes together); must be divisible by the number of processes."""
    max_length: int = 77
    num_negatives: int = 7
    shuffle_buffer: int = 1000
    seed: int = 0
    num_threads: int = 0
    """Threads decoding and cropping images (0: in the training loop)."""
    exact_resume: bool = True


@dataclass
class DataSection:
    text: TaskSection
    image_text: TaskSection
    demo_dir: str | None = None
    """Where ``demo://`` sources are written (default ``<output_dir>/demo_data``); reused if present."""
    demo_langs: list | None = None
    """Languages of the ``demo://`` sources (None: ``training.demo_data.DEMO_LANGS``, 12 languages)."""


@dataclass
class OptimSection:
    text_lr: float = 1e-4
    vision_lr: float = 2e-4
    text_layer_decay: float = 1.0
    vision_layer_decay: float = 1.0
    temperature_lr: float | None = None
    """LR of the temperatures; None: the larger tower LR."""
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.02
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = None
    fused: bool | None = None


@dataclass
class LossSection:
    matryoshka_dims: list | None = None
    """Prefix widths the losses are summed over; None: the paper's (64..1024) that fit the width, plus
    the width itself."""
    text_temperature_init: float | None = None
    image_text_temperature_init: float | None = None
    """Initial temperatures; None: continue from the previous stage (``init_from``'s
    ``training_summary.json``; the image-text one else from the model's ``logit_scale``), else 0.07."""
    max_logit_scale: float = 100.0
    learn_temperature: bool = True
    gather: bool = True
    """Global in-batch negatives: score every row against the rows of all processes."""
    unified_batch: bool = False
    """Section 5.2 ablation: one InfoNCE over [images; queries; view A] vs [captions; documents; view B]
    with one shared temperature, instead of eq. 3."""
    ssl_views: bool = True
    """Unified batch: add the SimCLR-like pair of two augmented views of every image."""
    ssl_crop_scale: list = field(default_factory=lambda: [0.25, 1.0])


@dataclass
class GradCacheSection:
    enabled: bool = False
    text_chunk_size: int = 256
    image_chunk_size: int = 128


@dataclass
class ResolutionSwitch:
    at_step: int
    image_size: int


@dataclass
class PeftSection:
    tower: str = "text"
    """text | vision | both."""
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list | None = None
    """Module name suffixes to adapt; None: every linear layer of the adapted tower's blocks."""
    train_other_tower: bool = False
    """Also train the tower without adapters (fully); default: only adapters and temperatures train."""


@dataclass
class TrainSection:
    steps: int
    seed: int = 42
    mixed_precision: str = "bf16"
    """bf16 | fp16 | no; on CPU always "no" (logged)."""
    deterministic: bool = False
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_with: list = field(default_factory=lambda: ["tensorboard"])
    resolution_switch: ResolutionSwitch | None = None
    grad_cache: GradCacheSection = field(default_factory=GradCacheSection)
    peak_tflops: float | None = None
    """Peak TFLOP/s of one device for the MFU estimate; None: looked up from the GPU name."""
    progress_bar: bool = True
    cpu_threads: int | None = None
    """torch intra-op threads (``torch.set_num_threads``); None: torch's default. Tiny CPU runs use 1:
    their matmuls are too small to share, and spare cores then serve a second process."""
    export: bool = True
    export_dtype: str | None = None
    overwrite_output_dir: bool = False
    dump_batches: int = 0
    """Debug: save the first N steps' batches of every process under ``output_dir/debug``."""
    project_name: str = "jina-clip-v2"


@dataclass
class StageConfig:
    stage: int
    output_dir: str
    model: ModelSection
    data: DataSection
    train: TrainSection
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    peft: PeftSection | None = None
    description: str | None = None


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _source_class():
    from jina_clip_v2.training.data import SourceConfig

    return SourceConfig


def _build(cls, raw: Any, path: str):
    """Instantiate dataclass ``cls`` from a YAML mapping, checking keys and coercing scalar types."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"'{path or 'config'}' must be a mapping, got {type(raw).__name__}: {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'"
            + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; valid keys{' of ' + path if path else ''}: {sorted(names)}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required config key '{key}'")
            continue
        value = raw[f.name]
        if cls is TaskSection and f.name == "sources":
            kwargs[f.name] = _build_sources(value, key)
        else:
            kwargs[f.name] = _coerce(hints[f.name], value, key)
    return cls(**kwargs)


def _build_sources(value: Any, path: str) -> list:
    source_cls = _source_class()
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"'{path}' must be a non-empty list of sources")
    return [_build(source_cls, item, f"{path}.{i}") for i, item in enumerate(value)]


def _coerce(hint, value: Any, path: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"'{path}' must not be null")
        inner = [a for a in args if a is not type(None)]
        errors = []
        for candidate in inner:
            try:
                return _coerce(candidate, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{path}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"'{path}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"'{path}' must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"'{path}' must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{path}' must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{path}' must be a string, got {value!r}")
    if hint is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}' must be a list, got {value!r}")
        return list(value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping, got {value!r}")
        return dict(value)
    return value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            index = int(part)
            node = node[index]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"cannot set '{key}': '{'.'.join(parts[: i + 1])}' is a {type(node).__name__}, not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    overrides = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
        overrides.append((key, value))
    return overrides


def load_config(path: str | os.PathLike | None, overrides: list[str] | dict | None = None) -> StageConfig:
    """Read a YAML config, apply the per-stage block and the ``key=value`` overrides, and validate."""
    raw: dict = {}
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = parse_overrides(list(overrides or []))
    stage_override = [value for key, value in pairs if key == "stage"]
    stages = raw.pop("stages", None)
    stage = stage_override[-1] if stage_override else raw.get("stage")
    if stages:
        if not isinstance(stages, dict):
            raise ConfigError("'stages' must map stage numbers to override blocks")
        block = stages.get(stage, stages.get(str(stage)))  # no block: the base config is that stage
        if block:
            raw = _deep_merge(raw, block)
    for key, value in pairs:
        _set_dotted(raw, key, value)
    return _build(StageConfig, raw, "")


def config_to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def _flatten(prefix: str, value: Any, out: dict) -> dict:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), inner, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value if value is not None else "null"
    else:
        out[prefix] = json.dumps(value, default=str)
    return out


def validate_config(cfg: StageConfig) -> None:
    """Cross-field checks that the dataclass types cannot express."""
    if cfg.stage not in (1, 2, 3):
        raise ConfigError(f"stage must be 1, 2 or 3, got {cfg.stage}")
    if cfg.data.text.kind not in TEXT_KINDS:
        raise ConfigError(f"data.text.kind must be one of {TEXT_KINDS}, got {cfg.data.text.kind!r}")
    if cfg.data.image_text.kind not in IMAGE_TEXT_KINDS:
        raise ConfigError(f"data.image_text.kind must be one of {IMAGE_TEXT_KINDS}, got {cfg.data.image_text.kind!r}")
    if cfg.train.steps < 1:
        raise ConfigError(f"train.steps must be >= 1, got {cfg.train.steps}")
    if cfg.model.init_from is None and cfg.model.config is None:
        raise ConfigError("model.init_from is null: give model.config (JinaCLIPConfig arguments) for a fresh model")
    if cfg.train.mixed_precision not in ("bf16", "fp16", "no"):
        raise ConfigError(f"train.mixed_precision must be bf16, fp16 or no, got {cfg.train.mixed_precision!r}")
    for name in ("log_every", "checkpoint_every"):
        if getattr(cfg.train, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1")
    switch = cfg.train.resolution_switch
    if switch is not None and not 0 <= switch.at_step <= cfg.train.steps:
        raise ConfigError(f"train.resolution_switch.at_step={switch.at_step} is outside [0, train.steps={cfg.train.steps}]")
    if cfg.loss.unified_batch and cfg.data.text.kind != "text_pairs":
        raise ConfigError("loss.unified_batch needs data.text.kind=text_pairs (hard negatives have no place in one InfoNCE)")
    if cfg.peft is not None:
        if cfg.peft.tower not in ("text", "vision", "both"):
            raise ConfigError(f"peft.tower must be text, vision or both, got {cfg.peft.tower!r}")
        if cfg.peft.r < 1:
            raise ConfigError(f"peft.r must be >= 1, got {cfg.peft.r}")
    gc = cfg.train.grad_cache
    if gc.enabled and (gc.text_chunk_size < 1 or gc.image_chunk_size < 1):
        raise ConfigError("train.grad_cache chunk sizes must be >= 1")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must have two values, got {cfg.optim.betas}")


# ==================================================================================================
# Model, processor, adapters
# ==================================================================================================


def _existing(path: str | os.PathLike) -> Path:
    """``path`` as given, or relative to the package root when it does not exist from the working
    directory (so the shipped configs, e.g. ``training/configs/stage1.yaml``, work from anywhere)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (PACKAGE_ROOT / path).exists():
        return PACKAGE_ROOT / path
    return path


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A stage's ``output_dir`` holds the export in ``model/``; accept either."""
    path = _existing(path)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"no saved model in {path} (expected config.json there or in {path / 'model'})")


def build_processor(source: str | os.PathLike, image_size: int):
    """transformers' ``CLIPProcessor``: the tokenizer from ``source`` (a processor or tokenizer folder)
    and this repository's image processor at ``image_size`` (CLIP mean/std, release crop rounding)."""
    from transformers import CLIPProcessor

    from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor, load_tokenizer

    if not Path(source).exists():
        hint = " (fetch the XLM-R tokenizer with `jina-clip fetch-assets`)" if "xlm-roberta-tokenizer" in str(source) else ""
        raise FileNotFoundError(f"no tokenizer folder at {source}{hint}")
    # The folder's tokenizer.json as written (the release's ids), whatever class tokenizer_config.json names.
    tokenizer = load_tokenizer(source)
    image_processor = JinaCLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(section: ModelSection, seed: int):
    """The model (fresh or from ``init_from``) and its processor, at the stage's starting resolution."""
    from accelerate.utils import set_seed

    from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel

    kwargs = {}
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    set_seed(seed)
    if section.init_from:
        folder = resolve_model_dir(section.init_from)
        model = JinaCLIPModel.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
        processor_source = _existing(section.processor_from) if section.processor_from else folder
    else:
        config = JinaCLIPConfig(**copy.deepcopy(section.config))
        if section.attn_implementation:
            config._attn_implementation = section.attn_implementation
        model = JinaCLIPModel(config)
        if section.processor_from is None:
            raise ConfigError("model.processor_from is needed for a fresh model (a tokenizer folder)")
        processor_source = _existing(section.processor_from)
    if section.image_size is not None:
        model.set_image_size(section.image_size)
    processor = build_processor(processor_source, model.config.vision_config.image_size)
    model.processor = processor
    if section.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Training replaces the model's CLIP logit scale by per-task temperatures; it is synced at export.
    model.logit_scale.requires_grad_(False)
    return model, processor


def apply_peft(model: nn.Module, section: PeftSection) -> list[str]:
    """Inject LoRA adapters into the chosen tower(s) in place and freeze what should not train.
    Returns the adapted tower names. Parameter names keep the towers' layout (plus ``base_layer`` /
    ``lora_A`` / ``lora_B``), so layer-wise decay still applies."""
    from peft import LoraConfig, inject_adapter_in_model

    towers = ["text", "vision"] if section.tower == "both" else [section.tower]
    for tower in towers:
        module = model.text_model if tower == "text" else model.vision_model
        targets = list(section.target_modules or DEFAULT_LORA_TARGETS[tower])
        config = LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout, target_modules=targets)
        inject_adapter_in_model(config, module)
    for name, param in model.named_parameters():
        tower = "text" if name.startswith("text_model.") else "vision" if name.startswith("vision_model.") else "other"
        if "lora_" in name:
            param.requires_grad_(True)
        elif tower in towers or tower == "other":
            param.requires_grad_(False)
        else:
            param.requires_grad_(section.train_other_tower)
    return towers


def merge_peft(model: nn.Module) -> int:
    """Merge every LoRA adapter into its base layer and put the plain layer back (no ``lora`` keys
    remain). Returns the number of merged layers."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft not installed: nothing can have been injected
        return 0
    merged = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, BaseTunerLayer):
            continue
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
        merged += 1
    for param in model.parameters():
        param.requires_grad_(True)
    model.logit_scale.requires_grad_(False)
    return merged


# ==================================================================================================
# Training modules
# ==================================================================================================


class DualEncoder(nn.Module):
    """What Accelerate wraps (DDP / FSDP / autocast): one forward that embeds named text and image groups,
    so a training step is a single wrapped forward (DDP needs every use of the weights to go through
    its forward) and gradient caching can encode chunk by chunk through the same wrapper."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, texts: dict | None = None, images: dict | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for name, encoding in (texts or {}).items():
            out[name] = self.model.get_text_features(
                input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"]
            ).pooler_output
        for name, pixels in (images or {}).items():
            out[name] = self.model.get_image_features(pixel_values=pixels).pooler_output
        return out


class Temperatures(nn.Module):
    """The learnable temperatures: one per task (eq. 3), or one shared (unified batch). Kept outside the
    DDP wrapper (their gradients are averaged with ``losses.average_gradients``) because gradient
    caching backpropagates the loss separately from the wrapped forwards."""

    def __init__(self, loss: LossSection, inits: dict[str, float]):
        super().__init__()
        self.tau = nn.ModuleDict(
            {name: LearnableTemperature(init, max_scale=loss.max_logit_scale) for name, init in inits.items()}
        )
        for param in self.parameters():
            param.requires_grad_(loss.learn_temperature)

    def forward(self, name: str) -> torch.Tensor:
        return self.tau[name]()

    @torch.no_grad()
    def clamp_(self) -> None:
        for module in self.tau.values():
            module.clamp_()

    def values(self) -> dict[str, float]:
        return {name: float(module().item()) for name, module in self.tau.items()}


DEFAULT_TEMPERATURE = 0.07  # CLIP's initial temperature (logit scale ln(1 / 0.07) = 2.6592)


def initial_temperatures(cfg: StageConfig, model: nn.Module) -> dict[str, float]:
    """The temperatures a stage starts from: the config's values, else those the previous stage ended
    with (its ``training_summary.json``; for image-text also the exported model's logit scale)."""
    previous: dict[str, float] = {}
    if cfg.model.init_from:
        try:
            summary = resolve_model_dir(cfg.model.init_from) / "training_summary.json"
            if summary.is_file():
                previous = dict(json.loads(summary.read_text(encoding="utf-8")).get("temperatures") or {})
        except (OSError, ValueError):
            previous = {}
        if "image_text" not in previous:
            previous["image_text"] = float(torch.exp(-model.logit_scale.detach()))
    floor = 1.0 / cfg.loss.max_logit_scale

    def pick(configured: float | None, *names: str) -> float:
        if configured is not None:
            return configured
        for name in names:
            if name in previous:
                return max(float(previous[name]), floor)
        return DEFAULT_TEMPERATURE

    loss = cfg.loss
    if loss.unified_batch:
        return {"shared": pick(loss.image_text_temperature_init, "shared", "image_text")}
    return {
        "text": pick(loss.text_temperature_init, "text", "shared"),
        "image_text": pick(loss.image_text_temperature_init, "image_text", "shared"),
    }


def matryoshka_dims(section: LossSection, width: int) -> list[int]:
    if section.matryoshka_dims is not None:
        dims = [int(d) for d in section.matryoshka_dims]
        bad = [d for d in dims if d > width or d < 1]
        if bad:
            raise ConfigError(f"loss.matryoshka_dims {bad} do not fit the embedding width {width}")
        return dims
    dims = [d for d in MATRYOSHKA_DIMS if d < width]
    return dims + [width]


def augment_views(pixels: torch.Tensor, scale: tuple[float, float] = (0.25, 1.0)) -> torch.Tensor:
    """A SimCLR-style augmented view of a normalised pixel batch, on the fly: a random resized crop
    (area fraction in ``scale``, aspect 3/4..4/3) back to the same size, a horizontal flip with
    probability 1/2 and brightness / contrast jitter (+-0.4), drawn from torch's global generator (so
    checkpoints restore it). Used for the unified-batch ablation, whose second image view the data
    stream does not provide."""
    batch, _, height, width = pixels.shape
    generator_device = "cpu"
    area = torch.empty(batch, device=generator_device).uniform_(scale[0], scale[1])
    log_ratio = torch.empty(batch, device=generator_device).uniform_(math.log(3 / 4), math.log(4 / 3))
    ratio = log_ratio.exp()
    crop_w = (area * ratio).sqrt().clamp(max=1.0)
    crop_h = (area / ratio).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(batch) * 2 - 1) * (1 - crop_w)
    centre_y = (torch.rand(batch) * 2 - 1) * (1 - crop_h)
    flip = torch.where(torch.rand(batch) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = crop_w * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = centre_y
    brightness = torch.empty(batch, 1, 1, 1).uniform_(-0.4, 0.4)
    contrast = torch.empty(batch, 1, 1, 1).uniform_(0.6, 1.4)
    theta = theta.to(device=pixels.device, dtype=pixels.dtype)
    grid = F.affine_grid(theta, [batch, pixels.shape[1], height, width], align_corners=False)
    view = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    view = (view - mean) * contrast.to(view) + mean + brightness.to(view)
    return view


def concat_encodings(encodings: list[dict], pad_id: int = 1) -> dict[str, torch.Tensor]:
    """Concatenate tokenised batches of different padded lengths (right padding with ``pad_id``)."""
    length = max(e["input_ids"].shape[1] for e in encodings)
    ids, masks = [], []
    for e in encodings:
        extra = length - e["input_ids"].shape[1]
        ids.append(F.pad(e["input_ids"], (0, extra), value=pad_id))
        masks.append(F.pad(e["attention_mask"], (0, extra), value=0))
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}


def concat_batches(batches: list[dict], pad_id: int = 1) -> dict:
    """The batch one process would see if it held the rows of ``batches`` (one per rank) in rank order."""
    out: dict = {}
    for key, value in batches[0].items():
        if key == "raw":
            out[key] = [row for b in batches for row in b[key]]
        elif key == "num_negatives":
            out[key] = value
        elif isinstance(value, torch.Tensor):
            out[key] = torch.cat([b[key] for b in batches])
        else:
            out[key] = concat_encodings([b[key] for b in batches], pad_id)
    return out


def _plain_encoding(encoding) -> dict[str, torch.Tensor]:
    return {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}


def _batch_to_device(batch: dict, device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif hasattr(value, "keys") and "input_ids" in value:
            out[key] = {k: v.to(device, non_blocking=True) for k, v in _plain_encoding(value).items()}
        else:
            out[key] = value
    return out


# ==================================================================================================
# FLOPs (for the MFU estimate)
# ==================================================================================================


def _tower_parameters(model: nn.Module) -> tuple[int, int]:
    """Parameters doing matmuls per token, per tower: everything but the embedding tables (the text
    tower's word/token-type/position embeddings; the vision tower's CLS token and position table).
    The vision count includes the patch projection, applied once per patch token."""
    text = sum(
        p.numel() for n, p in model.text_model.named_parameters() if "embeddings" not in n and "lora_" not in n
    )
    vision = sum(
        p.numel()
        for n, p in model.vision_model.named_parameters()
        if n.split(".")[-1] not in ("cls_token", "pos_embed") and "lora_" not in n
    )
    return text, vision


def transformer_flops(params: int, layers: int, width: int, rows: int, tokens: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of ``rows`` sequences of ``tokens`` tokens:
    2 FLOPs per parameter per token for the matmuls, plus 2 x 2 x tokens x width per layer per token
    for the attention scores and the weighted sum. Recomputation (gradient caching, checkpointing) is
    not counted: this is *model* FLOPs, as MFU is defined."""
    forward = rows * (2.0 * params * tokens + 4.0 * layers * tokens * tokens * width)
    return 3.0 * forward


# ==================================================================================================
# The stage
# ==================================================================================================


class Stage:
    """Builds everything from a ``StageConfig`` and runs the loop (``run``); ``train_step`` is usable on
    its own (the distributed-equivalence test computes single-process reference losses with it)."""

    def __init__(self, cfg: StageConfig, *, resume: str | None = None):
        validate_config(cfg)
        self.cfg = cfg
        self.resume = resume
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self._setup_accelerator()
        self._setup_model()

    # -- setup -----------------------------------------------------------------------------------------

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        check_launch_environment(os.environ)
        cfg = self.cfg
        on_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        precision = cfg.train.mixed_precision
        if on_cpu and precision != "no":
            logger.warning("running on CPU: mixed precision %s -> no (fp32)", precision)
            precision = "no"
        if cfg.train.cpu_threads:
            torch.set_num_threads(cfg.train.cpu_threads)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        trackers = self._available_trackers(cfg.train.log_with)
        handlers = [
            # Gradient caching encodes text and image chunks in separate forwards: each leaves the other
            # tower unused, which DDP must be told about.
            DistributedDataParallelKwargs(find_unused_parameters=cfg.train.grad_cache.enabled),
        ]
        self.accelerator = Accelerator(
            cpu=on_cpu,
            mixed_precision=precision,
            log_with=trackers or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
            kwargs_handlers=handlers,
            # The schedule is defined in optimiser steps: step it once per step on every process.
            step_scheduler_with_optimizer=False,
        )
        self.precision = precision
        acc = self.accelerator
        self.world_size = acc.num_processes
        self.rank = acc.process_index
        for task in (cfg.data.text, cfg.data.image_text):
            if task.batch_size % self.world_size:
                raise ConfigError(
                    f"global batch size {task.batch_size} ({task.kind}) is not divisible by the "
                    f"{self.world_size} processes"
                )
        logging.basicConfig(
            level=logging.INFO if acc.is_main_process else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )

    @staticmethod
    def _available_trackers(requested: list[str]) -> list[str]:
        from accelerate.utils import imports

        available = []
        for name in requested or []:
            check = getattr(imports, f"is_{name}_available", None)
            if check is not None and not check():
                logger.warning("tracker %r is not installed; skipping it", name)
                continue
            available.append(name)
        return available

    def _setup_model(self) -> None:
        cfg = self.cfg
        acc = self.accelerator
        self.model, self.processor = build_model(cfg.model, cfg.train.seed)
        self.peft_towers = apply_peft(self.model, cfg.peft) if cfg.peft is not None else []
        self.temperatures = Temperatures(cfg.loss, initial_temperatures(cfg, self.model))
        self.dims = matryoshka_dims(cfg.loss, self.model.config.projection_dim)
        self.start_image_size = self.model.config.vision_config.image_size
        # A resumed run past the resolution switch continues at the new size: set it before the
        # optimiser and the wrappers see the parameters, so the checkpoint's shapes fit.
        self.resume_path = self._find_resume()
        if self.resume_path is not None:
            state = json.loads((self.resume_path / ckpt.TRAINER_STATE).read_text(encoding="utf-8"))
            if state.get("image_size"):
                self.model.set_image_size(int(state["image_size"]))
        optim = cfg.optim
        optimizer = build_optimizer(
            {"": self.model, "temperatures": self.temperatures},
            text_lr=optim.text_lr,
            vision_lr=optim.vision_lr,
            text_layer_decay=optim.text_layer_decay,
            vision_layer_decay=optim.vision_layer_decay,
            weight_decay=optim.weight_decay,
            temperature_lr=optim.temperature_lr,
            betas=tuple(optim.betas),
            eps=optim.eps,
            fused=optim.fused,
        )
        warmup = optim.warmup_steps
        if warmup > cfg.train.steps:
            logger.warning("optim.warmup_steps=%d > train.steps=%d: warming up over all steps", warmup, cfg.train.steps)
            warmup = cfg.train.steps
        scheduler = build_scheduler(
            optimizer, total_steps=cfg.train.steps, warmup_steps=warmup, min_lr_ratio=optim.min_lr_ratio
        )
        self.temperatures.to(acc.device)
        self.encoder, self.optimizer, self.scheduler = acc.prepare(DualEncoder(self.model), optimizer, scheduler)
        acc.register_for_checkpointing(self.temperatures)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad] + [
            p for p in self.temperatures.parameters() if p.requires_grad
        ]
        self.text_params, self.vision_params = _tower_parameters(self.model)

    def _find_resume(self) -> Path | None:
        if self.resume in (None, "", "none", "no"):
            return None
        if self.resume == "auto":
            path = ckpt.latest_checkpoint(self.checkpoint_root)
            if path is None:
                logger.info("--resume auto: no checkpoint in %s, starting from scratch", self.checkpoint_root)
            return path
        path = Path(self.resume)
        if not (path / ckpt.TRAINER_STATE).is_file():
            raise FileNotFoundError(f"--resume {path}: not a complete checkpoint (no {ckpt.TRAINER_STATE})")
        return path

    def build_streams(self) -> None:
        """One batch stream per task for this process, at the current resolution."""
        from jina_clip_v2.training.data import TaskDataConfig, build_task_stream

        cfg, acc = self.cfg, self.accelerator
        demo_dir = Path(cfg.data.demo_dir) if cfg.data.demo_dir else self.output_dir / "demo_data"
        self.streams = {}
        with acc.main_process_first():
            for name, task in (("text", cfg.data.text), ("image_text", cfg.data.image_text)):
                sources = _resolve_sources(task.sources, demo_dir, cfg.data.demo_langs)
                data_cfg = TaskDataConfig(
                    kind=task.kind,
                    sources=sources,
                    batch_size=task.batch_size // self.world_size,
                    max_length=task.max_length,
                    image_size=self.model.config.vision_config.image_size if name == "image_text" else None,
                    num_negatives=task.num_negatives,
                    shuffle_buffer=task.shuffle_buffer,
                    seed=task.seed,
                )
                self.streams[name] = build_task_stream(
                    data_cfg,
                    self.processor,
                    rank=self.rank,
                    world_size=self.world_size,
                    train=True,
                    exact_resume=task.exact_resume,
                    num_threads=task.num_threads,
                )

    # -- one step --------------------------------------------------------------------------------------

    def _groups(self, text_batch: dict, image_batch: dict) -> tuple[dict, dict]:
        texts = {"query": text_batch["query"], "document": text_batch["document"]}
        if "negatives" in text_batch:
            texts["negatives"] = text_batch["negatives"]
        texts["caption"] = image_batch["caption"]
        images = {"image": image_batch["pixel_values"]}
        if self.cfg.loss.unified_batch and self.cfg.loss.ssl_views:
            scale = tuple(self.cfg.loss.ssl_crop_scale)
            images["view_a"] = augment_views(image_batch["pixel_values"], scale)
            images["view_b"] = augment_views(image_batch["pixel_values"], scale)
        return texts, images

    def loss_fn(self, emb: dict[str, torch.Tensor], num_negatives: int | None = None) -> JointLoss | TaskLoss:
        gather = self.cfg.loss.gather
        if self.cfg.loss.unified_batch:
            first = [emb["image"], emb["query"]]
            second = [emb["caption"], emb["document"]]
            if "view_a" in emb:
                first.append(emb["view_a"])
                second.append(emb["view_b"])
            return contrastive_loss(
                torch.cat(first), torch.cat(second), self.temperatures("shared"), dims=self.dims, gather=gather
            )
        negatives = None
        if "negatives" in emb:
            negatives = emb["negatives"].view(emb["query"].shape[0], num_negatives, -1)
        return joint_loss(
            emb["query"],
            emb["document"],
            emb["caption"],
            emb["image"],
            text_temperature=self.temperatures("text"),
            image_temperature=self.temperatures("image_text"),
            text_negatives=negatives,
            dims=self.dims,
            gather=gather,
        )

    def train_step(self, text_batch: dict, image_batch: dict) -> JointLoss | TaskLoss:
        """Forward, eq. 3 (or the unified loss), backward, optimiser and schedule step. Returns the
        detached loss of this process's rows (the mean over processes is the global-batch loss)."""
        acc = self.accelerator
        text_batch = _batch_to_device(text_batch, acc.device)
        image_batch = _batch_to_device(image_batch, acc.device)
        self.encoder.train()
        texts, images = self._groups(text_batch, image_batch)
        names = list(texts) + list(images)
        num_negatives = text_batch.get("num_negatives")
        gc = self.cfg.train.grad_cache
        if gc.enabled:
            def text_encoder(name):
                return lambda chunk: self.encoder(texts={name: chunk})[name]

            def image_encoder(name):
                return lambda chunk: self.encoder(images={name: chunk})[name]

            groups = [(text_encoder(n), split_batch(texts[n], gc.text_chunk_size)) for n in texts]
            groups += [(image_encoder(n), split_batch(images[n], gc.image_chunk_size)) for n in images]
            output = grad_cache_step(
                lambda *embs: self.loss_fn(dict(zip(names, embs)), num_negatives),
                groups,
                accelerator=acc,
                model=self.encoder,
            )
        else:
            embeddings = self.encoder(texts=texts, images=images)
            output = self.loss_fn(embeddings, num_negatives)
            acc.backward(output.loss)
            output = output.detach()
        average_gradients([p for p in self.temperatures.parameters() if p.requires_grad])
        if self.cfg.optim.max_grad_norm:
            self.last_grad_norm = self._clip_gradients(self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.temperatures.clamp_()
        return output

    def _clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm. Under FSDP the norm of sharded gradients needs the wrapped
        model's own ``clip_grad_norm_`` (accelerate calls it when given exactly the model's parameters);
        the temperatures (outside the model, scalar) are then clipped on their own."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.distributed_type == DistributedType.FSDP:
            norm = acc.clip_grad_norm_(self.encoder.parameters(), max_norm)
            acc.clip_grad_norm_([p for p in self.temperatures.parameters() if p.requires_grad], max_norm)
            return norm
        return acc.clip_grad_norm_(self.trainable, max_norm)

    # -- resolution switch -----------------------------------------------------------------------------

    def set_image_size(self, image_size: int) -> None:
        """Switch the resolution mid-run (end of stage 1): resample the position table, move its AdamW
        moments onto the new grid, and rebuild the DDP wrapper around the changed parameter."""
        from accelerate.utils import DistributedType

        from jina_clip_v2.modeling.modeling_jina_clip import resample_position_embeddings

        acc = self.accelerator
        if image_size == self.model.config.vision_config.image_size:
            return
        if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise NotImplementedError(
                "train.resolution_switch inside one FSDP/DeepSpeed run is not supported (sharded parameters "
                "cannot change shape); run the high-resolution tail as its own run with model.init_from "
                "pointing at the switch checkpoint's export and model.image_size set"
            )
        old = self.model.vision_model.pos_embed
        self.model.set_image_size(image_size)
        new = self.model.vision_model.pos_embed
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        for group in inner.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        state = inner.state.pop(old, None)
        if state:
            positions = new.shape[1]
            if "exp_avg" in state:
                state["exp_avg"] = resample_position_embeddings(state["exp_avg"], positions)
            if "exp_avg_sq" in state:
                state["exp_avg_sq"] = resample_position_embeddings(state["exp_avg_sq"].sqrt(), positions).square()
            inner.state[new] = state
        self.trainable = [new if p is old else p for p in self.trainable]
        if isinstance(self.encoder, torch.nn.parallel.DistributedDataParallel):
            kwargs = acc.ddp_handler.to_kwargs() if acc.ddp_handler is not None else {}
            device_ids = self.encoder.device_ids
            wrapped = torch.nn.parallel.DistributedDataParallel(
                self.encoder.module, device_ids=device_ids, output_device=self.encoder.output_device, **kwargs
            )
            # accelerate keeps the wrapper (GPU) or the bare module (CPU) in its model list: swap the
            # wrapper so that save_state / no_sync / clip_grad_norm_ see the new one.
            for index, model in enumerate(acc._models):
                if model is self.encoder:
                    acc._models[index] = wrapped
            self.encoder = wrapped
        if hasattr(self, "streams"):
            self.streams["image_text"].set_image_size(image_size)
        logger.info("image size -> %d px (position table resampled)", image_size)

    # -- the loop --------------------------------------------------------------------------------------

    def _trainer_state(self, step: int) -> dict:
        return {
            "stage": self.cfg.stage,
            "step": step,
            "samples_seen": dict(self.samples_seen),
            "image_size": self.model.config.vision_config.image_size,
            "config": config_to_dict(self.cfg),
        }

    def run(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        self._prepare_output_dir()
        self.build_streams()
        self.samples_seen = {"text": 0, "image_text": 0}
        start_step = 0
        metrics_path = self.output_dir / "metrics.jsonl"
        flat = _flatten("", config_to_dict(cfg), {}) if acc.is_main_process else None
        acc.init_trackers(f"stage{cfg.stage}", config=flat)
        # Resuming restores the RNG states: nothing may draw random numbers between it and the loop.
        if self.resume_path is not None:
            trainer_state, data_state = ckpt.load_checkpoint(acc, self.resume_path)
            start_step = int(trainer_state["step"])
            self.samples_seen = dict(trainer_state.get("samples_seen", self.samples_seen))
            for name, stream in self.streams.items():
                if name in data_state:
                    stream.load_state_dict(data_state[name])
                stream.set_image_size(self.model.config.vision_config.image_size)
            if acc.is_main_process:
                _truncate_metrics(metrics_path, start_step)
            logger.info("resumed from %s at step %d", self.resume_path, start_step)
        else:
            from accelerate.utils import set_seed

            set_seed(cfg.train.seed, device_specific=True)
        history = self._loop(start_step, metrics_path)
        acc.wait_for_everyone()
        summary = self._finish(history)
        acc.end_training()
        return summary

    def _prepare_output_dir(self) -> None:
        acc = self.accelerator
        existing = ckpt.list_checkpoints(self.checkpoint_root)
        if existing and self.resume_path is None and not self.cfg.train.overwrite_output_dir:
            raise FileExistsError(  # on every rank, so none waits for the others
                f"{self.output_dir} already holds checkpoints ({existing[-1][1].name}); resume with "
                "--resume auto, pick another output_dir, or set train.overwrite_output_dir=true"
            )
        acc.wait_for_everyone()
        if acc.is_main_process:
            if existing and self.resume_path is None:
                shutil.rmtree(self.checkpoint_root)
                (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_incomplete(self.checkpoint_root)
            if self.resume_path is None:
                (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
            with open(self.output_dir / "config.yaml", "w", encoding="utf-8") as handle:
                yaml.safe_dump(config_to_dict(self.cfg), handle, sort_keys=False, allow_unicode=True)
        acc.wait_for_everyone()

    def _loop(self, start_step: int, metrics_path: Path) -> list[dict]:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        total = cfg.train.steps
        switch = cfg.train.resolution_switch
        bar = tqdm(
            total=total,
            initial=start_step,
            desc=f"stage {cfg.stage}",
            disable=not (acc.is_main_process and cfg.train.progress_bar),
            dynamic_ncols=True,
        )
        history: list[dict] = []
        window: dict[str, torch.Tensor] = {}
        window_steps = 0
        window_start = time.perf_counter()
        counts = torch.zeros(4, dtype=torch.float64)  # samples, real tokens, FLOPs, (unused)
        peak = self._peak_flops()
        for step in range(start_step, total):
            if switch is not None and step == switch.at_step:
                self.set_image_size(switch.image_size)
            text_batch = next(self.streams["text"])
            image_batch = next(self.streams["image_text"])
            if step < cfg.train.dump_batches:
                self._dump_batches(step, text_batch, image_batch)
            counts += self._step_counts(text_batch, image_batch)
            output = self.train_step(text_batch, image_batch)
            self.samples_seen["text"] += text_batch["query"]["input_ids"].shape[0] * self.world_size
            self.samples_seen["image_text"] += image_batch["pixel_values"].shape[0] * self.world_size
            for key, value in _loss_terms(output).items():
                window[key] = window[key] + value if key in window else value
            window_steps += 1
            done = step + 1
            if done % cfg.train.log_every == 0 or done == total:
                record = self._log(done, window, window_steps, counts, time.perf_counter() - window_start, peak)
                history.append(record)
                if acc.is_main_process:
                    with open(metrics_path, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(record) + "\n")
                    bar.set_postfix(_postfix(record), refresh=False)
                window = {}
                window_steps = 0
                counts.zero_()
                window_start = time.perf_counter()
            bar.update(1)
            if done % cfg.train.checkpoint_every == 0:
                self.save_checkpoint(done)
        bar.close()
        return history

    def save_checkpoint(self, step: int) -> Path:
        data_state = {name: stream.state_dict() for name, stream in self.streams.items()}
        return ckpt.save_checkpoint(
            self.accelerator,
            self.checkpoint_root,
            step,
            data_state=data_state,
            trainer_state=self._trainer_state(step),
            keep_last=self.cfg.train.keep_last,
        )

    def _dump_batches(self, step: int, text_batch: dict, image_batch: dict) -> None:
        folder = self.output_dir / "debug"
        folder.mkdir(parents=True, exist_ok=True)
        plain = lambda b: {k: (_plain_encoding(v) if hasattr(v, "keys") else v) for k, v in b.items() if k != "raw"}  # noqa: E731
        torch.save(
            {"text": plain(text_batch), "image_text": plain(image_batch)},
            folder / f"batch_step{step}_rank{self.rank}.pt",
        )

    def _step_counts(self, text_batch: dict, image_batch: dict) -> torch.Tensor:
        """(samples, real text tokens + image tokens, model FLOPs) of this process's step."""
        text_cfg = self.model.config.text_config
        vision_cfg = self.model.config.vision_config
        encodings = [text_batch["query"], text_batch["document"], image_batch["caption"]]
        if "negatives" in text_batch:
            encodings.append(text_batch["negatives"])
        flops = 0.0
        tokens = 0.0
        for encoding in encodings:
            rows, length = encoding["input_ids"].shape
            tokens += float(encoding["attention_mask"].sum())
            flops += transformer_flops(
                self.text_params, text_cfg.num_hidden_layers, text_cfg.hidden_size, rows, length
            )
        images = image_batch["pixel_values"].shape[0]
        if self.cfg.loss.unified_batch and self.cfg.loss.ssl_views:
            images *= 3
        patches = (vision_cfg.image_size // vision_cfg.patch_size) ** 2 + 1
        tokens += images * patches
        flops += transformer_flops(
            self.vision_params, vision_cfg.num_hidden_layers, vision_cfg.hidden_size, images, patches
        )
        samples = text_batch["query"]["input_ids"].shape[0] + image_batch["pixel_values"].shape[0]
        return torch.tensor([samples, tokens, flops, 0.0], dtype=torch.float64)

    def _peak_flops(self) -> float | None:
        if self.cfg.train.peak_tflops:
            return self.cfg.train.peak_tflops * 1e12
        if self.accelerator.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.accelerator.device)
        for key, tflops in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
            if key in name:
                return tflops * 1e12
        return None

    def _log(self, step: int, window: dict, steps: int, counts: torch.Tensor, seconds: float, peak) -> dict:
        acc = self.accelerator
        keys = sorted(window)
        losses = torch.stack([window[k].detach().float() for k in keys]).cpu().double() / steps
        values = torch.cat([losses, counts[:3]])
        if self.world_size > 1:
            reduced = acc.reduce(values.to(acc.device), reduction="sum").cpu()
            values = torch.cat([reduced[: len(keys)] / self.world_size, reduced[len(keys):]])
        record: dict[str, Any] = {"step": step}
        record.update({k: float(v) for k, v in zip(keys, values[: len(keys)])})
        samples, tokens, flops = values[len(keys):].tolist()
        for name, tau in self.temperatures.values().items():
            record[f"temperature/{name}"] = tau
        for group in self.optimizer.param_groups:
            record.setdefault(f"lr/{group.get('tower', 'all')}", group["lr"] / group.get("lr_scale", 1.0))
        record["samples_per_s"] = samples / max(seconds, 1e-9)
        record["tokens_per_s"] = tokens / max(seconds, 1e-9)
        record["tflops_per_s"] = flops / max(seconds, 1e-9) / 1e12
        if peak:
            record["mfu"] = flops / max(seconds, 1e-9) / (peak * self.world_size)
        record["image_size"] = self.model.config.vision_config.image_size
        record["max_length/text"] = self.streams["text"].max_length
        if getattr(self, "last_grad_norm", None) is not None:
            record["grad_norm"] = float(self.last_grad_norm)
        acc.log({k: v for k, v in record.items() if k != "step"}, step=step)
        return record

    # -- the end ---------------------------------------------------------------------------------------

    def _finish(self, history: list[dict]) -> dict:
        cfg, acc = self.cfg, self.accelerator
        loss_keys = [k for k in (history[-1] if history else {}) if k.startswith("loss")]
        first = {k: history[0][k] for k in loss_keys} if history else {}
        last = {k: history[-1][k] for k in loss_keys} if history else {}
        model_dir = self.output_dir / "model"
        switch = cfg.train.resolution_switch
        image_size = self.model.config.vision_config.image_size
        entry = {
            "name": f"stage{cfg.stage}",
            "steps": cfg.train.steps,
            "image_size": f"{self.start_image_size}->{image_size}" if self.start_image_size != image_size else image_size,
            "text_max_length": cfg.data.text.max_length,
            "caption_max_length": cfg.data.image_text.max_length,
            "text_batch_size": cfg.data.text.batch_size,
            "image_text_batch_size": cfg.data.image_text.batch_size,
            "text_lr": cfg.optim.text_lr,
            "vision_lr": cfg.optim.vision_lr,
            "text_data": cfg.data.text.kind,
            "image_text_data": cfg.data.image_text.kind,
            "final_loss": last.get("loss"),
        }
        if switch is not None:
            entry["resolution_switch_step"] = switch.at_step
        previous = []
        if cfg.model.init_from:
            try:
                source = resolve_model_dir(cfg.model.init_from) / "training_summary.json"
                if source.is_file():
                    previous = json.loads(source.read_text(encoding="utf-8")).get("stages", [])
            except (OSError, ValueError):
                previous = []
        summary = {
            "stage": cfg.stage,
            "steps": cfg.train.steps,
            "samples_seen": dict(self.samples_seen),
            "first_losses": first,
            "final_losses": last,
            "temperatures": self.temperatures.values(),
            "image_size": image_size,
            "world_size": self.world_size,
            "output_dir": str(self.output_dir),
            "model_dir": str(model_dir) if cfg.train.export else None,
            "stages": previous + [entry],
            "config": config_to_dict(cfg),
        }
        if cfg.train.export:
            model = self._gathered_model()  # a collective under FSDP / DeepSpeed
            if acc.is_main_process:
                self.export(model_dir, summary, model)
        acc.wait_for_everyone()
        return summary

    def _gathered_model(self) -> nn.Module:
        """The trained model with full weights on the main process. Under DDP (or one process) that is
        ``self.model`` itself; sharded backends gather a full state dict into a fresh copy."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return self.model
        state = acc.get_state_dict(self.encoder)
        if not acc.is_main_process:
            return self.model
        from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel

        model = JinaCLIPModel(JinaCLIPConfig.from_dict(self.model.config.to_dict()))
        if self.peft_towers:
            apply_peft(model, self.cfg.peft)
        prefix = "model."
        model.load_state_dict({k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()})
        model.processor = self.processor
        return model

    def export(self, folder: Path, summary: dict, model: nn.Module | None = None) -> Path:
        """Merge adapters, sync the model's logit scale with the image-text temperature, and write a
        Hub-ready folder (through ``hub.export`` when available, else ``save_pretrained``)."""
        model = self.model if model is None else model
        if self.peft_towers:
            merged = merge_peft(model)
            logger.info("merged %d LoRA layers into the weights", merged)
        name = "shared" if self.cfg.loss.unified_batch else "image_text"
        with torch.no_grad():
            scale = self.temperatures.tau[name].logit_scale.detach().clamp(max=math.log(self.cfg.loss.max_logit_scale))
            model.logit_scale.copy_(scale.to(model.logit_scale))
        model = model.float().eval()
        try:
            from jina_clip_v2.hub.export import export_model
        except ImportError:
            export_model = None
        card_summary = {"stages": summary["stages"]}
        if export_model is not None:
            export_model(
                model, folder, processor=self.processor, training_summary=card_summary,
                overwrite=True, dtype=self.cfg.train.export_dtype,
            )
        else:  # pragma: no cover - hub/ missing
            staging = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            model.save_pretrained(staging)
            self.processor.save_pretrained(staging)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        portable = {k: v for k, v in summary.items() if k not in ("output_dir", "model_dir")}  # no local paths
        with open(folder / "training_summary.json", "w", encoding="utf-8") as handle:
            json.dump(portable, handle, indent=2, default=str)
        logger.info("exported the model to %s", folder)
        return folder


MULTI_CPU_HINT = (
    "`accelerate launch --cpu --num_processes N` starts N processes only through MPI (--mpirun_hostfile); "
    "without it accelerate started ONE process, which would silently train without the other ranks. "
    "For N CPU processes use torchrun through accelerate: `ACCELERATE_USE_CPU=1 accelerate launch "
    "--multi_gpu --num_processes N ...` (or --config_file training/accelerate/cpu_2proc.yaml)."
)


def check_launch_environment(env: dict) -> None:
    """Refuse the one launch that silently loses processes: ``accelerate launch --cpu --num_processes N``
    (N > 1) without MPI, which accelerate answers with a single process (it sets MASTER_ADDR/PORT for
    N > 1 but expects an MPI launcher to start the ranks)."""
    use_cpu = str(env.get("ACCELERATE_USE_CPU", "")).lower() in ("1", "true", "yes")
    launched_for_many = "MASTER_ADDR" in env and "MASTER_PORT" in env
    has_ranks = any(
        key in env for key in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    )
    if use_cpu and launched_for_many and not has_ranks:
        raise RuntimeError(MULTI_CPU_HINT)


def _loss_terms(output: JointLoss | TaskLoss) -> dict[str, torch.Tensor]:
    """Detached loss tensors (no host sync: they are read only at logging steps)."""
    if isinstance(output, JointLoss):
        return {"loss": output.loss, "loss/text": output.text.loss, "loss/image_text": output.image_text.loss}
    return {"loss": output.loss}


def _postfix(record: dict) -> dict:
    out = {"loss": f"{record['loss']:.3f}"}
    if "loss/text" in record:
        out["txt"] = f"{record['loss/text']:.3f}"
        out["img"] = f"{record['loss/image_text']:.3f}"
    for key, value in record.items():
        if key.startswith("temperature/"):
            out["tau_" + key.split("/", 1)[1][:3]] = f"{value:.3f}"
    if "lr/text" in record:
        out["lr"] = f"{record['lr/text']:.1e}"
    out["sps"] = f"{record['samples_per_s']:.0f}"
    out["tok/s"] = f"{record['tokens_per_s']:.0f}"
    if "mfu" in record:
        out["mfu"] = f"{100 * record['mfu']:.1f}%"
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the lines of steps <= ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError):
            continue
    staging = path.with_suffix(".jsonl.tmp")
    staging.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(staging, path)


def demo_sources(demo_dir: Path, split: str = "train", langs: list | None = None) -> dict:
    """The bundled demo data as training sources (``training.demo_data.write_demo_sources``), written
    once per (split, languages) under ``demo_dir`` and reused afterwards (the files are deterministic)."""
    from jina_clip_v2.training.data import SourceConfig
    from jina_clip_v2.training.demo_data import write_demo_sources

    name = split if langs is None else f"{split}-{'-'.join(langs)}"
    folder = Path(demo_dir) / name
    index = folder / "sources.json"
    if index.is_file():
        return {key: SourceConfig(**value) for key, value in json.loads(index.read_text(encoding="utf-8")).items()}
    sources = write_demo_sources(folder, split=split, langs=langs)
    staging = index.with_suffix(".json.tmp")
    staging.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in sources.items()}, indent=2), encoding="utf-8")
    os.replace(staging, index)  # written last: a folder without it is rewritten
    return sources


def _resolve_sources(sources: list, demo_dir: Path, langs: list | None = None) -> list:
    """Replace ``demo://<name>`` sources by the bundled demo data written under ``demo_dir``."""
    resolved, written = [], {}
    for source in sources:
        if isinstance(source.path, str) and source.path.startswith("demo://"):
            key = source.path[len("demo://"):]
            split = source.split or "train"
            if split not in written:
                written[split] = demo_sources(demo_dir, split, langs)
            if key not in written[split]:
                raise ConfigError(f"unknown demo source {source.path!r}; available: {sorted(written[split])}")
            resolved.append(dataclasses.replace(written[split][key], weight=source.weight))
        else:
            resolved.append(source)
    return resolved


# ==================================================================================================
# Entry point
# ==================================================================================================


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run one jina-clip-v2 training stage (launch with `accelerate launch` to scale out).",
    )
    parser.add_argument("--config", required=True, help="stage YAML (training/configs/*.yaml)")
    parser.add_argument("--resume", default=None, help="'auto' (latest checkpoint in output_dir, if any) or a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, values parsed as YAML")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (``--config``, ``--resume``, overrides), run the stage, return its summary."""
    args = _parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    validate_config(cfg)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
        return {"config": config_to_dict(cfg)}
    stage = Stage(cfg, resume=args.resume)
    try:
        summary = stage.run()
    finally:
        _reset_accelerate_state()
    if stage.accelerator.is_main_process:
        brief = {k: v for k, v in summary.items() if k not in ("config", "stages")}
        print("TRAINING_SUMMARY " + json.dumps(brief, default=str), flush=True)
    return summary


def _reset_accelerate_state() -> None:
    """Let one process run several stages (the demo, the tests): accelerate keeps its state in
    singletons that a second ``Accelerator`` with other settings would otherwise conflict with. The
    process group (if any) stays."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
    except Exception:  # noqa: BLE001 - best effort
        pass


if __name__ == "__main__":
    main()
