"""Hub tooling for jina-clip-v2: export a Hub-ready folder, convert the released checkpoint, build the
model card, push to the Hub.

    jina-clip export  --model <folder | weights file> --out <folder>
    jina-clip convert --from <released snapshot folder> --out <folder>
    jina-clip push    --folder <folder> --repo <user/name> [--private] [--revision REV] [--dry-run]

`hub.custom_st` is not imported here: it is the Sentence-Transformers module copied into exported
folders (remote code), loaded by Sentence-Transformers itself.
"""

from __future__ import annotations

import importlib

# Lazy attributes: `jina-clip export` must not find hub.export already imported by this package.
_EXPORTS = {
    "export_model": "export",
    "check_export": "export",
    "load_model": "export",
    "ExportError": "export",
    "convert_release": "convert",
    "push_folder": "push",
    "PushError": "push",
    "build_model_card": "model_card",
    "validate_model_card": "model_card",
    "load_eval_results": "model_card",
    "load_training_summary": "model_card",
    "ModelCardError": "model_card",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hub' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
