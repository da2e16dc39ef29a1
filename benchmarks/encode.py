"""Encoding throughput of jina-clip-v2: images at 224/384/512 px and texts of realistic mixed lengths.

For every configuration: median wall time over ``--iters`` runs after ``--warmup`` (device synchronised), items/s,
real tokens/s, peak memory (``torch.cuda.max_memory_allocated``, reset per configuration) and MFU (analytic FLOPs
from ``benchmarks.flops`` over the detected GPU peak). Baselines run in the same process on the same weights:

- vision: timm's ``Eva`` (the independent EVA02 oracle) at the same size and dtype, eager PyTorch with timm's
  default fused SDPA attention (``--timm-modes naive`` adds timm with its attention written out);
- text: the padded eager path (``attn_implementation="eager"``, each batch padded to its longest sequence),
  against padded SDPA / FlashAttention-2, length-sorted padded SDPA (what ``encode_text`` does), the model's own
  unpadded path when it has one, and a benchmark-side packed (varlen) path.

Parity: every fast path's embeddings are compared with an fp32 SDPA reference (TF32 off) on a fixed batch.

    python -m jina_clip_v2.benchmarks.encode                       # real size, CUDA, bf16 -> benchmarks/results/encode.json + .md
    python -m jina_clip_v2.benchmarks.encode --tiny --device cpu   # seconds, for CI
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jina_clip_v2.benchmarks import common
from jina_clip_v2.training.flops import detect_peak_tflops, mfu, text_forward_flops, vision_forward_flops

# A transformers attention function registered by this benchmark. "flash" in the name is transformers' (and the
# model's) convention for flash-style backends: sequence boundaries come as cu_seq_lens kwargs, no mask is built.
VARLEN_ATTENTION = "flash_varlen_bench"
REAL_DEFAULTS = dict(
    image_sizes=[224, 384, 512], batch_sizes=[1, 8, 32, 64, 128, 256], text_batch_sizes=[1, 8, 32, 128, 512],
    max_length=512, warmup=3, iters=10, text_workload=64,
)
TINY_DEFAULTS = dict(
    image_sizes=[28, 56], batch_sizes=[1, 4], text_batch_sizes=[1, 4], max_length=64, warmup=1, iters=2,
    text_workload=4,
)


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


def sample_lengths(n: int, *, median: float, sigma: float, low: int, high: int, seed: int) -> list[int]:
    """Token counts (special tokens included) of ``n`` texts: a fixed-seed lognormal clipped to [low, high]."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=math.log(median), sigma=sigma, size=n)
    return [int(x) for x in np.clip(np.rint(raw), low, high)]


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
        import inspect

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
    import inspect

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
    from .timm_oracle import import_timm as _import_timm

    return _import_timm()


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

    def timed(self, fn: Callable[[], object]) -> dict:
        return common.timed(fn, self.device, self.args.warmup, self.args.iters, inference=True)


def image_runs(runner: Runner, name: str, embed: Callable[[torch.Tensor], torch.Tensor], size: int, flops_per_image: int,
               extra: dict) -> list[dict]:
    """One implementation at one size over the batch sizes (stops growing the batch after an OOM)."""
    runs = []
    for batch in runner.args.batch_sizes:
        pixels = torch.randn(batch, 3, size, size, device=runner.device, dtype=runner.dtype)  # made on the device
        run = {"impl": name, **extra, "image_size": size, "batch_size": batch, "flops_per_image": flops_per_image}
        run.update(runner.timed(lambda: embed(pixels)))
        if run["status"] == "ok":
            seconds = run["median_s"]
            run["images_per_s"] = batch / seconds
            run["tflops_per_s"] = flops_per_image * batch / seconds / 1e12
            run["mfu"] = mfu(flops_per_image * batch, seconds, runner.peak)
        runs.append(run)
        del pixels
        if run["status"] == "oom":
            break
    return runs


