"""``jina-clip embed`` on CPU (issue 24): items/s at 1 and 2 workers, and peak memory as the corpus grows.

Every run is the command itself in a fresh process (``python -m jina_clip_v2.cli embed ...``), so the numbers
include what a user waits for in the loop (reading, decoding, tokenizing, embedding, writing shards). items/s are
over the embedding loop as the command's summary reports it (model loaded; for Ray, from the pipeline's start: the
actors' start-up included); the table also gives the whole call and the command's wall time (imports included).
The peak RSS is the kernel's (``wait4``) for the one process of the local engine.

- throughput: the 498 demo images (8 times over) and 50k short multilingual texts with 1 worker (one process, one
  thread) and 2 workers (``accelerate launch`` with 2 processes; ``--engine ray`` with 2 actors), each worker one
  CPU thread;
- memory: 10k vs 100k short texts in one process: streaming input and shard-by-shard output keep the peak the same
  (target: within 10%).

    python -m jina_clip_v2.benchmarks.embed_corpus                   # the demo's tiny model (untrained), ~10-20 min
    python -m jina_clip_v2.benchmarks.embed_corpus --model FOLDER    # any model folder
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from jina_clip_v2.benchmarks import common

DATA = Path(__file__).resolve().parent.parent / "data" / "tuxpaint"


def write_texts(path: Path, count: int) -> Path:
    """``count`` short texts (the demo captions in all their languages, repeated with a number)."""
    captions = [caption for line in (DATA / "captions.jsonl").read_text(encoding="utf-8").splitlines()
                for caption in json.loads(line)["captions"].values()]
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            handle.write(json.dumps({"text": f"{captions[index % len(captions)]} {index // len(captions)}"}, ensure_ascii=False) + "\n")
    return path


def write_images(path: Path, repeats: int) -> Path:
    """The 498 demo images (absolute paths), ``repeats`` times over."""
    records = [json.loads(line) for line in (DATA / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(repeats):
            for record in records:
                handle.write(json.dumps({"image": str(DATA / record["image"]), "category": record["category"]}) + "\n")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], env: dict[str, str]) -> tuple[list[dict], int]:
    """Run ``python <command>``: the JSON summaries it prints and its peak RSS in bytes (the kernel's, ``wait4``)."""
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen([sys.executable, *command], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"embed failed ({process.returncode}): {stderr.read()[-3000:]}")
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")], usage.ru_maxrss * 1024


def run_embed(args: list[str], *, engine: str = "local", processes: int = 1, ray_workers: int = 1) -> dict[str, Any]:
    """One ``jina-clip embed`` command in a fresh process (one CPU thread per worker): rows, items/s, peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    command = ["-m", "jina_clip_v2.cli", "embed", *args, "--no-progress", "--json"]
    if engine == "ray":
        command += ["--engine", "ray", "--workers", str(ray_workers), "--cpus-per-worker", "1"]
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        command = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *command]
    started = time.perf_counter()
    summaries, peak = _run(command, env)
    rows = sum(s["rows_embedded"] + s["rows_failed"] for s in summaries)
    seconds = max(s["embed_seconds"] for s in summaries)  # the embedding loop (all processes: the slowest)
    return {
        "engine": "accelerate" if processes > 1 else engine,
        "workers": processes if processes > 1 else (ray_workers if engine == "ray" else 1),
        "rows": rows,
        "embed_seconds": seconds,
        "items_per_s": rows / seconds,
        # after each process's first shard (Ray: its actors are up), summed over the processes
        "steady_items_per_s": sum(s["steady_items_per_s"] or 0 for s in summaries) or None,
        "total_seconds": max(s["seconds"] for s in summaries),
        "command_wall_s": round(time.perf_counter() - started, 2),
        # one process holds everything only in the local engine (the launcher's or Ray driver's RSS says little)
        "peak_rss_bytes": peak if processes == 1 and engine == "local" else None,
    }


def demo_model(folder: Path) -> Path:
    """The model ``jina-clip demo`` starts from (training/configs/tiny.yaml, the real XLM-R tokenizer), untrained."""
    from jina_clip_v2.training.demo import build_initial_model

    build_initial_model(folder, seed=0)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default: jina-clip demo's initial tiny model)")
    parser.add_argument("--texts", type=int, default=50_000, help="short texts for the throughput runs")
    parser.add_argument("--image-repeats", type=int, default=8, help="the 498 demo images, this many times over")
    parser.add_argument("--memory-texts", type=int, nargs=2, default=[10_000, 100_000], help="the two corpus sizes")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", default=common.results_path("issue24_embed_cpu", False))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = args.model or demo_model(work / "model")
        model_args = ["--model", str(model)]
        images_file = write_images(work / "images.jsonl", args.image_repeats)
        images = ["--image-column", "image", "--keep", "category", "--shard-size", "250", str(images_file)]
        texts_file = write_texts(work / "texts.jsonl", args.texts)
        texts = ["--shard-size", "2000", str(texts_file)]
        throughput = []
        variants = [("local", 1, 1), ("accelerate", 2, 1)] + ([] if args.skip_ray else [("ray", 1, 1), ("ray", 1, 2)])
        for kind, inputs in (("images", images), ("texts", texts)):
            for engine, processes, ray_workers in variants:
                out = work / f"out-{kind}-{engine}-{processes}-{ray_workers}"
                run = run_embed([*inputs, *model_args, "--out", str(out)], engine="ray" if engine == "ray" else "local",
                                processes=processes, ray_workers=ray_workers)
                throughput.append({"input": kind, **run})
                print(f"{kind:6s} {run['engine']:10s} workers={run['workers']}: {run['items_per_s']:.1f} items/s, "
                      f"{run['steady_items_per_s'] or 0:.1f} after the first shard ({run['rows']} rows, {run['embed_seconds']:.1f} s)", flush=True)
        memory = []
        for count in args.memory_texts:
            source = write_texts(work / f"memory-{count}.jsonl", count)
            run = run_embed([str(source), *model_args, "--out", str(work / f"memory-{count}")])
            memory.append({"texts": count, **run})
            print(f"memory {count} texts: peak RSS {run['peak_rss_bytes'] / 2**20:.0f} MiB, {run['items_per_s']:.0f} items/s", flush=True)

    ratio = memory[-1]["peak_rss_bytes"] / memory[0]["peak_rss_bytes"]
    result = common.header({
        "benchmark": "embed_corpus",
        "env": common.env_info(torch.device("cpu")),
        "settings": {"model": str(args.model) if args.model else "jina-clip demo's initial tiny model (64 wide, untrained)",
                     "texts": args.texts, "images": 498 * args.image_repeats, "load_average_at_end": os.getloadavg(), "memory_texts": args.memory_texts, "threads_per_worker": 1,
                     "default_shard_size": 10_000},
        "throughput": throughput,
        "memory": memory,
        "targets": [common.target(
            "flat memory", f"peak RSS at {args.memory_texts[1]} texts / at {args.memory_texts[0]} texts", 1.10, ratio,
            higher_is_better=False, unit="x",
        )],
    })
    rows = [(t["input"], t["engine"], t["workers"], t["rows"], f"{t['items_per_s']:.1f}", f"{t['steady_items_per_s'] or 0:.1f}",
             f"{t['embed_seconds']:.1f}", f"{t['total_seconds']:.1f}", f"{t['command_wall_s']:.1f}") for t in throughput]
    markdown = "\n\n".join([
        "# jina-clip embed on CPU (issue 24)",
        f"- {result['env']['device_name']}, torch {result['env']['torch']}, git {str(result['env']['git_commit'])[:12]}, "
        f"{result['created']}; load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine)",
        "## Throughput (each worker one CPU thread)",
        common.md_table(["input", "engine", "workers", "rows", "items/s (loop)", "items/s after the first shard",
                         "embedding loop s", "embed_corpus s", "command wall s"], rows),
        "## Memory as the corpus grows (one process)",
        common.md_table(["texts", "peak RSS", "items/s"], [(m["texts"], common.fmt_bytes(m["peak_rss_bytes"]), f"{m['items_per_s']:.0f}") for m in memory]),
        common.md_targets(result["targets"]),
    ]) + "\n"
    common.publish(result, markdown, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
