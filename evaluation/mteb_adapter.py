"""MTEB retrieval and STS through the ``mteb`` package (2.x), with our model behind its encoder protocol.

mteb loads the task data (its pinned Hub datasets, or a local folder of the same layout), builds the
data loaders, searches and scores; :class:`MTEBEncoderAdapter` only turns the inputs it hands over
into embeddings. The adapter goes through the :class:`~evaluation.embedder.Embedder`, so every text is
encoded once at full width (and cached on disk) and each truncation dim of a sweep is a slice of the
same embeddings.

Prompts: queries (``prompt_type == "query"``) get ``encode_text(task="retrieval.query")`` -- the
release's query instruction -- documents and STS sentences get no instruction; all three are
configurable per task (:class:`~evaluation.tasks.MTEBTask`).

mteb is imported lazily: the rest of the package works without it, and a missing install is a clear
``ImportError`` naming the extra to install.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jina_clip_v2.modeling.policy_jina_clip import truncate_and_normalize

from .embedder import Embedder
from .tasks import MTEBTask

logger = logging.getLogger(__name__)

#: mteb score name -> our metric name (values are multiplied by 100: percentages, as in the paper).
RETRIEVAL_METRICS = {
    "ndcg_at_5": "ndcg@5",
    "ndcg_at_10": "ndcg@10",
    "recall_at_5": "recall@5",
    "recall_at_10": "recall@10",
    "recall_at_100": "recall@100",
    "mrr_at_10": "mrr@10",
    "map_at_10": "map@10",
}
STS_METRICS = {"cosine_spearman": "cosine_spearman", "cosine_pearson": "cosine_pearson"}


def import_mteb():
    try:
        import mteb
    except ImportError as err:
        raise ImportError(
            "MTEB tasks need the `mteb` package (2.x): `pip install 'jina-clip-v2[eval]'` or "
            "`pip install mteb`. Run the other tasks with e.g. `--tasks 'Flickr30K,Crossmodal-3600*'`."
        ) from err
    return mteb


def _value(prompt_type: Any) -> str | None:
    return None if prompt_type is None else str(getattr(prompt_type, "value", prompt_type))


class MTEBEncoderAdapter:
    """mteb's ``EncoderProtocol`` (mteb 2.x) over an :class:`Embedder`, at one truncation dim.

    ``encode(inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs)`` receives a
    ``DataLoader`` of batches ``{"text": [...], ...}`` (or ``{"image": [...]}``) and returns a
    ``(n, dim)`` float32 array of L2-normalised, truncated embeddings; ``similarity`` /
    ``similarity_pairwise`` are cosine; ``mteb_model_meta`` describes the model for mteb's result
    objects (no result cache is used).
    """

    def __init__(
        self,
        embedder: Embedder,
        truncate_dim: int | None = None,
        *,
        name: str = "local/model",
        revision: str | None = None,
        query_task: str | None = "retrieval.query",
        document_task: str | None = None,
        sts_task: str | None = None,
    ):
        self.embedder = embedder
        self.truncate_dim = truncate_dim
        self.name = name
        self.revision = revision or embedder.fingerprint[:12]
        self.prompts = {"query": query_task, "document": document_task, None: sts_task}
        self.calls: list[dict] = []

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs) -> np.ndarray:
        texts: list[str] = []
        images: list[Any] = []
        for batch in inputs:
            if "text" in batch:
                texts.extend(batch["text"])
            elif "image" in batch:
                images.extend(batch["image"])
            else:
                raise ValueError(f"unsupported mteb batch with keys {sorted(batch)}: only text or image inputs")
        if texts and images:
            raise ValueError("inputs that mix texts and images are not supported")
        kind = _value(prompt_type)
        label = f"mteb-{task_metadata.name}-{hf_subset}-{hf_split}"
        self.calls.append({"task": task_metadata.name, "prompt_type": kind, "n": len(texts) or len(images)})
        if images:
            full = self.embedder.encode_images(images, label=label)
        else:
            full = self.embedder.encode_texts(texts, task=self.prompts.get(kind), label=label)
        return truncate_and_normalize(full, self.truncate_dim)

    @staticmethod
    def _normalize(x: Any):
        import torch

        tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if tensor.ndim == 1:
            tensor = tensor[None]
        return torch.nn.functional.normalize(tensor, dim=-1)

    def similarity(self, embeddings1: Any, embeddings2: Any):
        return self._normalize(embeddings1) @ self._normalize(embeddings2).T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any):
        return (self._normalize(embeddings1) * self._normalize(embeddings2)).sum(-1)

    @property
    def mteb_model_meta(self):
        from mteb.models.model_meta import ModelMeta

        overwrites = {"name": self.name, "revision": self.revision, "similarity_fn_name": "cosine"}
        try:
            return ModelMeta.create_empty(overwrites={**overwrites, "modalities": ["text", "image"]})
        except Exception:  # older/newer ModelMeta without a field: fall back to the essentials
            return ModelMeta.create_empty(overwrites={"name": self.name, "revision": self.revision})


def mteb_model_name(model_name: str) -> str:
    """mteb wants ``org/name``: keep Hub ids, turn local paths into ``local/<folder name>``."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model_name) and not os.path.exists(model_name):
        return model_name
    base = os.path.basename(os.path.normpath(model_name)) or "model"
    return "local/" + re.sub(r"[^\w.-]+", "_", base)


