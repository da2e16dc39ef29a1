"""Encoding throughput of jina-clip-v2: images at 224/384/512 px and texts of realistic mixed lengths.

For every configuration: median wall time over ``--iters`` interleaved rounds after ``--warmup`` (device synchronised;
the variants of one configuration run A B C A B C ... and are compared round by round), items/s, real tokens/s, peak
memory (``torch.cuda.max_memory_allocated``, per variant) and MFU (analytic FLOPs from ``benchmarks.flops`` over the
detected GPU peak). Baselines run in the same process on the same (randomised) weights, like with like:

- vision: timm's ``Eva`` (the independent EVA02 oracle) at the same size and dtype: its fused SDPA attention against
  ours with SDPA, its written-out attention (``--timm-modes naive``) against ours eager, compiled against compiled
  (``--compile``); the pairs' speedups are in ``image.pairs``;
- text: transformers' own ``JinaEmbeddingsV3Model`` with its default attention (SDPA), padded batches in arrival
  order, against ours padded on each backend, the batches and path ``encode_text`` itself uses, and the model's
  unpadded path on each backend (FlashAttention varlen, length-bucket SDPA);
- end to end (``end_to_end``): ``encode_text`` / ``encode_image`` (tokenize / decode, preprocess, copy, forward) beside
  the forward passes they make (``benchmarks/encode_table.py``, needs the real tokenizer on disk).

Parity: every fast path's embeddings are compared with an fp32 SDPA reference (TF32 off) on a fixed batch.

    python -m jina_clip_v2.benchmarks.encode                       # real size, CUDA, bf16 -> benchmarks/results/encode.json + .md
    python -m jina_clip_v2.benchmarks.encode --tiny --device cpu   # seconds, for CI
    python -m jina_clip_v2.benchmarks.encode --table               # issue 16's defaults-vs-best table (encode_table.py)
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from jina_clip_v2.benchmarks import common, encode_table
from jina_clip_v2.benchmarks.encode_table import md_sections, sample_lengths, stock_features, stock_text_tower
from jina_clip_v2.benchmarks.timm_oracle import import_timm as import_timm_oracle
from jina_clip_v2.modeling.encoding_jina_clip import default_image_workers, length_buckets, text_batch_plan
from jina_clip_v2.training.flops import detect_peak_tflops, mfu, text_forward_flops, vision_forward_flops

# A transformers attention function registered by this benchmark. "flash" in the name is transformers' (and the
# model's) convention for flash-style backends: sequence boundaries come as cu_seq_lens kwargs, no mask is built.
VARLEN_ATTENTION = "flash_varlen_bench"
REAL_DEFAULTS = dict(
    image_sizes=[224, 384, 512], batch_sizes=[1, 8, 32, 64, 128, 256], text_batch_sizes=[1, 8, 32, 128, 512],
    max_length=512, warmup=3, iters=10, text_workload=64, e2e_texts=256, e2e_images=64,
)
TINY_DEFAULTS = dict(
    image_sizes=[28, 56], batch_sizes=[1, 4], text_batch_sizes=[1, 4], max_length=64, warmup=1, iters=2,
    text_workload=4, e2e_texts=16, e2e_images=4,
)


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


def token_rows(lengths: Sequence[int], vocab_size: int, seed: int) -> list[torch.Tensor]:
    """One id row per length: <s> (0), random ids >= 4 (never <pad>=1 or the other specials), </s> (2)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        middle = torch.randint(4, vocab_size, (max(0, length - 2),), generator=generator)
        rows.append(torch.cat([torch.tensor([0]), middle, torch.tensor([2])])[:length])
    return rows


def pad_rows(rows: Sequence[torch.Tensor], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def pack_rows(rows: Sequence[torch.Tensor], device: torch.device) -> dict[str, torch.Tensor | int]:
    """Concatenate the rows into one (1, total) sequence with per-row positions and cumulative lengths."""
    lengths = torch.tensor([len(r) for r in rows])
    cu = torch.zeros(len(rows) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    return {
        "input_ids": torch.cat(list(rows))[None].to(device),
        "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()])[None].to(device),
        "cu_seq_lens": cu.to(device),
        "max_length": int(lengths.max()),
        "segments": torch.repeat_interleave(torch.arange(len(rows)), lengths).to(device),
        "lengths": lengths.to(device),
    }


# ----------------------------------------------------------------------------------------------------
# Unpadded text paths
# ----------------------------------------------------------------------------------------------------


def varlen_backend(device: torch.device) -> str:
    """Kernel the benchmark-side packed path runs on: torch's built-in varlen FlashAttention (torch >= 2.10, CUDA),
    else the flash_attn package, else a per-sequence SDPA loop (correctness reference only, never a speed claim)."""
    if device.type == "cuda":
        try:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401

            return "torch.nn.attention.varlen"
        except ImportError:
            pass
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            return "flash_attn.flash_attn_varlen_func"
    return "reference_loop"


def _varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function for packed sequences: (1, H, T, d) in, (1, T, H, d) out; the
    sequence boundaries come in ``cu_seq_lens_q`` / ``max_length_q`` (forwarded by the text tower's kwargs)."""
    cu, max_len = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (T, H, d), as the kernels expect
    backend = varlen_backend(q.device)
    if backend == "torch.nn.attention.varlen":
        from torch.nn.attention.varlen import varlen_attn

        if "scale" in inspect.signature(varlen_attn).parameters:
            out = varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scaling)
        elif scaling is None or math.isclose(scaling, q.shape[-1] ** -0.5):
            out = varlen_attn(q, k, v, cu, cu, max_len, max_len)  # older torch: always 1/sqrt(head_dim), ours too
        else:
            raise RuntimeError("this torch's varlen_attn takes no scale, and the model's scaling is not 1/sqrt(d)")
    elif backend == "flash_attn.flash_attn_varlen_func":
        from flash_attn import flash_attn_varlen_func

        out = flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, softmax_scale=scaling, causal=False)
    else:
        bounds = cu.tolist()
        out = torch.cat([
            F.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), scale=scaling
            ).transpose(0, 1)
            for a, b in zip(bounds[:-1], bounds[1:])
        ])
    return out[None], None


