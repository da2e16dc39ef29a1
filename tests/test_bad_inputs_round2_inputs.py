"""The bad-input battery, round two (issue 20), what is read: memory bombs through the image resize and the decoder,
each case with a peak-memory bound (resident memory the case added, Linux: VmHWM after minus VmRSS before,
tracemalloc elsewhere); config values outside sane ranges; training data that is damaged, huge, outside its image
root or behind stalling URLs. What the first round (tests/test_bad_inputs.py, whose `Case` table this file shares)
left open; the shared context and runner are tests/_bad_inputs_round2.py, the tools' cases
tests/test_bad_inputs_round2_tools.py.

Each case asserts a clear error (its type and a message that names the problem) or the correct result."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _bad_inputs_round2 import MiB, WEBP_12000, battery, bounded, check_battery, ctx, png_bytes, run_case  # noqa: F401 - ctx is a fixture
from _http import server  # noqa: F401 - a fixture ctx uses
from _release_transform import release_transform
from _tiny import ROOT, build_processor, build_tokenizer, tiny_config, tiny_model
from test_bad_inputs import Case, ImageLoadError
from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel
from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor


def _processor(size: int, **options) -> JinaCLIPImageProcessor:
    return JinaCLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **options)


# ----------------------------------------------------------------------------------------------------------
# Image decode and resize bounds (memory: peak under a bound; the old path needed 0.35 - 18 GB)
# ----------------------------------------------------------------------------------------------------------


def _thin_image_matches_release(c, width: int, height: int, size: int):
    """The over-elongated path (cut before the resize) against the release's full resize + crop (the oracle)."""
    data = png_bytes(width, height, seed=width + height)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    ours = _processor(size)(images=data, return_tensors="pt")["pixel_values"][0]
    expected = release_transform(image, size)
    return (ours - expected).abs().mul(torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1) * 255)


def _close_to_release(c, levels) -> None:
    assert levels.max() <= 16 and (levels > 0.01).float().mean() <= 0.05, (float(levels.max()), float((levels > 0.01).float().mean()))


