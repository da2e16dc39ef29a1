"""`jina-clip data` (training/build_data.py, training/mine_negatives.py): section 3.1's training data from
small local sets in the layouts of real public ones (a WIT-like parquet with WIT's columns, a DocVQA-like
parquet, DFN-like jsonl captions, question-answer pairs), into the three kinds the stages read; then stages 1,
2 and 3 of the tiny recipe train on them.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _eval_fixtures as fx  # noqa: E402
from _once import build_once  # noqa: E402
from _tiny import ROOT, build_tokenizer  # noqa: E402

from jina_clip_v2.cli import main as cli_main  # noqa: E402
from jina_clip_v2.training import build_data as B  # noqa: E402

TINY = ROOT / "training" / "configs" / "tiny.yaml"


def _tokenizer_dir() -> Path:
    from jina_clip_v2.assets import default_tokenizer_dir

    for folder in (default_tokenizer_dir(), ROOT / ".assets" / "xlm-roberta-tokenizer"):
        if (folder / "tokenizer.json").is_file():
            return folder
    raise AssertionError("the real XLM-R tokenizer is missing: run `make setup` (or `jina-clip fetch-assets`)")


def _jpeg(size=(900, 600)) -> bytes:
    array = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_parquet(path: Path, rows: list[dict], features) -> Path:
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def write_wit_like(folder: Path) -> Path:
    """WIT's columns (google-research-datasets/wit, one row per image reference), the image as datasets stores it."""
    from datasets import Features, Image as HFImage, Value

    records = fx.tux_records(n=5, languages=("en", "de"))
    rows = []
    for i, record in enumerate(records):
        rows.append({
            "language": "en", "page_url": f"https://en.wikipedia.org/wiki/{record['id']}", "image_url": f"https://upload.wikimedia.org/{record['id']}.jpg",
            "page_title": record["category"].title(), "section_title": "Gallery" if i % 2 else None,
            "hierarchical_section_title": record["category"], "caption_reference_description": record["captions"]["en"],
            "caption_attribution_description": record["captions"]["de"], "caption_alt_text_description": None,
            "mime_type": "image/jpeg", "original_height": 128, "original_width": 128, "is_main_image": i == 0,
            "attribution_passes_lang_id": True, "page_changed_recently": False,
            "context_page_description": f"An article about {record['category']}.", "context_section_description": record["captions"]["de"],
            "image": {"bytes": _jpeg() if i == 0 else fx.image_bytes(record), "path": None},
        })  # fmt: skip
    rows[2]["caption_reference_description"] = None  # WIT: many references have no caption
    rows[3]["image"] = {"bytes": b"not an image", "path": None}
    features = Features({**{k: Value("string") for k in rows[0] if k not in ("image", "original_height", "original_width", "is_main_image", "attribution_passes_lang_id", "page_changed_recently")},
                         "original_height": Value("int64"), "original_width": Value("int64"), "is_main_image": Value("bool"),
                         "attribution_passes_lang_id": Value("bool"), "page_changed_recently": Value("bool"), "image": HFImage()})  # fmt: skip
    return _write_parquet(folder / "data" / "train-00000-of-00001.parquet", rows, features)


def write_docvqa_like(folder: Path) -> Path:
    """lmms-lab/DocVQA's columns: questionId, question, question_types, image, docId, ..., answers (a list)."""
    from datasets import Features, Image as HFImage, List, Value

    records = fx.tux_records(n=4, languages=("en",))
    rows = [{"questionId": str(i), "question": f"What is shown on page {i}?", "question_types": ["figure/diagram"],
             "image": {"bytes": fx.image_bytes(r), "path": None}, "docId": i, "ucsf_document_id": f"doc{i}",
             "ucsf_document_page_no": "1", "answers": [r["captions"]["en"], r["captions"]["en"].lower()], "data_split": "train"}
            for i, r in enumerate(records)]  # fmt: skip
    features = Features({"questionId": Value("string"), "question": Value("string"), "question_types": List(Value("string")),
                         "image": HFImage(), "docId": Value("int64"), "ucsf_document_id": Value("string"),
                         "ucsf_document_page_no": Value("string"), "answers": List(Value("string")), "data_split": Value("string")})  # fmt: skip
    return _write_parquet(folder / "validation-00000-of-00001.parquet", rows, features)


