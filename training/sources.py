"""Dataset sources of the trainer: where one source's examples come from (a Hub dataset, a local folder,
files or a glob of parquet / jsonl / webdataset shards) and how its columns map onto the common schema of
its kind (``training.data`` documents the kinds, the schemas and the pipeline).

``SourceConfig.columns`` maps OUR column name -> the source's column name; a dotted name such as
``"json.caption"`` reads a field of a dict/JSON column. Without an explicit mapping a column is looked up
under its own name and a few common aliases (``_CANDIDATES``).

Bad rows. Local jsonl, parquet and webdataset files are read row by row here (``_file_rows``), not by datasets'
builders, whose pyarrow readers fail a whole file (and with it the run) on one invalid JSON line or one
row of another type. A row that cannot be used (invalid JSON, JSON nested too deeply, a line longer than
``max_row_chars``, a field of the wrong type, a field that earlier rows of the file had) becomes an example
whose ``_bad`` column says which file, which line / row and what is wrong (``_where``: the file; ``_lost``:
the rows it stands for); the stream skips it with a warning or stops (``data.on_bad_row``), and counts the
rows lost per file for the run's summary. A column that the first row of a file lacks is a mapping problem,
not a bad row: a ``KeyError`` naming the file and the columns it has. A file that cannot be read on (a
truncated gzip, a cut tar, an unreadable parquet footer) is one marker for what is left of it ("the rest",
after the rows read); a parquet row group that cannot be read loses its own rows, and the next group is read
on. Local webdataset shards are read sample by sample (``_tar_samples``), as webdataset groups members:
datasets' tar reader stops without a word at a cut (4 of 6 samples of a shard cut at 60%) or fails the run
while it guesses the columns; here a cut shard yields its complete samples, then a marker naming it and what
was lost. Other sources (Hub datasets, Hub-layout folders) come through datasets: their rows are checked the
same way after reading, and what datasets itself cannot read is a ``DataError`` naming the source.

Images named by a path or a URL (not inline bytes), decided per source and checked per row (a refused one
is a bad row naming the problem):

* a relative path is resolved against ``image_root`` (default: the local source's folder). A local source
  (files or a folder on this machine, which the user chose) reads its paths as written: absolute paths,
  ``../`` and symbolic links as the file system resolves them. A Hub dataset's rows read no path of this
  machine, unless the source sets ``image_root``, and then only inside it. ``image_paths_outside_root:
  false`` confines a local source the same way (a downloaded dataset you do not trust): a path that leads
  out of ``image_root`` (``../``, an absolute path, a symbolic link) is a bad row naming it.
* an http(s) URL is fetched only with ``fetch_urls: true`` (off by default: a dataset from elsewhere does
  not make the trainer send requests), each fetch within the processor's deadline and byte cap, and the
  fetches of each source within a budget (``training.data``: ``max_fetch_failure_seconds``,
  ``max_fetch_failure_rate``). Other URL schemes are refused; ``data:image/...;base64`` URIs are inline data.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from glob import glob
from typing import Any

from jina_clip_v2._config import at_least, checked, non_negative
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


class _LostRows(ValueError):
    """A part of a file that cannot be read (a parquet row group): `lost` rows."""

    def __init__(self, message: str, lost: int):
        super().__init__(message)
        self.lost = lost


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
    image_paths_outside_root: bool | None = None
    """Read image paths that lead out of ``image_root`` (``../``, absolute paths, symlinks). None: yes for a
    local source (its rows are the user's own), no for a Hub dataset."""
    fetch_urls: bool = False
    """Fetch http(s) image URLs of the image column (each within the processor's fetch deadline and byte cap)."""
    max_row_chars: int = checked(64 * 2**20, check=at_least(1))
    """A jsonl line longer than this (characters) is a bad row, skipped without being held in memory."""



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
    cols["_where"] = Value("string")  # the file (or source) of an unusable row
    cols["_lost"] = Value("int32")  # the rows an unusable row stands for (-1: the rest of its file)
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
        if fmt in ("json", "parquet", "webdataset"):
            _check_not_empty(files, fmt, label)
            options = {"fmt": fmt, "kind": kind, "columns": dict(src.columns), "index": index,
                       "images": _image_policy(src, image_root, local=True), "max_row_chars": src.max_row_chars}
            # One shard per file (datasets shards list-valued gen_kwargs): shuffling and split_dataset_by_node
            # see the files as datasets' own builders would.
            return IterableDataset.from_generator(
                _file_rows, features=features, gen_kwargs={"files": list(files), "options": options}
            )
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
    images = _image_policy(src, image_root, local=os.path.isdir(src.path))
    fn = partial(_checked_example, kind=kind, columns=dict(src.columns), index=index, images=images, label=label)
    return ds.map(fn, features=features).select_columns(list(features))


def _datasets_call(label: str, fn, *args, **kwargs):
    """A datasets call, its failures on the data (no rows, pyarrow's errors) as a ``DataError`` naming the
    source."""
    import tarfile

    try:
        return fn(*args, **kwargs)
    except StopIteration:  # datasets' json builder peeks at the first rows of an empty file
        raise DataError(f"{label}: no rows") from None
    except Exception as err:
        if type(err).__module__.startswith("pyarrow") or type(err).__name__ == "DatasetGenerationError" or isinstance(err, tarfile.TarError):
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
            elif fmt == "webdataset":
                import tarfile

                with tarfile.open(path, "r:*") as archive:
                    if archive.next() is not None:
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


def _raw_rows(path: str, fmt: str, max_row_chars: int = 64 * 2**20):
    """(where, row or a JSON error) for every row of one file, where = "<file> line N" / "<file> row N"."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        handle = pq.ParquetFile(path)
        row = 0
        for group in range(handle.num_row_groups):  # group by group: a damaged page loses its group, not the file
            size, done = handle.metadata.row_group(group).num_rows, 0
            try:
                for batch in handle.iter_batches(batch_size=256, row_groups=[group]):
                    for example in batch.to_pylist():
                        yield f"{path} row {row}", example
                        row, done = row + 1, done + 1
            except Exception as err:  # noqa: BLE001 - pyarrow's errors of every kind
                yield f"{path} row group {group}", _LostRows(
                    f"cannot be read ({type(err).__name__}: {err}): {size - done} of its {size} rows lost", size - done
                )
                row += size - done
        return
    if fmt == "webdataset":
        yield from _tar_samples(path)
        return
    with _open_text(path) as handle:
        for number, line in enumerate(_lines(handle, max_row_chars), start=1):
            if line is None:
                yield f"{path} line {number}", ValueError(f"longer than max_row_chars={max_row_chars} characters (not read)")
                continue
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except ValueError as err:
                yield f"{path} line {number}", ValueError(f"invalid JSON ({err})")
                continue
            except RecursionError:  # json's parser recurses per level: one hostile line must not end the file
                yield f"{path} line {number}", ValueError("invalid JSON (nested too deeply to parse)")
                continue
            if not isinstance(example, dict):
                example = ValueError(f"a JSON {type(example).__name__}, not an object")
            yield f"{path} line {number}", example


def _lines(handle, limit: int):
    """The lines of a text file, each None instead when it is longer than `limit` characters (read through in
    chunks, never held whole)."""
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) > limit:
            while line and not line.endswith("\n"):  # the rest of the long line
                line = handle.readline(1 << 20)
            yield None
            continue
        yield line


def _file_rows(files: list[str], options: dict):
    """The generator behind a local jsonl / parquet source: normalized rows, bad ones marked in ``_bad``."""
    kind, index = options["kind"], options["index"]
    for path in files:
        first, where, rows = True, None, 0
        try:
            for where, example in _raw_rows(path, options["fmt"], options["max_row_chars"]):
                rows += 1
                if isinstance(example, Exception):
                    yield _bad_row(kind, index, f"{where}: {example}", path, lost=getattr(example, "lost", 1))
                    continue
                try:
                    out = _normalize_example(example, kind=kind, columns=options["columns"], index=index, images=options["images"])
                except _MissingColumn as err:
                    if first:  # the file's first row decides its columns: a mapping problem
                        raise KeyError(f"{path}: {err.args[0]}") from None
                    yield _bad_row(kind, index, f"{where}: field {err.column!r} is missing (earlier rows have it)", path)
                except (TypeError, ValueError) as err:
                    yield _bad_row(kind, index, f"{where}: {err}", path)
                else:
                    yield out
                first = False
        except KeyError:
            raise
        except Exception as err:  # noqa: BLE001 - an unreadable file (corrupt parquet, bad gzip)
            position = f"cannot read on after {where}" if where else "cannot read it"
            yield _bad_row(kind, index, f"{path}: {position} ({type(err).__name__}: {err}); the rest of it lost "
                           f"({rows} rows read)", path, lost=-1)


def _bad_row(kind: str, index: int, problem: str, where: str | None = None, *, lost: int = 1) -> dict:
    row = {column: None for column in KIND_COLUMNS[kind]}
    row.update(_source=index, _bad=problem, _where=where, _lost=lost)
    return row


def _tar_samples(path: str):
    """(where, sample) for every sample of a webdataset shard, as webdataset groups members: consecutive members
    sharing a key (the path without the file name's extensions), each under its extension: text members
    (txt, text, caption) as strings, json members parsed, others (images) as bytes. A shard cut short raises
    at the cut (tarfile: "unexpected end of data"); one whose end-of-archive blocks are missing (cut between
    two samples) too, after its last sample."""
    import tarfile

    size = os.path.getsize(path)
    with tarfile.open(path, "r:*") as archive:  # random access (gzip etc. by seeking): members one by one
        key, sample, count = None, {}, 0
        for member in archive:
            if not member.isfile():
                continue
            member_key = _sample_key(member.name)
            if key is not None and member_key != key:
                yield f"{path} sample {count} ({key})", sample
                count += 1
                sample = {}
            key = member_key
            extension = member.name[len(member_key) + 1 :].lower()
            data = archive.extractfile(member).read()
            if len(data) != member.size:
                raise tarfile.ReadError("unexpected end of data")
            sample[extension] = _tar_value(extension, data)
            sample.update(__key__=key, __url__=path)
        if key is not None:
            yield f"{path} sample {count} ({key})", sample
        end = archive.offset
        plain = isinstance(archive.fileobj, io.BufferedReader)  # offsets are file offsets (not in a gzip stream)
    if plain and size < end + 2 * tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"the archive ends at byte {size} without its end-of-archive blocks (cut between samples)")


def _tar_value(extension: str, data: bytes) -> Any:
    if extension in ("txt", "text", "caption"):
        return data.decode("utf-8", errors="replace")
    if extension == "json":
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            return data.decode("utf-8", errors="replace")  # a bad row when a column is read from it
    return data


def _sample_key(name: str) -> str:
    """webdataset's sample key of a member: its path without the extension(s) of its file name."""
    folder, _, base = name.rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]


def _checked_example(example: dict, *, kind: str, columns: dict, index: int, images: dict, label: str) -> dict:
    """``_normalize_example`` for rows datasets read: a missing column is its schema's (a ``KeyError``),
    a value of the wrong type a bad row."""
    try:
        return _normalize_example(example, kind=kind, columns=columns, index=index, images=images)
    except (TypeError, ValueError) as err:
        where = example.get("__url__") or example.get("__key__") or label
        return _bad_row(kind, index, f"{label}: {err}", str(where))


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


def _image_policy(src: SourceConfig, image_root: str | None, *, local: bool) -> dict:
    """Where a source's images may come from (see the module docstring); `local`: files or a folder here."""
    outside = src.image_paths_outside_root if src.image_paths_outside_root is not None else local
    return {"root": image_root, "outside_root": outside, "fetch_urls": src.fetch_urls}


def _check_image_location(record: dict | None, policy: dict) -> dict | None:
    """`record` ({"bytes", "path"}) when its image may be read under `policy`; a ValueError naming the path or
    URL and the setting that would allow it otherwise. Inline bytes are always fine."""
    if record is None or record["bytes"] is not None or not record["path"]:
        return record
    path = str(record["path"])
    scheme = path.partition("://")[0].lower() if "://" in path else None
    if scheme is not None:
        if scheme not in ("http", "https"):
            raise ValueError(f"image URL {path!r} has the scheme {scheme!r}; only http(s) URLs are fetched")
        if not policy["fetch_urls"]:
            raise ValueError(f"image is the URL {path!r}, and this source does not fetch URLs (set fetch_urls: true on it)")
        return record
    if path[:5].lower() == "data:":
        return record
    root = policy["root"]
    if root is None:
        raise ValueError(f"image path {path!r} but the source has no image_root: a Hub dataset's paths are not read "
                         "from this machine (set image_root on the source)")
    if not policy["outside_root"]:
        resolved, base = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([resolved, base]) != base:
            raise ValueError(f"image path {path!r} leads out of image_root {root} (to {resolved}: '../', an absolute "
                             "path or a symbolic link), and this source is confined to it (image_paths_outside_root)")
    return record


def _normalize_example(example: dict, *, kind: str, columns: dict, index: int, images: dict | None = None) -> dict:
    out: dict[str, Any] = {"_source": index, "_bad": None, "_where": None, "_lost": 0}
    if kind in IMAGE_KINDS:
        images = images or {"root": None, "outside_root": False, "fetch_urls": False}
        record = _as_image_record(_column(example, "image", columns), images["root"])
        out["image"] = _check_image_location(record, images)
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


__all__ = [
    "FORMATS",
    "IMAGE_KINDS",
    "KINDS",
    "KIND_COLUMNS",
    "DataError",
    "SourceConfig",
    "load_source",
    "source_label",
]
