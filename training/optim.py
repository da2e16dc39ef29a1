"""Optimiser and learning-rate schedule of jina-clip-v2 (paper Table 6).

AdamW with betas (0.9, 0.98), eps 1e-6 and weight decay 0.02, a separate peak learning rate per tower,
layer-wise learning-rate decay (LLRD) inside each tower, and a cosine schedule with linear warmup.

Layer-wise decay (BEiT / EVA convention). A tower with L blocks numbers its parameters by depth:

    embeddings (word / token-type embeddings and their LayerNorm; patch_embed, cls_token, pos_embed)  L + 1
    block i (0-based: text ``layers.i``, vision ``blocks.i``)                                          L - i
    anything after the last block (the vision tower's final ``norm``)                                  0

and its parameters train at ``peak_lr * decay ** depth``. With decay 1 (stages 1 and 3) every parameter of
the tower gets the tower's peak LR; stage 2 uses 0.98. Temperatures (and any other parameter outside the
two towers) train at ``temperature_lr`` (default: the larger tower peak LR), without decay.

Weight decay applies to weight matrices only: biases (also the vision tower's ``q_bias`` / ``v_bias``),
every normalisation layer, the embeddings (word, token type, position table, CLS token) and the
temperatures are excluded, which for this model is exactly "every parameter with at most one dimension,
plus the embedding tables".

Parameters that do not require gradients (frozen towers, PEFT base weights, the model's own
``logit_scale``, which training replaces by per-task temperatures) are left out of the optimiser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ParamInfo",
    "build_optimizer",
    "build_scheduler",
    "classify_parameter",
    "param_groups",
]

# Names (after stripping wrappers such as DDP's ``module.`` or PEFT's ``base_model.model.``) that are
# embedding tables: no weight decay, depth L + 1.
_NO_DECAY_EMBEDDINGS = ("word_embeddings", "token_type_embeddings", "position_embeddings", "pos_embed", "cls_token")
_TEXT_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_VISION_LAYER = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


@dataclass(frozen=True)
class ParamInfo:
    """Where a parameter sits: its tower ('text', 'vision' or 'other'), its LLRD depth, and whether it
    is weight-decayed."""

    tower: str
    depth: int
    weight_decay: bool


def _num_layers(model: nn.Module, tower: str) -> int:
    inner = _find_model(model)
    if tower == "text":
        return int(inner.config.text_config.num_hidden_layers)
    return int(inner.config.vision_config.num_hidden_layers)


def _find_model(module: nn.Module) -> nn.Module:
    """The JinaCLIPModel inside wrappers (DDP ``.module``, the training wrapper's ``.model``)."""
    seen = module
    for _ in range(4):
        if hasattr(seen, "text_model") and hasattr(seen, "vision_model") and hasattr(seen, "config"):
            return seen
        seen = getattr(seen, "module", None) or getattr(seen, "model", None)
        if seen is None:
            break
    raise ValueError("could not find a JinaCLIPModel (with text_model and vision_model) in the module")


def classify_parameter(name: str, param: torch.Tensor, num_layers: dict[str, int]) -> ParamInfo:
    """Tower, LLRD depth and weight-decay flag of one named parameter.

    ``num_layers`` maps 'text' and 'vision' to their block counts L. The name may carry wrapper
    prefixes (``module.``, ``model.``, PEFT's ``base_model.model.``); only the tower part matters.
    """
    if "text_model." in name or name.startswith("text_model"):
        tower = "text"
    elif "vision_model." in name or name.startswith("vision_model"):
        tower = "vision"
    else:
        tower = "other"
    leaf = name.split(".")[-1]
    is_embedding = any(f"{key}" in name.split(".") for key in _NO_DECAY_EMBEDDINGS) or leaf in _NO_DECAY_EMBEDDINGS
    decay = param.ndim >= 2 and not is_embedding and tower != "other"
    if tower == "other":
        return ParamInfo("other", 0, False)
    total = num_layers[tower]
    pattern = _TEXT_LAYER if tower == "text" else _VISION_LAYER
    match = pattern.search(name)
    if match:
        depth = total - int(match.group(1))
    elif tower == "text" and ".embeddings." in name:
        depth = total + 1
    elif tower == "vision" and (
        "patch_embed." in name or leaf in ("cls_token", "pos_embed")
    ):
        depth = total + 1
    else:
        depth = 0  # after the last block: the vision tower's final norm
    return ParamInfo(tower, depth, decay)


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    num_layers: dict[str, int],
    text_lr: float,
    vision_lr: float,
    text_layer_decay: float = 1.0,
    vision_layer_decay: float = 1.0,
    weight_decay: float = 0.02,
    other_lr: float | None = None,
) -> list[dict]:
    """AdamW parameter groups: one per (tower, depth, decayed?) that holds a trainable parameter.

    Each group carries ``lr`` (its peak learning rate, which the schedule scales), ``weight_decay`` and,
    for inspection, ``tower``, ``depth``, ``lr_scale`` and ``names``. Frozen parameters are skipped.
    """
    for value, name in ((text_layer_decay, "text_layer_decay"), (vision_layer_decay, "vision_layer_decay")):
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    other_lr = max(text_lr, vision_lr) if other_lr is None else other_lr
    peak = {"text": text_lr, "vision": vision_lr, "other": other_lr}
    layer_decay = {"text": text_layer_decay, "vision": vision_layer_decay, "other": 1.0}
    groups: dict[tuple[str, int, bool], dict] = {}
    seen: set[int] = set()
    for name, param in named_parameters:
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        info = classify_parameter(name, param, num_layers)
        key = (info.tower, info.depth, info.weight_decay)
        if key not in groups:
            scale = layer_decay[info.tower] ** info.depth
            groups[key] = {
                "params": [],
                "names": [],
                "lr": peak[info.tower] * scale,
                "weight_decay": weight_decay if info.weight_decay else 0.0,
                "tower": info.tower,
                "depth": info.depth,
                "lr_scale": scale,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    if not groups:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], -k[1], k[2]))]