def write_captions_jsonl(folder: Path) -> Path:
    """DFN / CommonPool-like pairs: an image path next to the file and its caption; one caption over 256
    tokens; one line of invalid JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    records = fx.tux_records(n=4, languages=("en", "de", "fr", "ja"))
    lines = []
    for record in records:
        (folder / Path(record["image"]).name).write_bytes(fx.image_bytes(record))
        lines.append(json.dumps({"image": Path(record["image"]).name, "caption": record["captions"]["en"]}))
    long = " ".join(record["captions"][lang] for record in records for lang in ("en", "de", "fr", "ja")) * 6
    lines.insert(1, json.dumps({"image": Path(records[0]["image"]).name, "caption": long}))
    lines.insert(3, "{not json")
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


def write_pairs(path: Path) -> Path:
    """English -> German caption pairs (one without an answer) and, beside them, a corpus of 40 more German
    captions to draw negatives from (`corpus.jsonl`, column `text`)."""
    records = fx.tux_records(n=16, languages=("en", "de"))
    rows = [{"question": r["captions"]["en"], "answer": r["captions"]["de"]} for r in records]
    rows.insert(5, {"question": "a question without an answer", "answer": None})
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    corpus = fx.tux_records(split="train", n=40, languages=("de",))
    (path.parent / "corpus.jsonl").write_text("".join(json.dumps({"text": r["captions"]["de"]}, ensure_ascii=False) + "\n" for r in corpus))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sources, the three built kinds and the mining model (built once per session: read-only for the tests)."""

    def build(root: Path) -> dict:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(root / "tokenizer")
        sources = {
            "wit": write_wit_like(root / "wit"), "docvqa": write_docvqa_like(root / "docvqa"),
            "captions": write_captions_jsonl(root / "dfn"), "pairs": write_pairs(root / "pairs.jsonl"),
        }  # fmt: skip
        real = str(_tokenizer_dir())
        out = root / "out"
        for name, recipe, extra in (("wit", "wit", []), ("docvqa", "qa", []), ("captions", "captions", ["--shard-size", "2"])):
            command = ["data", "captions", "--source", str(sources[name]), "--recipe", recipe, "--out", str(out / name), "--tokenizer", real, *extra]
            assert cli_main(command) == 0
        model = fx.save_tiny_model(root / "model", seed=0, tokenizer=tokenizer)
        # The tiny model is untrained: its cosines crowd near 0.95, so the relative margin is 0.995 here (0.95 default).
        command = ["data", "triplets", "--pairs", str(sources["pairs"]), "--model", str(model), "--out", str(out / "triplets"),
                   "--columns", "positive=answer", "--corpus", str(root / "corpus.jsonl"), "--max-relative-score", "0.995"]  # fmt: skip
        assert cli_main(command) == 0
        return {"root": str(root), "out": str(out), "model": str(model), "sources": {k: str(v) for k, v in sources.items()}}

    built = build_once(tmp_path_factory, "build_data_sources", build)
    return {**{k: Path(built[k]) for k in ("root", "out", "model")}, "sources": {k: Path(v) for k, v in built["sources"].items()}}


def _rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def _skipped(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "skipped.jsonl").read_text().splitlines()]


def test_wit_captions_short_and_long(built):
    short, long = _rows(built["out"] / "wit" / "image_text_short"), _rows(built["out"] / "wit" / "image_text_long")
    assert len(short) == len(long) == 3
    import pyarrow.parquet as pq

    source = pq.read_table(built["sources"]["wit"]).to_pylist()
    first = source[0]
    assert short[0]["caption"] == first["caption_reference_description"]
    # caption, page title, section title, page description, section description (a missing one left out)
    assert long[0]["caption"] == " ".join([first["caption_reference_description"], first["page_title"],
                                           first["context_page_description"], first["context_section_description"]])  # fmt: skip
    second = source[1]
    assert long[1]["caption"] == " ".join([second["caption_reference_description"], second["page_title"], "Gallery",
                                           second["context_page_description"], second["context_section_description"]])  # fmt: skip
    image = Image.open(io.BytesIO(short[0]["image"]["bytes"]))
    assert (image.format, image.size) == ("JPEG", (576, 384))  # 900 x 600 -> the shorter side at 384 px
    assert Image.open(io.BytesIO(short[1]["image"]["bytes"])).size == Image.open(io.BytesIO(fx.image_bytes(fx.tux_records(n=5, languages=("en", "de"))[1]))).size
    skipped = _skipped(built["out"] / "wit")
    assert [s["row"].rsplit(" ", 2)[-2:] for s in skipped] == [["row", "2"], ["row", "3"]]
    assert "no 'caption'" in skipped[0]["reason"] and "undecodable image" in skipped[1]["reason"]


