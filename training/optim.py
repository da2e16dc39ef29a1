"""Optimizer and learning-rate schedule of jina-clip-v2 (paper Table 6).

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
every normalization layer, the embeddings (word, token type, position table, CLS token) and the
temperatures are excluded, which for this model is exactly "every parameter with at most one dimension,
plus the embedding tables".

Parameters that do not require gradients (frozen towers, PEFT base weights, the model's own
``logit_scale``, which training replaces by per-task temperatures) are left out of the optimizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from jina_clip_v2.training.config import OptimSection

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


def build_optimizer(modules: dict[str, nn.Module] | nn.Module, optim: OptimSection) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``modules``, as ``optim`` (the config's ``optim`` section)
    says: the model, or a dict of prefix -> module whose first entry is the model (a ``JinaCLIPModel``)
    and whose other entries (the temperatures) go to the 'other' groups."""
    if isinstance(modules, nn.Module):
        modules = {"": modules}
    model = next(iter(modules.values()))
    named = [
        (f"{prefix}.{name}" if prefix else name, param)
        for prefix, module in modules.items()
        for name, param in module.named_parameters()
    ]
    num_layers = {
        "text": int(model.config.text_config.num_hidden_layers),
        "vision": int(model.config.vision_config.num_hidden_layers),
    }
    groups = param_groups(
        named,
        num_layers=num_layers,
        text_lr=optim.text_lr,
        vision_lr=optim.vision_lr,
        text_layer_decay=optim.text_layer_decay,
        vision_layer_decay=optim.vision_layer_decay,
        weight_decay=optim.weight_decay,
        other_lr=optim.temperature_lr,
    )
    kwargs = {} if optim.fused is None else {"fused": optim.fused}
    return torch.optim.AdamW(groups, betas=tuple(optim.betas), eps=optim.eps, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` x peak at
    ``total_steps`` (transformers' ``get_cosine_with_min_lr_schedule_with_warmup``). Every group keeps
    its own peak (tower LR x layer decay)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, warmup_steps, total_steps, min_lr_rate=min_lr_ratio
    )
