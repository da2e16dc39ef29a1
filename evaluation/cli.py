"""Command line: ``jina-clip eval <command>``.

    run      evaluate a model on a suite; writes results.json, report.md, matryoshka.png
    list     show the tasks of a suite (after --tasks / --set) and where their data comes from
    report   redraw report.md and matryoshka.png from a results.json
    prepare-xtd10   build the local multilingual MS COCO (XTD10) folder

Examples::

    jina-clip eval run --model jinaai/jina-clip-v2 --suite paper \\
        --truncate-dims 1024,768,512,256,128,64 --out results/ --device cuda --dtype bfloat16
    jina-clip eval run --model outputs/demo/final --suite quick --limit 200 --out results/quick
    jina-clip eval run --model M --suite paper --tasks 'ViDoRe' --set 'ArxivQ.dataset=/data/arxivqa'
    jina-clip eval report results/results.json --paper-model 'jina-clip-v2 stage 2'
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jina-clip eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_suite_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--suite", default="quick", help="paper | quick | a suite file (.yaml/.json); default quick")
        p.add_argument("--tasks", default=None, help="comma-separated glob patterns on task key, name or group")
        p.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="PATTERN.FIELD=VALUE",
            help="override a task field, e.g. 'Flickr30K.dataset=/data/flickr' (repeatable)",
        )  # fmt: skip

    def add_paper_arg(p: argparse.ArgumentParser, default: str | None = "jina-clip-v2") -> None:
        from .paper_figures import PAPER_MODELS

        p.add_argument(
            "--paper-model", default=default, choices=[*PAPER_MODELS, "none"],
            help="whose published figures (paper Tables 2-5, 7-13) stand beside each row: e.g. 'jina-clip-v2 stage 1' "
            "for a stage-1 checkpoint, 'none' for none" + (" (default: jina-clip-v2)" if default else " (default: as recorded)"),
        )  # fmt: skip

    run = sub.add_parser("run", help="evaluate a model")
    run.add_argument("--model", required=True, help="model folder or Hub id (AutoModel, trust_remote_code=True)")
    add_suite_args(run)
    run.add_argument(
        "--truncate-dims", default=None,
        help="Matryoshka dims, e.g. 1024,768,512,256,128,64 ('paper' for those); default: full width only",
    )  # fmt: skip
    run.add_argument("--out", default="results", help="output folder (default results/)")
    run.add_argument("--cache-dir", default=None, help="embedding cache (default <out>/cache)")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    run.add_argument(
        "--batch-size", type=int, default=None,
        help="texts / images per forward pass (default: the encode methods' own, chosen per device)",
    )
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: where the model loads)")
    run.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    run.add_argument("--limit", type=int, default=None, help="at most N images / queries / pairs per task")
    run.add_argument("--model-name", default=None, help="name written into the results (default: --model)")
    run.add_argument("--strict", action="store_true", help="stop at the first failing task")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    add_paper_arg(run)

    lst = sub.add_parser("list", help="list the tasks of a suite")
    add_suite_args(lst)
    lst.add_argument("--json", action="store_true", help="print the task configs as JSON")

    rep = sub.add_parser("report", help="redraw report.md and matryoshka.png from results.json")
    rep.add_argument("results", help="path to results.json")
    rep.add_argument("--out", default=None, help="output folder (default: next to results.json)")
    add_paper_arg(rep, default=None)

    xtd = sub.add_parser("prepare-xtd10", help="build the local XTD10 (multilingual MS COCO) folder")
    xtd.add_argument("--captions", required=True, help="checkout of Cross-lingual-Test-Dataset-XTD10 (text files)")
    xtd.add_argument("--images", required=True, help="folder with the extracted XTD10 / COCO images")
    xtd.add_argument("--out", required=True)
    xtd.add_argument("--languages", default=None, help="comma-separated (default: every caption file found)")
    return parser


def _cmd_run(args) -> int:
    from .runner import evaluate

    data = evaluate(
        args.model,
        args.suite,
        args.truncate_dims,
        args.out,
        args.cache_dir,
        tasks=args.tasks,
        overrides=args.overrides,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        limit=args.limit,
        model_name=args.model_name,
        use_cache=not args.no_cache,
        show_progress=not args.quiet,
        strict=args.strict,
        paper_model=None if args.paper_model == "none" else args.paper_model,
    )
    out = Path(args.out)
    enc = data["encoding"]
    print(
        f"{len(data['results'])} results -> {out / 'results.json'}, {out / 'report.md'}"
        + (f", {out / 'matryoshka.png'}" if (out / "matryoshka.png").exists() else "")
    )
    print(f"encoded {enc['texts']} texts and {enc['images']} images; cache hits {enc['cache_hits']}, misses {enc['cache_misses']}")
    for item in data["skipped"]:
        print(f"skipped {item['task']}: {item['reason']}", file=sys.stderr)
    for item in data["errors"]:
        print(f"FAILED {item['task']}: {item['error']}", file=sys.stderr)
    return 1 if data["errors"] else 0


def _cmd_list(args) -> int:
    from .suites import apply_overrides, get_suite, select_tasks

    tasks = select_tasks(apply_overrides(get_suite(args.suite), args.overrides), args.tasks)
    if args.json:
        print(json.dumps([t.to_dict() for t in tasks], indent=2, ensure_ascii=False))
        return 0
    for task in tasks:
        source = getattr(task, "dataset", None) or ("(mteb's own)" if task.kind == "mteb" else "(not configured)")
        split = getattr(task, "split", None) or "-"
        print(f"{task.kind:10s} {(task.group or '-'):32s} {task.key:40s} {source} [{split}]")
    print(f"{len(tasks)} tasks")
    return 0


def _cmd_report(args) -> int:
    from .runner import write_outputs

    path = Path(args.results)
    data = json.loads(path.read_text(encoding="utf-8"))
    if args.paper_model is not None:
        data["paper_model"] = None if args.paper_model == "none" else args.paper_model
    paths = write_outputs(data, Path(args.out) if args.out else path.parent)
    print(", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_prepare_xtd10(args) -> int:
    from .prepare import prepare_xtd10

    languages = [lang.strip() for lang in args.languages.split(",")] if args.languages else None
    counts = prepare_xtd10(args.captions, args.images, args.out, languages)
    print(f"wrote {args.out}: " + ", ".join(f"{lang} {n}" for lang, n in counts.items()))
    print(f"use it with: --set 'Multilingual MS COCO*.dataset={args.out}'")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    commands = {"run": _cmd_run, "list": _cmd_list, "report": _cmd_report, "prepare-xtd10": _cmd_prepare_xtd10}
    # Errors reach `jina_clip_v2.cli.run`: one line (exit 1), a missing extra named, --debug for the traceback.
    return commands[args.command](args)


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip eval"))
