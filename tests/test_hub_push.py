"""hub.push, run as its command in a subprocess: --dry-run lists what would go where (no token, no
network), and without a token the push stops with a clear error before any network access."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A folder shaped like an export (the push only reads files; hub.export is tested elsewhere): whole JSON
    files and a whole safetensors file, as the push checks."""
    import numpy as np
    from safetensors.numpy import save_file

    out = tmp_path / "tiny-jina-clip"
    (out / "1_Normalize").mkdir(parents=True)
    (out / "config.json").write_text('{"model_type": "jina_clip"}\n')
    (out / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# tiny\n")
    (out / "tokenizer.json").write_text('{"version": "1.0"}\n')
    save_file({"logit_scale": np.zeros(500, np.float32)}, str(out / "model.safetensors"))
    (out / "1_Normalize" / "config.json").write_text("{}\n")
    (out / ".cache").mkdir()
    (out / ".cache" / "junk").write_text("not uploaded")
    return out


def run_push(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # No token anywhere: HF_TOKEN unset and an empty HF_HOME (no stored login).
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "HUGGING_FACE_HUB_TOKEN"}
    env.update(HF_HOME=str(tmp_path / "empty_hf_home"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "jina_clip_v2.hub.push", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_dry_run_lists_files_and_destination(folder, tmp_path):
    proc = run_push(["--folder", str(folder), "--repo", "someone/tiny-jina-clip", "--private", "--revision", "v1", "--dry-run"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"would upload 5 files (2.2 KB) from {folder}" in out
    assert "to https://huggingface.co/someone/tiny-jina-clip/tree/v1 (model repository someone/tiny-jina-clip, revision v1, private if created)" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == ["1_Normalize/config.json", "README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert "dry run: nothing uploaded" in out
    assert ".cache" not in out


def test_push_without_a_token_is_a_clear_error(folder, tmp_path):
    proc = run_push(["--folder", str(folder), "--repo", "someone/tiny-jina-clip"], tmp_path)
    assert proc.returncode == 2
    assert "error: no Hugging Face token: set HF_TOKEN or run `hf auth login`" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--repo", "not a repo id"], "invalid repository id"),
        (["--repo", "no-owner"], "must be <user or organisation>/<name>"),
    ],
)
def test_push_checks_the_repository_id(folder, tmp_path, args, message):
    proc = run_push(["--folder", str(folder), *args, "--dry-run"], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    proc = run_push(["--folder", str(tmp_path / "half"), "--repo", "someone/x", "--dry-run"], tmp_path)
    assert proc.returncode == 2 and "missing README.md" in proc.stderr


# ----------------------------------------------------------------------------------------------------
# Allow-list: only what an export writes is ever uploaded
# ----------------------------------------------------------------------------------------------------


def test_every_file_of_a_real_export_is_on_the_allow_list(tmp_path):
    from _notebook_model import export_tiny_model
    from jina_clip_v2.hub.push import plan_push

    exported = export_tiny_model(tmp_path / "export")
    written = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
    plan = plan_push(exported, "someone/tiny")
    assert [name for name, _ in plan.files] == written


@pytest.mark.parametrize(
    "name, content",
    [
        ("token", "hf_secret"),
        ("id_rsa", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        ("credentials.json", '{"key": "secret"}'),
        ("notes.txt", "my notes"),
        ("onnx/debug.log", "log"),
        ("1_Normalize/extra.json", "{}"),
    ],
)
def test_files_outside_the_allow_list_stop_the_push_by_name(folder, tmp_path, name, content):
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(content)
    proc = run_push(["--folder", str(folder), "--repo", "someone/tiny-jina-clip", "--dry-run"], tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert "files an export does not write" in proc.stderr and name in proc.stderr
    assert "Traceback" not in proc.stderr
    # Named deliberately, the file goes with the others.
    proc = run_push(["--folder", str(folder), "--repo", "someone/tiny-jina-clip", "--dry-run", "--include", name], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert name in [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]


def test_symbolic_links_are_refused(folder, tmp_path):
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to("/etc/passwd")
    (folder / "onnx").symlink_to(tmp_path, target_is_directory=True)
    proc = run_push(["--folder", str(folder), "--repo", "someone/tiny-jina-clip", "--dry-run", "--include", "*"], tmp_path)
    assert proc.returncode == 2
    assert "symbolic links" in proc.stderr and "tokenizer.json" in proc.stderr and "onnx" in proc.stderr


def test_caches_and_hidden_entries_are_never_uploaded(folder, tmp_path):
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "modeling_jina_clip.cpython-311.pyc").write_bytes(b"\0")
    (folder / ".env").write_text("HF_TOKEN=hf_secret")
    proc = run_push(["--folder", str(folder), "--repo", "someone/tiny-jina-clip", "--dry-run"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == ["1_Normalize/config.json", "README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert "hf_secret" not in proc.stdout and ".env" not in proc.stdout and "__pycache__" not in proc.stdout
    from jina_clip_v2.hub.push import plan_push

    assert plan_push(folder, "someone/tiny-jina-clip").skipped == [".cache/", ".env", "__pycache__/"]


def test_the_upload_commits_exactly_the_planned_files(folder, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    from jina_clip_v2.hub.push import push_folder

    calls = {}

    class FakeApi:
        def __init__(self, token):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["repo"] = (repo_id, kwargs)

        def create_branch(self, *args, **kwargs):
            raise AssertionError("main needs no branch")

        def create_commit(self, repo_id, operations, **kwargs):
            calls["files"] = sorted(op.path_in_repo for op in operations)
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"\0")
    url = push_folder(folder, "someone/tiny-jina-clip", token="hf_test")
    assert url.endswith("/commit/0") and calls["token"] == "hf_test"
    assert calls["files"] == ["1_Normalize/config.json", "README.md", "config.json", "model.safetensors", "tokenizer.json"]


def test_an_onnx_export_is_on_the_allow_list(tmp_path):
    pytest.importorskip("onnxruntime")
    from _notebook_model import export_tiny_model
    from jina_clip_v2.hub.onnx import main as onnx_main
    from jina_clip_v2.hub.push import plan_push

    exported = export_tiny_model(tmp_path / "export")
    assert onnx_main(["--model", str(exported)]) == 0
    # the chunk names a > 2 GB export writes next to its graph
    for name in ("text_model.onnx_data", "text_model.onnx_data_1"):
        (exported / "onnx" / name).write_bytes(b"\0")
    written = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
    assert any(name.startswith("onnx/") for name in written)
    assert [name for name, _ in plan_push(exported, "someone/tiny").files] == written
