"""Hard-negative triplets for stage 3 (section 3.1, D^txt;t: "each training item contains one annotated
positive and seven negative items"), mined from query-positive pairs with an embedding model
(``jina-clip data triplets``).

1. The pairs are read once (``training.build_data.read_rows``: streamed, bad rows named and skipped): their
   distinct positives, plus an optional ``corpus`` of more documents, form the pool negatives come from.
2. The pool is embedded (`encode_text`, documents without an instruction) in chunks saved under
   ``<out>/.mining/`` (a restarted run reuses them).
3. The pairs are read again; every query is embedded (with the model config's query instruction, as the
   model was trained and as the evaluation embeds queries), scored against the pool by cosine, and gets the
   `num_negatives` highest-scoring documents that are not one of its own positives and score below
   ``max_relative_score`` x its positive's score: positive-aware mining (Moreira et al., 2024, "NV-Retriever",
   TopK-PercPos at 95%), which keeps near-duplicates of the positive (likely false negatives) out. A query
   without enough such documents is skipped and named.

Output, in the layout stage 3 reads (``{path: <out>/text_triplets/*.parquet}``, kind ``text_triplets``)::

    <out>/text_triplets/part-00000.parquet    query, positive, negatives (list of num_negatives), scores, source_row
    <out>/skipped.jsonl, <out>/state.json      as `jina-clip data captions` (resumable by shards)

The pool is held in memory (texts and float32 unit vectors: 4 KiB per document at 1024 dimensions).
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import numpy as np

from jina_clip_v2._io import atomic_write
from jina_clip_v2.training.build_data import RowProblem, ShardWriter, read_rows

logger = logging.getLogger(__name__)

NUM_NEGATIVES = 7  # section 3.1 / eq. 2: seven negatives per query
MAX_RELATIVE_SCORE = 0.95
TRIPLETS = "text_triplets"
_QUERY = ("query", "question", "anchor")
_POSITIVE = ("positive", "document", "answer", "pos")
_CHUNK = 4096


def _text(row, names: tuple[str, ...], field: str) -> str:
    if isinstance(row, Exception):
        raise row
    for name in names:
        value = row.get(name)
        if isinstance(value, (list, tuple)):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    raise RowProblem(f"no {field} text (looked for {list(names)}; the row has {sorted(row)})")


def _names(columns: dict[str, str], field: str, default: tuple[str, ...]) -> tuple[str, ...]:
    return (columns[field],) if field in columns else default


def _encode(model, texts: list[str], *, task: str | None, batch_size: int) -> np.ndarray:
    vectors = model.encode_text(texts, task=task, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


def mine_triplets(
    pairs: str,
    out: str | os.PathLike,
    *,
    model,
    columns: dict[str, str] | None = None,
    corpus: str | None = None,
    corpus_column: str = "text",
    num_negatives: int = NUM_NEGATIVES,
    max_relative_score: float = MAX_RELATIVE_SCORE,
    fmt: str | None = None,
    split: str = "train",
    name: str | None = None,
    batch_size: int = 64,
    shard_size: int = 10000,
) -> dict:
    """Mine `num_negatives` hard negatives for every (query, positive) pair of `pairs` with `model` (anything
    with the package's `encode_text`) into `out` (see the module docstring); resumes from `out/state.json`."""
    import torch
    from datasets import Features, List, Value
    from datasets import IterableDataset

    if num_negatives < 1 or not 0 < max_relative_score <= 1:
        raise ValueError("num_negatives must be >= 1 and max_relative_score in (0, 1]")
    columns = dict(columns or {})
    out = Path(out)
    query_names, positive_names = _names(columns, "query", _QUERY), _names(columns, "positive", _POSITIVE)
    signature = {"pairs": pairs, "columns": columns, "corpus": corpus, "corpus_column": corpus_column,
                 "num_negatives": num_negatives, "max_relative_score": max_relative_score, "split": split, "name": name}  # fmt: skip
    features = Features({"query": Value("string"), "positive": Value("string"), "negatives": List(Value("string")),
                         "scores": List(Value("float32")), "source_row": Value("string")})  # fmt: skip
    writer = ShardWriter(out, (TRIPLETS,), {TRIPLETS: features}, every=shard_size, signature=signature)
    if writer.state["done"]:
        return writer.state
    instructions = getattr(model.config, "task_instructions", {}) or {}
    query_task = "retrieval.query" if "retrieval.query" in instructions else None

    # 1. The pool: distinct positives (and corpus documents), and each query's positives.
    pool: dict[str, int] = {}
    positives: dict[str, set[int]] = {}
    for item in read_rows(pairs, fmt=fmt, split=split, name=name):
        try:
            query, positive = _text(item["_row"], query_names, "query"), _text(item["_row"], positive_names, "positive")
        except RowProblem:
            continue  # named in pass 3
        positives.setdefault(query, set()).add(pool.setdefault(positive, len(pool)))
    if corpus is not None:
        for item in read_rows(corpus, split=split):
            try:
                pool.setdefault(_text(item["_row"], (corpus_column,), "corpus"), len(pool))
            except RowProblem as err:
                logger.warning("corpus %s: skipped (%s)", item["_where"], err)
    documents = list(pool)
    if len(documents) <= num_negatives:
        raise ValueError(f"{pairs}: {len(documents)} distinct documents, too few to draw {num_negatives} negatives from")

    # 2. The pool's embeddings, chunk by chunk (reused by a restarted run).
    cache = out / ".mining"
    cache.mkdir(parents=True, exist_ok=True)
    chunks = []
    for start in range(0, len(documents), _CHUNK):
        path = cache / f"pool-{start // _CHUNK:05d}-{len(documents)}.npy"
        if not path.is_file():
            vectors = _encode(model, documents[start : start + _CHUNK], task=None, batch_size=batch_size)
            with atomic_write(path, "wb") as handle:
                np.save(handle, vectors, allow_pickle=False)
        chunks.append(np.load(path, allow_pickle=False))
    pool_vectors = torch.from_numpy(np.concatenate(chunks).astype(np.float32))
    depth = min(len(documents), 4 * num_negatives + 16)

    # 3. The pairs again: every query's negatives.
    rows = IterableDataset.from_generator(partial(read_rows, pairs, fmt=fmt, split=split, name=name))
    if writer.rows_read:
        rows = rows.skip(writer.rows_read)
    batch: list[tuple[str, str, str]] = []

    def flush() -> None:
        if not batch:
            return
        queries = _encode(model, [query for _, query, _ in batch], task=query_task, batch_size=batch_size)
        scores = torch.from_numpy(queries) @ pool_vectors.T
        top = scores.topk(min(depth + max(len(positives[q]) for _, q, _ in batch), len(documents)), dim=1)
        for i, (where, query, positive) in enumerate(batch):
            own = positives[query]
            positive_score = float(scores[i, pool[positive]])
            # The margin is relative to a positive score; below zero, "below the positive" is all it can mean.
            ceiling = max_relative_score * positive_score if positive_score > 0 else positive_score
            picked = [(int(j), float(s)) for s, j in zip(top.values[i], top.indices[i]) if int(j) not in own and float(s) < ceiling]
            if len(picked) < num_negatives:
                writer.skip(where, f"too few negatives ({len(picked)} documents below {max_relative_score} x the positive's score)")
            else:
                picked = picked[:num_negatives]
                writer.add(TRIPLETS, {"query": query, "positive": positive, "negatives": [documents[j] for j, _ in picked],
                                      "scores": [s for _, s in picked], "source_row": where})  # fmt: skip
            writer.row_done()
        batch.clear()

    for item in rows:
        try:
            query = _text(item["_row"], query_names, "query")
            positive = _text(item["_row"], positive_names, "positive")
        except RowProblem as err:
            flush()  # keep the rows in order: the state counts rows, not batches
            writer.skip(item["_where"], str(err))
            writer.row_done()
            continue
        batch.append((item["_where"], query, positive))
        if len(batch) >= batch_size or writer.pending + len(batch) >= writer.every:
            flush()
    flush()
    writer.commit(done=True)
    return writer.state


__all__ = ["MAX_RELATIVE_SCORE", "NUM_NEGATIVES", "mine_triplets"]