IMAGE_BOUNDS = [
    Case("thin-png-1x10000-encode-image-56px", bounded(48, lambda c: c.model.encode_image([str(c.file(png_bytes(1, 10000)))])),
         check=lambda c, r: np.testing.assert_equal(np.isfinite(r).all(), True)),
    Case("thin-png-1x100000-processor-56px", bounded(48, lambda c: _processor(56)(images=png_bytes(1, 100000), return_tensors="np")),
         check=lambda c, r: np.testing.assert_equal(r["pixel_values"].shape, (1, 3, 56, 56))),
    Case("wide-png-10000x1-processor-512px", bounded(96, lambda c: _processor(512)(images=png_bytes(10000, 1), return_tensors="np")),
         check=lambda c, r: np.testing.assert_equal(r["pixel_values"].shape, (1, 3, 512, 512))),
    Case("thin-png-1x3000-equals-release-resize", lambda c: _thin_image_matches_release(c, 1, 3000, 56),
         check=lambda c, r: np.testing.assert_array_less(r.max(), 1e-3)),
    Case("elongated-png-7x2001-close-to-release", lambda c: _thin_image_matches_release(c, 7, 2001, 30), check=_close_to_release),
    Case("webp-12000x12000-refused-before-decoding", bounded(32, lambda c: c.model.encode_image([str(c.file(WEBP_12000, "bomb.webp"))])),
         ImageLoadError, r"bomb\.webp.* is 12000x12000 pixels \(34 bytes\), more than max_image_pixels=89478485"),
    Case("webp-bomb-as-bytes", bounded(32, lambda c: _processor(56)(images=WEBP_12000)), ImageLoadError, r"raw bytes is 12000x12000"),
    Case("webp-bomb-as-data-uri", bounded(32, lambda c: _processor(56)(images="data:image/webp;base64," + base64.b64encode(WEBP_12000).decode())),
         ImageLoadError, r"data URI is 12000x12000"),
    Case("webp-bomb-as-url", bounded(32, lambda c: _processor(56, fetch_timeout=5)(images=f"{c.url}/bomb.webp")), ImageLoadError,
         r"http://127\.0\.0\.1:\d+/bomb\.webp is 12000x12000"),
    Case("max-image-pixels-is-a-setting", lambda c: _processor(56, max_image_pixels=10)(images=png_bytes(4, 4)), ImageLoadError,
         r"4x4 pixels .* more than max_image_pixels=10"),
    Case("processor-size-100000", bounded(16, lambda c: _processor(100000)(images=png_bytes(8, 8))), ValueError,
         r"size \{'shortest_edge': 100000\} is out of range: .* 10000000000 pixels, more than max_resize_pixels=8388608"),
    Case("processor-crop-100000", bounded(16, lambda c: _processor(56)(images=png_bytes(8, 8), crop_size={"height": 100000, "width": 100000})),
         ValueError, r"crop_size .* is out of range"),
    Case("processor-size-zero", lambda c: _processor(56)(images=png_bytes(8, 8), size={"shortest_edge": 0}), ValueError, r"out of range"),
    Case("max-resize-pixels-not-an-int", lambda c: _processor(56, max_resize_pixels="lots")(images=png_bytes(8, 8)), ValueError,
         r"max_resize_pixels must be an int >= 1"),
    Case("thin-image-without-crop-refused", lambda c: _processor(56)(images=str(c.file(png_bytes(1, 10000), "thin.png")), do_center_crop=False),
         ImageLoadError, r"thin\.png is 1x10000 pixels: resized to a shortest edge of 56 it would hold 31360000 pixels"),
    Case("normal-images-bit-identical", lambda c: [(_processor(56)(images=png_bytes(w, h, 3), return_tensors="pt")["pixel_values"][0],
                                                    release_transform(Image.open(io.BytesIO(png_bytes(w, h, 3))).convert("RGB"), 56))
                                                   for w, h in ((300, 41), (45, 250), (1792, 56), (640, 480))],
         check=lambda c, pairs: [torch.testing.assert_close(a, b, rtol=0, atol=0) for a, b in pairs]),
]


# ----------------------------------------------------------------------------------------------------------
# config.json values (checked before anything is allocated)
# ----------------------------------------------------------------------------------------------------------


def _with_config(c, edit) -> Path:
    folder = c.copy_export()
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _load(folder: Path):
    return JinaCLIPModel.from_pretrained(str(folder))


def _set_image_size(c):
    model = tiny_model(seed=0)
    try:
        model.set_image_size(100000)
    finally:
        assert model.config.vision_config.image_size == 56 and model.vision_model.pos_embed.shape[1] == 17


