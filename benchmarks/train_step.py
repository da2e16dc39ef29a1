"""One training step of each jina-clip-v2 stage, timed: the trainer's own step (``training.step.TrainStep``),
plain vs gradient caching, with and without gradient checkpointing.

A step here is exactly what ``training/stage.py`` runs per batch: ``TrainStep`` built from the stage's config
(training's loader reads ``training/configs/stage{N}.yaml``), so the same AdamW parameter groups (per-tower learning
rates, layer-wise decay, weight decay only on matrices), the same gradient clipping, Matryoshka widths, learnable
temperatures, gathered negatives and gradient caching, through an ``Accelerator`` as in training (``bf16`` autocast
on CUDA with fp32 weights and optimizer; fp32 on CPU). FLOPs and MFU come from ``training.flops.step_flops`` and
``training.flops.mfu``, the functions behind the MFU in the training logs.

Per stage and variant: median step time, samples/s (text pairs or triplets + image-text pairs), model-FLOPs MFU,
hardware-FLOPs HFU (with the checkpointing recompute and gradient caching's extra pass), peak memory, and the loss
path (Matryoshka sum, gather) timed on its own as a share of the step.

Stage settings (sequence length, resolution, batch sizes, negatives) and the optimizer come from
``--configs-dir``/stage{N}.yaml when present, else from the shipped ``training/configs/stage{N}.yaml`` (which carry
the paper's Table 6). The paper's batches are global over 8 H100s (16384 per task in stage 1) and only fit through
gradient caching; a step here uses a per-device micro batch (``--text-batch`` / ``--image-batch``, default per stage
below), halved until the plain step fits, and every variant runs at that same batch so their times compare directly.
Texts are random token ids at the full sequence length (every token real), images random pixels.

    python -m jina_clip_v2.benchmarks.train_step                      # real size, CUDA -> benchmarks/results/train_step.json + .md
    python -m jina_clip_v2.benchmarks.train_step --tiny --device cpu  # seconds, for CI
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from jina_clip_v2.benchmarks import common, train_memory
from jina_clip_v2.benchmarks.encode_table import table_config
from jina_clip_v2.benchmarks.train_stages import (  # noqa: F401 - stage_settings: part of this module's interface
    PAPER_GPUS,
    REAL_MICRO,
    TINY_CHUNK_SIZES,
    TINY_MICRO,
    VARIANTS,
    bench_config,
    chunk_counts,
    chunk_settings,
    chunk_sizes,
    make_batches,
    md_environment,
    prepare_stage,
    stage_config,
    stage_settings,
)
from jina_clip_v2.modeling import JinaCLIPConfig
from jina_clip_v2.training.batches import ImageTextBatch, TextBatch
from jina_clip_v2.training.builders import set_gradient_checkpointing
from jina_clip_v2.training.flops import detect_peak_tflops, mfu, step_flops
from jina_clip_v2.training.launch import build_accelerator, reset_accelerate_state
from jina_clip_v2.training.step import TrainStep


# ----------------------------------------------------------------------------------------------------
# Batches and the step
# ----------------------------------------------------------------------------------------------------


def run_variant(step: TrainStep, text: TextBatch, image: ImageTextBatch, name: str, args) -> dict:
    """Time the trainer's step on one batch with the variant's gradient caching and checkpointing."""
    spec = VARIANTS[name]
    set_gradient_checkpointing(step.model, spec["checkpointing"])
    step.grad_cache = dataclasses.replace(step.grad_cache, enabled=spec["grad_cache"])
    last = {}

    def run_step():
        last["out"] = step(text, image)

    run = {"variant": name, **spec,
           "grad_cache_chunk_sizes": chunk_settings(step) if spec["grad_cache"] else None,
           "grad_cache_chunks": chunk_counts(step, text, image) if spec["grad_cache"] else None}
    run.update(common.timed(run_step, step.accelerator.device, args.warmup, args.iters))
    step.optimizer.zero_grad(set_to_none=True)
    set_gradient_checkpointing(step.model, False)
    if run["status"] == "ok":
        loss = float(last["out"].loss)
        run["loss"] = loss
        run["loss_finite"] = math.isfinite(loss)
    return run


def loss_path(step: TrainStep, text: TextBatch, image: ImageTextBatch, args) -> dict:
    """The trainer's loss alone (forward + backward on leaf embeddings of the step's shapes): full (Matryoshka +
    gather), full width only, and without the gather; the differences are the Matryoshka and gather overheads."""
    device = step.accelerator.device
    width = step.model.config.projection_dim
    dtype = torch.bfloat16 if step.accelerator.mixed_precision == "bf16" else torch.float32  # autocast outputs
    generator = torch.Generator().manual_seed(1)
    rows = {name: enc["input_ids"].shape[0] for name, enc in {**text.text_groups(), "caption": image.caption}.items()}
    rows["image"] = image.rows
    embeddings = {name: torch.randn(n, width, generator=generator).to(device, dtype) for name, n in rows.items()}

    def run(dims, gather):
        leaves = {name: e.detach().requires_grad_() for name, e in embeddings.items()}
        step.loss(leaves, text.num_negatives, dims=dims, gather=gather).loss.backward()

    out = {}
    for name, dims, gather in (("full", None, True), ("single_width", [width], True), ("no_gather", None, False)):
        timing = common.timed(lambda d=dims, g=gather: run(d, g), device, args.warmup, args.iters)
        out[name + "_s"] = timing.get("median_s")
    step.optimizer.zero_grad(set_to_none=True)
    if out["full_s"] is not None and out["single_width_s"] is not None:
        out["matryoshka_overhead_s"] = out["full_s"] - out["single_width_s"]
    if out["full_s"] is not None and out["no_gather_s"] is not None:
        out["gather_overhead_s"] = out["full_s"] - out["no_gather_s"]
    world = step.accelerator.num_processes
    out["world_size"] = world
    out["note"] = ("single process: gather_with_grad is the identity, so the gather overhead is ~0 here; on N GPUs "
                   "it adds an all-gather of the embeddings and N-times-larger logits") if world == 1 else None
    return out


def count_step(step: TrainStep, text: TextBatch, image: ImageTextBatch, variant: dict) -> dict:
    """``training.flops.step_flops`` of the trainer's step on these batches (what the training logs count)."""
    loss = step.cfg.loss
    return step_flops(
        step.model.config, text, image, dims=step.dims, world_size=step.accelerator.num_processes,
        unified_views=(2 if loss.ssl_views else 0) if loss.unified_batch else None,
        gradient_checkpointing=variant["checkpointing"], grad_cache=variant["grad_cache"],
    )


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------


