"""`jina-clip index` / `search` (corpus/index.py, corpus/search.py): exact search is the brute-force
`encode_text @ embeddings.T` top-k, the ANN index keeps recall@10 >= 0.95 against it on 10k random vectors, the
demo search rate is the demo's own retrieval metric, and the README's embed -> index -> search section runs."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex

import numpy as np
import pyarrow as pa
import pytest

from test_corpus_embed import DEMO, model, model_dir, read_shards, vectors  # noqa: F401

from jina_clip_v2.cli import main as cli_main
from jina_clip_v2.corpus.embedder import ShardOutput
from jina_clip_v2.corpus.index import build_index
from jina_clip_v2.corpus.run import embed_corpus
from jina_clip_v2.corpus.search import SearchIndex
from jina_clip_v2.corpus.store import EmbeddingStore

QUERIES = ["Ein Frosch", "un gâteau d'anniversaire", "宇宙飛行士", "собака", "a red fire truck", "طائرة"]


@pytest.fixture(scope="module")
def demo_index(model_dir, tmp_path_factory):  # noqa: F811
    """The 498 demo images embedded (ids = the records' ids, category and English caption kept) and indexed. (float16
    shards: the README section's test.)"""
    work = tmp_path_factory.mktemp("demo_index")
    embed_corpus(DEMO / "captions.jsonl", work / "embeddings", model_dir, image_column="image", id_column="id",
                 keep=["category", "en"], shard_size=200, progress=False)
    build_index(work / "embeddings", work / "index")
    return work


def test_exact_search_equals_brute_force_top_k(demo_index, model):  # noqa: F811
    index = SearchIndex(demo_index / "index", model=model)
    assert index.info["ann"] is None and index.info["rows"] == 498  # 498 rows: exact search, no ANN index
    table = read_shards(demo_index / "embeddings")
    ids, corpus = table.column("id").to_pylist(), vectors(table, "embedding")
    queries = model.encode_text(QUERIES, task="retrieval.query")
    scores = queries @ corpus.T
    for query, row, hits in zip(QUERIES, scores, index.search(QUERIES, k=10, exact=True)):
        top = np.argsort(-row, kind="stable")[:10]
        assert [hit["id"] for hit in hits] == [ids[i] for i in top], query
        np.testing.assert_allclose([hit["score"] for hit in hits], row[top], atol=1e-5)
        assert set(hits[0]) == {"id", "score", "category", "en"}  # the stored columns, no vectors
    # Without the instruction: documents-style text embeddings.
    plain = model.encode_text(QUERIES[:1]) @ corpus.T
    assert [h["id"] for h in index.search(QUERIES[0], k=5, task=None)] == [ids[i] for i in np.argsort(-plain[0])[:5]]
    # A filter on the stored columns = brute force over those rows.
    animals = [i for i, row in enumerate(table.column("category").to_pylist()) if row == "animals"]
    hits = index.search(QUERIES[3], k=5, exact=True, where="category = 'animals'")
    assert [h["id"] for h in hits] == [ids[animals[i]] for i in np.argsort(-scores[3][animals])[:5]]
    # An image query finds that image first.
    image = DEMO / "images" / "animals-amphibians-frog-1.jpg"
    hit = index.search(image=str(image), k=1)[0]
    assert hit["id"] == "animals-amphibians-frog-1" and hit["score"] == pytest.approx(1.0, abs=1e-5)

    # The command line loads the recorded model itself and answers the same.
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli_main(["search", str(demo_index / "index"), *QUERIES[:2], "-k", "4", "--exact", "--json"]) == 0
    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [line["query"] for line in lines] == QUERIES[:2]
    for line, row in zip(lines, scores):
        assert [hit["id"] for hit in line["hits"]] == [ids[i] for i in np.argsort(-row, kind="stable")[:4]]


def _random_embeddings(folder, n: int, dim: int, dtype: str, rng) -> np.ndarray:
    """A `jina-clip embed` output of n random unit vectors (through the store that writes real ones)."""
    data = rng.standard_normal((n, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    store = EmbeddingStore(folder)
    settings = {"dims": dim, "dtype": dtype}
    store.open(settings)
    arrow = pa.float16() if dtype == "float16" else pa.float32()
    step = 2500
    for index, start in enumerate(range(0, n, step)):
        chunk = data[start : start + step]
        values = pa.array(chunk.astype(arrow.to_pandas_dtype()).ravel(), type=arrow)
        table = pa.table({"id": pa.array(np.arange(start, start + len(chunk))), "embedding": pa.FixedSizeListArray.from_arrays(values, dim)})
        store.write(ShardOutput(index, len(chunk), table, []))
    extra = {"model": "random", "revision": None, "dims": dim, "dtype": dtype, "embedding_columns": {"embedding": "image"}}
    assert store.finish(settings, n, -(-n // step), extra)["counts"]["embedded"] == n
    return data


def test_ann_recall_at_10_against_exact_search(tmp_path):
    rng = np.random.default_rng(0)
    _random_embeddings(tmp_path / "embeddings", 10_000, 128, "float32", rng)
    description = build_index(tmp_path / "embeddings", tmp_path / "index")
    assert description["ann"] == {"type": "IVF_HNSW_SQ", "metric": "cosine"} and description["rows"] == 10_000
    index = SearchIndex(tmp_path / "index")
    queries = rng.standard_normal((100, 128)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert "ANNSubIndex" in index.query(queries[0], k=10).explain_plan()  # the graph answers, not a scan
    assert "ANNSubIndex" not in index.query(queries[0], k=10, exact=True).explain_plan()
    recall = np.mean([
        len({h["id"] for h in index.search_vectors(q, k=10)} & {h["id"] for h in index.search_vectors(q, k=10, exact=True)}) / 10
        for q in queries
    ])
    assert recall >= 0.95, recall


def test_demo_search_rate_is_the_demo_retrieval_metric(demo_index, model):  # noqa: F811
    """The benchmark that quotes the demo model's search rate (benchmarks/demo_search.py) counts exactly what the
    evaluation metric (evaluation.metrics.image_text_retrieval, the demo's R@5) counts on encode_* outputs, and
    its language lists are the demo's."""
    from jina_clip_v2.benchmarks import demo_search
    from jina_clip_v2.evaluation.metrics import image_text_retrieval
    from jina_clip_v2.training.demo import HELDOUT_LANGS
    from jina_clip_v2.training.demo_data import DEMO_LANGS

    assert (demo_search.HELDOUT_LANGS, demo_search.TRAIN_LANGS) == (tuple(HELDOUT_LANGS), tuple(DEMO_LANGS))
    index = SearchIndex(demo_index / "index", model=model)
    table = read_shards(demo_index / "embeddings")
    ids = table.column("id").to_pylist()
    queries = demo_search.query_sets()["held-out languages"][::7]  # every 7th: ~570 captions in 8 languages
    captions = [caption for caption, _ in queries]
    found = [owner in {h["id"] for h in hits} for (_, owner), hits in zip(queries, index.search(captions, k=5, task=None))]
    expected = image_text_retrieval(vectors(table, "embedding"), model.encode_text(captions), [ids.index(o) for _, o in queries], ks=(5,))
    assert 100 * np.mean(found) == pytest.approx(expected["text_to_image_recall@5"], abs=1e-9)


def test_readme_embed_index_search_section_runs(model_dir, tmp_path, monkeypatch):  # noqa: F811
    """The README's section runs as written (the tiny model for the real one, its Matryoshka width 16 for 256)."""
    readme = (DEMO.parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Embed a corpus and search it", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jina-clip-v2-converted").symlink_to(model_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    outputs = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #", 1)[0].strip()
        if not line.startswith("jina-clip "):
            continue
        args = shlex.split(line.replace("--truncate-dim 256", "--truncate-dim 16").replace("data/tuxpaint", str(DEMO)))[1:]
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            assert cli_main(args + (["--no-progress"] if args[0] == "embed" else [])) == 0, line
        outputs.append(stdout.getvalue())
    assert len(outputs) >= 3 and any("Ein Frosch" in out or "grenouille" in out for out in outputs)
