"""Helpers shared by the hub commands: atomic output folders, deterministic JSON, CLI logging."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jina_clip_v2 import _io

# Files written by other libraries that are not configuration: left byte-for-byte as written.
_KEEP_JSON_AS_IS = {"tokenizer.json"}


def dump_json(obj: Any) -> str:
    """The one JSON layout of every file we write: sorted keys, 2-space indent, UTF-8, final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as `dump_json` lays it out, written atomically (a reader sees the old file or the new one)."""
    write_text(path, dump_json(obj))


def write_text(path: str | os.PathLike, text: str) -> None:
    with _io.atomic_write(path, permissions=0o644) as handle:
        handle.write(text)


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file that must hold an object (config.json, tokenizer_config.json, ...): a ValueError naming the
    file when it is unreadable JSON or another JSON value (a list, a number)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of settings, got a JSON {type(data).__name__}")
    return data


def weights_problems(folder: str | os.PathLike) -> list[str]:
    """What is wrong with a folder's safetensors weights: none at all, an index naming a missing shard, a file
    that is truncated or not safetensors (`safetensors.safe_open` checks that the header covers the file
    exactly). An empty list: every weights file is complete."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(read_json_object(index).get("weight_map", {}).values()))
        except ValueError as err:
            return [str(err)]
        if not shards:
            return [f"{index} maps no tensor to a file"]
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        return [f"no weights in {folder} (model.safetensors or model.safetensors.index.json)"]
    problems = []
    for name in shards:
        path = folder / name
        if Path(name).name != name or not path.is_file():
            problems.append(f"{path}: missing (named by the index)")
            continue
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except Exception as err:  # noqa: BLE001 - safetensors' errors name no file
            problems.append(f"{path}: truncated or not a safetensors file ({err})")
    return problems


def canonicalize_json_files(folder: Path) -> None:
    """Rewrite every small JSON config in `folder` (recursively) in the `dump_json` layout, so two exports
    of the same model are byte-identical whatever key order the writing library used."""
    for path in sorted(folder.rglob("*.json")):
        if path.name in _KEEP_JSON_AS_IS:
            continue
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        write_json(path, data)


def normalize_permissions(folder: Path) -> None:
    """0644 files / 0755 folders: some writers (safetensors) create 0600 files."""
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    folder.chmod(0o755)


@contextmanager
def atomic_folder(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """``jina_clip_v2._io.atomic_folder`` for exports: the staging folder's name is a valid Python module
    name (transformers imports remote code from a folder under its base name), and the files get 0644 /
    0755 permissions before the folder takes its final name."""
    with _io.atomic_folder(target, overwrite=overwrite, prefix="tmp_export_", suffix="") as staging:
        yield staging
        normalize_permissions(staging)


def folder_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under `folder`, relative and sorted (hidden files and folders skipped)."""
    folder = Path(folder)
    return sorted(
        path.relative_to(folder)
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


# The hub modules' loggers are named after their import path, not `__name__`: run as `python -m
# jina_clip_v2.hub.export`, `__name__` is "__main__", whose lines no handler of ours would show.
LOGGER_PREFIX = "jina_clip_v2.hub"


def hub_logger(module: str) -> logging.Logger:
    """The logger of hub module `module` ("export", "convert", ...)."""
    return logging.getLogger(f"{LOGGER_PREFIX}.{module}")


class _ShortNameFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = record.name.removeprefix("jina_clip_v2.")
        return f"[{name}] {record.getMessage()}"


def configure_logging() -> None:
    """Progress lines of the hub loggers on stdout, as `[hub.export] message` (for the CLIs)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_ShortNameFormatter())
    logger = logging.getLogger(LOGGER_PREFIX)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
