"""Convert the original jinaai/jina-clip-v2 (or jina-clip-v1) checkpoint into this package's layout.

jina-clip-v2 (jinaai/jina-clip-implementation + jinaai/xlm-roberta-flash-implementation) stores its text
tower as `text_model.transformer.roberta.*` with a LoRA parametrization on every `nn.Linear` and
`nn.Embedding` and a fused `mixer.Wqkv`. This package's text tower is transformers' own
`JinaEmbeddingsV3Model`, so the converter

- merges the adapter the release applies to all text (`default_lora_task`, "retrieval.query", index 0):
  Linear    W' = W + scaling * B[i] @ A[i]   (A: [adapters, r, in],  B: [adapters, out, r])
  Embedding W' = W + scaling * A[i] @ B[i]   (A: [adapters, num, r], B: [adapters, r, dim])
  with scaling = lora_alpha / lora_rank (4 / 4 = 1.0 in the release), in float32, then cast;
- splits `mixer.Wqkv` (weight and bias, rows [Q; K; V]) into `self_attn.{q,k,v}_proj`;
- renames emb_ln -> embeddings.LayerNorm, encoder.layers -> layers, mixer.out_proj -> self_attn.o_proj,
  norm1 -> post_attention_layernorm, norm2 -> post_mlp_layernorm (as transformers' own
  jina_embeddings_v3 conversion mapping); mlp.fc1 / mlp.fc2 keep their names;
- keeps `vision_model.*` (the vision tower uses the release's names) and `logit_scale` as they are.

jina-clip-v1 (jinaai/jina-clip-implementation + jinaai/jina-bert-flash-implementation) stores its JinaBERT
text tower as `text_model.transformer.*` without LoRA (docs/jina-clip-v1-release.md, section 2): the
converter splits `mixer.Wqkv` into q/k/v and `mlp.gated_layers` (rows [gate; up]) into `mlp.gate_proj` /
`mlp.up_proj`, and renames emb_ln -> embeddings.LayerNorm, encoder.layers -> layers, mixer.out_proj ->
self_attn.o_proj, norm1 / norm2 -> post_attention_layernorm / post_mlp_layernorm, mlp.wo -> mlp.down_proj.
Which release a snapshot is comes from its config.json (`text_config.hf_model_name_or_path`).

It is strict: the rules are derived from `JinaCLIPModel(config)` built on the meta device, every release
key must be consumed (only known non-persistent buffers are dropped) and every parameter filled with the
right shape; otherwise `ReleaseCheckpointError` lists the offending names.

Not Hub remote code (it is not copied into exported folders); it lives here next to the model it targets.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .configuration_jina_clip import JinaCLIPConfig, release_config_to_kwargs, release_version
from .modeling_jina_clip import JinaCLIPModel

RELEASE_TEXT_PREFIX = "text_model.transformer.roberta."  # jina-clip-v2
RELEASE_V1_TEXT_PREFIX = "text_model.transformer."  # jina-clip-v1
TEXT_PREFIX = "text_model."

# What `text_config.hf_model_config_kwargs` does not override comes from jinaai/jina-embeddings-v3's own
# config (XLMRobertaFlashConfig): these are its LoRA values (release reference, section 1.2 / 5.1).
V3_LORA_DEFAULTS = {
    "lora_rank": 4,
    "lora_alpha": 1,
    "lora_adaptations": ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"],
}
# Backbone hyper-parameters the release may override through hf_model_config_kwargs (it `.update()`s the
# jina-embeddings-v3 config with them); XLMRobertaFlashConfig and JinaEmbeddingsV3Config share these names.
_BACKBONE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)

# Non-persistent buffers of the release modules. They are not saved by the release, but a state dict
# dumped from a live model may hold them; they carry no weights and are dropped silently. Nothing else is.
KNOWN_RELEASE_BUFFERS = re.compile(
    r"text_model\.transformer\.roberta\.(?:"
    r".+\.parametrizations\.weight\.\d+\.lora_dropout_mask"
    r"|encoder\.layers\.\d+\.mixer\.rotary_emb\.(?:inv_freq|_cos_cached|_sin_cached|_cos_k_cached|_sin_k_cached)"
    r"|embeddings\.(?:position_ids|token_type_ids)"
    r")"
    r"|vision_model\.(?:blocks\.\d+\.attn\.)?rope\.(?:freqs_cos|freqs_sin)"
    # jina-clip-v1: the ALiBi tables of jina-bert-flash-implementation (mixer / inner attention buffers).
    r"|text_model\.transformer\.encoder\.layers\.\d+\.mixer\.(?:inner_attn\.)?(?:linear_biases|alibi_slopes)"
)

# Our text module (relative to text_model.) -> release module (relative to the release's text prefix)
# and, for fused projections (QKV; v1's gate + up), the slot of the fused rows it takes.
_SHARED_TEXT_RULES = (
    (r"embeddings\.(word_embeddings|token_type_embeddings)", r"embeddings.\1", None),
    (r"embeddings\.LayerNorm", "emb_ln", None),
    (r"layers\.(\d+)\.self_attn\.q_proj", r"encoder.layers.\1.mixer.Wqkv", 0),
    (r"layers\.(\d+)\.self_attn\.k_proj", r"encoder.layers.\1.mixer.Wqkv", 1),
    (r"layers\.(\d+)\.self_attn\.v_proj", r"encoder.layers.\1.mixer.Wqkv", 2),
    (r"layers\.(\d+)\.self_attn\.o_proj", r"encoder.layers.\1.mixer.out_proj", None),
    (r"layers\.(\d+)\.post_attention_layernorm", r"encoder.layers.\1.norm1", None),
    (r"layers\.(\d+)\.post_mlp_layernorm", r"encoder.layers.\1.norm2", None),
)
_TEXT_MODULE_RULES: dict[str, tuple[tuple[re.Pattern, str, int | None], ...]] = {
    version: tuple((re.compile(pattern), template, slot) for pattern, template, slot in _SHARED_TEXT_RULES + extra)
    for version, extra in (
        ("v2", ((r"layers\.(\d+)\.mlp\.(fc1|fc2)", r"encoder.layers.\1.mlp.\2", None),)),
        (
            "v1",
            (
                (r"layers\.(\d+)\.mlp\.gate_proj", r"encoder.layers.\1.mlp.gated_layers", 0),
                (r"layers\.(\d+)\.mlp\.up_proj", r"encoder.layers.\1.mlp.gated_layers", 1),
                (r"layers\.(\d+)\.mlp\.down_proj", r"encoder.layers.\1.mlp.wo", None),
            ),
        ),
    )
}
_RELEASE_TEXT_PREFIXES = {"v1": RELEASE_V1_TEXT_PREFIX, "v2": RELEASE_TEXT_PREFIX}

_ORIGINAL = ".parametrizations.weight.original"
_LORA_A = ".parametrizations.weight.0.lora_A"
_LORA_B = ".parametrizations.weight.0.lora_B"
_LIST_LIMIT = 20


class ReleaseCheckpointError(ValueError):
    """The release checkpoint (or its config) does not match what `JinaCLIPModel(config)` expects.

    `unexpected`: release keys no rule consumes; `missing`: release keys a parameter needs but the checkpoint
    lacks (or parameters no rule fills); `mismatched`: keys whose shape is wrong. Each is a list of strings.
    """

    def __init__(self, message: str, unexpected=(), missing=(), mismatched=()):
        super().__init__(message)
        self.unexpected = list(unexpected)
        self.missing = list(missing)
        self.mismatched = list(mismatched)


# ----------------------------------------------------------------------------------------------------
# The conversion plan, derived from the target model
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Rule:
    """One release tensor group -> one or more of our parameters.

    kind: "copy" (one source, one target), "split" (plain fused tensor split along dim 0), "linear" /
    "embedding" (parametrized weight: original + lora_A + lora_B, merged, then split along dim 0 when
    several targets share it). `sources` maps a role (tensor/original/lora_A/lora_B) to a release key;
    `shapes` gives the expected shape per role (None = the adapter count, checked for consistency)."""

    kind: str
    sources: dict[str, str]
    shapes: dict[str, tuple[int | None, ...]]
    targets: list[str]
    target_shapes: list[tuple[int, ...]] = field(default_factory=list)


def _release_text_module(name: str, version: str) -> tuple[str, int | None] | None:
    for pattern, template, slot in _TEXT_MODULE_RULES[version]:
        match = pattern.fullmatch(name)
        if match:
            return match.expand(template), slot
    return None


@contextmanager
def _meta_init() -> Iterator[None]:
    """Build on the meta device. Like transformers' own loader, let `torch.linspace` default to CPU so that
    drop-path schedules computed with `.tolist()` in `__init__` do not fail on meta tensors."""
    original = torch.linspace

    def linspace(*args, **kwargs):
        kwargs.setdefault("device", "cpu")
        return original(*args, **kwargs)

    torch.linspace = linspace
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.linspace = original


def _meta_model(config: JinaCLIPConfig) -> JinaCLIPModel:
    with _meta_init():
        return JinaCLIPModel(config)


def _lora_rule(base: str, fused: tuple[int, ...], is_embedding: bool, lora_rank: int, weights, shapes) -> _Rule:
    """A LoRA-parametrized release weight (original + lora_A + lora_B), merged into `weights`."""
    if is_embedding:
        num, dim = fused
        lora_shapes = {"lora_A": (None, num, lora_rank), "lora_B": (None, lora_rank, dim)}
    else:
        out, inp = fused
        lora_shapes = {"lora_A": (None, lora_rank, inp), "lora_B": (None, out, lora_rank)}
    return _Rule(
        "embedding" if is_embedding else "linear",
        {"original": base + _ORIGINAL, "lora_A": base + _LORA_A, "lora_B": base + _LORA_B},
        {"original": fused, **lora_shapes},
        weights,
        shapes,
    )


def _build_plan(model: nn.Module, lora_rank: int) -> tuple[list[_Rule], list[str]]:
    """Rules covering every entry of `model.state_dict()`; the second list names entries no rule covers.
    jina-clip-v2's text weights are LoRA-parametrized (merged); jina-clip-v1's are plain tensors."""
    version = model.config.version
    lora = version == "v2"
    prefix = _RELEASE_TEXT_PREFIXES[version]
    target_shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    rules: list[_Rule] = []
    covered: set[str] = set()
    text = model.text_model
    # Linear / Embedding weights grouped by release module; a fused tensor (Wqkv, v1's gated_layers)
    # collects its parts in slot order.
    groups: dict[str, list[tuple[int, str, nn.Module]]] = {}
    for module_name, module in text.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        mapped = _release_text_module(module_name, version)
        if mapped is None or not isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            continue  # left uncovered: reported as a parameter without a conversion rule
        release_module, slot = mapped
        if isinstance(module, (nn.Linear, nn.Embedding)):
            groups.setdefault(release_module, []).append((slot or 0, module_name, module))
        else:  # LayerNorm: plain copies
            for param_name in own:
                target = f"{TEXT_PREFIX}{module_name}.{param_name}"
                source = f"{prefix}{release_module}.{param_name}"
                rules.append(_Rule("copy", {"tensor": source}, {"tensor": target_shapes[target]}, [target]))
                covered.add(target)

    for release_module, members in groups.items():
        members.sort(key=lambda member: member[0])
        kinds = {type(module) for _, _, module in members}
        if len(kinds) != 1 or [slot for slot, _, _ in members] != list(range(len(members))):
            continue  # inconsistent fusion: reported as uncovered
        is_embedding = isinstance(members[0][2], nn.Embedding)
        if is_embedding and len(members) != 1:
            continue
        weights = [f"{TEXT_PREFIX}{name}.weight" for _, name, _ in members]
        shapes = [target_shapes[w] for w in weights]
        if len({shape[1:] for shape in shapes}) != 1:
            continue
        fused = (sum(shape[0] for shape in shapes), *shapes[0][1:])
        base = prefix + release_module
        if lora:
            rules.append(_lora_rule(base, fused, is_embedding, lora_rank, weights, shapes))
        else:
            kind = "copy" if len(members) == 1 else "split"
            rules.append(_Rule(kind, {"tensor": base + ".weight"}, {"tensor": fused}, weights, shapes))
        covered.update(weights)
        biases = [
            f"{TEXT_PREFIX}{name}.bias" for _, name, module in members if getattr(module, "bias", None) is not None
        ]
        if biases:
            if len(biases) != len(members):
                continue
            bias_shapes = [target_shapes[b] for b in biases]
            kind = "copy" if len(biases) == 1 else "split"
            fused_bias = (sum(shape[0] for shape in bias_shapes),)
            rules.append(_Rule(kind, {"tensor": base + ".bias"}, {"tensor": fused_bias}, biases, bias_shapes))
            covered.update(biases)

    # Vision tower and logit_scale: the release's own names.
    for target, shape in target_shapes.items():
        if not target.startswith(TEXT_PREFIX):
            rules.append(_Rule("copy", {"tensor": target}, {"tensor": shape}, [target], [shape]))
            covered.add(target)
    for rule in rules:
        if not rule.target_shapes:
            rule.target_shapes = [target_shapes[t] for t in rule.targets]
    uncovered = [name for name in target_shapes if name not in covered]
    return rules, uncovered


def expected_release_shapes(
    config: JinaCLIPConfig, *, num_adapters: int = 1, lora_rank: int = 4
) -> dict[str, tuple[int, ...]]:
    """Every key of a release checkpoint matching `config`, with its shape (built on the meta device)."""
    rules, _ = _build_plan(_meta_model(config), lora_rank)
    return {
        key: tuple(num_adapters if dim is None else dim for dim in rule.shapes[role])
        for rule in rules
        for role, key in rule.sources.items()
    }


# ----------------------------------------------------------------------------------------------------
# State-dict conversion
# ----------------------------------------------------------------------------------------------------


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _section(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    lines = [f"{len(items)} {title}:"]
    lines += [f"  {item}" for item in items[:_LIST_LIMIT]]
    if len(items) > _LIST_LIMIT:
        lines.append(f"  ... and {len(items) - _LIST_LIMIT} more")
    return lines


def _shape_str(shape) -> str:
    return "[" + ", ".join("*" if dim is None else str(dim) for dim in shape) + "]"


def _raise_report(unexpected: list[str], missing: list[str], mismatched: list[str], total: int) -> None:
    unexpected = sorted(unexpected, key=_natural_key)
    missing = sorted(missing, key=_natural_key)
    mismatched = sorted(mismatched, key=_natural_key)
    lines = [f"The release checkpoint ({total} tensors) does not match JinaCLIPModel(config):"]
    lines += _section("release keys not consumed by any rule (unexpected)", unexpected)
    lines += _section("keys missing from the release checkpoint", missing)
    lines += _section("shape mismatches (checkpoint vs expected)", mismatched)
    lines.append(
        "Check that config.json belongs to these weights (text backbone sizes come from "
        "text_config.hf_model_config_kwargs, else the backbone's defaults: jina-embeddings-v3 for "
        "jina-clip-v2, jina-bert-flash-implementation for jina-clip-v1)."
    )
    raise ReleaseCheckpointError("\n".join(lines), unexpected, missing, mismatched)


def convert_release_state_dict(
    release_state_dict: Mapping[str, torch.Tensor],
    config: JinaCLIPConfig,
    *,
    lora_alpha: float = 4.0,
    lora_rank: int = 4,
    adapter_index: int = 0,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Map a release state dict onto `JinaCLIPModel(config).state_dict()` keys (see the module docstring).

    Args:
        release_state_dict: the release's tensors (v2: `text_model.transformer.roberta.*`, v1:
            `text_model.transformer.*`; `vision_model.*`, `logit_scale`).
        config: the target config (e.g. from `config_from_release`); shapes are checked against it.
        lora_alpha, lora_rank: from the release's `text_config.hf_model_config_kwargs` (release: 4 and 4,
            scaling 1.0). `lora_rank` must equal the rank dimension of every lora_A / lora_B.
        adapter_index: which LoRA adapter to merge: the position of `default_lora_task`
            ("retrieval.query") in `lora_adaptations` (0 in the release). The LoRA arguments are unused for
            jina-clip-v1 (`config.version == "v1"`), whose text tower has no adapters.
        dtype: dtype of the returned tensors; None keeps each tensor's checkpoint dtype. Merges always run
            in float32 (at least) and are cast once at the end.

    Raises:
        ReleaseCheckpointError: unconsumed release keys, missing keys or wrong shapes, all listed by name.
    """
    if lora_rank <= 0:
        raise ValueError(f"lora_rank must be positive, got {lora_rank}")
    scaling = float(lora_alpha) / float(lora_rank)
    rules, uncovered = _build_plan(_meta_model(config), lora_rank)
    present = set(release_state_dict)

    missing = [f"{name} (a parameter of JinaCLIPModel that no conversion rule fills)" for name in uncovered]
    mismatched: list[str] = []
    consumed: set[str] = set()
    adapters_seen: dict[int, str] = {}
    for rule in rules:
        for role, key in rule.sources.items():
            consumed.add(key)
            if key not in present:
                missing.append(f"{key} (-> {', '.join(rule.targets)})")
                continue
            shape = tuple(release_state_dict[key].shape)
            expected = rule.shapes[role]
            if len(shape) != len(expected) or any(e is not None and e != s for s, e in zip(shape, expected)):
                mismatched.append(f"{key}: checkpoint {_shape_str(shape)}, expected {_shape_str(expected)}")
            elif None in expected:
                adapters_seen.setdefault(shape[0], key)
    if len(adapters_seen) > 1:
        mismatched += [
            f"{key}: {count} LoRA adapters (the counts differ across keys)" for count, key in adapters_seen.items()
        ]
    elif adapters_seen and not 0 <= adapter_index < next(iter(adapters_seen)):
        count, key = next(iter(adapters_seen.items()))
        mismatched.append(f"{key}: {count} LoRA adapter(s), but adapter_index={adapter_index} was asked for")
    unexpected = [key for key in present - consumed if not KNOWN_RELEASE_BUFFERS.fullmatch(key)]
    if unexpected or missing or mismatched:
        _raise_report(unexpected, missing, mismatched, len(present))

    converted: dict[str, torch.Tensor] = {}
    for rule in rules:
        if rule.kind in ("copy", "split"):
            tensor = release_state_dict[rule.sources["tensor"]]
            out_dtype = dtype or tensor.dtype
            values = tensor
        else:
            original = release_state_dict[rule.sources["original"]]
            out_dtype = dtype or original.dtype
            compute = torch.promote_types(original.dtype, torch.float32)
            lora_a = release_state_dict[rule.sources["lora_A"]][adapter_index].to(compute)
            lora_b = release_state_dict[rule.sources["lora_B"]][adapter_index].to(compute)
            delta = lora_b @ lora_a if rule.kind == "linear" else lora_a @ lora_b
            values = original.to(compute) + scaling * delta
        if len(rule.targets) == 1:
            converted[rule.targets[0]] = values.to(out_dtype)
            continue
        offset = 0
        for target, shape in zip(rule.targets, rule.target_shapes):
            converted[target] = values[offset : offset + shape[0]].to(out_dtype).clone()
            offset += shape[0]
    # Defence in depth: the result must be exactly the model's state dict.
    for rule in rules:
        for target, shape in zip(rule.targets, rule.target_shapes):
            if tuple(converted[target].shape) != shape:  # pragma: no cover - guaranteed by the plan
                got = tuple(converted[target].shape)
                raise ReleaseCheckpointError(f"internal error: {target} converted to {got}, expected {shape}")
    return converted


