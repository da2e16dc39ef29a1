"""The package as users install it: a wheel built from the checkout's tracked and new (not ignored) files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from _tiny import ROOT


def build_wheel(tmp: Path) -> Path:
    """Build the wheel from a copy of the checkout (setuptools' build/ and egg-info stay out of the repository)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    source = tmp / "source"
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True)
    (wheel,) = wheels.glob("jina_clip_v2-*.whl")
    return wheel