def bench_images(model, runner: Runner, refs: dict, base_pos, base_size, attns, result: dict) -> None:
    args, dtype = runner.args, runner.dtype
    section = result["image"] = {"runs": [], "baseline": None, "parity": []}
    timm_state: dict = {"modes": args.timm_modes, "runs": [], "parity": []}
    timm = None
    if args.no_baselines or args.no_timm:
        timm_state = {"skipped": "--no-baselines" if args.no_baselines else "--no-timm"}
    else:
        try:
            timm = import_timm()
            timm_state["impl"] = f"timm {timm.__version__} Eva (eager PyTorch, not compiled)"
        except Exception as err:  # noqa: BLE001 - any import failure means: no baseline, say why
            timm_state = {"skipped": f"timm not importable: {type(err).__name__}: {err}"}
    for size in args.image_sizes:
        common.use_image_size(model, size, base_pos, base_size)
        flops = vision_forward_flops(model.config.vision_config, size)["total"]
        parity_pixels = refs["pixels"][size].to(runner.device)
        ours_at_size: dict[str, torch.Tensor] = {}
        for attn in attns:
            reason = common.set_attn(model, attn)
            if reason:
                section["runs"].append({"impl": "jina_clip", "attn": attn, "image_size": size, "status": "unavailable", "error": reason})
                continue
            with torch.inference_mode():
                out = model.get_image_features(parity_pixels.to(dtype)).pooler_output
            ours_at_size[attn] = out
            section["parity"].append({"path": f"jina_clip {attn}", "image_size": size, "dtype": common.dtype_name(dtype),
                                      **common.parity(out, refs["image"][size], dtype)})
            embed = lambda px: model.get_image_features(px).pooler_output  # noqa: E731
            section["runs"] += image_runs(runner, "jina_clip", embed, size, flops, {"attn": attn, "compiled": False})
            if args.compile and attn == attns[0]:
                compiled = torch.compile(model.get_image_features)
                with torch.inference_mode():
                    out = compiled(parity_pixels.to(dtype)).pooler_output
                section["parity"].append({"path": f"jina_clip {attn} compiled", "image_size": size,
                                          "dtype": common.dtype_name(dtype), **common.parity(out, refs["image"][size], dtype)})
                section["runs"] += image_runs(runner, "jina_clip", lambda px: compiled(px).pooler_output, size, flops,
                                              {"attn": attn, "compiled": True})
        common.set_attn(model, "sdpa")
        if timm is not None:
            try:
                eva = build_timm_eva(timm, model, size, runner.device, dtype)
            except Exception as err:  # noqa: BLE001
                timm_state["runs"].append({"impl": "timm", "image_size": size, "status": "error", "error": f"{type(err).__name__}: {err}"})
                continue
            for mode in args.timm_modes:
                for block in eva.blocks:
                    block.attn.fused_attn = mode == "fused"
                with torch.inference_mode():
                    out = eva(parity_pixels.to(dtype))
                entry = {"path": f"timm Eva ({mode} attention)", "image_size": size, "dtype": common.dtype_name(dtype),
                         **common.parity(out, refs["image"][size], dtype)}
                if "sdpa" in ours_at_size:  # equal outputs: timm vs ours in the same dtype
                    entry["max_abs_diff_vs_jina_clip_sdpa"] = float((out.float() - ours_at_size["sdpa"].float()).abs().max())
                timm_state["parity"].append(entry)
                timm_state["runs"] += image_runs(runner, "timm", lambda px: eva(px), size, flops,
                                                 {"attn": f"timm-{mode}", "compiled": False})
            del eva
            common.free_memory(runner.device)
    section["baseline"] = timm_state


