"""``evaluate(model, suite, truncate_dims, out, cache_dir)``: run a suite, write ``results.json``,
``report.md`` and ``matryoshka.png``.

``results.json`` (read by ``hub/card_inputs.py``)::

    {
      "model": "jinaai/jina-clip-v2",
      "suite": "paper",
      "embedding_dim": 1024,
      "truncate_dims": [1024, 768, 512, 256, 128, 64],
      "results": [
        {"task": "Flickr30K",
         "type": "text-to-image retrieval",   # | image-to-text retrieval | retrieval | sts | document retrieval
         "benchmark": "CLIP Benchmark",       # report group
         "dataset": {"name": "Flickr30K", "id": "nlphuji/flickr_1k_test_image_text_retrieval",
                     "split": "test", "language": "en", "config": null, "revision": null},
         "metrics": {"recall@1": 72.1, "recall@5": 89.8, "recall@10": 93.9},   # percentages
         "truncate_dim": 1024},
        ...
      ],
      "query_instruction": "",            # what the queries got: the model config's retrieval.query instruction
      "paper_model": "jina-clip-v2",      # whose published figures the report puts beside each row
      "skipped": [{"task": ..., "reason": ...}],   # tasks without a configured dataset
      "errors": [{"task": ..., "error": ...}],     # tasks that failed (the run goes on)
      "encoding": {"texts": n, "images": n, "cache_hits": n, "cache_misses": n}
    }

Metrics per type: cross-modal ``recall@k`` (CLIP Benchmark protocol); ``retrieval`` (MTEB) and
``document retrieval`` (ViDoRe) ``ndcg@5``, ``ndcg@10``, ``recall@k``, ``mrr@10``; ``sts``
``cosine_spearman`` (and ``cosine_pearson``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jina_clip_v2.modeling.policy_jina_clip import truncate_and_normalize

from . import metrics as M
from .embedder import Embedder, EmbeddingCache
from .paper_figures import PAPER_MODELS
from .report import build_report, plot_sweep
from .suites import apply_overrides, get_suite, select_tasks
from .tasks import CrossModalRetrievalTask, DocumentRetrievalTask, MTEBTask, Task, TaskNotConfigured

logger = logging.getLogger(__name__)

PAPER_DIMS = (1024, 768, 512, 256, 128, 64)


def load_model(name_or_path: str | os.PathLike, *, device: str | None = None, dtype: str | None = None):
    """``AutoModel.from_pretrained(name_or_path, trust_remote_code=True)`` in eval mode; a missing local folder
    is a ``FileNotFoundError`` naming it (``model_source``), not transformers' "Repo id must be ..." error."""
    import torch
    from transformers import AutoModel

    from jina_clip_v2._sources import model_source

    kwargs: dict[str, Any] = {"trust_remote_code": True}
    if dtype:
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
        kwargs["dtype"] = getattr(torch, dtype)
    model = AutoModel.from_pretrained(model_source(name_or_path), **kwargs).eval()
    if device:
        model.to(device)
    return model


def parse_dims(value: str | Sequence[int] | None) -> list[int] | None:
    """``"1024,768,512"`` / ``[1024, 768]`` / ``"paper"`` (the paper's six dims) -> sorted descending,
    unique; ``None`` -> full width only."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str) and value.strip() == "paper":
        return list(PAPER_DIMS)
    items = value.split(",") if isinstance(value, str) else list(value)
    dims = []
    for item in items:
        try:
            dim = int(str(item).strip())
        except ValueError:
            raise ValueError(f"truncate dims must be integers, got {item!r}") from None
        if dim < 1:
            raise ValueError(f"truncate dims must be positive, got {dim}")
        dims.append(dim)
    return sorted(set(dims), reverse=True)


def _silence_progress_bars() -> None:
    """``show_progress=False`` also silences the libraries' own bars (datasets, transformers)."""
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _embedding_width(model: Any, embedder: Embedder) -> int:
    config = getattr(model, "config", None)
    width = getattr(config, "projection_dim", None)
    if isinstance(width, int) and width > 0:
        return width
    return int(embedder.encode_texts(["embedding width probe"], label="probe").shape[1])


def _check_width(array, width: int, what: str) -> None:
    if array.shape[1] != width:
        raise ValueError(f"{what}: the model returned {array.shape[1]}-d embeddings, expected {width}")


def _entry(task: Task, kind: str, metrics: dict[str, float], dim: int) -> dict:
    return {
        "task": task.name,
        "type": kind,
        "benchmark": task.group or task.name,
        "dataset": task.dataset_info(),
        "metrics": {name: float(value) for name, value in metrics.items()},
        "truncate_dim": dim,
    }


