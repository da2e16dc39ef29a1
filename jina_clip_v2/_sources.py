"""Where a model comes from: a local folder or a Hub repository id.

transformers' `from_pretrained` treats any string that is not an existing folder as a Hub repository id, so a
mistyped or missing local path (`outputs/stage3/model`, `./jina-clip-v2-converted`) fails with huggingface_hub's
"Repo id must be in the form 'repo_name' or 'namespace/repo_name'" or, for a path that happens to be a valid id,
with a network or cache error. That message comes from transformers and huggingface_hub and a model package
cannot change it there; every command of this package that loads a model asks `model_source` first, which
names the missing folder.
"""

from __future__ import annotations

import os


def model_source(name_or_path: str | os.PathLike) -> str:
    """`name_or_path` as `from_pretrained` takes it, after checking it: an existing local folder, or a valid Hub
    repository id (`name` or `namespace/name`) that is not meant as a local path. Raises `FileNotFoundError`
    ("no such folder") for a path that does not exist and cannot be a repository id either, and
    `NotADirectoryError` for a file."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    source = os.fspath(name_or_path)
    if os.path.isdir(source):
        return source
    if os.path.exists(source):
        raise NotADirectoryError(f"{source} is a file, not a model folder (a folder written by save_pretrained / jina-clip export)")
    # Relative markers (./, ../, ~), absolute paths and nested paths are folders by intent, whatever
    # validate_repo_id says.
    looks_local = source.startswith((".", "~", os.sep)) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)
    try:
        validate_repo_id(source)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise FileNotFoundError(f"no such folder: {source} (nor a Hub repository id: those are <namespace>/<name>)")
    return source


__all__ = ["model_source"]
