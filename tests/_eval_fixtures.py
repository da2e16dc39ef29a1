"""Small local datasets in every layout `evaluation/` reads, built from the repository's Tux Paint
stamps (real photos with human-written multilingual captions), plus a tiny saved model folder.

Layouts (each a folder `datasets.load_dataset` reads like the Hub dataset it imitates):
- `flickr_like`: one row per image, `image` (datasets.Image, bytes inside the parquet), `caption` = list of
  5 captions, `img_id`; `data/test-00000-of-00001.parquet` (the nlphuji Flickr30K / COCO layout).
- `xm3600_like`: one split per language (`data/<lang>-00000-of-00001.parquet`), `image` as a raw
  `{bytes, path}` struct, `image_id`, `captions` (list) -- the mteb/xm3600 layout.
- `per_caption`: one row per caption with `image_id`, `image`, `caption` (string), split `test`.
- `vidore_beir`: configs queries / corpus / qrels declared in a README (the mteb/*_beir layout).
- `vidore_pairs`: one row per (query, page) pair, `query` (None for pages without a query),
  `image`, `image_filename` (the original vidore/*_test_subsampled layout).
- `mteb_retrieval`: configs corpus / queries / default(qrels) (the mteb/scifact layout).
- `mteb_sts`: split test with sentence1 / sentence2 / score (the mteb/stsbenchmark-sts layout).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from _tiny import ROOT, build_processor, build_tokenizer, tiny_model

TUX = ROOT / "data" / "tuxpaint"


def tux_records(split: str = "test", n: int | None = None, languages=("en", "de", "fr", "es", "it")) -> list[dict]:
    """Tux Paint stamps of one split that have a caption in every language asked for."""
    ids = set(json.loads((TUX / "splits.json").read_text())[split])
    out = []
    with open(TUX / "captions.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["id"] in ids and all(lang in record["captions"] for lang in languages):
                out.append(record)
    return out[:n] if n is not None else out


def image_bytes(record: dict) -> bytes:
    return (TUX / record["image"]).read_bytes()


def _image_features():
    from datasets import Features, Image, Sequence, Value

    return Features, Image, Sequence, Value


def _readme(folder: Path, configs: dict[str, dict[str, str]]) -> None:
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in splits.items():
            lines += [f"  - split: {split}", f"    path: {path}"]
    (folder / "README.md").write_text("\n".join(lines + ["---", ""]), encoding="utf-8")


def write_flickr_like(folder: Path, n_images: int = 12) -> Path:
    from datasets import Dataset, Features, Image, Sequence, Value

    records = tux_records(n=n_images)
    ds = Dataset.from_dict(
        {
            "image": [{"bytes": image_bytes(r), "path": None} for r in records],
            "caption": [[r["captions"][lang] for lang in ("en", "de", "fr", "es", "it")] for r in records],
            "img_id": [r["id"] for r in records],
        },
        features=Features({"image": Image(), "caption": Sequence(Value("string")), "img_id": Value("string")}),
    )
    (folder / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return folder


def write_xm3600_like(folder: Path, languages=("en", "de"), n_images: int = 10) -> Path:
    from datasets import Dataset, Features, Sequence, Value

    records = tux_records(n=n_images, languages=languages)
    struct = {"bytes": Value("binary"), "path": Value("string")}
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for lang in languages:
        Dataset.from_dict(
            {
                "image": [{"bytes": image_bytes(r), "path": r["image"]} for r in records],
                "image_id": [r["id"] for r in records],
                "captions": [[r["captions"][lang]] for r in records],
                "image_locale": ["en"] * len(records),
            },
            features=Features(
                {"image": struct, "image_id": Value("string"), "captions": Sequence(Value("string")), "image_locale": Value("string")}
            ),
        ).to_parquet(str(folder / "data" / f"{lang}-00000-of-00001.parquet"))
    return folder


def write_per_caption(folder: Path, n_images: int = 8) -> Path:
    from datasets import Dataset, Features, Image, Value

    records = tux_records(n=n_images)
    rows = {"image_id": [], "image": [], "caption": []}
    for r in records:
        for lang in ("en", "de", "fr"):
            rows["image_id"].append(r["id"])
            rows["image"].append({"bytes": image_bytes(r), "path": None})
            rows["caption"].append(r["captions"][lang])
    (folder / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=Features({"image_id": Value("string"), "image": Image(), "caption": Value("string")})).to_parquet(
        str(folder / "data" / "test-00000-of-00001.parquet")
    )
    return folder


def write_vidore_beir(folder: Path, n_pages: int = 10) -> Path:
    from datasets import Dataset, Features, Image, Value

    records = tux_records(n=n_pages)
    for name in ("queries", "corpus", "qrels"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(
        {"corpus-id": list(range(len(records))), "image": [{"bytes": image_bytes(r), "path": None} for r in records]},
        features=Features({"corpus-id": Value("int64"), "image": Image()}),
    ).to_parquet(str(folder / "corpus" / "test.parquet"))
    queries = [r["captions"]["en"] for r in records[: n_pages - 2]]  # two pages no query asks for
    Dataset.from_dict({"query-id": list(range(len(queries))), "query": queries}).to_parquet(str(folder / "queries" / "test.parquet"))
    # graded qrels: the query's own page (2) and, for even queries, the next page (1)
    qrels = {"query-id": [], "corpus-id": [], "score": []}
    for q in range(len(queries)):
        for doc, score in [(q, 2)] + ([(q + 1, 1)] if q % 2 == 0 else []):
            qrels["query-id"].append(q)
            qrels["corpus-id"].append(doc)
            qrels["score"].append(score)
    Dataset.from_dict(qrels).to_parquet(str(folder / "qrels" / "test.parquet"))
    _readme(folder, {name: {"test": f"{name}/test.parquet"} for name in ("queries", "corpus", "qrels")})
    return folder


def write_vidore_pairs(folder: Path, n_pages: int = 8) -> Path:
    from datasets import Dataset, Features, Image, Value

    records = tux_records(n=n_pages)
    rows = {"query": [], "image": [], "image_filename": []}
    for i, r in enumerate(records):
        rows["query"].append(r["captions"]["en"] if i < n_pages - 2 else None)
        rows["image"].append({"bytes": image_bytes(r), "path": None})
        rows["image_filename"].append(r["image"])
    (folder / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=Features({"query": Value("string"), "image": Image(), "image_filename": Value("string")})).to_parquet(
        str(folder / "data" / "test-00000-of-00001.parquet")
    )
    return folder


def write_mteb_retrieval(folder: Path, n_docs: int = 16) -> Path:
    from datasets import Dataset

    records = tux_records(split="train", n=n_docs)
    docs = {"_id": [f"d{i}" for i in range(n_docs)], "title": [r["category"] for r in records], "text": [r["captions"]["en"] for r in records]}
    queries = {"_id": [f"q{i}" for i in range(n_docs // 2)], "text": [r["captions"]["de"] for r in records[: n_docs // 2]]}
    qrels = {"query-id": queries["_id"], "corpus-id": [f"d{i}" for i in range(n_docs // 2)], "score": [1] * (n_docs // 2)}
    for name, data in (("corpus", docs), ("queries", queries), ("default", qrels)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(data).to_parquet(str(folder / name / "test.parquet"))
    _readme(folder, {name: {"test": f"{name}/test.parquet"} for name in ("corpus", "queries", "default")})
    return folder


def write_mteb_sts(folder: Path, n_pairs: int = 16) -> Path:
    from datasets import Dataset

    records = tux_records(split="train", n=n_pairs + 1)
    s1 = [r["captions"]["en"] for r in records[:n_pairs]]
    # even pairs: a translation of the same caption (similar); odd pairs: another stamp's caption
    s2 = [records[i]["captions"]["fr"] if i % 2 == 0 else records[i + 1]["captions"]["en"] for i in range(n_pairs)]
    score = [4.5 if i % 2 == 0 else 0.5 + (i % 3) for i in range(n_pairs)]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": score}).to_parquet(
        str(folder / "data" / "test-00000-of-00001.parquet")
    )
    return folder


def save_tiny_model(folder: Path, seed: int = 0, tokenizer=None) -> Path:
    model = tiny_model(seed=seed)
    processor = build_processor(tokenizer or build_tokenizer(), image_size=56)
    model.processor = processor
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
