"""The trainer's failure modes, end to end: checkpoints that are never unpickled (a pickle payload planted in
any file never runs), damaged checkpoints, data that yields nothing usable, bad rows, empty sources, a
non-finite loss, stale staging folders and one-line errors on the command line.

Runs use the tiny config and the demo data of tests/test_training.py, on CPU.
"""

from __future__ import annotations

import io
import json
import pickle
import re
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
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2), "payload": _Payload(marker)}, buffer)
    return {"pickle": raw + b"\0" * max(0, size - len(raw)), "torch": buffer.getvalue()}


def test_the_payload_is_live(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(_payloads(marker, 0)["pickle"])  # the test's own unpickling: proves the payload works
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(_payloads(marker, 0)["torch"]), weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):  # noqa: F811
    """A tiny run of 4 steps with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("trained") / "run"
    summary = stage_main(["--config", str(TINY), *tiny_overrides(assets, out, "train.steps=4", "train.checkpoint_every=2")])
    (out / "reference_summary.json").write_text(json.dumps(summary, default=str))
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
    from jina_clip_v2.hub.export import ExportError, _read_weights_file, load_model
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
    with pytest.raises(ExportError, match="not loaded with a full unpickler"):
        _read_weights_file(evil / "pytorch_model.bin")
    with pytest.raises(ExportError, match="not loaded with a full unpickler"):
        load_model(evil / "pytorch_model.bin", config=config)
    with pytest.raises(Exception):  # noqa: B017 - transformers' own error; what matters is the marker
        load_model(evil)  # a save_pretrained-style folder: transformers reads the .bin (weights_only=True)
    with pytest.raises(ReleaseCheckpointError, match="weights_only"):
        load_release_weights(evil)  # `jina-clip convert` of a release snapshot with a .bin
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Data: unusable sources, bad rows, empty sources
# --------------------------------------------------------------------------------------------------


class _Messages(list):
    """The log messages of ``jina_clip_v2`` while in the block (without pytest's caplog, which the suite's
    ``-p no:logging`` switches off)."""

    def __enter__(self):
        import logging

        self.handler = logging.Handler(logging.INFO)
        self.handler.emit = lambda record: self.append(record.getMessage())
        self.logger = logging.getLogger("jina_clip_v2")
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)

    def text(self) -> str:
        return "\n".join(self)


def _processor():
    from _tiny import build_processor, build_tokenizer

    return build_processor(build_tokenizer(), image_size=28)


@pytest.fixture(scope="module")
def processor():
    return _processor()


def _jsonl(path: Path, rows: list) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _stream(sources, kind="text_pairs", processor=None, **options):
    from jina_clip_v2.training.data import SourceConfig, TaskDataConfig, build_task_stream

    extra = {k: options.pop(k) for k in ("max_consecutive_skips", "on_bad_row", "num_negatives") if k in options}
    cfg = TaskDataConfig(kind=kind, sources=[s if isinstance(s, SourceConfig) else SourceConfig(str(s)) for s in sources],
                         batch_size=4, image_size=28, shuffle_buffer=0, name="data.test", **extra)
    return build_task_stream(cfg, processor or _processor(), keep_raw=True, **options)


@pytest.mark.parametrize("case", ["undecodable_images", "empty_texts", "triplets_without_negatives", "mixed_reasons"])
def test_a_source_without_usable_examples_stops_in_seconds(tmp_path, processor, case):
    """Data that is all unusable is read epoch after epoch without a batch; at the default
    data.max_consecutive_skips (1000) the stream stops with an error naming the source and the reasons."""
    import time

    from jina_clip_v2.training.data import DataError

    if case == "undecodable_images":
        kind, rows = "image_text_short", [{"image": f"missing_{i}.png", "caption": f"c{i}"} for i in range(30)]
        expected = r"1000 undecodable image"
    elif case == "empty_texts":
        kind, rows = "text_pairs", [{"query": "", "document": f"d{i}"} for i in range(30)]
        expected = r"1000 empty text"
    elif case == "triplets_without_negatives":
        kind, rows = "text_triplets", [{"query": f"q{i}", "positive": f"p{i}", "negatives": []} for i in range(30)]
        expected = r"1000 too few negatives"
    else:
        kind = "image_text_short"
        rows = [{"image": "missing.png", "caption": "c"} if i % 5 else {"image": "missing.png", "caption": ""}
                for i in range(30)]
        expected = r"800 undecodable image, 200 empty text"
    stream = _stream([_jsonl(tmp_path / "bad.jsonl", rows)], kind, processor)
    start = time.perf_counter()
    with pytest.raises(DataError, match=rf"data\.test\.sources\.0 \(.*bad\.jsonl\): 1000 consecutive unusable examples \({expected}\)"):
        next(stream)
    assert time.perf_counter() - start < 60


def test_a_bad_source_among_good_ones_is_named(tmp_path, processor):
    """The count is per source: the good source's examples do not hide the one that yields nothing."""
    from jina_clip_v2.training.data import DataError, SourceConfig

    good = _jsonl(tmp_path / "good.jsonl", [{"query": f"q{i}", "document": f"d{i}"} for i in range(40)])
    bad = _jsonl(tmp_path / "bad.jsonl", [{"query": f"q{i}", "document": None} for i in range(40)])
    stream = _stream([SourceConfig(str(good)), SourceConfig(str(bad))], processor=processor, max_consecutive_skips=50)
    with pytest.raises(DataError, match=r"data\.test\.sources\.1 \(.*bad\.jsonl\): 50 consecutive unusable examples \(50 empty text\)"):
        for _ in range(200):
            next(stream)


