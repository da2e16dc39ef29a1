"""The inputs of ``jina-clip embed``: anything that yields rows, in one deterministic order.

``open_source(location)`` recognises

- a folder of images (searched recursively) or a glob of image files: one row per file, ``{"path": ...}``
  (relative to the folder, or as the glob matched it), sorted by path;
- a JSON-lines, CSV or Parquet file, a glob of them, or a folder of them: their rows, read with Hugging Face
  ``datasets`` in streaming mode (files in sorted order, rows in file order);
- webdataset tars (a ``.tar`` file, a glob or a folder of them): one row per sample (``__key__``, and one
  column per file extension: ``jpg``, ``txt``, ``json``, ...), read with ``datasets``' webdataset builder;
- a dataset saved with ``datasets``' ``save_to_disk`` (a folder holding ``state.json`` or ``dataset_dict.json``);
- anything else is a Hub dataset id: ``datasets.load_dataset(id, name=subset, split=split, streaming=True)``.

Image columns come out undecoded (``datasets.Image(decode=False)``: ``{"bytes", "path"}``): decoding is the
model's own image decoder's job (``modeling/processing_jina_clip.py``), in the embedding step, where a bad
image becomes an error row instead of a failed job.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["IMAGE_EXTENSIONS", "Source", "open_source"]

# What a folder or glob of images holds (PIL opens more; these are the files people keep images in).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# File extension -> datasets' packaged builder.
TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".tar": "webdataset"}
KINDS = ("auto", "images", "json", "csv", "parquet", "webdataset", "dataset", "hub")


@dataclass
class Source:
    """Rows of an input, always in the same order. ``image_root``: the folder relative image paths of this
    input are read from (a local table's folder, an image folder); None: the working directory."""

    kind: str
    location: str
    columns: tuple[str, ...] | None
    num_rows: int | None
    image_root: Path | None
    _rows: Callable[[], Iterator[dict[str, Any]]] = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> Iterator[dict[str, Any]]:
        return self._rows()

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the input."""
        return {"kind": self.kind, "location": self.location, **{k: v for k, v in self.options.items() if v is not None}}


def _is_glob(location: str) -> bool:
    return any(char in location for char in "*?[")


def _suffix(path: str | Path) -> str:
    name = str(path).lower()
    return ".jsonl" if name.endswith(".jsonl.gz") or name.endswith(".json.gz") else Path(name).suffix


def _glob_root(pattern: str) -> Path:
    """The folder a glob starts in: its leading components without a wildcard (``data/**/*.jpg`` -> ``data``)."""
    parts = Path(pattern).parts
    plain = parts[: next(i for i, part in enumerate(parts) if _is_glob(part))]
    return Path(os.path.abspath(Path(*plain))) if plain else Path(os.getcwd())


def _image_source(location: str, files: list[str], root: Path) -> Source:
    """Paths relative to ``root``, sorted."""
    paths = sorted(Path(os.path.abspath(f)).relative_to(root).as_posix() for f in files)

    def rows() -> Iterator[dict[str, Any]]:
        for path in paths:
            yield {"path": path}

    return Source("images", location, ("path",), len(paths), root, rows)


def _folder_images(folder: Path) -> list[str]:
    return [
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]


def _undecoded_images(dataset):
    """Image columns as ``{"bytes", "path"}`` dicts instead of decoded PIL images (datasets decodes by default)."""
    from datasets import Image

    features = getattr(dataset, "features", None) or {}
    for name, feature in features.items():
        if isinstance(feature, Image) and feature.decode:
            dataset = dataset.cast_column(name, Image(decode=False))
    return dataset


def _columns_of(dataset) -> tuple[str, ...] | None:
    """A streamed dataset's columns: its features, or else (CSV) the keys of its first row."""
    if getattr(dataset, "features", None):
        return tuple(dataset.features)
    first = next(iter(dataset), None)
    return None if first is None else tuple(first)


def _datasets_source(kind: str, location: str, builder: str, files: list[str], root: Path) -> Source:
    from datasets import load_dataset

    files = sorted(files)
    # CSV and TSV: pandas reads them; a .tsv needs its separator.
    kwargs = {"sep": "\t"} if builder == "csv" and all(_suffix(f) == ".tsv" for f in files) else {}

    def open_dataset():
        return _undecoded_images(load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs))

    def rows() -> Iterator[dict[str, Any]]:
        yield from open_dataset()

    num_rows = None
    if builder == "parquet":  # the footers know: a progress bar with a total
        import pyarrow.parquet as pq

        num_rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    return Source(kind, location, _columns_of(open_dataset()), num_rows, root, rows)


