"""Crash-safe training checkpoints, written and read without pickle.

Layout under ``<output_dir>/checkpoints/``::

    step_0000200/                 complete checkpoint (the only kind ``list_checkpoints`` returns)
        model.safetensors         the bare model's state dict (the export's key names)
        optimizer.safetensors     AdamW's state tensors; its param groups and the layout as JSON in the header
        scheduler.json            the LR schedule's state
        temperatures.safetensors  the learnable temperatures
        rng_state_rank<r>.json    rank r's python / numpy / torch CPU / CUDA generator states
        data_state_rank<r>.json   rank r's data stream positions (``TaskStream.state_dict``)
        trainer_state.json        step, samples seen, image size, world size, first losses, config and the
                                  size of every file above: written last
    step_0000300.tmp/             being written (or left by a crash): never loaded, removed at start

Under FSDP the model and optimizer are each rank's shards instead (``model_rank<r>.safetensors``,
``optimizer_rank<r>.safetensors``), resumable with the same number of processes and wrapping.

Why not ``accelerator.save_state``: it pickles the RNG states (``random_states_<r>.pkl``) and every
registered object (``custom_checkpoint_<i>.pkl``), and ``load_state`` unpickles them; a checkpoint folder
is data that may come from elsewhere (a shared disk, a download), and unpickling it runs whatever code it
names. Here every file is safetensors (tensors and a JSON header) or JSON, and nothing is unpickled.

Writing is atomic: every file goes into ``step_XXXXXXX.tmp``, and only once all ranks have finished is
the folder renamed (``os.replace``, atomic on POSIX) to its final name. Old checkpoints are pruned only
after the new one is complete, and are renamed to ``*.tmp`` before deletion, so a crash at any moment
leaves only complete checkpoints under final names. A checkpoint can still be damaged later (a disk
error, a partial copy): ``verify_checkpoint`` checks every file it must have against the sizes
``trainer_state.json`` recorded and parses them, and ``find_resumable`` picks the newest intact one.
Multi-node runs need ``output_dir`` on a file system that every node sees (each rank writes its files).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jina_clip_v2._io import atomic_write, remove_folder, replace_folder

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "TRAINER_STATE",
    "CheckpointError",
    "checkpoint_name",
    "clean_incomplete",
    "clean_stale",
    "data_state_file",
    "find_resumable",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_trainer_state",
    "required_files",
    "rng_state_file",
    "save_checkpoint",
    "set_aside",
    "verify_checkpoint",
]

FORMAT_VERSION = 2  # 1: accelerate's save_state (pickles), never loaded
TRAINER_STATE = "trainer_state.json"
MODEL, OPTIMIZER, SCHEDULER, TEMPERATURES = "model.safetensors", "optimizer.safetensors", "scheduler.json", "temperatures.safetensors"
_TREE_KEY = "jina_clip_v2.tree"  # the JSON structure of a tensor tree, in a safetensors header
_NAME = re.compile(r"^step_(\d+)$")
_PICKLE_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or resumed (damaged, incomplete, another format or layout)."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def data_state_file(rank: int) -> str:
    return f"data_state_rank{rank}.json"


def rng_state_file(rank: int) -> str:
    return f"rng_state_rank{rank}.json"


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise CheckpointError(
            "checkpoints under DeepSpeed are not supported (its engine keeps the optimizer state and writes "
            "it with pickle); train with DDP or FSDP"
        )
    return accelerator.distributed_type == DistributedType.FSDP


def required_files(world_size: int, sharded: bool = False) -> list[str]:
    """Every file a checkpoint of ``world_size`` processes must hold besides ``trainer_state.json``."""
    files = [SCHEDULER, TEMPERATURES]
    if sharded:
        files += [f"model_rank{r}.safetensors" for r in range(world_size)]
        files += [f"optimizer_rank{r}.safetensors" for r in range(world_size)]
    else:
        files += [MODEL, OPTIMIZER]
    files += [rng_state_file(r) for r in range(world_size)] + [data_state_file(r) for r in range(world_size)]
    return files


# -- listing and verifying --------------------------------------------------------------------------------


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Checkpoints under their final names in ``root`` as (step, path), oldest first (complete as written;
    ``verify_checkpoint`` tells whether one is still intact)."""
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


