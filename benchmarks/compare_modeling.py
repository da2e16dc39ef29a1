"""``encode_text`` of two copies of ``modeling/`` side by side on CPU: this checkout's and a baseline's (e.g. the
start commit's, ``git archive <commit> modeling | tar -x -C <folder>``), same weights, in one process.

    python -m jina_clip_v2.benchmarks.compare_modeling --baseline <folder holding modeling/> [--texts 96] [--rounds 5]
        [--huge-text-chars 20000000] [--out benchmarks/results/compare_modeling.json]

- time: process CPU time (one torch thread, fp32) of ``encode_text`` on long-tailed demo captions with a real-width
  (1024) 2-layer text tower, the two copies interleaved round by round (CPU time, not wall time: this machine is
  shared, and CPU time moves far less with the load of other processes); the largest difference of the embeddings.
- memory (``--huge-text-chars``): the resident peak (``VmHWM`` after ``/proc/self/clear_refs``, Linux) that one
  ``encode_text`` of a text of that many characters adds, with the tiny test model and tokenizer, each copy in a
  fresh subprocess (one that costs gigabytes must not inflate the other's peak).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from jina_clip_v2.benchmarks import common

CURRENT = common.ROOT / "modeling"
# The test tokenizer's 1000 ids (tests/_tiny.py): a real-width text tower (time) and the tiny test model (memory).
WIDE = dict(
    text_config=dict(vocab_size=1000, hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, intermediate_size=4096),
    vision_config=dict(hidden_size=1024, num_hidden_layers=1, num_attention_heads=16, intermediate_size=2730, image_size=56),
    projection_dim=1024,
)
TINY = dict(
    text_config=dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=85, image_size=56),
    projection_dim=32, matryoshka_dimensions=[8, 16, 32],
)


def load_modeling(folder: Path, name: str):
    """The ``modeling`` package in ``folder`` imported under ``name`` (its files import each other relatively)."""
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _test_helpers():
    sys.path.insert(0, str(common.ROOT / "tests"))  # the tiny tokenizer and the demo captions of the test suite
    import _tiny

    return _tiny


def long_tailed_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = " ".join(_test_helpers().caption_corpus()[::7]).split()
    texts = []
    for _ in range(count):
        n = min(int(rng.lognormvariate(2.0, 1.0)) + 1, 300)
        start = rng.randrange(0, len(words) - n)
        texts.append(" ".join(words[start : start + n]))
    return texts


def time_section(baseline: Path, count: int, rounds: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    tiny = _test_helpers()
    tokenizer = tiny.build_tokenizer()
    packages = {"baseline": load_modeling(baseline / "modeling", "baseline_modeling"), "current": load_modeling(CURRENT, "current_modeling")}
    torch.manual_seed(0)
    models = {name: package.JinaCLIPModel(package.JinaCLIPConfig(**WIDE)).eval() for name, package in packages.items()}
    models["baseline"].load_state_dict(models["current"].state_dict())
    for model in models.values():
        model.processor = tiny.build_processor(tokenizer)
    texts = long_tailed_texts(count)
    outputs = {name: model.encode_text(texts) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.process_time()
            model.encode_text(texts)
            times[name].append(time.process_time() - start)
    return {
        "texts": count, "tokens": sum(len(ids) for ids in tokenizer(texts)["input_ids"]),
        "max_abs_diff": float(np.abs(outputs["baseline"] - outputs["current"]).max()),
        "cpu_s": {name: {"median": statistics.median(v), "all": [round(x, 3) for x in v]} for name, v in times.items()},
        "current_over_baseline": [round(c / b, 3) for b, c in zip(times["baseline"], times["current"])],
    }


def peak_of_one_text(folder: Path, chars: int) -> float:
    """MiB added to the resident peak by one encode_text of a `chars`-character text (run in this process)."""
    tiny = _test_helpers()
    package = load_modeling(Path(folder), "measured_modeling")
    model = package.JinaCLIPModel(package.JinaCLIPConfig(**TINY)).eval()
    model.processor = tiny.build_processor(tiny.build_tokenizer())
    text = "word " * (chars // 5)
    model.encode_text(["warm up"])
    peak = lambda: int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))  # noqa: E731
    Path("/proc/self/clear_refs").write_text("5")
    before = peak()
    model.encode_text(text)
    return (peak() - before) / 1024


def memory_section(baseline: Path, chars: int) -> dict:
    out = {"chars": chars}
    for name, folder in (("baseline", baseline / "modeling"), ("current", CURRENT)):
        code = f"from jina_clip_v2.benchmarks.compare_modeling import peak_of_one_text as p; print(p({str(folder)!r}, {chars}))"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[f"{name}_peak_mib"] = round(float(result.stdout.strip().splitlines()[-1]), 1)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a folder holding the baseline's modeling/")
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--huge-text-chars", type=int, default=0, help="also measure the memory of one text this long")
    parser.add_argument("--out", type=Path, default=common.ROOT / "benchmarks" / "results" / "compare_modeling.json")
    args = parser.parse_args(argv)
    result = {"baseline": str(args.baseline), "time": time_section(args.baseline, args.texts, args.rounds)}
    if args.huge_text_chars:
        result["memory"] = memory_section(args.baseline, args.huge_text_chars)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
