"""Benchmark task definitions: what to load (dataset id or local folder, split, columns, language) and
how to turn it into queries, documents and relevance.

Three kinds of task, each a dataclass whose every field can be overridden from a suite file or the
command line (``--set NAME.field=value``):

* :class:`CrossModalRetrievalTask` -- image <-> text retrieval with the CLIP Benchmark protocol
  (paper Tables 2, 7-9, 12-14): Flickr30K, MS COCO, Crossmodal-3600, multilingual MS COCO. Two
  layouts: one row per image with a list of captions (``caption_column`` holds a list, or a single
  string), or one row per caption with an image id (``image_id_column`` set; rows sharing an id
  share the image, taken from the first such row).
* :class:`DocumentRetrievalTask` -- text queries -> page images, graded qrels, nDCG@5 (ViDoRe,
  Tables 4 and 11). Two layouts: ``"beir"`` (three configs ``queries`` / ``corpus`` / ``qrels``, as
  the ViDoRe BEIR mirrors that mteb pins) and ``"pairs"`` (one row per (query, page) pair with a page
  id column, as the original ``vidore/*_test_subsampled`` sets).
* :class:`MTEBTask` -- an MTEB retrieval or STS task run by the ``mteb`` package through our encoder
  adapter (Tables 3, 10, 15). Only the task name is needed; ``dataset`` may point the task at a local
  folder with the same layout as its Hub dataset.

Every dataset is read with ``datasets.load_dataset``: a Hub id, a local folder of the same layout
(e.g. ``data/<split>-00000-of-00001.parquet`` files, or a README with ``configs``), or a single
parquet / jsonl / csv file. Images are kept encoded (``Image(decode=False)``) and decoded lazily.

The Hub layouts written into :mod:`evaluation.suites` (dataset ids, splits, column names) come from
the dataset cards / mteb's pinned task code as known at the time of writing; they were **not
verified against the Hub offline**. Every field is overridable so a changed layout is a config
change, not a code change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jina_clip_v2._config import ConfigError, build

from .embedder import ImageList

logger = logging.getLogger(__name__)

CROSSMODAL_TYPES = ("text-to-image retrieval", "image-to-text retrieval")


# --------------------------------------------------------------------------------------------
# Dataset access
# --------------------------------------------------------------------------------------------

_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def _local(path: str) -> Path | None:
    candidate = Path(os.path.expanduser(path))
    return candidate if candidate.exists() else None


def load_split(path: str, split: str, config: str | None = None, revision: str | None = None):
    """``datasets.load_dataset`` for a Hub id, a local folder of the same layout, or one data file."""
    import datasets

    local = _local(path)
    if local is not None and local.is_file():
        builder = _FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(f"unsupported data file {local} (use one of {sorted(_FILE_BUILDERS)} or a folder)")
        return datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
    kwargs: dict[str, Any] = {}
    if revision and local is None:
        kwargs["revision"] = revision
    return datasets.load_dataset(str(local) if local is not None else path, config, split=split, **kwargs)


def _base_dir(path: str) -> Path | None:
    local = _local(path)
    if local is None:
        return None
    return local.parent if local.is_file() else local


def _require_columns(ds, columns: Sequence[str | None], where: str) -> None:
    missing = [c for c in columns if c is not None and c not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} not found; the dataset has {ds.column_names}")


class _Column(Sequence):
    """Lazy read access to one column of a ``datasets.Dataset`` (images stay undecoded)."""

    def __init__(self, ds, column: str, rows: Sequence[int] | None = None):
        import datasets

        feature = ds.features.get(column)
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(column, datasets.Image(decode=False))
        self._ds = ds.select_columns([column])
        self._column = column
        self._rows = list(range(len(ds))) if rows is None else list(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._ds[int(self._rows[index])][self._column]

    def select(self, indices: Sequence[int]) -> "_Column":
        out = object.__new__(_Column)
        out._ds, out._column = self._ds, self._column
        out._rows = [self._rows[i] for i in indices]
        return out


def _captions_of(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [str(v) for v in value if v is not None and str(v).strip()]


def _display(dataset: str | None) -> str | None:
    return None if dataset is None else str(dataset)


def _dataset_info(task: Any, config: str | None) -> dict:
    """What a report says about a task's data (``dataset_info`` of the image tasks)."""
    return {
        "name": task.name,
        "id": _display(task.dataset),
        "split": task.split,
        "language": task.language,
        "config": config,
        "revision": task.revision,
    }


