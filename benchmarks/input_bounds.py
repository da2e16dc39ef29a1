"""Peak memory of hostile inputs (issue 20's "bombs"): each case runs in its own process under an address-space cap,
and the result is the peak resident memory the case added (VmHWM after it minus VmRSS before it, Linux), the time
it took, and how it ended (a result, the error it raised, or the signal that killed it).

    python -m jina_clip_v2.benchmarks.input_bounds [--cases NAME ...] [--cap-gib 4] [--out results/x.json]

Cases: images that decode small and resize huge (a 1-pixel-wide PNG at 512 / 224 / 56 px, a 12000 x 12000 lossless
WebP), a processor whose saved size is 100000, config.json files with an absurd image_size / vocab_size / layer
count loaded with `JinaCLIPModel.from_pretrained`, and a training row holding a 64M-character text tokenized by
the training stream; a normal 4000 x 3000 photo is the reference. The cap (default 4 GiB above what the process
holds after its imports) keeps a case that would take 18 GB from taking the machine: such a case ends in a
MemoryError or a kill at the cap, which the table reports as such. Linux only (/proc/self/status, clear_refs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, md_table, tiny_config_kwargs, write_results

CASES = (
    "normal_4000x3000_at_512",
    "png_1x10000_at_512",
    "png_1x10000_at_224",
    "png_1x100000_at_56",
    "webp_12000x12000_at_512",
    "processor_size_100000",
    "config_image_size_100000",
    "config_vocab_size_1e9",
    "config_vocab_size_10e8_int",
    "config_200000_layers",
    "training_text_64M_chars",
)


def _status() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmHWM", "VmRSS", "VmSize")}


def _png(width: int, height: int) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _webp_bomb(cache: Path) -> bytes:
    """A lossless WebP of 12000 x 12000 black pixels (a few dozen bytes); made once, in a separate process."""
    path = cache / "bomb_12000.webp"
    if not path.is_file():
        code = (
            "import sys; from PIL import Image; "
            "Image.new('RGB', (12000, 12000)).save(sys.argv[1], format='WEBP', lossless=True, quality=0, method=0)"
        )
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return path.read_bytes()


def _processor(size: int):
    from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor

    return JinaCLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _config_folder(tmp: Path, edit) -> Path:
    """A folder with a tiny model's weights and a config.json changed by `edit` (a dict of the config)."""
    import torch
    from safetensors.torch import save_file

    from jina_clip_v2.modeling import JinaCLIPConfig

    config = JinaCLIPConfig(**tiny_config_kwargs()).to_dict()
    edit(config)
    folder = tmp / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"logit_scale": torch.zeros(())}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _load_folder(folder: Path):
    from jina_clip_v2.modeling import JinaCLIPModel

    return JinaCLIPModel.from_pretrained(str(folder))


