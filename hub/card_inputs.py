"""The model card's inputs: the evaluation results and training summary JSON files, checked, and what
the card makes of them (the results table and model-index entries, the training sentence and table).

Evaluation results JSON (written by `evaluation/`, read by `--eval-results`)
---------------------------------------------------------------------------
::

    {
      "model": "jina-clip-v2",                      # optional: what was evaluated
      "results": [                                  # one entry per (task, dataset, language, dim)
        {
          "task": "Flickr30K",                      # benchmark / task name (table column "Task")
          "type": "text-to-image retrieval",        # kind of task; model-index task type is its slug
          "dataset": {
            "name": "Flickr30K",                    # required
            "id": "nlphuji/flickr_1k_test_image_text_retrieval",  # optional: Hub dataset id
            "split": "test",                        # optional
            "language": "en",                       # optional: language of the queries / documents
            "config": "default",                    # optional: dataset config (defaults to language)
            "revision": "abc123"                    # optional
          },
          "metrics": {"recall@1": 0.8312, "recall@5": 0.9624},   # required: name -> number
          "truncate_dim": 1024                      # optional: Matryoshka dim (null / absent: full)
        }
      ]
    }

Every result appears in the README table. The `model-index` (the Hub's machine-readable results) holds
the full-dimension results only (`truncate_dim` absent, null or the model's embedding width): a
Matryoshka sweep would otherwise list the same metric several times for one dataset. Metric names become
model-index metric types by slugging (`recall@1` -> `recall_at_1`); the original name is kept as the
metric's display name.

Training summary JSON (written by `training/`, read by `--training-summary`)
---------------------------------------------------------------------------
::

    {
      "base_model": "jinaai/jina-embeddings-v3",   # optional: card metadata base_model
      "datasets": ["org/dataset", ...],            # optional: card metadata datasets (Hub ids)
      "stages": [                                  # required: one entry per training stage, in order
        {"name": "stage1", "steps": 1000, "image_size": 224, "text_max_length": 77,
         "learning_rate": 1e-4, "final_loss": 1.23, ...}   # any scalar (or small list/dict) fields
      ]
    }

The stages become a table (one row per stage, one column per field, in first-seen order).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

# A path on the machine that wrote the card (a public card shows only its last component).
_LOCAL_PATH = re.compile(r"^(/|~|\.{1,2}[\\/]|[A-Za-z]:[\\/]|\\\\)")


class ModelCardError(ValueError):
    """An evaluation / training summary file or a model card that does not follow the expected format."""


# ----------------------------------------------------------------------------------------------------
# Input files
# ----------------------------------------------------------------------------------------------------


def _read(source: str | os.PathLike | Mapping, what: str) -> dict:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise ModelCardError(f"{what} file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ModelCardError(f"{what} file {path} must hold a JSON object, not {type(data).__name__}")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_eval_results(source: str | os.PathLike | Mapping) -> dict:
    """Read and check an evaluation results JSON (schema in this module's docstring)."""
    data = _read(source, "evaluation results")
    results = data.get("results")
    if not isinstance(results, list) or not results:
        raise ModelCardError('evaluation results need a non-empty "results" list')
    for i, result in enumerate(results):
        where = f"results[{i}]"
        if not isinstance(result, Mapping):
            raise ModelCardError(f"{where} must be an object")
        for key in ("task", "type"):
            if not isinstance(result.get(key), str) or not result[key].strip():
                raise ModelCardError(f'{where} needs a non-empty string "{key}"')
        dataset = result.get("dataset")
        if not isinstance(dataset, Mapping) or not isinstance(dataset.get("name"), str) or not dataset["name"]:
            raise ModelCardError(f'{where} needs "dataset": {{"name": ...}}')
        for key in ("id", "split", "language", "config", "revision"):
            if dataset.get(key) is not None and not isinstance(dataset[key], str):
                raise ModelCardError(f"{where}.dataset.{key} must be a string")
        metrics = result.get("metrics")
        if not isinstance(metrics, Mapping) or not metrics:
            raise ModelCardError(f'{where} needs a non-empty "metrics" object')
        bad = [name for name, value in metrics.items() if not _is_number(value)]
        if bad:
            raise ModelCardError(f"{where}.metrics must map names to finite numbers; not numbers: {bad}")
        dim = result.get("truncate_dim")
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise ModelCardError(f"{where}.truncate_dim must be a positive integer or null, got {dim!r}")
    return data


def load_training_summary(source: str | os.PathLike | Mapping) -> dict:
    """Read and check a training summary JSON (schema in this module's docstring)."""
    data = _read(source, "training summary")
    stages = data.get("stages")
    init = data.get("init")
    if init is not None and not isinstance(init, Mapping):
        raise ModelCardError('"init" must be an object (the stage-0 sources written by `jina-clip init`)')
    if not isinstance(stages, list) or not (stages or init):
        raise ModelCardError('a training summary needs a non-empty "stages" list (or an "init" block)')
    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping) or not isinstance(stage.get("name"), str):
            raise ModelCardError(f'stages[{i}] must be an object with a string "name"')
    base = data.get("base_model")
    if base is not None and not (isinstance(base, str) or (isinstance(base, list) and all(isinstance(b, str) for b in base))):
        raise ModelCardError('"base_model" must be a string or a list of strings')
    datasets = data.get("datasets")
    if datasets is not None and (not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets)):
        raise ModelCardError('"datasets" must be a list of strings')
    return data


