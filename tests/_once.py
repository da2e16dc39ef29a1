"""Expensive read-only fixtures built once per test session, even under pytest-xdist (`-n 2` gives every
worker its own module fixtures): the first worker builds into a folder beside the workers' temporary folders,
under a file lock, and the others wait for it and reuse it (pytest-xdist's documented pattern)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def build_once(tmp_path_factory, name: str, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """`build(folder)` once per session; its JSON-able result (paths as strings) is returned to every caller."""
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # a single process: nothing to share
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / name
    with FileLock(str(root) + ".lock"):
        done = root / "built.json"
        if done.is_file():
            return json.loads(done.read_text())
        root.mkdir(exist_ok=True)
        result = build(root)
        done.write_text(json.dumps(result, default=str))
        return json.loads(done.read_text())
