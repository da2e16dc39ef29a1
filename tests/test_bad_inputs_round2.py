"""The bad-input battery, round two (issue 20): what the first round (tests/test_bad_inputs.py, whose `Case` table
this file shares) left open. Memory bombs through the image resize, the decoder and config.json, each case with a
peak-memory bound (resident memory the case added, Linux: VmHWM after minus VmRSS before, tracemalloc elsewhere);
config values outside sane ranges; training data that is damaged, huge, outside its image root or behind stalling
URLs; exports and ONNX conversions racing or killed half-way; push's allow-list and completeness; the ONNX helper's
inputs; command-line mistakes.

Each case asserts a clear error (its type and a message that names the problem) or the correct result. The
concurrent-export case forces the race (both writers wait for each other before their rename); the kill during
`jina-clip onnx` kills the converter once its staging folder holds a graph and checks the old files are intact."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _http import PNG, server  # noqa: F401 - server is a fixture
from _release_transform import release_transform
from _tiny import ROOT, build_processor, build_tokenizer, tiny_config, tiny_model
from test_bad_inputs import OK, Case, ImageLoadError
from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel
from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor

MiB = 2**20
# A lossless WebP of 12000 x 12000 black pixels: 34 bytes that decode to 432 MB (3 GB through the old resize).
WEBP_12000 = base64.b64decode("UklGRhoAAABXRUJQVlA4TA4AAAAv3+63CwcQEf0PRET/Aw==")
PEAKS: dict[str, int] = {}  # case -> peak bytes added (printed at the end with -s)


# ----------------------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------------------


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _rss_measurable() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_added(fn, *args):
    """(fn's result or the exception it raised, the peak memory it added in bytes). Resident memory where Linux
    lets the peak be reset (/proc/self/clear_refs), else the Python-level peak (tracemalloc)."""
    if _rss_measurable():
        before = _status("VmRSS")
        try:
            result = fn(*args)
        except Exception as err:  # noqa: BLE001 - handed back to the case
            result = err
        return result, _status("VmHWM") - before
    tracemalloc.start()
    try:
        result = fn(*args)
    except Exception as err:  # noqa: BLE001
        result = err
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


def bounded(limit_mib: float, fn):
    """A case's `run` that also asserts its peak memory stays under `limit_mib` (whatever the outcome)."""

    def run(c):
        result, peak = peak_added(fn, c)
        PEAKS[c.current] = peak
        assert peak < limit_mib * MiB, f"peak memory {peak / MiB:.1f} MiB >= {limit_mib} MiB"
        if isinstance(result, Exception):
            raise result
        return result

    return run


# ----------------------------------------------------------------------------------------------------------
# Shared inputs
# ----------------------------------------------------------------------------------------------------------


class Ctx:
    """A tiny exported model (loaded back), its folder, a scratch folder, the URL server, an ONNX export (made on
    first use)."""

    def __init__(self, model, exported: Path, tmp: Path, url: str):
        self.model, self.exported, self.tmp, self.url = model, exported, tmp, url
        self.current = ""
        self._count = 0
        self._onnx: Path | None = None

    def path(self, name: str) -> Path:
        self._count += 1
        return self.tmp / f"{self._count}-{name}"

    def file(self, data: bytes, name: str = "x.png") -> Path:
        path = self.path(name)
        path.write_bytes(data)
        return path

    def copy_export(self) -> Path:
        out = self.path("export")
        shutil.copytree(self.exported, out)
        return out

    def onnx(self) -> Path:
        """A copy of the export with fp32 ONNX towers (`jina-clip onnx --precisions fp32 --no-parity`)."""
        if self._onnx is None:
            from jina_clip_v2.hub.onnx import export_onnx

            self._onnx = self.copy_export()
            export_onnx(self._onnx, precisions=["fp32"], parity=False)
        return self._onnx


def _png(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    image = Image.fromarray(np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _processor(size: int, **options) -> JinaCLIPImageProcessor:
    return JinaCLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **options)


# ----------------------------------------------------------------------------------------------------------
# Image decode and resize bounds (memory: peak under a bound; the old path needed 0.35 - 18 GB)
# ----------------------------------------------------------------------------------------------------------


def _thin_image_matches_release(c, width: int, height: int, size: int):
    """The over-elongated path (cut before the resize) against the release's full resize + crop (the oracle)."""
    data = _png(width, height, seed=width + height)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    ours = _processor(size)(images=data, return_tensors="pt")["pixel_values"][0]
    expected = release_transform(image, size)
    return (ours - expected).abs().mul(torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1) * 255)


def _close_to_release(c, levels) -> None:
    assert levels.max() <= 16 and (levels > 0.01).float().mean() <= 0.05, (float(levels.max()), float((levels > 0.01).float().mean()))


IMAGE_BOUNDS = [
    Case("thin-png-1x10000-encode-image-56px", bounded(48, lambda c: c.model.encode_image([str(c.file(_png(1, 10000)))])),
         check=lambda c, r: np.testing.assert_equal(np.isfinite(r).all(), True)),
    Case("thin-png-1x100000-processor-56px", bounded(48, lambda c: _processor(56)(images=_png(1, 100000), return_tensors="np")),
         check=lambda c, r: np.testing.assert_equal(r["pixel_values"].shape, (1, 3, 56, 56))),
    Case("wide-png-10000x1-processor-512px", bounded(96, lambda c: _processor(512)(images=_png(10000, 1), return_tensors="np")),
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
    Case("max-image-pixels-is-a-setting", lambda c: _processor(56, max_image_pixels=10)(images=_png(4, 4)), ImageLoadError,
         r"4x4 pixels .* more than max_image_pixels=10"),
    Case("processor-size-100000", bounded(16, lambda c: _processor(100000)(images=_png(8, 8))), ValueError,
         r"size \{'shortest_edge': 100000\} is out of range: .* 10000000000 pixels, more than max_resize_pixels=8388608"),
    Case("processor-crop-100000", bounded(16, lambda c: _processor(56)(images=_png(8, 8), crop_size={"height": 100000, "width": 100000})),
         ValueError, r"crop_size .* is out of range"),
    Case("processor-size-zero", lambda c: _processor(56)(images=_png(8, 8), size={"shortest_edge": 0}), ValueError, r"out of range"),
    Case("max-resize-pixels-not-an-int", lambda c: _processor(56, max_resize_pixels="lots")(images=_png(8, 8)), ValueError,
         r"max_resize_pixels must be an int >= 1"),
    Case("thin-image-without-crop-refused", lambda c: _processor(56)(images=str(c.file(_png(1, 10000), "thin.png")), do_center_crop=False),
         ImageLoadError, r"thin\.png is 1x10000 pixels: resized to a shortest edge of 56 it would hold 31360000 pixels"),
    Case("normal-images-bit-identical", lambda c: [(_processor(56)(images=_png(w, h, 3), return_tensors="pt")["pixel_values"][0],
                                                    release_transform(Image.open(io.BytesIO(_png(w, h, 3))).convert("RGB"), 56))
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
            for ext, data in (("png", _png(16, 16, i)), ("txt", f"caption {i}".encode())):
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
    (root / "inside" / "ok.png").write_bytes(_png(8, 8))
    outside = c.file(_png(8, 8, 1), "outside.png")
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
    Case("stalling-urls-stop-within-the-budget", lambda c: _fetch_budget(c, ["/stall-headers"] * 40, fetch_timeout=0.3, max_fetch_failure_seconds=1.0),
         _data_error(), r"data\.bad\.sources\.0 .*: [4-9] image URL fetches in a row failed, costing 1 s .*max_fetch_failure_seconds=1"),
    Case("failing-urls-stop-at-the-failure-rate", lambda c: _fetch_budget(c, ["/ok.png", "/missing.png"] * 60, max_fetch_failure_rate=0.3),
         _data_error(), r"50 of its 100 image URL fetches failed \(50%; the last: .*HTTP 404.*max_fetch_failure_rate=0\.3"),
    Case("reports-of-processes-merge", _report_merge,
         check=lambda c, r: None if r["rows_lost"] == 1 and r["damaged_files_count"] == 1 and r["skipped"] == {"bad_row": 3, "empty_text": 4}
         and r["url_fetches"]["s"]["fetches"] == 5 else pytest.fail(str(r))),
    Case("config-keys-for-the-limits", lambda c: __import__("jina_clip_v2.training.config", fromlist=["x"]).load_config(
        ROOT / "training" / "configs" / "tiny.yaml", ["data.max_fetch_failure_seconds=0"]), Exception, r"data\.max_fetch_failure_seconds"),
]


# ----------------------------------------------------------------------------------------------------------
# Exports and ONNX files: exclusive, atomic, checked
# ----------------------------------------------------------------------------------------------------------


def _concurrent_exports(c):
    """Two exports to one new folder, without overwrite, racing to their rename (both wait for each other
    there): one wins, the other fails loudly, nothing half-written is left."""
    from jina_clip_v2.hub.export import export_model

    out = c.path("contested")
    barrier = threading.Barrier(2, timeout=120)
    outcomes: list = [None, None]

    def export(i: int) -> None:
        try:
            export_model(c.model, out, processor=c.model.processor, model_name=f"writer {i}", verify=lambda folder: barrier.wait())
            outcomes[i] = "ok"
        except Exception as err:  # noqa: BLE001
            outcomes[i] = err

    threads = [threading.Thread(target=export, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out, outcomes


def _check_concurrent(c, result) -> None:
    out, outcomes = result
    assert sorted(map(str, outcomes)).count("ok") == 1, outcomes
    loser = next(o for o in outcomes if o != "ok")
    assert isinstance(loser, FileExistsError) and "created by another writer while this one ran" in str(loser)
    winner = ["writer 0", "writer 1"][outcomes.index("ok")]
    assert f"# {winner}" in (out / "README.md").read_text()  # the folder is the winner's, whole
    JinaCLIPModel.from_pretrained(str(out)).encode_text(["a"])
    assert [p.name for p in out.parent.iterdir() if p.name.startswith("tmp_export_")] == []


def _kill_during_onnx(c):
    """`jina-clip onnx --overwrite` killed once its staging folder holds a graph: the old files stay."""
    folder = c.onnx()
    before = {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()}
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jina_clip_v2.hub.onnx", "--model", str(folder), "--overwrite", "--precisions", "fp32", "--no-parity"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    staged = None
    deadline = time.monotonic() + 240
    while staged is None and proc.poll() is None and time.monotonic() < deadline:
        staged = next(iter(folder.glob(f".onnx.{proc.pid}_*.tmp/text_model.onnx")), None)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()}
    return folder, staged, before, after, proc.pid


def _check_kill(c, result) -> None:
    from jina_clip_v2 import _io
    from jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx

    folder, staged, before, after, pid = result
    assert staged is not None, "the converter never wrote into its staging folder"
    assert after == before  # the old files, byte for byte
    assert JinaCLIPOnnx(folder).encode_text(["still loads"]).shape == (1, 32)
    leftovers = _io.remove_stale_staging(folder, ".onnx.", ".tmp")  # what the next run does first
    assert [p.name.startswith(f".onnx.{pid}_") for p in leftovers] == [True]


def _truncated_graph(c):
    from jina_clip_v2.hub.onnx import check_onnx_file

    data = (c.onnx() / "onnx" / "text_model.onnx").read_bytes()
    return check_onnx_file(c.file(data[: len(data) // 2], "text_model.onnx"))


def _export_truncated_weights(c):
    """A writer that leaves a truncated model.safetensors (a full disk): the export refuses to take the name."""
    from jina_clip_v2.hub import export as hub_export

    out = c.path("cut-export")
    original = hub_export._write_folder

    def cut_weights(staging, *args, **kwargs):
        original(staging, *args, **kwargs)
        weights = staging / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    hub_export._write_folder = cut_weights
    try:
        hub_export.export_model(c.model, out, processor=c.model.processor)
    finally:
        hub_export._write_folder = original
        assert not out.exists()


EXPORTS = [
    Case("two-exports-to-one-folder", _concurrent_exports, check=_check_concurrent),
    Case("kill-during-jina-clip-onnx", _kill_during_onnx, check=_check_kill),
    Case("truncated-onnx-graph-named", _truncated_graph, ValueError, r"text_model\.onnx is not a readable ONNX model"),
    Case("export-with-truncated-weights-not-renamed", _export_truncated_weights, ValueError,
         r"model\.safetensors: truncated or not a safetensors file"),
    Case("onnx-out-with-other-files-refused", lambda c: __import__("jina_clip_v2.hub.onnx", fromlist=["x"]).export_onnx(
        c.exported, c.file(b"x", "notes.txt").parent, overwrite=True), FileExistsError, r"holds files an ONNX export does not write"),
]


# ----------------------------------------------------------------------------------------------------------
# Push: exact allow-list, complete folders only
# ----------------------------------------------------------------------------------------------------------


def _plan_with(c, name: str, data: bytes = b"x"):
    from jina_clip_v2.hub.push import plan_push

    folder = c.copy_export()
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return plan_push(folder, "user/tiny")


def _plan_edited(c, edit):
    from jina_clip_v2.hub.push import plan_push

    folder = c.copy_export()
    edit(folder)
    return plan_push(folder, "user/tiny")


def _push_error():
    from jina_clip_v2.hub.push import PushError

    return PushError


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


PUSH = [
    Case("modeling-notes-py", lambda c: _plan_with(c, "modeling_notes.py"), _push_error(), r"files an export does not write: modeling_notes\.py"),
    Case("configuration-folder-credentials", lambda c: _plan_with(c, "configuration_x/credentials.py"), _push_error(), r"configuration_x/credentials\.py"),
    Case("onnx-private-keys", lambda c: _plan_with(c, "onnx/private/keys.onnx"), _push_error(), r"onnx/private/keys\.onnx"),
    Case("onnx-graph-of-another-name", lambda c: _plan_with(c, "onnx/secret_model.onnx"), _push_error(), r"onnx/secret_model\.onnx"),
    Case("truncated-model-safetensors", lambda c: _plan_edited(c, lambda f: _cut(f / "model.safetensors")), _push_error(),
         r"not a complete export.*model\.safetensors: truncated or not a safetensors file"),
    Case("no-tokenizer-json", lambda c: _plan_edited(c, lambda f: (f / "tokenizer.json").unlink()), _push_error(), r"missing tokenizer\.json"),
    Case("index-names-a-missing-shard", lambda c: _plan_edited(c, lambda f: (f / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))), _push_error(), r"model-00001-of-00002\.safetensors: missing"),
    Case("config-json-is-a-list", lambda c: _plan_edited(c, lambda f: (f / "config.json").write_text("[1]")), _push_error(),
         r"config\.json must hold a JSON object"),
    Case("tokenizer-json-truncated", lambda c: _plan_edited(c, lambda f: _cut(f / "tokenizer.json")), _push_error(), r"tokenizer\.json is not valid JSON"),
    Case("numbered-onnx-chunks-allowed", lambda c: _plan_with(c, "onnx/vision_model_fp16.onnx_data_3"),
         check=lambda c, plan: None if "onnx/vision_model_fp16.onnx_data_3" in [n for n, _ in plan.files] else pytest.fail(str(plan.files))),
]


# ----------------------------------------------------------------------------------------------------------
# The ONNX helper's inputs
# ----------------------------------------------------------------------------------------------------------


def _runtime(c):
    from jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx

    if getattr(c, "_runtime", None) is None:
        c._runtime = JinaCLIPOnnx(c.onnx())
    return c._runtime


IDS = np.array([[0, 5, 9, 2]])
MASK = np.ones((1, 4), np.int64)

ONNX_HELPER = [
    Case("float-ids", lambda c: _runtime(c).run_text(IDS.astype(np.float32), MASK), TypeError, r"input_ids must be integers .* got dtype float32"),
    Case("id-minus-one", lambda c: _runtime(c).run_text(np.array([[0, -1, 2]]), np.ones((1, 3), np.int64)), ValueError,
         r"input_ids holds token id -1, outside 0 \.\. 999"),
    Case("id-equal-to-vocab", lambda c: _runtime(c).run_text(np.array([[0, 1000, 2]]), np.ones((1, 3), np.int64)), ValueError, r"token id 1000"),
    Case("mask-of-another-shape", lambda c: _runtime(c).run_text(IDS, np.ones((1, 3), np.int64)), ValueError, r"attention_mask has shape \(1, 3\)"),
    Case("mask-value-2", lambda c: _runtime(c).run_text(IDS, MASK * 2), ValueError, r"attention_mask holds mask value 2"),
    Case("nan-pixels", lambda c: _runtime(c).run_vision(np.full((1, 3, 56, 56), np.nan, np.float32)), ValueError, r"NaN or infinite"),
    Case("pixels-of-another-size", lambda c: _runtime(c).run_vision(np.zeros((1, 3, 40, 40), np.float32)), ValueError, r"\(batch, 3, 56, 56\), got \(1, 3, 40, 40\)"),
    Case("integer-pixels", lambda c: _runtime(c).run_vision(np.zeros((1, 3, 56, 56), np.int64)), TypeError, r"floating point"),
    Case("int32-ids-equal-int64", lambda c: (_runtime(c).run_text(IDS.astype(np.int32), MASK)["text_embeddings"], _runtime(c).run_text(IDS, MASK)["text_embeddings"]),
         check=lambda c, r: np.testing.assert_array_equal(r[0], r[1])),
]


# ----------------------------------------------------------------------------------------------------------
# Command-line mistakes (argparse's one-line usage errors, before any work)
# ----------------------------------------------------------------------------------------------------------


def _cli(c, *argv: str):
    """`jina-clip <argv>` in this process: (exit code, stderr)."""
    import contextlib

    from jina_clip_v2.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    if code == 0:
        return code
    raise RuntimeError(f"exit {code}: {err.getvalue().strip().splitlines()[-1]}")


TINY = str(ROOT / "training" / "configs" / "tiny.yaml")

CLI = [
    Case("train-resume-takes-an-override", lambda c: _cli(c, "train", "--config", TINY, "--resume", "train.steps=3"), RuntimeError,
         r"exit 2: .*no such folder: 'train\.steps=3'; give --resume its value first \(--resume auto\)"),
    Case("train-resume-missing-folder", lambda c: _cli(c, "train", "--config", TINY, "--resume", str(c.tmp / "none")), RuntimeError,
         r"exit 2: .*--resume takes 'auto' or a checkpoint folder; no such folder"),
    Case("demo-steps-minus-one", lambda c: _cli(c, "demo", "--steps", "-1"), RuntimeError, r"exit 2: .*unrecognized arguments: --steps -1"),
    Case("demo-steps-scale-zero", lambda c: _cli(c, "demo", "--steps-scale", "0"), RuntimeError, r"exit 2: .*--steps-scale: must be > 0, got 0"),
    Case("demo-processes-zero", lambda c: _cli(c, "demo", "--processes", "0"), RuntimeError, r"exit 2: .*--processes: must be > 0"),
    Case("demo-steps-scale-nan", lambda c: _cli(c, "demo", "--steps-scale", "nan"), RuntimeError, r"exit 2: .*--steps-scale: must be > 0, got nan"),
]


CATEGORIES = {
    "image_bounds": IMAGE_BOUNDS,
    "config": CONFIG,
    "training_data": TRAINING_DATA,
    "exports": EXPORTS,
    "push": PUSH,
    "onnx_helper": ONNX_HELPER,
    "cli": CLI,
}
ALL = [pytest.param(case, id=f"{category}:{case.id}") for category, cases in CATEGORIES.items() for case in cases]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, server):  # noqa: F811 - the imported fixture
    from _http import _Handler

    from jina_clip_v2.hub.export import export_model

    _Handler.extra["/bomb.webp"] = ("image/webp", WEBP_12000)
    model = tiny_model(seed=0)
    processor = build_processor(build_tokenizer(), image_size=model.config.vision_config.image_size)
    exported = export_model(model, tmp_path_factory.mktemp("round2") / "tiny", processor=processor)
    model = JinaCLIPModel.from_pretrained(str(exported)).eval()
    yield Ctx(model, Path(exported), tmp_path_factory.mktemp("scratch"), server)
    if PEAKS:
        print("\npeak memory added per case (MiB): " + ", ".join(f"{k} {v / MiB:.1f}" for k, v in PEAKS.items()))


def test_the_round2_battery_is_large_and_ids_are_unique():
    ids = [param.id for param in ALL]
    assert len(ids) == len(set(ids)) and len(ids) >= 70, len(ids)
    assert all(len(cases) >= 5 for cases in CATEGORIES.values())


NEEDS_ONNX = {case.id for case in ONNX_HELPER} | {"kill-during-jina-clip-onnx", "truncated-onnx-graph-named"}


@pytest.mark.parametrize("case", ALL)
def test_bad_input_round2(case: Case, ctx):
    if case.id in NEEDS_ONNX:
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    ctx.current = case.id
    if case.error is OK:
        case.check(ctx, case.run(ctx))
        return
    expected = ValueError if isinstance(case.error, str) else case.error
    with pytest.raises(expected, match=case.match) as info:
        case.run(ctx)
    if isinstance(case.error, str):
        assert case.error in [cls.__name__ for cls in type(info.value).__mro__], type(info.value)
    assert str(info.value) and "Traceback" not in str(info.value)
