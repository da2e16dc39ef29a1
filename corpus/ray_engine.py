"""``jina-clip embed --engine ray``: the same shards on Ray Data, for a cluster (or all the GPUs of a machine).

The pipeline is Ray Data's: read -> ``map_batches`` with a pool of model actors -> write.

- **read**: one task streams the input through the same ``ShardReader`` as the other engines and yields the
  shards still to do, one per row (a shard is one unit: Ray may regroup rows into blocks, but never splits a
  shard, so each shard is embedded in one call as in the other engines);
- **embed**: ``map_batches`` over an actor pool (``ActorPoolStrategy``): each actor loads the model once, on
  its GPU (``num_gpus=1``) or with its CPU slot's threads, and runs ``ShardEmbedder`` on one shard at a time;
- **write**: the driver takes each embedded shard as it arrives and writes it with the one atomic writer
  (``EmbeddingStore.write``), so finished shards survive a failure and a rerun skips them. (Ray's own
  ``write_parquet`` names files per run and writes them in place: neither resumable nor atomic.)

The output folder needs to be reachable from the driver only; inputs (paths) and the model (a folder on shared
storage, or a Hub id each node downloads at the recorded commit) from every worker.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .embedder import load_model, resolve_model
from .store import EmbeddingStore

__all__ = ["run_ray"]

_END = -1  # the read task's last row: the input's row and shard counts


def _read_shards(batch: dict[str, np.ndarray], job, done: frozenset[int]):
    """Ray Data's read step (a generator UDF): the shards not done yet, one row each, then the counts."""
    reader = job.reader()
    for index, shard in reader.read(lambda k: k not in done):
        if shard is not None:
            yield {"index": np.array([index]), "payload": np.array([shard], dtype=object)}
    counts = {"num_rows": reader.num_rows, "num_shards": reader.num_shards}
    yield {"index": np.array([_END]), "payload": np.array([counts], dtype=object)}


class ShardActor:
    """A model in a Ray actor: embeds the shards of the batches it is given (the counts row passes through)."""

    def __init__(self, job, threads: int | None, device: str | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        folder = job.model_folder if job.hub_revision is None else resolve_model(job.model, job.hub_revision)[0]
        self.embedder = job.embedder(load_model(folder, dtype=job.model_dtype, device=device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = [payload if index == _END else self.embedder(payload) for index, payload in zip(batch["index"], batch["payload"])]
        out = np.empty(len(payloads), dtype=object)
        out[:] = payloads
        return {"index": batch["index"], "payload": out}


def _start(address: str | None) -> bool:
    """Connect to (or start) a Ray cluster unless this process already did; True when started here."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, configure_logging=False)
    return True


def run_ray(
    job,
    store: EmbeddingStore,
    done: set[int],
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    progress: bool = True,
    expected_rows: int | None = None,
) -> tuple[int, int, dict[str, Any]]:
    """Embed the shards not in ``done`` on Ray; returns (input rows, shards, this run's counts)."""
    import ray
    import ray.data

    from .run import _progress, count_shard

    started_here = _start(address)
    try:
        resources = ray.cluster_resources()
        if gpus_per_worker is None:
            gpus_per_worker = 1 if resources.get("GPU", 0) >= 1 else 0
        if cpus_per_worker is None:
            cpus_per_worker = 1
        if workers is None:
            slots = resources.get("GPU", 0) / gpus_per_worker if gpus_per_worker else resources.get("CPU", 1) / cpus_per_worker
            workers = max(1, int(slots))
        threads = None if gpus_per_worker else max(1, int(cpus_per_worker))
        device = None if gpus_per_worker else "cpu"

        context = ray.data.DataContext.get_current()
        saved = context.target_max_block_size, context.enable_progress_bars
        # One shard per block: the actor pool hands blocks to actors, so each shard can go to a different one.
        context.target_max_block_size, context.enable_progress_bars = 1, False
        try:
            dataset = ray.data.from_items([{"read": 0}]).map_batches(
                _read_shards, fn_kwargs={"job": job, "done": frozenset(done)}, batch_size=1, num_cpus=0,
            )
            dataset = dataset.map_batches(
                ShardActor, fn_constructor_kwargs={"job": job, "threads": threads, "device": device}, batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
            )
            stats = {"shards_written": 0, "rows_embedded": 0, "rows_failed": 0, "ray_workers": workers}
            started = time.perf_counter()
            counts = None
            total = None if expected_rows is None else max(0, expected_rows - len(done) * job.shard_size)
            with _progress(total, progress) as bar:
                for row in dataset.iter_rows():
                    payload = row["payload"]
                    if row["index"] == _END:
                        counts = payload
                        continue
                    store.write(payload)
                    count_shard(stats, payload, started)
                    bar.update(payload.num_rows)
            stats["embed_seconds"] = time.perf_counter() - started
        finally:
            context.target_max_block_size, context.enable_progress_bars = saved
    finally:
        if started_here:
            ray.shutdown()
    if counts is None:
        raise RuntimeError("the Ray read step ended without its counts row")
    return counts["num_rows"], counts["num_shards"], stats
