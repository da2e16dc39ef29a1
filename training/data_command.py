"""``jina-clip data <command>``: the paper's training data (section 3.1) from public sets, in the layouts the
stage configs read.

    jina-clip data captions --source <Hub id | folder | parquet / jsonl / tar files or glob> --recipe captions|qa|wit|long
        --out <folder> [--columns field=column ...] [--tokenizer assets://xlm-roberta-tokenizer]
        [--long-threshold 256] [--image-size 384] [--resize-mode shortest|squash] [--shard-size 10000] [--limit N]
    jina-clip data triplets --pairs <source> --model <jina-clip folder> --out <folder> [--columns query=question ...]
        [--corpus <source> --corpus-column text] [--num-negatives 7] [--max-relative-score 0.95]

`captions` writes <out>/image_text_short and/or <out>/image_text_long (training/build_data.py: the recipes,
the 256-token hold-out with the real tokenizer, images stored once at 384 px); `triplets` writes
<out>/text_triplets with mined hard negatives (training/mine_negatives.py). Both stream their source, name and
skip bad rows (<out>/skipped.jsonl) and continue where a killed run stopped (<out>/state.json).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _columns(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise argparse.ArgumentTypeError(f"--columns takes field=column pairs, got {item!r}")
        out[field] = column
    return out


def build_parser() -> argparse.ArgumentParser:
    from jina_clip_v2.training.build_data import IMAGE_SIZE, LONG_CAPTION_TOKENS, RECIPES

    parser = argparse.ArgumentParser(prog="jina-clip data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_source(p: argparse.ArgumentParser, flag: str) -> None:
        p.add_argument(flag, required=True, help="Hub dataset id, local folder, parquet / jsonl / webdataset file or glob")
        p.add_argument("--format", choices=["parquet", "json", "webdataset"], help="the files' format (default: from their names)")
        p.add_argument("--split", default="train")
        p.add_argument("--name", help="the dataset's config name")
        p.add_argument("--columns", nargs="*", default=[], metavar="FIELD=COLUMN", help="map the recipe's fields to other column names")
        p.add_argument("--out", required=True, type=Path, help="output folder (a run resumes there)")
        p.add_argument("--shard-size", type=int, default=10000, help="source rows per commit (shards + state), default 10000")

    captions = sub.add_parser("captions", help="image-caption sets D^mm;s / D^mm;l")
    add_source(captions, "--source")
    captions.add_argument("--recipe", required=True, choices=RECIPES, help="captions (DFN, CommonPool) | qa (DocVQA, ...) | wit | long")
    captions.add_argument("--tokenizer", default="assets://xlm-roberta-tokenizer", help="tokenizer folder counting the tokens (default: the real XLM-R one)")
    captions.add_argument("--long-threshold", type=int, default=LONG_CAPTION_TOKENS, help="captions over this many tokens go to the long set (captions recipe)")
    captions.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    captions.add_argument("--resize-mode", choices=["shortest", "squash"], default="shortest")
    captions.add_argument("--limit", type=int, help="stop after this many source rows")

    triplets = sub.add_parser("triplets", help="text triplets with mined hard negatives D^txt;t")
    add_source(triplets, "--pairs")
    triplets.add_argument("--model", required=True, type=Path, help="a jina-clip model folder embedding queries and documents")
    triplets.add_argument("--corpus", help="more documents to draw negatives from (source as --pairs)")
    triplets.add_argument("--corpus-column", default="text")
    triplets.add_argument("--num-negatives", type=int, default=7)
    triplets.add_argument("--max-relative-score", type=float, default=0.95, help="negatives score below this x the positive's")
    triplets.add_argument("--batch-size", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.shard_size < 1:
        raise ValueError("--shard-size must be >= 1")
    columns = _columns(args.columns)
    if args.command == "captions":
        from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer
        from jina_clip_v2.training.build_data import build_image_text
        from jina_clip_v2.training.config import resolve_path

        tokenizer_dir = resolve_path(args.tokenizer)
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"no tokenizer.json in {tokenizer_dir} (`jina-clip fetch-assets` fetches the XLM-R one)")
        state = build_image_text(
            args.source, args.out, recipe=args.recipe, tokenizer=load_tokenizer(tokenizer_dir), columns=columns,
            fmt=args.format, split=args.split, name=args.name, image_size=args.image_size, resize_mode=args.resize_mode,
            long_threshold=args.long_threshold, shard_size=args.shard_size, limit=args.limit,
        )  # fmt: skip
    else:
        from jina_clip_v2.modeling import JinaCLIPModel
        from jina_clip_v2.training.mine_negatives import mine_triplets

        model = JinaCLIPModel.from_pretrained(args.model).eval()  # the package's own code: nothing of the folder runs
        state = mine_triplets(
            args.pairs, args.out, model=model, columns=columns, corpus=args.corpus, corpus_column=args.corpus_column,
            num_negatives=args.num_negatives, max_relative_score=args.max_relative_score, fmt=args.format,
            split=args.split, name=args.name, batch_size=args.batch_size, shard_size=args.shard_size,
        )  # fmt: skip
    written = ", ".join(f"{kind}: {n} rows" for kind, n in state["rows"].items())
    print(f"{args.out}: {state['rows_read']} source rows read; {written}; {sum(state['skipped'].values())} skipped")
    return 0


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip data"))


__all__ = ["build_parser", "main"]