# ----------------------------------------------------------------------------------------------------
# Release config
# ----------------------------------------------------------------------------------------------------


def _release_version(release: Mapping) -> str:
    try:
        return release_version(dict(release))
    except ValueError as err:
        raise ReleaseCheckpointError(f"unsupported release config: {err}") from err


def _is_release_config(release: Mapping) -> bool:
    text = release.get("text_config") or {}
    return isinstance(text, Mapping) and ("hf_model_config_kwargs" in text or "hf_model_name_or_path" in text)


# jina-bert-flash-implementation options whose non-default values change the math (v1 release reference,
# section 1.2): only the plain GLU encoder with full attention over every token is implemented.
_V1_BACKBONE_DEFAULTS = {"mlp_type": "glu", "use_qk_norm": False, "window_size": [-1, -1], "last_layer_subset": False}


def config_from_release(release: Mapping) -> JinaCLIPConfig:
    """Our `JinaCLIPConfig` for a release `config.json` (as a dict), jina-clip-v2's or jina-clip-v1's.

    The release takes its text backbone sizes from the backbone's own config (v2: jinaai/jina-embeddings-v3,
    v1: jinaai/jina-bert-flash-implementation) updated with `text_config.hf_model_config_kwargs`; the
    backbone values are `JinaEmbeddingsV3Config`'s / `JinaBertConfig`'s defaults, and any backbone key
    present in those kwargs overrides them here too."""
    if not _is_release_config(release):
        raise ReleaseCheckpointError(
            "not a config.json of the original jinaai/jina-clip-v1 / jina-clip-v2 release (no "
            "text_config.hf_model_config_kwargs / hf_model_name_or_path); an already converted folder loads "
            "with JinaCLIPModel.from_pretrained"
        )
    try:
        kwargs = release_config_to_kwargs(dict(release))
    except ValueError as err:
        raise ReleaseCheckpointError(f"unsupported release config: {err}") from err
    hf_kwargs = dict(release["text_config"].get("hf_model_config_kwargs") or {})
    text = dict(kwargs["text_config"])
    backbone_width = hf_kwargs.get("hidden_size")
    if backbone_width is not None and int(backbone_width) != int(text["hidden_size"]):
        raise ReleaseCheckpointError(
            f"release text backbone hidden_size ({backbone_width}) differs from text_config.embed_dim "
            f"({text['hidden_size']}): the release would add a text projection, which this package does not have"
        )
    if kwargs["text_config"].get("model_type") == "jina_bert":
        for key, default in _V1_BACKBONE_DEFAULTS.items():
            value = hf_kwargs.get(key, default)
            if (list(value) if isinstance(value, (list, tuple)) else value) != default:
                raise ReleaseCheckpointError(
                    f"release text backbone has {key}={value!r}; only {key}={default!r} (jina-clip-v1's) is supported"
                )
    else:
        embedding_type = hf_kwargs.get("position_embedding_type", "rotary")
        if embedding_type != "rotary":
            raise ReleaseCheckpointError(
                f"release text backbone uses position_embedding_type={embedding_type!r}; only 'rotary' is supported"
            )
    for key in _BACKBONE_KEYS:
        if key in hf_kwargs and key not in text:
            text[key] = hf_kwargs[key]
    kwargs["text_config"] = text
    try:
        return JinaCLIPConfig(**kwargs)
    except ValueError as err:
        raise ReleaseCheckpointError(f"release config gives an invalid JinaCLIPConfig: {err}") from err


