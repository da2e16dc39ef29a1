"""Crash-safe training checkpoints on top of ``accelerator.save_state`` / ``load_state``.

Layout under ``<output_dir>/checkpoints/``::

    step_0000200/                 complete checkpoint (the only kind ``latest_checkpoint`` returns)
        model.safetensors         accelerate: the prepared model (and FSDP / DeepSpeed variants)
        optimizer.bin, scheduler.bin, custom_checkpoint_0.pkl (temperatures), random_states_<rank>.pkl
        data_state_rank<r>.pt     each rank's data stream positions (shuffle buffers, shard offsets)
        trainer_state.json        step, samples seen, image size, world size, config: written last
    step_0000300.tmp/             being written (or left by a crash): never loaded, removed at start

Writing is atomic: every file goes into ``step_XXXXXXX.tmp``, and only once all ranks have finished is
the folder renamed (``os.replace``, atomic on POSIX) to its final name. Old checkpoints are pruned only
after the new one is complete, and are renamed to ``*.tmp`` before deletion, so a crash at any moment
leaves only complete checkpoints under final names. Multi-node runs need ``output_dir`` on a file
system that every node sees (accelerate writes the model from the main process, RNG states per rank).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from jina_clip_v2._io import atomic_write, remove_folder, replace_folder

logger = logging.getLogger(__name__)

__all__ = [
    "TRAINER_STATE",
    "checkpoint_name",
    "clean_incomplete",
    "data_state_file",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]

TRAINER_STATE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def data_state_file(rank: int) -> str:
    return f"data_state_rank{rank}.pt"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_dir() and (entry / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1][1] if checkpoints else None


def clean_incomplete(root: str | os.PathLike) -> list[Path]:
    """Delete what a crash may have left: ``*.tmp`` folders (call on the main process only, while no
    checkpoint is being written)."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.endswith(".tmp"):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(entry)
    if removed:
        logger.info("removed incomplete checkpoint folders: %s", ", ".join(p.name for p in removed))
    return removed


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)


def save_checkpoint(
    accelerator,
    root: str | os.PathLike,
    step: int,
    *,
    data_state: Mapping[str, Any],
    trainer_state: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write a checkpoint of the current step on every rank (a collective: all ranks must call it).

    Args:
        accelerator: the run's ``Accelerator``; ``save_state`` writes the prepared model, optimizer,
            scheduler, registered objects (temperatures) and every rank's RNG states.
        root: the checkpoints folder.
        step: completed optimizer steps.
        data_state: this rank's data stream states (``{"text": ..., "image_text": ...}``).
        trainer_state: JSON-serializable run state (step, samples seen, resolution, config).
        keep_last: keep only the newest ``keep_last`` complete checkpoints (None: keep all).
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    staging = root / (checkpoint_name(step) + ".tmp")
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    rank = accelerator.process_index
    torch.save(dict(data_state), staging / data_state_file(rank))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = dict(trainer_state)
        state.update(step=step, world_size=accelerator.num_processes)
        # Written last: a folder without it is never treated as a checkpoint.
        _write_json(staging / TRAINER_STATE, state)
        replace_folder(staging, final)  # a re-run over the same step swaps: no gap under the final name
        if keep_last is not None and keep_last > 0:
            for _, old in list_checkpoints(root)[:-keep_last]:
                remove_folder(old)  # invisible as a checkpoint before its files start to go
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | os.PathLike) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler, temperatures and RNG states from a checkpoint folder and
    return ``(trainer_state, data_state of this rank)``. Call it after ``accelerator.prepare`` and as
    the last thing before training resumes (anything drawing random numbers after it would break
    bit-exact resumption)."""
    path = Path(path)
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINER_STATE})")
    trainer_state = json.loads(state_file.read_text(encoding="utf-8"))
    saved_world = trainer_state.get("world_size")
    if saved_world is not None and saved_world != accelerator.num_processes:
        raise ValueError(
            f"checkpoint {path} was written by {saved_world} processes but this run has "
            f"{accelerator.num_processes}: the per-rank data positions and RNG states cannot be mapped "
            "(resume with the same number of processes, or start a new run with model.init_from)"
        )
    data_file = path / data_state_file(accelerator.process_index)
    data_state = torch.load(data_file, weights_only=False) if data_file.is_file() else {}
    accelerator.load_state(str(path))
    return trainer_state, data_state
