"""Rows -> shards: consecutive blocks of ``shard_size`` rows, the unit of work, of resume and of output files.

Shard ``k`` holds rows ``k * shard_size`` ... ``(k + 1) * shard_size - 1`` of the input's order, whatever the
engine, so every engine embeds the same rows together and writes the same files. A shard carries its rows'
keys (the ``id`` and the kept columns, typed with one schema for the whole run) and the raw values of the
columns to embed (texts; image paths, URLs or bytes), nothing decoded yet.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .sources import Source

__all__ = ["Columns", "ShardInput", "ShardReader", "choose_columns", "column_value", "output_name"]

ID = "id"
# A path that must not be joined to the input's folder: a URL, a data URI or an absolute path.
_NOT_RELATIVE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://|data:)", re.IGNORECASE)
WEBDATASET_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


_MISSING = object()


def output_name(column: str) -> str:
    """A kept column's name in the shards: dots become underscores (``captions.en`` -> ``captions_en``), as vector
    databases read a dot as a path into a struct."""
    return column.replace(".", "_")


def column_value(row: dict[str, Any], name: str, default: Any = None) -> Any:
    """``row[name]``; a dotted name reaches into nested records (``captions.de``) when no column has that name."""
    if name in row:
        return row[name]
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


@dataclass(frozen=True)
class Columns:
    """Which input columns are embedded (``text``, ``image``), which one is the row id (None: the row number) and
    which are copied into the output (``keep``)."""

    text: str | None
    image: str | None
    id: str | None
    keep: tuple[str, ...]
    # keep chosen by default: the image column is dropped from it when it holds bytes rather than a path or URL
    default_keep: bool = False

    def __post_init__(self):
        if self.text is None and self.image is None:
            raise ValueError("nothing to embed: choose a text column and/or an image column")
        if self.text is not None and self.text == self.image:
            raise ValueError(f"column {self.text!r} cannot be both the text and the image column")
        names = [output_name(name) for name in self.keep]
        for name, original in zip(names, self.keep):
            if name == ID and self.id != original:
                raise ValueError(f"the input column {original!r} would clash with the output's row id: pass --id-column {original}")
        taken = [name for name in names if name in ("embedding", "text_embedding", "image_embedding")]
        if taken:
            raise ValueError(f"a kept column may not be named {taken[0]!r}: that is an embedding column of the output")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"kept columns would share the output name(s) {duplicates} (dots become underscores)")

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "image": self.image, "id": self.id, "keep": list(self.keep)}


def choose_columns(
    source: Source,
    text: str | None = None,
    image: str | None = None,
    id_column: str | None = None,
    keep: Sequence[str] | None = None,
) -> Columns:
    """The columns of a run: the given ones, else the input kind's defaults (an image folder: its ``path``; webdataset:
    its first image extension; a table: the columns named ``text`` / ``image``). ``keep`` None: the id column, the
    webdataset key and URL, and the text and image columns (image bytes are dropped where the first row shows them)."""
    available = source.columns
    if text is None and image is None:
        if source.kind == "images":
            image = "path"
        elif source.kind == "webdataset" and available:
            image = next((key for key in WEBDATASET_IMAGE_KEYS if key in available), None)
        elif available:
            text = "text" if "text" in available else None
            image = "image" if "image" in available else None
        if text is None and image is None:
            shown = f" (columns: {', '.join(available)})" if available else ""
            raise ValueError(f"choose the column(s) to embed with --text-column / --image-column{shown}")
    default_keep = keep is None
    if default_keep:
        defaults = {"images": ["path"], "webdataset": ["__key__", "__url__"]}.get(source.kind, [])
        keep = [name for name in defaults if available is None or name in available]
        keep += [name for name in (text, image) if name is not None and name not in keep]
        keep = [name for name in keep if name != id_column]
    if id_column == ID:
        keep = [name for name in keep if name != ID]
    columns = Columns(text, image, id_column, tuple(keep), default_keep=default_keep)
    if available is not None:
        missing = [
            name for name in (text, image, id_column, *columns.keep)
            if name is not None and name not in available and name.split(".")[0] not in available
        ]
        if missing:
            raise ValueError(f"no column {missing[0]!r} in {source.location} (columns: {', '.join(available)})")
    return columns


@dataclass
class ShardInput:
    """One shard's rows: ``keys`` (an Arrow table: ``id`` and the kept columns) and the values to embed."""

    index: int
    first_row: int
    keys: pa.Table
    texts: list[Any] | None
    images: list[Any] | None

    @property
    def num_rows(self) -> int:
        return self.keys.num_rows


