"""Dataset sources of the trainer: where one source's examples come from (a Hub dataset, a local folder,
files or a glob of parquet / jsonl / webdataset shards) and how its columns map onto the common schema of
its kind (``training.data`` documents the kinds, the schemas and the pipeline).

``SourceConfig.columns`` maps OUR column name -> the source's column name; a dotted name such as
``"json.caption"`` reads a field of a dict/JSON column. Without an explicit mapping a column is looked up
under its own name and a few common aliases (``_CANDIDATES``).

Bad rows. Local jsonl and parquet files are read row by row here (``_file_rows``), not by datasets'
builders, whose pyarrow readers fail a whole file (and with it the run) on one invalid JSON line or one
row of another type. A row that cannot be used (invalid JSON, a field of the wrong type, a field that
earlier rows of the file had) becomes an example whose ``_bad`` column says which file, which line / row
and what is wrong; the stream skips it with a warning or stops (``data.on_bad_row``). A column that the
first row of a file lacks is a mapping problem, not a bad row: a ``KeyError`` naming the file and the
columns it has. A file that cannot be opened or read on is one bad row for what is left of it. Other
sources (Hub datasets, Hub-layout folders, webdataset shards) come through datasets: their rows are
checked the same way after reading, and what datasets itself cannot read is a ``DataError`` naming the
source.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from glob import glob
from typing import Any

from jina_clip_v2._config import checked, non_negative
from jina_clip_v2.training.images import _as_image_record

logger = logging.getLogger(__name__)

KINDS = ("text_pairs", "text_triplets", "image_text_short", "image_text_long")
IMAGE_KINDS = ("image_text_short", "image_text_long")
FORMATS = ("parquet", "json", "webdataset")
_FORMAT_ALIASES = {"jsonl": "json", "ndjson": "json", "tar": "webdataset", "wds": "webdataset", "pq": "parquet"}
_EXTENSIONS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json", ".tar": "webdataset"}

KIND_COLUMNS = {
    "text_pairs": ("query", "document"),
    "text_triplets": ("query", "positive", "negatives"),
    "image_text_short": ("image", "caption"),
    "image_text_long": ("image", "caption"),
}
_CANDIDATES = {
    "query": ("query", "anchor", "question"),
    "document": ("document", "positive", "pos", "answer"),
    "positive": ("positive", "document", "pos"),
    "negatives": ("negatives", "negative", "neg"),
    "image": ("image", "jpg", "jpeg", "png", "webp", "img"),
    "caption": ("caption", "txt", "text", "json.caption", "json.text"),
}
_MISSING = object()


class _MissingColumn(KeyError):
    """A column an example lacks (``column``: ours)."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column


class DataError(ValueError):
    """Data that cannot be trained on: an empty source, a bad row (``data.on_bad_row=error``), a source
    whose examples are all unusable, a file datasets cannot read. The message names the source."""


@dataclass
class SourceConfig:
    """One dataset source (an item of ``data.text.sources`` / ``data.image_text.sources``)."""

    path: str
    """Hub dataset id, or a local folder / file / glob; ``demo://<name>`` is the bundled demo data."""
    format: str | None = None
    """parquet | json (jsonl) | webdataset | None (inferred from the files)."""
    weight: float = checked(1.0, check=non_negative)
    """Sampling weight when several sources are interleaved."""
    split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)
    """Our column name -> the source's column name."""
    data_files: Any = None
    """A file, a glob or a list of them (``datasets.load_dataset``'s ``data_files``)."""
    name: str | None = None
    """The dataset's config name."""
    image_root: str | None = None
    """Base of relative image paths (default: the local source's folder)."""



def _features(kind: str):
    from datasets import Features, List, Value
    from datasets import Image as HFImage

    cols: dict[str, Any] = {}
    if kind == "text_pairs":
        cols = {"query": Value("string"), "document": Value("string")}
    elif kind == "text_triplets":
        cols = {"query": Value("string"), "positive": Value("string"), "negatives": List(Value("string"))}
    else:
        cols = {"image": HFImage(decode=False), "caption": Value("string")}
    cols["_source"] = Value("int32")
    cols["_bad"] = Value("string")  # why the row is unusable (file, row, problem); None for a good row
    return Features(cols)


def _normalize_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    fmt = _FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if fmt not in FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; expected one of {FORMATS} or None")
    return fmt


