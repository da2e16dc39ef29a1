"""Evaluation code for jina-clip-v2: the metrics and benchmark runners behind the paper's tables.

- ``evaluation.metrics``: model-free metrics (exact chunked top-k search, CLIP Benchmark Recall@k,
  nDCG/recall/MRR as in pytrec_eval/MTEB, Spearman correlation for STS).
- ``evaluation.tasks`` / ``evaluation.suites``: benchmark definitions (dataset, split, columns,
  language) and the ``paper`` / ``quick`` suites.
- ``evaluation.embedder``: full-width embeddings with an on-disk cache; Matryoshka truncation.
- ``evaluation.mteb_adapter``: MTEB retrieval / STS through the ``mteb`` package.
- ``evaluation.runner``: :func:`evaluate` (also ``jina-clip eval run``), writing
  ``results.json``, ``report.md`` and ``matryoshka.png`` (``evaluation.report``).
- ``evaluation.prepare``: local folders for benchmarks without a readable Hub copy (XTD10).

Submodules are imported on first use, so ``import evaluation.metrics`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate", "get_suite", "write_outputs"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "write_outputs"):
        from . import runner

        return getattr(runner, name)
    if name == "get_suite":
        from .suites import get_suite

        return get_suite
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