# --------------------------------------------------------------------------------------------
# Base
# --------------------------------------------------------------------------------------------


class TaskNotConfigured(ValueError):
    """The task has no dataset to read (reported as skipped, not as a failure)."""


@dataclass
class _TaskBase:
    """Common helpers; ``kind`` names the task type in suite files."""

    kind: ClassVar[str] = ""

    @property
    def key(self) -> str:
        """Unique name in a suite: ``name`` or ``name[language]``."""
        language = getattr(self, "language", None)
        return f"{self.name}[{language}]" if language and getattr(self, "multilingual", False) else self.name

    def to_dict(self) -> dict:
        data = {"kind": self.kind}
        data.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        for name, value in data.items():
            if isinstance(value, tuple):
                data[name] = list(value)
        return data

    def replace(self, **changes) -> "_TaskBase":
        return dataclasses.replace(self, **changes)

    def require_dataset(self) -> str:
        dataset = getattr(self, "dataset", None)
        if not dataset:
            raise TaskNotConfigured(
                f"{self.key}: no dataset configured. Point it at a Hub id or a local folder, e.g. "
                f"`--set '{self.name}.dataset=/path/to/folder'` (see evaluation/suites.py for the layout)"
            )
        return dataset


# --------------------------------------------------------------------------------------------
# Cross-modal retrieval (CLIP Benchmark protocol)
# --------------------------------------------------------------------------------------------


@dataclass
class CrossModalData:
    images: ImageList
    captions: list[str]
    text_to_image: np.ndarray  # caption index -> image index


@dataclass
class CrossModalRetrievalTask(_TaskBase):
    """Image <-> text retrieval, Recall@k in both directions with several captions per image.

    Fields:
        name: report row / task name ("Flickr30K").
        dataset: Hub id, local folder or data file; ``None`` = not configured (the task is reported
            as skipped with a hint).
        split: dataset split (Crossmodal-3600 on the Hub: one split per language).
        language: language of the captions (reported; also the row label of per-language groups).
        config / revision: ``load_dataset`` config name and Hub revision.
        image_column: the image (``datasets.Image``, ``{bytes, path}`` struct, bytes or a file path).
        caption_column: a list of captions per row, or one caption per row.
        image_id_column: set for one-row-per-caption layouts: rows with the same id share an image.
        group: benchmark the task belongs to in the report ("CLIP Benchmark", "Crossmodal-3600").
        multilingual: the group holds one task per language (rows labelled by language).
        text_task: ``encode_text(task=...)`` for captions (``None``: no instruction, as the paper).
        ks: Recall cut-offs.
    """

    kind: ClassVar[str] = "crossmodal"

    name: str
    dataset: str | None
    split: str = "test"
    language: str = "en"
    config: str | None = None
    revision: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    image_id_column: str | None = None
    group: str | None = None
    multilingual: bool = False
    text_task: str | None = None
    ks: tuple[int, ...] = (1, 5, 10)

    def load(self, limit: int | None = None) -> CrossModalData:
        path = self.require_dataset()
        ds = load_split(path, self.split, self.config, self.revision)
        _require_columns(ds, [self.image_column, self.caption_column, self.image_id_column], self.key)
        captions_per_row = [_captions_of(v) for v in ds[self.caption_column]]
        if self.image_id_column is None:
            groups = [[row] for row in range(len(ds))]
        else:
            by_id: dict[Any, list[int]] = {}
            for row, image_id in enumerate(ds[self.image_id_column]):
                by_id.setdefault(image_id, []).append(row)
            groups = list(by_id.values())
        image_rows, captions, owner = [], [], []
        skipped = 0
        for rows in groups:
            texts = [t for row in rows for t in captions_per_row[row]]
            if not texts:
                skipped += 1
                continue
            if limit is not None and len(image_rows) >= limit:
                break
            captions.extend(texts)
            owner.extend([len(image_rows)] * len(texts))
            image_rows.append(rows[0])
        if skipped:
            logger.warning("%s: %d image(s) without a caption skipped", self.key, skipped)
        if not image_rows:
            raise ValueError(f"{self.key}: no image with a caption in {path} (split {self.split!r})")
        images = ImageList(_Column(ds, self.image_column, image_rows), _base_dir(path))
        return CrossModalData(images=images, captions=captions, text_to_image=np.asarray(owner, dtype=np.int64))

    def dataset_info(self) -> dict:
        return _dataset_info(self, self.config)


