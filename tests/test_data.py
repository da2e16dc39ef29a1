"""training.data: streamed, interleaved, sharded and exactly resumable batches for the four data kinds, from
parquet, jsonl, webdataset shards and a Hub-layout folder; and training.demo_data's sources."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import build_processor, build_tokenizer  # noqa: E402  (also puts the repo on sys.path)
from jina_clip_v2.training.data import SourceConfig, TaskDataConfig, build_task_stream
from jina_clip_v2.training.images import image_from_record, random_resized_crop_box

pytest.importorskip("datasets")

IMAGE_SIZE = 28
WORDS = (
    "a frog cat dog red big small house tree car boat with the on in of bird fish apple green blue "
    "old new water under over little black white train plane flower"
).split()


@pytest.fixture(scope="module", autouse=True)
def _fast_parquet_shutdown():
    # datasets sleeps 5 s whenever a multi-source/-shard iterator over parquet ends or is dropped (a
    # workaround for apache/arrow#45214, a hang at thread-pool shutdown). Harmless once per epoch in real
    # training, but it would dominate these tests, which drop many short-lived streams.
    from datasets import config

    saved = config.SLEEP_TIME_ON_THREADS_SHUTDOWN
    config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.05
    yield
    config.SLEEP_TIME_ON_THREADS_SHUTDOWN = saved


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer(), image_size=IMAGE_SIZE)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _image_bytes(i: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(i)
    w, h = 24 + (i * 7) % 30, 20 + (i * 5) % 26
    channels = 4 if mode == "RGBA" else 3
    image = Image.fromarray(rng.integers(0, 256, (h, w, channels), dtype=np.uint8), mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _write_parquet(path: Path, rows: list[dict], image_column: str | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    if image_column:  # declare it a datasets Image column, as datasets' own writers do
        from datasets import Features

        features = Features.from_arrow_schema(table.schema)
        from datasets import Image as HFImage

        features[image_column] = HFImage()
        table = table.cast(features.arrow_schema).replace_schema_metadata(
            {b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()}
        )
    pq.write_table(table, path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    pairs = [{"q": f"q{i} " + _sentence(rng, 1 + i % 12), "d": f"d{i} " + _sentence(rng, 2 + i % 30)} for i in range(40)]
    _write_jsonl(root / "pairs.jsonl", pairs)
    _write_parquet(root / "pairs.parquet", [{"query": p["q"], "document": p["d"]} for p in pairs])
    triplets = [
        {
            "query": f"t{i} " + _sentence(rng, 3),
            "positive": f"p{i} " + _sentence(rng, 5),
            "negatives": [f"n{i}.{j} " + _sentence(rng, 1 + j) for j in range(8)],
        }
        for i in range(30)
    ]
    _write_jsonl(root / "triplets.jsonl", triplets)
    _write_parquet(root / "triplets.parquet", triplets)
    (root / "images").mkdir()
    captions = [f"c{i} " + _sentence(rng, 2 + i % 9) for i in range(30)]
    for i in range(30):
        (root / "images" / f"{i:03d}.png").write_bytes(_image_bytes(i, "PNG", "RGBA" if i % 3 == 0 else "RGB"))
    _write_jsonl(root / "image_text.jsonl", [{"image": f"images/{i:03d}.png", "caption": c} for i, c in enumerate(captions)])
    _write_parquet(
        root / "image_text.parquet",
        [{"image": {"bytes": _image_bytes(100 + i), "path": None}, "caption": c} for i, c in enumerate(captions)],
        image_column="image",
    )
    _write_parquet(root / "image_plain.parquet", [{"img": _image_bytes(200 + i), "text": c} for i, c in enumerate(captions)])
    (root / "wds").mkdir()
    for shard in range(2):
        _write_tar(
            root / "wds" / f"shard-{shard:06d}.tar",
            [(f"s{shard}-{i:03d}", {"jpg": _image_bytes(300 + 15 * shard + i), "txt": captions[15 * shard + i].encode()}) for i in range(15)],
        )
    _write_tar(
        root / "wds_json.tar",
        [(f"j{i:03d}", {"png": _image_bytes(400 + i, "PNG"), "json": json.dumps({"caption": c, "id": i}).encode()}) for i, c in enumerate(captions)],
    )
    return root


def _source(data_dir: Path, name: str) -> SourceConfig:
    return {
        "pairs_jsonl": SourceConfig(str(data_dir / "pairs.jsonl"), format="jsonl", columns={"query": "q", "document": "d"}),
        "pairs_parquet": SourceConfig(str(data_dir / "pairs.parquet")),
        "triplets_jsonl": SourceConfig(str(data_dir / "triplets.jsonl"), format="json"),
        "triplets_parquet": SourceConfig(str(data_dir / "triplets.parquet"), format="parquet"),
        "image_jsonl": SourceConfig(str(data_dir / "image_text.jsonl")),
        "image_parquet": SourceConfig(str(data_dir / "image_text.parquet")),
        "image_plain_parquet": SourceConfig(str(data_dir / "image_plain.parquet"), columns={"image": "img", "caption": "text"}),
        "image_wds": SourceConfig(str(data_dir / "wds" / "*.tar"), format="webdataset"),
        "image_wds_json": SourceConfig(str(data_dir / "wds_json.tar")),
    }[name]


def _stream(data_dir, processor, kind, names, batch_size=6, weights=None, **kwargs):
    sources = [_source(data_dir, n) for n in names]
    for source, weight in zip(sources, weights or [1.0] * len(sources)):
        source.weight = weight
    options = {k: kwargs.pop(k) for k in ("rank", "world_size", "train", "epochs", "exact_resume", "keep_raw", "num_threads") if k in kwargs}
    cfg = TaskDataConfig(kind=kind, sources=sources, batch_size=batch_size, image_size=IMAGE_SIZE, shuffle_buffer=kwargs.pop("shuffle_buffer", 16), **kwargs)
    return build_task_stream(cfg, processor, **options)


def _assert_same(a, b, where="batch"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif hasattr(a, "keys"):
        assert set(a.keys()) == set(b.keys()), where
        for key in a.keys():
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _check_encoding(encoding, texts, tokenizer, max_length):
    assert set(encoding.keys()) == {"input_ids", "attention_mask"}
    expected = tokenizer(texts, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    assert torch.equal(encoding["input_ids"], expected["input_ids"])
    assert torch.equal(encoding["attention_mask"], expected["attention_mask"])
    assert encoding["input_ids"].shape[1] <= max_length
    assert encoding["attention_mask"][:, -1].any(), "padded to the longest row, not beyond"


# --------------------------------------------------------------------------------------------------------
# Every kind from every format


@pytest.mark.parametrize(
    "kind,names",
    [
        ("text_pairs", ["pairs_jsonl"]),
        ("text_pairs", ["pairs_parquet"]),
        ("text_triplets", ["triplets_jsonl"]),
        ("text_triplets", ["triplets_parquet"]),
        ("image_text_short", ["image_parquet"]),
        ("image_text_short", ["image_plain_parquet"]),
        ("image_text_short", ["image_jsonl"]),
        ("image_text_short", ["image_wds"]),
        ("image_text_long", ["image_wds_json"]),
    ],
)
def test_kinds_and_formats(data_dir, processor, kind, names):
    max_length = 64 if kind == "image_text_long" else 8
    stream = _stream(data_dir, processor, kind, names, batch_size=5, keep_raw=True, max_length=max_length)
    tok = processor.tokenizer
    for _ in range(3):
        batch = next(stream)
        raw = batch["raw"]
        assert len(raw) == 5
        if kind == "text_pairs":
            assert set(batch) == {"query", "document", "raw"}
            assert all(r["query"].startswith("q") and r["document"].startswith("d") for r in raw)
            assert [r["query"][1:].split()[0] for r in raw] == [r["document"][1:].split()[0] for r in raw]
            _check_encoding(batch["query"], [r["query"] for r in raw], tok, max_length)
            _check_encoding(batch["document"], [r["document"] for r in raw], tok, max_length)
        elif kind == "text_triplets":
            assert set(batch) == {"query", "document", "negatives", "num_negatives", "raw"}
            assert batch["num_negatives"] == 7
            assert batch["negatives"]["input_ids"].shape[0] == 5 * 7
            for r in raw:
                i = r["query"].split()[0][1:]
                assert r["positive"].startswith(f"p{i} ")
                assert [n.split()[0] for n in r["negatives"]] == [f"n{i}.{j}" for j in range(7)]  # 8th dropped
            _check_encoding(batch["document"], [r["positive"] for r in raw], tok, max_length)
            # row-major: query i's negatives are rows i*K .. i*K+K-1
            _check_encoding(batch["negatives"], [n for r in raw for n in r["negatives"]], tok, max_length)
        else:
            assert set(batch) == {"pixel_values", "caption", "raw"}
            pixels = batch["pixel_values"]
            assert pixels.shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE) and pixels.dtype == torch.float32
            assert torch.isfinite(pixels).all() and pixels.std() > 0.1
            assert all(r["caption"].startswith("c") for r in raw)
            _check_encoding(batch["caption"], [r["caption"] for r in raw], tok, max_length)
    assert not stream.skipped


def test_long_captions_keep_max_length_tokens(data_dir, processor):
    short = next(_stream(data_dir, processor, "image_text_short", ["image_wds"], max_length=6, shuffle_buffer=0))
    long = next(_stream(data_dir, processor, "image_text_long", ["image_wds"], max_length=512, shuffle_buffer=0))
    assert short["caption"]["input_ids"].shape[1] == 6
    assert long["caption"]["input_ids"].shape[1] > 6
    assert torch.equal(short["pixel_values"], long["pixel_values"])  # same seeds, same crops


def test_missing_column_is_a_clear_error(data_dir, processor):
    source = SourceConfig(str(data_dir / "pairs.jsonl"))  # columns q/d are not mapped
    stream = build_task_stream(TaskDataConfig("text_pairs", [source], batch_size=2), processor)
    with pytest.raises(KeyError, match="SourceConfig.columns"):
        next(stream)


def test_triplet_with_too_few_negatives_is_skipped(tmp_path, processor):
    rows = [{"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{j}" for j in range(7 if i != 2 else 3)]} for i in range(6)]
    _write_jsonl(tmp_path / "t.jsonl", rows)
    cfg = TaskDataConfig("text_triplets", [SourceConfig(str(tmp_path / "t.jsonl"))], batch_size=5, shuffle_buffer=0)
    stream = build_task_stream(cfg, processor, keep_raw=True)
    batch = next(stream)
    assert [r["query"] for r in batch["raw"]] == ["q0", "q1", "q3", "q4", "q5"]
    assert stream.skipped == {"too_few_negatives": 1}


# --------------------------------------------------------------------------------------------------------
# Resume


def test_datasets_state_dict_is_not_exact_with_a_shuffle_buffer(data_dir):
    """Why TaskStream resumes by replay: datasets' own state loses the shuffle buffer's content."""
    from datasets import load_dataset

    def make(buffer):
        ds = load_dataset("json", data_files=str(data_dir / "pairs.jsonl"), split="train", streaming=True)
        return ds.shuffle(seed=0, buffer_size=buffer) if buffer else ds

    for buffer, exact in ((0, True), (16, False)):
        ds = make(buffer)
        iterator = iter(ds)
        head = [next(iterator)["q"] for _ in range(10)]
        state = ds.state_dict()
        rest = [x["q"] for x in iterator]
        resumed = make(buffer)
        resumed.load_state_dict(state)
        assert ([x["q"] for x in resumed] == rest) is exact
        assert len(head) == 10


RESUME_CASES = {  # kind, sources, options, batches after the checkpoint (enough to cross into epoch 1)
    "jsonl_pairs": ("text_pairs", ["pairs_jsonl"], {}, 8),
    "parquet_triplets": ("text_triplets", ["triplets_parquet"], {}, 6),
    "webdataset_images": ("image_text_short", ["image_wds"], {}, 6),
    "interleaved_images": ("image_text_long", ["image_parquet", "image_jsonl"], {"weights": [1.0, 1.0]}, 22),
    "rank1_of_2_pairs": ("text_pairs", ["pairs_parquet"], {"rank": 1, "world_size": 2}, 4),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_is_exact(data_dir, processor, case):
    kind, names, kwargs, n_after = RESUME_CASES[case]
    make = lambda: _stream(data_dir, processor, kind, names, batch_size=4, **kwargs)  # noqa: E731
    n_before = 3
    reference = [next(s) for s in [make()] for _ in range(n_before + n_after)]

    first = make()
    for _ in range(n_before):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # JSON-serialisable
    assert state["epoch"] == 0 and state["consumed"] >= n_before * 4

    resumed = make()
    resumed.load_state_dict(state)
    after = [next(resumed) for _ in range(n_after)]
    _assert_same(reference[n_before:], after)
    assert resumed.epoch >= 1, "the resumed tail should cross into the next epoch"


def test_resume_mid_second_epoch_and_with_threads(data_dir, processor):
    make = lambda **kw: _stream(data_dir, processor, "image_text_short", ["image_plain_parquet"], batch_size=7, **kw)  # noqa: E731
    reference = [next(s) for s in [make()] for _ in range(12)]
    first = make()
    for _ in range(6):
        next(first)
    state = first.state_dict()
    assert state["epoch"] == 1
    resumed = make(num_threads=3)
    resumed.load_state_dict(state)
    _assert_same(reference[6:], [next(resumed) for _ in range(6)])


def test_native_resume_without_shuffle_is_exact(data_dir, processor):
    make = lambda: _stream(data_dir, processor, "text_pairs", ["pairs_jsonl", "pairs_parquet"], shuffle_buffer=0, exact_resume=False)  # noqa: E731
    reference = [next(s) for s in [make()] for _ in range(6)]
    first = make()
    for _ in range(3):
        next(first)
    state = first.state_dict()
    assert state["resume"] == "datasets" and "datasets_state" in state
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    _assert_same(reference[3:], [next(resumed) for _ in range(3)])


def test_epochs_reshuffle_and_cover_the_data(data_dir, processor):
    stream = _stream(data_dir, processor, "text_pairs", ["pairs_jsonl"], batch_size=8, keep_raw=True)
    epochs = [[r["query"] for _ in range(5) for r in next(stream)["raw"]] for _ in range(2)]  # 40 rows = 5 batches
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == 40
    assert epochs[0] != epochs[1]
    assert (stream.epoch, stream.consumed) == (1, 40)  # the next epoch starts on the next batch
    next(stream)
    assert (stream.epoch, stream.consumed) == (2, 8)


def test_eval_stream_is_one_ordered_pass(data_dir, processor):
    stream = _stream(data_dir, processor, "text_pairs", ["pairs_parquet"], batch_size=16, train=False, keep_raw=True)
    batches = list(stream)
    assert [len(b["raw"]) for b in batches] == [16, 16, 8]
    assert [r["query"].split()[0] for b in batches for r in b["raw"]] == [f"q{i}" for i in range(40)]


# --------------------------------------------------------------------------------------------------------
# Interleaving and sharding


def test_interleaving_follows_weights(tmp_path, processor):
    for name in ("a", "b"):
        _write_jsonl(tmp_path / f"{name}.jsonl", [{"query": f"{name}{i}", "document": "x"} for i in range(4000)])
    sources = [SourceConfig(str(tmp_path / "a.jsonl"), weight=3.0), SourceConfig(str(tmp_path / "b.jsonl"), weight=1.0)]
    cfg = TaskDataConfig("text_pairs", sources, batch_size=250, max_length=4, shuffle_buffer=64, seed=1)
    stream = build_task_stream(cfg, processor, keep_raw=True)
    origins = [r["_source"] for _ in range(12) for r in next(stream)["raw"]]
    share = origins.count(0) / len(origins)
    assert abs(share - 0.75) < 0.03, share


@pytest.mark.parametrize("names", [["pairs_jsonl"], ["pairs_parquet", "triplets_parquet"]], ids=["examples", "shards"])
def test_split_by_node_is_disjoint(data_dir, processor, tmp_path, names):
    if len(names) == 2:  # two parquet shards of the same pairs: split_dataset_by_node assigns whole shards
        import pyarrow.parquet as pq

        table = pq.read_table(data_dir / "pairs.parquet")
        (tmp_path / "shards").mkdir()
        pq.write_table(table.slice(0, 20), tmp_path / "shards" / "part-0.parquet")
        pq.write_table(table.slice(20), tmp_path / "shards" / "part-1.parquet")
        source = SourceConfig(str(tmp_path / "shards" / "*.parquet"))
    else:
        source = _source(data_dir, names[0])
    seen = []
    for rank in range(2):
        cfg = TaskDataConfig("text_pairs", [source], batch_size=3, shuffle_buffer=8)
        stream = build_task_stream(cfg, processor, rank=rank, world_size=2, epochs=1, keep_raw=True)
        seen.append([r["query"] for b in stream for r in b["raw"]])
    assert seen[0] and seen[1]
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == 40 and len(set(seen[0]) | set(seen[1])) == 40


# --------------------------------------------------------------------------------------------------------
# Images


def test_image_size_and_max_length_switch(data_dir, processor):
    stream = _stream(data_dir, processor, "image_text_short", ["image_parquet"], batch_size=3)
    assert next(stream)["pixel_values"].shape[-1] == IMAGE_SIZE
    stream.set_image_size(42)
    stream.set_max_length(4)
    batch = next(stream)
    assert batch["pixel_values"].shape == (3, 3, 42, 42)
    assert batch["caption"]["input_ids"].shape[1] <= 4
    state = stream.state_dict()
    assert state["image_size"] == 42 and state["max_length"] == 4
    resumed = _stream(data_dir, processor, "image_text_short", ["image_parquet"], batch_size=3)
    resumed.load_state_dict(state)
    _assert_same(next(stream), next(resumed))

    evaluation = _stream(data_dir, processor, "image_text_short", ["image_parquet"], batch_size=3, train=False)
    evaluation.set_image_size(35)
    assert next(evaluation)["pixel_values"].shape == (3, 3, 35, 35)


def test_eval_pixels_are_the_processors(data_dir, processor):
    stream = _stream(data_dir, processor, "image_text_short", ["image_jsonl"], batch_size=4, train=False)
    images = [image_from_record(str(data_dir / "images" / f"{i:03d}.png")) for i in range(4)]
    expected = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(next(stream)["pixel_values"], expected, atol=1e-6)


def test_train_pixels_are_a_normalised_random_resized_crop(data_dir, processor):
    stream = _stream(data_dir, processor, "image_text_short", ["image_jsonl"], batch_size=4, shuffle_buffer=0)
    pixels = next(stream)["pixel_values"]
    ip = processor.image_processor
    mean, std = torch.tensor(ip.image_mean).view(3, 1, 1), torch.tensor(ip.image_std).view(3, 1, 1)
    for i in range(4):
        image = image_from_record(str(data_dir / "images" / f"{i:03d}.png"))
        top, left, h, w = random_resized_crop_box(image.width, image.height, random.Random(f"0:0:0:{i}"))
        crop = image.crop((left, top, left + w, top + h)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        expected = (torch.from_numpy(np.asarray(crop, dtype=np.float32)).permute(2, 0, 1) / 255 - mean) / std
        assert torch.allclose(pixels[i], expected, atol=1e-5)
    # a crop differs from the eval centre crop, and an epoch later the same image is cropped anew
    evaluation = next(_stream(data_dir, processor, "image_text_short", ["image_jsonl"], batch_size=4, train=False))
    assert not torch.allclose(pixels, evaluation["pixel_values"], atol=1e-3)


def test_random_resized_crop_box_follows_the_release_ranges():
    rng = random.Random(0)
    for _ in range(500):
        width, height = rng.randint(20, 400), rng.randint(20, 400)
        top, left, h, w = random_resized_crop_box(width, height, rng)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        if width / height <= 4 / 3 and height / width <= 4 / 3:
            assert 0.85 <= (h * w) / (height * width) <= 1.0
    assert random_resized_crop_box(300, 200, random.Random(5)) == random_resized_crop_box(300, 200, random.Random(5))


def test_transparency_follows_the_processor_options(processor):
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.putpixel((0, 0), (0, 0, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    rgb = image_from_record(buffer.getvalue())  # the release's decoding: the colour under transparent pixels stays
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 0, 0) and rgb.getpixel((0, 0)) == (0, 0, 255)
    image_processor = processor.image_processor
    image_processor.alpha_background = [255, 255, 255]
    try:
        on_white = image_from_record(buffer.getvalue(), image_processor=image_processor)
        assert on_white.getpixel((1, 1)) == (255, 255, 255) and on_white.getpixel((0, 0)) == (0, 0, 255)
        assert image_from_record(image.convert("PA"), image_processor=image_processor).getpixel((1, 1)) == (255, 255, 255)
    finally:
        image_processor.alpha_background = None


def test_corrupt_images_are_skipped_and_counted(tmp_path, processor, caplog):
    good = _image_bytes(1)
    rows = [
        {"image": {"bytes": good, "path": None}, "caption": "ok 0"},
        {"image": {"bytes": b"not an image", "path": None}, "caption": "bad 1"},
        {"image": {"bytes": good, "path": None}, "caption": "ok 2"},
        {"image": {"bytes": good[: len(good) // 2], "path": None}, "caption": "truncated 3"},
        {"image": {"bytes": None, "path": str(tmp_path / "missing.jpg")}, "caption": "missing file 4"},
        {"image": {"bytes": good, "path": None}, "caption": "ok 5"},
        {"image": {"bytes": good, "path": None}, "caption": "ok 6"},
    ]
    _write_parquet(tmp_path / "c.parquet", rows, image_column="image")
    cfg = TaskDataConfig("image_text_short", [SourceConfig(str(tmp_path / "c.parquet"))], batch_size=4, image_size=IMAGE_SIZE, shuffle_buffer=0)
    stream = build_task_stream(cfg, processor, keep_raw=True)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        batch = next(stream)
    assert [r["caption"] for r in batch["raw"]] == ["ok 0", "ok 2", "ok 5", "ok 6"]
    assert batch["pixel_values"].shape[0] == 4
    assert stream.skipped == {"corrupt_image": 3}
    assert stream.state_dict()["skipped"] == {"corrupt_image": 3}
    assert sum("corrupt_image" in r.getMessage() for r in caplog.records) == 3


# --------------------------------------------------------------------------------------------------------
# Hub layout and the demo sources


def test_hub_layout_folder(tmp_path, processor, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "org__tiny-pairs"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.parquet\n"
        "  - split: test\n    path: data/test-*.parquet\n---\n# tiny pairs\n",
        encoding="utf-8",
    )
    _write_parquet(repo / "data" / "train-00000-of-00001.parquet", [{"query": f"q{i}", "document": f"d{i}"} for i in range(12)])
    _write_parquet(repo / "data" / "test-00000-of-00001.parquet", [{"query": "tq", "document": "td"}])
    train = build_task_stream(TaskDataConfig("text_pairs", [SourceConfig(str(repo))], batch_size=12, shuffle_buffer=0), processor, keep_raw=True)
    assert [r["query"] for r in next(train)["raw"]] == [f"q{i}" for i in range(12)]
    test = build_task_stream(TaskDataConfig("text_pairs", [SourceConfig(str(repo), split="test")], batch_size=4), processor, train=False, keep_raw=True)
    assert [r["query"] for b in test for r in b["raw"]] == ["tq"]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_demo_sources_build_and_stream(tmp_path, processor):
    from jina_clip_v2.training.demo_data import heldout_eval_set, load_split, write_demo_sources

    sources = write_demo_sources(tmp_path / "a", langs=["en", "de", "fr"])
    write_demo_sources(tmp_path / "b", langs=["en", "de", "fr"])
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b"), "deterministic"
    inode = (tmp_path / "a" / "image_text.parquet").stat().st_ino
    write_demo_sources(tmp_path / "a", langs=["en", "de", "fr"])  # identical files are left in place
    assert (tmp_path / "a" / "image_text.parquet").stat().st_ino == inode
    assert set(sources) == {"image_text_short", "image_text_long", "image_text_webdataset", "text_pairs", "text_triplets"}

    kinds = {"image_text_webdataset": "image_text_short"}
    batches = {}
    for key, source in sources.items():
        kind = kinds.get(key, key)
        cfg = TaskDataConfig(kind, [source], batch_size=4, image_size=IMAGE_SIZE, max_length=512 if "long" in key else 77, shuffle_buffer=32)
        batches[key] = next(build_task_stream(cfg, processor, keep_raw=True))
    assert batches["image_text_short"]["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    short = [r["caption"] for r in batches["image_text_short"]["raw"]]
    long = [r["caption"] for r in batches["image_text_long"]["raw"]]
    assert [x.startswith(y) for x, y in zip(long, short)] == [True] * 4 and all(len(x) > len(y) for x, y in zip(long, short))

    train_ids = {r["id"] for r in load_split("train")}
    with open(sources["text_triplets"].path, encoding="utf-8") as handle:
        triplets = [json.loads(line) for line in handle]
    assert triplets and all(len(t["negatives"]) == 7 for t in triplets)
    assert all(t["positive"] not in t["negatives"] and t["query"] != t["positive"] for t in triplets)
    assert {t["id"] for t in triplets} <= train_ids
    with open(sources["text_pairs"].path, encoding="utf-8") as handle:
        pairs = [json.loads(line) for line in handle]
    assert {(p["lang_query"], p["lang_document"]) for p in pairs} >= {("en", "de"), ("en", "fr")}

    images, entries = heldout_eval_set("test", langs=["en", "de"])
    test_records = load_split("test")
    assert len(images) == len(test_records) and not {r["id"] for r in test_records} & train_ids
    assert all(im.mode == "RGB" for im in images)
    assert {lang for _, _, lang in entries} == {"en", "de"}
    assert all(0 <= index < len(images) and test_records[index]["captions"][lang] == caption for caption, index, lang in entries)
