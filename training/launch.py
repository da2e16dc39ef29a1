"""The run's ``Accelerator``: launch checks, precision, determinism, trackers and DDP settings, and the
reset that lets one process run several stages."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from jina_clip_v2.training.config import StageConfig

__all__ = ["MULTI_CPU_HINT", "build_accelerator", "check_launch_environment", "compute_dtype", "reset_accelerate_state"]

MULTI_CPU_HINT = (
    "`accelerate launch --cpu --num_processes N` starts N processes only through MPI (--mpirun_hostfile); "
    "without it accelerate started ONE process, which would silently train without the other ranks. "
    "For N CPU processes use torchrun through accelerate: `ACCELERATE_USE_CPU=1 accelerate launch "
    "--multi_gpu --num_processes N ...` (or --config_file training/accelerate/cpu_2proc.yaml)."
)


def check_launch_environment(env: Mapping[str, str]) -> None:
    """Refuse the one launch that silently loses processes: ``accelerate launch --cpu --num_processes N``
    (N > 1) without MPI, which accelerate answers with a single process (it sets MASTER_ADDR/PORT for
    N > 1 but expects an MPI launcher to start the ranks)."""
    use_cpu = str(env.get("ACCELERATE_USE_CPU", "")).lower() in ("1", "true", "yes")
    launched_for_many = "MASTER_ADDR" in env and "MASTER_PORT" in env
    has_ranks = any(
        key in env for key in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    )
    if use_cpu and launched_for_many and not has_ranks:
        raise RuntimeError(MULTI_CPU_HINT)


def _on_cpu() -> bool:
    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def build_accelerator(cfg: StageConfig, output_dir: Path, *, cpu: bool | None = None):
    """The ``Accelerator`` of a stage: mixed precision as configured (fp32 on CPU), trackers logging under
    ``output_dir/logs`` (``Accelerator(log_with=...)`` skips the ones that are not installed), DDP told about
    the unused tower of gradient caching's per-group forwards, and the schedule stepped once per optimizer
    step on every process. ``cpu``: force (or forbid) the CPU; default: CPU without CUDA or with
    ``ACCELERATE_USE_CPU``."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    check_launch_environment(os.environ)
    on_cpu = _on_cpu() if cpu is None else cpu
    if cfg.train.cpu_threads:
        torch.set_num_threads(cfg.train.cpu_threads)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    accelerator = Accelerator(
        cpu=on_cpu,
        mixed_precision="no" if on_cpu else cfg.train.mixed_precision,
        log_with=list(cfg.train.log_with) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # Gradient caching encodes text and image chunks in separate forwards: each leaves the other
        # tower unused, which DDP must be told about.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.train.grad_cache.enabled)],
        step_scheduler_with_optimizer=False,
    )
    if on_cpu and cfg.train.mixed_precision != "no":
        from accelerate.logging import get_logger

        get_logger(__name__).warning("running on CPU: mixed precision %s -> no (fp32)", cfg.train.mixed_precision)
    return accelerator


def compute_dtype(accelerator) -> torch.dtype:
    """The dtype the matmuls run in (for the peak FLOP/s of the MFU)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision), torch.float32)


def reset_accelerate_state() -> None:
    """Let one process run several stages (the demo, the tests, the benchmarks): accelerate keeps its state
    in singletons that a second ``Accelerator`` with other settings would otherwise conflict with. The
    process group (if any) stays."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
