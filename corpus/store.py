"""The output folder of ``jina-clip embed``: Parquet shards, per-shard error lists, one errors file, a manifest.

::

    OUT/manifest.json                       the run's settings, dims, normalisation, counts, shard list
    OUT/errors.jsonl                        every bad row: {"id", "row", "column", "input", "error"}
    OUT/shards/shard-00000.parquet          id, the kept input columns, the embedding(s) as fixed-size lists
    OUT/shards/shard-00000.errors.jsonl     that shard's bad rows (only when it has some)

A shard is finished when its Parquet file exists under its final name: every file is written through the one
atomic writer (``jina_clip_v2._io.atomic_write``: a temporary name, fsync, rename), its errors file before it,
so a killed run leaves at most hidden ``*.tmp`` files (removed when the run completes) and a rerun embeds exactly
the shards that have no file. ``manifest.json`` is written at the start (``"complete": false``, the settings a
resumed run must match) and again at the end with the counts. Its content depends only on the settings and the
data, never on timing, so an interrupted and resumed run leaves the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from jina_clip_v2._io import atomic_write

from .embedder import ShardOutput

__all__ = ["FORMAT", "EmbeddingStore", "read_manifest"]

FORMAT = "jina-clip-embeddings/1"
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
SHARDS = "shards"
_SHARD = re.compile(r"^shard-(\d{5,})\.parquet$")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not the output of `jina-clip embed` (no {MANIFEST})")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {manifest.get('format')!r} (this version reads {FORMAT!r})")
    return manifest


def _json_bytes(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False) + "\n"


class EmbeddingStore:
    """The output folder of one run (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.shards = self.folder / SHARDS

    def shard_path(self, index: int) -> Path:
        return self.shards / f"shard-{index:05d}.parquet"

    def errors_path(self, index: int) -> Path:
        return self.shards / f"shard-{index:05d}.errors.jsonl"

    def done(self) -> set[int]:
        """The finished shards: those whose Parquet file has its final name."""
        if not self.shards.is_dir():
            return set()
        return {int(match.group(1)) for name in os.listdir(self.shards) if (match := _SHARD.match(name))}

    # ---- start ------------------------------------------------------------------------------------

    def open(self, settings: dict[str, Any], *, overwrite: bool = False, writer: bool = True) -> set[int]:
        """Prepare the folder for a run with ``settings``; returns the shards already finished (a resumed run).

        An existing output of other settings is an error unless ``overwrite`` (then it is emptied first); a
        non-empty folder that is no output of ours is refused. ``writer``: this process writes the start
        manifest (several processes may: the content is the same and the write atomic)."""
        manifest_path = self.folder / MANIFEST
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"--out {self.folder} exists and is not a folder")
        if manifest_path.is_file():
            previous = read_manifest(self.folder)
            if previous.get("settings") != settings:
                if not overwrite:
                    changed = sorted(
                        key for key in set(settings) | set(previous.get("settings", {}))
                        if settings.get(key) != previous.get("settings", {}).get(key)
                    )
                    raise ValueError(
                        f"{self.folder} holds embeddings made with other settings ({', '.join(changed)} differ): "
                        "choose another --out, or pass --overwrite to replace them"
                    )
                self._clear()
        elif self.folder.is_dir() and any(self.folder.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{self.folder} is not empty and holds no {MANIFEST}: choose an empty or new --out folder")
            self._clear()
        self.shards.mkdir(parents=True, exist_ok=True)
        if writer:
            self._remove_temporaries()
            with atomic_write(manifest_path, keep_identical=True) as handle:
                handle.write(_json_bytes({"format": FORMAT, "complete": False, "settings": settings}))
        return self.done()

    def _clear(self) -> None:
        for path in (self.folder / MANIFEST, self.folder / ERRORS):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.shards, ignore_errors=True)

    # ---- shards -----------------------------------------------------------------------------------

    def write(self, output: ShardOutput) -> None:
        """A finished shard: its errors first (or no errors file), then its Parquet file, each atomically."""
        errors_path = self.errors_path(output.index)
        if output.errors:
            with atomic_write(errors_path) as handle:
                handle.writelines(json.dumps(error, ensure_ascii=False) + "\n" for error in output.errors)
        else:
            errors_path.unlink(missing_ok=True)  # left by an earlier attempt at this shard (a URL failed then)
        with atomic_write(self.shard_path(output.index), "wb") as handle:
            pq.write_table(output.table, handle)

    # ---- end --------------------------------------------------------------------------------------

    def finish(self, settings: dict[str, Any], num_rows: int, num_shards: int, extra: dict[str, Any]) -> dict[str, Any] | None:
        """When every shard of the input is finished: the merged errors file and the complete manifest (written
        atomically, left alone when identical, so the last of several processes may write them too). Returns the
        manifest, or None while shards are missing (another process is still at work, or this run was cut short)."""
        done = self.done()
        if any(index not in done for index in range(num_shards)):
            return None
        embedded = 0
        for index in range(num_shards):
            embedded += pq.ParquetFile(self.shard_path(index)).metadata.num_rows
        error_lines = []
        for index in range(num_shards):
            path = self.errors_path(index)
            if path.is_file():
                error_lines += path.read_text(encoding="utf-8").splitlines(keepends=True)
        with atomic_write(self.folder / ERRORS, keep_identical=True) as handle:
            handle.writelines(error_lines)
        key_columns = pq.read_schema(self.shard_path(0)).names if num_shards else []
        manifest = {
            "format": FORMAT,
            "complete": True,
            "settings": settings,
            **extra,
            "columns": key_columns,
            "counts": {"rows": num_rows, "embedded": embedded, "errors": len(error_lines), "shards": num_shards},
            "shards": [self.shard_path(index).relative_to(self.folder).as_posix() for index in range(num_shards)],
            "errors_file": ERRORS,
        }
        with atomic_write(self.folder / MANIFEST, keep_identical=True) as handle:
            handle.write(_json_bytes(manifest))
        self._remove_beyond(num_shards)
        return manifest

    def _remove_temporaries(self) -> None:
        """The hidden temporary files of writes a killed run left (called before any writer of this run starts)."""
        for folder in (self.folder, self.shards):
            for name in os.listdir(folder):
                if name.startswith(".") and name.endswith(".tmp") and (folder / name).is_file():
                    (folder / name).unlink(missing_ok=True)

    def _remove_beyond(self, num_shards: int) -> None:
        """Shard files past the input's end (left by an earlier run on an input that has since shrunk)."""
        keep = {self.shard_path(i).name for i in range(num_shards)} | {self.errors_path(i).name for i in range(num_shards)}
        for name in os.listdir(self.shards):
            if name.startswith("shard-") and name not in keep:
                (self.shards / name).unlink(missing_ok=True)
