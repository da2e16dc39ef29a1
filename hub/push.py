"""Upload an exported folder to the Hugging Face Hub.

    jina-clip push --folder <folder> --repo <user/name> [--private] [--revision BRANCH]
        [--commit-message MSG] [--dry-run]

Creates the model repository if needed (`create_repo(exist_ok=True)`; `--private` applies to a new
repository), creates the branch `--revision` if it does not exist, and uploads the planned files in one
commit. The token comes from `HF_TOKEN` or `hf auth login`; without one the command stops with an error
before any network access. `--dry-run` needs no token and no network: it lists the files that would be
uploaded, their sizes and where they would go.

Only an allow-list is ever uploaded: the exact names of the files `jina-clip export` / `convert` / `onnx`
write (`PUSHABLE_FILES`, `PUSHABLE_PATTERNS`: no wildcard that `modeling_notes.py`, `configuration_x/keys.py`
or `onnx/private/keys.onnx` would match). A folder that holds anything else (a token, a key, credentials,
notes) is refused with the offending names, unless each is named with `--include PATTERN`; symbolic links are
always refused (one could point at any file of the machine). Hidden entries and `__pycache__/` are never
uploaded. The folder must also be complete: config.json, README.md and tokenizer.json present and readable,
every weights file present and whole (a truncated model.safetensors is refused before anything is uploaded).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ._util import configure_logging, hub_logger, human_size

logger = hub_logger("push")

REQUIRED_FILES = ("config.json", "README.md", "tokenizer.json")
# The remote code an export copies in: the modeling package's own files (exact names, whatever files it holds
# now) and the Sentence-Transformers module.
_MODELING_DIR = Path(__file__).resolve().parent.parent / "modeling"
REMOTE_CODE_FILES = tuple(sorted(p.name for p in _MODELING_DIR.glob("*.py") if p.name != "__init__.py")) + ("custom_st.py",)
# What an export folder holds (hub/export.py, hub/convert.py, hub/onnx.py), as exact relative POSIX paths...
PUSHABLE_FILES = (
    "README.md",
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    *REMOTE_CODE_FILES,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "preprocessor_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Normalize/config.json",
    "training_summary.json",
    "onnx/parity.json",
    "onnx/parity.md",
)
# ... and the numbered names: weight shards, and the ONNX graphs of `jina-clip onnx` with their external data
# chunks (`_data`, `_data_1`, ...). tests/test_hub_push.py checks that a real export matches and nothing is left out.
PUSHABLE_PATTERNS = (
    r"model-\d{5}-of-\d{5}\.safetensors",
    r"onnx/(text|vision)_model(_fp16|_quantized)?\.onnx(_data(_\d+)?)?",
)


class PushError(RuntimeError):
    """The folder, repository id or credentials do not allow a push."""


@dataclass
class PushPlan:
    folder: Path
    repo_id: str
    revision: str
    private: bool
    files: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # hidden entries and __pycache__, never uploaded

    @property
    def url(self) -> str:
        base = f"https://huggingface.co/{self.repo_id}"
        return base if self.revision == "main" else f"{base}/tree/{self.revision}"

    def describe(self) -> str:
        total = sum(size for _, size in self.files)
        width = max(len(name) for name, _ in self.files)
        lines = [
            f"would upload {len(self.files)} files ({human_size(total)}) from {self.folder}",
            f"to {self.url} (model repository {self.repo_id}, revision {self.revision}, "
            f"{'private' if self.private else 'public'} if created)",
        ]
        lines += [f"  {name:<{width}}  {human_size(size):>9}" for name, size in self.files]
        return "\n".join(lines)


def _is_pushable(name: str, include: tuple[str, ...]) -> bool:
    """On the allow-list (exact names and numbered patterns), or matching one of the user's `--include` globs."""
    return (
        name in PUSHABLE_FILES
        or any(re.fullmatch(pattern, name) for pattern in PUSHABLE_PATTERNS)
        or any(fnmatch.fnmatchcase(name, pattern) for pattern in include)
    )


def _completeness_problems(folder: Path) -> list[str]:
    """Why `folder` is not a complete export: JSON files that do not read, weights missing or truncated."""
    from ._util import read_json_object, weights_problems

    problems = []
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file() and not (folder / name).is_symlink():
            try:
                read_json_object(folder / name)
            except (OSError, ValueError) as err:
                problems.append(str(err))
    return problems + weights_problems(folder)


