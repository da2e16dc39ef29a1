"""Search an index of ``jina-clip index``: ``SearchIndex`` (Python) and ``jina-clip search`` (command line).

A text query in any language is embedded with ``encode_text`` (by default with the query instruction,
``task="retrieval.query"``, as the release embeds queries), an image query with ``encode_image``, both at the
index's width, by the model (and revision) that embedded the corpus. Hits are the ``k`` rows of highest cosine
similarity: their ``id``, ``score`` and stored columns. ``exact=True`` scans every vector (the brute-force
``query @ vectors.T`` top-k); otherwise the ANN index answers, where the index has one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .embedder import load_model, resolve_model
from .index import INDEX_FILE

__all__ = ["DEFAULT_EF", "SearchIndex", "main"]

logger = logging.getLogger(__name__)

# HNSW candidate list per query, and the re-ranking of refine_factor * k candidates on the stored vectors (the
# quantised distances only pick candidates): recall@10 >= 0.95 on random vectors (tests/test_corpus_search.py).
DEFAULT_EF = 300
DEFAULT_REFINE_FACTOR = 5
QUERY_TASK = "retrieval.query"


class SearchIndex:
    """An index folder written by ``jina-clip index``. ``model``: a loaded model to embed queries with (default: the
    one recorded in the index, loaded at the first text or image query)."""

    def __init__(self, path: str | os.PathLike, model=None, *, device: str | None = None):
        import lancedb

        self.path = Path(path)
        description = self.path / INDEX_FILE
        if not description.is_file():
            raise FileNotFoundError(f"{path} is not an index of `jina-clip index` (no {INDEX_FILE})")
        self.info = json.loads(description.read_text(encoding="utf-8"))
        self.table = lancedb.connect(str(self.path)).open_table(self.info["table"])
        self.vector_column = self.info["vector_column"]
        self.embedding_columns = list(self.info["embeddings"]["embedding_columns"])
        self._model = model
        self._device = device

    @property
    def dims(self) -> int:
        return int(self.info["embeddings"]["dims"])

    @property
    def model(self):
        """The model that embedded the corpus (its recorded revision: a Hub commit, or a local folder's digest)."""
        if self._model is None:
            recorded = self.info["embeddings"]
            revision = recorded["revision"]
            hub_revision = None if Path(recorded["model"]).is_dir() else revision
            folder, found = resolve_model(recorded["model"], hub_revision)
            if found != revision:
                logger.warning("the model at %s changed since the corpus was embedded (%s, now %s): scores may be off",
                               recorded["model"], revision, found)
            self._model = load_model(folder, device=self._device)
        return self._model

    def _truncate_dim(self) -> int | None:
        return self.dims if self.dims != self.model.config.projection_dim else None

    def embed_texts(self, texts: list[str], task: str | None = QUERY_TASK) -> np.ndarray:
        if task is not None and not self.model.config.task_instructions:
            task = None  # jina-clip-v1 has no instructions
        return self.model.encode_text(texts, task=task, truncate_dim=self._truncate_dim(), show_progress_bar=False)

    def embed_images(self, images: list[Any]) -> np.ndarray:
        return self.model.encode_image(images, truncate_dim=self._truncate_dim(), show_progress_bar=False)

    def search(
        self,
        text: str | list[str] | None = None,
        *,
        image: Any = None,
        k: int = 10,
        exact: bool = False,
        task: str | None = QUERY_TASK,
        where: str | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """The top ``k`` hits for a text (or a list of texts), or for ``image`` (a path, URL, PIL image, bytes; or a
        list): ``[{"id", "score", <stored columns>}, ...]`` best first (a list of those for a list of queries).
        ``task=None`` embeds texts as documents (no query instruction); ``where``: a LanceDB (SQL) filter on the
        stored columns."""
        if (text is None) == (image is None):
            raise ValueError("give a text or an image to search with (one of them)")
        many = isinstance(text if text is not None else image, (list, tuple))
        queries = list(text if text is not None else image) if many else [text if text is not None else image]
        vectors = self.embed_texts(queries, task) if text is not None else self.embed_images(queries)
        hits = [self.search_vectors(vector, k=k, exact=exact, where=where) for vector in vectors]
        return hits if many else hits[0]

    def query(self, vector: np.ndarray, *, k: int = 10, exact: bool = False, where: str | None = None):
        """The LanceDB query behind ``search_vectors`` (``.explain_plan()`` shows whether the ANN index answers)."""
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (self.dims,):
            raise ValueError(f"a query vector of shape ({self.dims},) is needed, got {vector.shape}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        query = self.table.search(vector, vector_column_name=self.vector_column).distance_type("cosine").limit(k)
        query = query.select([name for name in self.table.schema.names if name not in self.embedding_columns] + ["_distance"])
        if where:
            query = query.where(where, prefilter=True)
        if exact or not self.info.get("ann"):
            return query.bypass_vector_index()
        return query.ef(max(DEFAULT_EF, 2 * k)).refine_factor(DEFAULT_REFINE_FACTOR)

    def search_vectors(self, vector: np.ndarray, *, k: int = 10, exact: bool = False, where: str | None = None) -> list[dict[str, Any]]:
        """The top ``k`` rows for one query vector (unit length, the index's width)."""
        hits = []
        for row in self.query(vector, k=k, exact=exact, where=where).to_list():
            distance = row.pop("_distance")
            hits.append({"id": row.pop("id"), "score": 1.0 - float(distance), **row})
        return hits


def _format(hits: list[dict[str, Any]]) -> str:
    lines = []
    for rank, hit in enumerate(hits, 1):
        extra = "  ".join(f"{key}={value}" for key, value in hit.items() if key not in ("id", "score"))
        lines.append(f"{rank:>3}  {hit['score']:.4f}  {hit['id']}  {extra}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jina-clip search", description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="index folder of `jina-clip index`")
    parser.add_argument("query", nargs="*", help="text queries, in any language (one search each)")
    parser.add_argument("--image", action="append", default=[], help="an image query (path or URL); repeatable")
    parser.add_argument("-k", "--top-k", type=int, default=10, help="hits per query")
    parser.add_argument("--exact", action="store_true", help="exact search (scan every vector) instead of the ANN index")
    parser.add_argument("--no-instruction", action="store_true", help="embed text queries as documents (no query instruction)")
    parser.add_argument("--where", help="a filter on the stored columns (LanceDB SQL), e.g. \"category = 'animals'\"")
    parser.add_argument("--device", help="device of the query model (default: CUDA if available)")
    parser.add_argument("--json", action="store_true", help="one JSON line per query: {query, hits}")
    args = parser.parse_args(argv)
    if not args.query and not args.image:
        parser.error("give at least one text query or --image")
    index = SearchIndex(args.index, device=args.device)
    task = None if args.no_instruction else QUERY_TASK
    results = []
    if args.query:
        results += zip(args.query, index.search(args.query, k=args.top_k, exact=args.exact, task=task, where=args.where))
    if args.image:
        results += zip(args.image, index.search(image=args.image, k=args.top_k, exact=args.exact, where=args.where))
    for query, hits in results:
        if args.json:
            print(json.dumps({"query": query, "hits": hits}, ensure_ascii=False, default=str))
        else:
            print(f"{query}\n{_format(hits)}\n")
    return 0


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip search"))
