"""Embed a whole corpus and search it: ``jina-clip embed`` / ``index`` / ``search`` (corpus/README.md).

One file per job: ``sources`` (inputs -> rows), ``shards`` (rows -> shards), ``embedder`` (a shard -> its embeddings
and errors), ``store`` (the output folder: shards, errors, manifest, resume), ``run`` (the local and accelerate
engines), ``ray_engine`` (Ray Data), ``embed`` (the command), ``index`` (LanceDB), ``search`` (queries).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SearchIndex", "build_index", "embed_corpus"]

_LAZY = {"embed_corpus": ".run", "build_index": ".index", "SearchIndex": ".search"}


def __getattr__(name: str) -> Any:
    # Imported on first use: embedding needs no LanceDB, searching no `datasets`.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
