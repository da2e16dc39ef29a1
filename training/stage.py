"""Run one training stage of jina-clip-v2 (paper section 3.2, Table 6): the command-line entry point.

    accelerate launch training/stage.py --config training/configs/stage1.yaml [key=value ...] [--resume auto]
    jina-clip train --config training/configs/tiny.yaml stage=2 model.init_from=outputs/tiny/stage1
    python -m jina_clip_v2.training.stage --config ... [--print-config]

The config (``training.config``): a YAML file, then dotted ``key=value`` overrides whose values are YAML.
The run (``training.loop.Stage``): one ``training.step.TrainStep`` per step over a text batch and an
image-text batch, checkpoints, metrics, the export. See training/README.md for the files and what each does.

Errors (a config value, data, a checkpoint) end the process with one line on stderr naming the problem,
no traceback (``--debug`` shows it), through ``jina_clip_v2.cli.run``; under a multi-process launch the
line names the rank, and torchrun's failure summary gets the same line (its ``TORCHELASTIC_ERROR_FILE``)
instead of a hint to enable tracebacks. What the launcher prints about the failed process is its own:
``accelerate launch -q`` leaves out the single-process launcher's ``CalledProcessError`` traceback.
"""

import sys

if __package__ in (None, ""):
    # `accelerate launch training/stage.py` runs this file as a loose script, with training/ first on sys.path:
    # drop that entry (our module names must not shadow libraries) and run the installed package's module.
    import runpy

    sys.path.pop(0)
    runpy.run_module("jina_clip_v2.training.stage", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from jina_clip_v2.training.config import config_to_dict, config_to_yaml, load_config  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run one jina-clip-v2 training stage (launch with `accelerate launch` to scale out).",
    )
    parser.add_argument("--config", required=True, help="stage YAML (training/configs/*.yaml, also from the installed package)")
    parser.add_argument("--resume", default=None, help="'auto' (the newest intact checkpoint in output_dir, if any) or a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, values parsed as YAML")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (``--config``, ``--resume``, overrides), run the stage, return its summary."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.resume not in (None, "", "none", "no", "auto") and not os.path.isdir(args.resume):
        # Before any work; `--resume train.steps=3` is argparse taking an override as the checkpoint folder.
        hint = "; give --resume its value first (--resume auto) and put key=value overrides after it" if "=" in args.resume else ""
        parser.error(f"--resume takes 'auto' or a checkpoint folder; no such folder: {args.resume!r}{hint}")
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return {"config": config_to_dict(cfg)}
    from jina_clip_v2.training.launch import reset_accelerate_state
    from jina_clip_v2.training.loop import Stage

    if not logging.getLogger().handlers:  # the command line: progress lines on stderr
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stage = Stage(cfg, resume=args.resume)
    try:
        summary = stage.run()
    finally:
        reset_accelerate_state()
    if stage.accelerator.is_main_process:
        brief = {k: v for k, v in summary.items() if k not in ("config", "stages")}
        print("TRAINING_SUMMARY " + json.dumps(brief, default=str), flush=True)
    return summary


def _program_name() -> str:
    """How the error line names the program: with the rank under a multi-process launch."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f"jina-clip train (rank {os.environ.get('RANK', '?')} of {world})" if world > 1 else "jina-clip train"


def _launched_main(argv: list[str]) -> dict:
    """``main`` for `accelerate launch` / torchrun: an error is also written to the launcher's error file
    (torchrun reads it for its summary of the failed processes)."""
    try:
        return main(argv)
    except Exception as err:
        error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if error_file:
            message = f"{type(err).__name__}: {str(err).strip() or type(err).__name__} (--debug shows the traceback)"
            try:
                with open(error_file, "w", encoding="utf-8") as handle:
                    json.dump({"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}}, handle)
            except OSError:
                pass
        raise


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(_launched_main, name=_program_name()))