def _local_files(path: str) -> list[str] | None:
    """The files a local file path or glob names; None when it is no local file (a folder or a Hub id)."""
    if os.path.isfile(path):
        return [path]
    if any(char in path for char in "*?["):
        files = sorted(f for f in glob(path, recursive=True) if os.path.isfile(f))
        if files:
            return files
    return None


def _infer_format(files: list[str]) -> str:
    for f in files:
        for ext, fmt in _EXTENSIONS.items():
            if f.endswith(ext) or f.endswith(ext + ".gz") or f.endswith(ext + ".zst"):
                return fmt
    raise ValueError(f"cannot infer the format of {files[:3]}; set SourceConfig.format")


def source_label(src: SourceConfig, where: str) -> str:
    """How errors name a source: its config key and its path."""
    return f"{where} ({src.path})"


def load_source(src: SourceConfig, kind: str, index: int = 0, *, label: str | None = None):
    """One source as a streaming IterableDataset in the kind's common schema (images undecoded), with a
    ``_bad`` column for unusable rows (see the module docstring). ``label`` names it in errors."""
    from datasets import IterableDataset, load_dataset

    label = label or source_label(src, f"source {index}")
    fmt = _normalize_format(src.format)
    files = _local_files(src.path)
    image_root = src.image_root
    features = _features(kind)
    if files is not None:
        fmt = fmt or _infer_format(files)
        image_root = image_root or os.path.dirname(os.path.abspath(files[0]))
        if fmt in ("json", "parquet"):
            _check_not_empty(files, fmt, label)
            options = {"fmt": fmt, "kind": kind, "columns": dict(src.columns), "index": index, "image_root": image_root}
            # One shard per file (datasets shards list-valued gen_kwargs): shuffling and split_dataset_by_node
            # see the files as datasets' own builders would.
            return IterableDataset.from_generator(
                _file_rows, features=features, gen_kwargs={"files": list(files), "options": options}
            )
        ds = _datasets_call(label, load_dataset, fmt, data_files={src.split: files}, split=src.split, streaming=True)
    elif os.path.isdir(src.path):
        image_root = image_root or os.path.abspath(src.path)
        if fmt is None:  # a folder laid out like a Hub dataset repo (README configs, data/ files), or plain
            ds = _datasets_call(label, load_dataset, src.path, name=src.name, data_files=src.data_files, split=src.split,
                                streaming=True)
        else:
            ds = _datasets_call(label, load_dataset, fmt, data_dir=src.path, data_files=src.data_files, split=src.split,
                                streaming=True)
    else:  # a Hub dataset id; datasets infers the builder from the repo's files (format is for defaults)
        ds = _datasets_call(label, load_dataset, src.path, name=src.name, data_files=src.data_files, split=src.split,
                            streaming=True)
    try:
        ds = ds.decode(False)
    except Exception:  # pragma: no cover - features unknown and nothing decodable
        pass
    fn = partial(_checked_example, kind=kind, columns=dict(src.columns), index=index, image_root=image_root, label=label)
    return ds.map(fn, features=features).select_columns(list(features))


def _datasets_call(label: str, fn, *args, **kwargs):
    """A datasets call, its failures on the data (no rows, pyarrow's errors) as a ``DataError`` naming the
    source."""
    try:
        return fn(*args, **kwargs)
    except StopIteration:  # datasets' json builder peeks at the first rows of an empty file
        raise DataError(f"{label}: no rows") from None
    except Exception as err:
        if type(err).__module__.startswith("pyarrow") or type(err).__name__ == "DatasetGenerationError":
            raise DataError(f"{label}: cannot read it: {type(err).__name__}: {err}") from err
        raise


def _check_not_empty(files: list[str], fmt: str, label: str) -> None:
    """An empty source is an error now, not a stream that ends before its first example."""
    for path in files:
        try:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                if pq.ParquetFile(path).metadata.num_rows > 0:
                    return
            else:
                with _open_text(path) as handle:
                    if any(line.strip() for line in handle):
                        return
        except Exception as err:  # noqa: BLE001 - an unreadable file is reported when it is read
            logger.warning("%s: cannot check %s for rows (%s: %s)", label, path, type(err).__name__, err)
            return
    raise DataError(f"{label}: no rows" + (f" in any of its {len(files)} files" if len(files) > 1 else ""))


