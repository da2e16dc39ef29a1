"""The tiny training runs' inputs, for both versions: the small test tokenizer and the bundled demo data written as
training sources, and the command-line overrides that point a tiny stage config at them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

from _tiny import ROOT, build_tokenizer
from _tiny_v1 import build_bert_tokenizer

# The tiny stage configs of each version (one runner, one schema: training/stage.py).
TINY = {"v2": ROOT / "training" / "configs" / "tiny.yaml", "v1": ROOT / "training" / "configs" / "tiny_v1.yaml"}
# Two languages keep the tiny runs quick to learn (the demo trains on 12); English-German translation pairs
# are the text task.
DEMO_LANGS = ["en", "de"]
# The test tokenizers' sizes: the XLM-R-layout one (v2) and the BERT WordPiece one (v1).
VOCAB_SIZES = {"v2": 1000, "v1": 600}


def write_training_assets(root: Path, version: str = "v2") -> dict:
    """The version's small tokenizer (saved before any use: a used fast tokenizer saves its last call's settings)
    and the demo training sources, under `root`."""
    from jina_clip_v2.training.demo_data import demo_sources

    (build_tokenizer() if version == "v2" else build_bert_tokenizer()).save_pretrained(root / "tokenizer")
    demo_sources(root / "demo", "train", DEMO_LANGS)
    return {"tokenizer": root / "tokenizer", "demo": root / "demo", "version": version}


def tiny_overrides(assets: dict, output_dir: Path, *extra: str) -> list[str]:
    """The tiny config of `assets`' version with its small tokenizer and demo data, small batches, no warm-up, no
    logging, no resolution switch, no export (`extra` comes last and wins)."""
    return [
        f"output_dir={output_dir}",
        f"model.processor_from={assets['tokenizer']}",
        f"model.config.text_config.vocab_size={VOCAB_SIZES[assets.get('version', 'v2')]}",
        f"data.demo_dir={assets['demo']}",
        f"data.demo_langs={DEMO_LANGS}",
        "data.text.batch_size=16",
        "data.image_text.batch_size=16",
        "data.text.shuffle_buffer=64",
        "data.image_text.shuffle_buffer=64",
        "optim.warmup_steps=0",
        "train.log_with=[]",
        "train.progress_bar=false",
        "train.resolution_switch=null",
        "train.export=false",
        *extra,
    ]


def run_launch(command: list[str], *, cwd, env: dict, output_dir: Path, timeout: float = 300, attempts: int = 2) -> subprocess.CompletedProcess:
    """An `accelerate launch` of several processes, in a session of its own so that a timeout kills the ranks
    too (killing the launcher alone leaves them running). Twice in CI (2026-12-06/07) a 2-rank CPU run printed its
    summary and then never exited, in a destructor run as the Stage was freed (py-spy). The stage now frees its DDP
    wrapper before destroying the process group (`Stage._release_wrappers`), but 57 launches under load did not hang
    even before that change, so the fix is unproven. As a guard, a run that outlives `timeout` is killed, reported
    as a warning with its stderr, and started again in an emptied `output_dir`, up to `attempts` times."""
    for attempt in range(1, attempts + 1):
        shutil.rmtree(output_dir, ignore_errors=True)
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
            return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            for pid in [*_descendants(process.pid), process.pid]:  # torchrun puts each rank in a group of its own
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stdout, stderr = process.communicate(timeout=60)
            if attempt == attempts:
                raise AssertionError(f"accelerate launch still running after {timeout} s, {attempts} times:\n{stderr[-4000:]}")
            warnings.warn(f"accelerate launch still running after {timeout} s (attempt {attempt}), started again; "
                          f"its stdout ended: {stdout[-300:]!r}; stderr: {stderr[-1500:]!r}")
    raise AssertionError("unreachable")


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux /proc), children first found first."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found
