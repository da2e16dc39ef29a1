"""One shard's embeddings: the model's public ``encode_text`` / ``encode_image`` on the shard's rows, with each
bad row (a missing or empty text, an image that does not decode, a URL that does not answer) recorded as an
error and left out, instead of failing the shard.

Images are decoded by the model's own image processor (``image_processor.load_image``: the one decoder, with the
options and fetch limits saved in the processor) in a thread pool, a bounded window ahead of the model; the
decoded images then stream into ``encode_image``, which preprocesses them in its own pool while the model embeds
the previous batch. The numbers are those of ``encode_image(paths)`` / ``encode_text(texts)`` on the same rows.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .shards import Columns, ShardInput

__all__ = ["EmbedOptions", "ShardEmbedder", "ShardOutput", "embedding_columns", "load_model", "resolve_model"]

STORED_DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}
MODEL_DTYPES = ("float32", "bfloat16", "float16")
# Files a model folder needs (weights, config, tokenizer, processor): a Hub snapshot downloads only these.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]


@dataclass(frozen=True)
class EmbedOptions:
    """What decides the stored numbers besides the model and the rows."""

    task: str | None = None  # "retrieval.query" prepends the query instruction to texts
    truncate_dim: int | None = None
    dtype: str = "float32"  # of the stored vectors

    def __post_init__(self):
        if self.dtype not in STORED_DTYPES:
            raise ValueError(f"dtype must be one of {list(STORED_DTYPES)}, got {self.dtype!r}")


def embedding_columns(columns: Columns) -> dict[str, str]:
    """Output column -> modality: ``embedding`` when one column is embedded, ``text_embedding`` and
    ``image_embedding`` when both are."""
    if columns.text and columns.image:
        return {"text_embedding": "text", "image_embedding": "image"}
    return {"embedding": "text" if columns.text else "image"}


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


def _weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for path in [folder / "config.json", *files]:
        if path.is_file():
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def resolve_model(model: str | os.PathLike, revision: str | None = None) -> tuple[str, str]:
    """(a local folder to load, the revision to record): a local folder is used as it is and recorded by the
    SHA-256 of its config and weights; a Hub id is downloaded (its model files only) and recorded by commit."""
    location = os.fspath(model)
    if Path(location).is_dir():
        if revision is not None:
            raise ValueError(f"--revision applies to Hub ids; {location} is a local folder")
        return str(Path(location).resolve()), _weights_digest(Path(location))
    from huggingface_hub import snapshot_download

    folder = snapshot_download(location, revision=revision, allow_patterns=MODEL_FILES)
    return folder, Path(folder).name  # the cache keeps a snapshot per commit, named by its hash


def load_model(folder: str | os.PathLike, *, dtype: str = "float32", device: str | None = None):
    """The model of a folder in this package's layout, with the package's own classes (no code of the folder runs),
    in eval mode on ``device`` (default: CUDA if available)."""
    import torch

    from jina_clip_v2.modeling import JinaCLIPModel

    if dtype not in MODEL_DTYPES:
        raise ValueError(f"model dtype must be one of {list(MODEL_DTYPES)}, got {dtype!r}")
    model = JinaCLIPModel.from_pretrained(os.fspath(folder), dtype=getattr(torch, dtype))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# One shard
# --------------------------------------------------------------------------------------------------


@dataclass
class ShardOutput:
    """The embedded rows of a shard (``table``: id, kept columns, embedding columns) and its bad rows."""

    index: int
    num_rows: int
    table: pa.Table
    errors: list[dict[str, Any]]


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _describe(value: Any) -> Any:
    """An input as the errors file shows it: paths, URLs and texts (cut at 300 characters), sizes of bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return value if len(value) <= 300 else value[:300] + "..."
    if value is None or isinstance(value, (int, float, bool)):
        return None if isinstance(value, float) and math.isnan(value) else value
    return f"<{type(value).__name__}>"


