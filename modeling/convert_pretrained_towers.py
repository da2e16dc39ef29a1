"""Stage 0 of jina-clip-v2 (paper section 3, Table 6 "weights init"): the two towers from the public
checkpoints the paper names, mapped onto `JinaCLIPModel`'s parameter names.

Vision: EVA02-CLIP-L/14 (Sun et al., 2023), of which only the image tower is kept. Three on-disk layouts:

- ``timm``: timm's own checkpoints (``timm/eva02_large_patch14_clip_224.merged2b``, ``..._clip_336``):
  ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.{q_proj, k_proj, v_proj, norm,
  proj}, norm2, mlp.{fc1_g, fc1_x, norm, fc2}}``, ``norm``, and ``head`` (the projection into the 768-d
  EVA-CLIP space, dropped); q and v biases live in ``q_proj.bias`` / ``v_proj.bias``.
- ``eva_clip``: the original EVA-CLIP files (``QuanSun/EVA-CLIP``, ``EVA02_CLIP_L_psz14_s4B.pt``): the image
  tower under ``visual.`` with the names this package's vision tower already uses (``attn.q_bias``,
  ``attn.inner_attn_ln``, ``mlp.w1/w2/ffn_ln/w3``), its persistent RoPE tables (``rope.freqs_cos/sin``,
  recomputed here), ``visual.head``, and the CLIP text tower and ``logit_scale`` (all dropped).
- ``open_clip``: open_clip's copies (``timm/eva02_large_patch14_clip_224.merged2b_s4b_b131k``): timm's
  names under ``visual.trunk.``, plus the text tower (dropped).

Text: Jina-XLM-RoBERTa as published inside jina-embeddings-v3 (Sturua et al., 2024), without its LoRA
adapters. Layouts:

- ``jina_v3_remote``: ``jinaai/jina-embeddings-v3`` (code: jinaai/xlm-roberta-flash-implementation): every
  Linear / Embedding is a LoRA parametrization (``parametrizations.weight.original`` kept; ``.0.lora_A`` /
  ``.0.lora_B`` of the five task adapters dropped), fused ``mixer.Wqkv`` rows [Q; K; V], ``emb_ln``,
  ``encoder.layers.N.{norm1, norm2, mlp.fc1, mlp.fc2}``, under ``roberta.``; the unused CLS pooler dropped.
- ``jina_v3_original``: the same names with plain ``.weight`` tensors (what transformers 5 writes for
  ``JinaEmbeddingsV3Model`` in its original-format save).
- ``jina_v3_native``: transformers' own ``JinaEmbeddingsV3Model`` names (``jinaai/jina-embeddings-v3-hf``,
  whose adapters are PEFT folders beside the weights, never read), with or without ``roberta.``.
- ``xlm_roberta``: ``FacebookAI/xlm-roberta-large``, an option: the same geometry, but absolute positions;
  its position table (514 x 1024) is dropped and the text tower starts with rotary positions it was never
  trained with, so stage 1 has to learn positions from scratch.

The MLM-only Jina-XLM-RoBERTa checkpoint the paper starts from is not public as far as could be found
(``jinaai/xlm-roberta-flash-implementation`` holds code only); the jina-embeddings-v3 backbone is that model
after jina-embeddings-v3's own text-pair training, the closest public starting point.

The conversion is strict, as the release converter (`convert_jina_clip_release`, whose plan of the fused
text weights is reused here): targets come from `JinaCLIPModel(config)` on the meta device, every source
tensor is consumed or matched by a drop rule with its reason, every target is filled with a tensor of its
exact shape; otherwise `ReleaseCheckpointError` lists the offending names. The position table is loaded at
the checkpoint's own grid and resampled by `JinaCLIPModel.set_image_size` (the same resampling as the
training stages' resolution switches).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .configuration_jina_clip import JinaCLIPConfig
from .convert_jina_clip_release import (
    _BACKBONE_KEYS,
    RELEASE_TEXT_PREFIX,
    ReleaseCheckpointError,
    _build_plan,
    _meta_model,
    _natural_key,
    _section,
    _shape_str,
)

VISION_LAYOUTS = ("timm", "eva_clip", "open_clip")
TEXT_LAYOUTS = ("jina_v3_remote", "jina_v3_original", "jina_v3_native", "xlm_roberta")
_VISION_PREFIX = {"timm": "", "eva_clip": "visual.", "open_clip": "visual.trunk."}

# EVA02-CLIP image towers in timm's registry: heads (not readable from tensor shapes) and the RoPE reference
# grid (`ref_feat_shape`, 16 = 224 / 14, the EVA02 pretraining grid, for all of them).
TIMM_EVA02_CLIP_HEADS = {
    "eva02_base_patch16_clip_224": 12,
    "eva02_large_patch14_clip_224": 16,
    "eva02_large_patch14_clip_336": 16,
}
EVA02_HEAD_WIDTH = 64  # every EVA02(-CLIP) tower: width // 64 heads
EVA02_ROPE_GRID = 16

# What each layout holds besides the tower's weights, and why it is not used.
_CLIP_TEXT = (
    r"(?:text\.|transformer\.|token_embedding\.|ln_final\.).*|positional_embedding|text_projection|attn_mask",
    "the CLIP text tower of EVA02-CLIP",
)
_CLIP_SCALE = (r"logit_(?:scale|bias)", "the CLIP temperature (jina-clip learns one per task)")
_VISION_DROPS = {
    "timm": ((r"head\.(?:weight|bias)", "the projection head into the EVA-CLIP text space"),),
    "eva_clip": (
        (r"visual\.head\.(?:weight|bias)", "the projection head into the EVA-CLIP text space"),
        (r"visual\.(?:blocks\.\d+\.attn\.)?rope\.freqs_(?:cos|sin)", "RoPE tables (recomputed from the grid)"),
        _CLIP_TEXT,
        _CLIP_SCALE,
    ),
    "open_clip": (
        (r"visual\.(?:trunk\.)?head\..*", "the projection head into the EVA-CLIP text space"),
        _CLIP_TEXT,
        _CLIP_SCALE,
    ),
}
_BUFFERS = (
    r"(?:roberta\.)?(?:embeddings\.(?:position_ids|token_type_ids)"
    r"|.+\.lora_dropout_mask|encoder\.layers\.\d+\.mixer\.rotary_emb\..+)",
    "non-persistent buffers (recomputed)",
)
_POOLER = (r"(?:roberta\.)?pooler\..*", "the CLS pooler (jina-clip mean-pools the last hidden states)")
_MLM_HEAD = (r"lm_head\..*", "the masked-language-model head")
_TEXT_DROPS = {
    "jina_v3_remote": (
        (r".+\.parametrizations\.weight\.0\.lora_[AB]", "the LoRA adapters of jina-embeddings-v3's tasks"),
        _POOLER,
        _BUFFERS,
    ),
    "jina_v3_original": (_POOLER, _MLM_HEAD, _BUFFERS),
    "jina_v3_native": (_POOLER, _MLM_HEAD, _BUFFERS),
    "xlm_roberta": (
        (
            r"(?:roberta\.)?embeddings\.position_embeddings\.weight",
            "XLM-R's absolute position table (the text tower uses rotary positions instead)",
        ),
        _POOLER,
        _MLM_HEAD,
        _BUFFERS,
    ),
}

# Our vision names (release / EVA-CLIP) -> timm's, applied to the name below `vision_model.`.
_TIMM_NAMES = (
    (r"\.attn\.q_bias$", ".attn.q_proj.bias"),
    (r"\.attn\.v_bias$", ".attn.v_proj.bias"),
    (r"\.attn\.inner_attn_ln\.", ".attn.norm."),
    (r"\.mlp\.w1\.", ".mlp.fc1_g."),
    (r"\.mlp\.w2\.", ".mlp.fc1_x."),
    (r"\.mlp\.ffn_ln\.", ".mlp.norm."),
    (r"\.mlp\.w3\.", ".mlp.fc2."),
)
# transformers' XLM-R names for our text layers (below `text_model.layers.N.`).
_XLMR_NAMES = (
    (r"^layers\.(\d+)\.self_attn\.q_proj\.", r"encoder.layer.\1.attention.self.query."),
    (r"^layers\.(\d+)\.self_attn\.k_proj\.", r"encoder.layer.\1.attention.self.key."),
    (r"^layers\.(\d+)\.self_attn\.v_proj\.", r"encoder.layer.\1.attention.self.value."),
    (r"^layers\.(\d+)\.self_attn\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.post_attention_layernorm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.post_mlp_layernorm\.", r"encoder.layer.\1.output.LayerNorm."),
)


@dataclass
class _Take:
    """One source tensor -> one target (copy) or several (rows split in order, as the fused Wqkv)."""

    source: str
    targets: list[str]
    target_shapes: list[tuple[int, ...]]

    @property
    def source_shape(self) -> tuple[int, ...]:
        if len(self.targets) == 1:
            return self.target_shapes[0]
        return (sum(shape[0] for shape in self.target_shapes), *self.target_shapes[0][1:])


@dataclass
class TowerReport:
    """What a tower conversion read and left out (printed by `jina-clip init`, kept in its summary)."""

    tower: str
    layout: str
    tensors: int
    consumed: int
    targets: int
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> source keys

    def lines(self) -> list[str]:
        out = [
            f"{self.tower} tower ({self.layout} layout): {self.tensors} tensors read, {self.consumed} mapped onto "
            f"{self.targets} parameters, {sum(map(len, self.dropped.values()))} dropped"
        ]
        for reason, keys in self.dropped.items():
            keys = sorted(keys, key=_natural_key)
            example = ", ".join(keys[:2]) + (", ..." if len(keys) > 2 else "")
            out.append(f"  dropped {len(keys)}: {reason} ({example})")
        return out

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "tensors": self.tensors,
            "mapped": self.consumed,
            "parameters": self.targets,
            "dropped": {reason: len(keys) for reason, keys in self.dropped.items()},
        }


# ----------------------------------------------------------------------------------------------------
# Layouts and geometry
# ----------------------------------------------------------------------------------------------------


def vision_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which EVA02 layout a state dict is in (see the module docstring)."""
    for layout in ("open_clip", "eva_clip", "timm"):
        if _VISION_PREFIX[layout] + "pos_embed" in state_dict:
            return layout
    raise ReleaseCheckpointError(
        "not an EVA02 image tower: no pos_embed, visual.pos_embed or visual.trunk.pos_embed among "
        f"{len(state_dict)} tensors (e.g. {sorted(state_dict, key=_natural_key)[:5]})"
    )


