"""hub.onnx / hub.onnx_runtime: both towers of a tiny exported folder (`jina-clip export --onnx`) as ONNX
graphs in fp32 / fp16 / int8, run by ONNX Runtime (the oracle) against PyTorch: fp32 within 1e-5 for
batches of 1 and 7 (texts of mixed lengths, images of several sizes), fp16 / int8 cosine >= 0.99,
Matryoshka truncation equal to `encode_*(truncate_dim=k)`, the helper in a process without torch,
external data in chunks, the transformers.js layout, the parity table and the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from _tiny import ROOT, build_processor, build_tokenizer, caption_corpus, tiny_model  # noqa: E402

from jina_clip_v2.hub import onnx as hub_onnx  # noqa: E402
from jina_clip_v2.hub.export import export_model, load_model  # noqa: E402
from jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx, onnx_file_name, truncate_and_normalize  # noqa: E402

ATOL = 1e-5
TOWERS = ("text", "vision")
PRECISIONS = ("fp32", "fp16", "int8")
# Images of several sizes and aspect ratios (the processor resizes and crops them to the model's 56 px).
IMAGE_SIZES = [(56, 56), (70, 90), (120, 60), (200, 201), (57, 300), (64, 64), (99, 77)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The tiny model exported as a Hub folder with its ONNX towers (`export_model(..., onnx=True)`)."""
    model = tiny_model(seed=0)
    processor = build_processor(build_tokenizer(), image_size=model.config.vision_config.image_size)
    return export_model(model, tmp_path_factory.mktemp("onnx") / "tiny", processor=processor, onnx=True)


@pytest.fixture(scope="module")
def reference(exported):
    """The exported weights in fp32 PyTorch (eager attention, as exported), with the folder's processor."""
    return hub_onnx.load_for_export(exported)


def _texts(n: int) -> list[str]:
    corpus = caption_corpus()
    # Mixed lengths: a one-word text, captions in several scripts, a long multi-sentence text.
    picks = [corpus[0], "a", corpus[100], corpus[2000], " ".join(corpus[300:312]), corpus[5000], corpus[9000]]
    return picks[:n]


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in IMAGE_SIZES[:n]]


def test_layout_names_and_precisions(exported):
    onnx_dir = exported / "onnx"
    for tower in TOWERS:
        for precision in PRECISIONS:
            path = onnx_dir / onnx_file_name(tower, precision)
            assert path.is_file(), path
            assert str(ROOT).encode() not in path.read_bytes()  # no stack traces with local paths
            graph = onnx.load(str(path)).graph
            inputs = {i.name: i for i in graph.input}
            outputs = [o.name for o in graph.output]
            if tower == "text":
                assert list(inputs) == ["input_ids", "attention_mask"]
                assert outputs == ["text_embeddings", "l2norm_text_embeddings"]
                dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs.values()]
                assert all(isinstance(a, str) and isinstance(b, str) for a, b in dims)  # batch and sequence dynamic
            else:
                assert list(inputs) == ["pixel_values"]
                assert outputs == ["image_embeddings", "l2norm_image_embeddings"]
                dims = [d.dim_param or d.dim_value for d in inputs["pixel_values"].type.tensor_type.shape.dim]
                assert isinstance(dims[0], str) and dims[1:] == [3, 56, 56]
            # fp32 inputs/outputs in every precision (fp16 keeps its I/O types)
            elem = onnx.TensorProto.FLOAT
            for value in list(graph.output) + ([inputs["pixel_values"]] if tower == "vision" else []):
                assert value.type.tensor_type.elem_type == elem
            initializer_types = {t.data_type for t in graph.initializer}
            ops = {node.op_type for node in graph.node}
            if precision == "fp16":
                assert onnx.TensorProto.FLOAT16 in initializer_types
            if precision == "int8":
                assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and onnx.TensorProto.INT8 in initializer_types
                assert "ConvInteger" not in ops  # the patch convolution stays fp32 (onnxruntime-web has no int8 kernel)
    # transformers.js file names: <tower>_model{,_fp16,_quantized}.onnx in onnx/
    assert sorted(p.name for p in onnx_dir.glob("*.onnx")) == sorted(
        f"{t}_model{s}.onnx" for t in TOWERS for s in ("", "_fp16", "_quantized")
    )
    config = json.loads((exported / "config.json").read_text())
    assert "transformers.js_config" not in config  # nothing over 2 GB in the tiny model