CONFIG = [
    Case("image-size-100000", bounded(32, lambda c: _load(_with_config(c, lambda d: d["vision_config"].update(image_size=100000)))),
         ValueError, r"vision_config\.image_size=100000 is outside \[1, 4096\].*JinaCLIPVisionConfig\.value_ranges"),
    Case("vocab-size-1e9-int", bounded(32, lambda c: _load(_with_config(c, lambda d: d["text_config"].update(vocab_size=10**9)))),
         ValueError, r"text_config\.vocab_size=1000000000 is outside \[1, 4194304\]"),
    Case("vocab-size-1e9-float", bounded(32, lambda c: _load(_with_config(c, lambda d: d["text_config"].update(vocab_size=1e9)))),
         Exception, r"vocab_size.*(expected int|must be an int)"),
    Case("layers-200000", bounded(32, lambda c: _load(_with_config(c, lambda d: d["text_config"].update(num_hidden_layers=200000)))),
         ValueError, r"text_config\.num_hidden_layers=200000 is outside \[1, 512\]"),
    Case("vision-layers-as-string", lambda c: JinaCLIPConfig(vision_config={"num_hidden_layers": "24"}), ValueError,
         r"vision_config\.num_hidden_layers must be an int, got '24'"),
    Case("too-many-parameters", lambda c: JinaCLIPConfig(text_config={"num_hidden_layers": 400}, vision_config={"num_hidden_layers": 400}),
         ValueError, r"about 10\.\d billion parameters .* more than max_parameters=1e\+10"),
    Case("set-image-size-100000", lambda c: _set_image_size(c), ValueError, r"image_size=100000 is outside"),
    Case("max-text-length-negative", lambda c: _load(_with_config(c, lambda d: d.update(max_text_length=-3))), ValueError,
         r"config\.max_text_length=-3 is outside \[1, 1048576\]"),
    Case("task-instruction-int", lambda c: _load(_with_config(c, lambda d: d.update(task_instructions={"retrieval.query": 5}))), ValueError,
         r"task_instructions must map task names to instruction strings, got \{'retrieval\.query': 5\}"),
    Case("config-json-is-a-list", lambda c: _load(_list_file(c, "config.json")), ValueError,
         r"config\.json must hold a JSON object of settings, got a JSON list"),
    Case("tokenizer-config-is-a-list", lambda c: __import__("jina_clip_v2.modeling.tokenization_jina_clip", fromlist=["x"]).load_tokenizer(
        _list_file(c, "tokenizer_config.json")), ValueError, r"tokenizer_config\.json must hold a JSON object of settings, got a JSON list"),
    Case("export-tokenizer-config-is-a-list", lambda c: __import__("jina_clip_v2.hub.export", fromlist=["x"]).load_processor(
        _list_file(c, "tokenizer_config.json")), ValueError, r"tokenizer_config\.json must hold a JSON object"),
    Case("export-config-is-a-list", lambda c: __import__("jina_clip_v2.hub.export", fromlist=["x"]).load_processor(_list_file(c, "config.json")),
         ValueError, r"config\.json must hold a JSON object"),
    Case("every-real-config-loads", lambda c: [JinaCLIPConfig(), JinaCLIPConfig(text_config={"model_type": "jina_bert"}), tiny_config()],
         check=lambda c, configs: [None for config in configs if config.validate_shapes() is None]),
]


def _list_file(c, name: str) -> Path:
    folder = c.copy_export()
    (folder / name).write_text("[1, 2]")
    return folder


# ----------------------------------------------------------------------------------------------------------
# Training data: bounded rows, damage reported and counted, image paths and URLs by policy, a fetch budget
# ----------------------------------------------------------------------------------------------------------


def _stream(c, source, kind="text_pairs", epochs=1, **options):
    from jina_clip_v2.training.data import SourceConfig, TaskDataConfig, build_task_stream

    sources = [source if isinstance(source, SourceConfig) else SourceConfig(str(source))]
    processor = getattr(c, "_data_processor", None) or build_processor(build_tokenizer(), image_size=28)
    c._data_processor = processor
    processor.image_processor.fetch_timeout = options.pop("fetch_timeout", 5.0)
    cfg = TaskDataConfig(kind=kind, sources=sources, batch_size=2, image_size=28, shuffle_buffer=0, name="data.bad",
                         max_consecutive_skips=options.pop("max_consecutive_skips", 50), **options)
    return build_task_stream(cfg, processor, keep_raw=True, epochs=epochs, train=False)


def _drain(stream) -> tuple[list[dict], dict]:
    rows = [row for batch in stream for row in batch["raw"]]
    return rows, stream.report()


