"""hub.convert: a tiny snapshot in the release's layout (release config.json, LoRA-parametrised text
weights, tokenizer, release preprocessor_config.json) becomes a Hub folder whose embeddings equal those
of the model built directly from the independently merged reference weights."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _release_fixture import write_release_snapshot
from _tiny import build_processor, build_tokenizer, tiny_config

from jina_clip_v2.hub._util import folder_files
from jina_clip_v2.hub.convert import main as convert_main
from jina_clip_v2.hub.model_card import validate_model_card
from jina_clip_v2.modeling import JinaCLIPModel

TEXTS = ["a photo of a dog in the snow", "Ein Hund spielt im Schnee", "un chat"]
RELEASE_PREPROCESSOR = {
    "image_processor_type": "JinaCLIPImageProcessor",
    "processor_class": "JinaCLIPProcessor",
    "auto_map": {
        "AutoImageProcessor": "jinaai/jina-clip-implementation--processing_clip.JinaCLIPImageProcessor",
        "AutoProcessor": "jinaai/jina-clip-implementation--processing_clip.JinaCLIPProcessor",
    },
    "size": 56,
    "resize_mode": "shortest",
    "interpolation": "bicubic",
    "fill_color": 0,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    # Saved before any use: a used fast tokenizer also saves the padding / truncation of its last call.
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer

    return load_tokenizer(tokenizer_dir)  # the snapshot's tokenizer.json as written, as the release read it


def make_snapshot(folder: Path, tokenizer_dir: Path, fmt: str = "safetensors") -> dict:
    info = write_release_snapshot(folder, tiny_config(), seed=0, fmt=fmt)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, folder / name)
    (folder / "preprocessor_config.json").write_text(json.dumps(RELEASE_PREPROCESSOR, indent=2))
    return info


@pytest.fixture(scope="module")
def converted(tokenizer_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("convert")
    info = make_snapshot(work / "snapshot", tokenizer_dir)
    code = convert_main(["--from", str(work / "snapshot"), "--out", str(work / "out"), "--repo-id", "someone/jina-clip-v2-converted"])
    assert code == 0
    return work, info


def direct_model(info: dict, tokenizer) -> JinaCLIPModel:
    """Built from our config and the fixture's float64 merge, independently of the converter."""
    model = JinaCLIPModel(tiny_config()).eval()
    model.load_state_dict({k: v.float() for k, v in info["merged"].items()}, strict=True)
    model.processor = build_processor(tokenizer)
    return model


def test_converted_folder_embeds_like_the_directly_built_model(converted, tokenizer):
    from transformers import AutoModel

    work, info = converted
    model = AutoModel.from_pretrained(work / "out", trust_remote_code=True)
    reference = direct_model(info, tokenizer)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((64, 90), (100, 56))]
    for got, expected in (
        (model.encode_text(TEXTS), reference.encode_text(TEXTS)),
        (model.encode_text(TEXTS, task="retrieval.query"), reference.encode_text(TEXTS, task="retrieval.query")),
        (model.encode_image(images), reference.encode_image(images)),
        (model.encode_image(images, truncate_dim=16), reference.encode_image(images, truncate_dim=16)),
    ):
        assert np.abs(got - expected).max() <= 1e-5


def test_converted_folder_is_a_complete_hub_folder(converted):
    work, _ = converted
    out = work / "out"
    names = {str(p) for p in folder_files(out)}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "modules.json",
            "config_sentence_transformers.json", "sentence_bert_config.json", "README.md", "custom_st.py"} <= names  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert "hf_model_config_kwargs" not in json.dumps(config)  # our config, not the release's
    assert config["auto_map"]["AutoModel"] == "modeling_jina_clip.JinaCLIPModel"
    # The release's preprocessor_config.json comes out as it went in (our code in auto_map, our decoding
    # options added: keys transformers.js and fastembed ignore).
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    ours = {"auto_map": {"AutoImageProcessor": "processing_jina_clip.JinaCLIPImageProcessor"},
            "exif_transpose": False, "fetch_timeout": 20.0, "fetch_max_bytes": 64 * 1024 * 1024,
            "max_image_pixels": 89_478_485, "max_resize_pixels": 2**23}  # fmt: skip
    assert preprocessor == {**RELEASE_PREPROCESSOR, **ours}
    assert json.loads((out / "processor_config.json").read_text())["image_processor"] == {
        k: v for k, v in preprocessor.items() if k != "processor_class"
    }
    data = validate_model_card(out / "README.md")
    assert data.base_model == "jinaai/jina-clip-v2"
    assert "converted" in (out / "README.md").read_text()


def test_bin_snapshot_converts_to_the_same_bytes(converted, tokenizer_dir, tmp_path):
    """A `pytorch_model.bin` snapshot (read with torch.load(weights_only=True)) of the same weights gives a
    byte-identical folder."""
    work, _ = converted
    make_snapshot(tmp_path / "snapshot", tokenizer_dir, fmt="bin")
    args = ["--from", str(tmp_path / "snapshot"), "--out", str(tmp_path / "out"), "--repo-id", "someone/jina-clip-v2-converted"]
    assert convert_main(args + ["--no-check"]) == 0
    files = folder_files(work / "out")
    assert files == folder_files(tmp_path / "out")
    for name in files:
        assert (work / "out" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


def test_convert_errors_are_clear(converted, tokenizer_dir, tmp_path, capsys):
    work, _ = converted
    # an already converted folder is not a release snapshot
    assert convert_main(["--from", str(work / "out"), "--out", str(tmp_path / "a")]) == 2
    assert "not a config.json of the original" in capsys.readouterr().err
    # no tokenizer in the snapshot
    write_release_snapshot(tmp_path / "bare", tiny_config(), seed=0)
    assert convert_main(["--from", str(tmp_path / "bare"), "--out", str(tmp_path / "b")]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err
    # ... which --tokenizer supplies
    tok = str(tokenizer_dir)
    assert convert_main(["--from", str(tmp_path / "bare"), "--out", str(tmp_path / "c"), "--tokenizer", tok, "--no-check"]) == 0
    # a .bin holding more than tensors is refused, never unpickled
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((tmp_path / "bare" / "config.json").read_text())
    torch.save({"x": torch.zeros(1), "payload": argparse.Namespace(a=1)}, evil / "pytorch_model.bin")
    assert convert_main(["--from", str(evil), "--out", str(tmp_path / "d"), "--tokenizer", tok]) == 2
    assert "weights_only" in capsys.readouterr().err
    for name in ("a", "b", "d"):
        assert not (tmp_path / name).exists()