def _saved_dataset_source(location: str, split: str | None) -> Source:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(location)
    if isinstance(dataset, DatasetDict):
        if split is None or split not in dataset:
            raise ValueError(f"{location} holds the splits {sorted(dataset)}: choose one with --split")
        dataset = dataset[split]
    dataset = _undecoded_images(dataset)

    def rows() -> Iterator[dict[str, Any]]:
        yield from dataset

    return Source("dataset", location, tuple(dataset.column_names), len(dataset), None, rows, {"split": split})


def _hub_source(location: str, split: str | None, subset: str | None, revision: str | None) -> Source:
    from datasets import load_dataset

    def open_dataset():
        return _undecoded_images(
            load_dataset(location, name=subset, split=split or "train", streaming=True, revision=revision)
        )

    columns = _columns_of(open_dataset())  # fails early (unknown id, offline, no split) with datasets' own message

    def rows() -> Iterator[dict[str, Any]]:
        yield from open_dataset()

    options = {"split": split or "train", "subset": subset, "revision": revision}
    return Source("hub", location, columns, None, None, rows, options)


def _by_extension(location: str, files: list[str], root: Path, kind: str) -> Source:
    suffixes = {_suffix(f) for f in files}
    if kind in ("auto", "images") and suffixes <= IMAGE_EXTENSIONS:
        return _image_source(location, files, root)
    builders = {TABLE_BUILDERS.get(s) for s in suffixes}
    if kind == "auto":
        if len(builders) != 1 or None in builders:
            raise ValueError(
                f"{location}: cannot tell the input kind from the file extensions {sorted(suffixes)}; give files of one "
                f"kind (images, .jsonl, .csv, .parquet or .tar) or choose one with --input-kind"
            )
        (builder,) = builders
        kind = "json" if builder == "json" else builder
    builder = {"json": "json", "csv": "csv", "parquet": "parquet", "webdataset": "webdataset"}.get(kind)
    if builder is None:
        raise ValueError(f"--input-kind {kind} does not apply to files ({location})")
    return _datasets_source(kind, location, builder, files, root)


def open_source(
    location: str | os.PathLike,
    *,
    kind: str = "auto",
    split: str | None = None,
    subset: str | None = None,
    revision: str | None = None,
) -> Source:
    """The rows of ``location`` (see the module docstring); ``kind`` overrides the detection."""
    if kind not in KINDS:
        raise ValueError(f"unknown input kind {kind!r}; one of {list(KINDS)}")
    location = os.fspath(location)
    path = Path(location)
    if kind == "hub":
        return _hub_source(location, split, subset, revision)
    if _is_glob(location) or path.exists():
        location = os.path.abspath(location)  # the manifest's record: the same input from any working directory
        path = Path(location)
    if _is_glob(location):
        files = [f for f in glob.glob(location, recursive=True) if os.path.isfile(f)]
        if not files:
            raise FileNotFoundError(f"no file matches {location!r}")
        return _by_extension(location, files, _glob_root(location), kind)
    if path.is_file():
        return _by_extension(location, [location], Path(os.path.abspath(location)).parent, kind)
    if path.is_dir():
        if kind == "dataset" or (kind == "auto" and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())):
            return _saved_dataset_source(location, split)
        images = _folder_images(path) if kind in ("auto", "images") else []
        if images:
            return _image_source(location, [str(path / image) for image in images], Path(os.path.abspath(path)))
        tables = [str(p) for p in path.rglob("*") if p.is_file() and _suffix(p) in TABLE_BUILDERS]
        if tables:
            return _by_extension(location, tables, Path(os.path.abspath(path)), kind)
        raise FileNotFoundError(f"{location} holds no image ({', '.join(sorted(IMAGE_EXTENSIONS))}) and no data file")
    if kind != "auto" or location.startswith((".", "/", "~")) or location.count("/") > 1:
        raise FileNotFoundError(f"no such file or folder: {location!r}")
    return _hub_source(location, split, subset, revision)
