"""Run one training stage of jina-clip-v2 (paper section 3.2, Table 6): the command-line entry point.

    accelerate launch training/stage.py --config training/configs/stage1.yaml [key=value ...] [--resume auto]
    jina-clip train --config training/configs/tiny.yaml stage=2 model.init_from=outputs/tiny/stage1
    python -m jina_clip_v2.training.stage --config ... [--print-config]

The config (``training.config``): a YAML file, then dotted ``key=value`` overrides whose values are YAML.
The run (``training.loop.Stage``): one ``training.step.TrainStep`` per step over a text batch and an
image-text batch, checkpoints, metrics, the export. See training/README.md for the files and what each does.
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

from jina_clip_v2.training.config import config_to_dict, config_to_yaml, load_config  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run one jina-clip-v2 training stage (launch with `accelerate launch` to scale out).",
    )
    parser.add_argument("--config", required=True, help="stage YAML (training/configs/*.yaml, also from the installed package)")
    parser.add_argument("--resume", default=None, help="'auto' (latest checkpoint in output_dir, if any) or a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, values parsed as YAML")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (``--config``, ``--resume``, overrides), run the stage, return its summary."""
    args = _parser().parse_args(argv)
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


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip train"))
