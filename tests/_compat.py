"""Older library versions for compatibility checks: each lives in its own folder under .compat/ (installed by
`make setup`), put first on PYTHONPATH of a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from _tiny import ROOT

COMPAT = ROOT / ".compat"


def compat_folder(name: str) -> Path:
    folder = COMPAT / name
    if not folder.is_dir():
        raise AssertionError(f"{folder} is missing: run `make setup` (it installs the compatibility folders)")
    return folder


def run_with(folder: Path | list[Path], script: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter with `folder` (or several, the first first) first on PYTHONPATH."""
    folders = folder if isinstance(folder, list) else [folder]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHONPATH"))}
    env.update(
        PYTHONPATH=os.pathsep.join(map(str, folders)), HF_HUB_OFFLINE="1", HF_HOME=str(home), TRANSFORMERS_VERBOSITY="error"
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], env=env, capture_output=True, text=True, timeout=300
    )