def bench_stage(model, accelerator, stage_id: int, args, base, peak, config) -> dict:
    """Every variant of one stage at the largest micro batch that fits (``base``: see ``prepare_stage``)."""
    device = accelerator.device
    cfg, stage = prepare_stage(model, stage_id, args, base)
    text_batch, image_batch = (TINY_MICRO if args.tiny else REAL_MICRO)[stage_id]
    text_batch = args.text_batch or text_batch
    image_batch = args.image_batch or image_batch
    chunks = chunk_sizes(stage_id, args)
    out = {"stage": stage_id, "settings": stage, "grad_cache": chunks,
           "global_batch_per_gpu_at_8_gpus": {"text": stage["text_batch"] // PAPER_GPUS, "image_text": stage["image_text_batch"] // PAPER_GPUS},
           "runs": [], "batch_search": []}
    variants = list(args.variants)
    # The largest batch (halving from the start) at which the first variant fits; every variant then uses it.
    while True:
        accelerator.free_memory()  # drop the previous step's wrappers and optimizer state
        common.use_image_size(model, stage["image_size"], base["pos_embed"], base["image_size"])
        step = TrainStep(bench_config(cfg, config, chunks["text"], chunks["image"]), model, accelerator)
        text, image = make_batches(config, stage, text_batch, image_batch, args.seed)
        first = run_variant(step, text, image, variants[0], args)
        out["batch_search"].append({"text_batch": text_batch, "image_batch": image_batch, "status": first["status"]})
        if first["status"] != "oom" or (text_batch == 1 and image_batch == 1):
            break
        del step, text, image
        common.free_memory(device, collect=True)
        text_batch, image_batch = max(1, text_batch // 2), max(1, image_batch // 2)
    out["matryoshka_dims"] = step.dims
    out["text_batch"], out["image_batch"] = text_batch, image_batch
    plain = count_step(step, text, image, VARIANTS["plain"])
    out["flops_forward"] = {key: plain[key] for key in ("text_forward", "vision_forward", "loss_forward", "towers_forward")}
    samples = text_batch + image_batch
    text_tokens = sum(int(e["attention_mask"].sum()) for e in [*text.text_groups().values(), image.caption])
    runs = [first] + [run_variant(step, text, image, name, args) for name in variants[1:]]
    for run in runs:
        run.update({"text_batch": text_batch, "image_batch": image_batch, "samples_per_step": samples})
        counted = count_step(step, text, image, VARIANTS[run["variant"]])
        run["model_flops"], run["hardware_flops"] = counted["model"], counted["hardware"]
        if run["status"] == "ok":
            seconds = run["median_s"]
            run["samples_per_s"] = samples / seconds
            run["images_per_s"] = image_batch / seconds
            run["text_tokens_per_s"] = text_tokens / seconds
            run["tflops_per_s"] = counted["model"] / seconds / 1e12
            run["mfu"] = mfu(counted["model"], seconds, peak)
            run["hfu"] = mfu(counted["hardware"], seconds, peak)
    out["runs"] = runs
    if not args.skip_loss_path and first["status"] == "ok":
        path = loss_path(step, text, image, args)
        plain_run = next((r for r in runs if r["variant"] == "plain" and r["status"] == "ok"), None)
        if plain_run and path.get("full_s") is not None:
            path["share_of_plain_step"] = path["full_s"] / plain_run["median_s"]
            for key in ("matryoshka_overhead_s", "gather_overhead_s"):
                if path.get(key) is not None:
                    path[key[: -len("_s")] + "_share"] = path[key] / plain_run["median_s"]
        out["loss_path"] = path
    ratios = {}
    by_name = {r["variant"]: r for r in runs if r["status"] == "ok"}
    for cached, base in (("grad_cache", "plain"), ("grad_cache+checkpointing", "checkpointing")):
        if cached in by_name and base in by_name:
            ratios[f"{cached} / {base}"] = by_name[cached]["median_s"] / by_name[base]["median_s"]
    out["step_time_ratios"] = ratios
    del step, text, image
    accelerator.free_memory()
    common.free_memory(device, collect=True)
    return out


# ----------------------------------------------------------------------------------------------------
# Targets, report and command line
# ----------------------------------------------------------------------------------------------------


def compute_targets(result: dict) -> list[dict]:
    tiny = result["settings"]["tiny"]
    device_name = result["env"]["device_name"]
    not_real = "tiny config: the targets are defined for the real model" if tiny else None
    h100 = None if "H100" in device_name or "H200" in device_name else f"measured on {device_name}, target is for an H100"
    stages = {s["stage"]: s for s in result["stages"]}
    targets = []
    s1 = stages.get(1)
    best = None
    if s1:
        ok = [r for r in s1["runs"] if r["status"] == "ok" and r.get("mfu") is not None]
        best = max(ok, key=lambda r: r["mfu"]) if ok else None
    targets.append(common.target(
        "train_stage1_mfu", "stage-1 training step MFU (model FLOPs = 3 x forward, best variant)", 0.40,
        best["mfu"] if best else None, unit="MFU", force_unmeasured=not_real,
        note="; ".join(filter(None, [h100, best and f"variant={best['variant']} batch={best['text_batch']}/{best['image_batch']}"])) or None,
    ))
    for stage_id, stage in sorted(stages.items()):
        ratio = stage["step_time_ratios"].get("grad_cache / plain")
        cached = next((r for r in stage["runs"] if r["variant"] == "grad_cache"), None)
        counts = ", ".join(f"{k} {v}" for k, v in ((cached or {}).get("grad_cache_chunks") or {}).items())
        targets.append(common.target(
            f"grad_cache_overhead_stage{stage_id}", f"stage-{stage_id} gradient-caching step time / plain step time, same batch",
            1.35, ratio, higher_is_better=False, unit="x", force_unmeasured=not_real,
            note=f"chunk sizes: text {stage['grad_cache']['text']} / image {stage['grad_cache']['image']} samples"
                 + (f"; chunks per group: {counts}" if counts else ""),
        ))
    return targets


def markdown(result: dict) -> str:
    out = ["# Training-step benchmark\n\n", md_environment(result), "\n## Targets\n\n", common.md_targets(result["targets"])]
    rows, loss_rows = [], []
    for stage in result["stages"]:
        st = stage["settings"]
        for r in stage["runs"]:
            sizes = r.get("grad_cache_chunk_sizes")
            rows.append([stage["stage"], f"{st['seq_len']} tok / {st['image_size']} px", r["variant"],
                         f"{r['text_batch']}x{2 + st['negatives']} / {r['image_batch']}",
                         f"{sizes['text']} / {sizes['image']}" if sizes else "-", r["status"],
                         common.fmt(r.get("median_s"), ".4g"), common.fmt(r.get("samples_per_s"), ".4g"),
                         common.fmt(r.get("tflops_per_s"), ".3g"), common.fmt_pct(r.get("mfu")), common.fmt_pct(r.get("hfu")),
                         common.fmt_bytes(r.get("peak_memory_bytes"))])
        lp = stage.get("loss_path") or {}
        loss_rows.append([stage["stage"], common.fmt(lp.get("full_s"), ".3g"), common.fmt_pct(lp.get("share_of_plain_step")),
                          common.fmt_pct(lp.get("matryoshka_overhead_share")), common.fmt_pct(lp.get("gather_overhead_share")),
                          ", ".join(f"{k} = {v:.3f}" for k, v in stage["step_time_ratios"].items()) or "-"])
    out += ["\n## Steps\n\nBatch: text rows x texts per row (pairs 2, triplets with 7 negatives 9) / image-text pairs. "
            "Chunk sizes: gradient caching's texts / images per forward with activations (train.grad_cache). "
            "MFU on model FLOPs (3 x forward); HFU adds recompute and gradient caching's extra pass.\n\n",
            common.md_table(["stage", "shape", "variant", "batch", "chunk sizes", "status", "median s", "samples/s", "TFLOP/s", "MFU", "HFU", "peak mem"], rows),
            "\n## Loss path and gradient-caching overhead\n\n",
            common.md_table(["stage", "loss fwd+bwd s", "share of plain step", "Matryoshka share", "gather share", "step-time ratios"], loss_rows)]
    return "".join(out)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="jina-clip-v2 training-step benchmark",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast dtype (weights stay fp32), as training's mixed_precision; auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--model", default=None, help="local folder of a checkpoint (default: random weights)")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="the first one decides the batch (halved until it fits)")
    p.add_argument("--text-batch", type=int, default=None, help="per-device text pairs / triplets (default per stage)")
    p.add_argument("--image-batch", type=int, default=None, help="per-device image-text pairs (default per stage)")
    p.add_argument("--text-chunk-size", type=positive_int, default=None,
                   help="gradient caching: texts per forward with activations, as train.grad_cache.text_chunk_size "
                        "(default: the stage config's; --tiny: %d)" % TINY_CHUNK_SIZES["text"])
    p.add_argument("--image-chunk-size", type=positive_int, default=None,
                   help="gradient caching: images per forward with activations, as train.grad_cache.image_chunk_size "
                        "(default: the stage config's; --tiny: %d)" % TINY_CHUNK_SIZES["image"])
    p.add_argument("--configs-dir", default=None, help="folder of stage{N}.yaml (default: the shipped training/configs)")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="real-width towers (1024-d text and vision) with this many layers each, random weights, instead of "
                        "the full model (a real-width model a CPU can step)")
    p.add_argument("--vocab-size", type=positive_int, default=None,
                   help="with --layers: the text vocabulary (default the real 250002; its dense embedding gradient is a "
                        "constant 1 GiB per step)")
    p.add_argument("--memory-scaling", action="store_true",
                   help="instead of the stage table: plain vs grad_cache step memory and time at each of --batches")
    p.add_argument("--batches", type=positive_int, nargs="+", default=None,
                   help="--memory-scaling: batch sizes B (B text pairs / triplets + B image-text pairs); default 8 16 32 64 "
                        "(tiny: 2 4 8)")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="--memory-scaling: a variant whose step peak (activations, gradients, temporaries above the resident "
                        "weights and AdamW moments) exceeds this many MiB is recorded as exceeds_budget and not timed")
    p.add_argument("--skip-loss-path", action="store_true")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 with --tiny on CPU, where thread sync costs more than tiny ops; else torch's)")
    p.add_argument("--out", default=None, help="JSON path (markdown next to it); default benchmarks/results/train_step[_tiny].json")
    args = p.parse_args(argv)
    if args.layers is not None and (args.tiny or args.model):
        p.error("--layers builds its own model: not with --tiny or --model")
    if args.vocab_size is not None and args.layers is None:
        p.error("--vocab-size needs --layers")
    if args.memory_scaling:  # each call of a variant is a full step: its peak call already warmed the shapes
        defaults = {"warmup": 0, "iters": 3, "batches": [2, 4, 8] if args.tiny else [8, 16, 32, 64],
                    "out": common.results_path("train_step_memory", args.tiny)}
    else:
        defaults = {"warmup": 1 if args.tiny else 2, "iters": 2 if args.tiny else 5, "out": common.results_path("train_step", args.tiny)}
    for key, value in defaults.items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m jina_clip_v2.benchmarks.train_step``: writes ``--out`` (JSON) and its ``.md``, returns the result."""
    return common.run_benchmark(parse_args(argv), run)


def bench_model_config(args: argparse.Namespace):
    """The benchmark model's config: tiny, a checkpoint's, real-width towers ``--layers`` deep, or the full model."""
    if args.layers is not None:

        vocab = args.vocab_size or JinaCLIPConfig().text_config.vocab_size
        return table_config(args.layers, args.layers, JinaCLIPConfig().vision_config.image_size, vocab)
    return common.build_config(args.tiny, args.model)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    config = bench_model_config(args)
    model = common.build_model(config, device, args.model, seed=args.seed).train()
    dtype = common.resolve_dtype(args.dtype, device)
    peak, peak_source = detect_peak_tflops(device, dtype, args.peak_tflops)
    common.set_attn(model, "sdpa")
    base = {
        "pos_embed": model.vision_model.pos_embed.detach().float().clone(),
        "image_size": config.vision_config.image_size,
        "patch_dropout": config.vision_config.patch_dropout,
    }
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    cfg, _ = stage_config(args.stages[0], Path(args.configs_dir) if args.configs_dir else None)
    accelerator = build_accelerator(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision=precision, log_with=[])),
        Path(args.out).parent, cpu=device.type == "cpu",
    )
    settings = dict(vars(args))
    settings["dtype"] = common.dtype_name(dtype)
    settings["precision"] = f"Accelerator(mixed_precision={precision!r}): fp32 weights + optimizer, autocast {common.dtype_name(dtype)}"
    settings["optimizer"] = "training.optim.build_optimizer from each stage config's optim section (training.step.TrainStep)"
    if args.memory_scaling:
        settings["memory_measure"] = (
            "torch.cuda.max_memory_allocated - memory_allocated before the step" if device.type == "cuda" else
            "torch's CPU allocator via torch.profiler(profile_memory=True): peak of its running total of bytes "
            "allocated during the step")
        result = common.result_header("train_step_memory", device, settings, config, model, peak, peak_source, memory_scaling=[])
        try:
            for stage_id in args.stages:
                result["memory_scaling"].append(train_memory.memory_stage(model, accelerator, stage_id, args, base, config))
        finally:
            reset_accelerate_state()
        result["targets"] = []  # issue 16 sets no target for this table; it is read as measured
        return common.publish(result, train_memory.memory_markdown(result), args.out)
    result = common.result_header("train_step", device, settings, config, model, peak, peak_source, stages=[])
    try:
        for stage_id in args.stages:
            result["stages"].append(bench_stage(model, accelerator, stage_id, args, base, peak, config))
    finally:
        reset_accelerate_state()
    result["targets"] = compute_targets(result)
    return common.publish(result, markdown(result), args.out)


if __name__ == "__main__":
    main()