def test_qa_captions_concatenate_question_and_answer(built):
    short, long = _rows(built["out"] / "docvqa" / "image_text_short"), _rows(built["out"] / "docvqa" / "image_text_long")
    records = fx.tux_records(n=4, languages=("en",))
    assert [row["caption"] for row in short] == [f"What is shown on page {i}? {r['captions']['en']}" for i, r in enumerate(records)]
    assert [row["caption"] for row in long] == [row["caption"] for row in short]


def test_captions_over_256_tokens_go_to_the_long_set(built):
    from tokenizers import Tokenizer

    out = built["out"] / "captions"
    short, long = _rows(out / "image_text_short"), _rows(out / "image_text_long")
    tokenizer = Tokenizer.from_file(str(_tokenizer_dir() / "tokenizer.json"))
    assert len(long) == 1 and len(short) == 4
    assert long[0]["num_tokens"] == len(tokenizer.encode(long[0]["caption"], add_special_tokens=False).ids) > 256
    assert all(row["num_tokens"] == len(tokenizer.encode(row["caption"], add_special_tokens=False).ids) <= 256 for row in short)
    skipped = _skipped(out)
    assert len(skipped) == 1 and skipped[0]["row"].endswith("pairs.jsonl line 4") and "invalid JSON" in skipped[0]["reason"]
    state = json.loads((out / "state.json").read_text())
    assert state["done"] and state["rows_read"] == 6 and state["shards"]["image_text_short"] == 3  # committed every 2 rows


def test_an_interrupted_build_resumes_where_it_stopped(built, tmp_path, monkeypatch):
    source, real = built["sources"]["wit"], B.image_from_record
    calls = {"n": 0}

    def dies_on_the_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # a killed run: nothing after the last commit is recorded
        return real(*args, **kwargs)

    monkeypatch.setattr(B, "image_from_record", dies_on_the_fourth)
    tokenizer = build_tokenizer()
    with pytest.raises(KeyboardInterrupt):
        B.build_image_text(str(source), tmp_path / "wit", recipe="wit", tokenizer=tokenizer, shard_size=1, batch_size=1)
    state = json.loads((tmp_path / "wit" / "state.json").read_text())
    assert 0 < state["rows_read"] < 5 and not state["done"]
    monkeypatch.setattr(B, "image_from_record", real)
    B.build_image_text(str(source), tmp_path / "wit", recipe="wit", tokenizer=tokenizer, shard_size=1, batch_size=1)
    fresh = tmp_path / "fresh"
    B.build_image_text(str(source), fresh, recipe="wit", tokenizer=tokenizer, shard_size=2)
    for kind in ("image_text_short", "image_text_long"):
        assert _rows(tmp_path / "wit" / kind) == _rows(fresh / kind)
    assert _skipped(tmp_path / "wit") == _skipped(fresh)
    with pytest.raises(ValueError, match="other arguments"):
        B.build_image_text(str(source), fresh, recipe="wit", tokenizer=tokenizer, image_size=224)