def release_lora_settings(release: Mapping) -> dict:
    """`lora_alpha`, `lora_rank` and `adapter_index` (of `default_lora_task`) of a release config.json,
    as keyword arguments for `convert_release_state_dict`; empty for jina-clip-v1, which has no LoRA."""
    if _release_version(release) == "v1":
        return {}
    text = release.get("text_config") or {}
    hf_kwargs = {**V3_LORA_DEFAULTS, **(text.get("hf_model_config_kwargs") or {})}
    task = text.get("default_lora_task")
    adapters = list(hf_kwargs["lora_adaptations"] or [])
    if task is None:
        raise ReleaseCheckpointError(
            "release config has no text_config.default_lora_task: the release would then run the text tower "
            "without LoRA, which this converter does not support (jina-clip-v2 uses 'retrieval.query')"
        )
    if task not in adapters:
        raise ReleaseCheckpointError(f"default_lora_task {task!r} is not one of lora_adaptations {adapters}")
    return {
        "lora_alpha": float(hf_kwargs["lora_alpha"]),
        "lora_rank": int(hf_kwargs["lora_rank"]),
        "adapter_index": adapters.index(task),
    }


# ----------------------------------------------------------------------------------------------------
# Snapshot folders
# ----------------------------------------------------------------------------------------------------