def _read_trainer_state(path: Path) -> dict:
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a complete checkpoint (no {TRAINER_STATE})") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / TRAINER_STATE} does not parse: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / TRAINER_STATE} is not a JSON object")
    return state


def _check_file(file: Path, size: Any) -> str | None:
    """What is wrong with one file of a checkpoint (None: it has its recorded size and parses)."""
    if not file.is_file():
        return f"{file.name} is missing"
    actual = file.stat().st_size
    if actual != size:
        return f"{file.name} is {actual} bytes, {size} were written (truncated or replaced)"
    try:
        if file.suffix == ".json":
            json.loads(file.read_text(encoding="utf-8"))
        else:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                handle.metadata()
                list(handle.keys())
    except Exception as err:  # noqa: BLE001 - any parse failure means damage
        return f"{file.name} does not parse ({type(err).__name__}: {err})"
    return None


def verify_checkpoint(path: str | os.PathLike) -> list[str]:
    """The problems that keep a checkpoint folder from being resumed (empty: intact). Checks the format
    version, that every file the checkpoint must have (``required_files``) exists with the size
    ``trainer_state.json`` recorded for it, and that each JSON / safetensors file parses. Nothing in
    the folder is loaded as code, whatever it holds."""
    path = Path(path)
    try:
        state = _read_trainer_state(path)
    except CheckpointError as err:
        return [str(err)]
    version = state.get("format")
    if version != FORMAT_VERSION:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        return [
            f"format {version!r} is not {FORMAT_VERSION} (written by an older version with accelerate's pickles "
            f"{pickles}; those are never unpickled: start a new run with model.init_from)"
        ]
    files = state.get("files")
    world = state.get("world_size")
    if not isinstance(files, dict) or not isinstance(world, int) or world < 1:
        return [f"{TRAINER_STATE} lacks its file list or world size"]
    problems = []
    for name in required_files(world, bool(state.get("sharded"))):
        if name not in files:
            problems.append(f"{TRAINER_STATE} lists no {name}")
            continue
        problem = _check_file(path / name, files[name])
        if problem:
            problems.append(problem)
    return problems