def packed_text_features(model, packed: dict) -> torch.Tensor:
    """Benchmark-side unpadded text path: the stock text tower over one packed row (no pad token is ever computed),
    then the release's masked-mean pooling per sequence (fp32 sum, as ``get_text_features``)."""
    outputs = model.text_model(
        input_ids=packed["input_ids"], position_ids=packed["position_ids"],
        cu_seq_lens_q=packed["cu_seq_lens"], cu_seq_lens_k=packed["cu_seq_lens"],
        max_length_q=packed["max_length"], max_length_k=packed["max_length"],
    )
    hidden = outputs.last_hidden_state[0]
    sums = torch.zeros(len(packed["lengths"]), hidden.shape[-1], device=hidden.device, dtype=torch.float32)
    sums.index_add_(0, packed["segments"], hidden.float())
    return (sums / packed["lengths"][:, None].float()).to(hidden.dtype)


def model_unpadded_path(model) -> tuple[str, Callable] | None:
    """The model's own unpadded text API, if it has one (another engineer adds it): a keyword of
    ``get_text_features`` or a dedicated method. Returns (description, fn(input_ids, attention_mask) -> embeddings)."""
    params = inspect.signature(model.get_text_features).parameters
    for keyword in ("unpadded", "packed", "varlen", "remove_padding"):
        if keyword in params:
            return (
                f"get_text_features({keyword}=True)",
                lambda ids, mask, kw=keyword: model.get_text_features(ids, attention_mask=mask, **{kw: True}).pooler_output,
            )
    for name in ("get_text_features_unpadded", "get_text_features_packed", "get_text_features_varlen"):
        if callable(getattr(model, name, None)):
            return f"{name}()", lambda ids, mask, n=name: getattr(model, n)(ids, attention_mask=mask).pooler_output
    return None


# ----------------------------------------------------------------------------------------------------
# timm baseline
# ----------------------------------------------------------------------------------------------------


def import_timm():
    """timm, imported lazily (see benchmarks/timm_oracle.py for the CPU-only setup). Raises on failure."""
    return import_timm_oracle()


def build_timm_eva(timm, model, size: int, device: torch.device, dtype: torch.dtype):
    """timm's Eva with our vision weights (DESIGN section 6), at ``size`` px, in ``dtype``; strict load."""
    from timm.models.eva import Eva, checkpoint_filter_fn

    v = model.config.vision_config
    with torch.device(device):
        eva = Eva(
            img_size=size, patch_size=v.patch_size, num_classes=0, global_pool="token", embed_dim=v.hidden_size,
            depth=v.num_hidden_layers, num_heads=v.num_attention_heads, qkv_bias=True, qkv_fused=False,
            mlp_ratio=v.intermediate_size / v.hidden_size + 1e-4, swiglu_mlp=True, scale_mlp=True,
            scale_attn_inner=True, use_rot_pos_emb=True, rope_type="cat", rope_rotate_half=False,
            ref_feat_shape=(v.rope_grid_size, v.rope_grid_size), dynamic_img_size=False,
            norm_layer=partial(timm.layers.LayerNorm, eps=v.layer_norm_eps), init_values=None, use_post_norm=False,
        )
    state = {"visual." + k: t.float() for k, t in model.vision_model.state_dict().items()}
    eva.load_state_dict(checkpoint_filter_fn(state, eva), strict=True)
    if eva.blocks[0].mlp.fc1_g.out_features != v.intermediate_size:
        raise ValueError("timm Eva SwiGLU width does not match the config")
    return eva.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# Benchmark loops
# ----------------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args, device: torch.device, dtype: torch.dtype, peak: float | None):
        self.args, self.device, self.dtype, self.peak = args, device, dtype, peak

    def interleaved(self, fns: dict[str, Callable[[], object]]) -> dict[str, dict]:
        return common.interleaved(fns, self.device, self.args.warmup, self.args.iters)


# Like with like: each of our attention paths is compared with timm's on the same backend, compiled with compiled.
IMAGE_PAIRS = (("sdpa", "timm-fused"), ("eager", "timm-naive"))


