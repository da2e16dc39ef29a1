"""``embed_corpus``: a whole input embedded into Parquet shards, resumable, on one of three engines.

- ``local`` (default): this process, one device: shards one after the other through ``ShardEmbedder``
  (``encode_image``'s thread pool, ``encode_text``'s token-budget batches).
- the same command under ``accelerate launch`` (``WORLD_SIZE`` > 1): every process reads the input and embeds the
  shards ``k`` with ``k % world_size == rank`` on its own device; the last process to finish writes the manifest.
- ``ray``: Ray Data (``corpus/ray_engine.py``): one read task, a pool of model actors (one per GPU or per CPU
  slot), the shards written here.

Every engine embeds shard ``k`` from the same rows with the same code and writes it with the same writer, so the
output files are the same (rows in input order, i.e. by ``id``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from queue import Full, Queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .embedder import EmbedOptions, ShardEmbedder, embedding_columns, load_model, resolve_model
from .shards import Columns, ShardReader, choose_columns
from .sources import Source, open_source
from .store import EmbeddingStore

__all__ = ["DEFAULT_SHARD_SIZE", "EmbedJob", "embed_corpus"]

DEFAULT_SHARD_SIZE = 10_000
ENGINES = ("local", "ray")


@dataclass
class EmbedJob:
    """Everything a run needs, in a form every engine (and every Ray worker) can rebuild its parts from."""

    source_args: dict[str, Any]
    columns: Columns
    options: EmbedOptions
    model: str  # as given: a folder or a Hub id
    model_folder: str  # where this machine loads it from
    model_revision: str  # Hub commit, or sha256 of a local folder's weights
    hub_revision: str | None  # the commit a Ray worker downloads (None: a local folder)
    model_dtype: str = "float32"
    shard_size: int = DEFAULT_SHARD_SIZE
    image_root: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    dims: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def reader(self, source: Source | None = None) -> ShardReader:
        root = Path(self.image_root) if self.image_root else None
        return ShardReader(source or open_source(**self.source_args), self.columns, self.shard_size, root)

    def embedder(self, model, on_items: Callable[[int], None] | None = None) -> ShardEmbedder:
        return ShardEmbedder(
            model, self.columns, self.options, batch_size=self.batch_size, num_workers=self.num_workers, on_items=on_items
        )


@dataclass
class ProcessContext:
    rank: int = 0
    world_size: int = 1
    device: str | None = None
    barrier: Callable[[], None] = lambda: None


def process_context(device: str | None) -> ProcessContext:
    """This process's place in an ``accelerate launch`` (torchrun) run, or a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessContext(device=device)
    import torch
    from accelerate import PartialState

    # As training/launch.py decides: the CPU without CUDA or when ACCELERATE_USE_CPU says so (PartialState() alone
    # would then set up no process group at all and every process would embed every shard).
    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available() or (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    state = PartialState(cpu=cpu)
    return ProcessContext(state.process_index, state.num_processes, device or str(state.device), state.wait_for_everyone)


def _check_model_options(model, options: EmbedOptions) -> None:
    """``task`` and ``truncate_dim`` checked by the model itself (its one policy), before any work."""
    model.encode_text(["check"], task=options.task, truncate_dim=options.truncate_dim, show_progress_bar=False)


def _progress(total: int | None, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", desc="Embedding", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def _read_ahead(shards: Iterator) -> Iterator:
    """``shards`` read one ahead in a thread, so that reading and parsing the next shard overlaps embedding this one
    (as Ray's read task does). Errors of the reader are raised here; the thread ends when the consumer stops."""
    queue: Queue = Queue(maxsize=1)
    done = object()
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def read() -> None:
        try:
            for item in shards:
                if not offer(item):
                    return
            offer(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            offer(err)

    thread = threading.Thread(target=read, name="jina-clip-embed-reader", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _run_local(job: EmbedJob, source: Source, store: EmbeddingStore, done: set[int], context: ProcessContext, progress: bool):
    model = load_model(job.model_folder, dtype=job.model_dtype, device=context.device)
    _check_model_options(model, job.options)
    reader = job.reader(source)
    expected = source.num_rows
    total = None if not expected else max(0, expected - len(done) * job.shard_size) // context.world_size
    stats = {"shards_written": 0, "rows_embedded": 0, "rows_failed": 0}
    started = time.perf_counter()
    with _progress(total, progress and context.rank == 0) as bar:
        embedder = job.embedder(model, on_items=bar.update)
        mine = lambda index: index % context.world_size == context.rank and index not in done  # noqa: E731
        for _, shard in _read_ahead(reader.read(mine)):
            if shard is None:
                continue
            output = embedder(shard)
            store.write(output)
            count_shard(stats, output, started)
    stats["embed_seconds"] = time.perf_counter() - started
    return reader.num_rows, reader.num_shards, stats


def count_shard(stats: dict[str, Any], output, started: float) -> None:
    """A written shard in the run's counts; the first one's time and rows too (the steady rate is measured after it:
    a pipeline's start-up, Ray's actors above all, is not throughput)."""
    stats["shards_written"] += 1
    stats["rows_embedded"] += output.table.num_rows
    stats["rows_failed"] += len(output.errors)
    if stats["shards_written"] == 1:
        stats["first_shard_seconds"] = time.perf_counter() - started
        stats["first_shard_rows"] = output.num_rows


def embed_corpus(
    input: str | os.PathLike,
    out: str | os.PathLike,
    model: str | os.PathLike,
    *,
    text_column: str | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
    keep: Sequence[str] | None = None,
    input_kind: str = "auto",
    split: str | None = None,
    subset: str | None = None,
    dataset_revision: str | None = None,
    image_root: str | os.PathLike | None = None,
    task: str | None = None,
    truncate_dim: int | None = None,
    dtype: str = "float32",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int | None = None,
    num_workers: int | None = None,
    revision: str | None = None,
    model_dtype: str = "float32",
    device: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every row of ``input`` into Parquet shards in ``out`` (see ``jina-clip embed --help`` for the
    arguments); returns the run's summary. A rerun with the same settings continues where a killed run stopped."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; one of {list(ENGINES)}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    started = time.perf_counter()
    source_args = {"location": os.fspath(input), "kind": input_kind, "split": split, "subset": subset, "revision": dataset_revision}
    source = open_source(**source_args)
    source_args.update(kind=source.kind, location=source.location)  # absolute: workers elsewhere read the same
    columns = choose_columns(source, text_column, image_column, id_column, keep)
    options = EmbedOptions(task=task, truncate_dim=truncate_dim, dtype=dtype)
    model_folder, model_revision = resolve_model(model, revision)
    local_model = Path(os.fspath(model)).is_dir()
    model = os.path.abspath(model) if local_model else os.fspath(model)  # recorded as given for Hub ids
    from jina_clip_v2.modeling import JinaCLIPConfig

    dims = truncate_dim or JinaCLIPConfig.from_pretrained(model_folder).projection_dim
    root = os.path.abspath(image_root) if image_root is not None else None
    settings = {
        "model": model,
        "revision": model_revision,
        "input": {**source.describe(), **({"image_root": root} if root else {})},
        "columns": columns.to_json(),
        "task": task,
        "truncate_dim": truncate_dim,
        "dims": dims,
        "dtype": dtype,
        "model_dtype": model_dtype,
        "shard_size": shard_size,
    }
    job = EmbedJob(
        source_args, columns, options, model, model_folder, model_revision,
        None if local_model else model_revision, model_dtype, shard_size, root, batch_size,
        num_workers, dims, settings,
    )
    context = process_context(device)
    store = EmbeddingStore(out)
    if context.rank == 0:
        done = store.open(settings, overwrite=overwrite)
    context.barrier()  # the others start once the folder is checked (and emptied, with --overwrite)
    if context.rank != 0:
        done = store.done()
    if engine == "ray":
        if context.world_size > 1:
            raise ValueError("--engine ray starts its own workers: run it as one process, not under accelerate launch")
        from .ray_engine import run_ray

        num_rows, num_shards, stats = run_ray(
            job, store, done, address=ray_address, workers=workers, cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker, progress=progress, expected_rows=source.num_rows,
        )
    else:
        num_rows, num_shards, stats = _run_local(job, source, store, done, context, progress)
    from jina_clip_v2 import __version__

    extra = {
        "model": settings["model"],
        "revision": model_revision,
        "dims": dims,
        "normalized": True,
        "normalization": "truncated to dims, then L2-normalised (encode_text / encode_image)",
        "dtype": dtype,
        "task": task,
        "id_column": columns.id,
        "embedding_columns": embedding_columns(columns),
        "package_version": __version__,
    }
    manifest = store.finish(settings, num_rows, num_shards, extra)
    seconds = time.perf_counter() - started
    rows_done = stats["rows_embedded"] + stats["rows_failed"]
    after_first = stats["embed_seconds"] - stats.get("first_shard_seconds", stats["embed_seconds"])
    summary = {
        "out": str(store.folder),
        "engine": engine,
        "process": f"{context.rank + 1}/{context.world_size}",
        "complete": manifest is not None,
        "input_rows": num_rows,
        "shards": num_shards,
        "shards_already_done": len(done),
        **stats,
        "seconds": round(seconds, 2),
        # the embedding loop's rate (the model loaded; Ray: its actors' start-up included)
        "embed_seconds": round(stats["embed_seconds"], 2),
        "items_per_s": round(rows_done / stats["embed_seconds"], 2) if rows_done and stats["embed_seconds"] > 0 else None,
        "steady_items_per_s": round((rows_done - stats["first_shard_rows"]) / after_first, 2) if after_first > 0 else None,
        "totals": manifest["counts"] if manifest else None,
    }
    return summary


def print_summary(summary: dict[str, Any], file=None) -> None:
    file = file or sys.stderr
    totals = summary["totals"]
    lines = [
        f"embedded {summary['rows_embedded']} rows, {summary['rows_failed']} errors, in {summary['shards_written']} "
        f"shards ({summary['shards_already_done']} already done) in {summary['seconds']:.1f} s: "
        f"{summary['items_per_s'] or 0:.1f} items/s [{summary['engine']}, process {summary['process']}]",
    ]
    if totals:
        lines.append(
            f"{summary['out']}: complete, {totals['rows']} rows -> {totals['embedded']} embeddings in {totals['shards']} "
            f"shards, {totals['errors']} errors" + (" (see errors.jsonl)" if totals["errors"] else "")
        )
    else:
        lines.append(f"{summary['out']}: not complete yet (other processes still at work, or rerun to finish)")
    print("\n".join(lines), file=file, flush=True)
