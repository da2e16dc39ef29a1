"""What the training loop logs: one record per logging window (``train.log_every`` steps), reduced over
the processes, written to ``metrics.jsonl``, handed to the trackers (``Accelerator.log``) and shown in the
progress bar.

A record holds the step, the mean losses of the window (``loss``, ``loss/text``, ``loss/image_text``),
the temperatures, the learning rate per tower, throughput (samples, tokens and model TFLOP/s, all
processes together), ``model_flops_per_step`` and ``seconds_per_step``, the MFU when the device's peak is
known (``training.flops``, the function the benchmarks use too), the image size, the text length and the
gradient norm before clipping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from jina_clip_v2._io import atomic_write
from jina_clip_v2.training.flops import mfu
from jina_clip_v2.training.losses import LossOutput

__all__ = ["MetricsWindow", "append_record", "progress_postfix", "truncate_metrics"]

_COUNTS = ("samples", "tokens", "model")  # summed per window from training.flops.step_flops


class MetricsWindow:
    """Sums of one logging window: the loss terms (detached tensors, read only when the window is
    logged, so steps never wait for the device) and the step counts."""

    def __init__(self) -> None:
        self.losses: dict[str, torch.Tensor] = {}
        self.counts = torch.zeros(len(_COUNTS), dtype=torch.float64)
        self.steps = 0

    def add(self, output: LossOutput, flops: dict[str, float]) -> None:
        for key, value in output.terms().items():
            self.losses[key] = self.losses[key] + value if key in self.losses else value
        self.counts += torch.tensor([flops[name] for name in _COUNTS], dtype=torch.float64)
        self.steps += 1

    def record(self, accelerator, step: int, seconds: float, peak_tflops: float | None) -> dict[str, Any]:
        """The window's record: losses averaged over steps and processes, counts summed over processes
        (a collective: every process calls it)."""
        keys = sorted(self.losses)
        losses = torch.stack([self.losses[k].detach().float() for k in keys]).cpu().double() / self.steps
        values = torch.cat([losses, self.counts])
        world = accelerator.num_processes
        if world > 1:
            reduced = accelerator.reduce(values.to(accelerator.device), reduction="sum").cpu()
            values = torch.cat([reduced[: len(keys)] / world, reduced[len(keys):]])
        record: dict[str, Any] = {"step": step}
        record.update({k: float(v) for k, v in zip(keys, values[: len(keys)])})
        samples, tokens, flops = values[len(keys):].tolist()
        seconds = max(seconds, 1e-9)
        record["samples_per_s"] = samples / seconds
        record["tokens_per_s"] = tokens / seconds
        record["tflops_per_s"] = flops / seconds / 1e12
        record["model_flops_per_step"] = flops / self.steps
        record["seconds_per_step"] = seconds / self.steps
        value = mfu(flops, seconds, peak_tflops, devices=world)
        if value is not None:
            record["mfu"] = value
        return record


def append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the lines of steps <= ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError):
            continue
    with atomic_write(path) as handle:
        handle.write("".join(line + "\n" for line in kept))


def progress_postfix(record: dict) -> dict:
    """The progress bar's short view of a record."""
    out = {"loss": f"{record['loss']:.3f}"}
    if "loss/text" in record:
        out["txt"] = f"{record['loss/text']:.3f}"
        out["img"] = f"{record['loss/image_text']:.3f}"
    for key, value in record.items():
        if key.startswith("temperature/"):
            out["tau_" + key.split("/", 1)[1][:3]] = f"{value:.3f}"
    if "lr/text" in record:
        out["lr"] = f"{record['lr/text']:.1e}"
    out["sps"] = f"{record['samples_per_s']:.0f}"
    out["tok/s"] = f"{record['tokens_per_s']:.0f}"
    if "mfu" in record:
        out["mfu"] = f"{100 * record['mfu']:.1f}%"
    return out
