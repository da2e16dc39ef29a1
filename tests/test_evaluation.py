"""`jina-clip eval`: suites and overrides, the loaders of every supported layout, the embedding
cache, the outputs (results.json in the model-card schema, report.md, matryoshka.png), and the
Matryoshka sweep moving in the expected direction.

All data is local (tests/_eval_fixtures.py builds it from the repository's Tux Paint stamps); the model is
the tiny random one of tests/_tiny.py, saved to a folder and loaded back with AutoModel.
MTEB tasks are tested in test_evaluation_mteb.py.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _eval_fixtures as fx  # noqa: E402
from _tiny import ROOT, build_tokenizer  # noqa: E402

from jina_clip_v2.evaluation import suites as S  # noqa: E402
from jina_clip_v2.evaluation.cli import main  # noqa: E402
from jina_clip_v2.evaluation.embedder import Embedder, EmbeddingCache, model_fingerprint  # noqa: E402
from jina_clip_v2.modeling.policy_jina_clip import truncate_and_normalize  # noqa: E402
from jina_clip_v2.evaluation.runner import evaluate, load_model  # noqa: E402
from jina_clip_v2.evaluation.tasks import CrossModalRetrievalTask, DocumentRetrievalTask, MTEBTask, task_from_dict  # noqa: E402

TYPES = {"text-to-image retrieval", "image-to-text retrieval", "retrieval", "sts", "document retrieval"}


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_data")
    return {
        "flickr": fx.write_flickr_like(root / "flickr"),
        "xm": fx.write_xm3600_like(root / "xm"),
        "percap": fx.write_per_caption(root / "percap"),
        "vbeir": fx.write_vidore_beir(root / "vbeir"),
        "vpairs": fx.write_vidore_pairs(root / "vpairs"),
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return fx.save_tiny_model(tmp_path_factory.mktemp("eval_model") / "model", seed=0, tokenizer=build_tokenizer())


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


def suite_tasks(data: dict[str, Path]) -> list:
    return [
        CrossModalRetrievalTask(name="Flickr-like", dataset=str(data["flickr"]), group="CLIP Benchmark"),
        CrossModalRetrievalTask(
            name="PerCaption", dataset=str(data["percap"]), image_id_column="image_id", group="CLIP Benchmark", ks=(1, 5)
        ),
        *[
            CrossModalRetrievalTask(
                name="XM", dataset=str(data["xm"]), split=lang, language=lang, caption_column="captions", group="XM", multilingual=True
            )
            for lang in ("en", "de")
        ],
        DocumentRetrievalTask(name="DocBeir", dataset=str(data["vbeir"])),
        DocumentRetrievalTask(name="DocPairs", dataset=str(data["vpairs"]), layout="pairs"),
    ]


@pytest.fixture
def calls(model):
    """Count the calls reaching the model's encode methods (wrapped on the instance, unwrapped after)."""
    counter: Counter = Counter()
    for name in ("encode_text", "encode_image"):
        original = getattr(type(model), name).__get__(model)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            counter[_name] += 1
            return _original(*args, **kwargs)

        setattr(model, name, wrapper)
    yield counter
    del model.encode_text, model.encode_image


# --------------------------------------------------------------------------------------------
# Suites, overrides, task configs
# --------------------------------------------------------------------------------------------


def test_paper_suite_covers_the_papers_tables():
    tasks = S.get_suite("paper")
    by_group = Counter(t.group for t in tasks)
    assert by_group["CLIP Benchmark"] == 2
    assert by_group["Crossmodal-3600"] == 36
    assert by_group["Multilingual MS COCO"] == 10
    assert by_group["ViDoRe"] == 10
    assert by_group["MTEB Retrieval (en)"] == 15 and by_group["MTEB STS (en)"] == 10
    assert len({t.key for t in tasks}) == len(tasks), "task keys must be unique"
    flickr = next(t for t in tasks if t.name == "Flickr30K")
    assert (flickr.dataset, flickr.split, flickr.caption_column) == ("nlphuji/flickr_1k_test_image_text_retrieval", "test", "caption")
    xm_de = next(t for t in tasks if t.key == "Crossmodal-3600[de]")
    assert (xm_de.dataset, xm_de.split, xm_de.caption_column) == ("mteb/xm3600", "de", "captions")
    sts17 = next(t for t in tasks if t.key == "STS17[en-en]")
    assert isinstance(sts17, MTEBTask) and sts17.group == "MTEB STS (en)"
    quick = S.get_suite("quick")
    assert 0 < len(quick) < len(tasks)