def _text_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    return "roberta." if any(key.startswith("roberta.") for key in state_dict) else ""


def text_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which Jina-XLM-RoBERTa / XLM-R layout a state dict is in (see the module docstring)."""
    prefix = _text_prefix(state_dict)
    if any(key.endswith(".parametrizations.weight.original") for key in state_dict):
        return "jina_v3_remote"
    if prefix + "emb_ln.weight" in state_dict:
        return "jina_v3_original"
    if prefix + "encoder.layer.0.attention.self.query.weight" in state_dict:
        return "xlm_roberta"
    if prefix + "layers.0.self_attn.q_proj.weight" in state_dict:
        return "jina_v3_native"
    raise ReleaseCheckpointError(
        "not a Jina-XLM-RoBERTa / XLM-RoBERTa text tower: none of emb_ln (jina-embeddings-v3), "
        "layers.0.self_attn.q_proj (transformers' JinaEmbeddingsV3) or encoder.layer.0.attention.self.query "
        f"(XLM-R) among {len(state_dict)} tensors (e.g. {sorted(state_dict, key=_natural_key)[:5]})"
    )


@dataclass
class VisionGeometry:
    """The EVA02 tower a checkpoint holds: sizes from its tensors, heads and RoPE grid given."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int
    grid: int  # side of the position table's patch grid (16 for 224 px at patch 14)
    rope_grid_size: int = EVA02_ROPE_GRID

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size

    def config(self, **overrides) -> dict:
        values = {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "rope_grid_size": self.rope_grid_size,
        }
        values.update(overrides)
        return values