def build_optimizer(
    modules: dict[str, nn.Module] | nn.Module,
    *,
    text_lr: float,
    vision_lr: float,
    text_layer_decay: float = 1.0,
    vision_layer_decay: float = 1.0,
    weight_decay: float = 0.02,
    temperature_lr: float | None = None,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``modules`` (the model, and the temperatures).

    ``modules`` is a module containing a JinaCLIPModel, or a dict of prefix -> module whose first entry
    contains it; parameters outside the towers (temperatures) go to the 'other' groups.
    """
    if isinstance(modules, nn.Module):
        modules = {"": modules}
    named: list[tuple[str, nn.Parameter]] = []
    model = None
    for prefix, module in modules.items():
        if model is None:
            try:
                model = _find_model(module)
            except ValueError:
                pass
        named.extend((f"{prefix}.{n}" if prefix else n, p) for n, p in module.named_parameters())
    if model is None:
        raise ValueError("build_optimizer needs a module that contains the JinaCLIPModel")
    num_layers = {"text": _num_layers(model, "text"), "vision": _num_layers(model, "vision")}
    groups = param_groups(
        named,
        num_layers=num_layers,
        text_lr=text_lr,
        vision_lr=vision_lr,
        text_layer_decay=text_layer_decay,
        vision_layer_decay=vision_layer_decay,
        weight_decay=weight_decay,
        other_lr=temperature_lr,
    )
    kwargs = {}
    if fused is not None:
        kwargs["fused"] = fused
    return torch.optim.AdamW(groups, betas=tuple(betas), eps=eps, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` x peak at
    ``total_steps`` (transformers' ``get_cosine_schedule_with_warmup`` when ``min_lr_ratio`` is 0).
    Every group keeps its own peak (tower LR x layer decay)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if min_lr_ratio == 0.0:
        from transformers import get_cosine_schedule_with_warmup

        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
