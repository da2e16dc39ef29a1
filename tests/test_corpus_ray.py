"""`jina-clip embed --engine ray` on a local Ray cluster this module starts (2 CPUs, no dashboard, localhost only):
the same files as the default engine, and a rerun resumes."""

from __future__ import annotations

import json
import shutil

import pytest

ray = pytest.importorskip("ray")

from test_corpus_embed import DEMO, model_dir, output_files, read_shards, torch_threads, write_jsonl  # noqa: E402,F401

from jina_clip_v2.corpus.run import embed_corpus  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: 2 CPUs, no dashboard, bound to 127.0.0.1, no usage report."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def test_ray_engine_writes_the_default_engines_files(cluster, model_dir, tmp_path):  # noqa: F811
    rows = [json.loads(line) for line in (DEMO / "captions.jsonl").read_text(encoding="utf-8").splitlines()][:45]
    source = write_jsonl(tmp_path / "rows.jsonl", [
        {"key": row["id"], "text": row["captions"].get("zh-cn", ""), "image": str(DEMO / row["image"])} for row in rows
    ])
    settings = {"id_column": "key", "shard_size": 6, "progress": False}
    local = tmp_path / "local"
    with torch_threads(1):  # a Ray actor with one CPU computes with one thread
        embed_corpus(source, local, model_dir, **settings)
    # One Ray run (its workers' start-up is the cost here) that also resumes: 2 of the 8 shards are there already.
    out = tmp_path / "ray"
    shutil.copytree(local, out)
    for path in (out / "shards").iterdir():
        if not path.name.startswith(("shard-00001.", "shard-00004.")):  # a shard's Parquet and errors files
            path.unlink()
    summary = embed_corpus(source, out, model_dir, engine="ray", workers=2, **settings)
    assert summary["complete"] and summary["ray_workers"] == 2
    assert summary["shards_already_done"] == 2 and summary["shards_written"] == 6
    assert output_files(out) == output_files(local)  # every byte
    assert read_shards(out).column("id").to_pylist() == [row["id"] for row in rows if row["captions"].get("zh-cn")]
    errors = (out / "errors.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(errors) == sum(not row["captions"].get("zh-cn") for row in rows) > 0  # no zh-cn caption: empty text
