"""The built wheel, installed non-editable into a folder of its own: only our namespace (``jina_clip_v2``) at the
top level, ``jina-clip --help`` and every command's ``--help`` work from a folder with its own ``training/`` and
``hub/`` packages, and the stage configs and the demo data resolve from the installed package.

The child processes run with ``python -S``: no site-packages processing, so the editable install of this checkout
(a ``.pth`` meta-path finder) is out of the picture; the third-party libraries come from this interpreter's
site-packages on ``PYTHONPATH``, after the installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from _wheel import build_wheel

from jina_clip_v2.cli import COMMANDS


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("packaging")
    wheel = build_wheel(tmp)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)], check=True)

    work = tmp / "work"  # a user's project: its own training/ and hub/ packages, no configs
    for name in ("training", "hub"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f"raise ImportError('the user project\\'s own {name}/ was imported')\n")
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "JINA_CLIP"))
    } | {
        "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "JINA_CLIP_ASSETS": str(tmp / "assets"),
    }
    return {"site": site, "work": work, "env": env, "script": site / "bin" / "jina-clip", "tmp": tmp}


def _run(installed: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=installed["work"], env=installed["env"], capture_output=True, text=True,
        timeout=300,
    )


def test_wheel_installs_only_our_namespace(installed):
    top = sorted(path.name for path in installed["site"].iterdir())
    assert [name for name in top if name != "bin" and not name.startswith("jina_clip_v2")] == [], top
    assert {"jina_clip_v2", "bin"} <= set(top) and any(name.endswith(".dist-info") for name in top)
    package = installed["site"] / "jina_clip_v2"
    for data in ("training/configs/tiny.yaml", "training/configs/stage3.yaml", "training/accelerate/cpu_2proc.yaml",
                 "data/tuxpaint/captions.jsonl", "data/tuxpaint/splits.json"):
        assert (package / data).is_file(), data
    assert not (package / "tests").exists() and not (package / "notebooks").exists()


def test_console_script_and_every_command_help(installed):
    result = _run(installed, str(installed["script"]), "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(name in result.stdout for name in COMMANDS)
    children = {
        name: subprocess.Popen(
            [sys.executable, "-S", str(installed["script"]), name, "--help"], cwd=installed["work"],
            env=installed["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in COMMANDS
    }
    for name, child in children.items():
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, (name, err[-3000:])
        assert f"usage: jina-clip {name}" in out, (name, out[:500])


def test_stage_configs_and_demo_data_resolve_from_the_installed_package(installed):
    site = str(installed["site"])
    result = _run(installed, str(installed["script"]), "train", "--config", "training/configs/tiny.yaml", "--print-config")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processor_from: assets://xlm-roberta-tokenizer" in result.stdout and "stage: 1" in result.stdout
    # `python -m` puts the working directory (with its training/ and hub/) first on sys.path: still ours.
    result = _run(installed, "-m", "jina_clip_v2.training.stage", "--config", "training/configs/tiny.yaml",
                  "stage=3", "--print-config")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kind: text_triplets" in result.stdout
    probe = (
        "import jina_clip_v2, jina_clip_v2.hub.export\n"
        "from jina_clip_v2.training.config import resolve_path\n"
        "from jina_clip_v2.training.demo_data import DATA_ROOT, load_split\n"
        "print(jina_clip_v2.__file__)\n"
        "print(resolve_path('training/configs/stage1.yaml'))\n"
        "print(resolve_path('assets://xlm-roberta-tokenizer'))\n"
        "print(DATA_ROOT, len(load_split('train')))\n"
    )
    result = _run(installed, "-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]
    package, config, tokenizer, data = result.stdout.splitlines()
    assert package.startswith(site) and config.startswith(site) and data.startswith(site)
    assert int(data.split()[-1]) > 100
    assert tokenizer == str(installed["tmp"] / "assets" / "xlm-roberta-tokenizer")