def bench_images(model, runner: Runner, refs: dict, base_pos, base_size, attns, result: dict) -> None:
    """Per size and batch, every implementation timed interleaved (ours on each attention path, timm Eva on each
    attention mode, their compiled variants), and the speedup of each equal-backend pair round by round."""
    args, dtype, device = runner.args, runner.dtype, runner.device
    section = result["image"] = {"runs": [], "baseline": None, "parity": [], "pairs": []}
    timm_state: dict = {"modes": args.timm_modes, "runs": [], "parity": []}
    timm = None
    if args.no_baselines or args.no_timm:
        timm_state = {"skipped": "--no-baselines" if args.no_baselines else "--no-timm"}
    else:
        try:
            timm = import_timm()
            timm_state["impl"] = f"timm {timm.__version__} Eva (eager PyTorch{', and compiled' if args.compile else ''})"
        except Exception as err:  # noqa: BLE001 - any import failure means: no baseline, say why
            timm_state = {"skipped": f"timm not importable: {type(err).__name__}: {err}"}
    vision_config = model.config.vision_config
    for size in args.image_sizes:
        common.use_image_size(model, size, base_pos, base_size)
        flops = vision_forward_flops(vision_config, size)["total"]
        parity_pixels = refs["pixels"][size].to(device).to(dtype)
        # name -> (embed(pixels), info); every entry sets its own attention before running (an attribute write).
        variants: dict[str, tuple[Callable, dict]] = {}
        ours_out: dict[str, torch.Tensor] = {}
        for attn in attns:
            reason = common.set_attn(model, attn)
            if reason:
                section["runs"].append({"impl": "jina_clip", "attn": attn, "image_size": size, "status": "unavailable", "error": reason})
                continue

            def ours(px, attn=attn, fn=model.get_image_features):
                vision_config._attn_implementation = attn
                return fn(px).pooler_output

            variants[f"jina_clip {attn}"] = (ours, {"impl": "jina_clip", "attn": attn, "compiled": False})
            if args.compile and attn in (attns[0], "sdpa", "eager"):
                compiled = torch.compile(model.get_image_features)
                variants[f"jina_clip {attn} compiled"] = (partial(ours, attn=attn, fn=compiled),
                                                          {"impl": "jina_clip", "attn": attn, "compiled": True})
        common.set_attn(model, "sdpa")
        eva = None
        if timm is not None:
            try:
                eva = build_timm_eva(timm, model, size, device, dtype)
            except Exception as err:  # noqa: BLE001
                timm_state["runs"].append({"impl": "timm", "image_size": size, "status": "error", "error": f"{type(err).__name__}: {err}"})
            if eva is not None:
                compiled_eva = torch.compile(eva) if args.compile else None
                for mode in args.timm_modes:
                    def theirs(px, mode=mode, fn=eva, base=eva):
                        for block in base.blocks:
                            block.attn.fused_attn = mode == "fused"
                        return fn(px)

                    variants[f"timm {mode}"] = (theirs, {"impl": "timm", "attn": f"timm-{mode}", "compiled": False})
                    if compiled_eva is not None:
                        variants[f"timm {mode} compiled"] = (partial(theirs, mode=mode, fn=compiled_eva),
                                                             {"impl": "timm", "attn": f"timm-{mode}", "compiled": True})
        # Parity of every variant on the fixed batch (timm also against ours with SDPA: "equal outputs").
        for name, (embed, info) in variants.items():
            with torch.inference_mode():
                out = embed(parity_pixels)
            entry = {"path": name if info["impl"] == "jina_clip" else f"timm Eva ({info['attn'][5:]} attention)"
                     + (" compiled" if info["compiled"] else ""),
                     "image_size": size, "dtype": common.dtype_name(dtype), **common.parity(out, refs["image"][size], dtype)}
            if info["impl"] == "jina_clip" and not info["compiled"]:
                ours_out[info["attn"]] = out
            if info["impl"] == "timm":
                if "sdpa" in ours_out:
                    entry["max_abs_diff_vs_jina_clip_sdpa"] = float((out.float() - ours_out["sdpa"].float()).abs().max())
                timm_state["parity"].append(entry)
            else:
                section["parity"].append(entry)
        active = dict(variants)
        for batch in args.batch_sizes:
            if not active:
                break
            pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)  # made on the device
            timings = runner.interleaved({name: partial(embed, pixels) for name, (embed, _) in active.items()})
            for name, timing in timings.items():
                run = {**active[name][1], "image_size": size, "batch_size": batch, "flops_per_image": flops, **timing}
                if run["status"] == "ok":
                    seconds = run["median_s"]
                    run["images_per_s"] = batch / seconds
                    run["tflops_per_s"] = flops * batch / seconds / 1e12
                    run["mfu"] = mfu(flops * batch, seconds, runner.peak)
                (section["runs"] if run["impl"] == "jina_clip" else timm_state["runs"]).append(run)
            for ours_attn, timm_attn in IMAGE_PAIRS:
                for compiled in (False, True):
                    suffix = " compiled" if compiled else ""
                    a, b = f"jina_clip {ours_attn}{suffix}", f"timm {timm_attn[5:]}{suffix}"
                    if a in timings and b in timings:
                        section["pairs"].append({
                            "image_size": size, "batch_size": batch, "attention": ours_attn, "jina_clip": a, "timm": b,
                            "compiled": compiled, "speedup": common.pair_ratio(timings[b], timings[a]),
                        })
            for name, timing in timings.items():
                if timing["status"] == "oom":
                    active.pop(name)
            del pixels
        del eva
        common.free_memory(device)
    section["baseline"] = timm_state


