"""Bad inputs of the model's own entry points, round two (issue 20 items 1, 2, 3 and 6, issue 21): one table of
cases, each asserting a clear error (its type, and a message that names the problem) or the correct result; then
the cases that need more than one call: code planted in a folder never runs unless the caller passed
trust_remote_code, eight threads on one model give the serial results, and a huge text costs bounded memory.

Adding a case: append a `Case` to `CASES`; `run(ctx)` gets the shared fixtures."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import ROOT, build_processor, build_tokenizer, tiny_model
from jina_clip_v2.modeling import JinaCLIPModel
from jina_clip_v2.modeling.policy_jina_clip import TEXT_CHARS_PER_TOKEN, text_settings

IMAGES = sorted((ROOT / "data" / "tuxpaint" / "images").iterdir())
OK = None  # `error` of a case whose result is checked by `check` instead


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Any], Any]
    error: type[BaseException] | tuple[type[BaseException], ...] | None = OK
    match: str = ""
    check: Callable[[Any, Any], None] | None = None  # (ctx, result) -> asserts, for the correct-result cases


class Ctx:
    """Shared inputs: the tiny model with its processor, an exported folder, a scratch folder."""

    def __init__(self, model, exported: Path, tmp: Path):
        self.model, self.exported, self.tmp = model, exported, tmp

    def png(self, index: int = 0) -> bytes:
        buffer = io.BytesIO()
        Image.open(IMAGES[index]).save(buffer, format="PNG")
        return buffer.getvalue()


def equals(expected: Callable[[Any], Any], atol: float = 1e-6) -> Callable:
    def check(ctx, result) -> None:
        np.testing.assert_allclose(np.asarray(result), np.asarray(expected(ctx)), atol=atol, rtol=0)

    return check


def _with_config(ctx, name: str, value, call: Callable):
    """`call(model)` with `model.config.<name>` set to `value`, restored afterwards."""
    old = getattr(ctx.model.config, name)
    setattr(ctx.model.config, name, value)
    try:
        return call(ctx.model)
    finally:
        setattr(ctx.model.config, name, old)


def _open_file(ctx):
    with open(IMAGES[1], "rb") as handle:
        return ctx.model.encode_image(handle)


def _small_vocabulary_model():
    return tiny_model(seed=1, vocab_size=500)  # the test tokenizer has 1000 ids


def _load_with_small_vocabulary(ctx):
    folder = ctx.tmp / "small_vocabulary"
    _small_vocabulary_model().save_pretrained(folder)
    build_processor(build_tokenizer()).save_pretrained(folder)
    return JinaCLIPModel.from_pretrained(folder)


def _assign_large_tokenizer(ctx):
    _small_vocabulary_model().processor = ctx.model.processor


def _sentence_transformer(ctx, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(ctx.exported), trust_remote_code=True, device="cpu", **kwargs)


LONG = "word " * 7000  # 35,000 characters: longer than the default bound at 512 tokens (32,768), 7000 tokens

CASES = [
    # Listing: what is one input and what is a batch (issue 20 item 6)
    Case("image-bytesio-is-one-image", lambda c: c.model.encode_image(io.BytesIO(c.png())),
         check=equals(lambda c: c.model.encode_image(c.png()))),
    Case("image-open-file-is-one-image", _open_file, check=equals(lambda c: c.model.encode_image(str(IMAGES[1])))),
    Case("image-dict-refused", lambda c: c.model.encode_image({"image": str(IMAGES[0])}), TypeError,
         r"images must be an image or a list of them, not a dict"),
    Case("image-1d-numeric-array-refused", lambda c: c.model.encode_image(np.frombuffer(c.png(), dtype=np.uint8)),
         ValueError, r"got a 1-D array of shape \(\d+,\) \(for encoded image bytes pass bytes\(array\)\)"),
    Case("image-1d-object-array-is-a-batch", lambda c: c.model.encode_image(np.array([str(p) for p in IMAGES[:2]], dtype=object)),
         check=equals(lambda c: c.model.encode_image([str(p) for p in IMAGES[:2]]))),
    Case("text-dict-refused", lambda c: c.model.encode_text({"a frog": 1}), TypeError, r"texts must be a string .* not a dict"),
    Case("text-generator-is-a-batch", lambda c: c.model.encode_text(t for t in ["a frog", "un chat"]),
         check=equals(lambda c: c.model.encode_text(["a frog", "un chat"]))),
    # Truncation settings (issue 20 items 2 and 6)
    Case("config-max-text-length-0-refused", lambda c: _with_config(c, "max_text_length", 0, lambda m: m.encode_text("a")),
         ValueError, r"config\.max_text_length must be >= 1, got 0"),
    Case("config-max-text-length-0-refused-by-the-onnx-helper-policy", lambda c: text_settings({}, None, 0),
         ValueError, r"config\.max_text_length must be >= 1, got 0"),
    Case("max-chars-0-refused", lambda c: c.model.encode_text("a", max_chars=0), ValueError, r"max_chars must be >= 1, got 0"),
    Case("long-text-cut-keeps-the-tokens", lambda c: c.model.encode_text(LONG),
         check=equals(lambda c: c.model.encode_text(LONG, max_chars=10**6))),
    Case("huge-whitespace-run-refused", lambda c: c.model.encode_text(" " * 100_000 + "word"), ValueError,
         r"text 0 has 100004 characters, more than max_chars=32768, and its kept tokens reach character \d+, past the first 16384"),
    Case("long-text-without-truncation-refused", lambda c: c.model.encode_text(["a", LONG], truncation=False), ValueError,
         r"text 1 has 35000 characters, more than max_chars=32768, and truncation is off"),
    # The vocabulary (issue 20 item 6)
    Case("tokenizer-larger-than-vocabulary-refused-at-load", _load_with_small_vocabulary, ValueError,
         r"the tokenizer has 1000 tokens, more than the model's vocabulary of 500"),
    Case("tokenizer-larger-than-vocabulary-refused-when-assigned", _assign_large_tokenizer, ValueError,
         r"the tokenizer has 1000 tokens, more than the model's vocabulary of 500"),
    # One Matryoshka check (issue 20 item 6)
    Case("st-truncate-dim-numpy-int",
         lambda c: _sentence_transformer(c, truncate_dim=np.int64(16)).encode(["a frog"], normalize_embeddings=True),
         check=equals(lambda c: c.model.encode_text(["a frog"], truncate_dim=16))),
    Case("st-truncate-dim-untrained-numpy-int", lambda c: _sentence_transformer(c, truncate_dim=np.int64(12)).encode(["a"]),
         ValueError, r"truncate_dim=np\.int64\(12\) is not supported; valid values: \[8, 16, 32\]"),
    Case("truncate-dim-numpy-int", lambda c: c.model.encode_text(["a frog"], truncate_dim=np.int64(16)),
         check=equals(lambda c: c.model.encode_text(["a frog"], truncate_dim=16))),
]


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    from jina_clip_v2.hub.export import export_model

    return export_model(model, tmp_path_factory.mktemp("bad_inputs_model") / "tiny", processor=model.processor)


@pytest.fixture(scope="module")
def ctx(model, exported, tmp_path_factory) -> Ctx:
    return Ctx(model, exported, tmp_path_factory.mktemp("scratch"))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(ctx, case):
    if case.error is OK:
        case.check(ctx, case.run(ctx))
        return
    with pytest.raises(case.error) as raised:
        case.run(ctx)
    assert re.search(case.match, str(raised.value)), str(raised.value)


# ----------------------------------------------------------------------------------------------------------
# Code planted in a folder runs only with trust_remote_code (issue 20 item 1, issue 21)
# ----------------------------------------------------------------------------------------------------------


def _plant(folder: Path, marker: Path) -> None:
    """Every Python file of the folder writes `marker` when executed, and the tokenizer and processor configs map
    classes in planted modules of their own."""
    line = f"\nimport pathlib as _p; _p.Path({str(marker)!r}).write_text(__name__)\n"
    for name in ("tokenization_planted.py", "processing_planted.py"):
        (folder / name).write_text("from transformers import PreTrainedTokenizerFast as PlantedTokenizer, CLIPProcessor as PlantedProcessor\n")
    for path in folder.glob("*.py"):
        path.write_text(path.read_text() + line)
    for name, entry in (("tokenizer_config.json", {"AutoTokenizer": ["tokenization_planted.PlantedTokenizer", None]}),
                        ("processor_config.json", {"AutoProcessor": "processing_planted.PlantedProcessor"})):
        settings = json.loads((folder / name).read_text())
        settings["auto_map"] = entry
        (folder / name).write_text(json.dumps(settings))


def test_loading_runs_no_code_of_the_folder_without_trust_remote_code(ctx, tmp_path):
    import shutil

    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer, pipeline
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from jina_clip_v2.hub.export import export_model
    from jina_clip_v2.hub.onnx import load_for_export
    from jina_clip_v2.modeling.pipeline_jina_clip import JinaCLIPImageFeatureExtractionPipeline
    from jina_clip_v2.training.builders import build_model
    from jina_clip_v2.training.config import load_config

    folder, marker = tmp_path / "planted_folder", tmp_path / "ran.txt"
    shutil.copytree(ctx.exported, folder)
    _plant(folder, marker)
    texts, image = ["a frog ", "un chat"], Image.open(IMAGES[2])
    expected = ctx.model.encode_text(texts)

    # The package's class, the registered model type (no trust_remote_code), the pipelines, export, ONNX, training.
    loaded = JinaCLIPModel.from_pretrained(folder)
    np.testing.assert_allclose(loaded.encode_text(texts), expected, atol=1e-6, rtol=0)
    auto = AutoModel.from_pretrained(folder)
    assert type(auto) is JinaCLIPModel and type(AutoConfig.from_pretrained(folder)).__module__.startswith("jina_clip_v2.")
    np.testing.assert_allclose(auto.encode_text(texts), expected, atol=1e-6, rtol=0)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor.image_processor).__module__ == "jina_clip_v2.modeling.processing_jina_clip"
    assert type(AutoImageProcessor.from_pretrained(folder)) is type(processor.image_processor)
    AutoTokenizer.from_pretrained(folder)
    features = pipeline("feature-extraction", model=str(folder))(texts[1])
    np.testing.assert_allclose(np.asarray(features)[0], expected[1], atol=1e-5, rtol=0)
    images = pipeline("image-feature-extraction", model=str(folder), pipeline_class=JinaCLIPImageFeatureExtractionPipeline)(image)
    np.testing.assert_allclose(np.asarray(images)[0], ctx.model.encode_image(image), atol=1e-5, rtol=0)
    export_model(folder, tmp_path / "re-exported")
    load_for_export(folder)
    config = load_config(ROOT / "training" / "configs" / "tiny.yaml", [f"model.init_from={folder}", f"model.processor_from={folder}"])
    build_model(config.model, 0)
    assert not marker.exists(), f"folder code ran: {marker.read_text()}"

    # The control: what trust_remote_code runs is the folder's code, and the plant works.
    get_class_from_dynamic_module("modeling_jina_clip.JinaCLIPModel", str(folder))
    assert marker.exists()


def test_plain_save_pretrained_folder_keeps_trailing_pieces(model, tmp_path):
    """A folder written by `model.save_pretrained` + `processor.save_pretrained` names transformers' XLM-R tokenizer
    class, which rebuilds the pipeline and drops a trailing "\u2581": the package loads tokenizer.json as written."""
    model.save_pretrained(tmp_path)
    build_processor(build_tokenizer()).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"].startswith("XLMRoberta")
    loaded = JinaCLIPModel.from_pretrained(tmp_path)
    assert loaded.processor.tokenizer("a dog ")["input_ids"] == [0, 4, 6, 285, 29, 4, 2]
    np.testing.assert_allclose(loaded.encode_text(["a dog ", "a dog"]), model.encode_text(["a dog ", "a dog"]), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# Eight threads on one model (issue 20 item 3)
# ----------------------------------------------------------------------------------------------------------

THREAD_TEXTS = [" ".join(["frog", "chat", "Hund", "pájaro"][i % 4] for _ in range(3 + 11 * i)) for i in range(12)]


def _calls(model, tokenizer) -> list[Callable]:
    """Eight different calls: encode_text with other lengths, budgets, tasks and widths (the packed CPU path and
    the tokenizer's truncation settings change between them), padded and unpadded get_text_features, and a
    failing call."""
    batch = tokenizer(THREAD_TEXTS, padding=True, return_tensors="pt")

    def features(unpadded):
        with torch.inference_mode():
            return model.get_text_features(batch["input_ids"], batch["attention_mask"], unpadded=unpadded).pooler_output.numpy()

    def failing():
        with pytest.raises(TypeError, match="item 2 is int"):
            model.encode_text(["a", "b", 3])
        return model.encode_text(THREAD_TEXTS[:3])

    return [
        lambda: model.encode_text(THREAD_TEXTS),
        lambda: model.encode_text(THREAD_TEXTS, max_length=8),
        lambda: model.encode_text(THREAD_TEXTS, max_length=20, batch_size=3),
        lambda: model.encode_text(THREAD_TEXTS, max_tokens_per_batch=40, task="retrieval.query", truncate_dim=16),
        lambda: features(False),
        lambda: features(True),
        failing,
        lambda: model.encode_text(THREAD_TEXTS[::-1], max_length=12),
    ]


@pytest.mark.parametrize("history", [["sdpa"], ["eager"], ["eager", "sdpa"]], ids="->".join)
def test_eight_threads_give_the_serial_results(model, tokenizer, history):
    for attn in history:
        model.set_attn_implementation(attn)
    try:
        calls = _calls(model, tokenizer)
        serial = [call() for call in calls]
        results: list = [None] * len(calls)
        errors: list = []
        start = threading.Barrier(len(calls))

        def worker(index):
            try:
                start.wait()
                for _ in range(3):
                    results[index] = calls[index]()
            except BaseException as err:  # noqa: BLE001 - reported below with its thread
                errors.append((index, err))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for index, (got, want) in enumerate(zip(results, serial)):
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=f"call {index}")
        # Nothing was left switched: the backend is the caller's, and every path still works.
        assert model.config.text_config._attn_implementation == history[-1]
        np.testing.assert_allclose(calls[0](), serial[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(calls[4](), serial[4], atol=1e-6, rtol=0)
    finally:
        model.set_attn_implementation("sdpa")


# ----------------------------------------------------------------------------------------------------------
# Memory: a 20-million-character text (issue 20 item 2)
# ----------------------------------------------------------------------------------------------------------


def _resident_peak_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset needs Linux /proc")
def test_twenty_million_characters_cost_bounded_memory(model):
    text = "word " * 4_000_000  # 20M characters, ~4M tokens uncut
    model.encode_text(["warm up"])
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _resident_peak_kib()
    got = model.encode_text(text)
    peak_mib = (_resident_peak_kib() - before) / 1024
    assert peak_mib < 64, f"encode_text of 20M characters raised the resident peak by {peak_mib:.0f} MiB"
    # The result is the text's: the kept tokens are those of the first max_length tokens of the whole text.
    kept = TEXT_CHARS_PER_TOKEN * model.config.max_text_length
    np.testing.assert_allclose(got, model.encode_text(text[: kept // 4]), atol=1e-6, rtol=0)
