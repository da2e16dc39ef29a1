"""hub.export: the Hub-ready folder of a tiny model, loaded in a fresh process (AutoModel, AutoProcessor,
SentenceTransformer) with the Hub offline and this repository not importable; Sentence-Transformers
parity with encode_text / encode_image; determinism; sharding; the model card; the CLI."""

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

from _tiny import BLOCK_REPO_IMPORTS, ROOT, build_processor, build_tokenizer, tiny_model

from jina_clip_v2.hub._util import dump_json, folder_files
from jina_clip_v2.hub.export import ExportError, export_model, load_model, main as export_main
from jina_clip_v2.hub.model_card import ModelCardError, load_eval_results, validate_model_card

ATOL = 1e-5
INSTRUCTION = "Represent the query for retrieving evidence documents: "
TEXTS = [
    "a photo of a dog in the snow",
    "Ein Hund spielt im Schnee",
    "un chat noir dort sur le canapé",
    "a kite " * 400,  # longer than the 512-token limit: both paths must truncate the same way
]
EVAL_RESULTS = {
    "model": "tiny-jina-clip",
    "results": [
        {
            "task": "Flickr30K",
            "type": "text-to-image retrieval",
            "dataset": {"name": "Flickr30K", "id": "nlphuji/flickr_1k_test_image_text_retrieval", "split": "test", "language": "en"},
            "metrics": {"recall@1": 0.8312, "recall@5": 0.9624},
        },
        {
            "task": "Flickr30K",
            "type": "text-to-image retrieval",
            "dataset": {"name": "Flickr30K", "id": "nlphuji/flickr_1k_test_image_text_retrieval", "split": "test", "language": "en"},
            "metrics": {"recall@1": 0.7901},
            "truncate_dim": 16,
        },
        {
            "task": "XM3600",
            "type": "image-to-text retrieval",
            "dataset": {"name": "Crossmodal-3600", "split": "test", "language": "de"},
            "metrics": {"recall@1": 0.6543},
        },
    ],
}
TRAINING_SUMMARY = {
    "base_model": "jinaai/jina-embeddings-v3",
    "stages": [
        {"name": "stage1", "steps": 20, "image_size": 224, "text_max_length": 77, "final_loss": 2.5},
        {"name": "stage2", "steps": 10, "image_size": "224->384", "text_max_length": 512, "final_loss": 1.75},
    ],
}
EXPORT_KWARGS = dict(eval_results=EVAL_RESULTS, training_summary=TRAINING_SUMMARY, repo_id="someone/tiny-jina-clip")


@pytest.fixture(scope="module")
def reference():
    model = tiny_model()
    model.processor = build_processor(build_tokenizer())
    return model


@pytest.fixture(scope="module")
def exported(reference, tmp_path_factory) -> Path:
    return export_model(reference, tmp_path_factory.mktemp("export") / "tiny-jina-clip", **EXPORT_KWARGS)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    """PNG files (lossless) read by both this process and the fresh one: odd sizes, one greyscale."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((70, 95), (120, 57), (56, 56))):
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(array) if i < 2 else Image.fromarray(array[..., 0], mode="L")
        paths.append(folder / f"image{i}.png")
        image.save(paths[-1])
    return paths


# A fresh interpreter: `-I` keeps the repository (cwd, script folder, PYTHONPATH) off sys.path, and an
# empty HF_HOME holds nothing but the remote-code modules transformers copies there.
FRESH_PROCESS_SCRIPT = BLOCK_REPO_IMPORTS + textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from PIL import Image

    folder, out, repo, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert not any(os.path.realpath(p or ".") == os.path.realpath(repo) for p in sys.path), sys.path
    try:
        import jina_clip_v2.modeling  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("the repository's modeling package is importable in the fresh process")

    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoProcessor

    texts = json.loads(os.environ["PROBE_TEXTS"])
    images = [Image.open(p) for p in paths]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    result = {
        "text": model.encode_text(texts),
        "query": model.encode_text(texts, task="retrieval.query"),
        "image": model.encode_image(images),
        "text16": model.encode_text(texts, truncate_dim=16),
        "query16": model.encode_text(texts, task="retrieval.query", truncate_dim=16),
        "image16": model.encode_image(images, truncate_dim=16),
    }
    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    mixed = [texts[0], images[0], texts[1], paths[1], texts[3], images[2]]  # a path is an image too
    result.update(
        st_text=st.encode(texts),
        st_query=st.encode(texts, prompt_name="retrieval.query"),
        st_encode_query=st.encode_query(texts),
        st_image=st.encode(images),
        st_mixed=st.encode(mixed, batch_size=4),
        st_mixed_query=st.encode(mixed, prompt_name="retrieval.query"),
    )
    st16 = SentenceTransformer(folder, trust_remote_code=True, device="cpu", truncate_dim=16)
    result.update(
        st16_text=st16.encode(texts, normalize_embeddings=True),
        st16_query=st16.encode(texts, prompt_name="retrieval.query", normalize_embeddings=True),
        st16_image=st16.encode(images, normalize_embeddings=True),
        st16_mixed=st16.encode(mixed, normalize_embeddings=True),
        st16_text_raw=st16.encode(texts),
    )
    np.savez(out, **result)
    print(json.dumps({
        "processor": type(processor).__name__,
        "image_processor": type(processor.image_processor).__name__,
        "tokenizer": type(processor.tokenizer).__name__,
        "model_module": type(model).__module__,
        "st_modules": [type(module).__name__ for module in st],
        "st_similarity": st.similarity_fn_name,
        "st_dim": st.get_sentence_embedding_dimension(),
    }))
    """
)