def text_workload(args, batch: int, vocab_size: int, seed: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """``ceil(text_workload / batch)`` batches of ``batch`` texts with lognormal lengths, in arrival order."""
    count = max(1, math.ceil(args.text_workload / batch)) * batch
    lengths = sample_lengths(count, median=args.length_median, sigma=args.length_sigma, low=args.min_length,
                             high=args.max_length, seed=seed)
    rows = token_rows(lengths, vocab_size, seed)
    return [lengths[i : i + batch] for i in range(0, count, batch)], rows


def bucket_lengths(lengths: Sequence[int]) -> list[int]:
    """The length each text of an unpadded batch is computed at under eager / SDPA: its length bucket's longest
    (``encoding_jina_clip.length_buckets``; every bucket runs as one padded batch of the text tower)."""
    spans = [0] * len(lengths)
    for bucket in length_buckets(list(lengths)):
        for index in bucket:
            spans[index] = lengths[bucket[0]]
    return spans


def _executed_flops(text_config, groups: list[list[int]], padded: bool, buckets: bool) -> tuple[int, int]:
    """(computed tokens, executed FLOPs) of batches with these lengths: padded to each batch's longest, padded to each
    length bucket's longest (``buckets``: eager / SDPA unpadded), or packed (FlashAttention: real tokens only)."""
    if padded:
        groups = [[max(g)] * len(g) for g in groups]
    elif buckets:
        groups = [bucket_lengths(g) for g in groups]
    return sum(sum(g) for g in groups), sum(text_forward_flops(text_config, g)["total"] for g in groups)


def bench_text(model, runner: Runner, refs: dict, attns, result: dict) -> None:
    """Per batch size, every text path timed interleaved over the same workload: the baseline (transformers' own
    JinaEmbeddingsV3Model with its default attention, padded batches in arrival order), ours padded on each backend,
    the batches and path encode_text itself uses (``encoding_jina_clip.text_batch_plan``), and the model's unpadded path on each
    backend; speedups vs the baseline round by round."""
    args, dtype, device = runner.args, runner.dtype, runner.device
    text_config = model.config.text_config
    pad = text_config.pad_token_id
    section = result["text"] = {
        "length_distribution": {"kind": "lognormal", "median": args.length_median, "sigma": args.length_sigma,
                                "clip": [args.min_length, args.max_length], "seed": args.seed},
        "runs": [], "parity": [], "unpadded": {},
    }
    own = model_unpadded_path(model)
    backend = varlen_backend(device)
    padded_kwargs = {"unpadded": False} if own is not None and own[0].startswith("get_text_features(unpadded") else {}
    stock = None if args.no_baselines else stock_text_tower(model)
    paths: list[dict] = []
    if stock is not None:
        paths.append({"path": "stock_padded", "attn": stock.config._attn_implementation, "layout": "padded", "baseline": True,
                      "impl": f"transformers {type(stock).__name__} (default attention: {stock.config._attn_implementation})",
                      "fn": lambda ids, mask: stock_features(stock, ids, mask)})
    for attn in attns:
        paths.append({"path": f"padded_{attn}", "attn": attn, "layout": "padded"})
    if args.compile:
        paths.append({"path": f"padded_{attns[0]}_compiled", "attn": attns[0], "layout": "padded", "compiled": True,
                      "fn": torch.compile(model.get_text_features, dynamic=True)})
    paths.append({"path": "encode_text_batching", "attn": "sdpa" if "sdpa" in attns else attns[0], "layout": "plan",
                  "note": "the batches (token budget, by token count) and path (padded or unpadded) encode_text uses"})
    if own is not None:
        # The model's own unpadded path on every attention backend it can use: FlashAttention-2 (flash_attn),
        # torch's built-in varlen FlashAttention through the registered flash-style function, and eager/SDPA
        # (length-bucket attention: no (T, T) mask).
        section["unpadded"]["model"] = {"available": True, "api": own[0]}
        if "flash_attention_2" in attns:
            paths.append({"path": "unpadded_model_flash_attention_2", "attn": "flash_attention_2", "layout": "model_unpadded",
                          "backend": "flash_attn", "fn": own[1]})
        paths.append({"path": "unpadded_model_varlen", "attn": VARLEN_ATTENTION, "layout": "model_unpadded",
                      "backend": backend, "fn": own[1]})
        paths.append({"path": "unpadded_model_sdpa", "attn": "sdpa", "layout": "model_unpadded",
                      "backend": "sdpa length buckets", "fn": own[1]})
    else:
        section["unpadded"]["model"] = {
            "available": False,
            "reason": "JinaCLIPModel has no unpadded text API (no unpadded/packed/varlen keyword on "
                      "get_text_features, no get_text_features_unpadded)",
        }
        paths.append({"path": "packed_varlen", "attn": VARLEN_ATTENTION, "layout": "packed", "backend": backend})
    section["unpadded"]["varlen_kernel"] = {
        "attn_implementation": VARLEN_ATTENTION, "backend": backend, "speed_claim": backend != "reference_loop",
        "what": "a transformers attention function registered by the benchmark: torch.nn.attention.varlen.varlen_attn "
                "(CUDA, torch >= 2.10) or flash_attn_varlen_func on the packed tokens; on CPU a per-text SDPA loop "
                "(correctness only). Used by the model's unpadded path, or, when the model has none, by a "
                "benchmark-side packing of the stock text tower (path packed_varlen).",
    }

    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, _varlen_attention)
    usable = []
    for spec in paths:
        info = {k: v for k, v in spec.items() if k != "fn"}
        if spec["path"] == "stock_padded":
            usable.append(spec)
            continue
        reason = None if spec["attn"] == VARLEN_ATTENTION else common.set_attn(model, spec["attn"])
        common.set_attn(model, "sdpa")
        if reason:
            section["runs"].append({**info, "status": "unavailable", "error": reason})
        else:
            usable.append(spec)

    def embed(spec: dict, rows: Sequence[torch.Tensor], prepared: dict, unpadded: bool | None = None) -> torch.Tensor:
        # The text tower's attention is an attribute of its config (set per call: variants run interleaved).
        # VARLEN_ATTENTION is set directly: set_attn_implementation would look for a package behind any "flash" name.
        if spec["path"] != "stock_padded":
            text_config._attn_implementation = spec["attn"]
        if spec["layout"] == "packed":
            return packed_text_features(model, prepared)
        if spec["layout"] == "model_unpadded":
            return spec["fn"](prepared["input_ids"], prepared["attention_mask"])
        if spec["layout"] == "plan":
            return model.get_text_features(prepared["input_ids"], attention_mask=prepared["attention_mask"], unpadded=unpadded).pooler_output
        if "fn" in spec and spec["path"] == "stock_padded":
            return spec["fn"](prepared["input_ids"], prepared["attention_mask"])
        features = spec.get("fn") or model.get_text_features  # the compiled variant brings its own
        # unpadded=False: the model would otherwise pick its unpadded path by itself under FlashAttention.
        return features(prepared["input_ids"], attention_mask=prepared["attention_mask"], **padded_kwargs).pooler_output

    def plan(spec: dict, rows: Sequence[torch.Tensor], batch: int) -> tuple[list[list[int]], bool | None]:
        if spec["layout"] == "plan":
            return text_batch_plan(model, [len(r) for r in rows], batch, None, device)
        return [list(range(i, min(i + batch, len(rows)))) for i in range(0, len(rows), batch)], None

    def prepare(spec: dict, rows: Sequence[torch.Tensor]):
        return pack_rows(rows, device) if spec["layout"] == "packed" else pad_rows(rows, pad, device)

    # Parity on the fixed mixed-length batch (for encode_text's batching: its batches, outputs put back in order).
    parity_rows = refs["text_rows"]
    for spec in list(usable):
        try:
            with torch.inference_mode():
                batches, unpadded = plan(spec, parity_rows, len(parity_rows))
                outs = [embed(spec, [parity_rows[i] for i in b], prepare(spec, [parity_rows[i] for i in b]), unpadded) for b in batches]
                out = torch.empty_like(torch.cat(outs))
                out[torch.tensor([i for b in batches for i in b], device=out.device)] = torch.cat(outs)
            section["parity"].append({"path": spec["path"], "dtype": common.dtype_name(dtype), **common.parity(out, refs["text"], dtype)})
        except Exception as err:  # noqa: BLE001
            section["runs"].append({**{k: v for k, v in spec.items() if k != "fn"}, "status": "error",
                                    "error": f"{type(err).__name__}: {str(err)[:300]}"})
            usable.remove(spec)
    text_config._attn_implementation = "sdpa"

    for batch in args.text_batch_sizes:
        _, rows = text_workload(args, batch, text_config.vocab_size, args.seed + batch)
        real_tokens = sum(len(r) for r in rows)
        flops_real = text_forward_flops(text_config, [len(r) for r in rows])["total"]
        fns, infos = {}, {}
        for spec in usable:
            batches, unpadded = plan(spec, rows, batch)
            prepared = [prepare(spec, [rows[i] for i in b]) for b in batches]
            groups = [[len(rows[i]) for i in b] for b in batches]
            is_padded = spec["layout"] == "padded" or (spec["layout"] == "plan" and not unpadded)
            buckets = spec["layout"] in ("model_unpadded", "plan") and "flash" not in spec["attn"]
            computed, flops_exec = _executed_flops(text_config, groups, is_padded, buckets)
            infos[spec["path"]] = {**{k: v for k, v in spec.items() if k != "fn"}, "compiled": bool(spec.get("compiled")),
                                   "batch_size": batch, "num_batches": len(batches), "sequences": len(rows),
                                   "real_tokens": real_tokens, "computed_tokens": computed,
                                   "padding_fraction": 1 - real_tokens / computed, "flops_real": flops_real,
                                   "flops_executed": flops_exec, **({"unpadded": unpadded} if unpadded is not None else {})}
            fns[spec["path"]] = partial(lambda s, ps, u: [embed(s, None, p, u) for p in ps], spec, prepared, unpadded)
        timings = runner.interleaved(fns)
        text_config._attn_implementation = "sdpa"
        for name, timing in timings.items():
            run = {**infos[name], **timing}
            if run["status"] == "ok":
                seconds = run["median_s"]
                run["tokens_per_s"] = real_tokens / seconds
                run["sequences_per_s"] = len(rows) / seconds
                run["tflops_per_s"] = flops_real / seconds / 1e12
                run["mfu"] = mfu(flops_real, seconds, runner.peak)
                if "stock_padded" in timings and name != "stock_padded":
                    run["speedup_vs_baseline"] = common.pair_ratio(timings["stock_padded"], timing)
            section["runs"].append(run)
        if all(t["status"] == "oom" for t in timings.values()):
            break
    common.set_attn(model, "sdpa")