def _shard_paths(folder: Path, index_file: Path) -> list[Path]:
    with open(index_file, encoding="utf-8") as handle:
        weight_map = json.load(handle).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ReleaseCheckpointError(f"{index_file} has no weight_map")
    shards = []
    for name in dict.fromkeys(weight_map.values()):
        if not isinstance(name, str) or Path(name).name != name:
            raise ReleaseCheckpointError(f"{index_file}: shard name {name!r} is not a file name in the folder")
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{index_file} names the shard {name}, which is not in {folder}")
        shards.append(path)
    return shards


def _load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ReleaseCheckpointError(
            f"{path} holds more than tensors; it is not loaded with a full unpickler (weights_only=True): {err}"
        ) from err
    except (RuntimeError, EOFError) as err:  # torch's zip reader on a cut or overwritten file
        raise ReleaseCheckpointError(f"cannot read {path}: {err} (a truncated or corrupt file)") from err
    # A training checkpoint's layout: the state dict under "model".
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise ReleaseCheckpointError(f"{path} is not a flat state dict of named tensors")
    return dict(data)


def _load_safetensors_file(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError)
        if type(err).__name__ != "SafetensorError" and "deserializ" not in str(err):
            raise
        raise ReleaseCheckpointError(f"cannot read {path}: {err} (a truncated or corrupt .safetensors file)") from err


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The named tensors of one `.safetensors` file, or of a `.bin` / `.pt` / `.pth` file read with
    `torch.load(weights_only=True)`; a clear error for a corrupt file, a pickle holding more than tensors or
    another suffix."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors_file(path)
    if path.suffix in (".bin", ".pt", ".pth"):
        return _load_torch_file(path)
    raise ReleaseCheckpointError(f"unknown weights file type {path.suffix!r} ({path}); expected .safetensors or .bin")