def test_bad_jsonl_rows_are_skipped_with_file_and_line(tmp_path, processor):
    from jina_clip_v2.training.data import DataError

    rows = [
        {"query": "q0", "document": "d0"},
        "{not json",                                        # line 2: invalid JSON
        {"query": 5, "document": "d2"},                     # line 3: wrong type
        {"query": "q3"},                                    # line 4: a field the first row had is missing
        "[1, 2]",                                           # line 5: no JSON object
        {"query": "q5", "document": "d5"},
        {"query": "q6", "document": "d6"},
        {"query": "q7", "document": "d7"},
    ]
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    stream = _stream([path], processor=processor)
    with _Messages() as log:
        batch = next(stream)
    assert [r["query"] for r in batch["raw"]] == ["q0", "q5", "q6", "q7"]
    assert stream.skipped == {"bad_row": 4}
    messages = log.text()
    for line, problem in ((2, "invalid JSON"), (3, "'query' has type int, not a string"),
                          (4, "field 'document' is missing (earlier rows have it)"), (5, "a JSON list, not an object")):
        assert f"{path} line {line}: {problem}" in messages, (line, messages)
    with pytest.raises(DataError, match=rf"bad row: {path} line 2: invalid JSON .*data.on_bad_row=error"):
        next(_stream([path], processor=processor, on_bad_row="error"))
    # A column the file's first row lacks is a mapping problem: an error naming the file, not a skip.
    other = _jsonl(tmp_path / "other.jsonl", [{"q": "a", "d": "b"}] * 3)
    with pytest.raises(KeyError, match=rf"{other}: column 'query' not found .*SourceConfig.columns"):
        next(_stream([other], processor=processor))