def vision_geometry(
    state_dict: Mapping[str, torch.Tensor], *, num_heads: int | None = None, rope_grid: int | None = None
) -> VisionGeometry:
    """Sizes of the EVA02 tower in `state_dict`; `num_heads` (not in any shape) defaults to width / 64,
    as in every EVA02-CLIP model, `rope_grid` to EVA02's pretraining grid (16)."""
    layout = vision_layout(state_dict)
    prefix = _VISION_PREFIX[layout]

    def shape(name: str) -> tuple[int, ...]:
        if prefix + name not in state_dict:
            raise ReleaseCheckpointError(f"{layout} layout without {prefix + name}")
        return tuple(state_dict[prefix + name].shape)

    width = shape("cls_token")[-1]
    positions = shape("pos_embed")[1] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ReleaseCheckpointError(f"{prefix}pos_embed has {positions} patch positions: not a square grid")
    blocks = {int(m.group(1)) for key in state_dict if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", key))}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        raise ReleaseCheckpointError(f"{layout} layout: the blocks are not numbered 0..N-1 ({sorted(blocks)[:10]})")
    gate = "blocks.0.mlp.fc1_g.weight" if layout in ("timm", "open_clip") else "blocks.0.mlp.w1.weight"
    heads = num_heads or width // EVA02_HEAD_WIDTH
    if heads < 1 or width % heads:
        raise ReleaseCheckpointError(f"vision width {width} is not divisible into {heads} heads")
    return VisionGeometry(
        hidden_size=width,
        num_hidden_layers=max(blocks) + 1,
        num_attention_heads=heads,
        intermediate_size=shape(gate)[0],
        patch_size=shape("patch_embed.proj.weight")[-1],
        grid=grid,
        rope_grid_size=rope_grid or EVA02_ROPE_GRID,
    )


def timm_heads(timm_config: Mapping) -> int | None:
    """The head count a timm `config.json` gives (`model_args.num_heads`, else its architecture's)."""
    args = timm_config.get("model_args") or {}
    if args.get("num_heads"):
        return int(args["num_heads"])
    return TIMM_EVA02_CLIP_HEADS.get(str(timm_config.get("architecture", "")))


def timm_rope_grid(timm_config: Mapping) -> int | None:
    shape = (timm_config.get("model_args") or {}).get("ref_feat_shape")
    if shape:
        side = {int(s) for s in (shape if isinstance(shape, (list, tuple)) else [shape])}
        if len(side) != 1:
            raise ReleaseCheckpointError(f"timm ref_feat_shape {shape} is not square")
        return side.pop()
    return None


def text_config_from(source_config: Mapping, layout: str) -> dict:
    """`JinaEmbeddingsV3Config` arguments for the text checkpoint's own `config.json`: jina-embeddings-v3's
    (`XLMRobertaFlashConfig`: `rotary_emb_base`), transformers' native one (`rope_parameters`) or XLM-R's
    (absolute positions: rotary positions at jina-embeddings-v3's base instead)."""
    if layout in ("jina_v3_remote", "jina_v3_original") and source_config.get("model_type") == "xlm-roberta":
        kind = source_config.get("position_embedding_type", "rotary")
        if kind != "rotary":
            raise ReleaseCheckpointError(f"jina-embeddings-v3 config with position_embedding_type={kind!r}, expected 'rotary'")
    text = {key: source_config[key] for key in _BACKBONE_KEYS if key in source_config}
    if layout == "xlm_roberta":
        text.pop("max_position_embeddings", None)  # the absolute table's 514: rotary positions have no limit
    elif source_config.get("rope_parameters"):
        text["rope_parameters"] = dict(source_config["rope_parameters"])
    elif source_config.get("rotary_emb_base") is not None:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": float(source_config["rotary_emb_base"])}
    if text.get("hidden_act", "gelu") != "gelu":
        raise ReleaseCheckpointError(f"text hidden_act {text['hidden_act']!r}: the jina-embeddings-v3 tower uses gelu")
    return text


def stage0_config(vision: VisionGeometry, text: Mapping, **kwargs) -> JinaCLIPConfig:
    """The `JinaCLIPConfig` of the stage-0 model at the vision checkpoint's own resolution (the caller then
    resamples to the stage's with `set_image_size`). Both towers must have one width (identity projections)."""
    text = dict(text)
    width = int(text.get("hidden_size", 1024))
    if width != vision.hidden_size:
        raise ReleaseCheckpointError(
            f"the text tower is {width} wide and the vision tower {vision.hidden_size}: jina-clip has identity "
            "projections, so both towers must have the same width"
        )
    # No instruction until a training stage records the one it trained with (training/export.py).
    kwargs.setdefault("task_instructions", {"retrieval.query": ""})
    return JinaCLIPConfig(text_config=text, vision_config=vision.config(), projection_dim=width, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Plans: target parameter <- source tensor
# ----------------------------------------------------------------------------------------------------


def _target_shapes(model, tower: str) -> dict[str, tuple[int, ...]]:
    prefix = f"{tower}_model."
    return {k[len(prefix):]: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(prefix)}


def _vision_plan(model, layout: str) -> list[_Take]:
    prefix = _VISION_PREFIX[layout]
    takes = []
    for name, shape in _target_shapes(model, "vision").items():
        source = name
        if layout in ("timm", "open_clip"):
            for pattern, replacement in _TIMM_NAMES:
                source = re.sub(pattern, replacement, source)
        takes.append(_Take(prefix + source, ["vision_model." + name], [shape]))
    return takes


def _text_plan(model, layout: str, prefix: str) -> list[_Take]:
    shapes = _target_shapes(model, "text")
    if layout == "jina_v3_native":
        return [_Take(prefix + name, ["text_model." + name], [shape]) for name, shape in shapes.items()]
    if layout == "xlm_roberta":
        takes = []
        for name, shape in shapes.items():
            source = name
            for pattern, replacement in _XLMR_NAMES:
                source = re.sub(pattern, replacement, source)
            takes.append(_Take(prefix + source, ["text_model." + name], [shape]))
        return takes
    # jina-embeddings-v3's own names: the release converter's plan of the same backbone (fused Wqkv, emb_ln,
    # norm1/norm2), with the adapters' base weights read as plain tensors.
    rules, uncovered = _build_plan(model, lora_rank=1)
    if uncovered:  # pragma: no cover - the release plan covers the text tower
        raise ReleaseCheckpointError(f"no jina-embeddings-v3 name for {uncovered[:5]}")
    takes = []
    for rule in rules:
        if not rule.targets[0].startswith("text_model."):
            continue
        source = rule.sources.get("tensor") or rule.sources["original"]
        if layout == "jina_v3_original" and "original" in rule.sources:
            source = source.replace(".parametrizations.weight.original", ".weight")
        takes.append(_Take(prefix + source[len(RELEASE_TEXT_PREFIX):], list(rule.targets), list(rule.target_shapes)))
    return takes


def _drops(tower: str, layout: str, prefix: str) -> tuple[tuple[re.Pattern, str], ...]:
    table = _VISION_DROPS if tower == "vision" else _TEXT_DROPS
    return tuple((re.compile(pattern), reason) for pattern, reason in table[layout])


def _convert(
    state_dict: Mapping[str, torch.Tensor], takes: list[_Take], drops, *, tower: str, layout: str
) -> tuple[dict[str, torch.Tensor], TowerReport]:
    present = set(state_dict)
    missing, mismatched, consumed = [], [], set()
    for take in takes:
        consumed.add(take.source)
        if take.source not in present:
            missing.append(f"{take.source} (-> {', '.join(take.targets)})")
            continue
        shape = tuple(state_dict[take.source].shape)
        if shape != take.source_shape:
            mismatched.append(f"{take.source}: checkpoint {_shape_str(shape)}, expected {_shape_str(take.source_shape)}")
    dropped: dict[str, list[str]] = defaultdict(list)
    unexpected = []
    for key in sorted(present - consumed, key=_natural_key):
        reason = next((why for pattern, why in drops if pattern.fullmatch(key)), None)
        if reason is None:
            unexpected.append(key)
        else:
            dropped[reason].append(key)
    if unexpected or missing or mismatched:
        lines = [f"The {tower} checkpoint ({layout} layout, {len(present)} tensors) does not match the {tower} tower:"]
        lines += _section("tensors neither mapped nor known to be unused (unexpected)", sorted(unexpected, key=_natural_key))
        lines += _section("tensors the tower needs that the checkpoint lacks", sorted(missing, key=_natural_key))
        lines += _section("shape mismatches (checkpoint vs expected)", sorted(mismatched, key=_natural_key))
        raise ReleaseCheckpointError("\n".join(lines), unexpected, missing, mismatched)
    out: dict[str, torch.Tensor] = {}
    for take in takes:
        tensor = state_dict[take.source]
        offset = 0
        for target, shape in zip(take.targets, take.target_shapes):
            out[target] = tensor[offset : offset + shape[0]].clone() if len(take.targets) > 1 else tensor
            offset += shape[0]
    report = TowerReport(tower, layout, len(present), len(consumed), sum(len(t.targets) for t in takes), dict(dropped))
    return out, report


def convert_vision_state_dict(state_dict: Mapping[str, torch.Tensor], config: JinaCLIPConfig):
    """`vision_model.*` tensors of `JinaCLIPModel(config)` from an EVA02-CLIP checkpoint of any layout, at
    the checkpoint's own grid (`config` must have it), and the report of what was dropped."""
    layout = vision_layout(state_dict)
    model = _meta_model(config)
    return _convert(state_dict, _vision_plan(model, layout), _drops("vision", layout, ""), tower="vision", layout=layout)


def convert_text_state_dict(state_dict: Mapping[str, torch.Tensor], config: JinaCLIPConfig):
    """`text_model.*` tensors of `JinaCLIPModel(config)` from a jina-embeddings-v3 / XLM-R checkpoint of any
    layout (see the module docstring), and the report of what was dropped."""
    layout = text_layout(state_dict)
    prefix = _text_prefix(state_dict)
    model = _meta_model(config)
    takes = _text_plan(model, layout, prefix)
    return _convert(state_dict, takes, _drops("text", layout, prefix), tower="text", layout=layout)


def expected_tower_shapes(config: JinaCLIPConfig, tower: str, layout: str, *, prefix: str | None = None) -> dict:
    """The source keys (with shapes) a `layout` checkpoint of `config`'s tower must hold, derived on the meta
    device (a real-size check costs no memory). `prefix` of a text checkpoint: "roberta." by default."""
    model = _meta_model(config)
    if tower == "vision":
        takes = _vision_plan(model, layout)
    else:
        takes = _text_plan(model, layout, "roberta." if prefix is None else prefix)
    return {take.source: take.source_shape for take in takes}


__all__ = [
    "TEXT_LAYOUTS",
    "TIMM_EVA02_CLIP_HEADS",
    "TowerReport",
    "VISION_LAYOUTS",
    "VisionGeometry",
    "convert_text_state_dict",
    "convert_vision_state_dict",
    "expected_tower_shapes",
    "stage0_config",
    "text_config_from",
    "text_layout",
    "timm_heads",
    "timm_rope_grid",
    "vision_geometry",
    "vision_layout",
]
