"""The bad-input battery, round two (issue 20), what the tools write and take: exports and ONNX conversions racing
or killed half-way; push's allow-list and completeness; the ONNX helper's inputs; command-line mistakes. What the
first round (tests/test_bad_inputs.py, whose `Case` table this file shares) left open; the shared context and runner
are tests/_bad_inputs_round2.py, what is read tests/test_bad_inputs_round2_inputs.py.

Each case asserts a clear error (its type and a message that names the problem) or the correct result. The
concurrent-export case forces the race (both writers wait for each other before their rename); the kill during
`jina-clip onnx` kills the converter once its staging folder holds a graph and checks the old files are intact."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _bad_inputs_round2 import battery, check_battery, ctx, run_case  # noqa: F401 - ctx is a fixture
from _http import server  # noqa: F401 - a fixture ctx uses
from _tiny import ROOT
from test_bad_inputs import Case
from jina_clip_v2.modeling import JinaCLIPModel


# ----------------------------------------------------------------------------------------------------------
# Exports and ONNX files: exclusive, atomic, checked
# ----------------------------------------------------------------------------------------------------------


def _concurrent_exports(c):
    """Two exports to one new folder, without overwrite, racing to their rename (both wait for each other
    there): one wins, the other fails loudly, nothing half-written is left."""
    from jina_clip_v2.hub.export import export_model

    out = c.path("contested")
    barrier = threading.Barrier(2, timeout=120)
    outcomes: list = [None, None]

    def export(i: int) -> None:
        try:
            export_model(c.model, out, processor=c.model.processor, model_name=f"writer {i}", verify=lambda folder: barrier.wait())
            outcomes[i] = "ok"
        except Exception as err:  # noqa: BLE001
            outcomes[i] = err

    threads = [threading.Thread(target=export, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out, outcomes


def _check_concurrent(c, result) -> None:
    out, outcomes = result
    assert sorted(map(str, outcomes)).count("ok") == 1, outcomes
    loser = next(o for o in outcomes if o != "ok")
    assert isinstance(loser, FileExistsError) and "created by another writer while this one ran" in str(loser)
    winner = ["writer 0", "writer 1"][outcomes.index("ok")]
    assert f"# {winner}" in (out / "README.md").read_text()  # the folder is the winner's, whole
    JinaCLIPModel.from_pretrained(str(out)).encode_text(["a"])
    assert [p.name for p in out.parent.iterdir() if p.name.startswith("tmp_export_")] == []


def _kill_during_onnx(c):
    """`jina-clip onnx --overwrite` killed once its staging folder holds a graph: the old files stay."""
    folder = c.onnx()
    before = {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()}
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jina_clip_v2.hub.onnx", "--model", str(folder), "--overwrite", "--precisions", "fp32", "--no-parity"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    staged = None
    deadline = time.monotonic() + 240
    while staged is None and proc.poll() is None and time.monotonic() < deadline:
        staged = next(iter(folder.glob(f".onnx.{proc.pid}_*.tmp/text_model.onnx")), None)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()}
    return folder, staged, before, after, proc.pid


def _check_kill(c, result) -> None:
    from jina_clip_v2 import _io
    from jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx

    folder, staged, before, after, pid = result
    assert staged is not None, "the converter never wrote into its staging folder"
    assert after == before  # the old files, byte for byte
    assert JinaCLIPOnnx(folder).encode_text(["still loads"]).shape == (1, 32)
    leftovers = _io.remove_stale_staging(folder, ".onnx.", ".tmp")  # what the next run does first
    assert [p.name.startswith(f".onnx.{pid}_") for p in leftovers] == [True]


def _truncated_graph(c):
    from jina_clip_v2.hub.onnx import check_onnx_file

    data = (c.onnx() / "onnx" / "text_model.onnx").read_bytes()
    return check_onnx_file(c.file(data[: len(data) // 2], "text_model.onnx"))


def _export_truncated_weights(c):
    """A writer that leaves a truncated model.safetensors (a full disk): the export refuses to take the name."""
    from jina_clip_v2.hub import export as hub_export

    out = c.path("cut-export")
    original = hub_export._write_folder

    def cut_weights(staging, *args, **kwargs):
        original(staging, *args, **kwargs)
        weights = staging / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    hub_export._write_folder = cut_weights
    try:
        hub_export.export_model(c.model, out, processor=c.model.processor)
    finally:
        hub_export._write_folder = original
        assert not out.exists()


EXPORTS = [
    Case("two-exports-to-one-folder", _concurrent_exports, check=_check_concurrent),
    Case("kill-during-jina-clip-onnx", _kill_during_onnx, check=_check_kill),
    Case("truncated-onnx-graph-named", _truncated_graph, ValueError, r"text_model\.onnx is not a readable ONNX model"),
    Case("export-with-truncated-weights-not-renamed", _export_truncated_weights, ValueError,
         r"model\.safetensors: truncated or not a safetensors file"),
    Case("onnx-out-with-other-files-refused", lambda c: __import__("jina_clip_v2.hub.onnx", fromlist=["x"]).export_onnx(
        c.exported, c.file(b"x", "notes.txt").parent, overwrite=True), FileExistsError, r"holds files an ONNX export does not write"),
]


# ----------------------------------------------------------------------------------------------------------
# Push: exact allow-list, complete folders only
# ----------------------------------------------------------------------------------------------------------


def _plan_with(c, name: str, data: bytes = b"x"):
    from jina_clip_v2.hub.push import plan_push

    folder = c.copy_export()
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return plan_push(folder, "user/tiny")


def _plan_edited(c, edit):
    from jina_clip_v2.hub.push import plan_push

    folder = c.copy_export()
    edit(folder)
    return plan_push(folder, "user/tiny")


def _push_error():
    from jina_clip_v2.hub.push import PushError

    return PushError


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


PUSH = [
    Case("modeling-notes-py", lambda c: _plan_with(c, "modeling_notes.py"), _push_error(), r"files an export does not write: modeling_notes\.py"),
    Case("configuration-folder-credentials", lambda c: _plan_with(c, "configuration_x/credentials.py"), _push_error(), r"configuration_x/credentials\.py"),
    Case("onnx-private-keys", lambda c: _plan_with(c, "onnx/private/keys.onnx"), _push_error(), r"onnx/private/keys\.onnx"),
    Case("onnx-graph-of-another-name", lambda c: _plan_with(c, "onnx/secret_model.onnx"), _push_error(), r"onnx/secret_model\.onnx"),
    Case("truncated-model-safetensors", lambda c: _plan_edited(c, lambda f: _cut(f / "model.safetensors")), _push_error(),
         r"not a complete export.*model\.safetensors: truncated or not a safetensors file"),
    Case("no-tokenizer-json", lambda c: _plan_edited(c, lambda f: (f / "tokenizer.json").unlink()), _push_error(), r"missing tokenizer\.json"),
    Case("index-names-a-missing-shard", lambda c: _plan_edited(c, lambda f: (f / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))), _push_error(), r"model-00001-of-00002\.safetensors: missing"),
    Case("config-json-is-a-list", lambda c: _plan_edited(c, lambda f: (f / "config.json").write_text("[1]")), _push_error(),
         r"config\.json must hold a JSON object"),
    Case("tokenizer-json-truncated", lambda c: _plan_edited(c, lambda f: _cut(f / "tokenizer.json")), _push_error(), r"tokenizer\.json is not valid JSON"),
    Case("numbered-onnx-chunks-allowed", lambda c: _plan_with(c, "onnx/vision_model_fp16.onnx_data_3"),
         check=lambda c, plan: None if "onnx/vision_model_fp16.onnx_data_3" in [n for n, _ in plan.files] else pytest.fail(str(plan.files))),
]


# ----------------------------------------------------------------------------------------------------------
# The ONNX helper's inputs
# ----------------------------------------------------------------------------------------------------------


def _runtime(c):
    from jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx

    if getattr(c, "_runtime", None) is None:
        c._runtime = JinaCLIPOnnx(c.onnx())
    return c._runtime


IDS = np.array([[0, 5, 9, 2]])
MASK = np.ones((1, 4), np.int64)

ONNX_HELPER = [
    Case("float-ids", lambda c: _runtime(c).run_text(IDS.astype(np.float32), MASK), TypeError, r"input_ids must be integers .* got dtype float32"),
    Case("id-minus-one", lambda c: _runtime(c).run_text(np.array([[0, -1, 2]]), np.ones((1, 3), np.int64)), ValueError,
         r"input_ids holds token id -1, outside 0 \.\. 999"),
    Case("id-equal-to-vocab", lambda c: _runtime(c).run_text(np.array([[0, 1000, 2]]), np.ones((1, 3), np.int64)), ValueError, r"token id 1000"),
    Case("mask-of-another-shape", lambda c: _runtime(c).run_text(IDS, np.ones((1, 3), np.int64)), ValueError, r"attention_mask has shape \(1, 3\)"),
    Case("mask-value-2", lambda c: _runtime(c).run_text(IDS, MASK * 2), ValueError, r"attention_mask holds mask value 2"),
    Case("nan-pixels", lambda c: _runtime(c).run_vision(np.full((1, 3, 56, 56), np.nan, np.float32)), ValueError, r"NaN or infinite"),
    Case("pixels-of-another-size", lambda c: _runtime(c).run_vision(np.zeros((1, 3, 40, 40), np.float32)), ValueError, r"\(batch, 3, 56, 56\), got \(1, 3, 40, 40\)"),
    Case("integer-pixels", lambda c: _runtime(c).run_vision(np.zeros((1, 3, 56, 56), np.int64)), TypeError, r"floating point"),
    Case("int32-ids-equal-int64", lambda c: (_runtime(c).run_text(IDS.astype(np.int32), MASK)["text_embeddings"], _runtime(c).run_text(IDS, MASK)["text_embeddings"]),
         check=lambda c, r: np.testing.assert_array_equal(r[0], r[1])),
]


# ----------------------------------------------------------------------------------------------------------
# Command-line mistakes (argparse's one-line usage errors, before any work)
# ----------------------------------------------------------------------------------------------------------


def _cli(c, *argv: str):
    """`jina-clip <argv>` in this process: (exit code, stderr)."""
    import contextlib

    from jina_clip_v2.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    if code == 0:
        return code
    raise RuntimeError(f"exit {code}: {err.getvalue().strip().splitlines()[-1]}")


TINY = str(ROOT / "training" / "configs" / "tiny.yaml")

CLI = [
    Case("train-resume-takes-an-override", lambda c: _cli(c, "train", "--config", TINY, "--resume", "train.steps=3"), RuntimeError,
         r"exit 2: .*no such folder: 'train\.steps=3'; give --resume its value first \(--resume auto\)"),
    Case("train-resume-missing-folder", lambda c: _cli(c, "train", "--config", TINY, "--resume", str(c.tmp / "none")), RuntimeError,
         r"exit 2: .*--resume takes 'auto' or a checkpoint folder; no such folder"),
    Case("demo-steps-minus-one", lambda c: _cli(c, "demo", "--steps", "-1"), RuntimeError, r"exit 2: .*unrecognized arguments: --steps -1"),
    Case("demo-steps-scale-zero", lambda c: _cli(c, "demo", "--steps-scale", "0"), RuntimeError, r"exit 2: .*--steps-scale: must be > 0, got 0"),
    Case("demo-processes-zero", lambda c: _cli(c, "demo", "--processes", "0"), RuntimeError, r"exit 2: .*--processes: must be > 0"),
    Case("demo-steps-scale-nan", lambda c: _cli(c, "demo", "--steps-scale", "nan"), RuntimeError, r"exit 2: .*--steps-scale: must be > 0, got nan"),
]


CATEGORIES = {
    "exports": EXPORTS,
    "push": PUSH,
    "onnx_helper": ONNX_HELPER,
    "cli": CLI,
}
ALL = battery(CATEGORIES)


def test_the_round2_battery_is_large_and_ids_are_unique():
    check_battery(ALL, CATEGORIES, minimum=25)


NEEDS_ONNX = {case.id for case in ONNX_HELPER} | {"kill-during-jina-clip-onnx", "truncated-onnx-graph-named"}


@pytest.mark.parametrize("case", ALL)
def test_bad_input_round2(case: Case, ctx):  # noqa: F811 - the imported fixture
    if case.id in NEEDS_ONNX:
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    run_case(case, ctx)
