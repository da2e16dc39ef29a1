"""Memory of a training step as the batch grows (``python -m jina_clip_v2.benchmarks.train_step --memory-scaling``):
plain vs gradient caching with the trainer's chunk sizes in samples, each variant's step peak above the resident
weights and optimizer state (``common.step_peak_bytes``), step times interleaved A B A B, and the batch where the
plain step leaves ``--memory-budget-mb`` while gradient caching goes on. The stage setup is train_stages.py's, as for
train_step."""

from __future__ import annotations

import dataclasses

import torch

from jina_clip_v2.benchmarks import common
from jina_clip_v2.benchmarks.train_stages import VARIANTS, bench_config, chunk_counts, chunk_sizes, make_batches, md_environment, prepare_stage
from jina_clip_v2.training.step import TrainStep


def resident_bytes(step: TrainStep) -> dict[str, int]:
    """What stays allocated between steps: the weights (and temperatures) and AdamW's moments."""
    params = sum(p.numel() * p.element_size() for p in step.trainable())
    state = sum(v.numel() * v.element_size() for s in step.optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    return {"parameters_bytes": params, "optimizer_state_bytes": state}


def memory_stage(model, accelerator, stage_id: int, args, base, config) -> dict:
    """Plain vs gradient caching (chunk sizes in samples, as the trainer) at each of ``--batches`` (text pairs or
    triplets = image-text pairs = B): each variant's step peak (``step_peak_bytes``) from one untimed call, then
    the variants within ``--memory-budget-mb`` timed interleaved (A B A B ...) with round-by-round ratios. A variant
    over the budget is recorded as ``exceeds_budget`` (with its measured peak) and not run at larger batches; a real
    out-of-memory error is ``oom``. One ``TrainStep`` serves every batch: one warmup step per variant at the smallest
    batch creates AdamW's moments, so every measured peak is a step's own."""
    device = accelerator.device
    cfg, stage = prepare_stage(model, stage_id, args, base)
    chunks = chunk_sizes(stage_id, args)
    common.use_image_size(model, stage["image_size"], base["pos_embed"], base["image_size"])
    step = TrainStep(bench_config(cfg, config, chunks["text"], chunks["image"]), model, accelerator)
    budget = None if args.memory_budget_mb is None else int(args.memory_budget_mb * 2**20)
    variants = ["plain", "grad_cache"]

    def step_fn(name, text, image):
        def call():
            step.grad_cache = dataclasses.replace(step.grad_cache, enabled=VARIANTS[name]["grad_cache"])
            step(text, image)
        return call

    text, image = make_batches(config, stage, min(args.batches), min(args.batches), args.seed)
    for name in variants:  # AdamW's moments are created here, outside every measured peak
        step_fn(name, text, image)()
    rows, ratios, over = [], [], {}
    for batch in sorted(args.batches):
        text, image = make_batches(config, stage, batch, batch, args.seed)
        fns, entries = {}, {}
        for name in variants:
            entry = {"batch": batch, "text_batch": batch, "image_batch": batch, "variant": name,
                     "grad_cache_chunks": chunk_counts(step, text, image) if VARIANTS[name]["grad_cache"] else None}
            entries[name] = entry
            if name in over:
                entry.update(status="exceeds_budget", step_peak_bytes=None,
                             error=f"exceeded the budget at batch {over[name]}: not run at larger batches")
                continue
            try:
                entry["step_peak_bytes"] = common.step_peak_bytes(step_fn(name, text, image), device)
            except Exception as err:  # noqa: BLE001 - a step that does not fit is a result
                entry.update(status="oom" if common.is_oom(err) else "error", error=f"{type(err).__name__}: {str(err)[:300]}")
                over[name] = batch
                continue
            finally:
                step.optimizer.zero_grad(set_to_none=True)
            if budget is not None and entry["step_peak_bytes"] > budget:
                entry.update(status="exceeds_budget", error=f"step peak {entry['step_peak_bytes'] / 2**20:.0f} MiB > "
                                                            f"budget {args.memory_budget_mb:g} MiB")
                over[name] = batch
                continue
            fns[name] = step_fn(name, text, image)
        common.free_memory(device, collect=True)
        timings = common.interleaved(fns, device, args.warmup, args.iters, inference=False) if fns else {}
        for name, entry in entries.items():
            if name in timings:
                entry.update(timings[name])
                entry["samples_per_s"] = 2 * batch / entry["median_s"] if entry.get("status") == "ok" else None
            entry["within_budget"] = None if budget is None or entry.get("step_peak_bytes") is None else entry["step_peak_bytes"] <= budget
            rows.append(entry)
        ratios.append({"batch": batch, "grad_cache / plain": common.pair_ratio(timings.get("grad_cache", {}), timings.get("plain", {}))})
    out = {"stage": stage_id, "settings": stage, "grad_cache": chunks, "memory_budget_bytes": budget,
           "resident": resident_bytes(step), "rows": rows, "step_time_ratios": ratios}
    out["summary"] = memory_summary(rows)
    del step, text, image
    accelerator.free_memory()
    common.free_memory(device, collect=True)
    return out


def memory_summary(rows: list[dict]) -> dict:
    """Per variant: the peak at the smallest and largest measured batch and the growth per sample between them;
    the largest batch each variant ran within the budget."""
    out = {}
    for name in ("plain", "grad_cache"):
        measured = [r for r in rows if r["variant"] == name and r.get("step_peak_bytes") is not None]
        ran = [r["batch"] for r in rows if r["variant"] == name and r.get("status") == "ok"]
        entry = {"largest_batch_within_budget": max(ran) if ran else None}
        if len(measured) >= 2:
            lo, hi = measured[0], measured[-1]
            entry.update(smallest_batch=lo["batch"], smallest_peak_bytes=lo["step_peak_bytes"], largest_batch=hi["batch"],
                         largest_peak_bytes=hi["step_peak_bytes"],
                         bytes_per_sample=(hi["step_peak_bytes"] - lo["step_peak_bytes"]) / (hi["batch"] - lo["batch"]))
        out[name] = entry
    return out


def memory_markdown(result: dict) -> str:
    out = ["# Gradient caching: step memory and time at growing batches\n\n", md_environment(result)]
    s, text, vision = result["settings"], result["config"]["text"], result["config"]["vision"]
    out.append(f"- model: text {text['num_hidden_layers']} x {text['hidden_size']}-d (vocabulary {text['vocab_size']}), vision "
               f"{vision['num_hidden_layers']} x {vision['hidden_size']}-d, random weights; "
               f"{result['env']['torch_num_threads']} torch thread(s); memory: {s['memory_measure']}\n")
    for stage in result["memory_scaling"]:
        st, gc, res = stage["settings"], stage["grad_cache"], stage["resident"]
        budget = stage["memory_budget_bytes"]
        out.append(f"\n## Stage {stage['stage']}: {st['seq_len']} tokens, {st['image_size']} px\n\n"
                   f"- gradient caching: text chunks of {gc['text']} samples, image chunks of {gc['image']} "
                   f"(`train.grad_cache`); budget for a step's own peak: "
                   f"{'none' if budget is None else f'{budget / 2**20:g} MiB'}\n"
                   f"- resident between steps (not in the step peak): weights {res['parameters_bytes'] / 2**20:.0f} MiB, "
                   f"AdamW moments {res['optimizer_state_bytes'] / 2**20:.0f} MiB\n"
                   f"- batch B: B text {'triplets' if st['negatives'] else 'pairs'} + B image-text pairs; medians of "
                   f"{s['iters']} interleaved rounds (A B A B); ratio: round by round, median [min, max]\n\n")
        ratio = {r["batch"]: r["grad_cache / plain"] for r in stage["step_time_ratios"]}
        rows = []
        for r in stage["rows"]:
            pr = ratio.get(r["batch"]) if r["variant"] == "grad_cache" else None
            rows.append([r["batch"], r["variant"], r.get("status", "-"),
                         common.fmt(None if r.get("step_peak_bytes") is None else r["step_peak_bytes"] / 2**20, ".1f"),
                         common.fmt(r.get("median_s"), ".3g"), common.fmt(common.spread(r), ".2f"),
                         f"{pr['median']:.2f}x [{pr['min']:.2f}, {pr['max']:.2f}]" if pr else "-"])
        out.append(common.md_table(["batch", "variant", "status", "step peak MiB", "median s", "spread", "grad_cache / plain"], rows))
        summary = stage["summary"]
        for name, entry in summary.items():
            if "bytes_per_sample" in entry:
                out.append(f"\n- {name}: {entry['bytes_per_sample'] / 2**20:.2f} MiB more per sample from batch "
                           f"{entry['smallest_batch']} to {entry['largest_batch']}; largest batch run within the budget: "
                           f"{entry['largest_batch_within_budget']}")
        out.append("\n")
    return "".join(out)