def test_bad_parquet_rows_and_unreadable_files_are_skipped(tmp_path, processor):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jina_clip_v2.training.data import DataError

    negatives = json.dumps([f"n{j}" for j in range(7)])
    table = pa.table({
        "query": [f"q{i}" for i in range(6)],
        "positive": [f"p{i}" for i in range(6)],
        "negatives": [negatives, negatives, "not a list", negatives, "42", negatives],  # JSON strings
    })
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "a.parquet")
    good = (tmp_path / "data" / "a.parquet").read_bytes()
    (tmp_path / "data" / "b.parquet").write_bytes(good[: len(good) // 2])  # truncated: unreadable
    stream = _stream([str(tmp_path / "data" / "*.parquet")], "text_triplets", processor)
    with _Messages() as log:
        batch = next(stream)
        assert [r["query"] for r in batch["raw"]] == ["q0", "q1", "q3", "q5"]
        next(stream)
    messages = log.text()
    assert f"{tmp_path / 'data' / 'a.parquet'} row 2: 'negatives' is a string that is no JSON list" in messages
    assert f"{tmp_path / 'data' / 'a.parquet'} row 4: 'negatives' has type int, not a list" in messages
    assert f"{tmp_path / 'data' / 'b.parquet'}: cannot read it (ArrowInvalid" in messages
    assert stream.skipped == {"bad_row": 5}  # the second batch: b.parquet (one bad row), a.parquet's next epoch
    with pytest.raises(DataError, match="row 2"):
        next(_stream([tmp_path / "data" / "a.parquet"], "text_triplets", processor, on_bad_row="error"))


def test_empty_sources_are_named(tmp_path, processor):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jina_clip_v2.training.data import DataError, SourceConfig

    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("\n\n")
    pq.write_table(pa.table({"query": pa.array([], pa.string()), "document": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    good = _jsonl(tmp_path / "good.jsonl", [{"query": "q", "document": "d"}] * 4)
    for sources, index in (([empty_jsonl], 0), ([tmp_path / "empty.parquet"], 0), ([good, empty_jsonl], 1)):
        with pytest.raises(DataError, match=rf"data\.test\.sources\.{index} \({sources[index]}\): no rows"):
            _stream([SourceConfig(str(s)) for s in sources], processor=processor)


def test_what_datasets_cannot_read_is_a_data_error(tmp_path, processor):
    """A folder goes through datasets' own builders, which fail a whole file on one bad line: the run
    stops with a DataError naming the source, not a bare pyarrow error."""
    from jina_clip_v2.training.data import DataError

    folder = tmp_path / "folder"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [{"query": f"q{i}", "document": "d"} for i in range(5)] + ["{broken"])
    with pytest.raises(DataError, match=rf"data\.test: reading example 0 of epoch 0 failed \(sources: {folder}\): ArrowInvalid"):
        stream = _stream([folder], processor=processor)
        for _ in range(3):
            next(stream)


def test_a_stage_on_undecodable_images_stops_with_the_source_named(assets, tmp_path):  # noqa: F811
    import time

    from jina_clip_v2.training.data import DataError

    bad = _jsonl(tmp_path / "images.jsonl", [{"image": f"gone_{i}.jpg", "caption": f"c{i}"} for i in range(50)])
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"data\.image_text\.sources\.0 \(.*images\.jsonl\): 1000 consecutive "
                                        r"unusable examples \(1000 undecodable image\)"):
        stage_main(["--config", str(TINY), *tiny_overrides(assets, tmp_path / "run", "train.steps=2",
                                                            f"data.image_text.sources=[{{path: {bad}}}]")])
    assert time.perf_counter() - start < 60


# --------------------------------------------------------------------------------------------------
# Non-finite losses
# --------------------------------------------------------------------------------------------------


def _poisoned_stage(assets, out, at_call: int, *extra):  # noqa: F811
    """A Stage whose ``at_call``-th loss (1-based) has a NaN image-text part (and so a NaN total), as a
    diverging run would compute it."""
    from jina_clip_v2.training.config import load_config
    from jina_clip_v2.training.loop import Stage
    from jina_clip_v2.training.losses import LossOutput

    stage = Stage(load_config(TINY, tiny_overrides(assets, out, *extra)))
    original, calls = stage.step.loss, []

    def poisoned(emb, num_negatives=0, **kwargs):
        output = original(emb, num_negatives, **kwargs)
        calls.append(1)
        if len(calls) == at_call:
            nan = torch.tensor(float("nan"))
            parts = dict(output.parts)
            parts["image_text"] = LossOutput(parts["image_text"].loss * nan, parts["image_text"].per_dim)
            output = LossOutput(output.loss * nan, output.per_dim, parts)
        return output

    stage.step.loss = poisoned
    return stage


@pytest.mark.parametrize("log_every", [1, 5])
def test_a_nonfinite_loss_stops_the_run_and_saves_nothing_after_it(assets, tmp_path, log_every):  # noqa: F811
    """Step 3's loss is NaN. Logged every step, the run stops right there; logged every 5 steps, it stops
    at the checkpoint of step 4, before writing it. Either way the checkpoint of step 2 stays the newest,
    intact, and nothing with NaN reached metrics.jsonl."""
    from jina_clip_v2.training.launch import reset_accelerate_state
    from jina_clip_v2.training.loop import NonFiniteLossError

    out = tmp_path / "run"
    stage = _poisoned_stage(assets, out, 3, "train.steps=6", "train.checkpoint_every=2", f"train.log_every={log_every}")
    try:
        with pytest.raises(NonFiniteLossError, match=r"step 3: the loss is not finite \(loss=nan, loss/image_text=nan, "
                                                     r"loss/text=[0-9.]+\).*Last good checkpoint: step_0000002"):
            stage.run()
    finally:
        reset_accelerate_state()
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2]
    assert ckpt.verify_checkpoint(out / "checkpoints" / "step_0000002") == []
    assert not list((out / "checkpoints").glob("*.tmp"))
    metrics = read_metrics(out) if (out / "metrics.jsonl").exists() else {}
    assert all(record["loss"] == record["loss"] for record in metrics.values())  # no NaN logged
    assert max(metrics, default=0) <= 2


def test_a_nonfinite_loss_can_skip_its_update(assets, tmp_path):  # noqa: F811
    from jina_clip_v2.training.launch import reset_accelerate_state

    out = tmp_path / "run"
    stage = _poisoned_stage(assets, out, 3, "train.steps=5", "train.checkpoint_every=5", "train.log_every=1",
                            "train.on_nonfinite_loss=skip")
    try:
        stage.run()
        assert stage.skipped_steps == [3]
        assert all(torch.isfinite(p).all() for p in stage.model.parameters())
        adam_steps = {float(s["step"]) for s in stage.step.optimizer.state_dict()["state"].values()}
        assert adam_steps == {4.0}  # 5 steps, one update skipped
    finally:
        reset_accelerate_state()
    metrics = read_metrics(out)
    assert sorted(metrics) == [1, 2, 4, 5] and metrics[5]["skipped_updates"] == 1
    state = json.loads((out / "checkpoints" / "step_0000005" / ckpt.TRAINER_STATE).read_text())
    assert state["skipped_steps"] == [3]


def test_no_checkpoint_of_nonfinite_weights_is_written(tmp_path):
    from test_training import _FakeAccelerator, _Parts

    root, acc, parts = tmp_path / "checkpoints", _FakeAccelerator(), _Parts()
    ckpt.save_checkpoint(acc, root, 1, parts=parts, data_state={}, trainer_state={})
    with torch.no_grad():
        parts.model.weight[0, 0] = float("inf")
    with pytest.raises(ckpt.CheckpointError, match="step 2: .*NaN / inf: no checkpoint written"):
        ckpt.save_checkpoint(acc, root, 2, parts=parts, data_state={}, trainer_state={})
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [1] and not list(root.glob("*.tmp"))
    assert ckpt.verify_checkpoint(root / "step_0000001") == []


# --------------------------------------------------------------------------------------------------
# --resume auto: the newest intact checkpoint
# --------------------------------------------------------------------------------------------------


def test_resume_auto_takes_the_newest_intact_checkpoint(assets, trained, tmp_path):  # noqa: F811
    """step_0000004 lost its data state: named explicitly it is refused, --resume auto skips it (logged,
    moved aside as step_0000004.damaged) and resumes from step_0000002 with the losses of the
    uninterrupted run."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    (out / "checkpoints" / "step_0000004" / ckpt.data_state_file(0)).unlink()
    args = ["--config", str(TINY), *tiny_overrides(assets, out, "train.steps=4", "train.checkpoint_every=2")]
    with pytest.raises(ckpt.CheckpointError, match=r"cannot resume from .*step_0000004: data_state_rank0\.json is missing"):
        stage_main([*args, "--resume", str(out / "checkpoints" / "step_0000004")])
    with _Messages() as log:
        stage_main([*args, "--resume", "auto"])
    assert "--resume auto: skipping step_0000004: data_state_rank0.json is missing" in log.text()
    assert "--resume auto: resuming from step_0000002 (newer ones are damaged: step_0000004)" in log.text()
    assert (out / "checkpoints" / "step_0000004.damaged").is_dir()
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2, 4]
    reference, resumed = read_metrics(trained), read_metrics(out)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step]["loss"] == reference[step]["loss"]


@pytest.mark.parametrize("damage", ["truncated", "bad_json", "no_file_list", "zeroed_header"])
def test_damaged_checkpoints_are_found(trained, tmp_path, damage):
    path = tmp_path / "step"
    shutil.copytree(trained / "checkpoints" / "step_0000004", path)
    if damage == "truncated":
        data = (path / ckpt.MODEL).read_bytes()
        (path / ckpt.MODEL).write_bytes(data[: len(data) // 2])
        expected = r"model\.safetensors is \d+ bytes, \d+ were written"
    elif damage == "bad_json":
        text = (path / ckpt.SCHEDULER).read_text()
        (path / ckpt.SCHEDULER).write_text(text[:-1] + "x")  # same size, no JSON
        expected = r"scheduler\.json does not parse"
    elif damage == "no_file_list":
        state = json.loads((path / ckpt.TRAINER_STATE).read_text())
        del state["files"]
        (path / ckpt.TRAINER_STATE).write_text(json.dumps(state))
        expected = "lacks its file list"
    else:
        data = bytearray((path / ckpt.OPTIMIZER).read_bytes())
        data[:8] = b"\xff" * 8  # a header length past the end of the file
        (path / ckpt.OPTIMIZER).write_bytes(bytes(data))
        expected = r"optimizer\.safetensors does not parse"
    (problem,) = ckpt.verify_checkpoint(path)
    assert re.search(expected, problem), problem


def test_resume_auto_without_any_intact_checkpoint_is_an_error(assets, trained, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    for _, path in ckpt.list_checkpoints(out / "checkpoints"):
        (path / ckpt.TEMPERATURES).unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"no intact checkpoint .*step_0000004: temperatures\.safetensors is missing"):
        stage_main(["--config", str(TINY), "--resume", "auto", *tiny_overrides(assets, out, "train.steps=4")])


# --------------------------------------------------------------------------------------------------
# The summary of a resumed run
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_every", [1, 3])
def test_a_resumed_run_keeps_its_first_losses(assets, tmp_path, log_every):  # noqa: F811
    """The summary's first losses are the run's first logged ones, also when the run was resumed (and
    with log_every=3 the checkpoint of step 2 holds none yet: the first logged losses come after it)."""
    common = ["train.steps=4", "train.checkpoint_every=2", f"train.log_every={log_every}"]
    reference = stage_main(["--config", str(TINY), *tiny_overrides(assets, tmp_path / "reference", *common)])
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "reference", out)
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    resumed = stage_main(["--config", str(TINY), "--resume", "auto", *tiny_overrides(assets, out, *common)])
    assert resumed["first_losses"] == reference["first_losses"] and resumed["first_losses"]
    assert resumed["final_losses"] == reference["final_losses"]
    # A window that spans the checkpoint is resumed with its sums: the same records as without the resume.
    assert {s: r["loss"] for s, r in read_metrics(out).items()} == {s: r["loss"] for s, r in read_metrics(tmp_path / "reference").items()}
    state = json.loads((out / "checkpoints" / "step_0000004" / ckpt.TRAINER_STATE).read_text())
    assert state["first_record"]["step"] == (1 if log_every == 1 else 3)
    # Resumed at the last step (nothing left to train): the first and last losses are the checkpoint's.
    again = stage_main(["--config", str(TINY), "--resume", "auto", *tiny_overrides(assets, out, *common)])
    assert again["first_losses"] == reference["first_losses"]
    assert again["final_losses"] == reference["final_losses"]


# --------------------------------------------------------------------------------------------------
# Stale staging folders
# --------------------------------------------------------------------------------------------------


def test_what_interrupted_writes_left_is_removed_at_the_next_start(assets, trained, tmp_path):  # noqa: F811
    import os

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [
        out / "checkpoints" / "step_0000006.tmp",             # a checkpoint being written
        out / "checkpoints" / "step_0000002.k3j2.old.tmp",    # a pruned checkpoint being deleted
        out / f"tmp_export_{dead.pid}_x8f1",                  # the export's staging folder, its process gone
        out / "model.a1b2.old.tmp",                           # an export being replaced
    ]
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    stale_files = [out / ".metrics.jsonl.q1w2.tmp", out / ".config.yaml.e3r4.tmp"]
    for file in stale_files:
        file.write_text("half")
    live = out / f"tmp_export_{os.getpid()}_live"  # a writer that is still running: left alone
    live.mkdir()
    stage_main(["--config", str(TINY), "--resume", "auto", *tiny_overrides(assets, out, "train.steps=4")])
    for path in stale + stale_files:
        assert not path.exists(), path
    assert live.is_dir()
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2, 4]


# --------------------------------------------------------------------------------------------------
# The command line: one line per error
# --------------------------------------------------------------------------------------------------


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def test_cli_errors_are_one_line(assets, tmp_path):  # noqa: F811
    """`jina-clip train` and `accelerate launch training/stage.py`: a config error and a data error end the
    run with exit code 1 and one line naming the problem, no traceback; --debug shows it."""
    bad = _jsonl(tmp_path / "images.jsonl", [{"image": f"gone_{i}.jpg", "caption": f"c{i}"} for i in range(20)])
    base = ["--config", str(TINY), *tiny_overrides(assets, tmp_path / "run", "train.steps=2")]
    cli = [sys.executable, "-m", "jina_clip_v2.cli", "train"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--cpu", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "training" / "stage.py")]
    cases = [
        (cli, ["train.steps=many"], "error: 'train.steps' must be an integer, got 'many' [ConfigError"),
        (cli, [f"data.image_text.sources=[{{path: {bad}}}]"], "1000 consecutive unusable examples (1000 undecodable image)"),
        (launch, ["data.on_bad_row=sometimes"], "error: 'data.on_bad_row' must be one of ['skip', 'error']"),
        (launch, [f"data.image_text.sources=[{{path: {bad}}}]"], "[DataError; --debug shows the traceback]"),
    ]
    for command, extra, expected in cases:
        result = subprocess.run([*command, *base, *extra], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr[-3000:]
        lines = _error_lines(result.stderr)
        assert len(lines) == 1 and expected in lines[0], result.stderr[-3000:]
        assert lines[0].startswith("jina-clip train: error: ")
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    result = subprocess.run([*cli, *base, "train.steps=many", "--debug"], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_a_multi_process_error_names_the_rank_and_reaches_torchruns_summary(assets, tmp_path):  # noqa: F811
    from test_training import free_port

    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(ROOT / "training" / "stage.py"), "--config", str(TINY),
        *tiny_overrides(assets, tmp_path / "run", "train.steps=2", "train.keep_last=0"),
    ]
    result = subprocess.run(command, cwd=ROOT, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    lines = _error_lines(result.stderr)
    assert lines and all(line.startswith("jina-clip train (rank ") and " of 2): error: 'train.keep_last' must be >= 1" in line
                         for line in lines), result.stderr[-3000:]
    # torchrun's summary of the failed processes shows the same message instead of a hint to enable tracebacks
    assert "traceback : ConfigError: 'train.keep_last' must be >= 1" in result.stderr, result.stderr[-3000:]