def _finite(entries: list[dict], key: str) -> list[dict]:
    """Drop NaN / inf metrics (e.g. Spearman of constant embeddings), which JSON cannot hold."""
    kept = []
    for entry in entries:
        bad = [name for name, value in entry["metrics"].items() if not math.isfinite(value)]
        if bad:
            logger.warning("%s (%s, dim %s): dropping non-finite %s", key, entry["type"], entry["truncate_dim"], bad)
            entry = {**entry, "metrics": {k: v for k, v in entry["metrics"].items() if k not in bad}}
        if entry["metrics"]:
            kept.append(entry)
    return kept


def _run_crossmodal(task: CrossModalRetrievalTask, embedder: Embedder, dims, width, limit, search_device) -> list[dict]:
    data = task.load(limit)
    images = embedder.encode_images(data.images, label=task.key)
    texts = embedder.encode_texts(data.captions, task=task.text_task, label=task.key)
    _check_width(images, width, task.key)
    _check_width(texts, width, task.key)
    ks = [k for k in task.ks if k <= len(data.images)]
    if len(ks) < len(task.ks):
        logger.warning("%s: only %d images, Recall@k reported for k in %s", task.key, len(data.images), ks)
    if not ks:
        raise ValueError(f"{task.key}: too few images ({len(data.images)}) for Recall@{min(task.ks)}")
    entries = []
    for dim in dims:
        scores = M.image_text_retrieval(
            truncate_and_normalize(images, dim), truncate_and_normalize(texts, dim), data.text_to_image, ks=ks, device=search_device
        )
        entries.append(_entry(task, "text-to-image retrieval", {f"recall@{k}": scores[f"text_to_image_recall@{k}"] for k in ks}, dim))
        entries.append(_entry(task, "image-to-text retrieval", {f"recall@{k}": scores[f"image_to_text_recall@{k}"] for k in ks}, dim))
    return entries


def _run_document(task: DocumentRetrievalTask, embedder: Embedder, dims, width, limit, search_device) -> list[dict]:
    data = task.load(limit)
    if not data.query_ids:
        raise ValueError(f"{task.key}: no query with relevance judgements")
    queries = embedder.encode_texts(data.queries, task=task.query_task, label=task.key)
    pages = embedder.encode_images(data.images, label=task.key)
    _check_width(queries, width, task.key)
    _check_width(pages, width, task.key)
    entries = []
    for dim in dims:
        scores = M.retrieval_scores(
            truncate_and_normalize(queries, dim),
            truncate_and_normalize(pages, dim),
            data.query_ids,
            data.doc_ids,
            data.qrels,
            ks=task.ks,
            device=search_device,
        )
        entries.append(_entry(task, "document retrieval", scores, dim))
    return entries


def query_instruction(model: Any) -> str | None:
    """The instruction `encode_text(task="retrieval.query")` prepends: the model config's, i.e. the one it was
    trained with (a training export records it; a converted release keeps the release's). "" for none (and for
    a model without that task, which the embedder then encodes without one); None when the model has no config."""
    instructions = getattr(getattr(model, "config", None), "task_instructions", None)
    if not isinstance(instructions, dict):
        return None
    return str(instructions.get("retrieval.query") or "")


