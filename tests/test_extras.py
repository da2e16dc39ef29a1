"""Each extra alone, as a user installs it: a fresh venv per extra (uv, offline, from the cache `make setup`
filled, at the versions of requirements/dev.lock) with the built wheel and that extra only. Its command's
`--help` and one real call work there, a command of another extra names the extra to install, and the base
install exports without sentence-transformers or accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from _tiny import ROOT
from _wheel import build_wheel

UV = ROOT / ".uv" / "bin" / "uv"
LOCK = ROOT / "requirements" / "dev.lock"
TEXTS = ["a dog ", "Ein Hund spielt im Schnee"]


def _find_links() -> list[str]:
    """The wheel folder pip's configuration names (the CPU build of torch), as the Makefile passes it to uv."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True)
    return [arg for folder in done.stdout.split() for arg in ("--find-links", folder)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from _eval_fixtures import save_tiny_model, write_flickr_like
    from _notebook_model import export_tiny_model
    from _tiny import build_tokenizer

    from jina_clip_v2.training.demo_data import demo_sources

    if not UV.is_file():
        raise AssertionError(f"{UV} is missing: run `make setup`")
    tmp = tmp_path_factory.mktemp("extras")
    build_tokenizer().save_pretrained(tmp / "tokenizer")
    demo_sources(tmp / "demo", "train", ["en", "de"])
    return {
        "wheel": build_wheel(tmp),
        "source": save_tiny_model(tmp / "source"),
        "exported": export_tiny_model(tmp / "exported"),
        "flickr": write_flickr_like(tmp / "flickr", n_images=6),
        "tokenizer": tmp / "tokenizer",
        "demo": tmp / "demo",
    }


def _venv(inputs: dict, extra: str, folder: Path) -> dict:
    subprocess.run([str(UV), "venv", "-q", "--python", sys._base_executable, str(folder)], check=True)
    python = folder / "bin" / "python"
    requirement = f"{inputs['wheel']}[{extra}]" if extra else str(inputs["wheel"])
    done = subprocess.run(
        [str(UV), "pip", "install", "-q", "--offline", "--python", str(python), "-c", str(LOCK), *_find_links(), requirement],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(folder / "hf"), TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    return {"python": python, "cli": folder / "bin" / "jina-clip", "env": env, "cwd": folder}


def _run(venv: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, args)], cwd=venv["cwd"], env=venv["env"], capture_output=True, text=True, timeout=600)


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _installed(venv: dict, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return _run(venv, venv["python"], "-c", probe).returncode == 0


def _expected_text(folder: Path) -> np.ndarray:
    from jina_clip_v2.modeling import JinaCLIPModel

    return JinaCLIPModel.from_pretrained(folder).encode_text(TEXTS)


ENCODE = """
import sys, numpy as np
from transformers import AutoModel
np.save(sys.argv[2], AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).encode_text({texts!r}))
""".format(texts=TEXTS)


def test_base_install_exports_and_encodes(inputs, tmp_path):
    venv = _venv(inputs, "", tmp_path / "venv")
    for module in ("sentence_transformers", "accelerate", "onnx", "datasets"):
        assert not _installed(venv, module), f"{module} is in the base install"
    assert "usage: jina-clip export" in _ok(_run(venv, venv["cli"], "export", "--help"))
    _ok(_run(venv, venv["cli"], "export", "--model", inputs["source"], "--out", tmp_path / "out"))
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "model.safetensors"):
        assert (tmp_path / "out" / name).is_file(), name
    _ok(_run(venv, venv["python"], "-c", ENCODE, tmp_path / "out", tmp_path / "text.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "text.npy"), _expected_text(tmp_path / "out"), atol=1e-6)
    # Commands of the extras name what to install, in one line.
    calls = {
        "train": ["train", "--help"],
        "demo": ["demo", "--help"],
        "eval": ["eval", "run", "--model", inputs["source"], "--suite", "paper"],
        "onnx": ["onnx", "--model", tmp_path / "out", "--out", tmp_path / "onnx", "--precisions", "fp32"],
    }
    for command, extra in (("train", "train"), ("demo", "train"), ("eval", "eval"), ("onnx", "onnx")):
        done = _run(venv, venv["cli"], *calls[command])
        assert done.returncode == 1, (command, done.stdout[-500:], done.stderr[-2000:])
        assert f"needs the [{extra}] extra" in done.stderr and f"pip install 'jina-clip-v2[{extra}]'" in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2, (command, done.stderr)


def test_st_extra_loads_an_export(inputs, tmp_path):
    venv = _venv(inputs, "st", tmp_path / "venv")
    script = "import sys, numpy as np\nfrom sentence_transformers import SentenceTransformer\n" + (
        f"np.save(sys.argv[2], SentenceTransformer(sys.argv[1], trust_remote_code=True).encode({TEXTS!r}, normalize_embeddings=True))"
    )
    _ok(_run(venv, venv["python"], "-c", script, inputs["exported"], tmp_path / "st.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "st.npy"), _expected_text(inputs["exported"]), atol=1e-6)


def test_onnx_extra_exports_and_runs(inputs, tmp_path):
    venv = _venv(inputs, "onnx", tmp_path / "venv")
    assert "usage: jina-clip onnx" in _ok(_run(venv, venv["cli"], "onnx", "--help"))
    _ok(_run(venv, venv["cli"], "onnx", "--model", inputs["exported"], "--out", tmp_path / "onnx", "--precisions", "fp32"))
    script = (
        "import sys, numpy as np\nfrom jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx\n"
        f"np.save(sys.argv[3], JinaCLIPOnnx(sys.argv[1], onnx_folder=sys.argv[2]).encode_text({TEXTS!r}))"
    )
    _ok(_run(venv, venv["python"], "-c", script, inputs["exported"], tmp_path / "onnx", tmp_path / "onnx.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "onnx.npy"), _expected_text(inputs["exported"]), atol=1e-4)


def test_train_extra_runs_a_stage(inputs, tmp_path):
    venv = _venv(inputs, "train", tmp_path / "venv")
    assert "usage: jina-clip train" in _ok(_run(venv, venv["cli"], "train", "--help"))
    from test_training import tiny_overrides

    overrides = tiny_overrides(inputs, tmp_path / "run", "train.steps=2", "train.checkpoint_every=2")
    config = ROOT / "training" / "configs" / "tiny.yaml"
    _ok(_run(venv, venv["cli"], "train", "--config", config, *overrides))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(np.isfinite(m["loss"]) for m in metrics)
    assert (tmp_path / "run" / "config.json").is_file() or (tmp_path / "run" / "model.safetensors").is_file() or any(
        (tmp_path / "run").rglob("model.safetensors")
    )


def test_eval_extra_runs_an_evaluation(inputs, tmp_path):
    venv = _venv(inputs, "eval", tmp_path / "venv")
    assert "usage: jina-clip eval" in _ok(_run(venv, venv["cli"], "eval", "--help"))
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"tasks": [{"kind": "crossmodal", "name": "Flickr-like", "dataset": str(inputs["flickr"])}]}))
    _ok(_run(venv, venv["cli"], "eval", "run", "--model", inputs["source"], "--suite", suite, "--truncate-dims", "32",
             "--out", tmp_path / "out", "--quiet"))
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["results"] and all(r["truncate_dim"] == 32 for r in results["results"])


def test_embed_and_search_extras_each_run_their_commands(inputs, tmp_path):
    """[embed] alone embeds a folder of images (and `index` names [search]); [search] alone indexes those shards
    and answers a query with the numbers of the model's encode_* (`embed` there names [embed])."""
    from jina_clip_v2.modeling import JinaCLIPModel

    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        pixels = np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"photo{seed}.png")
    embed = _venv(inputs, "embed", tmp_path / "embed-venv")
    assert not _installed(embed, "lancedb") and not _installed(embed, "ray")
    _ok(_run(embed, embed["cli"], "embed", photos, "--model", inputs["exported"], "--out", tmp_path / "emb", "--no-progress"))
    refused = _run(embed, embed["cli"], "index", tmp_path / "emb", "--out", tmp_path / "index")
    assert refused.returncode == 1 and "needs the [search] extra" in refused.stderr, refused.stderr

    search = _venv(inputs, "search", tmp_path / "search-venv")
    assert not _installed(search, "datasets")
    _ok(_run(search, search["cli"], "index", tmp_path / "emb", "--out", tmp_path / "index"))
    hits = json.loads(_ok(_run(search, search["cli"], "search", tmp_path / "index", "--image", photos / "photo1.png", "--json")))
    model = JinaCLIPModel.from_pretrained(inputs["exported"])
    images = model.encode_image([str(photos / f"photo{i}.png") for i in range(3)])
    expected = sorted(range(3), key=lambda i: -float(images[1] @ images[i]))
    assert [hit["path"] for hit in hits["hits"]] == [f"photo{i}.png" for i in expected]
    refused = _run(search, search["cli"], "embed", photos, "--model", inputs["exported"], "--out", tmp_path / "emb2")
    assert refused.returncode == 1 and "needs the [embed] extra" in refused.stderr, refused.stderr