def test_mined_triplets_are_the_hardest_documents_below_the_positive(built):
    from jina_clip_v2.modeling import JinaCLIPModel

    rows = _rows(built["out"] / "triplets" / "text_triplets")
    assert len(rows) >= 1 and all(len(row["negatives"]) == 7 for row in rows)
    skipped = _skipped(built["out"] / "triplets")
    assert any(s["row"].endswith("pairs.jsonl line 6") and "no positive" in s["reason"] for s in skipped)
    model = JinaCLIPModel.from_pretrained(built["model"]).eval()
    pairs = [json.loads(line) for line in built["sources"]["pairs"].read_text().splitlines()]
    corpus = [json.loads(line)["text"] for line in (built["root"] / "corpus.jsonl").read_text().splitlines()]
    pool = list(dict.fromkeys([p["answer"] for p in pairs if p["answer"]] + corpus))
    docs = model.encode_text(pool, normalize_embeddings=True)
    for row in rows:
        query = model.encode_text([row["query"]], task="retrieval.query", normalize_embeddings=True)[0]
        scores = {text: float(vector @ query) for text, vector in zip(pool, docs)}
        ceiling = 0.995 * scores[row["positive"]]
        below = [t for t in pool if t != row["positive"] and scores[t] < ceiling]
        expected = sorted(below, key=scores.get, reverse=True)[:7]
        # The 7 hardest below the ceiling, in order. Texts whose scores tie within float rounding (the miner's
        # batches are not this test's, ~1e-7 apart) may come in either order: compare by score, not by name.
        assert set(row["negatives"]) <= set(below)
        assert np.allclose([scores[t] for t in row["negatives"]], [scores[t] for t in expected], atol=1e-5)
        assert np.allclose(row["scores"], [scores[t] for t in expected], atol=1e-3)


def test_the_three_stages_train_on_the_built_data(built, tmp_path):
    from jina_clip_v2.training.stage import main as stage_main

    out = built["out"]
    short = [f"{out / name / 'image_text_short'}/*.parquet" for name in ("wit", "docvqa", "captions")]
    long = [f"{out / name / 'image_text_long'}/*.parquet" for name in ("wit", "docvqa", "captions")]
    pairs = {"path": str(built["sources"]["pairs"]), "columns": {"query": "question", "document": "answer"}}
    common = [
        f"model.processor_from={built['root'] / 'tokenizer'}", "model.config.text_config.vocab_size=1000",
        "data.text.batch_size=4", "data.image_text.batch_size=4", "data.text.shuffle_buffer=4", "data.image_text.shuffle_buffer=4",
        "optim.warmup_steps=0", "train.steps=1", "train.log_with=[]", "train.progress_bar=false", "train.export=false",
        "train.resolution_switch=null", "model.init_from=null",
    ]  # fmt: skip
    stages = {
        1: [f"data.text.sources=[{json.dumps(pairs)}]", "data.image_text.sources=" + json.dumps([{"path": p} for p in short])],
        2: [f"data.text.sources=[{json.dumps(pairs)}]", "data.image_text.sources=" + json.dumps([{"path": p} for p in long])],
        3: ["data.text.sources=" + json.dumps([{"path": f"{out / 'triplets' / 'text_triplets'}/*.parquet"}]), "data.text.batch_size=1",
            "data.image_text.sources=" + json.dumps([{"path": p} for p in long])],
    }  # fmt: skip
    for stage, sources in stages.items():
        folder = tmp_path / f"stage{stage}"
        summary = stage_main(["--config", str(TINY), f"stage={stage}", f"output_dir={folder}", *common, *sources])
        assert summary["stage"] == stage and summary["samples_seen"] == {"text": 1 if stage == 3 else 4, "image_text": 4}
        record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        assert record["step"] == 1 and np.isfinite(record["loss"])


def test_training_prepends_the_configured_query_instruction(built):
    """`data.text.query_instruction` reaches the tokenizer in front of every query, and only there."""
    from _tiny import build_processor

    from jina_clip_v2.training.data import TaskDataConfig, build_task_stream

    processor = build_processor(build_tokenizer())
    source = {"path": str(built["sources"]["pairs"]), "columns": {"query": "question", "document": "answer"}}
    cfg = TaskDataConfig(kind="text_pairs", sources=[source], batch_size=3, max_length=64, shuffle_buffer=0, query_instruction="Frage: ")
    batch = next(iter(build_task_stream(cfg, processor, train=False, keep_raw=True)))
    tokenizer = processor.tokenizer
    for i, raw in enumerate(batch["raw"]):
        ids = batch["query"]["input_ids"][i][batch["query"]["attention_mask"][i].bool()].tolist()
        assert ids == tokenizer("Frage: " + raw["query"], truncation=True, max_length=64).input_ids
        doc = batch["document"]["input_ids"][i][batch["document"]["attention_mask"][i].bool()].tolist()
        assert doc == tokenizer(raw["document"], truncation=True, max_length=64).input_ids
