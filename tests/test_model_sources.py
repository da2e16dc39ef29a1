"""A model named on the command line that is neither a local folder nor a Hub repository id is a clear
"no such folder" error (`jina_clip_v2._sources.model_source`), not huggingface_hub's "Repo id must be in the
form 'repo_name' or 'namespace/repo_name'", which transformers' own `AutoModel.from_pretrained` gives for it
(that message is transformers' and huggingface_hub's; a model package cannot change it)."""

from __future__ import annotations

import pytest

from jina_clip_v2._sources import model_source


def test_local_folders_and_hub_ids_pass_missing_folders_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "weights.safetensors").write_bytes(b"")
    assert model_source(tmp_path / "model") == str(tmp_path / "model")
    assert model_source("model") == "model"  # an existing folder wins over a Hub id of the same name
    assert model_source("jinaai/jina-clip-v2") == "jinaai/jina-clip-v2"  # no such folder here: a Hub id
    for missing in ("outputs/stage3/model", "./jina-clip-v2-converted", str(tmp_path / "gone"), "../x", "~/models/x", "bad name!"):
        with pytest.raises(FileNotFoundError, match=r"^no such folder: "):
            model_source(missing)
    with pytest.raises(NotADirectoryError, match="is a file, not a model folder"):
        model_source("weights.safetensors")


def test_eval_run_on_a_missing_folder_names_it(tmp_path, capsys):
    from jina_clip_v2.cli import main

    missing = tmp_path / "outputs" / "stage3" / "model"
    assert main(["eval", "run", "--model", str(missing), "--suite", "quick", "--out", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    assert f"no such folder: {missing}" in err and "Repo id" not in err
