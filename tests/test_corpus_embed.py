"""`jina-clip embed` (corpus/): the shards equal encode_image / encode_text on the bundled demo data, every input
kind reads the same rows, a SIGKILLed run resumes into the same files, bad rows land in the errors file, and a
2-process `accelerate launch` run writes the same files as one process. (Ray: tests/test_corpus_ray.py.)"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from _http import server  # noqa: F401 - the local image server fixture
from _notebook_model import export_tiny_model
from _tiny import ROOT
from _training import run_launch

from jina_clip_v2.corpus.embed import main as embed_main
from jina_clip_v2.corpus.run import embed_corpus
from jina_clip_v2.corpus.store import read_manifest

DEMO = ROOT / "data" / "tuxpaint"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("corpus_model") / "tiny")


@pytest.fixture(scope="module")
def model(model_dir):
    from jina_clip_v2.corpus.embedder import load_model

    return load_model(model_dir, device="cpu")


@pytest.fixture(scope="module")
def demo_rows() -> list[dict]:
    return [json.loads(line) for line in (DEMO / "captions.jsonl").read_text(encoding="utf-8").splitlines()]


def read_shards(folder: Path):
    """The rows of an embed output, in shard order, as one Arrow table."""
    import pyarrow as pa

    manifest = read_manifest(folder)
    return pa.concat_tables([pq.read_table(folder / name) for name in manifest["shards"]])


def vectors(table, column: str) -> np.ndarray:
    return np.stack(table.column(column).to_numpy(zero_copy_only=False)).astype(np.float32)


def output_files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@contextmanager
def torch_threads(count: int):
    """CPU matmuls split over another number of threads round differently (~1e-7): outputs are byte-identical
    between engines whose workers use the same number of threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embed_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jina_clip_v2.cli", "embed", *map(str, args), "--no-progress"]


# --------------------------------------------------------------------------------------------------
# Numbers: the shards hold encode_image / encode_text's embeddings
# --------------------------------------------------------------------------------------------------


def test_demo_data_equals_encode_image_and_encode_text(model_dir, model, demo_rows, tmp_path):
    out = tmp_path / "out"
    summary = embed_corpus(
        DEMO / "captions.jsonl", out, model_dir, image_column="image", text_column="en", id_column="id",
        keep=["category"], shard_size=128, progress=False,
    )
    assert summary["complete"] and summary["rows_embedded"] == len(demo_rows) == 498 and summary["rows_failed"] == 0
    table = read_shards(out)
    assert table.column_names == ["id", "category", "text_embedding", "image_embedding"]
    assert table.column("id").to_pylist() == [row["id"] for row in demo_rows]  # input order = id order
    assert table.column("category").to_pylist() == [row["category"] for row in demo_rows]
    images = model.encode_image([str(DEMO / row["image"]) for row in demo_rows], show_progress_bar=False)
    texts = model.encode_text([row["en"] for row in demo_rows], show_progress_bar=False)
    np.testing.assert_allclose(vectors(table, "image_embedding"), images, atol=1e-6, rtol=0)
    np.testing.assert_allclose(vectors(table, "text_embedding"), texts, atol=1e-6, rtol=0)
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["dims"] == 32 and manifest["normalized"] is True
    assert manifest["counts"] == {"rows": 498, "embedded": 498, "errors": 0, "shards": 4}
    assert manifest["revision"].startswith("sha256:") and manifest["embedding_columns"] == {"text_embedding": "text", "image_embedding": "image"}
    assert pq.read_schema(out / manifest["shards"][0]).field("image_embedding").type.list_size == 32

    # Queries: the instruction, a Matryoshka width and float16 storage, through the command line.
    queries = tmp_path / "queries"
    assert embed_main([str(DEMO / "captions.jsonl"), "--model", str(model_dir), "--out", str(queries), "--text-column", "captions.de",
                       "--task", "retrieval.query", "--truncate-dim", "16", "--dtype", "float16", "--no-progress"]) == 0
    table = read_shards(queries)
    assert table.column_names == ["id", "captions_de", "embedding"] and table.column("id").to_pylist() == list(range(498))
    assert str(table.schema.field("embedding").type.value_type) == "halffloat"
    expected = model.encode_text([row["captions"]["de"] for row in demo_rows], task="retrieval.query", truncate_dim=16)
    np.testing.assert_array_equal(vectors(table, "embedding"), expected.astype(np.float16).astype(np.float32))


