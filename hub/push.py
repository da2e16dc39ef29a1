"""Upload an exported folder to the Hugging Face Hub.

    jina-clip push --folder <folder> --repo <user/name> [--private] [--revision BRANCH]
        [--commit-message MSG] [--dry-run]

Creates the model repository if needed (`create_repo(exist_ok=True)`; `--private` applies to a new
repository), creates the branch `--revision` if it does not exist, and uploads the folder in one
commit (`upload_folder`). The token comes from `HF_TOKEN` or `hf auth login`; without one the command
stops with an error before any network access. `--dry-run` needs no token and no network: it lists the
files that would be uploaded, their sizes and where they would go.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ._util import configure_logging, folder_files, hub_logger, human_size

logger = hub_logger("push")

REQUIRED_FILES = ("config.json", "README.md")


class PushError(RuntimeError):
    """The folder, repository id or credentials do not allow a push."""


@dataclass
class PushPlan:
    folder: Path
    repo_id: str
    revision: str
    private: bool
    files: list[tuple[str, int]] = field(default_factory=list)

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


def plan_push(folder: str | os.PathLike, repo_id: str, *, revision: str | None = None, private: bool = False) -> PushPlan:
    """Check the folder and the repository id and list what a push would upload (no network)."""
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
    files = [(str(path.as_posix()), (folder / path).stat().st_size) for path in folder_files(folder)]
    return PushPlan(folder=folder, repo_id=repo_id, revision=revision or "main", private=private, files=files)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
) -> PushPlan | str:
    """Upload `folder` to the model repository `repo_id`; returns the commit URL (or, with `dry_run`,
    the `PushPlan` of what would be uploaded)."""
    plan = plan_push(folder, repo_id, revision=revision, private=private)
    if dry_run:
        return plan
    from huggingface_hub import HfApi, get_token
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
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(plan.folder),
        repo_type="model",
        revision=plan.revision,
        commit_message=commit_message or f"Upload {plan.folder.name} with hub.push",
        ignore_patterns=[".*", "**/.*", "**/__pycache__/**"],
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
    sys.exit(main())


__all__ = ["PushError", "PushPlan", "main", "plan_push", "push_folder"]