# --------------------------------------------------------------------------------------------
# Task construction and subsampling
# --------------------------------------------------------------------------------------------


def build_task(spec: MTEBTask):
    """The mteb task object for ``spec`` (with subsets, split and dataset overrides applied)."""
    mteb = import_mteb()
    kwargs: dict[str, Any] = {}
    if spec.subsets:
        kwargs["hf_subsets"] = list(spec.subsets)
    if spec.split:
        kwargs["eval_splits"] = [spec.split]
    task = mteb.get_task(spec.name, **kwargs)
    if spec.dataset or spec.revision:
        metadata = task.metadata.model_copy(deep=True)  # never touch the class-level metadata
        if spec.dataset:
            path = os.path.expanduser(spec.dataset)
            metadata.dataset["path"] = os.path.abspath(path) if os.path.exists(path) else spec.dataset
        if spec.revision:
            metadata.dataset["revision"] = spec.revision
        task.metadata = metadata
    return task


def _is_aggregate(task) -> bool:
    """Aggregate tasks (e.g. CQADupstackRetrieval) run their subtasks; mteb marks them with `is_aggregate`."""
    flag = getattr(task, "is_aggregate", False)
    return bool(flag() if callable(flag) else flag)


def _limit_retrieval(split_data: dict, limit: int) -> dict:
    queries, corpus, qrels = split_data["queries"], split_data["corpus"], split_data["relevant_docs"]
    keep_q = [i for i, qid in enumerate(queries["id"]) if qrels.get(qid)][:limit]
    queries = queries.select(keep_q)
    query_ids = list(queries["id"])
    qrels = {qid: qrels[qid] for qid in query_ids}
    relevant = {did for qid in query_ids for did in qrels[qid]}
    keep_d = [i for i, did in enumerate(corpus["id"]) if did in relevant or i < limit]
    out = dict(split_data)
    out.update(queries=queries, corpus=corpus.select(keep_d), relevant_docs=qrels)
    if out.get("top_ranked"):
        out["top_ranked"] = {qid: out["top_ranked"][qid] for qid in query_ids if qid in out["top_ranked"]}
    return out


def _limit_tree(node: Any, limit: int) -> Any:
    from datasets import Dataset

    if isinstance(node, Dataset):
        return node.select(range(min(limit, len(node))))
    if isinstance(node, Mapping) and {"queries", "corpus", "relevant_docs"} <= set(node):
        return _limit_retrieval(node, limit)
    if isinstance(node, Mapping):  # a dict or a DatasetDict of subsets / splits
        limited = {key: _limit_tree(value, limit) for key, value in node.items()}
        return limited if type(node) is dict else type(node)(limited)
    return node