def _training_text(tmp: Path, chars: int):
    """The work of reading two batches of text pairs from a jsonl whose second row holds a `chars`-character text
    (the file is written here, before the measurement)."""
    from jina_clip_v2.assets import default_tokenizer_dir
    from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer
    from jina_clip_v2.training.data import SourceConfig, TaskDataConfig, build_task_stream

    tokenizer = load_tokenizer(default_tokenizer_dir())
    path = tmp / "rows.jsonl"
    with open(path, "w") as handle:
        handle.write(json.dumps({"query": "q0", "document": "d0"}) + "\n")
        handle.write('{"query": "' + "x " * (chars // 2) + '", "document": "d1"}\n')
        for i in range(2, 4):
            handle.write(json.dumps({"query": f"q{i}", "document": f"d{i}"}) + "\n")
    # The row is kept (max_row_chars above it): the text itself is what is bounded here.
    source = SourceConfig(str(path), max_row_chars=2 * chars)
    cfg = TaskDataConfig(kind="text_pairs", sources=[source], batch_size=2, max_length=512, shuffle_buffer=0)
    return lambda: [batch["query"]["input_ids"].shape for batch in build_task_stream(cfg, tokenizer, epochs=1)]


def _prepare(name: str, tmp: Path, cache: Path):
    """(the work of case `name` as a function, a description); inputs are built here, before the measurement."""
    if name == "normal_4000x3000_at_512":
        data = _png(4000, 3000)
        return (lambda: _processor(512)(images=data, return_tensors="np")), "4000 x 3000 PNG (reference photo), 512 px"
    if name.startswith("png_1x"):
        length, size = name.removeprefix("png_1x").split("_at_")
        data = _png(1, int(length))
        return (lambda: _processor(int(size))(images=data, return_tensors="np")), f"1 x {length} PNG ({len(data)} bytes), {size} px"
    if name == "webp_12000x12000_at_512":
        data = _webp_bomb(cache)
        return (lambda: _processor(512)(images=data, return_tensors="np")), f"12000 x 12000 lossless WebP ({len(data)} bytes), 512 px"
    if name == "processor_size_100000":
        data = _png(64, 64)
        return (lambda: _processor(100000)(images=data, return_tensors="np")), "64 x 64 PNG, processor size 100000"
    if name.startswith("config_"):
        edits = {
            "config_image_size_100000": lambda c: c["vision_config"].update(image_size=100000),
            "config_vocab_size_1e9": lambda c: c["text_config"].update(vocab_size=1e9),  # JSON 1e9 is a float
            "config_vocab_size_10e8_int": lambda c: c["text_config"].update(vocab_size=10**9),
            "config_200000_layers": lambda c: c["text_config"].update(num_hidden_layers=200000),
        }
        folder = _config_folder(tmp, edits[name])
        return (lambda: _load_folder(folder)), f"from_pretrained, tiny config with {name.removeprefix('config_')}"
    if name == "training_text_64M_chars":
        return _training_text(tmp, 64 * 2**20), "training stream (real XLM-R tokenizer), a row of 64M characters"
    raise ValueError(f"unknown case {name!r}; known: {', '.join(CASES)}")


def run_child(name: str, cap: int, cache: Path) -> dict:
    """Run one case in this process under the cap; the result as a dict (printed as JSON by `main`)."""
    import jina_clip_v2.modeling  # noqa: F401 - the imports are not the case's memory

    with tempfile.TemporaryDirectory(prefix="input_bounds_") as tmp:
        work, description = _prepare(name, Path(tmp), cache)
        before = _status()
        resource.setrlimit(resource.RLIMIT_AS, (before["VmSize"] + cap, resource.RLIM_INFINITY))
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        before = _status()
        started = time.perf_counter()
        try:
            work()
            outcome = "ok"
        except BaseException as err:  # noqa: BLE001 - the outcome is what we record
            outcome = f"{type(err).__name__}: {str(err)[:300]}"
        seconds = time.perf_counter() - started
        after = _status()
    return {"case": name, "input": description, "peak_added_bytes": after["VmHWM"] - before["VmRSS"], "seconds": seconds,
            "outcome": outcome}


def run_case(name: str, cap: int, cache: Path, timeout: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "jina_clip_v2.benchmarks.input_bounds", "--child", name, "--cap-bytes", str(cap), "--cache", str(cache)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"case": name, "peak_added_bytes": None, "seconds": timeout, "outcome": f"still running after {timeout:g} s (killed)"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    cause = f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"case": name, "peak_added_bytes": None, "seconds": time.perf_counter() - started,
            "outcome": f"{cause} at the {cap / 2**30:g} GiB cap: {proc.stderr.strip().splitlines()[-1:] or ''}"}


def markdown(result: dict) -> str:
    rows = [
        [r["case"], r.get("input", ""), "-" if r["peak_added_bytes"] is None else f"{r['peak_added_bytes'] / 2**20:.1f} MiB",
         f"{r['seconds']:.2f}", " ".join(r["outcome"].replace("|", "/").split())[:160]]
        for r in result["cases"]
    ]
    head = f"# Hostile inputs: peak memory (cap {result['cap_gib']:g} GiB, {result['host']})\n\n"
    return head + md_table(["case", "input", "peak added", "seconds", "outcome"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--cap-gib", type=float, default=4.0, help="address space a case may add (GiB)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a case may run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "input_bounds.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cap-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "jina_clip_input_bounds")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(run_child(args.child, args.cap_bytes, args.cache)))
        return 0
    import platform

    cap = int(args.cap_gib * 2**30)
    cases = []
    for name in args.cases:
        cases.append(run_case(name, cap, args.cache, args.timeout))
        print(json.dumps(cases[-1]), flush=True)
    result = {"benchmark": "input_bounds", "cap_gib": args.cap_gib, "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "cases": cases}
    write_results(result, markdown(result), args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