# --------------------------------------------------------------------------------------------
# Document retrieval (ViDoRe)
# --------------------------------------------------------------------------------------------


@dataclass
class DocumentData:
    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    images: ImageList
    qrels: dict[str, dict[str, float]]


@dataclass
class DocumentRetrievalTask(_TaskBase):
    """Text queries -> page images with graded qrels (ViDoRe; nDCG@5 is the paper's metric).

    Layout ``"beir"`` reads three configs of ``dataset`` (``queries_config`` with ``query_id_column`` /
    ``query_column``; ``corpus_config`` with ``doc_id_column`` / ``image_column``; ``qrels_config``
    with ``qrels_query_column`` / ``qrels_doc_column`` / ``score_column``). Layout ``"pairs"`` reads
    one config (``config``) where each row pairs a ``query_column`` text with an ``image_column`` page
    identified by ``page_id_column``; the queries are the distinct non-empty query texts, every page
    paired with a query is relevant to it (grade 1), and pages are deduplicated by id.
    """

    kind: ClassVar[str] = "document"

    name: str
    dataset: str | None
    split: str = "test"
    language: str = "en"
    layout: str = "beir"
    revision: str | None = None
    group: str | None = "ViDoRe"
    multilingual: bool = False
    query_task: str | None = "retrieval.query"
    # beir layout
    queries_config: str = "queries"
    corpus_config: str = "corpus"
    qrels_config: str = "qrels"
    query_id_column: str = "query-id"
    query_column: str = "query"
    doc_id_column: str = "corpus-id"
    image_column: str = "image"
    qrels_query_column: str = "query-id"
    qrels_doc_column: str = "corpus-id"
    score_column: str = "score"
    # pairs layout
    config: str | None = None
    page_id_column: str = "image_filename"
    ks: tuple[int, ...] = (5, 10)

    def load(self, limit: int | None = None) -> DocumentData:
        path = self.require_dataset()
        if self.layout == "beir":
            data = self._load_beir(path)
        elif self.layout == "pairs":
            data = self._load_pairs(path)
        else:
            raise ValueError(f"{self.key}: unknown layout {self.layout!r} (use 'beir' or 'pairs')")
        return _limit_documents(data, limit) if limit is not None else data

    def _load_beir(self, path: str) -> DocumentData:
        queries = load_split(path, self.split, self.queries_config, self.revision)
        corpus = load_split(path, self.split, self.corpus_config, self.revision)
        qrels_ds = load_split(path, self.split, self.qrels_config, self.revision)
        _require_columns(queries, [self.query_id_column, self.query_column], f"{self.key} queries")
        _require_columns(corpus, [self.doc_id_column, self.image_column], f"{self.key} corpus")
        _require_columns(
            qrels_ds, [self.qrels_query_column, self.qrels_doc_column, self.score_column], f"{self.key} qrels"
        )
        qrels: dict[str, dict[str, float]] = {}
        for qid, did, score in zip(
            qrels_ds[self.qrels_query_column], qrels_ds[self.qrels_doc_column], qrels_ds[self.score_column]
        ):
            qrels.setdefault(str(qid), {})[str(did)] = float(score)
        query_ids = [str(q) for q in queries[self.query_id_column]]
        texts = [str(t) for t in queries[self.query_column]]
        keep = [i for i, qid in enumerate(query_ids) if qid in qrels and texts[i].strip()]
        doc_ids = [str(d) for d in corpus[self.doc_id_column]]
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError(f"{self.key}: the corpus has duplicate ids in {self.doc_id_column!r}")
        images = ImageList(_Column(corpus, self.image_column), _base_dir(path))
        return DocumentData(
            query_ids=[query_ids[i] for i in keep],
            queries=[texts[i] for i in keep],
            doc_ids=doc_ids,
            images=images,
            qrels={query_ids[i]: qrels[query_ids[i]] for i in keep},
        )

    def _load_pairs(self, path: str) -> DocumentData:
        ds = load_split(path, self.split, self.config, self.revision)
        _require_columns(ds, [self.query_column, self.image_column, self.page_id_column], self.key)
        page_rows: dict[str, int] = {}
        query_index: dict[str, str] = {}
        qrels: dict[str, dict[str, float]] = {}
        for row, (query, page) in enumerate(zip(ds[self.query_column], ds[self.page_id_column])):
            page = str(page)
            page_rows.setdefault(page, row)
            if query is None or not str(query).strip():
                continue
            qid = query_index.setdefault(str(query), f"q{len(query_index)}")
            qrels.setdefault(qid, {})[page] = 1.0
        doc_ids = list(page_rows)
        images = ImageList(_Column(ds, self.image_column, list(page_rows.values())), _base_dir(path))
        return DocumentData(
            query_ids=list(query_index.values()),
            queries=list(query_index),
            doc_ids=doc_ids,
            images=images,
            qrels=qrels,
        )

    def dataset_info(self) -> dict:
        return _dataset_info(self, self.config if self.layout == "pairs" else None)


