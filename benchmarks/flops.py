"""A FLOPs table for a config: ``python -m jina_clip_v2.benchmarks.flops [--tiny]`` prints, as JSON, the
vision tower's GFLOPs per image at a few resolutions, the text tower's GFLOPs per token at a few lengths,
and the training-step multipliers. The counting itself is ``jina_clip_v2.training.flops`` (the one FLOPs
module: training logs and benchmarks compute MFU with it)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from jina_clip_v2.training.flops import text_flops_per_token, vision_forward_flops


def summary(config, image_sizes: Sequence[int], seq_lens: Sequence[int]) -> dict:
    vision, text = config.vision_config, config.text_config
    return {
        "vision_gflops_per_image": {
            str(s): {k: v / 1e9 for k, v in vision_forward_flops(vision, s).items()} for s in image_sizes
        },
        "text_gflops_per_token": {str(s): text_flops_per_token(text, s) / 1e9 for s in seq_lens},
        "train_step_multipliers": {
            "plain": 3.0,
            "gradient_checkpointing (hardware)": 4.0,
            "grad_cache (hardware)": 4.0,
            "both (hardware)": 5.0,
        },
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny test config instead of the real size")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[224, 384, 512])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[77, 128, 512])
    args = parser.parse_args(argv)
    from jina_clip_v2.benchmarks.common import build_config

    result = summary(build_config(args.tiny), args.image_sizes, args.seq_lens)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