def _text_problem(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing text"
    if not isinstance(value, str):
        return f"not a text: {type(value).__name__}"
    if not value.strip():
        return "empty text"
    return None


def _error_message(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip() or type(err).__name__}"


class ShardEmbedder:
    """Embeds shards with ``model`` (a loaded ``JinaCLIPModel``). ``on_items(n)`` is called as rows are done (for a
    progress bar). ``batch_size`` / ``num_workers`` are ``encode_*``'s (None: their defaults, the device's
    measured batch); the decode pool has ``num_workers``
    threads too (default: one per core, at most 8)."""

    def __init__(
        self,
        model,
        columns: Columns,
        options: EmbedOptions,
        *,
        batch_size: int | None = None,
        num_workers: int | None = None,
        on_items: Callable[[int], None] | None = None,
    ):
        self.model = model
        self.columns = columns
        self.options = options
        self.batch_size = batch_size
        self.num_workers = max(1, min(8, _cpu_cores())) if num_workers is None else num_workers
        self.on_items = on_items or (lambda n: None)
        self.dim = options.truncate_dim or model.config.projection_dim
        self.outputs = embedding_columns(columns)

    # ---- images -----------------------------------------------------------------------------------

    def _decode(self, value: Any):
        if value is None:
            raise ValueError("missing image")
        return self.model.get_preprocess().load_image(value)

    def _decoded(self, items: list[tuple[int, Any]], good: list[int], errors: dict[int, str]) -> Iterator[Any]:
        """The decodable images of ``items`` ((row, value) pairs), in order; their rows go to ``good``, the others'
        messages to ``errors``. At most ``2 * batch_size + workers`` images are decoded ahead."""
        window = 2 * (self.batch_size or 32) + self.num_workers
        pending: deque = deque()
        source = iter(items)
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="jina-clip-embed-decode") as pool:
            try:
                for row, value in itertools.islice(source, window):
                    pending.append((row, pool.submit(self._decode, value)))
                while pending:
                    row, future = pending.popleft()
                    for next_row, value in itertools.islice(source, 1):
                        pending.append((next_row, pool.submit(self._decode, value)))
                    try:
                        image = future.result()
                    except Exception as err:  # noqa: BLE001 - any failure of one input is that row's error
                        errors[row] = _error_message(err)
                        self.on_items(1)
                        continue
                    good.append(row)
                    yield image
                    self.on_items(1)
            finally:
                for _, future in pending:
                    future.cancel()

    def _embed_images(self, rows: list[int], values: list[Any], errors: dict[int, str]) -> tuple[list[int], np.ndarray]:
        good: list[int] = []
        stream = self._decoded([(row, values[row]) for row in rows], good, errors)
        first = next(stream, None)
        if first is None:  # every image failed
            return [], np.zeros((0, self.dim), np.float32)
        embeddings = self.model.encode_image(
            itertools.chain([first], stream), batch_size=self.batch_size, truncate_dim=self.options.truncate_dim,
            num_workers=self.num_workers, show_progress_bar=False,
        )
        return good, embeddings

    # ---- texts ------------------------------------------------------------------------------------

    def _embed_texts(self, rows: list[int], values: list[Any]) -> np.ndarray:
        if not rows:
            return np.zeros((0, self.dim), np.float32)
        embeddings = self.model.encode_text(
            [values[row] for row in rows], task=self.options.task, batch_size=self.batch_size or 32,
            truncate_dim=self.options.truncate_dim, show_progress_bar=False,
        )
        return embeddings

    # ---- the shard --------------------------------------------------------------------------------

    def __call__(self, shard: ShardInput) -> ShardOutput:
        n = shard.num_rows
        failed: dict[int, tuple[str, str]] = {}  # row -> (column, message)
        rows = list(range(n))
        if shard.texts is not None:
            for row in rows:
                problem = _text_problem(shard.texts[row])
                if problem:
                    failed[row] = (self.columns.text, problem)
            rows = [row for row in rows if row not in failed]
            self.on_items(len(failed))
        vectors: dict[str, np.ndarray] = {}
        if shard.images is not None:  # progress: one item per image decoded (or failed)
            image_errors: dict[int, str] = {}
            rows, vectors["image"] = self._embed_images(rows, shard.images, image_errors)
            failed.update({row: (self.columns.image, message) for row, message in image_errors.items()})
        if shard.texts is not None:
            vectors["text"] = self._embed_texts(rows, shard.texts)
            if shard.images is None:
                self.on_items(len(rows))
        return ShardOutput(shard.index, n, self._table(shard, rows, vectors), self._errors(shard, failed))

    def _table(self, shard: ShardInput, rows: list[int], vectors: dict[str, np.ndarray]) -> pa.Table:
        numpy_dtype, arrow_dtype = STORED_DTYPES[self.options.dtype]
        table = shard.keys.take(pa.array(rows, pa.int64()))
        for name, modality in self.outputs.items():
            array = np.ascontiguousarray(vectors[modality], dtype=numpy_dtype).reshape(len(rows), self.dim)
            values = pa.array(array.ravel(), type=arrow_dtype)
            table = table.append_column(name, pa.FixedSizeListArray.from_arrays(values, self.dim))
        return table

    def _errors(self, shard: ShardInput, failed: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
        ids = shard.keys.column("id").to_pylist()
        errors = []
        for row in sorted(failed):
            column, message = failed[row]
            values = shard.texts if column == self.columns.text else shard.images
            errors.append({
                "id": ids[row], "row": shard.first_row + row, "column": column,
                "input": _describe(values[row]), "error": message,
            })
        return errors
