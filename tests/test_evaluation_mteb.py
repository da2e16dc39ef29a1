"""MTEB retrieval and STS through the `mteb` package: our encoder adapter against mteb's protocol, real
mteb task classes (SciFact, STSBenchmark) pointed at local folders with their Hub layout, agreement with
our own metrics on the same embeddings, the embedding cache across a sweep, and --limit."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

mteb = pytest.importorskip("mteb")
pytestmark = pytest.mark.filterwarnings("ignore:The task .* is superseded:UserWarning")

import _eval_fixtures as fx  # noqa: E402

from jina_clip_v2.evaluation import metrics as M  # noqa: E402
from jina_clip_v2.evaluation.embedder import Embedder, EmbeddingCache  # noqa: E402
from jina_clip_v2.evaluation.mteb_adapter import MTEBEncoderAdapter, import_mteb  # noqa: E402
from jina_clip_v2.evaluation.runner import evaluate  # noqa: E402
from jina_clip_v2.evaluation.tasks import MTEBTask  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("mteb_data")
    return {"retrieval": fx.write_mteb_retrieval(root / "scifact_like"), "sts": fx.write_mteb_sts(root / "sts_like")}


def _tasks(folders):
    return [
        MTEBTask(name="SciFact", dataset=str(folders["retrieval"]), group="MTEB Retrieval (en)"),
        MTEBTask(name="STSBenchmark", dataset=str(folders["sts"]), group="MTEB STS (en)"),
    ]


def _loader(rows: list[dict], batch_size: int = 3):
    from torch.utils.data import DataLoader

    return DataLoader(rows, batch_size=batch_size, collate_fn=lambda batch: {k: [row[k] for row in batch] for k in batch[0]})


def test_adapter_speaks_the_encoder_protocol(model, tmp_path):
    from mteb.models import EncoderProtocol
    from mteb.types import PromptType

    adapter = MTEBEncoderAdapter(Embedder(model, EmbeddingCache(tmp_path), show_progress=False), 16)
    assert isinstance(adapter, EncoderProtocol)
    meta = adapter.mteb_model_meta
    assert meta.name == "local/model" and meta.revision == adapter.revision

    texts = [r["captions"]["en"] for r in fx.tux_records(n=5)]
    metadata = mteb.get_task("SciFact").metadata
    kwargs = dict(task_metadata=metadata, hf_split="test", hf_subset="default")
    query = adapter.encode(_loader([{"text": t} for t in texts]), prompt_type=PromptType.query, **kwargs)
    doc = adapter.encode(_loader([{"text": t} for t in texts]), prompt_type=PromptType.document, **kwargs)
    sts = adapter.encode(_loader([{"text": t} for t in texts]), prompt_type=None, **kwargs)
    assert query.shape == (5, 16) and query.dtype == np.float32
    np.testing.assert_allclose(query, model.encode_text(texts, task="retrieval.query", truncate_dim=16), atol=1e-5)
    np.testing.assert_allclose(doc, model.encode_text(texts, truncate_dim=16), atol=1e-5)
    np.testing.assert_allclose(sts, doc, atol=0)  # same inputs, no instruction: the cached embeddings

    from PIL import Image

    pil = [Image.open(fx.TUX / r["image"]).convert("RGB") for r in fx.tux_records(n=3)]
    pages = adapter.encode(_loader([{"image": p} for p in pil]), prompt_type=PromptType.document, **kwargs)
    np.testing.assert_allclose(pages, model.encode_image(pil, truncate_dim=16), atol=1e-5)

    sim = adapter.similarity(query, doc)
    assert tuple(sim.shape) == (5, 5)
    np.testing.assert_allclose(np.diag(sim.numpy()), adapter.similarity_pairwise(query, doc).numpy(), atol=1e-6)
    assert [call["prompt_type"] for call in adapter.calls] == ["query", "document", None, "document"]


def test_mteb_retrieval_and_sts_end_to_end(model, folders, tmp_path):
    result = evaluate(model, _tasks(folders), [32, 8], tmp_path / "out", tmp_path / "cache", show_progress=False)
    assert not result["errors"], result["errors"]
    entries = {(r["task"], r["truncate_dim"]): r for r in result["results"]}
    assert set(entries) == {("SciFact", 32), ("SciFact", 8), ("STSBenchmark", 32), ("STSBenchmark", 8)}
    scifact, sts = entries[("SciFact", 8)], entries[("STSBenchmark", 8)]
    assert scifact["type"] == "retrieval" and sts["type"] == "sts"
    assert {"ndcg@5", "ndcg@10", "recall@10", "mrr@10"} <= set(scifact["metrics"])
    assert all(0 <= v <= 100 for v in scifact["metrics"].values())
    assert -100 <= sts["metrics"]["cosine_spearman"] <= 100
    assert scifact["dataset"]["id"] == str(folders["retrieval"]) and scifact["dataset"]["split"] == "test"
    assert scifact["benchmark"] == "MTEB Retrieval (en)"

    # Every text was encoded once for both dims: 8 queries + 16 documents + 2 x 16 STS sentences.
    assert result["encoding"]["texts"] == 8 + 16 + 32
    assert (result["encoding"]["cache_misses"], result["encoding"]["cache_hits"]) == (4, 4)

    # mteb's numbers equal ours on the same embeddings.
    from datasets import load_dataset

    sts_data = load_dataset(str(folders["sts"]), split="test")
    e1 = model.encode_text(list(sts_data["sentence1"]), truncate_dim=8)
    e2 = model.encode_text(list(sts_data["sentence2"]), truncate_dim=8)
    ours = M.sts_scores(e1, e2, list(sts_data["score"]))["cosine_spearman"]
    assert sts["metrics"]["cosine_spearman"] == pytest.approx(ours, abs=1e-6)

    corpus = load_dataset(str(folders["retrieval"]), "corpus", split="test")
    queries = load_dataset(str(folders["retrieval"]), "queries", split="test")
    qrels_ds = load_dataset(str(folders["retrieval"]), "default", split="test")
    docs = [f"{title} {text}".strip() for title, text in zip(corpus["title"], corpus["text"])]  # mteb's doc text
    q = model.encode_text(list(queries["text"]), task="retrieval.query", truncate_dim=8)
    d = model.encode_text(docs, truncate_dim=8)
    qrels = {qid: {did: float(s)} for qid, did, s in zip(qrels_ds["query-id"], qrels_ds["corpus-id"], qrels_ds["score"])}
    ours = M.retrieval_scores(q, d, list(queries["_id"]), list(corpus["_id"]), qrels, ks=(5, 10))
    for name in ("ndcg@5", "ndcg@10", "recall@10", "mrr@10"):
        assert scifact["metrics"][name] == pytest.approx(ours[name], abs=2e-3), name  # mteb rounds to 5 digits

    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Text retrieval and STS (Table 3 layout, dim 32)" in report
    assert "| Model | MTEB Retrieval (en) nDCG@10 | MTEB STS (en) Spearman |" in report


def test_limit_subsamples_mteb_tasks(model, folders, tmp_path):
    result = evaluate(model, _tasks(folders), [16], None, tmp_path, limit=3, show_progress=False)
    assert not result["errors"], result["errors"]
    # 3 queries, their 3 relevant documents (which are also the first 3), 3 STS pairs.
    assert result["encoding"]["texts"] == 3 + 3 + 3 + 3


def test_missing_mteb_is_a_clear_error(model, folders, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)
    with pytest.raises(ImportError, match="pip install"):
        import_mteb()
    result = evaluate(model, _tasks(folders)[:1], [16], None, tmp_path, show_progress=False)
    assert result["results"] == [] and "mteb" in result["errors"][0]["error"]