def _open_text(path: str):
    if path.endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if path.endswith(".zst"):
        import io

        import zstandard

        return io.TextIOWrapper(zstandard.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _raw_rows(path: str, fmt: str):
    """(where, row or a JSON error) for every row of one file, where = "<file> line N" / "<file> row N"."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        handle = pq.ParquetFile(path)
        row = 0
        for batch in handle.iter_batches(batch_size=256):
            for example in batch.to_pylist():
                yield f"{path} row {row}", example
                row += 1
        return
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except ValueError as err:
                yield f"{path} line {number}", ValueError(f"invalid JSON ({err})")
                continue
            if not isinstance(example, dict):
                example = ValueError(f"a JSON {type(example).__name__}, not an object")
            yield f"{path} line {number}", example


def _file_rows(files: list[str], options: dict):
    """The generator behind a local jsonl / parquet source: normalized rows, bad ones marked in ``_bad``."""
    kind, index = options["kind"], options["index"]
    for path in files:
        first, where = True, None
        try:
            for where, example in _raw_rows(path, options["fmt"]):
                if isinstance(example, Exception):
                    yield _bad_row(kind, index, f"{where}: {example}")
                    continue
                try:
                    out = _normalize_example(example, kind=kind, columns=options["columns"], index=index,
                                             image_root=options["image_root"])
                except _MissingColumn as err:
                    if first:  # the file's first row decides its columns: a mapping problem
                        raise KeyError(f"{path}: {err.args[0]}") from None
                    yield _bad_row(kind, index, f"{where}: field {err.column!r} is missing (earlier rows have it)")
                except (TypeError, ValueError) as err:
                    yield _bad_row(kind, index, f"{where}: {err}")
                else:
                    yield out
                first = False
        except KeyError:
            raise
        except Exception as err:  # noqa: BLE001 - an unreadable file (corrupt parquet, bad gzip)
            position = f"cannot read on after {where}" if where else "cannot read it"
            yield _bad_row(kind, index, f"{path}: {position} ({type(err).__name__}: {err})")


def _bad_row(kind: str, index: int, problem: str) -> dict:
    row = {column: None for column in KIND_COLUMNS[kind]}
    row.update(_source=index, _bad=problem)
    return row


def _checked_example(example: dict, *, kind: str, columns: dict, index: int, image_root: str | None, label: str) -> dict:
    """``_normalize_example`` for rows datasets read: a missing column is its schema's (a ``KeyError``),
    a value of the wrong type a bad row."""
    try:
        return _normalize_example(example, kind=kind, columns=columns, index=index, image_root=image_root)
    except (TypeError, ValueError) as err:
        return _bad_row(kind, index, f"{label}: {err}")


def _lookup(example: dict, name: str) -> Any:
    if name in example:
        return example[name]
    head, dot, rest = name.partition(".")
    if dot and head in example:
        value = example[head]
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except ValueError:
                return _MISSING
        if isinstance(value, dict):
            return _lookup(value, rest)
    return _MISSING


def _column(example: dict, column: str, columns: dict[str, str]) -> Any:
    """The value of one of our columns: the mapped source column, else the first alias present and not
    null; None when present but null everywhere (the example is skipped later); KeyError when absent."""
    names = (columns[column],) if column in columns else _CANDIDATES[column]
    present = False
    for name in names:
        value = _lookup(example, name)
        if value is _MISSING:
            continue
        present = True
        if value is not None:
            return value
    if present:
        return None
    found = sorted(k for k in example if not k.startswith("__"))
    raise _MissingColumn(column, 
        f"column {column!r} not found (looked for {list(names)}; the source has {found}); "
        "map it with SourceConfig.columns"
    )


def _as_text(value: Any, column: str) -> str | None:
    """A text field: a string (bytes as UTF-8) or null; anything else is a wrong type (a bad row)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{column!r} has type {type(value).__name__}, not a string")


def _normalize_example(example: dict, *, kind: str, columns: dict, index: int, image_root: str | None) -> dict:
    out: dict[str, Any] = {"_source": index, "_bad": None}
    if kind in IMAGE_KINDS:
        out["image"] = _as_image_record(_column(example, "image", columns), image_root)
        out["caption"] = _as_text(_column(example, "caption", columns), "caption")
        return out
    for column in KIND_COLUMNS[kind]:
        value = _column(example, column, columns)
        if column == "negatives":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise ValueError("'negatives' is a string that is no JSON list") from None
            if value is not None and not isinstance(value, (list, tuple)):
                raise TypeError(f"'negatives' has type {type(value).__name__}, not a list")
            out[column] = None if value is None else [_as_text(v, "negatives") for v in value]
        else:
            out[column] = _as_text(value, column)
    return out


__all__ = ["FORMATS", "IMAGE_KINDS", "KINDS", "KIND_COLUMNS", "DataError", "SourceConfig", "load_source", "source_label"]
