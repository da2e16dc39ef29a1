"""The model card of an export says what its arguments say (title, base model, license; a model trained
from scratch is not "jina-clip-v2, cc-by-nc-4.0", the converted release is), and shows no local path; the
`jina-clip export` / `jina-clip convert` commands print their own progress and verification lines, also when
run as `python -m`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from _release_fixture import write_release_snapshot
from _tiny import build_tokenizer, tiny_config

from jina_clip_v2.hub.export import export_model
from jina_clip_v2.hub.model_card import validate_model_card

LOCAL = ["/home/someone/", "/data/", "~/", "C:\\Users", "/tmp/"]


def card_of(folder: Path):
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md", ignore_metadata_errors=False)
    return card, validate_model_card(card)


def test_an_export_without_card_arguments_claims_no_title_license_or_base(model, tmp_path):
    card, data = card_of(export_model(model, tmp_path / "my-small-clip"))
    assert card.text.startswith("\n# my-small-clip\n") or card.text.lstrip().startswith("# my-small-clip\n")
    assert data.model_name == "my-small-clip"
    assert data.license is None and data.base_model is None
    assert "cc-by-nc" not in str(card) and "No license was given" in card.text
    # a training stage's export folder is `<stage>/model`: the stage names it
    _, data = card_of(export_model(model, tmp_path / "stage3" / "model"))
    assert data.model_name == "stage3"


def test_title_base_model_and_license_come_from_the_arguments(model, tmp_path):
    card, data = card_of(
        export_model(model, tmp_path / "out", model_name="My CLIP", base_model="someone/base-clip", license="apache-2.0")
    )
    assert card.text.lstrip().startswith("# My CLIP\n")
    assert (data.license, data.base_model) == ("apache-2.0", "someone/base-clip")
    assert "cc-by-nc" not in str(card) and "The weights are released under `apache-2.0`." in card.text
    # fine-tuned from the release, no license given: the release's license is inherited, and said so
    card, data = card_of(export_model(model, tmp_path / "tuned", base_model="jinaai/jina-clip-v2"))
    assert data.license == "cc-by-nc-4.0"
    assert "derive from `jinaai/jina-clip-v2` and are released under its license, `cc-by-nc-4.0`" in card.text


def test_no_local_path_reaches_the_card(model, tmp_path):
    results = {
        "model": "/home/someone/runs/stage3/model",
        "results": [
            {
                "task": "Flickr30K",
                "type": "text-to-image retrieval",
                "dataset": {"name": "flickr30k", "id": "/data/flickr30k", "split": "test", "language": "en"},
                "metrics": {"recall@1": 0.5},
            },
            {
                "task": "local set",
                "type": "image-to-text retrieval",
                "dataset": {"name": "C:\\Users\\someone\\images", "config": "~/configs/a"},
                "metrics": {"recall@1": 0.25},
            },
        ],
    }
    summary = {
        "base_model": "/home/someone/checkpoints/base",
        "datasets": ["/data/laion-subset", "someone/public-set"],
        "stages": [{"name": "stage1", "init_from": "/home/someone/runs/stage0/model", "processor_from": "~/tok", "steps": 3}],
    }
    folder = export_model(model, tmp_path / "out", eval_results=results, training_summary=summary)
    text = (folder / "README.md").read_text(encoding="utf-8")
    for fragment in LOCAL + [str(tmp_path)]:
        assert fragment not in text, fragment
    card, data = card_of(folder)
    assert data.base_model is None and data.datasets == ["someone/public-set"]
    entries = {(r.dataset_type, r.dataset_name) for r in data.eval_results}
    assert entries == {("flickr30k", "flickr30k"), ("images", "images")}
    assert "| stage1 | model | tok | 3 |" in card.text and "Results of `model`" in card.text


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf_home"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_python_m_export_prints_its_progress_and_verification(model, tmp_path):
    source = tmp_path / "stage3"
    model.save_pretrained(source)
    model.processor.save_pretrained(source)
    done = _run(
        [sys.executable, "-m", "jina_clip_v2.hub.export", "--model", str(source), "--out", str(tmp_path / "out"),
         "--title", "Tiny CLIP", "--license", "mit", "--verify"],  # fmt: skip
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for expected in ("[hub.export] loading model from", "[hub.export] writing weights", "[hub.export] writing model card",
                     "[hub.export] exported", "[hub.export] verifying", "[hub.export]   sentence_transformers_text: max |diff|"):  # fmt: skip
        assert any(line.startswith(expected) for line in lines), (expected, done.stdout)
    assert lines[-1] == str((tmp_path / "out").resolve())
    card, data = card_of(tmp_path / "out")
    assert card.text.lstrip().startswith("# Tiny CLIP\n") and data.license == "mit" and data.base_model is None


def test_jina_clip_convert_prints_its_check_and_keeps_the_release_card(tmp_path):
    snapshot = tmp_path / "snapshot"
    write_release_snapshot(snapshot, tiny_config(), seed=0)
    build_tokenizer().save_pretrained(snapshot)
    command = [str(Path(sys.executable).with_name("jina-clip")), "convert", "--from", str(snapshot), "--out", str(tmp_path / "out")]
    done = _run(command, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for expected in ("[hub.convert] converting the release checkpoint", "[hub.export] writing weights",
                     "[hub.convert] checking", "[hub.convert]   automodel_vs_reference_text: max |diff|",
                     "[hub.convert] check passed"):  # fmt: skip
        assert any(line.startswith(expected) for line in lines), (expected, done.stdout)
    card, data = card_of(tmp_path / "out")
    assert card.text.lstrip().startswith("# jina-clip-v2\n")
    assert (data.license, data.base_model) == ("cc-by-nc-4.0", "jinaai/jina-clip-v2")
    assert "(as the original jinaai/jina-clip-v2 weights)" in card.text
    for fragment in LOCAL + [str(tmp_path)]:
        assert fragment not in (tmp_path / "out" / "README.md").read_text(encoding="utf-8"), fragment
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