def text_workload(args, batch: int, vocab_size: int, seed: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """``ceil(text_workload / batch)`` batches of ``batch`` texts with lognormal lengths, in arrival order."""
    count = max(1, math.ceil(args.text_workload / batch)) * batch
    lengths = sample_lengths(count, median=args.length_median, sigma=args.length_sigma, low=args.min_length,
                             high=args.max_length, seed=seed)
    rows = token_rows(lengths, vocab_size, seed)
    return [lengths[i : i + batch] for i in range(0, count, batch)], rows


def bench_text(model, runner: Runner, refs: dict, attns, result: dict) -> None:
    args, dtype, device = runner.args, runner.dtype, runner.device
    text_config = model.config.text_config
    pad = text_config.pad_token_id
    section = result["text"] = {
        "length_distribution": {"kind": "lognormal", "median": args.length_median, "sigma": args.length_sigma,
                                "clip": [args.min_length, args.max_length], "seed": args.seed},
        "runs": [], "parity": [], "unpadded": {},
    }
    parity_rows = refs["text_rows"]

    own = model_unpadded_path(model)
    backend = varlen_backend(device)
    padded_kwargs = {"unpadded": False} if own is not None and own[0].startswith("get_text_features(unpadded") else {}
    paths: list[dict] = []
    if not args.no_baselines:
        paths.append({"path": "padded_eager", "attn": "eager", "layout": "padded", "baseline": True})
    for attn in attns:
        paths.append({"path": f"padded_{attn}", "attn": attn, "layout": "padded"})
    if args.compile:
        paths.append({"path": f"padded_{attns[0]}_compiled", "attn": attns[0], "layout": "padded", "compiled": True,
                      "fn": torch.compile(model.get_text_features, dynamic=True)})
    paths.append({"path": "padded_sdpa_length_sorted", "attn": "sdpa", "layout": "sorted",
                  "note": "the whole workload sorted by length before batching, as encode_text does"})
    if own is not None:
        # The model's own unpadded path on every attention backend it can use: FlashAttention-2 (flash_attn),
        # torch's built-in varlen FlashAttention through the registered flash-style function, and SDPA with a
        # (T, T) block-diagonal mask (quadratic in the batch's total tokens: correct, slow for big batches).
        section["unpadded"]["model"] = {"available": True, "api": own[0]}
        if "flash_attention_2" in attns:
            paths.append({"path": "unpadded_model_flash_attention_2", "attn": "flash_attention_2", "layout": "model_unpadded",
                          "backend": "flash_attn", "fn": own[1]})
        paths.append({"path": "unpadded_model_varlen", "attn": VARLEN_ATTENTION, "layout": "model_unpadded",
                      "backend": backend, "fn": own[1]})
        paths.append({"path": "unpadded_model_sdpa_block_mask", "attn": "sdpa", "layout": "model_unpadded",
                      "backend": "sdpa block-diagonal mask", "fn": own[1]})
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

    for spec in paths:
        layout = spec["layout"]
        if spec["attn"] == VARLEN_ATTENTION:
            reason = None
            common.set_attn(model, "sdpa")
            # Text tower only, set on its config directly: set_attn_implementation would look for a FlashAttention
            # package or hub kernel behind any name containing "flash".
            model.config.text_config._attn_implementation = VARLEN_ATTENTION
        else:
            reason = common.set_attn(model, spec["attn"])
        info = {k: v for k, v in spec.items() if k != "fn"}
        if reason:
            section["runs"].append({**info, "status": "unavailable", "error": reason})
            continue

        def run_layout(rows: Sequence[torch.Tensor], prepared) -> torch.Tensor:
            if layout == "packed":
                return packed_text_features(model, prepared)
            if layout == "model_unpadded":
                return spec["fn"](prepared["input_ids"], prepared["attention_mask"])
            features = spec.get("fn") or model.get_text_features  # the compiled variant brings its own
            # unpadded=False: the model would otherwise pick its unpadded path by itself under FlashAttention.
            return features(prepared["input_ids"], attention_mask=prepared["attention_mask"], **padded_kwargs).pooler_output

        def prepare(rows):
            return pack_rows(rows, device) if layout == "packed" else pad_rows(rows, pad, device)

        # Parity on the fixed mixed-length batch, in its order.
        try:
            with torch.inference_mode():
                out = run_layout(parity_rows, prepare(parity_rows))
            section["parity"].append({"path": spec["path"], "dtype": common.dtype_name(dtype),
                                      **common.parity(out, refs["text"], dtype)})
        except Exception as err:  # noqa: BLE001
            section["runs"].append({**info, "status": "error", "error": f"{type(err).__name__}: {str(err)[:300]}"})
            continue

        for batch in args.text_batch_sizes:
            groups, rows = text_workload(args, batch, text_config.vocab_size, args.seed + batch)
            if layout == "sorted":
                order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
                rows = [rows[i] for i in order]
                groups = [[len(r) for r in rows[i : i + batch]] for i in range(0, len(rows), batch)]
            batches = [prepare(rows[i : i + batch]) for i in range(0, len(rows), batch)]
            real_tokens = sum(len(r) for r in rows)
            padded_tokens = sum(len(g) * max(g) for g in groups) if layout in ("padded", "sorted") else real_tokens
            flops_real = text_forward_flops(text_config, [len(r) for r in rows])["total"]
            flops_exec = (sum(text_forward_flops(text_config, [max(g)] * len(g))["total"] for g in groups)
                          if padded_tokens != real_tokens else flops_real)
            run = {**info, "batch_size": batch, "num_batches": len(batches), "sequences": len(rows),
                   "real_tokens": real_tokens, "computed_tokens": padded_tokens,
                   "padding_fraction": 1 - real_tokens / padded_tokens, "flops_real": flops_real,
                   "flops_executed": flops_exec, "compiled": bool(spec.get("compiled"))}

            def work():
                for prepared in batches:
                    run_layout(None, prepared)

            run.update(runner.timed(work))
            if run["status"] == "ok":
                seconds = run["median_s"]
                run["tokens_per_s"] = real_tokens / seconds
                run["sequences_per_s"] = len(rows) / seconds
                run["tflops_per_s"] = flops_real / seconds / 1e12
                run["mfu"] = mfu(flops_real, seconds, runner.peak)
            section["runs"].append(run)
            del batches
            if run["status"] == "oom":
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
    ours = _best(image["runs"], "images_per_s", image_size=512, impl="jina_clip")
    baseline = image.get("baseline") or {}
    theirs = _best(baseline.get("runs", []), "images_per_s", image_size=512, attn="timm-fused")
    equal = [p["ok"] for p in baseline.get("parity", []) if p["image_size"] == 512]
    note = None if equal and all(equal) else "timm outputs do not match" if equal else None
    if baseline.get("skipped"):
        note = baseline["skipped"]
    note = "; ".join(filter(None, [no512, note])) or None
    targets.append(common.target(
        "image_speedup_vs_timm_512px", "images/s at 512 px vs timm Eva (eager, default fused attention), same weights",
        1.5, ours["images_per_s"] / theirs["images_per_s"] if ours and theirs and (not equal or all(equal)) else None,
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
    text = result.get("text")
    if text:
        rows = [[r["path"], r.get("backend") or r.get("attn"), r.get("batch_size", "-"), r["status"], common.fmt(r.get("real_tokens")),
                 common.fmt_pct(r.get("padding_fraction")), common.fmt(r.get("median_s"), ".4g"),
                 common.fmt(r.get("tokens_per_s"), ".4g"), common.fmt(r.get("sequences_per_s"), ".4g"),
                 common.fmt_pct(r.get("mfu")), common.fmt_bytes(r.get("peak_memory_bytes"))] for r in text["runs"]]
        d = text["length_distribution"]
        out += [f"\n## Text encoding\n\nLengths: lognormal (median {d['median']}, sigma {d['sigma']}) clipped to "
                f"{d['clip']}; tokens/s counts real tokens only; MFU on real-token FLOPs.\n\n",
                common.md_table(["path", "attention", "batch", "status", "real tokens", "padding", "median s", "tokens/s", "seq/s", "MFU", "peak mem"], rows)]
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
    p.add_argument("--no-baselines", action="store_true", help="skip timm and the padded eager text path")
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


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, run, write ``--out`` (JSON) and its ``.md``; returns the result dict."""
    return common.run_benchmark(parse_args(argv), run)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    dtype = common.resolve_dtype(args.dtype, device)
    peak, peak_source = detect_peak_tflops(device, dtype, args.peak_tflops)
    if args.attn is None:
        from transformers.utils import is_flash_attn_2_available

        args.attn = ["sdpa"] + (["flash_attention_2"] if device.type == "cuda" and is_flash_attn_2_available() else [])
    config = common.build_config(args.tiny, args.model)
    model = common.build_model(config, device, args.model, seed=args.seed).eval().requires_grad_(False)
    base_size = config.vision_config.image_size
    base_pos = model.vision_model.pos_embed.detach().float().clone()
    settings = {k: v for k, v in vars(args).items()}
    settings["dtype"] = common.dtype_name(dtype)
    result = common.result_header(
        "encode", device, settings, config, model, peak, peak_source,
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
    result["targets"] = compute_targets(result)
    return common.publish(result, markdown(result), args.out)


if __name__ == "__main__":
    main()