# ----------------------------------------------------------------------------------------------------
# What the card shows of them
# ----------------------------------------------------------------------------------------------------


def _is_local_path(value: Any) -> bool:
    return isinstance(value, str) and bool(_LOCAL_PATH.match(value.strip()))


def _public(value: Any) -> Any:
    """`value` as a public card may show it: a local path becomes its last component (a card must not
    reveal the folders of the machine that wrote it); lists and dicts are cleaned recursively."""
    if _is_local_path(value):
        parts = [part for part in re.split(r"[\\/]", value.strip()) if part]
        return parts[-1] if parts else value.strip()
    if isinstance(value, list):
        return [_public(item) for item in value]
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items()}
    return value


def _slug(text: str) -> str:
    text = text.strip().lower().replace("@", "_at_")
    return re.sub(r"[^a-z0-9_]+", "-", text).strip("-")


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"  # 0.8312, 83.12, 2e-05
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def eval_results_to_card(results: dict, embedding_dim: int) -> tuple[list[EvalResult], str]:
    """The model-index entries (full-dimension results) and the README results table (all results)."""
    entries: list[EvalResult] = []
    metric_names = list(dict.fromkeys(name for r in results["results"] for name in r["metrics"]))
    rows = []
    for result in results["results"]:
        dataset = dict(result["dataset"])
        if _is_local_path(dataset.get("id")):
            dataset.pop("id")  # read from a local copy: the model-index names the dataset instead
        dataset = _public(dataset)
        dim = result.get("truncate_dim")
        rows.append(
            [
                _format_value(result["task"]),
                _format_value(result["type"]),
                _format_value(dataset["name"]),
                _format_value(dataset.get("split") or ""),
                _format_value(dataset.get("language") or ""),
                str(dim or embedding_dim),
            ]
            + [_format_value(result["metrics"].get(name)) for name in metric_names]
        )
        if dim not in (None, embedding_dim):
            continue
        for name, value in result["metrics"].items():
            entries.append(
                EvalResult(
                    task_type=_slug(result["type"]),
                    task_name=result["type"],
                    dataset_type=dataset.get("id") or dataset["name"],
                    dataset_name=dataset["name"],
                    dataset_config=dataset.get("config") or dataset.get("language"),
                    dataset_split=dataset.get("split"),
                    dataset_revision=dataset.get("revision"),
                    metric_type=_slug(name),
                    metric_name=name,
                    metric_value=value,
                )
            )
    header = ["Task", "Type", "Dataset", "Split", "Language", "Dim"] + metric_names
    return entries, _table(header, rows)