@pytest.fixture(scope="module")
def fresh(exported, image_files, tmp_path_factory):
    work = tmp_path_factory.mktemp("fresh")
    script = work / "load.py"
    script.write_text(FRESH_PROCESS_SCRIPT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(work / "hf_home"), PROBE_TEXTS=json.dumps(TEXTS), TOKENIZERS_PARALLELISM="false")
    out = work / "embeddings.npz"
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(exported), str(out), str(ROOT), *map(str, image_files)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info, dict(np.load(out))


def _close(got, expected, atol=ATOL):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape
    diff = np.abs(got - expected).max()
    assert diff <= atol, f"max |diff| {diff:.3g} > {atol}"


# ----------------------------------------------------------------------------------------------------
# Folder layout
# ----------------------------------------------------------------------------------------------------


def test_export_writes_a_complete_hub_folder(exported):
    files = {str(p) for p in folder_files(exported)}
    expected = {
        "README.md", "config.json", "configuration_jina_clip.py", "modeling_jina_clip.py", "processing_jina_clip.py",
        "configuration_jina_bert.py", "modeling_jina_bert.py",  # jina-clip-v1's text tower: imported by both
        "encoding_jina_clip.py", "policy_jina_clip.py", "loading_jina_clip.py",  # the encode runtime and loading
        "tokenization_jina_clip.py", "fetching_jina_clip.py",  # the tokenizer loader, the bounded URL fetch
        "model.safetensors", "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
        "custom_st.py", "pipeline_jina_clip.py", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
        "1_Normalize/config.json",
    }  # fmt: skip
    assert files == expected
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_jina_clip.JinaCLIPConfig",
        "AutoModel": "modeling_jina_clip.JinaCLIPModel",
        # pipeline("zero-shot-image-classification", ...) loads the model through this auto class
        "AutoModelForZeroShotImageClassification": "modeling_jina_clip.JinaCLIPModel",
    }
    assert config["architectures"] == ["JinaCLIPModel"]
    assert set(config["custom_pipelines"]) == {"zero-shot-image-classification", "image-feature-extraction"}
    for name in ("configuration_jina_clip.py", "modeling_jina_clip.py", "processing_jina_clip.py",
                 "configuration_jina_bert.py", "modeling_jina_bert.py", "pipeline_jina_clip.py",
                 "encoding_jina_clip.py", "policy_jina_clip.py", "loading_jina_clip.py",
                 "tokenization_jina_clip.py", "fetching_jina_clip.py"):
        assert (exported / name).read_bytes() == (ROOT / "modeling" / name).read_bytes()
    assert (exported / "custom_st.py").read_bytes() == (ROOT / "hub" / "custom_st.py").read_bytes()
    processor = json.loads((exported / "processor_config.json").read_text())
    assert processor["processor_class"] == "CLIPProcessor"
    assert processor["image_processor"]["auto_map"] == {"AutoImageProcessor": "processing_jina_clip.JinaCLIPImageProcessor"}
    # The release's file and layout, which transformers.js and fastembed read (tests/test_clients.py runs them):
    # the image processor's settings, also nested in processor_config.json, with the release's processor class.
    preprocessor = json.loads((exported / "preprocessor_config.json").read_text())
    assert preprocessor == {**processor["image_processor"], "processor_class": "JinaCLIPProcessor"}
    assert {k: preprocessor[k] for k in ("size", "resize_mode", "interpolation", "fill_color", "image_processor_type")} == {
        "size": 56, "resize_mode": "shortest", "interpolation": "bicubic", "fill_color": 0,
        "image_processor_type": "JinaCLIPImageProcessor",
    }  # fmt: skip

    modules = json.loads((exported / "modules.json").read_text())
    assert [(m["idx"], m["path"], m["type"]) for m in modules] == [
        (0, "", "custom_st.JinaCLIPTransformer"),
        # the class path sentence-transformers 5.4+ and 6.x both resolve (tests/test_sentence_transformers.py)
        (1, "1_Normalize", "sentence_transformers.models.Normalize"),
    ]
    st_config = json.loads((exported / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"]["retrieval.query"] == INSTRUCTION
    assert st_config["prompts"]["query"] == INSTRUCTION and st_config["prompts"]["document"] == ""
    assert st_config["similarity_fn_name"] == "cosine" and st_config["default_prompt_name"] is None
    bert_config = json.loads((exported / "sentence_bert_config.json").read_text())
    assert bert_config["modality_config"] == {
        "image": {"method": "get_image_features", "method_output_name": "pooler_output"},
        "text": {"method": "get_text_features", "method_output_name": "pooler_output"},
    }
    assert bert_config["module_output_name"] == "sentence_embedding"
    assert bert_config["processing_kwargs"] == {"text": {"max_length": 512}}
    # Every JSON we write has one layout: sorted keys, 2-space indent, final newline (tokenizer.json is the
    # tokenizers library's own serialisation and stays as written).
    for path in exported.rglob("*.json"):
        if path.name != "tokenizer.json":
            assert path.read_text(encoding="utf-8") == dump_json(json.loads(path.read_text(encoding="utf-8"))), path
    from safetensors import safe_open

    with safe_open(exported / "model.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert set(handle.keys()) == set(tiny_model().state_dict())  # the model's own key layout


# ----------------------------------------------------------------------------------------------------
# Fresh-process loading and Sentence-Transformers parity
# ----------------------------------------------------------------------------------------------------


def test_fresh_process_loads_through_auto_classes_and_sentence_transformers(fresh):
    info, _ = fresh
    assert info["processor"] == "CLIPProcessor"
    assert info["image_processor"] == "JinaCLIPImageProcessor"
    # transformers' generic fast tokenizer around the saved tokenizer.json (no remote code, and no
    # model-specific class that would rebuild the XLM-R pipeline: tests/test_tokenizer.py)
    assert info["tokenizer"] in ("TokenizersBackend", "PreTrainedTokenizerFast")
    assert info["model_module"].startswith("transformers_modules.")  # the folder's remote code
    assert info["st_modules"] == ["JinaCLIPTransformer", "Normalize"]
    assert info["st_similarity"] == "cosine" and info["st_dim"] == 32


def test_fresh_process_automodel_equals_the_exported_model(fresh, reference, image_files):
    _, emb = fresh
    images = [Image.open(p) for p in image_files]
    _close(emb["text"], reference.encode_text(TEXTS))
    _close(emb["query"], reference.encode_text(TEXTS, task="retrieval.query"))
    _close(emb["image"], reference.encode_image(images))
    _close(emb["text16"], reference.encode_text(TEXTS, truncate_dim=16))


def test_sentence_transformers_equals_encode_text_and_encode_image(fresh):
    _, emb = fresh
    _close(emb["st_text"], emb["text"])
    _close(emb["st_image"], emb["image"])
    # the query prompt, by name and through encode_query
    _close(emb["st_query"], emb["query"])
    _close(emb["st_encode_query"], emb["query"])
    assert np.abs(emb["query"] - emb["text"]).max() > 1e-3  # the prompt does change the embedding
    # mixed lists (texts, PIL images and an image path), in input order, also with the prompt
    t, i = emb["text"], emb["image"]
    _close(emb["st_mixed"], np.stack([t[0], i[0], t[1], i[1], t[3], i[2]]))
    q = emb["query"]
    _close(emb["st_mixed_query"], np.stack([q[0], i[0], q[1], i[1], q[3], i[2]]))
    # truncate_dim: truncate then normalise, as encode_text / encode_image
    _close(emb["st16_text"], emb["text16"])
    _close(emb["st16_query"], emb["query16"])
    _close(emb["st16_image"], emb["image16"])
    t16, i16 = emb["text16"], emb["image16"]
    _close(emb["st16_mixed"], np.stack([t16[0], i16[0], t16[1], i16[1], t16[3], i16[2]]))
    # without normalize_embeddings, ST truncates its normalised output: same direction, cosine unchanged
    raw = emb["st16_text_raw"]
    _close(raw / np.linalg.norm(raw, axis=1, keepdims=True), emb["text16"])


def test_native_sentence_transformers_module_refuses_mixed_batches(exported):
    """Why hub/custom_st.py exists: ST's own Transformer serves texts and images of this model, but refuses
    a batch that mixes them. If a future sentence-transformers accepts it, the subclass can go."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer

    hub_kwargs = {"trust_remote_code": True, "local_files_only": True}
    native = Transformer(str(exported), model_kwargs=hub_kwargs, processor_kwargs=hub_kwargs, config_kwargs=hub_kwargs)
    assert native.modality_config == {
        "text": {"method": "get_text_features", "method_output_name": "pooler_output"},
        "image": {"method": "get_image_features", "method_output_name": "pooler_output"},
    }
    model = SentenceTransformer(modules=[native, Normalize()], device="cpu")
    ours = SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")
    image = Image.new("RGB", (60, 80), (200, 30, 90))
    _close(model.encode(TEXTS[:2]), ours.encode(TEXTS[:2]))
    _close(model.encode([image]), ours.encode([image]))
    with pytest.raises(ValueError, match="mixes multiple modalities"):
        model.encode([TEXTS[0], image])
    assert ours.encode([TEXTS[0], image]).shape == (2, 32)
    with pytest.raises(ValueError, match="texts and images"):
        ours.encode([TEXTS[0], [{"role": "user", "content": "hi"}]])


def test_sentence_transformers_files_are_what_the_library_saves(exported, tmp_path):
    """Export writes the Sentence-Transformers files as data; the installed library, given the loaded folder,
    saves the same content (its Normalize class path aside, which 6.x writes where 5.x cannot read it)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import import_from_string

    SentenceTransformer(str(exported), trust_remote_code=True, device="cpu").save(str(tmp_path / "saved"))
    saved = tmp_path / "saved"
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Normalize/config.json"):
        ours, library = json.loads((exported / name).read_text()), json.loads((saved / name).read_text())
        if name == "config_sentence_transformers.json":
            del library["__version__"]["sentence_transformers"]
        if name == "modules.json":
            for mine, theirs in zip(ours, library):
                if mine["name"] == "normalizer":
                    assert import_from_string(mine["type"]) is import_from_string(theirs["type"])
                    theirs["type"] = mine["type"]
        assert ours == library, name


# ----------------------------------------------------------------------------------------------------
# Determinism, sharding, atomicity
# ----------------------------------------------------------------------------------------------------


def test_export_is_deterministic(exported, reference, tmp_path):
    again = export_model(reference, tmp_path / "again", **EXPORT_KWARGS)
    files = folder_files(exported)
    assert files == folder_files(again)
    for name in files:
        assert (exported / name).read_bytes() == (again / name).read_bytes(), name


def test_sharded_export_loads(reference, tmp_path, image_files):
    from transformers import AutoModel

    folder = export_model(reference, tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 3 and not (folder / "model.safetensors").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert set(index["weight_map"]) == set(reference.state_dict())
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    images = [Image.open(p) for p in image_files]
    _close(model.encode_text(TEXTS[:3]), reference.encode_text(TEXTS[:3]))
    _close(model.encode_image(images), reference.encode_image(images))


def test_export_is_atomic_and_refuses_to_overwrite(reference, exported, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(reference, exported)
    bad = {"results": [{"task": "x", "type": "y", "dataset": {"name": "z"}, "metrics": {"recall@1": "high"}}]}
    with pytest.raises(ModelCardError, match="not numbers"):
        export_model(reference, tmp_path / "bad", eval_results=bad)
    assert not (tmp_path / "bad").exists()
    assert not any(p.name.startswith("tmp_") for p in tmp_path.iterdir())  # no staging folder left behind
    # overwrite replaces a folder only with a complete new one
    target = tmp_path / "target"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    export_model(reference, target, overwrite=True)
    assert not (target / "stale.txt").exists() and (target / "README.md").is_file()


def test_export_without_a_processor_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="processor"):
        export_model(tiny_model(), tmp_path / "out")


# ----------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------


def test_model_card_loads_validates_and_shows_results(exported):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported / "README.md", ignore_metadata_errors=False)
    data = validate_model_card(card)
    assert data.library_name == "transformers" and data.pipeline_tag == "feature-extraction"
    assert data.license == "cc-by-nc-4.0" and data.base_model == "jinaai/jina-embeddings-v3"
    assert "multilingual" in data.language and {"en", "de", "zh"} <= set(data.language)
    assert {"sentence-transformers", "clip", "matryoshka"} <= set(data.tags)
    # model-index: the full-dimension results only (the truncated one is in the table)
    entries = {(r.dataset_name, r.dataset_config, r.metric_type): r.metric_value for r in data.eval_results}
    assert entries == {
        ("Flickr30K", "en", "recall_at_1"): 0.8312,
        ("Flickr30K", "en", "recall_at_5"): 0.9624,
        ("Crossmodal-3600", "de", "recall_at_1"): 0.6543,
    }
    assert {r.task_type for r in data.eval_results} == {"text-to-image-retrieval", "image-to-text-retrieval"}
    text = card.text
    assert "| Task | Type | Dataset | Split | Language | Dim | recall@1 | recall@5 |" in text
    assert "| Flickr30K | text-to-image retrieval | Flickr30K | test | en | 32 | 0.8312 | 0.9624 |" in text
    assert "| Flickr30K | text-to-image retrieval | Flickr30K | test | en | 16 | 0.7901 |  |" in text
    assert "| XM3600 | image-to-text retrieval | Crossmodal-3600 | test | de | 32 | 0.6543 |  |" in text
    assert "| Stage | steps | image_size | text_max_length | final_loss |" in text
    assert "| stage2 | 10 | 224->384 | 512 | 1.75 |" in text
    # usage through both libraries, with truncate_dim
    assert 'AutoModel.from_pretrained("someone/tiny-jina-clip", trust_remote_code=True)' in text
    assert 'SentenceTransformer("someone/tiny-jina-clip", trust_remote_code=True, truncate_dim=16)' in text
    assert 'task="retrieval.query", truncate_dim=16' in text


def test_model_card_validation_reports_problems(exported, tmp_path):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported / "README.md")
    card.data.license = "Not A License!"
    card.data.language = ["english"]
    card.data.pipeline_tag = "text-generation"
    with pytest.raises(ModelCardError) as err:
        validate_model_card(card)
    assert all(word in str(err.value) for word in ("license", "language", "pipeline_tag"))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({}, "non-empty \"results\""),
        ({"results": [{"task": "t", "type": "y", "metrics": {"a": 1}}]}, "dataset"),
        ({"results": [{"task": "t", "type": "y", "dataset": {"name": "d"}, "metrics": {}}]}, "metrics"),
        ({"results": [{"task": "t", "type": "y", "dataset": {"name": "d"}, "metrics": {"a": 1}, "truncate_dim": 0}]}, "truncate_dim"),
    ],
)
def test_eval_results_schema_is_checked(bad, message):
    with pytest.raises(ModelCardError, match=message):
        load_eval_results(bad)


