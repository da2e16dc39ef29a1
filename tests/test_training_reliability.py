"""The trainer's failure modes, end to end: checkpoints that are never unpickled (a pickle payload planted in
any file never runs), damaged checkpoints, data that yields nothing usable, bad rows, empty sources, a
non-finite loss, stale staging folders and one-line errors on the command line.

Runs use the tiny config and the demo data of tests/test_training.py, on CPU.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _tiny import ROOT
from test_training import ENV, TINY, assets, read_metrics, tiny_overrides  # noqa: F401  (assets: a fixture)

from jina_clip_v2.training import checkpoint as ckpt
from jina_clip_v2.training.stage import main as stage_main

# --------------------------------------------------------------------------------------------------
# Pickle payloads
# --------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _payloads(marker: Path, size: int) -> dict[str, bytes]:
    """The payload as a raw pickle padded to ``size`` bytes (pickle stops at its STOP opcode: the file keeps
    its recorded size, so only parsing can tell), and as a ``torch.save`` zip."""
    raw = pickle.dumps(_Payload(marker))
    import io

    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2), "payload": _Payload(marker)}, buffer)
    return {"pickle": raw + b"\0" * max(0, size - len(raw)), "torch": buffer.getvalue()}


def test_the_payload_is_live(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(_payloads(marker, 0)["pickle"])  # the test's own unpickling: proves the payload works
    assert marker.exists()
    marker.unlink()
    torch.load(__import__("io").BytesIO(_payloads(marker, 0)["torch"]), weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):  # noqa: F811
    """A tiny run of 4 steps with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("trained") / "run"
    stage_main(["--config", str(TINY), *tiny_overrides(assets, out, "train.steps=4", "train.checkpoint_every=2")])
    return out


def test_checkpoints_hold_no_pickle(trained):
    for _, path in ckpt.list_checkpoints(trained / "checkpoints"):
        names = sorted(p.name for p in path.iterdir())
        assert names == sorted([ckpt.TRAINER_STATE, *ckpt.required_files(1)])
        assert all(name.endswith((".json", ".safetensors")) for name in names)
        assert ckpt.verify_checkpoint(path) == []


@pytest.mark.parametrize("variant", ["pickle", "torch"])
def test_a_payload_in_any_checkpoint_file_never_runs(assets, trained, tmp_path, variant):  # noqa: F811
    source = trained / "checkpoints" / "step_0000004"
    marker = tmp_path / "marker"
    for i, name in enumerate(sorted(p.name for p in source.iterdir())):
        planted = tmp_path / f"planted{i}"
        shutil.copytree(source, planted)
        payload = _payloads(marker, (planted / name).stat().st_size)[variant]
        (planted / name).write_bytes(payload)
        problems = ckpt.verify_checkpoint(planted)
        assert problems and name in " ".join(problems), (name, problems)
        with pytest.raises(ckpt.CheckpointError, match=f"cannot resume from {planted}: .*{name}"):
            stage_main(["--config", str(TINY), "--resume", str(planted),
                        *tiny_overrides(assets, tmp_path / f"out{i}", "train.steps=6", "train.checkpoint_every=2")])
        assert not marker.exists(), f"the payload in {name} ran"


def test_extra_pickles_in_a_checkpoint_are_ignored(assets, trained, tmp_path):  # noqa: F811
    """accelerate's file names, planted next to an intact checkpoint's files, are never opened: the run
    resumes from the JSON / safetensors files and the payload never runs."""
    marker = tmp_path / "marker"
    planted = tmp_path / "step_0000002"
    shutil.copytree(trained / "checkpoints" / "step_0000002", planted)
    for name in ("random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin",
                 "pytorch_model.bin", "data_state_rank0.pt"):
        (planted / name).write_bytes(_payloads(marker, 0)["torch" if name.endswith(".bin") else "pickle"])
    out = tmp_path / "resumed"
    stage_main(["--config", str(TINY), "--resume", str(planted), *tiny_overrides(assets, out, "train.steps=4",
                                                                                 "train.checkpoint_every=2")])
    assert not marker.exists()
    assert sorted(read_metrics(out)) == [3, 4]
    # the resumed steps are the uninterrupted run's
    reference = read_metrics(trained)
    for step in (3, 4):
        assert read_metrics(out)[step]["loss"] == reference[step]["loss"]


def test_a_checkpoint_of_the_old_pickle_format_is_refused(trained, tmp_path):
    old = tmp_path / "step_0000002"
    shutil.copytree(trained / "checkpoints" / "step_0000002", old)
    state = json.loads((old / ckpt.TRAINER_STATE).read_text())
    state.pop("format")
    (old / ckpt.TRAINER_STATE).write_text(json.dumps(state))
    (old / "random_states_0.pkl").write_bytes(_payloads(tmp_path / "marker", 0)["pickle"])
    (problem,) = ckpt.verify_checkpoint(old)
    assert "older version" in problem and "random_states_0.pkl" in problem
    assert not (tmp_path / "marker").exists()


def test_a_payload_in_a_weights_file_for_export_or_conversion_never_runs(assets, trained, tmp_path):  # noqa: F811
    """The weights files the export (`jina-clip export --model`), transformers' from_pretrained and the
    release conversion read: .bin files are loaded with weights_only=True, so a payload is refused and
    never runs. A checkpoint's model.safetensors holds the export's key names: the export reads it."""
    from jina_clip_v2.hub.export import _read_weights_file, load_model
    from jina_clip_v2.modeling.convert_jina_clip_release import ReleaseCheckpointError, load_release_weights
    from jina_clip_v2.training.builders import build_model
    from jina_clip_v2.training.config import load_config

    marker = tmp_path / "marker"
    model, _ = build_model(load_config(TINY, tiny_overrides(assets, tmp_path / "unused")).model, 0)
    model.config.save_pretrained(tmp_path / "config")
    config = tmp_path / "config" / "config.json"
    exported = load_model(trained / "checkpoints" / "step_0000004" / ckpt.MODEL, config=config)
    assert exported.config.projection_dim == model.config.projection_dim

    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(config, evil / "config.json")
    (evil / "pytorch_model.bin").write_bytes(_payloads(marker, 0)["torch"])
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _read_weights_file(evil / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model(evil / "pytorch_model.bin", config=config)
    with pytest.raises(Exception):  # noqa: B017 - transformers' own error; what matters is the marker
        load_model(evil)  # a save_pretrained-style folder: transformers reads the .bin (weights_only=True)
    with pytest.raises(ReleaseCheckpointError, match="weights_only"):
        load_release_weights(evil)  # `jina-clip convert` of a release snapshot with a .bin
    assert not marker.exists()