def evaluate(
    model: Any,
    suite: str | Sequence[Task] = "quick",
    truncate_dims: str | Sequence[int] | None = None,
    out: str | os.PathLike | None = "results",
    cache_dir: str | os.PathLike | None = None,
    *,
    tasks: str | Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    batch_size: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    limit: int | None = None,
    model_name: str | None = None,
    fingerprint: str | None = None,
    use_cache: bool = True,
    show_progress: bool = True,
    strict: bool = False,
    paper_model: str | None = "jina-clip-v2",
) -> dict:
    """Evaluate ``model`` on ``suite`` at every truncation dim; write the outputs to ``out``.

    Args:
        model: a folder or Hub id (loaded with ``AutoModel.from_pretrained(trust_remote_code=True)``),
            or any object with ``encode_text`` / ``encode_image``.
        suite: "paper", "quick", a suite file, or a list of tasks (:mod:`evaluation.tasks`).
        truncate_dims: dims of the Matryoshka sweep (``"1024,768"`` or a list); ``None``: full width.
        out: output folder for results.json, report.md, matryoshka.png (``None``: write nothing).
        cache_dir: embedding cache (default ``<out>/cache``); ``use_cache=False`` disables it.
        tasks: glob patterns selecting tasks by key, name or group ("Flickr30K,Crossmodal-3600[de]").
        overrides: ``PATTERN.field=value`` changes to task fields (see :mod:`evaluation.suites`).
        batch_size: texts / images per forward pass (None: ``encode_text`` / ``encode_image``'s own defaults, the
            token-budget text batches and the measured image batch of the device, `modeling/encoding_jina_clip.py`).
        limit: at most this many images / queries / sentence pairs per task (quick checks).
        model_name: the name written into the results (default: the path / id, or the class name).
        fingerprint: model identity for the cache (default: hashed from config and weights).
        strict: raise on the first failing task instead of recording it and going on.
        paper_model: the paper's column (`evaluation.paper_figures.PAPER_MODELS`) the report compares with;
            None: no published figures.

    Returns:
        the ``results.json`` dict.
    """
    import torch

    if isinstance(model, (str, os.PathLike)):
        model_name = model_name or os.fspath(model)
        model = load_model(model, device=device, dtype=dtype)
    elif device and isinstance(model, torch.nn.Module):
        model.to(device)
    model_name = model_name or getattr(model, "name_or_path", None) or type(model).__name__
    suite_name = suite if isinstance(suite, str) else "custom"
    task_list = select_tasks(apply_overrides(get_suite(suite), overrides), tasks)
    wanted_dims = parse_dims(truncate_dims)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if paper_model is not None and paper_model not in PAPER_MODELS:
        raise ValueError(f"unknown paper_model {paper_model!r}; the paper's columns: {list(PAPER_MODELS)} (or None)")

    out_dir = Path(out) if out is not None else None
    cache = None
    if use_cache:
        root = Path(cache_dir) if cache_dir is not None else (out_dir / "cache" if out_dir is not None else None)
        cache = EmbeddingCache(root) if root is not None else None
    embedder = Embedder(model, cache, batch_size=batch_size, fingerprint=fingerprint, show_progress=show_progress)
    width = _embedding_width(model, embedder)
    dims = wanted_dims or [width]
    too_wide = [d for d in dims if d > width]
    if too_wide:
        raise ValueError(f"truncate dims {too_wide} exceed the embedding width {width}")
    search_device = device if device and str(device).startswith("cuda") else None

    from tqdm.auto import tqdm

    if not show_progress:
        _silence_progress_bars()
    results: list[dict] = []
    skipped: list[dict] = []
    errors: list[dict] = []
    bar = tqdm(task_list, desc="Tasks", unit="task", disable=not show_progress)
    for task in bar:
        bar.set_postfix_str(task.key)
        try:
            if isinstance(task, CrossModalRetrievalTask):
                entries = _run_crossmodal(task, embedder, dims, width, limit, search_device)
            elif isinstance(task, DocumentRetrievalTask):
                entries = _run_document(task, embedder, dims, width, limit, search_device)
            elif isinstance(task, MTEBTask):
                from .mteb_adapter import run_mteb_task

                entries = run_mteb_task(
                    task, embedder, dims, model_name=model_name, limit=limit, show_progress=False
                )
            else:
                raise TypeError(f"unknown task type {type(task).__name__}")
        except TaskNotConfigured as err:
            logger.warning("skipping %s: %s", task.key, err)
            skipped.append({"task": task.key, "reason": str(err)})
            continue
        except Exception as err:  # one broken task must not lose the others' results
            if strict:
                raise
            logger.error("%s failed: %s: %s", task.key, type(err).__name__, err)
            errors.append({"task": task.key, "error": f"{type(err).__name__}: {err}"})
            continue
        results.extend(_finite(entries, task.key))

    data = {
        "model": str(model_name),
        "suite": suite_name,
        "embedding_dim": width,
        "truncate_dims": dims,
        "query_instruction": query_instruction(model),
        "paper_model": paper_model,
        "results": results,
        "skipped": skipped,
        "errors": errors,
        "encoding": {
            "texts": embedder.encoded["text"],
            "images": embedder.encoded["image"],
            "cache_hits": cache.hits if cache else 0,
            "cache_misses": cache.misses if cache else 0,
        },
    }
    if out_dir is not None:
        write_outputs(data, out_dir)
    return data


def write_outputs(data: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and (with results) ``matryoshka.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": out_dir / "results.json", "report": out_dir / "report.md"}
    paths["results"].write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["report"].write_text(build_report(data), encoding="utf-8")
    if data.get("results"):
        try:
            plot = plot_sweep(data, out_dir / "matryoshka.png")
        except ImportError:
            logger.warning("matplotlib is not installed: no matryoshka.png (pip install matplotlib)")
        else:
            if plot is not None:
                paths["plot"] = plot
    return paths


__all__ = ["PAPER_DIMS", "evaluate", "load_model", "parse_dims", "query_instruction", "write_outputs"]
