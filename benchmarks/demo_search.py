"""Multilingual text -> image search on the bundled demo data, through ``jina-clip embed`` -> ``index`` -> ``search``.

Embeds the 498 demo images (``data/tuxpaint``) with a model, indexes them, and asks the index with held-out
captions: how often is the captioned image among the top 5 hits?

- ``held-out languages``: every caption in the 8 languages ``jina-clip demo`` never trains on (Catalan, Czech,
  Danish, Dutch, Polish, Swedish, Turkish, Ukrainian), for all 498 images;
- ``held-out images``: the captions in the training languages of the 90 test images (never seen in training);
- for context, ``seen captions``: the training languages' captions of the 408 training images (pairs the demo
  trained on: not held out).

Each with the query instruction (``task="retrieval.query"``, the search default) and without (``--no-instruction``:
the demo trains without it). Chance is 5 / 498 = 1.0 %.

    python -m jina_clip_v2.benchmarks.demo_search --model outputs/demo/stage3/model --out benchmarks/results/issue24_demo_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from jina_clip_v2._io import atomic_write

DATA = Path(__file__).resolve().parent.parent / "data" / "tuxpaint"  # package data, installed too
TOP_K = 5
# training/demo.py's held-out languages and training/demo_data.py's training languages (repeated here so that the
# benchmark needs no training extra; tests/test_corpus_search.py checks they agree).
HELDOUT_LANGS = ("ca", "cs", "da", "nl", "pl", "sv", "tr", "uk")
TRAIN_LANGS = ("en", "de", "fr", "es", "it", "pt-br", "ru", "ja", "zh-cn", "ko", "ar", "hi")


def query_sets(train_langs=TRAIN_LANGS, heldout_langs=HELDOUT_LANGS) -> dict[str, list[tuple[str, str]]]:
    """name -> [(caption, id of the captioned image)]."""
    records = [json.loads(line) for line in (DATA / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    test = set(json.loads((DATA / "splits.json").read_text(encoding="utf-8"))["test"])
    return {
        "held-out languages": [(r["captions"][l], r["id"]) for r in records for l in heldout_langs if l in r["captions"]],
        "held-out images": [(r["captions"][l], r["id"]) for r in records if r["id"] in test for l in train_langs if l in r["captions"]],
        "seen captions": [(r["captions"][l], r["id"]) for r in records if r["id"] not in test for l in train_langs if l in r["captions"]],
    }


def measure(model: str | os.PathLike, work: str | os.PathLike, *, train_langs=TRAIN_LANGS, model_object=None) -> dict[str, Any]:
    """Embed, index and search the demo data with ``model``; the rates (in %) per query set and instruction."""
    from jina_clip_v2.corpus.index import build_index
    from jina_clip_v2.corpus.run import embed_corpus
    from jina_clip_v2.corpus.search import SearchIndex

    work = Path(work)
    started = time.perf_counter()
    embed_corpus(DATA / "captions.jsonl", work / "embeddings", model, image_column="image", id_column="id",
                 keep=["category"], progress=False, overwrite=True)
    build_index(work / "embeddings", work / "index", overwrite=True)
    index = SearchIndex(work / "index", model=model_object)
    results: dict[str, Any] = {"images": index.info["rows"], "top_k": TOP_K, "chance_percent": 100 * TOP_K / index.info["rows"]}
    for name, queries in query_sets(train_langs).items():
        captions = [caption for caption, _ in queries]
        for label, task in (("with instruction", "retrieval.query"), ("without instruction", None)):
            hits = index.search(captions, k=TOP_K, task=task)
            found = [owner in {hit["id"] for hit in top} for (_, owner), top in zip(queries, hits)]
            results[f"{name}, {label}"] = {"queries": len(queries), "top5_percent": 100 * float(np.mean(found))}
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder (e.g. jina-clip demo's outputs/demo/stage3/model)")
    parser.add_argument("--out", type=Path, help="JSON result file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as work:
        results = {"model": str(args.model), **measure(args.model, work)}
    for key, value in results.items():
        print(f"{key}: {value}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.out) as handle:
            handle.write(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