# ----------------------------------------------------------------------------------------------------
# CLI and inputs
# ----------------------------------------------------------------------------------------------------


def test_cli_exports_a_save_pretrained_folder_and_a_bin_checkpoint(reference, tmp_path, capsys):
    source = tmp_path / "stage3"
    reference.save_pretrained(source)
    reference.processor.save_pretrained(source)
    (tmp_path / "results.json").write_text(json.dumps(EVAL_RESULTS))
    code = export_main(
        ["--model", str(source), "--out", str(tmp_path / "out"), "--eval-results", str(tmp_path / "results.json"), "--verify"]
    )
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str((tmp_path / "out").resolve())
    for name in folder_files(tmp_path / "out"):  # no local path leaks into the files meant for the Hub
        if name.suffix != ".safetensors":
            assert str(tmp_path) not in (tmp_path / "out" / name).read_text(encoding="utf-8"), name
    # a bare .bin state dict from a training run (DDP prefix), read with torch.load(weights_only=True)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, checkpoint / "pytorch_model.bin")
    loaded = load_model(checkpoint / "pytorch_model.bin", config=source / "config.json")
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    code = export_main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert code == 2 and "no such model folder" in capsys.readouterr().err


def test_bfloat16_export(reference, tmp_path, image_files):
    from transformers import AutoModel

    folder = export_model(reference, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert (folder / "model.safetensors").stat().st_size < 0.6 * sum(
        t.numel() * 4 for t in reference.state_dict().values()
    )
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype="auto")  # the config's dtype
    assert model.dtype == torch.bfloat16
    assert reference.dtype == torch.float32  # the exported model itself is left alone
    got = model.float().encode_text(TEXTS[:2])
    _close(got, reference.encode_text(TEXTS[:2]), atol=5e-2)
