"""Atomic writes: the one helper behind every file and folder the package writes (training checkpoints and
metrics, the demo data, evaluation caches, Hub exports, fetched assets).

A reader never sees a half-written file or folder under its final name: everything is written to a
temporary name in the same folder, flushed to disk, and renamed (``os.replace``, atomic on POSIX). An
existing folder is moved aside before the new one takes its name and deleted only afterwards, so a crash at
any moment leaves either the old or the new version. Temporary names end in ``.tmp`` (callers may sweep
them up after a crash, as ``training.checkpoint.clean_incomplete`` does).

Exclusive: the final rename of ``atomic_folder`` happens under an exclusive lock on the parent folder
(``flock``, released by the kernel if the process dies), after checking the target again. Of two writers to
one name without ``overwrite``, the first to finish wins and the other fails with ``FileExistsError``
(nothing of it is left); with ``overwrite`` the last to finish wins, and neither ever sees the other's
half-moved folder.

It lives at the package root so that ``training``, ``hub`` and ``evaluation`` can all import it;
``modeling`` (the Hub remote code, which imports nothing of ours) does not.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_folder",
    "atomic_write",
    "fsync_dir",
    "locked_folder",
    "remove_folder",
    "remove_stale_staging",
    "replace_folder",
]

logger = logging.getLogger(__name__)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is synced); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    encoding: str | None = "utf-8",
    keep_identical: bool = False,
    permissions: int | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing (``mode`` "w" or "wb"); when the body succeeds it
    is flushed, fsynced and renamed onto ``path``. If the body fails, ``path`` is untouched.

    ``keep_identical``: leave an existing ``path`` with the same bytes in place (no rename), so that several
    processes may write the same deterministic file while others already read it. ``permissions``: the new
    file's mode (default: the temporary file's, 0600)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if mode == "wb" else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if permissions is not None:
            os.chmod(tmp, permissions)
        if keep_identical and path.is_file() and filecmp.cmp(tmp, path, shallow=False):
            return
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_folder(path: str | os.PathLike) -> None:
    """Delete a folder so that it is never seen half-deleted under its name: renamed to ``*.tmp`` first."""
    path = Path(path)
    doomed = Path(tempfile.mkdtemp(prefix=f"{path.name}.", suffix=".old.tmp", dir=path.parent))
    os.replace(path, doomed / path.name)
    shutil.rmtree(doomed, ignore_errors=True)


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the complete folder ``staging`` onto ``target``; an existing ``target`` is moved aside first
    and deleted only once the new folder holds the name."""
    staging, target = Path(staging), Path(target)
    fsync_dir(staging)
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".old.tmp", dir=target.parent))
        os.replace(target, aside / target.name)
        os.replace(staging, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, target)
    fsync_dir(target.parent)


@contextmanager
def locked_folder(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``path`` (``flock`` on the folder itself: no lock file to leave
    behind, released when the process ends however it ends). Where ``flock`` is missing (Windows) or the file
    system refuses it, nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # pragma: no cover - a file system without locks
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_staging(parent: str | os.PathLike, prefix: str, suffix: str) -> list[Path]:
    """Delete the staging folders ``<prefix><pid>_<random><suffix>`` in ``parent`` whose writing process is
    gone (a killed export or conversion); a live writer's folder is left alone. Returns what was removed."""
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        name = entry.name
        if not (entry.is_dir() and name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid = name[len(prefix) :].partition("_")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
            logger.warning("removed %s, left behind by an interrupted run (process %s)", entry, pid)
            removed.append(entry)
    return removed


@contextmanager
def atomic_folder(
    target: str | os.PathLike, *, overwrite: bool = False, prefix: str | None = None, suffix: str = ".tmp"
) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``target``; when the body succeeds it replaces ``target``.

    Nothing is left at ``target`` if the body fails. An existing ``target`` is an error unless ``overwrite``;
    then it is replaced only once the new folder is complete. The check is made again, under the parent folder's
    lock, at the rename: a writer that finds ``target`` taken by another one meanwhile fails with
    ``FileExistsError`` and leaves nothing (see the module docstring). The temporary folder is named ``prefix``
    (default ``.<name>.``) + the process id + ``_`` + random letters + ``suffix``, so that the staging
    folders an interrupted run left behind (their process is gone) are removed here, at the next start.
    """
    target = Path(target).resolve()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}." if prefix is None else prefix
    remove_stale_staging(target.parent, prefix, suffix)
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}_", suffix=suffix, dir=target.parent))
    try:
        yield staging
        with locked_folder(target.parent):
            if target.exists() and not overwrite:
                raise FileExistsError(
                    f"{target} was created by another writer while this one ran: this output is discarded and theirs "
                    "kept (pass overwrite=True / --overwrite to replace it)"
                )
            replace_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