def limit_task(task, limit: int) -> None:
    """Keep the first ``limit`` queries (retrieval: plus their relevant documents and the first ``limit``
    documents) or sentence pairs (STS) of every subset and split of a loaded mteb task."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if _is_aggregate(task):
        logger.warning("%s is an aggregate task: --limit is not applied to it", task.metadata.name)
        return
    convert = getattr(task, "convert_v1_dataset_format_to_v2", None)
    if callable(convert):
        convert(num_proc=None)
    task.dataset = _limit_tree(task.dataset, limit)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_logger(name: str, enabled: bool):
    log = logging.getLogger(name)
    previous = log.level
    if enabled:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(previous)


def result_type(task) -> str:
    kind = str(task.metadata.type).lower()
    if "sts" in kind:
        return "sts"
    if "retrieval" in kind:
        return "retrieval"
    raise ValueError(f"{task.metadata.name}: mteb task type {task.metadata.type!r} is not supported (retrieval and STS are)")


def _languages(task, subset: str, entry: dict) -> str:
    if subset and subset != "default":
        return subset
    langs = entry.get("languages") or list(getattr(task.metadata, "eval_langs", []) or [])
    if isinstance(langs, dict):
        langs = [lang for values in langs.values() for lang in values]
    return ",".join(str(lang) for lang in langs) if langs else "default"


def _dataset_ref(task) -> dict:
    if _is_aggregate(task):
        return {"id": None, "revision": None}
    dataset = getattr(task.metadata, "dataset", None) or {}
    path, revision = dataset.get("path"), dataset.get("revision")
    return {"id": str(path) if path else None, "revision": str(revision) if revision else None}


def run_mteb_task(
    spec: MTEBTask,
    embedder: Embedder,
    dims: list[int | None],
    *,
    model_name: str,
    limit: int | None = None,
    loader_batch_size: int = 32,
    show_progress: bool = True,
) -> list[dict]:
    """Evaluate one MTEB task at every dim; returns result entries of the ``results.json`` schema.

    ``loader_batch_size`` is the batch of mteb's own data loader only: the adapter gathers every batch of a call and
    embeds them at once through the ``Embedder``, whose ``encode_*`` pick the model batches (length-sorted token
    budgets for text, the device's image batch)."""
    mteb = import_mteb()
    task = build_task(spec)
    kind = result_type(task) if not _is_aggregate(task) else "retrieval"
    metric_map = STS_METRICS if kind == "sts" else RETRIEVAL_METRICS
    if not _is_aggregate(task):
        task.load_data()
        if limit is not None:
            limit_task(task, limit)
    entries: list[dict] = []
    for position, dim in enumerate(dims):
        adapter = MTEBEncoderAdapter(
            embedder,
            dim,
            name=mteb_model_name(model_name),
            query_task=spec.query_task,
            document_task=spec.document_task,
            sts_task=spec.sts_task,
        )
        with warnings.catch_warnings(), _quiet_logger("mteb", enabled=position > 0):
            if position > 0:  # mteb repeats its notices (e.g. "superseded by ...") for every dim
                warnings.simplefilter("ignore")
            result = mteb.evaluate(
                adapter,
                task,
                cache=None,
                overwrite_strategy="always",
                show_progress_bar=show_progress,
                encode_kwargs={"batch_size": loader_batch_size, "show_progress_bar": False},
                raise_error=True,
            )
        for task_result in result.task_results:
            name = spec.display_name or task_result.task_name
            for split, subset_scores in task_result.scores.items():
                for scores in subset_scores:
                    subset = scores.get("hf_subset", "default")
                    metrics = {ours: 100.0 * float(scores[theirs]) for theirs, ours in metric_map.items() if theirs in scores}
                    if not metrics:
                        raise ValueError(f"{name}: mteb returned none of {sorted(metric_map)} (got {sorted(scores)})")
                    entries.append(
                        {
                            "task": name,
                            "type": kind,
                            "benchmark": spec.group or "MTEB",
                            "dataset": {
                                "name": name,
                                **_dataset_ref(task),
                                "split": split,
                                "language": _languages(task, subset, scores),
                                "config": None if subset == "default" else subset,
                            },
                            "metrics": metrics,
                            "truncate_dim": dim,
                        }
                    )
    return entries


__all__ = [
    "MTEBEncoderAdapter",
    "RETRIEVAL_METRICS",
    "STS_METRICS",
    "build_task",
    "import_mteb",
    "limit_task",
    "mteb_model_name",
    "run_mteb_task",
]
