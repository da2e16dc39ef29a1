"""`jina-clip <command>`: every command reachable, errors as one line (exit code 1) unless --debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jina_clip_v2.cli import COMMANDS


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    code = "import sys; from jina_clip_v2.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_help_lists_every_command():
    proc = _cli("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert f"  {name}" in proc.stdout


def test_unknown_command():
    proc = _cli("frobnicate")
    assert proc.returncode == 2 and "unknown command 'frobnicate'" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--config", "/nonexistent/stage.yaml"], "No such file or directory"),
        (["train", "--config", "{tmp}/list.yaml"], "list.yaml"),
    ],
)
def test_errors_are_one_line_unless_debug(args, message, tmp_path):
    (tmp_path / "list.yaml").write_text("- not\n- a mapping\n")
    args = [arg.format(tmp=tmp_path) for arg in args]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and message in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "error:" in line]) == 1
    assert "--debug shows the traceback" in proc.stderr
    debug = _cli(*args, "--debug", cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_killed_export_leaves_nothing_behind_for_long(tmp_path):
    """The staging folder of an export killed mid-write is removed at the next export into the same place;
    a live writer's staging folder is left alone."""
    import os
    import signal
    import textwrap

    from _notebook_model import export_tiny_model

    script = textwrap.dedent(
        f"""
        import time
        from jina_clip_v2.hub._util import atomic_folder
        with atomic_folder({str(tmp_path / 'model')!r}) as staging:
            (staging / "config.json").write_text("{{}}")
            print(staging, flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    staging = proc.stdout.readline().strip()
    assert os.path.isdir(staging) and f"{proc.pid}_" in os.path.basename(staging)
    live = tmp_path / f"tmp_export_{os.getpid()}_alive"  # this process's: alive
    live.mkdir()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.isdir(staging) and not (tmp_path / "model").exists()
    export_tiny_model(tmp_path / "model")
    assert not os.path.exists(staging) and live.is_dir()
    assert (tmp_path / "model" / "config.json").is_file()