def test_fp32_equals_pytorch_for_batches_of_1_and_7(exported, reference):
    runtime = JinaCLIPOnnx(exported)
    for n in (1, 7):
        texts = _texts(n)
        batch = runtime.tokenize(texts)
        if n == 7:
            lengths = batch["attention_mask"].sum(1)
            assert len(set(lengths.tolist())) >= 5 and lengths.max() >= 5 * lengths.min()  # mixed lengths, padded rows
        got = runtime.run_text(**batch)
        with torch.no_grad():
            expected = reference.get_text_features(torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"])).pooler_output.numpy()
        assert got["text_embeddings"].shape == (n, 32)
        assert np.abs(got["text_embeddings"] - expected).max() <= ATOL
        assert np.abs(got["l2norm_text_embeddings"] - truncate_and_normalize(expected)).max() <= ATOL

        pixels = runtime.preprocess(_images(n))
        got = runtime.run_vision(pixels)
        with torch.no_grad():
            expected = reference.get_image_features(torch.from_numpy(pixels)).pooler_output.numpy()
        assert got["image_embeddings"].shape == (n, 32)
        assert np.abs(got["image_embeddings"] - expected).max() <= ATOL
        assert np.abs(got["l2norm_image_embeddings"] - truncate_and_normalize(expected)).max() <= ATOL


def test_fp16_and_int8_cosine_against_fp32_pytorch(exported, reference):
    texts, images = _texts(7), _images(7)
    expected = {"text": reference.encode_text(texts), "vision": reference.encode_image(images)}
    for precision in ("fp16", "int8"):
        runtime = JinaCLIPOnnx(exported, precision=precision)
        got = {"text": runtime.encode_text(texts), "vision": runtime.encode_image(images)}
        for tower in TOWERS:
            cosines = (got[tower] * expected[tower]).sum(-1)  # both unit vectors
            assert cosines.min() >= 0.99, (precision, tower, cosines)
            assert np.abs(got[tower] - expected[tower]).max() > 0  # really another precision


def test_truncation_from_onnx_outputs_equals_encode_truncate_dim(exported, reference):
    runtime = JinaCLIPOnnx(exported)
    texts, images = _texts(7), _images(3)
    for k in (8, 16, 32):
        for task in (None, "retrieval.query"):
            expected = reference.encode_text(texts, task=task, truncate_dim=k)
            assert np.abs(runtime.encode_text(texts, task=task, truncate_dim=k) - expected).max() <= ATOL
        expected = reference.encode_image(images, truncate_dim=k)
        assert np.abs(runtime.encode_image(images, truncate_dim=k) - expected).max() <= ATOL
        # the one step users do by hand: slice the un-normalized output, then L2-normalize
        raw = runtime.run_vision(runtime.preprocess(images))["image_embeddings"]
        manual = raw[:, :k] / np.linalg.norm(raw[:, :k], axis=-1, keepdims=True)
        assert np.abs(manual - expected).max() <= ATOL
    assert runtime.encode_text("a single text").shape == (32,)
    with pytest.raises(ValueError, match="valid values"):
        runtime.encode_text(texts, truncate_dim=12)


def test_encode_text_sorts_into_token_budget_batches_in_input_order(exported, monkeypatch):
    """The helper's text path (issue 25): texts sorted by token count into token-budget batches, each padded to its
    own longest text, outputs back in the input order, equal to running each text alone."""
    runtime = JinaCLIPOnnx(exported)
    texts = _texts(7)
    lengths = runtime.tokenize(texts)["attention_mask"].sum(1)
    calls = []
    run_text = runtime.run_text
    monkeypatch.setattr(runtime, "run_text", lambda ids, mask: calls.append(mask.sum(1).tolist()) or run_text(ids, mask))
    budget = int(2 * lengths.max())
    got = runtime.encode_text(texts, max_tokens_per_batch=budget)
    assert sorted(x for call in calls for x in call) == sorted(lengths.tolist())
    assert all(len(call) * call[0] <= max(budget, call[0]) and call == sorted(call, reverse=True) for call in calls)
    assert [x for call in calls for x in call] == sorted(lengths.tolist(), reverse=True)  # longest first
    monkeypatch.setattr(runtime, "run_text", run_text)
    alone = np.stack([runtime.encode_text(text) for text in texts])
    assert np.abs(got - alone).max() <= ATOL
    assert np.abs(runtime.encode_text(texts, batch_size=2) - alone).max() <= ATOL


def test_encode_image_default_batch_workers_and_streams_in_input_order(exported, reference, monkeypatch):
    """The helper's image path (issue 25): the policy's per-device batch when none is given (on CPU, the token budget
    over the image tokens), images decoded by a thread pool or in the calling thread, a generator streamed, rows in
    input order and equal to PyTorch's `encode_image` whatever the batch."""
    from jina_clip_v2.modeling import policy_jina_clip as policy

    runtime = JinaCLIPOnnx(exported)
    images = _images(5)
    expected = reference.encode_image(images)
    sizes = []
    run_vision = runtime.run_vision
    monkeypatch.setattr(runtime, "run_vision", lambda pixels: sizes.append(len(pixels)) or run_vision(pixels))
    tokens = runtime.image_tokens
    assert tokens == reference.config.vision_config.num_positions
    monkeypatch.setitem(policy.DEFAULT_IMAGE_TOKENS_PER_BATCH, "cpu", 2 * tokens)
    got = runtime.encode_image(images)
    assert sizes == [2, 2, 1]
    assert np.abs(got - expected).max() <= ATOL
    for batch_size, workers in ((1, 0), (3, 2), (5, 1)):
        sizes.clear()
        got = runtime.encode_image((image for image in images), batch_size=batch_size, num_workers=workers)
        assert sizes == [min(batch_size, 5 - i) for i in range(0, 5, batch_size)]
        assert np.abs(got - expected).max() <= ATOL, (batch_size, workers)
    assert runtime.encode_image(images[0]).shape == (32,)
    with pytest.raises(ValueError, match="num_workers"):
        runtime.encode_image(images, num_workers=-1)
    assert JinaCLIPOnnx(exported, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]).device_type == "cuda"
    assert policy.image_batch_size("cuda", tokens) == policy.DEFAULT_IMAGE_BATCH


