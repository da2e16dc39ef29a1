"""What a stage trains, built from its config: the model (fresh or from the previous stage) and its
processor, LoRA adapters (``peft``), the per-task learnable temperatures and the Matryoshka widths."""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from jina_clip_v2.training.config import ConfigError, LossSection, ModelSection, PeftSection, StageConfig, resolve_path
from jina_clip_v2.training.losses import MATRYOSHKA_DIMS, LearnableTemperature

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "DEFAULT_TEMPERATURE",
    "Temperatures",
    "apply_peft",
    "build_model",
    "build_processor",
    "initial_temperatures",
    "lora_targets",
    "matryoshka_dims",
    "merge_peft",
    "previous_summary",
    "resolve_model_dir",
    "set_gradient_checkpointing",
]

# Default LoRA targets: every linear layer of the blocks.
DEFAULT_LORA_TARGETS = {
    # fc1 / fc2: jina-clip-v2's MLP; gate_proj / up_proj / down_proj: jina-clip-v1's gated MLP (JinaBERT).
    "text": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "gate_proj", "up_proj", "down_proj"],
    "vision": ["q_proj", "k_proj", "v_proj", "attn.proj", "w1", "w2", "w3"],
}
DEFAULT_TEMPERATURE = 0.07  # CLIP's initial temperature (logit scale ln(1 / 0.07) = 2.6592)


# --------------------------------------------------------------------------------------------------
# Model and processor
# --------------------------------------------------------------------------------------------------


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A stage's ``output_dir`` holds the export in ``model/``; accept either."""
    path = resolve_path(path)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"no saved model in {path} (expected config.json there or in {path / 'model'})")


def build_processor(source: str | os.PathLike, image_size: int):
    """transformers' ``CLIPProcessor``: the tokenizer from ``source`` (a processor or tokenizer folder)
    and this repository's image processor at ``image_size`` (CLIP mean/std, release crop rounding)."""
    from transformers import CLIPProcessor

    from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor
    from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer

    if not Path(source).exists():
        hint = " (fetch the XLM-R tokenizer with `jina-clip fetch-assets`)" if "xlm-roberta-tokenizer" in str(source) else ""
        raise FileNotFoundError(f"no tokenizer folder at {source}{hint}")
    # The folder's tokenizer.json as written (the release's ids), whatever class tokenizer_config.json names.
    tokenizer = load_tokenizer(source)
    image_processor = JinaCLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Activation (gradient) checkpointing on every layer of both towers, non-reentrant. transformers 5
    renamed ``gradient_checkpointing_*`` to ``activation_checkpointing_*`` (the old names warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if enabled:
            enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
            enable({"use_reentrant": False})
        else:
            getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()


def build_model(section: ModelSection, seed: int):
    """The model (fresh from ``section.config`` with a seeded init, or from ``init_from``) and its
    processor, at the stage's starting resolution."""
    from accelerate.utils import set_seed

    from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel

    kwargs = {}
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    set_seed(seed)
    if section.init_from:
        folder = resolve_model_dir(section.init_from)
        model = JinaCLIPModel.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
        processor_source = resolve_path(section.processor_from) if section.processor_from else folder
    else:
        if section.processor_from is None:
            raise ConfigError("model.processor_from is needed for a fresh model (a tokenizer folder)")
        config = JinaCLIPConfig(**copy.deepcopy(section.config))
        if section.attn_implementation:
            config._attn_implementation = section.attn_implementation
        model = JinaCLIPModel(config)
        processor_source = resolve_path(section.processor_from)
    if section.image_size is not None:
        model.set_image_size(section.image_size)
    processor = build_processor(processor_source, model.config.vision_config.image_size)
    model.processor = processor
    if section.gradient_checkpointing:
        set_gradient_checkpointing(model, True)
    # Training replaces the model's CLIP logit scale by per-task temperatures; it is synced at export.
    model.logit_scale.requires_grad_(False)
    return model, processor


# --------------------------------------------------------------------------------------------------
# LoRA adapters
# --------------------------------------------------------------------------------------------------


def lora_targets(section: PeftSection, tower: str) -> list[str]:
    """Module name suffixes adapted in ``tower``: the config's, else every linear layer of its blocks."""
    return list(section.target_modules or DEFAULT_LORA_TARGETS[tower])


def apply_peft(model: nn.Module, section: PeftSection) -> list[str]:
    """Inject LoRA adapters into the chosen tower(s) in place and freeze what should not train.
    Returns the adapted tower names. Parameter names keep the towers' layout (plus ``base_layer`` /
    ``lora_A`` / ``lora_B``), so layer-wise decay still applies."""
    from peft import LoraConfig, inject_adapter_in_model

    towers = ["text", "vision"] if section.tower == "both" else [section.tower]
    for tower in towers:
        module = model.text_model if tower == "text" else model.vision_model
        config = LoraConfig(
            r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout, target_modules=lora_targets(section, tower)
        )
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
    from peft.tuners.tuners_utils import BaseTunerLayer

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


# --------------------------------------------------------------------------------------------------
# Temperatures and Matryoshka widths
# --------------------------------------------------------------------------------------------------


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

    def logit_scale(self, name: str) -> torch.Tensor:
        """``log(1 / tau)`` of one temperature, capped as the loss uses it (the model's ``logit_scale``)."""
        module = self.tau[name]
        return module.logit_scale.detach().clamp(max=module.max_log_scale)


def previous_summary(cfg: StageConfig) -> dict:
    """The ``training_summary.json`` of the stage ``model.init_from`` names ({} when there is none)."""
    if not cfg.model.init_from:
        return {}
    try:
        path = resolve_model_dir(cfg.model.init_from) / "training_summary.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def initial_temperatures(cfg: StageConfig, model: nn.Module) -> dict[str, float]:
    """The temperatures a stage starts from: the config's values, else those the previous stage ended
    with (its ``training_summary.json``; for image-text also the exported model's logit scale)."""
    previous: dict[str, float] = {}
    if cfg.model.init_from:
        previous = dict(previous_summary(cfg).get("temperatures") or {})
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


def matryoshka_dims(section: LossSection, width: int, trained: list | None = None) -> list[int]:
    """The widths the losses are summed over: the config's, else the paper's (section 3.4) below the
    embedding width, plus the width itself; only the full width for a model whose config says it is not
    trained for truncation (`trained == []`, jina-clip-v1)."""
    if section.matryoshka_dims is None and trained is not None and not trained:
        return [width]
    if section.matryoshka_dims is not None:
        dims = [int(d) for d in section.matryoshka_dims]
        bad = [d for d in dims if d > width]
        if bad:
            raise ConfigError(f"'loss.matryoshka_dims' {bad} do not fit the embedding width {width}")
        return dims
    return [d for d in MATRYOSHKA_DIMS if d < width] + [width]

