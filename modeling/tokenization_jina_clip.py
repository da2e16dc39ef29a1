"""The one way the package loads a tokenizer: the folder's tokenizer.json as written, in transformers' generic
fast tokenizer.

The release tokenizes with its `tokenizer.json` as written (transformers 4's fast tokenizer ran that pipeline
unchanged). transformers 5's `XLMRobertaTokenizer` class rebuilds the pipeline from the vocabulary instead
(whitespace split, then Metaspace), which drops the trailing `\u2581` piece: "a " gives [0, 10, 2] where the
release gives [0, 10, 6, 2]. The tokenizer of every folder this package writes is therefore transformers' generic
`PreTrainedTokenizerFast` around the file's own pipeline (`load_tokenizer`, `exact_tokenizer`), and its
tokenizer_config.json names that class (`name_generic_tokenizer_class`), so `AutoTokenizer` / `AutoProcessor`
load it without rebuilding anything.

This file is Hub remote code: it imports tokenizers and transformers (no torch), nothing of this repository.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any


# XLM-RoBERTa's special tokens (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=last), used where a folder's
# tokenizer_config.json does not name them.
SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "cls_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


def load_tokenizer(source: str | os.PathLike, *, model_max_length: int | None = None):
    """The tokenizer of `source` (a folder holding tokenizer.json, or the file) with the file's pipeline as
    written: normalizer, pre-tokenizer, model, post-processor and added tokens exactly as the `tokenizers`
    library reads them (`tokenizers.Tokenizer.from_file` gives the same ids for every string).

    Special tokens and `model_max_length` come from the folder's tokenizer_config.json when it has one
    (XLM-RoBERTa's for a bare file); nothing in that file changes how texts are split."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = os.fspath(source)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    config_file = os.path.join(os.path.dirname(file), "tokenizer_config.json")
    settings: dict[str, Any] = {}
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            settings = json.load(handle)
        if not isinstance(settings, dict):
            raise ValueError(f"{config_file} must hold a JSON object of settings, got a JSON {type(settings).__name__}")
    kwargs: dict[str, Any] = {}
    vocabulary = Tokenizer.from_file(file).get_vocab(with_added_tokens=True)
    for name, default in SPECIAL_TOKENS.items():
        value = settings.get(name)
        # XLM-RoBERTa's token where the config names none, only if the vocabulary has it (BERT, for
        # jina-clip-v1, has no <s> / </s>: a default would add tokens the model has no embedding for).
        if value is None and default in vocabulary:
            value = default
        if value is not None:
            kwargs[name] = value["content"] if isinstance(value, dict) else value
    for name in ("model_max_length", "padding_side", "truncation_side"):
        if settings.get(name) is not None:
            kwargs[name] = settings[name]
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    return PreTrainedTokenizerFast(tokenizer_file=file, **kwargs)


# The name every transformers version (4.x: the fast base class; 5.x: an alias of `TokenizersBackend`) and
# transformers.js resolve to the generic tokenizer that runs tokenizer.json as written. transformers 5 saves
# "TokenizersBackend", which transformers 4 does not know.
GENERIC_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def name_generic_tokenizer_class(folder: str | os.PathLike) -> None:
    """Make the tokenizer_config.json in `folder` name `GENERIC_TOKENIZER_CLASS` (after `save_pretrained`)."""
    path = os.path.join(os.fspath(folder), "tokenizer_config.json")
    with open(path, encoding="utf-8") as handle:
        settings = json.load(handle)
    settings["tokenizer_class"] = GENERIC_TOKENIZER_CLASS
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def exact_tokenizer(tokenizer):
    """`tokenizer`'s own `tokenizers` pipeline (its `backend_tokenizer`, copied as is, without the padding /
    truncation state of its last call) in a `PreTrainedTokenizerFast`, with its special tokens and lengths:
    saved, it loads back through `AutoTokenizer` with the same ids, whatever class `tokenizer` was."""
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"expected a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    backend = copy.deepcopy(backend)
    backend.no_truncation()
    backend.no_padding()
    kwargs = {name: str(getattr(tokenizer, name)) for name in SPECIAL_TOKENS if getattr(tokenizer, name, None) is not None}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
        **kwargs,
    )


__all__ = [
    "GENERIC_TOKENIZER_CLASS",
    "SPECIAL_TOKENS",
    "exact_tokenizer",
    "load_tokenizer",
    "name_generic_tokenizer_class",
]