def _resolve_image(value: Any, root: Path | None) -> Any:
    """A datasets image dict as its bytes (or path); a relative path joined to the input's folder."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str) and root is not None and value and not _NOT_RELATIVE.match(value) and not os.path.isabs(value):
        return str(root / value)
    return value


def _key_schema(rows: list[dict[str, Any]]) -> pa.Schema:
    """The keys' types, inferred from the first shard (a column of nulls there is a string column)."""
    table = pa.Table.from_pylist(rows)
    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in table.schema])


@dataclass
class ShardReader:
    """Reads ``source`` as shards. Iterating yields ``(index, ShardInput)`` for the shards ``wanted(index)`` says
    to embed and ``(index, None)`` for the others (their rows are read and dropped: a streaming input cannot seek).
    Afterwards ``num_rows`` / ``num_shards`` count the whole input. Shard 0 is always read in full: its rows fix the
    keys' schema, so every process and every resumed run types them alike."""

    source: Source
    columns: Columns
    shard_size: int
    image_root: Path | None = None
    num_rows: int = field(default=0, init=False)
    num_shards: int = field(default=0, init=False)
    schema: pa.Schema | None = field(default=None, init=False)
    keep: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self):
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.image_root is None:
            self.image_root = self.source.image_root
        self.keep = self.columns.keep

    @property
    def expected_shards(self) -> int | None:
        rows = self.source.num_rows
        return None if rows is None else math.ceil(rows / self.shard_size)

    def _keys(self, rows: list[dict[str, Any]], first_row: int) -> list[dict[str, Any]]:
        columns = self.columns
        keys = []
        for offset, row in enumerate(rows):
            record = {ID: first_row + offset if columns.id is None else column_value(row, columns.id)}
            for name in self.keep:
                record[output_name(name)] = column_value(row, name)
            keys.append(record)
        return keys

    def _shard(self, index: int, rows: list[dict[str, Any]]) -> ShardInput:
        first_row = index * self.shard_size
        if index == 0:
            self._check_first_row(rows[0])
        keys = self._keys(rows, first_row)
        if self.schema is None:
            self.schema = _key_schema(keys)
        try:
            table = pa.Table.from_pylist(keys, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(
                f"shard {index} (rows {first_row}-{first_row + len(rows) - 1}): a kept column's values do not fit the types "
                f"of the first shard ({self.schema}): {err}. Keep fewer columns (--keep) or fix the input"
            ) from err
        texts = [column_value(row, self.columns.text) for row in rows] if self.columns.text else None
        images = [_resolve_image(column_value(row, self.columns.image), self.image_root) for row in rows] if self.columns.image else None
        return ShardInput(index, first_row, table, texts, images)

    def _check_first_row(self, row: dict[str, Any]) -> None:
        columns = self.columns
        missing = [
            name for name in (columns.text, columns.image, columns.id, *columns.keep)
            if name is not None and column_value(row, name, _MISSING) is _MISSING
        ]
        if missing:
            raise ValueError(f"no column {missing[0]!r} in {self.source.location} (columns: {', '.join(row)})")
        if columns.default_keep and columns.image in self.keep and not isinstance(column_value(row, columns.image), str):
            self.keep = tuple(name for name in self.keep if name != columns.image)  # image bytes: not copied by default

    def __iter__(self) -> Iterator[tuple[int, ShardInput | None]]:
        return self.read(lambda index: True)

    def read(self, wanted: Callable[[int], bool]) -> Iterator[tuple[int, ShardInput | None]]:
        self.num_rows = self.num_shards = 0
        buffer: list[dict[str, Any]] = []
        index = 0
        keep_rows = True  # shard 0 is always read (the schema)
        for row in self.source.rows():
            self.num_rows += 1
            if keep_rows:
                buffer.append(row)
            if self.num_rows % self.shard_size == 0:
                yield index, self._take(index, buffer, wanted)
                buffer, index = [], index + 1
                keep_rows = wanted(index)
        if self.num_rows % self.shard_size:
            yield index, self._take(index, buffer, wanted)
            index += 1
        self.num_shards = index

    def _take(self, index: int, rows: list[dict[str, Any]], wanted: Callable[[int], bool]) -> ShardInput | None:
        if index == 0:
            shard = self._shard(index, rows)  # fixes the schema even when shard 0 is done
            return shard if wanted(index) else None
        return self._shard(index, rows) if wanted(index) else None