# The public checkpoints the paper starts from (section 3, Table 6 "weights init"), as `jina-clip init` names
# them: EVA02-CLIP-L/14 (timm's, open_clip's or EVA-CLIP's files) and Jina-XLM-RoBERTa (jina-embeddings-v3).
PAPER_VISION_SOURCES = (
    "timm/eva02_large_patch14_clip_224.merged2b",
    "timm/eva02_large_patch14_clip_224.merged2b_s4b_b131k",
    "QuanSun/EVA-CLIP",
)
PAPER_TEXT_SOURCES = ("jinaai/jina-embeddings-v3", "jinaai/jina-embeddings-v3-hf")
_PAPER_STAGES = ("stage1", "stage2", "stage3")


def _init_sentence(init: Mapping) -> str:
    vision, text = init.get("vision") or {}, init.get("text") or {}
    return (
        f"Initial weights (stage 0, `jina-clip init`): vision tower from `{_public(vision.get('source'))}` "
        f"({vision.get('layout')} layout), text tower from `{_public(text.get('source'))}` ({text.get('layout')} layout)."
    )


def _paper_init(init: Mapping | None) -> bool:
    if not init:
        return False
    vision, text = init.get("vision") or {}, init.get("text") or {}
    eva_file = vision.get("source") != "QuanSun/EVA-CLIP" or str(vision.get("file") or "").startswith("EVA02_CLIP_L_")
    return vision.get("source") in PAPER_VISION_SOURCES and eva_file and text.get("source") in PAPER_TEXT_SOURCES


def training_claim(summary: Mapping) -> str:
    """The card's sentence on how the weights were trained: the paper's recipe only when every stage ran the
    shipped stage config's settings (`"recipe": "paper"`, written by `training/`) in order from stage-0
    weights of the paper's checkpoints; otherwise what was run and how it differs."""
    stages, init = list(summary.get("stages") or []), summary.get("init")
    if not stages:
        return ("Not trained: " + _init_sentence(init)) if init else ""
    names = [stage.get("name") for stage in stages]
    recorded = [stage.get("recipe") for stage in stages]
    if None in recorded:  # a summary written by hand or by another tool: no claim either way
        return "Training stages as recorded in the training summary:"
    if all(r == "paper" for r in recorded) and names == list(_PAPER_STAGES[: len(stages)]) and _paper_init(init):
        which = "the three stages" if len(stages) == 3 else f"stages 1-{len(stages)}" if len(stages) > 1 else "stage 1"
        return (
            f"Trained with {which} of the jina-clip-v2 paper's recipe (section 3.2, Table 6: the settings of "
            "`training/configs/stage{1,2,3}.yaml`), each stage starting from the previous one. " + _init_sentence(init)
        )
    reasons = [f"{stage.get('name')}: " + "; ".join(stage.get("differences") or []) for stage in stages if stage.get("recipe") != "paper"]
    if names != list(_PAPER_STAGES[: len(stages)]):
        reasons.append(f"stages run: {', '.join(map(str, names))}")
    if not _paper_init(init):
        reasons.append(_init_sentence(init) if init else "stage 1 did not start from `jina-clip init` weights of the paper's checkpoints")
    return (
        f"Trained in {len(stages)} stage(s) by this package's runner (`training/stage.py`), each starting from the "
        "previous one, with the settings below; not the jina-clip-v2 paper's recipe (" + " ".join(
            reason if reason.endswith(".") else reason + "." for reason in reasons
        ) + ")"
    )


def training_summary_to_table(summary: dict) -> str:
    stages = _public(summary["stages"])
    # "differences" is spelled out in the sentence above the table (`training_claim`).
    fields = list(dict.fromkeys(key for stage in stages for key in stage if key not in ("name", "differences")))
    rows = [[_format_value(stage["name"])] + [_format_value(stage.get(key)) for key in fields] for stage in stages]
    return _table(["Stage"] + fields, rows)


__all__ = [
    "PAPER_TEXT_SOURCES",
    "PAPER_VISION_SOURCES",
    "ModelCardError",
    "eval_results_to_card",
    "load_eval_results",
    "load_training_summary",
    "training_claim",
    "training_summary_to_table",
]