def _image_files(folder: Path, demo_rows: list[dict], n: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for row in demo_rows[:n]:
        target = folder / ("sub" if len(paths) % 2 else "") / Path(row["image"]).name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes((DEMO / row["image"]).read_bytes())
        paths.append(target)
    return sorted(paths, key=lambda p: p.relative_to(folder).as_posix())


def test_every_input_kind_reads_the_same_rows(model_dir, model, demo_rows, tmp_path):
    """An image folder, a glob, CSV, Parquet, a webdataset tar, a Hub dataset repository (its layout, offline), a saved
    `datasets` dataset: each equals encode_* on its rows, in its order."""
    import datasets
    import pandas as pd

    n = 12
    folder_paths = _image_files(tmp_path / "images", demo_rows, n)
    expected_images = model.encode_image([str(p) for p in folder_paths], show_progress_bar=False)

    def run(source, name, **kwargs):
        out = tmp_path / f"out-{name}"
        embed_corpus(source, out, model_dir, shard_size=5, progress=False, **kwargs)
        return read_shards(out)

    table = run(tmp_path / "images", "folder")
    assert table.column("path").to_pylist() == [p.relative_to(tmp_path / "images").as_posix() for p in folder_paths]
    np.testing.assert_allclose(vectors(table, "embedding"), expected_images, atol=1e-6, rtol=0)
    table = run(str(tmp_path / "images" / "**" / "*.jpg"), "glob")
    jpgs = [p for p in folder_paths if p.suffix == ".jpg"]
    assert table.num_rows == len(jpgs)
    np.testing.assert_allclose(vectors(table, "embedding"), expected_images[[folder_paths.index(p) for p in jpgs]], atol=1e-6, rtol=0)

    rows = demo_rows[:n]
    texts = model.encode_text([row["captions"]["fr"] for row in rows], show_progress_bar=False)
    frame = pd.DataFrame({"key": [row["id"] for row in rows], "text": [row["captions"]["fr"] for row in rows],
                          "image": [str(DEMO / row["image"]) for row in rows]})
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.to_parquet(tmp_path / "rows.parquet")
    expected_demo = model.encode_image([str(DEMO / row["image"]) for row in rows], show_progress_bar=False)
    for name in ("rows.csv", "rows.parquet"):
        table = run(tmp_path / name, name, id_column="key")  # default columns: `text` and `image`
        assert table.column("id").to_pylist() == frame["key"].tolist()
        np.testing.assert_allclose(vectors(table, "text_embedding"), texts, atol=1e-6, rtol=0)
        np.testing.assert_allclose(vectors(table, "image_embedding"), expected_demo, atol=1e-6, rtol=0)

    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:  # webdataset: <key>.jpg + <key>.txt
        for row in rows:
            for suffix, data in ((".jpg", (DEMO / row["image"]).read_bytes()), (".txt", row["captions"]["fr"].encode())):
                info = tarfile.TarInfo(row["id"] + suffix)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    jpg_rows = [i for i, row in enumerate(rows) if row["image"].endswith(".jpg")]
    assert len(jpg_rows) == n  # the demo's JPEGs (a PNG in a tar would be a `png` column)
    table = run(tmp_path / "shard-000.tar", "tar", text_column="txt", image_column="jpg")
    assert table.column("__key__").to_pylist() == [row["id"] for row in rows]
    assert "jpg" not in table.column_names  # image bytes are not copied by default
    np.testing.assert_allclose(vectors(table, "image_embedding"), expected_demo, atol=1e-6, rtol=0)
    np.testing.assert_allclose(vectors(table, "text_embedding"), texts, atol=1e-6, rtol=0)

    # A dataset repository's layout (data/<split>-*.parquet), through the Hub code path (load_dataset(id, streaming)).
    (tmp_path / "hub-repo" / "data").mkdir(parents=True)
    frame.to_parquet(tmp_path / "hub-repo" / "data" / "train-00000-of-00001.parquet")
    table = run(str(tmp_path / "hub-repo"), "hub", input_kind="hub", id_column="key")
    np.testing.assert_allclose(vectors(table, "text_embedding"), texts, atol=1e-6, rtol=0)
    np.testing.assert_allclose(vectors(table, "image_embedding"), expected_demo, atol=1e-6, rtol=0)

    saved = datasets.Dataset.from_dict({"caption": [row["captions"]["fr"] for row in rows],
                                        "picture": [str(DEMO / row["image"]) for row in rows]})
    saved = saved.cast_column("picture", datasets.Image())  # stored as bytes, as datasets stores images
    saved.save_to_disk(tmp_path / "saved")
    table = run(tmp_path / "saved", "saved", text_column="caption", image_column="picture")
    np.testing.assert_allclose(vectors(table, "image_embedding"), expected_demo, atol=1e-6, rtol=0)
    np.testing.assert_allclose(vectors(table, "text_embedding"), texts, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# Bad rows, resume
# --------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_rows_go_to_the_errors_file(model_dir, model, demo_rows, tmp_path, server):  # noqa: F811
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 20)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((DEMO / demo_rows[1]["image"]).read_bytes()[:200])
    good = [str(DEMO / row["image"]) for row in demo_rows[:4]]
    rows = [
        {"text": "a frog", "image": good[0]},
        {"text": "", "image": good[1]},                                                # empty text
        {"text": "a crow", "image": str(corrupt)},                                     # undecodable
        {"text": "   ", "image": good[2]},                                             # blank text
        {"text": "gone", "image": f"http://127.0.0.1:{_closed_port()}/dead.jpg"},      # nobody listens
        {"text": "a 404", "image": f"{server}/missing.png"},                           # the server says no
        {"text": "from the server", "image": f"{server}/ok.png"},
        {"text": None, "image": good[3]},                                              # missing text
        {"text": "a cut file", "image": str(truncated)},                               # truncated PNG
        {"text": "no image", "image": None},
        {"text": "a file that is not there", "image": str(tmp_path / "absent.jpg")},
        {"text": "last", "image": good[3]},
    ]
    out = tmp_path / "out"
    summary = embed_corpus(write_jsonl(tmp_path / "bad.jsonl", rows), out, model_dir, shard_size=5, progress=False)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(e["row"], e["column"]) for e in errors] == [
        (1, "text"), (2, "image"), (3, "text"), (4, "image"), (5, "image"), (7, "text"), (8, "image"), (9, "image"), (10, "image"),
    ]
    by_row = {e["row"]: e for e in errors}
    assert by_row[1]["error"] == "empty text" and by_row[7]["error"] == "missing text" and by_row[9]["error"].endswith("missing image")
    assert "dead.jpg" in by_row[4]["error"] and by_row[4]["input"].endswith("/dead.jpg")
    assert "404" in by_row[5]["error"] and "FileNotFoundError" in by_row[10]["error"]
    assert all(e["id"] == e["row"] for e in errors)
    assert summary["rows_embedded"] == 3 and summary["rows_failed"] == 9
    table = read_shards(out)
    assert table.column("id").to_pylist() == [0, 6, 11]
    expected = model.encode_image([good[0], f"{server}/ok.png", good[3]], show_progress_bar=False)
    np.testing.assert_allclose(vectors(table, "image_embedding"), expected, atol=1e-6, rtol=0)
    assert read_manifest(out)["counts"] == {"rows": 12, "embedded": 3, "errors": 9, "shards": 3}
    assert (out / "shards" / "shard-00000.errors.jsonl").is_file()