def test_overrides_and_filters():
    tasks = S.get_suite("paper")
    tasks = S.apply_overrides(
        tasks,
        [
            "Multilingual MS COCO*.dataset=/data/xtd10",
            "Crossmodal-3600[no].language=no",  # YAML 1.1 would read `no` as False
            "Flickr30K.ks=[1, 5]",
            "STS17[en-en].subsets=[en-en, en-de]",
            "Flickr30K.revision=null",
        ],
    )
    coco = [t for t in tasks if t.group == "Multilingual MS COCO"]
    assert {t.dataset for t in coco} == {"/data/xtd10"}
    assert next(t for t in tasks if t.split == "no" and t.group == "Crossmodal-3600").language == "no"
    flickr = next(t for t in tasks if t.name == "Flickr30K")
    assert flickr.ks == (1, 5) and flickr.revision is None
    assert next(t for t in tasks if t.name == "STS17" and t.group == "MTEB STS (en)").subsets == ["en-en", "en-de"]
    assert [t.key for t in S.select_tasks(tasks, "Flickr30K,Crossmodal-3600[de]")] == ["Flickr30K", "Crossmodal-3600[de]"]
    assert len(S.select_tasks(tasks, "ViDoRe")) == 10  # by group
    with pytest.raises(ValueError, match="no task matches"):
        S.select_tasks(tasks, "NoSuchTask")
    with pytest.raises(ValueError, match="has no field 'colum'"):
        S.apply_overrides(tasks, ["Flickr30K.colum=x"])
    with pytest.raises(ValueError, match="PATTERN.field=value"):
        S.apply_overrides(tasks, ["Flickr30K=x"])


