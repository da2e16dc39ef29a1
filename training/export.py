"""The end of a stage: its summary (``training_summary.json``, which the next stage reads and the model
card shows) and the Hub-ready export in ``output_dir/model`` (through ``hub.export``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate.logging import get_logger
from torch import nn

from jina_clip_v2._io import atomic_write
from jina_clip_v2.training.builders import apply_peft, merge_peft, previous_summary
from jina_clip_v2.training.config import StageConfig, config_to_dict
from jina_clip_v2.training.recipe import recipe_differences
from jina_clip_v2.training.step import TrainStep

__all__ = ["export_stage", "gathered_model", "record_training_settings", "stage_summary"]

logger = get_logger(__name__)


def stage_summary(
    cfg: StageConfig, step: TrainStep, history: list[dict], samples_seen: dict, start_image_size: int, output_dir: Path
) -> dict:
    """Losses (first and last logged), temperatures, resolution, samples and the chain of stages so far."""
    loss_keys = [k for k in (history[-1] if history else {}) if k.startswith("loss")]
    first = {k: history[0][k] for k in loss_keys} if history else {}
    last = {k: history[-1][k] for k in loss_keys} if history else {}
    image_size = step.model.config.vision_config.image_size
    entry = {
        "name": f"stage{cfg.stage}",
        "steps": cfg.train.steps,
        "image_size": f"{start_image_size}->{image_size}" if start_image_size != image_size else image_size,
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
    if cfg.train.resolution_switch is not None:
        entry["resolution_switch_step"] = cfg.train.resolution_switch.at_step
    entry["matryoshka_dims"] = list(step.dims)
    # The card claims the paper's recipe only for stages that ran it (training/recipe.py).
    differences = recipe_differences(cfg, step.model.config, start_image_size)
    entry["recipe"] = "custom" if differences else "paper"
    if differences:
        entry["differences"] = differences
    previous = previous_summary(cfg)
    return {
        "stage": cfg.stage,
        "steps": cfg.train.steps,
        "samples_seen": dict(samples_seen),
        "first_losses": first,
        "final_losses": last,
        "temperatures": step.temperatures.values(),
        "image_size": image_size,
        "world_size": step.accelerator.num_processes,
        "output_dir": str(output_dir),
        "model_dir": str(output_dir / "model") if cfg.train.export else None,
        "init": previous.get("init"),  # stage 0's sources (`jina-clip init`), carried along the stages
        "base_model": previous.get("base_model"),
        "stages": list(previous.get("stages", [])) + [entry],
        "config": config_to_dict(cfg),
    }


def gathered_model(step: TrainStep, cfg: StageConfig, processor) -> nn.Module:
    """The trained model with full weights on the main process (a collective under FSDP / DeepSpeed).
    Under DDP (or one process) that is ``step.model`` itself; sharded backends gather a full state dict
    into a fresh copy."""
    from accelerate.utils import DistributedType

    acc = step.accelerator
    if acc.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return step.model
    state = acc.get_state_dict(step.encoder)
    if not acc.is_main_process:
        return step.model
    from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel

    model = JinaCLIPModel(JinaCLIPConfig.from_dict(step.model.config.to_dict()))
    if cfg.peft is not None:
        apply_peft(model, cfg.peft)
    prefix = "model."
    model.load_state_dict({k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()})
    model.processor = processor
    return model


def record_training_settings(config, cfg: StageConfig, dims: list[int]) -> None:
    """What the exported config says about how the model was trained (paper section 3.4; the query
    instruction of the text task): the Matryoshka widths the losses were summed over (plus the full width,
    always valid) are the widths `truncate_dim` accepts, and the query instruction is the one training
    prepended (none: ``""``, so ``task="retrieval.query"`` adds nothing)."""
    width = config.projection_dim
    config.matryoshka_dimensions = sorted({int(d) for d in dims} | {width}) if config.matryoshka_dimensions else []
    if config.truncate_dim is not None and config.truncate_dim not in config.matryoshka_dimensions:
        config.truncate_dim = None
    instruction = cfg.data.text.query_instruction
    if instruction:
        config.task_instructions = {"retrieval.query": instruction}
    else:  # jina-clip-v1 has no instructions at all; v2 keeps the task, with nothing to prepend
        config.task_instructions = {"retrieval.query": ""} if config.version == "v2" else {}


def export_stage(
    model: nn.Module, processor, step: TrainStep, cfg: StageConfig, folder: Path, summary: dict
) -> Path:
    """Merge adapters, set the model's logit scale to the image-text temperature, record the trained
    Matryoshka widths and query instruction in the config, and write a Hub-ready folder with
    ``hub.export.export_model`` plus the portable ``training_summary.json``."""
    from jina_clip_v2.hub.export import export_model

    if cfg.peft is not None:
        logger.info("merged %d LoRA layers into the weights", merge_peft(model))
    name = "shared" if cfg.loss.unified_batch else "image_text"
    with torch.no_grad():
        model.logit_scale.copy_(step.temperatures.logit_scale(name).to(model.logit_scale))
    record_training_settings(model.config, cfg, step.dims)
    model = model.float().eval()
    card_summary = {key: summary[key] for key in ("init", "base_model", "stages") if summary.get(key)}
    export_model(
        model, folder, processor=processor, training_summary=card_summary, overwrite=True, dtype=cfg.train.export_dtype,
    )
    portable = {k: v for k, v in summary.items() if k not in ("output_dir", "model_dir")}  # no local paths
    with atomic_write(folder / "training_summary.json") as handle:
        json.dump(portable, handle, indent=2, default=str)
    logger.info("exported the model to %s", folder)
    return folder