def find_resumable(root: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """The newest intact checkpoint under ``root`` and the newer ones skipped, with their problems."""
    skipped = []
    for _, path in reversed(list_checkpoints(root)):
        problems = verify_checkpoint(path)
        if not problems:
            return path, skipped
        skipped.append((path, problems))
    return None, skipped


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a damaged checkpoint to ``<name>.damaged`` (``.damaged.2``, ...): kept for inspection, but no
    longer a checkpoint (``list_checkpoints`` skips it, so ``keep_last`` pruning never keeps it instead
    of an intact one)."""
    path = Path(path)
    target, n = path.with_name(path.name + ".damaged"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged.{n}")
    os.replace(path, target)
    return target


# hub/_util.atomic_folder's staging folders: tmp_export_<pid>_<random> next to the export (output_dir/model).
_EXPORT_STAGING_PREFIX = "tmp_export_"


def clean_stale(output_dir: str | os.PathLike) -> list[Path]:
    """Delete what interrupted writers left in a run's folder, at its start (main process, before anything
    writes there): incomplete checkpoints (``clean_incomplete``), the export's staging folders whose
    process is gone (``_io.remove_stale_staging``; a live one is kept), folders being replaced or deleted
    (``*.old.tmp``) and ``atomic_write``'s temporary files (``.<name>.<random>.tmp``) in the run folder
    and its ``model/``."""
    from jina_clip_v2._io import remove_stale_staging

    output_dir = Path(output_dir)
    removed = clean_incomplete(output_dir / "checkpoints")
    removed += remove_stale_staging(output_dir, _EXPORT_STAGING_PREFIX, "")
    for folder in (output_dir, output_dir / "model"):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.endswith(".old.tmp") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                entry.unlink(missing_ok=True)
            else:
                continue
            removed.append(entry)
    if removed:
        logger.warning("removed what interrupted writes left in %s: %s", output_dir, ", ".join(p.name for p in removed))
    return removed


def clean_incomplete(root: str | os.PathLike) -> list[Path]:
    """Delete what a crash may have left: ``*.tmp`` folders and files (a checkpoint being written, an old
    one being deleted). Call on the main process only, while no checkpoint is being written."""
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


# -- tensor trees: state dicts as safetensors with their structure as JSON --------------------------------


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}.{k}")] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot checkpoint {where} (a {type(value).__name__}) without pickle")


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (key, inner), = value.items()
            if key == "__tensor__":
                return tensors[inner]
            if key == "__tuple__":
                return tuple(_decode(v, tensors) for v in inner)
            if key == "__items__":
                return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def _save_tree(path: Path, tree: Any, what: str) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, tensors, what)
    save_file(tensors, str(path), metadata={_TREE_KEY: json.dumps(structure)})


def _load_tree(path: Path) -> Any:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if _TREE_KEY not in metadata:
        raise CheckpointError(f"{path} holds no {_TREE_KEY} header: not written by this trainer")
    return _decode(json.loads(metadata[_TREE_KEY]), tensors)


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _load_into(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    missing, unexpected = module.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)


# -- random number generators ------------------------------------------------------------------------------


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])
        else:
            logger.warning("checkpoint has CUDA RNG states of %d devices, this machine %d: not restored",
                           len(cuda), torch.cuda.device_count())


# -- saving and loading ---------------------------------------------------------------------------------


def _nonfinite_weights(accelerator, model: torch.nn.Module) -> int:
    """Parameters with a NaN / inf anywhere, summed over the processes (a collective)."""
    flags = [~torch.isfinite(p.detach()).all() for p in model.parameters() if p.numel()]
    bad = torch.stack(flags).sum().to(accelerator.device) if flags else torch.zeros((), device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return int(bad.item())


def save_checkpoint(
    accelerator,
    root: str | os.PathLike,
    step: int,
    *,
    parts,
    data_state: Mapping[str, Any],
    trainer_state: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write a checkpoint of the current step on every rank (a collective: all ranks must call it).

    Args:
        accelerator: the run's ``Accelerator``.
        root: the checkpoints folder.
        step: completed optimizer steps.
        parts: what is restored (a ``TrainStep``): ``model`` (the bare model), ``encoder`` (the prepared
            wrapper), ``optimizer``, ``scheduler``, ``temperatures``.
        data_state: this rank's data stream states (``{"text": ..., "image_text": ...}``), JSON.
        trainer_state: JSON-serializable run state (step, samples seen, resolution, config).
        keep_last: keep only the newest ``keep_last`` complete checkpoints (None: keep all).

    Raises:
        CheckpointError: the model holds NaN / inf weights (nothing is written: the last good checkpoint
            stays the newest), or a rank's file is missing once all have written.
    """
    root = Path(root)
    sharded = _sharded(accelerator)
    bad = _nonfinite_weights(accelerator, parts.encoder if sharded else parts.model)
    if bad:
        raise CheckpointError(f"step {step}: {bad} parameter tensors hold NaN / inf: no checkpoint written")
    final = root / checkpoint_name(step)
    staging = root / (checkpoint_name(step) + ".tmp")
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    if sharded:  # each rank's shards, plain tensors (FSDP with use_orig_params: views of the flat shard)
        _save_tensors(staging / f"model_rank{rank}.safetensors", dict(parts.encoder.named_parameters()))
        _save_tree(staging / f"optimizer_rank{rank}.safetensors", parts.optimizer.state_dict(), "optimizer")
    elif accelerator.is_main_process:
        _save_tensors(staging / MODEL, parts.model.state_dict())
        _save_tree(staging / OPTIMIZER, parts.optimizer.state_dict(), "optimizer")
    if accelerator.is_main_process:
        tensors: dict[str, torch.Tensor] = {}
        schedule = _encode(parts.scheduler.state_dict(), tensors, "scheduler")
        if tensors:
            raise CheckpointError("the LR scheduler's state holds tensors: it is written as JSON only")
        _write_json(staging / SCHEDULER, schedule)
        _save_tensors(staging / TEMPERATURES, parts.temperatures.state_dict())
    _write_json(staging / rng_state_file(rank), _rng_state())
    _write_json(staging / data_state_file(rank), dict(data_state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        world = accelerator.num_processes
        files = {}
        for name in required_files(world, sharded):
            if not (staging / name).is_file():
                raise CheckpointError(
                    f"{staging / name} is missing after every rank wrote (is output_dir on a file system all nodes see?)"
                )
            files[name] = (staging / name).stat().st_size
        state = dict(trainer_state)
        state.update(step=step, world_size=world, format=FORMAT_VERSION, sharded=sharded, files=files)
        # Written last: a folder without it is never treated as a checkpoint.
        _write_json(staging / TRAINER_STATE, state)
        replace_folder(staging, final)  # a re-run over the same step swaps: no gap under the final name
        if keep_last is not None and keep_last > 0:
            for _, old in list_checkpoints(root)[:-keep_last]:
                remove_folder(old)  # invisible as a checkpoint before its files start to go
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: str | os.PathLike) -> dict:
    """``trainer_state.json`` of an intact checkpoint; ``CheckpointError`` naming every problem otherwise."""
    path = Path(path)
    problems = verify_checkpoint(path)
    if problems:
        raise CheckpointError(f"cannot resume from {path}: " + "; ".join(problems))
    return _read_trainer_state(path)


def load_checkpoint(accelerator, path: str | os.PathLike, parts) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler, temperatures and RNG states from a checkpoint folder (verified
    first) into ``parts`` (see ``save_checkpoint``) and return ``(trainer_state, data_state of this
    rank)``. Call it after ``accelerator.prepare`` and as the last thing before training resumes
    (anything drawing random numbers after it would break bit-exact resumption)."""
    path = Path(path)
    trainer_state = read_trainer_state(path)
    saved_world = trainer_state["world_size"]
    if saved_world != accelerator.num_processes:
        raise CheckpointError(
            f"checkpoint {path} was written by {saved_world} processes but this run has "
            f"{accelerator.num_processes}: the per-rank data positions and RNG states cannot be mapped "
            "(resume with the same number of processes, or start a new run with model.init_from)"
        )
    sharded = _sharded(accelerator)
    if sharded != bool(trainer_state.get("sharded")):
        raise CheckpointError(f"checkpoint {path} was written {'with' if not sharded else 'without'} FSDP, this run is not")
    rank = accelerator.process_index
    if sharded:
        from safetensors.torch import load_file

        saved = load_file(str(path / f"model_rank{rank}.safetensors"))
        with torch.no_grad():
            for name, param in parts.encoder.named_parameters():
                if name not in saved or saved[name].shape != param.shape:
                    raise CheckpointError(f"{path}: rank {rank}'s shard of {name} does not fit this run's layout")
                param.copy_(saved[name])
        parts.optimizer.load_state_dict(_load_tree(path / f"optimizer_rank{rank}.safetensors"))
    else:
        _load_into(parts.model, path / MODEL)
        parts.optimizer.load_state_dict(_load_tree(path / OPTIMIZER))
    parts.scheduler.load_state_dict(_decode(json.loads((path / SCHEDULER).read_text(encoding="utf-8")), {}))
    _load_into(parts.temperatures, path / TEMPERATURES)
    data_state = json.loads((path / data_state_file(rank)).read_text(encoding="utf-8"))
    _set_rng_state(json.loads((path / rng_state_file(rank)).read_text(encoding="utf-8")))
    return trainer_state, data_state