def test_suite_file_with_base_tasks_and_overrides(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(
        "base: quick\n"
        "tasks:\n"
        "  - {kind: crossmodal, name: Mine, dataset: /d, caption_column: text, language: no, ks: [1, 5]}\n"
        "overrides:\n"
        "  - 'Flickr30K.dataset=/local/flickr'\n"
    )
    tasks = S.get_suite(str(path))
    mine = tasks[-1]
    assert (mine.name, mine.language, mine.ks, mine.caption_column) == ("Mine", "no", (1, 5), "text")
    assert next(t for t in tasks if t.name == "Flickr30K").dataset == "/local/flickr"
    assert task_from_dict(mine.to_dict()) == mine
    with pytest.raises(ValueError, match="unknown field"):
        task_from_dict({"kind": "crossmodal", "name": "x", "dataset": "y", "caption_col": "z"})
    with pytest.raises(ValueError, match="unknown suite"):
        S.get_suite("nope")


# --------------------------------------------------------------------------------------------
# Loaders: every layout
# --------------------------------------------------------------------------------------------


def test_crossmodal_layouts(data):
    flickr = CrossModalRetrievalTask(name="f", dataset=str(data["flickr"])).load()
    assert len(flickr.images) == 12 and len(flickr.captions) == 60
    assert flickr.text_to_image.tolist() == [i for i in range(12) for _ in range(5)]
    records = fx.tux_records(n=12)
    assert flickr.captions[5] == records[1]["captions"]["en"]
    from PIL import Image

    with Image.open(fx.TUX / records[3]["image"]) as original:
        assert flickr.images[3].size == original.size and flickr.images[3].mode == "RGB"

    per_caption = CrossModalRetrievalTask(name="p", dataset=str(data["percap"]), image_id_column="image_id").load()
    assert len(per_caption.images) == 8 and per_caption.text_to_image.tolist() == [i for i in range(8) for _ in range(3)]

    xm = CrossModalRetrievalTask(name="x", dataset=str(data["xm"]), split="de", caption_column="captions").load(limit=4)
    assert len(xm.images) == 4 and xm.captions == [r["captions"]["de"] for r in fx.tux_records(n=4, languages=("en", "de"))]

    # one data file works too, and missing columns name the ones that exist
    single = data["percap"] / "data" / "test-00000-of-00001.parquet"
    task = CrossModalRetrievalTask(name="s", dataset=str(single), caption_column="text")
    with pytest.raises(ValueError, match=r"column\(s\) \['text'\] not found.*'caption'"):
        task.load()


def test_document_layouts(data):
    beir = DocumentRetrievalTask(name="b", dataset=str(data["vbeir"])).load()
    assert len(beir.doc_ids) == 10 and len(beir.queries) == 8
    assert beir.qrels["0"] == {"0": 2.0, "1": 1.0} and beir.qrels["1"] == {"1": 2.0}
    limited = DocumentRetrievalTask(name="b", dataset=str(data["vbeir"])).load(limit=2)
    assert limited.query_ids == ["0", "1"] and set(limited.doc_ids) == {"0", "1"}
    assert len(limited.images) == 2

    pairs = DocumentRetrievalTask(name="p", dataset=str(data["vpairs"]), layout="pairs").load()
    assert len(pairs.doc_ids) == 8 and len(pairs.queries) == 6  # two pages without a query
    assert all(len(rel) == 1 for rel in pairs.qrels.values())


def test_prepare_xtd10_builds_a_readable_folder(tmp_path):
    records = fx.tux_records(n=5)
    raw, images = tmp_path / "XTD10" / "XTD10", tmp_path / "images"
    (tmp_path / "XTD10" / "MIC").mkdir(parents=True)
    raw.mkdir(parents=True, exist_ok=True)
    images.mkdir()
    names = [Path(r["image"]).name for r in records] + ["missing.jpg"]
    (raw / "test_image_names.txt").write_text("\n".join(names) + "\n")
    (raw / "test_1kcaptions_en.txt").write_text("\n".join([r["captions"]["en"] for r in records] + ["gone"]) + "\n")
    (tmp_path / "XTD10" / "MIC" / "test_1kcaptions_de.txt").write_text("\n".join([r["captions"]["de"] for r in records] + ["weg"]))
    for r in records:
        (images / Path(r["image"]).name).write_bytes(fx.image_bytes(r))
    out = tmp_path / "xtd10"
    assert main(["prepare-xtd10", "--captions", str(tmp_path / "XTD10"), "--images", str(images), "--out", str(out)]) == 0
    coco = [t for t in S.get_suite("paper") if t.group == "Multilingual MS COCO" and t.language in ("de", "en")]
    coco = S.apply_overrides(coco, [f"Multilingual MS COCO*.dataset={out}"])
    for task in coco:
        loaded = task.load()
        assert len(loaded.images) == 5 and loaded.captions[0] == records[0]["captions"][task.language]
        assert loaded.images.load(0).size[0] > 0


# --------------------------------------------------------------------------------------------
# Embeddings: truncation semantics, fingerprint, cache
# --------------------------------------------------------------------------------------------


def test_truncation_is_the_models_own(model):
    texts = ["a frog", "Ein Vogel", "un pingouin"]
    full = model.encode_text(texts, normalize_embeddings=False)
    for dim in (8, 16, 32):
        ours = truncate_and_normalize(full, dim)
        theirs = model.encode_text(texts, truncate_dim=dim)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # pre-normalised full embeddings give the same truncation (a row scale does not matter)
    np.testing.assert_allclose(truncate_and_normalize(model.encode_text(texts), 8), truncate_and_normalize(full, 8), atol=1e-6)
    with pytest.raises(ValueError, match="cannot truncate 32-d"):
        truncate_and_normalize(full, 64)


def test_fingerprint_tracks_weights_not_location(model, model_dir):
    import torch

    first = model_fingerprint(model)
    model.encode_text(["tokenizer state changes with use"], batch_size=1)
    assert model_fingerprint(model) == first
    assert model_fingerprint(load_model(model_dir)) == first  # same weights, another object
    from _tiny import tiny_model

    other = tiny_model(seed=1)
    other.processor = model.processor
    assert model_fingerprint(other) != first
    with torch.no_grad():
        param = next(model.parameters())
        saved = param.detach().clone()
        param.view(-1)[0] += 1e-3  # one value, which the strided sample includes (index 0)
        try:
            assert model_fingerprint(model) != first
        finally:
            param.copy_(saved)


def test_config_truncate_dim_does_not_leak_into_the_cache(model, tmp_path):
    embedder = Embedder(model, EmbeddingCache(tmp_path), show_progress=False)
    model.config.truncate_dim = 8
    try:
        full = embedder.encode_texts(["a frog", "a bird"])
    finally:
        model.config.truncate_dim = None
    assert full.shape == (2, 32) and model.config.truncate_dim is None


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def _check_schema(results: dict) -> None:
    assert isinstance(results["model"], str) and isinstance(results["suite"], str)
    assert results["results"]
    for entry in results["results"]:
        assert set(entry) >= {"task", "type", "dataset", "metrics", "truncate_dim"}
        assert entry["type"] in TYPES
        assert set(entry["dataset"]) >= {"name", "id", "split", "language"}
        assert isinstance(entry["truncate_dim"], int)
        for name, value in entry["metrics"].items():
            assert isinstance(value, float) and 0.0 <= value <= 100.0, (entry["task"], name, value)
    try:  # the model card's own reader accepts it
        from jina_clip_v2.hub.model_card import load_eval_results
    except ImportError:
        return
    load_eval_results(results)


@pytest.fixture(scope="module")
def cli_run(data, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    suite = out / "suite.json"
    tasks = [t.to_dict() for t in suite_tasks(data)]
    tasks.append({"kind": "crossmodal", "name": "Unconfigured", "dataset": None, "group": "Multilingual MS COCO"})
    tasks.append({"kind": "crossmodal", "name": "Broken", "dataset": str(data["flickr"]), "caption_column": "nope"})
    suite.write_text(json.dumps({"tasks": tasks}))
    rc = main(["run", "--model", str(model_dir), "--suite", str(suite), "--truncate-dims", "32,16,8", "--out", str(out), "--quiet"])
    return rc, out


def test_run_writes_json_report_and_plot(cli_run, model_dir):
    rc, out = cli_run
    assert rc == 1  # the broken task failed; everything else was still evaluated and written
    results = json.loads((out / "results.json").read_text())
    _check_schema(results)
    assert results["model"] == str(model_dir) and results["embedding_dim"] == 32
    assert results["truncate_dims"] == [32, 16, 8]
    assert [s["task"] for s in results["skipped"]] == ["Unconfigured"]
    assert len(results["errors"]) == 1 and "Broken" in results["errors"][0]["task"] and "nope" in results["errors"][0]["error"]
    kinds = Counter((r["task"], r["type"]) for r in results["results"])
    assert kinds[("Flickr-like", "text-to-image retrieval")] == 3 and kinds[("DocPairs", "document retrieval")] == 3
    xm = [r for r in results["results"] if r["task"] == "XM" and r["truncate_dim"] == 32]
    assert sorted(r["dataset"]["language"] for r in xm) == ["de", "de", "en", "en"]
    flickr = next(r for r in results["results"] if r["task"] == "Flickr-like" and r["type"] == "image-to-text retrieval")
    assert list(flickr["metrics"]) == ["recall@1", "recall@5", "recall@10"]
    doc = next(r for r in results["results"] if r["task"] == "DocBeir")
    assert {"ndcg@5", "ndcg@10", "recall@5", "recall@10", "mrr@10"} <= set(doc["metrics"])
    for r in results["results"]:  # Recall@k is monotone in k
        values = [v for k, v in r["metrics"].items() if k.startswith("recall@")]
        assert values == sorted(values)

    report = (out / "report.md").read_text()
    for heading in (
        "## Cross-modal retrieval (Table 2 layout, dim 32)",
        "## Visual document retrieval (Table 4 layout, dim 32)",
        "## Matryoshka truncation (Table 5 layout)",
        "## Matryoshka truncation per benchmark (Tables 12-15 layout)",
        "| Benchmark | T-I R@1 | T-I R@5 | T-I R@10 | I-T R@1 | I-T R@5 | I-T R@10 |",
        "| Dataset - Dimension | 32 | 16 | 8 |",
        "| Language | T-I R@1",
        "| **average** |",
        "- skipped `Unconfigured`",
        "- failed `Broken`",
    ):
        assert heading in report, heading
    from PIL import Image

    with Image.open(out / "matryoshka.png") as png:
        assert png.format == "PNG" and png.size[0] > 200

    # `report` redraws both from the JSON alone
    (out / "report.md").unlink()
    assert main(["report", str(out / "results.json")]) == 0
    assert (out / "report.md").read_text() == report


def test_sweep_reuses_cached_embeddings(model, calls, data, tmp_path):
    tasks = suite_tasks(data)
    first = evaluate(model, tasks, [32], None, tmp_path, show_progress=False)  # out=None: cache only
    requests = 2 * len(tasks)  # one text and one image request per task
    enc = first["encoding"]
    assert enc["cache_hits"] + enc["cache_misses"] == requests
    assert calls["encode_text"] + calls["encode_image"] == enc["cache_misses"]
    # The cache is keyed by content: the two XM languages (and fixtures built from the same stamps) share
    # their images, which are encoded once.
    assert enc["cache_hits"] >= 1 and calls["encode_image"] < len(tasks)

    calls.clear()
    second = evaluate(model, tasks, [32, 16, 8], None, tmp_path, show_progress=False)
    assert calls == Counter(), "a rerun with more dims must not encode anything"
    assert second["encoding"] == {"texts": 0, "images": 0, "cache_hits": requests, "cache_misses": 0}
    at32 = [r for r in second["results"] if r["truncate_dim"] == 32]
    assert at32 == first["results"]

    # Without the cache the numbers are the same.
    third = evaluate(model, tasks[:1], [16], None, use_cache=False, show_progress=False)
    assert calls["encode_text"] == calls["encode_image"] == 1
    assert third["results"] == [r for r in second["results"] if r["task"] == "Flickr-like" and r["truncate_dim"] == 16]


def test_the_encode_methods_choose_their_batches_unless_asked(model, data):
    """Issue 25: the evaluation passes no batch size unless given one, so `encode_text` / `encode_image` pick theirs
    (token-budget text batches, the device's image batch); `--batch-size` reaches them when given."""
    from jina_clip_v2.evaluation.cli import build_parser

    seen: list = []
    for name in ("encode_text", "encode_image"):
        original = getattr(type(model), name).__get__(model)

        def wrapper(*args, _original=original, **kwargs):
            seen.append(kwargs.get("batch_size", "default"))
            return _original(*args, **kwargs)

        setattr(model, name, wrapper)
    try:
        tasks = suite_tasks(data)[:1]
        evaluate(model, tasks, [32], None, use_cache=False, show_progress=False)
        assert len(seen) == 2 and set(seen) == {"default"}
        seen.clear()
        evaluate(model, tasks, [32], None, use_cache=False, show_progress=False, batch_size=3)
        assert seen == [3, 3]
    finally:
        del model.encode_text, model.encode_image
    assert build_parser().parse_args(["run", "--model", "m"]).batch_size is None


class SignalModel:
    """A stand-in with encode_text / encode_image (no torch model): item i's text and image share a random
    64-d vector, each coordinate observed through independent noise -- so every added dimension adds
    evidence and retrieval must get better with truncate_dim."""

    def __init__(self, n: int = 40, dim: int = 64, noise: float = 1.5, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.base = rng.standard_normal((n, dim)).astype(np.float32)
        self.text_noise = rng.standard_normal((n, dim)).astype(np.float32) * noise
        self.image_noise = rng.standard_normal((n, dim)).astype(np.float32) * noise

    def encode_text(self, texts, **kwargs):
        ids = [int(t.split()[1]) if t.startswith("item ") else 0 for t in texts]
        return self.base[ids] + self.text_noise[ids]

    def encode_image(self, images, **kwargs):
        ids = [image.getpixel((0, 0))[0] for image in images]
        return self.base[ids] + self.image_noise[ids]


def test_sweep_moves_in_the_expected_direction_with_truncate_dim(tmp_path):
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    n = 40
    rows = {
        "image": [{"bytes": fx.png_bytes(PILImage.new("RGB", (4, 4), (i, 0, 0))), "path": None} for i in range(n)],
        "caption": [f"item {i}" for i in range(n)],
    }
    (tmp_path / "data").mkdir()
    Dataset.from_dict(rows, features=Features({"image": Image(), "caption": Value("string")})).to_parquet(
        str(tmp_path / "data" / "test-00000-of-00001.parquet")
    )
    task = CrossModalRetrievalTask(name="Signal", dataset=str(tmp_path))
    result = evaluate(SignalModel(n), [task], [64, 16, 4], tmp_path / "out", fingerprint="signal-model", show_progress=False)
    r1 = {r["truncate_dim"]: r["metrics"]["recall@1"] for r in result["results"] if r["type"] == "text-to-image retrieval"}
    assert r1[64] > r1[16] > r1[4], r1
    assert (tmp_path / "out" / "matryoshka.png").exists()


def _demo_model() -> Path | None:
    """The training demo's final model (`jina-clip demo` writes outputs/demo/stage3/model)."""
    candidates = [os.environ.get("JINA_CLIP_DEMO_MODEL"), ROOT / "outputs/demo/stage3/model", ROOT / "outputs/demo/final"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(_demo_model() is None, reason="the training demo's model (outputs/demo/stage3/model) is not built")
def test_demo_model_gets_better_with_more_dims(tmp_path):
    """On the Tux Paint held-out images (captions never trained on), the demo-trained model's Recall@5,
    averaged over languages and both directions, is higher at full width than at its smallest dim."""
    from datasets import Dataset, Features, Image, Sequence, Value

    languages = ("en", "de", "fr", "es", "it", "pt")
    (tmp_path / "data").mkdir()
    for lang in languages:
        records = fx.tux_records(split="test", languages=(lang,))
        Dataset.from_dict(
            {"image": [{"bytes": fx.image_bytes(r), "path": None} for r in records], "caption": [[r["captions"][lang]] for r in records]},
            features=Features({"image": Image(), "caption": Sequence(Value("string"))}),
        ).to_parquet(str(tmp_path / "data" / f"{lang}-00000-of-00001.parquet"))
    model = load_model(_demo_model())
    dims = sorted(set(model.config.matryoshka_dimensions))
    tasks = [
        CrossModalRetrievalTask(name="TuxPaint", dataset=str(tmp_path), split=lang, language=lang, multilingual=True)
        for lang in languages
    ]
    result = evaluate(model, tasks, [dims[-1], dims[0]], tmp_path / "out", show_progress=False)
    assert not result["errors"], result["errors"]
    mean_r5 = {
        dim: float(np.mean([r["metrics"]["recall@5"] for r in result["results"] if r["truncate_dim"] == dim]))
        for dim in (dims[-1], dims[0])
    }
    assert mean_r5[dims[-1]] >= mean_r5[dims[0]], mean_r5
