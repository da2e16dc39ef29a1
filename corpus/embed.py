"""``jina-clip embed INPUT --model M --out OUT``: embed a whole corpus into Parquet shards (resumable).

INPUT is a folder or glob of images, a JSON-lines / CSV / Parquet file (or a glob or folder of them), webdataset
tars, a dataset saved with ``datasets``' ``save_to_disk``, or a Hub dataset id (streamed). One process by
default; ``accelerate launch -m jina_clip_v2.cli embed ...`` splits the shards over the processes of a node;
``--engine ray`` runs on Ray Data (a cluster, or the GPUs of this machine).
"""

from __future__ import annotations

import argparse
import json
import sys

from .run import DEFAULT_SHARD_SIZE, ENGINES, embed_corpus, print_summary
from .sources import KINDS

__all__ = ["main"]


def _columns(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jina-clip embed", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("input", help="images folder / glob, .jsonl / .csv / .parquet / .tar file(s), saved dataset, or Hub dataset id")
    parser.add_argument("--model", required=True, help="model folder (this package's layout) or Hub id")
    parser.add_argument("--revision", help="Hub revision of --model (the commit used is recorded in the manifest)")
    parser.add_argument("--out", required=True, help="output folder (shards, errors.jsonl, manifest.json); rerun to resume")
    group = parser.add_argument_group("columns")
    group.add_argument("--text-column", help="column of texts to embed (default: 'text' if the input has one; a.b reaches into nested records)")
    group.add_argument("--image-column", help="column of image paths, URLs or bytes (default: 'image', an image folder's files, a tar's jpg/png)")
    group.add_argument("--id-column", help="column whose value is each row's id (default: the row number)")
    group.add_argument("--keep", type=_columns, help="comma-separated input columns copied into the shards ('' for none; "
                       "default: the id, text and image-path columns, a tar's __key__ / __url__)")
    group.add_argument("--image-root", help="folder relative image paths are read from (default: the input's folder)")
    group = parser.add_argument_group("input")
    group.add_argument("--input-kind", choices=KINDS, default="auto", help="how to read INPUT")
    group.add_argument("--split", help="split of a dataset (default: train)")
    group.add_argument("--subset", help="configuration (subset) of a Hub dataset")
    group.add_argument("--dataset-revision", help="revision of a Hub dataset")
    group = parser.add_argument_group("embeddings")
    group.add_argument("--task", choices=["retrieval.query"], help="embed texts as queries (with the query instruction); "
                       "default: as documents")
    group.add_argument("--truncate-dim", type=int, help="Matryoshka width (one of the model's matryoshka_dimensions)")
    group.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="dtype of the stored vectors")
    group.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="rows per output shard (the unit of resume)")
    group.add_argument("--batch-size", type=int, default=None,
                       help="encode_text / encode_image batch size (default: theirs: at most 32 texts in a token budget, images "
                       "by device)")
    group.add_argument("--num-workers", type=int, help="image decoding threads (default: one per core, at most 8)")
    group.add_argument("--model-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                       help="dtype the model computes in (float32: the release's CPU embeddings; bfloat16 is about 2x faster on "
                       "GPUs and on CPUs with native bf16, AVX512-BF16 / AMX, and changes the numbers slightly)")
    group.add_argument("--device", help="device (default: CUDA if available; the process's GPU under accelerate launch)")
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=ENGINES, default="local", help="local: this process (or each of accelerate "
                       "launch's); ray: Ray Data")
    group.add_argument("--ray-address", help="Ray cluster to connect to (default: RAY_ADDRESS, else a local one)")
    group.add_argument("--workers", type=int, help="Ray model actors (default: one per GPU, else one per CPU slot)")
    group.add_argument("--cpus-per-worker", type=float, help="CPUs per Ray actor (default 1)")
    group.add_argument("--gpus-per-worker", type=float, help="GPUs per Ray actor (default 1 when the cluster has GPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = embed_corpus(
        args.input, args.out, args.model,
        text_column=args.text_column, image_column=args.image_column, id_column=args.id_column, keep=args.keep,
        input_kind=args.input_kind, split=args.split, subset=args.subset, dataset_revision=args.dataset_revision,
        image_root=args.image_root, task=args.task, truncate_dim=args.truncate_dim, dtype=args.dtype,
        shard_size=args.shard_size, batch_size=args.batch_size, num_workers=args.num_workers, revision=args.revision,
        model_dtype=args.model_dtype, device=args.device, engine=args.engine, ray_address=args.ray_address,
        workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    print_summary(summary)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip embed"))
