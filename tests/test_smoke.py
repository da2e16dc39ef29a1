"""The smoke subset: every entry point once, end to end, on the tiny model. CI runs it with the locked
versions (requirements/dev.lock); `make test-latest` runs this file alone with the newest releases of
transformers, sentence-transformers, accelerate, datasets, peft, huggingface_hub, safetensors, tokenizers
and kernels, so the next upstream release shows what it breaks before users do.

Load + encode (text, image, truncate_dim), export with the Sentence-Transformers files, SentenceTransformer
load + encode, both image pipelines, ONNX export + ONNX Runtime, a 2-step training run with a checkpoint and a
resume, `jina-clip eval run` on local data; and the loads that hub kernels broke (transformers 5.25 applies
them in every `from_pretrained`), with kernels on and off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import ROOT, build_processor, build_tokenizer, tiny_model

ATOL = 1e-5
TEXTS = ["a photo of a dog", "Ein Hund spielt im Schnee", "un chat ", "猫の写真"]


@pytest.fixture(scope="module")
def reference():
    model = tiny_model(seed=0)
    model.processor = build_processor(build_tokenizer(), image_size=model.config.vision_config.image_size)
    return model


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("smoke_images")
    rng = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([(70, 90), (56, 56), (120, 40)]):
        path = folder / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def exported(reference, tmp_path_factory) -> Path:
    from jina_clip_v2.hub.export import export_model

    return export_model(reference, tmp_path_factory.mktemp("smoke") / "tiny", processor=reference.processor)


def test_load_and_encode(exported, reference, images):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(exported), trust_remote_code=True)
    for truncate_dim in (None, 16):
        np.testing.assert_allclose(
            model.encode_text(TEXTS, truncate_dim=truncate_dim), reference.encode_text(TEXTS, truncate_dim=truncate_dim), atol=ATOL
        )
        np.testing.assert_allclose(
            model.encode_image(images, truncate_dim=truncate_dim), reference.encode_image(images, truncate_dim=truncate_dim), atol=ATOL
        )
    assert model.encode_text(TEXTS[0], truncate_dim=8).shape == (8,)


def test_export_writes_the_sentence_transformers_files_and_they_load(exported, reference, images):
    from sentence_transformers import SentenceTransformer

    modules = json.loads((exported / "modules.json").read_text())
    assert [module["type"] for module in modules] == ["custom_st.JinaCLIPTransformer", "sentence_transformers.models.Normalize"]
    model = SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(model.encode(TEXTS, normalize_embeddings=True), reference.encode_text(TEXTS), atol=ATOL)
    np.testing.assert_allclose(
        model.encode(TEXTS[:2], task="retrieval.query", normalize_embeddings=True),
        reference.encode_text(TEXTS[:2], task="retrieval.query"), atol=ATOL,
    )
    pictures = [Image.open(path) for path in images]
    np.testing.assert_allclose(model.encode(pictures, normalize_embeddings=True), reference.encode_image(images), atol=ATOL)


def test_both_image_pipelines(exported, reference, images):
    from transformers import pipeline

    extractor = pipeline("image-feature-extraction", model=str(exported), trust_remote_code=True)
    np.testing.assert_allclose(np.array(extractor(images[0]))[0], reference.encode_image(images[0]), atol=ATOL)
    classifier = pipeline("zero-shot-image-classification", model=str(exported), trust_remote_code=True)
    labels = ["dog", "cat", "house"]
    text = reference.encode_text([f"This is a photo of {label}." for label in labels])
    logits = reference.logit_scale.exp().item() * (reference.encode_image(images[0]) @ text.T)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    scores = {r["label"]: r["score"] for r in classifier(images[0], candidate_labels=labels)}
    np.testing.assert_allclose([scores[label] for label in labels], probs, atol=ATOL)


def test_onnx_export_and_runtime(exported, reference, images, tmp_path):
    from jina_clip_v2.hub.onnx import export_onnx
    from jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx

    export_onnx(exported, tmp_path / "onnx", precisions=["fp32"], parity=False)
    runtime = JinaCLIPOnnx(exported, onnx_folder=tmp_path / "onnx")
    np.testing.assert_allclose(runtime.encode_text(TEXTS), reference.encode_text(TEXTS), atol=1e-4)
    np.testing.assert_allclose(runtime.encode_image(images), reference.encode_image(images), atol=1e-4)


def test_two_training_steps_a_checkpoint_and_a_resume(tmp_path):
    from test_training import DEMO_LANGS, TINY, tiny_overrides

    from jina_clip_v2.training.demo_data import demo_sources
    from jina_clip_v2.training.stage import main as stage_main

    build_tokenizer().save_pretrained(tmp_path / "tokenizer")
    demo_sources(tmp_path / "demo", "train", DEMO_LANGS)
    assets = {"tokenizer": tmp_path / "tokenizer", "demo": tmp_path / "demo"}
    common = ["train.steps=2", "train.checkpoint_every=1", "train.keep_last=2"]
    whole = stage_main(["--config", str(TINY), *tiny_overrides(assets, tmp_path / "whole", *common)])
    # Stop after step 1 (its checkpoint written), then resume to step 2: the same losses as the whole run.
    stage_main(["--config", str(TINY), *tiny_overrides(assets, tmp_path / "resumed", *common, "train.steps=1")])
    resumed = stage_main(["--config", str(TINY), "--resume", "auto", *tiny_overrides(assets, tmp_path / "resumed", *common)])
    losses = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2]
    assert losses[1]["loss"] == expected[1]["loss"]
    assert resumed["samples_seen"] == whole["samples_seen"]


def test_eval_run_on_local_data(tmp_path):
    from _eval_fixtures import save_tiny_model, write_flickr_like

    from jina_clip_v2.evaluation.cli import main as eval_main

    model_dir = save_tiny_model(tmp_path / "model")
    data = write_flickr_like(tmp_path / "flickr", n_images=6)
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"tasks": [{"kind": "crossmodal", "name": "Flickr-like", "dataset": str(data)}]}))
    out = tmp_path / "out"
    assert eval_main(["run", "--model", str(model_dir), "--suite", str(suite), "--truncate-dims", "32,8", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["truncate_dim"] for r in results["results"]} == {32, 8}
    assert all(0.0 <= value <= 100.0 for r in results["results"] for value in r["metrics"].values())


# Runs in a fresh interpreter per setting: USE_HUB_KERNELS is read when transformers is imported.
KERNELS_SCRIPT = """
import json, sys
import numpy as np
import torch
from transformers import AutoModel