def _jsonl(c, lines: list, name="rows.jsonl") -> Path:
    return c.file("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode(), name)


PAIRS = [{"query": f"q{i}", "document": f"d{i}"} for i in range(10)]


def _nested_line(c):
    lines = list(PAIRS)
    lines[3] = "[" * 100_000 + "]" * 100_000  # json's parser recurses per level
    path = _jsonl(c, lines, "nested.jsonl")
    rows, report = _drain(_stream(c, path))
    return path, rows, report


def _check_nested(c, result) -> None:
    path, rows, report = result
    assert [r["query"] for r in rows] == [f"q{i}" for i in range(10) if i != 3]  # 9 of 10 read, not 3
    entry = report["damaged_files"][str(path)]
    assert entry["rows_lost"] == 1 and "line 4: invalid JSON (nested too deeply" in entry["problem"], report
    assert report["rows_lost"] == 1 and report["skipped"] == {"bad_row": 1}


def _shard(c, samples: int, keep: float) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(samples):
            for ext, data in (("png", png_bytes(16, 16, i)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"s{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return c.file(data[: int(len(data) * keep)], "shard.tar")


def _cut_shard(c):
    from jina_clip_v2.training.data import SourceConfig

    path = _shard(c, 6, 0.6)
    rows, report = _drain(_stream(c, SourceConfig(str(path), format="webdataset"), "image_text_short"))
    return path, rows, report


def _check_cut_shard(c, result) -> None:
    path, rows, report = result
    assert [r["caption"] for r in rows] == [f"caption {i}" for i in range(4)]  # every complete sample...
    entry = report["damaged_files"][str(path)]  # ... and the shard named, with what it lost
    assert entry["at_least"] and entry["rows_lost"] == 1 and report["rows_lost"] == 1, report
    assert "cannot read on after" in entry["problem"] and "sample 3 (s003)" in entry["problem"], entry
    assert "unexpected end of data); the rest of it lost (4 rows read)" in entry["problem"], entry


def _shard_cut_between_samples(c):
    from jina_clip_v2.training.data import SourceConfig

    full = _shard(c, 3, 1.0).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(full)) as archive:
        end = archive.getmembers()[4].offset  # the header of sample 2's first member: samples 0 and 1 whole
    path = c.file(full[:end], "between.tar")
    return _drain(_stream(c, SourceConfig(str(path), format="webdataset"), "image_text_short"))


def _truncated_gzip(c):
    data = gzip.compress("".join(json.dumps(p) + "\n" for p in PAIRS * 40).encode())
    path = c.file(data[: len(data) // 2], "cut.jsonl.gz")
    rows, report = _drain(_stream(c, path))
    return path, rows, report


def _check_truncated_gzip(c, result) -> None:
    path, rows, report = result
    entry = report["damaged_files"][str(path)]
    assert 0 < len(rows) < 400 and entry["at_least"] and "the rest of it lost" in entry["problem"], report


def _damaged_parquet(c):
    """A parquet file of 6 row groups whose fourth has a damaged page header."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = c.path("pages.parquet")
    pq.write_table(pa.Table.from_pylist(PAIRS * 30), path, row_group_size=50)
    column = pq.ParquetFile(path).metadata.row_group(3).column(0)
    offset = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    rows, report = _drain(_stream(c, path))
    return path, rows, report


def _check_parquet(c, result) -> None:
    path, rows, report = result
    entry = report["damaged_files"][str(path)]
    assert len(rows) == 250 and entry["rows_lost"] == 50 and not entry["at_least"], report
    assert "row group 3: cannot be read" in entry["problem"] and "50 of its 50 rows lost" in entry["problem"]


def _huge_text(c, chars: int, max_text_chars=None):
    rows = [PAIRS[0], {"query": "x " * (chars // 2), "document": "d"}, PAIRS[1], PAIRS[2]]
    path = _jsonl(c, rows, "huge.jsonl")
    stream = _stream(c, path, max_length=16, max_text_chars=max_text_chars)
    batches = list(stream)
    return batches, stream.report()


def _long_line(c):
    path = c.path("long.jsonl")
    with open(path, "w") as handle:
        handle.write(json.dumps(PAIRS[0]) + "\n")
        handle.write('{"query": "' + "y" * (4 * MiB) + '", "document": "d"}\n')
        handle.write(json.dumps(PAIRS[1]) + "\n")
    from jina_clip_v2.training.data import SourceConfig

    rows, report = _drain(_stream(c, SourceConfig(str(path), max_row_chars=MiB)))
    return path, rows, report


def _image_rows(c, image_values: list, **source_options):
    from jina_clip_v2.training.data import SourceConfig

    root = c.path("images")
    (root / "inside").mkdir(parents=True)
    (root / "inside" / "ok.png").write_bytes(png_bytes(8, 8))
    outside = c.file(png_bytes(8, 8, 1), "outside.png")
    (root / "inside" / "link.png").symlink_to(outside)
    values = [v.replace("{outside_rel}", os.path.relpath(outside, root)).replace("{outside}", str(outside)) for v in image_values]
    path = root / "rows.jsonl"
    path.write_text("".join(json.dumps({"image": v, "caption": f"c{i}"}) + "\n" for i, v in enumerate(values)))
    stream = _stream(c, SourceConfig(str(path), **source_options), "image_text_short", on_bad_row="error")
    return _drain(stream)


def _fetch_budget(c, paths: list[str], **options):
    from jina_clip_v2.training.data import SourceConfig

    path = _jsonl(c, [{"image": f"{c.url}{p}", "caption": f"c{i}"} for i, p in enumerate(paths)], "urls.jsonl")
    return _drain(_stream(c, SourceConfig(str(path), fetch_urls=True), "image_text_short", **options))


def _data_error():
    from jina_clip_v2.training.data import DataError

    return DataError


def _report_merge(c):
    from jina_clip_v2.training.data_report import merge_data_reports

    a = {"skipped": {"bad_row": 2}, "rows_lost": 2, "damaged_files": {"a.tar": {"rows_lost": 1, "at_least": True, "problem": "cut"}},
         "texts_cut": 1, "url_fetches": {"s": {"fetches": 3, "failed": 1, "seconds": 1.5}}}
    b = {"skipped": {"bad_row": 1, "empty_text": 4}, "rows_lost": 1, "damaged_files": {"a.tar": {"rows_lost": 1, "at_least": True, "problem": "cut"}},
         "texts_cut": 0, "url_fetches": {"s": {"fetches": 2, "failed": 0, "seconds": 0.5}}}
    return merge_data_reports([a, b])


TRAINING_DATA = [
    Case("nested-json-line-drops-only-itself", _nested_line, check=_check_nested),
    Case("webdataset-shard-cut-at-60-percent", _cut_shard, check=_check_cut_shard),
    Case("webdataset-shard-cut-between-samples", _shard_cut_between_samples,
         check=lambda c, r: None if len(r[0]) == 2 and "without its end-of-archive blocks" in str(r[1]["damaged_files"]) else pytest.fail(str(r))),
    Case("gzip-cut-in-half", _truncated_gzip, check=_check_truncated_gzip),
    Case("parquet-damaged-row-group", _damaged_parquet, check=_check_parquet),
    Case("text-of-4M-chars-cut-before-tokenizing", bounded(160, lambda c: _huge_text(c, 4 * MiB)),
         check=lambda c, r: None if r[1]["texts_cut"] == 1 and len(r[0]) == 2 else pytest.fail(str(r[1]))),
    Case("max-text-chars-is-a-setting", lambda c: _huge_text(c, 100, max_text_chars=10),
         check=lambda c, r: None if r[1]["texts_cut"] == 1 else pytest.fail(str(r[1]))),
    Case("line-longer-than-max-row-chars", bounded(48, _long_line),
         check=lambda c, r: None if [x["query"] for x in r[1]] == ["q0", "q1"] and "longer than max_row_chars=1048576" in r[2]["damaged_files"][str(r[0])]["problem"] else pytest.fail(str(r[2]))),
    Case("confined-image-path-dotdot-refused", lambda c: _image_rows(c, ["inside/ok.png", "{outside_rel}"], image_paths_outside_root=False),
         _data_error(), r"line 2: image path .* leads out of image_root .*this source is confined to it \(image_paths_outside_root\)"),
    Case("confined-image-path-absolute-refused", lambda c: _image_rows(c, ["inside/ok.png", "{outside}"], image_paths_outside_root=False),
         _data_error(), r"leads out of image_root"),
    Case("confined-image-path-symlink-out-refused", lambda c: _image_rows(c, ["inside/ok.png", "inside/link.png"], image_paths_outside_root=False),
         _data_error(), r"inside/link\.png.* leads out of image_root .*symbolic link"),
    Case("local-source-reads-its-paths-as-written", lambda c: _image_rows(c, ["inside/ok.png", "{outside}", "inside/link.png", "{outside_rel}"]),
         check=lambda c, r: None if len(r[0]) == 4 and r[1]["skipped"] == {} else pytest.fail(str(r[1]))),
    Case("hub-dataset-reads-no-local-path", lambda c: __import__("jina_clip_v2.training.sources", fromlist=["x"])._check_image_location(
        {"bytes": None, "path": "/etc/hostname"}, {"root": None, "outside_root": False, "fetch_urls": False}), ValueError,
         r"image path '/etc/hostname' but the source has no image_root: a Hub dataset's paths are not read from this machine"),
    Case("image-url-not-fetched-by-default", lambda c: _image_rows(c, ["inside/ok.png", f"{c.url}/ok.png"]), _data_error(),
         r"image is the URL 'http://127\.0\.0\.1:\d+/ok\.png', and this source does not fetch URLs \(set fetch_urls: true"),
    Case("image-url-file-scheme-refused", lambda c: _image_rows(c, ["file:///etc/passwd"], fetch_urls=True), _data_error(),
         r"scheme 'file'; only http\(s\) URLs are fetched"),
    Case("image-urls-fetched-when-asked", lambda c: _fetch_budget(c, ["/ok.png"] * 4),
         check=lambda c, r: None if len(r[0]) == 4 and list(r[1]["url_fetches"].values())[0]["fetches"] == 4 else pytest.fail(str(r[1]))),
    # Under load one 0.3 s fetch can take longer: the source must stop after a few of its 40 stalling URLs.
    Case("stalling-urls-stop-within-the-budget", lambda c: _fetch_budget(c, ["/stall-headers"] * 40, fetch_timeout=0.3, max_fetch_failure_seconds=1.0),
         _data_error(), r"data\.bad\.sources\.0 .*: ([1-9]|[1-3][0-9]) image URL fetches in a row failed, costing \d+ s .*max_fetch_failure_seconds=1"),
    Case("failing-urls-stop-at-the-failure-rate", lambda c: _fetch_budget(c, ["/ok.png", "/missing.png"] * 60, max_fetch_failure_rate=0.3),
         _data_error(), r"50 of its 100 image URL fetches failed \(50%; the last: .*HTTP 404.*max_fetch_failure_rate=0\.3"),
    Case("reports-of-processes-merge", _report_merge,
         check=lambda c, r: None if r["rows_lost"] == 1 and r["damaged_files_count"] == 1 and r["skipped"] == {"bad_row": 3, "empty_text": 4}
         and r["url_fetches"]["s"]["fetches"] == 5 else pytest.fail(str(r))),
    Case("config-keys-for-the-limits", lambda c: __import__("jina_clip_v2.training.config", fromlist=["x"]).load_config(
        ROOT / "training" / "configs" / "tiny.yaml", ["data.max_fetch_failure_seconds=0"]), Exception, r"data\.max_fetch_failure_seconds"),
]


CATEGORIES = {
    "image_bounds": IMAGE_BOUNDS,
    "config": CONFIG,
    "training_data": TRAINING_DATA,
}
ALL = battery(CATEGORIES)


def test_the_round2_battery_is_large_and_ids_are_unique():
    check_battery(ALL, CATEGORIES, minimum=45)


@pytest.fixture(scope="module")
def data_path_loaded(ctx):  # noqa: F811 - the imported fixture
    """One small stream read before the cases: the first stream of a process imports datasets and pyarrow and builds
    the processor (tens of MiB, once), which is not what a bounded case adds, wherever the case runs first."""
    _drain(_stream(ctx, _jsonl(ctx, PAIRS)))


@pytest.mark.parametrize("case", ALL)
def test_bad_input_round2(case: Case, ctx, data_path_loaded):  # noqa: F811 - the imported fixture
    run_case(case, ctx)