HIDE_TORCH = '''
import sys
class _HideTorch:
    """Wraps every meta-path finder: `torch` is not found (find_spec -> None, import -> ModuleNotFoundError),
    as on a machine where it is not installed; everything else is found as usual."""
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            return None
        return self.inner.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.inner, attr)
sys.meta_path[:] = [_HideTorch(finder) for finder in sys.meta_path]
'''


def test_helper_runs_in_a_process_without_torch(exported, reference, tmp_path):
    data = ROOT / "data" / "tuxpaint"
    records = [json.loads(line) for line in (data / "captions.jsonl").read_text(encoding="utf-8").splitlines()[:5]]
    texts = [records[0]["captions"]["de"], records[1]["captions"]["ja"], records[2]["en"]]
    images = [str(data / r["image"]) for r in records]
    script = tmp_path / "no_torch.py"
    script.write_text(
        HIDE_TORCH
        + textwrap.dedent(
            """
            import json
            try:
                import torch
            except ModuleNotFoundError:
                pass
            else:
                raise SystemExit("torch is importable")
            from jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx

            folder, texts, images, precision = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
            model = JinaCLIPOnnx(folder, precision=precision)
            out = {
                "text": model.encode_text(texts, task="retrieval.query").tolist(),
                "text16": model.encode_text(texts, truncate_dim=16).tolist(),
                "image": model.encode_image(images).tolist(),
                "torch_loaded": any(name.partition(".")[0] == "torch" for name in sys.modules),
            }
            print(json.dumps(out))
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(exported), json.dumps(texts), json.dumps(images), "fp32"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch_loaded"] is False
    assert np.abs(np.array(out["text"]) - reference.encode_text(texts, task="retrieval.query")).max() <= ATOL
    assert np.abs(np.array(out["text16"]) - reference.encode_text(texts, truncate_dim=16)).max() <= ATOL
    assert np.abs(np.array(out["image"]) - reference.encode_image(images)).max() <= ATOL


def test_parity_table_next_to_the_files_and_in_the_card(exported):
    report = json.loads((exported / "onnx" / "parity.json").read_text())
    rows = {(r["tower"], r["precision"]): r for r in report["rows"]}
    assert set(rows) == {(t, p) for t in TOWERS for p in PRECISIONS}
    for (tower, precision), row in rows.items():
        assert row["bytes"] == (exported / "onnx" / row["file"]).stat().st_size
        assert row["min_cosine"] >= (0.99 if precision != "fp32" else 1 - 1e-9)
        if precision == "fp32":
            assert row["max_abs_diff"] <= ATOL and row["max_abs_diff_normalized"] <= ATOL
    assert report["data"]["texts"] >= 10 and len(report["data"]["languages"]) >= 8 and report["data"]["images"] >= 5
    table = (exported / "onnx" / "parity.md").read_text()
    card = (exported / "README.md").read_text()
    assert card.count("## ONNX") == 1 and card.index("## ONNX") < card.index("## License")
    for row in rows.values():
        assert f"`onnx/{row['file']}`" in table and f"`onnx/{row['file']}`" in card
        assert f"{row['max_abs_diff']:.2e}" in card
    # The clients the package's tests run on such a folder (tests/test_clients.py), with their floors.
    for text in (table, card):
        for name, client in hub_onnx.CLIENT_PARITY.items():
            assert f"| {name} {client['version']} |" in text
        q8 = hub_onnx.CLIENT_PARITY["transformers.js"]["rows"]["q8"]
        assert f"| `q8` | {q8['text']:.4f} | {q8['image']:.4f} |" in text
        assert hub_onnx.transformers_js_resize_note() in text
    # Re-running replaces the section instead of adding a second one.
    from jina_clip_v2.hub.model_card import set_onnx_section

    assert set_onnx_section(card, report).count("## ONNX") == 1


def test_external_data_in_chunks_loads_in_onnx_runtime(exported, reference, tmp_path, monkeypatch):
    model_proto = onnx.load(str(exported / "onnx" / "text_model.onnx"))
    weights = sum(len(t.raw_data) for t in model_proto.graph.initializer)
    monkeypatch.setattr(hub_onnx, "EXTERNAL_DATA_THRESHOLD", weights // 4)
    monkeypatch.setattr(hub_onnx, "EXTERNAL_DATA_CHUNK", weights // 3)
    files = hub_onnx.save_onnx(model_proto, tmp_path / "text_model.onnx")
    names = [f.name for f in files]
    assert names[:3] == ["text_model.onnx", "text_model.onnx_data", "text_model.onnx_data_1"]  # transformers.js chunk names
    assert all(n == f"text_model.onnx_data_{i}" for i, n in enumerate(names[3:], 2))
    stored = onnx.load(str(tmp_path / "text_model.onnx"), load_external_data=False)
    per_file: dict[str, list[int]] = {}
    for tensor in stored.graph.initializer:
        if tensor.external_data:
            info = {entry.key: int(entry.value) if entry.key != "location" else entry.value for entry in tensor.external_data}
            per_file.setdefault(info["location"], []).append(info["length"])
    assert sorted(per_file) == names[1:]
    # each chunk stays under the limit unless it holds a single tensor larger than the limit
    assert all(sum(sizes) <= weights // 3 or len(sizes) == 1 for sizes in per_file.values())
    assert hub_onnx.external_data_chunks(tmp_path / "text_model.onnx") == len(files) - 1
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in files)
    ids = np.array([[0, 5, 9, 2, 1], [0, 7, 2, 1, 1]])
    session = ort.InferenceSession(str(tmp_path / "text_model.onnx"))
    got = session.run(None, {"input_ids": ids, "attention_mask": (ids != 1).astype(np.int64)})[0]
    with torch.no_grad():
        expected = reference.get_text_features(torch.from_numpy(ids)).pooler_output.numpy()
    assert np.abs(got - expected).max() <= ATOL
    # the hint transformers.js reads for such files goes into config.json, and is removed again when not needed
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "jina_clip"}))
    hub_onnx._update_folder(folder, {"transformers.js_config": {"use_external_data_format": {"text_model.onnx": 2}}})
    assert json.loads((folder / "config.json").read_text())["transformers.js_config"] == {"use_external_data_format": {"text_model.onnx": 2}}
    hub_onnx._update_folder(folder, {"transformers.js_config": {}})
    assert "transformers.js_config" not in json.loads((folder / "config.json").read_text())


def test_cli_and_errors(exported, tmp_path, capsys):
    from jina_clip_v2.cli import COMMANDS, main as cli_main

    assert COMMANDS["onnx"][0] == "jina_clip_v2.hub.onnx"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["onnx", "--help"])
    assert exit_info.value.code == 0 and "--precisions" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["export", "--help"])
    assert "--onnx" in capsys.readouterr().out  # jina-clip export ... --onnx (exercised by the fixture)
    assert hub_onnx.main(["--model", str(tmp_path)]) == 2  # no config.json
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="--overwrite"):
        hub_onnx.export_onnx(exported)
    with pytest.raises(hub_onnx.OnnxExportError, match="unknown precisions"):
        hub_onnx.export_onnx(exported, tmp_path / "x", precisions=["int4"])
    with pytest.raises(FileNotFoundError, match="jina-clip onnx"):
        JinaCLIPOnnx(exported, onnx_folder=tmp_path).encode_text("x")
    # the folder's own weights, loaded strictly (what the export compares against)
    assert load_model(exported).config.projection_dim == 32


def test_the_export_prints_no_toolchain_notices(exported, tmp_path, capfd, caplog):
    """`jina-clip onnx` (and `jina-clip export --onnx`) print their progress lines and none of the notices of the
    toolchain: torch's exporter on torchvision operators and its own deprecations, ONNX Runtime's quantizer
    advice (`hub.onnx.quiet_toolchain`). Warnings are recorded each time here, as in a fresh process."""
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hub_onnx.main(["--model", str(exported), "--out", str(tmp_path / "onnx"), "--precisions", "int8", "--no-parity"]) == 0
    out, err = capfd.readouterr()
    assert "[hub.onnx] exporting the text tower" in out
    noise = ("torchvision", "pre-processing before quantization", "LeafSpec", "axis name")
    assert not [str(w.message) for w in caught if any(n in str(w.message) for n in noise)]
    assert not [n for n in noise if n in out + err], err[-2000:]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # the filters are gone afterwards: other code's warnings and logs are untouched
    assert logging.getLogger("torch.onnx").level == logging.NOTSET and not logging.getLogger().filters