from jina_clip_v2.hub.export import export_model
from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel

folder, out, image = sys.argv[1], sys.argv[2], sys.argv[3]
use_kernels = {"auto": None, "on": True, "off": False}[sys.argv[4]]
kwargs = {} if use_kernels is None else {"use_kernels": use_kernels}
with torch.device("meta"):  # the real-size model, built without memory
    meta = JinaCLIPModel(JinaCLIPConfig())
assert all(p.device.type == "meta" for p in meta.parameters())
result = {"meta_parameters": sum(p.numel() for p in meta.parameters())}
ours = JinaCLIPModel.from_pretrained(folder, **kwargs)
remote = AutoModel.from_pretrained(folder, trust_remote_code=True, **kwargs)
texts = ["a photo of a dog", "un chat "]
for name, model in (("ours", ours), ("remote", remote)):
    result[name] = {"text": model.encode_text(texts).tolist(), "image": model.encode_image(image).tolist()}
export_model(ours, out, processor=ours.processor)
again = JinaCLIPModel.from_pretrained(out, **kwargs)
result["exported"] = again.encode_text(texts).tolist()
print(json.dumps(result))
"""


@pytest.mark.parametrize("hub_kernels, use_kernels", [("1", "auto"), ("0", "auto"), ("1", "on"), ("1", "off")])
def test_meta_device_load_and_export_with_hub_kernels_on_and_off(exported, reference, images, tmp_path, hub_kernels, use_kernels):
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    env.update(USE_HUB_KERNELS=hub_kernels, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KERNELS_SCRIPT), str(exported), str(tmp_path / "out"), images[0], use_kernels],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # The real-size model (865M in the paper; the merged LoRA makes ours 2.6M fewer: tests/test_model.py).
    assert result["meta_parameters"] == 862_697_409
    expected_text, expected_image = reference.encode_text(["a photo of a dog", "un chat "]), reference.encode_image(images[0])
    for name in ("ours", "remote"):
        np.testing.assert_allclose(result[name]["text"], expected_text, atol=ATOL)
        np.testing.assert_allclose(result[name]["image"], expected_image, atol=ATOL)
    np.testing.assert_allclose(result["exported"], expected_text, atol=ATOL)


def test_no_load_path_relies_on_a_meta_device_map():
    """transformers treats `device_map="meta"` as internal (5.25 kernelizes such loads and fails)."""
    offenders = []
    for folder in ("modeling", "hub", "training", "evaluation", "corpus", "jina_clip_v2", "benchmarks", "data"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if 'device_map="meta"' in text or "device_map='meta'" in text or '"device_map": "meta"' in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