# ----------------------------------------------------------------------------------------------------
# Targets, markdown, main
# ----------------------------------------------------------------------------------------------------


def _best(runs: list[dict], key: str, **match) -> dict | None:
    ok = [r for r in runs if r.get("status") == "ok" and r.get(key) is not None and all(r.get(k) == v for k, v in match.items())]
    return max(ok, key=lambda r: r[key]) if ok else None


def compute_targets(result: dict) -> list[dict]:
    tiny = result["settings"]["tiny"]
    device_name = result["env"]["device_name"]
    not_real = "tiny config: the targets are defined for the real model" if tiny else None
    h100 = None if "H100" in device_name or "H200" in device_name else f"measured on {device_name}, target is for an H100"
    targets = []
    image = result.get("image") or {"runs": [], "baseline": {}}
    best512 = _best(image["runs"], "mfu", image_size=512, impl="jina_clip")
    no512 = None if 512 in result["settings"]["image_sizes"] and not result["settings"]["skip_images"] else "512 px not benchmarked"
    targets.append(common.target(
        "image_mfu_512px", "image encoding MFU at 512 px (best batch / attention)", 0.60,
        best512["mfu"] if best512 else None, unit="MFU", force_unmeasured=not_real,
        note="; ".join(filter(None, [no512, h100, best512 and f"attn={best512['attn']} batch={best512['batch_size']} compiled={best512['compiled']}"])) or None,
    ))
    # Like with like: our SDPA path vs timm's default fused (SDPA) attention, neither compiled, round by round at the
    # batch where ours is fastest (compiled vs compiled and eager vs eager are in image.pairs).
    ours = _best(image["runs"], "images_per_s", image_size=512, impl="jina_clip", attn="sdpa", compiled=False)
    baseline = image.get("baseline") or {}
    pair = next((p for p in image.get("pairs", []) if ours and p["image_size"] == 512 and p["attention"] == "sdpa"
                 and not p["compiled"] and p["batch_size"] == ours["batch_size"] and p["speedup"]), None)
    equal = [p["ok"] for p in baseline.get("parity", []) if p["image_size"] == 512]
    note = None if equal and all(equal) else "timm outputs do not match" if equal else None
    if baseline.get("skipped"):
        note = baseline["skipped"]
    pair_note = pair and f"jina_clip sdpa vs timm fused (SDPA), not compiled, batch {pair['batch_size']}, median of round-by-round ratios"
    note = "; ".join(filter(None, [no512, note, pair_note])) or None
    targets.append(common.target(
        "image_speedup_vs_timm_512px", "images/s at 512 px vs timm Eva on the same attention backend (SDPA), same weights",
        1.5, pair["speedup"]["median"] if pair and (not equal or all(equal)) else None,
        unit="x", force_unmeasured=not_real, note=note,
    ))
    text = result.get("text") or {"runs": [], "unpadded": {}}
    unpadded = [r for r in text["runs"] if r.get("layout") in ("model_unpadded", "packed") and r.get("backend") != "reference_loop"]
    best_text = _best(unpadded, "tokens_per_s")
    packed_note = best_text and f"path={best_text['path']} backend={best_text.get('backend')} batch={best_text['batch_size']}"
    if best_text and best_text["layout"] == "packed":
        packed_note += " (benchmark-side packing: the model has no unpadded API)"
    if not unpadded:
        packed_note = "no unpadded path with a real varlen kernel on this device"
    targets.append(common.target(
        "text_unpadded_tokens_per_s", "real (non-pad) tokens/s of unpadded text encoding, best batch", 750_000.0,
        best_text["tokens_per_s"] if best_text else None, unit="tokens/s", force_unmeasured=not_real,
        note="; ".join(filter(None, [packed_note, h100 if best_text else None])) or None,
    ))
    return targets