def _scan(folder: Path, include: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(files to upload, skipped entries) of `folder`; PushError for symlinks and files outside the list."""
    files, skipped, links, unknown = [], [], [], []
    for root, dirs, names in os.walk(folder, followlinks=False):
        base = Path(root)
        for entry in sorted(dirs):
            path = base / entry
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                links.append(relative)
                dirs.remove(entry)
            elif entry.startswith(".") or entry == "__pycache__":
                skipped.append(relative + "/")
                dirs.remove(entry)
        for entry in sorted(names):
            path = base / entry
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                links.append(relative)
            elif entry.startswith("."):
                skipped.append(relative)
            elif not path.is_file():
                unknown.append(relative)  # sockets, fifos, devices
            elif _is_pushable(relative, include):
                files.append(relative)
            else:
                unknown.append(relative)
    if links:
        raise PushError(f"{folder} holds symbolic links, which are never uploaded (they may point anywhere): {', '.join(sorted(links))}")
    if unknown:
        raise PushError(
            f"{folder} holds files an export does not write: {', '.join(sorted(unknown))}. Remove them, or upload "
            "them deliberately with --include PATTERN (one per pattern)"
        )
    return sorted(files), sorted(skipped)


def plan_push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    include: tuple[str, ...] | list[str] = (),
) -> PushPlan:
    """Check the folder and the repository id and list what a push would upload (no network): the files
    of `PUSHABLE_FILES` plus those matching `include`; anything else in the folder is an error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    if not folder.is_dir():
        raise PushError(f"no such folder: {folder}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushError(f"invalid repository id {repo_id!r}: {err}") from err
    if "/" not in repo_id:
        raise PushError(f"repository id {repo_id!r} must be <user or organisation>/<name>")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PushError(f"{folder} is not an exported model folder (missing {', '.join(missing)}); run hub.export first")
    names, skipped = _scan(folder, tuple(include))
    problems = _completeness_problems(folder)
    if problems:
        raise PushError(f"{folder} is not a complete export, nothing is uploaded: {'; '.join(problems)}")
    files = [(name, (folder / name).stat().st_size) for name in names]
    return PushPlan(folder=folder, repo_id=repo_id, revision=revision or "main", private=private, files=files, skipped=skipped)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    include: tuple[str, ...] | list[str] = (),
) -> PushPlan | str:
    """Upload the allow-listed files of `folder` to the model repository `repo_id`; returns the commit URL
    (or, with `dry_run`, the `PushPlan` of what would be uploaded)."""
    plan = plan_push(folder, repo_id, revision=revision, private=private, include=include)
    if dry_run:
        return plan
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.constants import HF_HUB_OFFLINE

    token = token or get_token()
    if not token:
        raise PushError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access to "
            f"{repo_id.split('/')[0]!r}); use --dry-run to see what would be uploaded"
        )
    if HF_HUB_OFFLINE:
        raise PushError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    api = HfApi(token=token)
    logger.info("creating %s repository %s (if missing)", "private" if private else "public", repo_id)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if plan.revision != "main":
        logger.info("creating branch %s (if missing)", plan.revision)
        api.create_branch(repo_id, branch=plan.revision, repo_type="model", exist_ok=True)
    total = sum(size for _, size in plan.files)
    logger.info("uploading %d files (%s) to %s", len(plan.files), human_size(total), plan.url)
    # Exactly the planned files, one operation each: nothing is re-listed from the folder after the check.
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(plan.folder / name)) for name, _ in plan.files]
    commit = api.create_commit(
        repo_id=repo_id,
        operations=operations,
        repo_type="model",
        revision=plan.revision,
        commit_message=commit_message or f"Upload {plan.folder.name} with jina-clip push",
    )
    return commit.commit_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jina-clip push", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, type=Path, help="exported folder (hub.export / hub.convert)")
    parser.add_argument("--repo", required=True, help="model repository id, <user or organisation>/<name>")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created if missing; default: main)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    parser.add_argument(
        "--include", action="append", default=[], metavar="PATTERN",
        help="also upload files matching this glob (relative path); repeatable. Without it, files an export "
        "does not write make the push fail",
    )  # fmt: skip
    args = parser.parse_args(argv)
    configure_logging()
    from huggingface_hub.errors import HfHubHTTPError

    try:
        result = push_folder(
            args.folder,
            args.repo,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
            include=args.include,
        )
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (HfHubHTTPError, OSError) as err:
        print(f"error: upload to {args.repo} failed: {err}", file=sys.stderr)
        return 1
    if isinstance(result, PushPlan):
        print(result.describe())
        print("dry run: nothing uploaded")
    else:
        print(f"uploaded {args.folder} to {result}")
    return 0


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip push"))


__all__ = ["PUSHABLE_FILES", "PUSHABLE_PATTERNS", "PushError", "PushPlan", "main", "plan_push", "push_folder"]