def test_sigkill_then_rerun_gives_the_same_files(model_dir, demo_rows, tmp_path):
    """A run killed (SIGKILL) in the middle, then the same command again: the same files as a run never
    interrupted, and the rerun embeds only the shards the killed run had not finished."""
    rows = [{"text": row["captions"]["en"], "image": str(DEMO / row["image"])} for row in demo_rows[:240]]
    rows[7]["image"] = str(tmp_path / "absent.jpg")  # an error row too
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    settings = {"shard_size": 10, "batch_size": 8, "progress": False}
    reference = tmp_path / "reference"
    embed_corpus(source, reference, model_dir, **settings)

    out = tmp_path / "killed"
    command = embed_command(source, "--out", out, "--model", model_dir, "--shard-size", "10", "--batch-size", "8")
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(list((out / "shards").glob("shard-*.parquet"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
    finished = {p.name for p in (out / "shards").glob("shard-*.parquet")}
    assert 3 <= len(finished) < 24 and not read_manifest(out)["complete"]

    summary = embed_corpus(source, out, model_dir, **settings)  # the same command again
    assert summary["shards_already_done"] == len(finished) and summary["shards_written"] == 24 - len(finished)
    assert output_files(out) == output_files(reference)  # no temporary file left, every byte the same
    assert read_manifest(out)["counts"] == {"rows": 240, "embedded": 239, "errors": 1, "shards": 24}

    # Other settings are refused (never mixed into these shards); --overwrite starts afresh.
    with pytest.raises(ValueError, match=r"other settings \(dims, truncate_dim differ\).*--overwrite"):
        embed_corpus(source, out, model_dir, truncate_dim=16, **settings)
    assert output_files(out) == output_files(reference)


def test_two_process_accelerate_launch_writes_the_same_files(model_dir, demo_rows, tmp_path):
    """`accelerate launch` with 2 CPU processes (torchrun, as training/accelerate/cpu_2proc.yaml): each process
    embeds every other shard; the output equals a single process's."""
    rows = [{"text": row["captions"]["ja"], "image": str(DEMO / row["image"])} for row in demo_rows[:60] if "ja" in row["captions"]]
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    args = ("--model", model_dir, "--shard-size", "7")
    single = tmp_path / "single"
    with torch_threads(1):  # as each launched process (torchrun: OMP_NUM_THREADS=1): the same kernels, the same bits
        embed_corpus(source, single, model_dir, shard_size=7, progress=False)
    launch_env = {**ENV, "ACCELERATE_USE_CPU": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "jina_clip_v2.cli", "embed", str(source), "--out", str(tmp_path / "two"), *map(str, args), "--no-progress", "--json",
    ]
    done = run_launch(launch, cwd=None, env=launch_env, output_dir=tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["process"] for s in summaries) == ["1/2", "2/2"]
    assert sorted(s["shards_written"] for s in summaries) == [4, 5]  # 9 shards, every other one
    assert output_files(tmp_path / "two") == output_files(single)
    # With 2 threads (this process's default) the numbers differ by float rounding only.
    embed_corpus(source, tmp_path / "threads", model_dir, shard_size=7, progress=False)
    np.testing.assert_allclose(
        vectors(read_shards(tmp_path / "threads"), "image_embedding"), vectors(read_shards(single), "image_embedding"), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["embed", "/nonexistent/photos", "--model", "{model}", "--out", "{tmp}/o"], "no such file or folder: '/nonexistent/photos'"),
        (["embed", "{tmp}/rows.jsonl", "--model", "{model}", "--out", "{tmp}/o"], "choose the column(s) to embed"),
        (["embed", "{tmp}/rows.jsonl", "--model", "{model}", "--out", "{tmp}/o", "--text-column", "txt"], "no column 'txt'"),
        (["embed", "{tmp}/rows.jsonl", "--model", "{model}", "--out", "{tmp}/o", "--text-column", "caption",
          "--truncate-dim", "12"], "truncate_dim=12 is not supported; valid values: [8, 16, 32]"),
        (["embed", "{tmp}/rows.jsonl", "--model", "{model}", "--out", "{tmp}/rows.jsonl", "--text-column", "caption"], "is not a folder"),
        (["index", "{tmp}", "--out", "{tmp}/index"], "is not the output of `jina-clip embed`"),
        (["search", "{tmp}", "a query"], "is not an index of `jina-clip index`"),
    ],
)
def test_command_errors_are_one_line(args, message, model_dir, tmp_path, capsys):
    from jina_clip_v2.cli import main as cli_main

    write_jsonl(tmp_path / "rows.jsonl", [{"caption": "a frog", "label": 1}])
    assert cli_main([arg.format(tmp=tmp_path, model=model_dir) for arg in args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len([line for line in err.splitlines() if "error:" in line]) == 1, err