def _fmt_ratio(ratio: dict | None) -> str:
    return "-" if not ratio else f"{ratio['median']:.3g}x ({ratio['min']:.3g}-{ratio['max']:.3g})"


def markdown(result: dict) -> str:
    out = ["# Encoding benchmark\n\n", common.md_environment(result), "\n## Targets\n\n", common.md_targets(result["targets"])]
    image = result.get("image")
    if image:
        rows = []
        for r in image["runs"] + (image.get("baseline") or {}).get("runs", []):
            rows.append([r.get("image_size"), r.get("batch_size", "-"), r["impl"], r.get("attn"),
                         common.fmt(r.get("compiled")), r["status"], common.fmt(r.get("median_s"), ".4g"),
                         common.fmt(r.get("images_per_s"), ".4g"), common.fmt(r.get("tflops_per_s"), ".3g"),
                         common.fmt_pct(r.get("mfu")), common.fmt_bytes(r.get("peak_memory_bytes"))])
        out += ["\n## Image encoding\n\n", common.md_table(
            ["px", "batch", "impl", "attention", "compiled", "status", "median s", "images/s", "TFLOP/s", "MFU", "peak mem"], rows)]
        if (image.get("baseline") or {}).get("skipped"):
            out.append(f"\ntimm baseline skipped: {image['baseline']['skipped']}\n")
        if image.get("pairs"):
            out += ["\n### Same backend: ours vs timm, round by round\n\n", common.md_table(
                ["px", "batch", "attention", "compiled", "ours", "timm", "speedup (median, min-max)"],
                [[p["image_size"], p["batch_size"], p["attention"], common.fmt(p["compiled"]), p["jina_clip"], p["timm"],
                  _fmt_ratio(p["speedup"])] for p in image["pairs"]])]
    text = result.get("text")
    if text:
        rows = [[r["path"], r.get("backend") or r.get("attn"), r.get("batch_size", "-"), r["status"], common.fmt(r.get("real_tokens")),
                 common.fmt_pct(r.get("padding_fraction")), common.fmt(r.get("median_s"), ".4g"),
                 common.fmt(r.get("tokens_per_s"), ".4g"), common.fmt(r.get("sequences_per_s"), ".4g"),
                 _fmt_ratio(r.get("speedup_vs_baseline")), common.fmt_pct(r.get("mfu")), common.fmt_bytes(r.get("peak_memory_bytes"))]
                for r in text["runs"]]
        d = text["length_distribution"]
        out += [f"\n## Text encoding\n\nLengths: lognormal (median {d['median']}, sigma {d['sigma']}) clipped to "
                f"{d['clip']}; tokens/s counts real tokens only; MFU on real-token FLOPs.\n\n",
                common.md_table(["path", "attention", "batch", "status", "real tokens", "padding", "median s", "tokens/s", "seq/s",
                                 "speedup vs stock", "MFU", "peak mem"], rows)]
        model_api = text["unpadded"]["model"]
        out.append(f"\nModel unpadded API: {model_api.get('api') if model_api['available'] else 'not available - ' + model_api['reason']}. "
                   f"Varlen kernel ({text['unpadded']['varlen_kernel']['attn_implementation']}): "
                   f"{text['unpadded']['varlen_kernel']['backend']}.\n")
    parity_rows = []
    for section in ("image", "text"):
        s = result.get(section) or {}
        for p in s.get("parity", []) + (s.get("baseline") or {}).get("parity", []):
            parity_rows.append([section, p["path"], p.get("image_size", "-"), p["dtype"], common.fmt(p["max_abs_diff"], ".3g"),
                                common.fmt(p["min_cosine"], ".6f"), "ok" if p["ok"] else "**FAIL**"])
    out += ["\n## Parity vs fp32 SDPA\n\n", common.md_table(["tower", "path", "px", "dtype", "max abs diff", "min cosine", "ok"], parity_rows)]
    e2e = result.get("end_to_end")
    if e2e is not None:
        out.append("\n# End to end (encode_text / encode_image beside their forward passes)\n")
        out.append(f"\nskipped: {e2e['skipped']}\n" if "skipped" in e2e else md_sections(e2e).replace("\n## ", "\n## End to end: "))
    return "".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="jina-clip-v2 encoding benchmark (images and texts)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--tiny", action="store_true", help="tiny random config (CI)")
    p.add_argument("--model", default=None, help="local folder of a converted checkpoint (default: random weights)")
    p.add_argument("--image-sizes", type=int, nargs="+", default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="image batch sizes (growth stops at an OOM)")
    p.add_argument("--text-batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--attn", nargs="+", default=None, choices=["sdpa", "flash_attention_2", "eager"],
                   help="attention paths to benchmark (default: sdpa, plus flash_attention_2 when installed)")
    p.add_argument("--compile", action="store_true", help="add torch.compile'd variants (first attention path)")
    p.add_argument("--timm-modes", nargs="+", default=["fused"], choices=["fused", "naive"],
                   help="timm Eva attention: fused = timm's default F.scaled_dot_product_attention, naive = written out")
    p.add_argument("--no-baselines", action="store_true", help="skip timm and the stock transformers text tower")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end encode_text / encode_image rows")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for the end-to-end rows (default: the fetched real one)")
    p.add_argument("--e2e-texts", type=int, default=None, help="texts of the end-to-end rows")
    p.add_argument("--e2e-images", type=int, default=None, help="1024x768 image files of the end-to-end rows")
    p.add_argument("--no-timm", action="store_true", help="skip only the timm baseline (recorded as skipped)")
    p.add_argument("--skip-images", action="store_true")
    p.add_argument("--skip-text", action="store_true")
    p.add_argument("--max-length", type=int, default=None, help="longest text in tokens (clip of the length distribution)")
    p.add_argument("--min-length", type=int, default=8)
    p.add_argument("--length-median", type=float, default=64.0)
    p.add_argument("--length-sigma", type=float, default=0.8)
    p.add_argument("--text-workload", type=int, default=None, help="at least this many texts per timed iteration")
    p.add_argument("--parity-images", type=int, default=4)
    p.add_argument("--parity-texts", type=int, default=8)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU peak used for MFU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 with --tiny on CPU, where thread sync costs more than tiny ops; else torch's)")
    p.add_argument("--out", default=None, help="JSON path (markdown next to it); default benchmarks/results/encode[_tiny].json")
    args = p.parse_args(argv)
    defaults = TINY_DEFAULTS if args.tiny else REAL_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or common.results_path("encode", args.tiny)
    return args


