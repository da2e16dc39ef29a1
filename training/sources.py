"""Dataset sources of the trainer: where one source's examples come from (a Hub dataset, a local folder,
files or a glob of parquet / jsonl / webdataset shards) and how its columns map onto the common schema of
its kind (``training.data`` documents the kinds, the schemas and the pipeline).

``SourceConfig.columns`` maps OUR column name -> the source's column name; a dotted name such as
``"json.caption"`` reads a field of a dict/JSON column. Without an explicit mapping a column is looked up
under its own name and a few common aliases (``_CANDIDATES``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial
from glob import glob
from typing import Any

from jina_clip_v2._config import checked, non_negative
from jina_clip_v2.training.images import _as_image_record

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


def load_source(src: SourceConfig, kind: str, index: int = 0):
    """One source as a streaming IterableDataset in the kind's common schema (images undecoded)."""
    from datasets import load_dataset

    fmt = _normalize_format(src.format)
    files = _local_files(src.path)
    image_root = src.image_root
    if files is not None:
        fmt = fmt or _infer_format(files)
        ds = load_dataset(fmt, data_files={src.split: files}, split=src.split, streaming=True)
        image_root = image_root or os.path.dirname(os.path.abspath(files[0]))
    elif os.path.isdir(src.path):
        image_root = image_root or os.path.abspath(src.path)
        if fmt is None:  # a folder laid out like a Hub dataset repo (README configs, data/ files), or plain
            ds = load_dataset(src.path, name=src.name, data_files=src.data_files, split=src.split, streaming=True)
        else:
            ds = load_dataset(fmt, data_dir=src.path, data_files=src.data_files, split=src.split, streaming=True)
    else:  # a Hub dataset id; datasets infers the builder from the repo's files (format is for defaults)
        ds = load_dataset(src.path, name=src.name, data_files=src.data_files, split=src.split, streaming=True)
    try:
        ds = ds.decode(False)
    except Exception:  # pragma: no cover - features unknown and nothing decodable
        pass
    features = _features(kind)
    fn = partial(_normalize_example, kind=kind, columns=dict(src.columns), index=index, image_root=image_root)
    return ds.map(fn, features=features).select_columns(list(features))


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
    raise KeyError(
        f"column {column!r} not found (looked for {list(names)}; the source has {found}); "
        "map it with SourceConfig.columns"
    )


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value)


def _normalize_example(example: dict, *, kind: str, columns: dict, index: int, image_root: str | None) -> dict:
    out: dict[str, Any] = {"_source": index}
    if kind in IMAGE_KINDS:
        out["image"] = _as_image_record(_column(example, "image", columns), image_root)
        out["caption"] = _as_text(_column(example, "caption", columns))
        return out
    for column in KIND_COLUMNS[kind]:
        value = _column(example, column, columns)
        if column == "negatives":
            if isinstance(value, str):
                value = json.loads(value)
            out[column] = None if value is None else [_as_text(v) for v in value]
        else:
            out[column] = _as_text(value)
    return out


__all__ = ["FORMATS", "IMAGE_KINDS", "KINDS", "KIND_COLUMNS", "SourceConfig", "load_source"]