def _limit_documents(data: DocumentData, limit: int) -> DocumentData:
    """The first ``limit`` queries; the corpus shrinks to their relevant pages plus the first ``limit`` pages."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    query_ids, queries = data.query_ids[:limit], data.queries[:limit]
    relevant = {did for qid in query_ids for did in data.qrels[qid]}
    keep = [i for i, did in enumerate(data.doc_ids) if did in relevant or i < limit]
    return DocumentData(
        query_ids=query_ids,
        queries=queries,
        doc_ids=[data.doc_ids[i] for i in keep],
        images=data.images.select(keep),
        qrels={qid: data.qrels[qid] for qid in query_ids},
    )


# --------------------------------------------------------------------------------------------
# MTEB
# --------------------------------------------------------------------------------------------


@dataclass
class MTEBTask(_TaskBase):
    """An MTEB task run by the ``mteb`` package (``pip install mteb``) through our encoder adapter.

    Fields:
        name: the mteb task name (``mteb.get_task(name)``), e.g. "SciFact", "STS17".
        group: report group, e.g. "MTEB Retrieval (en)".
        subsets: mteb ``hf_subsets`` to run (e.g. ``["en-en"]`` for STS17), ``None`` for all.
        split: evaluation split override (default: the task's own ``eval_splits``).
        dataset / revision: point the task at another copy of its data (a local folder with the same
            layout as the Hub dataset, or a mirror); ``None`` keeps mteb's pinned dataset.
        query_task / document_task / sts_task: ``encode_text(task=...)`` for queries, documents and
            STS sentences (``None``: no instruction).
    """

    kind: ClassVar[str] = "mteb"

    name: str
    group: str | None = None
    subsets: list[str] | None = None
    split: str | None = None
    dataset: str | None = None
    revision: str | None = None
    query_task: str | None = "retrieval.query"
    document_task: str | None = None
    sts_task: str | None = None
    display_name: str | None = None
    multilingual: bool = False

    @property
    def key(self) -> str:
        """``name`` or ``name[subset,...]`` (STS17 for all pairs vs STS17[en-en])."""
        return f"{self.name}[{','.join(self.subsets)}]" if self.subsets else self.name

    def require_dataset(self) -> str:  # the mteb task knows its own dataset
        return self.dataset or ""


TASK_KINDS: dict[str, type] = {
    CrossModalRetrievalTask.kind: CrossModalRetrievalTask,
    DocumentRetrievalTask.kind: DocumentRetrievalTask,
    MTEBTask.kind: MTEBTask,
}

Task = CrossModalRetrievalTask | DocumentRetrievalTask | MTEBTask


def task_from_dict(data: dict) -> Task:
    """Build a task from a plain dict (a suite YAML entry): ``{"kind": "crossmodal", "name": ..., ...}``;
    unknown fields, wrong types and missing required ones are a ``ConfigError`` naming the field."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in TASK_KINDS:
        raise ValueError(f"task {data.get('name')!r}: 'kind' must be one of {sorted(TASK_KINDS)}, got {kind!r}")
    cls = TASK_KINDS[kind]
    try:
        return build(cls, data)
    except ConfigError as err:
        if err.problem == "unknown":
            known = sorted(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"task {data.get('name')!r} ({kind}): unknown field {err.key!r}; known: {known}") from None
        raise ConfigError(f"task {data.get('name')!r} ({kind}): {err}") from None


__all__ = [
    "CROSSMODAL_TYPES",
    "CrossModalData",
    "CrossModalRetrievalTask",
    "DocumentData",
    "DocumentRetrievalTask",
    "MTEBTask",
    "TASK_KINDS",
    "Task",
    "TaskNotConfigured",
    "load_split",
    "task_from_dict",
]