def end_to_end(model, args, device: torch.device, base_pos, base_size) -> dict:
    """encode_text / encode_image end to end beside the forward passes they make (``encode_table``'s sections, on this
    model, at the last image size): needs the real tokenizer on disk (``jina-clip fetch-assets``; not fetched here)."""
    try:
        tokenizer = encode_table.load_tokenizer(args.tokenizer, fetch=False)
    except Exception as err:  # noqa: BLE001 - no tokenizer: the rows are skipped, and say why
        return {"skipped": f"no tokenizer: {type(err).__name__}: {str(err)[:200]}"}
    if len(tokenizer) > model.config.text_config.vocab_size:
        return {"skipped": f"the tokenizer's {len(tokenizer)} ids do not fit the model's vocabulary ({model.config.text_config.vocab_size})"}
    size = args.image_sizes[-1]
    common.use_image_size(model, size, base_pos, base_size)
    common.set_attn(model, "sdpa")
    model.processor = encode_table.build_processor(tokenizer, size)
    out: dict = {"image_size": size}
    if not args.skip_text:
        lengths = sample_lengths(args.e2e_texts, median=args.length_median, sigma=args.length_sigma, low=args.min_length,
                                 high=args.max_length, seed=args.seed)
        texts = encode_table.make_texts(tokenizer, lengths, args.seed)
        out["text"] = encode_table.text_section(model, tokenizer, texts, device, args.warmup, args.iters)
    if not args.skip_images:
        with tempfile.TemporaryDirectory() as folder:
            paths = encode_table.make_images(Path(folder), args.e2e_images, seed=args.seed)
            out["image"] = encode_table.image_section(model, paths, device, args.warmup, args.iters,
                                                      sorted({1, default_image_workers()}))
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, run, write ``--out`` (JSON) and its ``.md``; returns the result dict. ``--table`` runs
    ``encode_table`` (issue 16's defaults-vs-best table) with the remaining arguments instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--table" in argv:
        return encode_table.main([a for a in argv if a != "--table"])
    return common.run_benchmark(parse_args(argv), run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    dtype = common.resolve_dtype(args.dtype, device)
    peak, peak_source = detect_peak_tflops(device, dtype, args.peak_tflops)
    if args.attn is None:
        from transformers.utils import is_flash_attn_2_available

        args.attn = ["sdpa"] + (["flash_attention_2"] if device.type == "cuda" and is_flash_attn_2_available() else [])
    config = common.build_config(args.tiny, args.model)
    # Random weights are randomised further (no zero bias, no identity norm): parity on fresh init proves little.
    model = common.build_model(config, device, args.model, seed=args.seed, randomize=not args.model).eval().requires_grad_(False)
    base_size = config.vision_config.image_size
    base_pos = model.vision_model.pos_embed.detach().float().clone()
    settings = {k: v for k, v in vars(args).items()}
    settings["dtype"] = common.dtype_name(dtype)
    result = common.result_header(
        "encode", device, settings, config, model, peak, peak_source,
        weights=common.weight_summary(model, args.model or "random, randomised (common.randomize_weights)"),
        flops_per_image={str(s): vision_forward_flops(config.vision_config, s) for s in args.image_sizes},
    )

    # fp32 SDPA references (TF32 off), before the model is cast.
    common.set_attn(model, "sdpa")
    refs: dict = {"pixels": {}, "image": {}}
    parity_lengths = sample_lengths(args.parity_texts, median=args.length_median, sigma=args.length_sigma,
                                    low=args.min_length, high=args.max_length, seed=args.seed + 10_000)
    refs["text_rows"] = token_rows(parity_lengths, config.text_config.vocab_size, args.seed + 10_000)
    with torch.inference_mode(), common.exact_fp32():
        if not args.skip_images:
            for size in args.image_sizes:
                common.use_image_size(model, size, base_pos, base_size)
                pixels = torch.randn(args.parity_images, 3, size, size, generator=torch.Generator().manual_seed(size))
                refs["pixels"][size] = pixels
                refs["image"][size] = model.get_image_features(pixels.to(device)).pooler_output.float().cpu()
        if not args.skip_text:
            batch = pad_rows(refs["text_rows"], config.text_config.pad_token_id, device)
            refs["text"] = model.get_text_features(batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output.float().cpu()
    model.to(dtype)

    runner = Runner(args, device, dtype, peak)
    if not args.skip_images:
        bench_images(model, runner, refs, base_pos, base_size, args.attn, result)
    if not args.skip_text:
        bench_text(model, runner, refs, args.attn, result)
    if not args.no_e2e:
        result["end_to_end"] = end_to_end(model, args, device, base_pos, base_size)
    result["targets"] = compute_targets(result)
    return common.publish(result, markdown(result), args.out)


if __name__ == "__main__":
    main()