def load_release_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The release tensors of a snapshot folder: `model.safetensors`, a sharded
    `model.safetensors.index.json`, `pytorch_model.bin` or `pytorch_model.bin.index.json` (first found)."""
    folder = Path(folder)
    candidates = (
        ("model.safetensors", lambda p: [p]),
        ("model.safetensors.index.json", lambda p: _shard_paths(folder, p)),
        ("pytorch_model.bin", lambda p: [p]),
        ("pytorch_model.bin.index.json", lambda p: _shard_paths(folder, p)),
    )
    for name, files in candidates:
        path = folder / name
        if not path.is_file():
            continue
        state_dict: dict[str, torch.Tensor] = {}
        for file in files(path):
            part = read_weights_file(file)
            duplicated = sorted(state_dict.keys() & part.keys())
            if duplicated:
                raise ReleaseCheckpointError(f"{file} repeats tensors of another shard: {duplicated[:_LIST_LIMIT]}")
            state_dict.update(part)
        return state_dict
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    present = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(
        f"no weights in {folder}: expected one of {', '.join(name for name, _ in candidates)}; "
        f"the folder holds {present or 'nothing'}"
    )


def _read_release_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {folder} (a snapshot of jinaai/jina-clip-v1 or jina-clip-v2 is expected)")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_release_snapshot(
    folder: str | os.PathLike, *, dtype: torch.dtype | None = None
) -> tuple[JinaCLIPConfig, dict[str, torch.Tensor]]:
    """Read a local snapshot of the release (config.json + weights) and return our config and the
    converted state dict (`dtype` None: the checkpoint's own dtype, merges computed in float32)."""
    folder = Path(folder)
    release = _read_release_config(folder)
    config = config_from_release(release)
    lora = release_lora_settings(release)
    weights = load_release_weights(folder)
    return config, convert_release_state_dict(weights, config, dtype=dtype, **lora)


def convert_release_snapshot(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
) -> JinaCLIPModel:
    """A `JinaCLIPModel` (eval mode) holding the release weights of `folder`, loaded strictly.

    `dtype` defaults to float32, as the release runs on CPU: the LoRA merge of a bf16 checkpoint is then
    kept unrounded (None: the checkpoint's dtype). With `out_dir`, the model is also written there with `save_pretrained` (config, weights
    and the remote-code files; tokenizer/processor/sentence-transformers files are `hub/`'s export)."""
    config, state_dict = load_release_snapshot(folder, dtype=dtype)
    if dtype is None:
        dtype = state_dict["logit_scale"].dtype
    # transformers' loader (meta-device init, then the tensors) instead of `JinaCLIPModel(config)` +
    # `load_state_dict`: the same result, without a random init of 865M parameters (~30 s on a CPU).
    # Strict all the same: any missing / unexpected / mismatched key is an error.
    model, info = JinaCLIPModel.from_pretrained(
        None, config=config, state_dict=state_dict, dtype=dtype, output_loading_info=True
    )
    problems = {
        name: sorted(map(str, info.get(name) or ()))
        for name in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    }
    if any(problems.values()):
        raise ReleaseCheckpointError(f"loading the converted weights was not exact: {problems}")
    model.eval()
    if out_dir is not None:
        model.save_pretrained(out_dir)
    return model


__all__ = [
    "ReleaseCheckpointError",
    "KNOWN_RELEASE_BUFFERS",
    "config_from_release",
    "convert_release_snapshot",
    "convert_release_state_dict",
    "expected_release_shapes",
    "load_release_snapshot",
    "load_release_weights",
    "read_weights_file",
    "release_lora_settings",
]
