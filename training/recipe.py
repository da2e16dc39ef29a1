"""Whether a stage ran the paper's recipe: its settings against the shipped stage config of the same
number (``training/configs/stage{1,2,3}.yaml``, which carry Table 6 and section 3), and its model against
the real-size jina-clip-v2 geometry.

The model card claims the paper's recipe only for runs whose every stage matches (and whose stage 1 started
from stage-0 weights built from the paper's checkpoints, ``jina-clip init``); otherwise it says what was
run and how it differs. Data sources are the user's and not compared; schedule details the paper does not
give (warmup, logging, checkpointing, gradient caching, thread counts) are not part of the recipe either.
"""

from __future__ import annotations

from typing import Any

from jina_clip_v2.training.config import StageConfig, config_to_dict, load_config

__all__ = ["RECIPE_KEYS", "recipe_differences"]

# The settings Table 6 and section 3 fix, as dotted keys of the stage config.
RECIPE_KEYS = (
    "train.steps", "model.image_size",
    "data.text.kind", "data.text.batch_size", "data.text.max_length", "data.text.num_negatives",
    "data.text.query_instruction",
    "data.image_text.kind", "data.image_text.batch_size", "data.image_text.max_length",
    "optim.text_lr", "optim.vision_lr", "optim.text_layer_decay", "optim.vision_layer_decay",
    "optim.betas", "optim.eps", "optim.weight_decay", "optim.min_lr_ratio",
    "loss.matryoshka_dims", "loss.unified_batch", "loss.gather",
    "train.resolution_switch", "train.mixed_precision",
    "peft",
)  # fmt: skip
# The real-size geometry (Table 1): text and vision towers, as (config path, value of JinaCLIPConfig()).
_GEOMETRY = (
    "text_config.vocab_size", "text_config.hidden_size", "text_config.num_hidden_layers",
    "text_config.num_attention_heads", "text_config.intermediate_size",
    "vision_config.hidden_size", "vision_config.num_hidden_layers", "vision_config.num_attention_heads",
    "vision_config.intermediate_size", "vision_config.patch_size",
)  # fmt: skip
_LIST_LIMIT = 8


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def recipe_differences(cfg: StageConfig, model_config: Any = None, start_image_size: int | None = None) -> list[str]:
    """How `cfg` (and the model it trains, starting at `start_image_size` px) differs from the paper's stage
    `cfg.stage`: "key: ours (paper value)" strings, empty when the stage follows the recipe."""
    from jina_clip_v2.modeling import JinaCLIPConfig

    paper = config_to_dict(load_config(f"training/configs/stage{cfg.stage}.yaml"))
    ours = config_to_dict(cfg)
    if ours["model"]["image_size"] is None:  # null: the model's own resolution, the one the stage started at
        ours["model"]["image_size"] = start_image_size
    differences = [
        f"{key}: {_get(ours, key)!r} (paper {_get(paper, key)!r})"
        for key in RECIPE_KEYS
        if _get(ours, key) != _get(paper, key)
    ]
    if model_config is not None:
        reference = JinaCLIPConfig()
        differences += [
            f"model {key}: {_attr(model_config, key)} (paper {_attr(reference, key)})"
            for key in _GEOMETRY
            if _attr(model_config, key) != _attr(reference, key)
        ]
    if len(differences) > _LIST_LIMIT:
        differences = differences[:_LIST_LIMIT] + [f"... and {len(differences) - _LIST_LIMIT} more"]
    return differences
