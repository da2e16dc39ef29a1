"""Shared plumbing of the benchmark scripts: configs and models, devices and dtypes, timing, peak memory,
out-of-memory handling, environment capture, targets, and the JSON / markdown writers."""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository root in a checkout

SCHEMA_VERSION = 1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ----------------------------------------------------------------------------------------------------
# Configs and models
# ----------------------------------------------------------------------------------------------------


def tiny_config_kwargs(image_size: int = 56) -> dict:
    """The tests' tiny geometry (tests/_tiny.py): a few layers and small widths with every structural feature of
    the real model (several heads, RoPE, SwiGLU width not a multiple of the hidden size)."""
    return dict(
        text_config=dict(
            vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        ),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=85,
            image_size=image_size, patch_size=14, patch_dropout=0.0,
        ),
        projection_dim=32,
        matryoshka_dimensions=[8, 16, 32],
    )


def build_config(tiny: bool = False, model_path: str | None = None):
    from jina_clip_v2.modeling import JinaCLIPConfig

    if model_path:
        return JinaCLIPConfig.from_pretrained(model_path)
    return JinaCLIPConfig(**tiny_config_kwargs()) if tiny else JinaCLIPConfig()


def build_model(config, device: torch.device, model_path: str | None = None, seed: int = 0, randomize: bool = False):
    """A JinaCLIPModel in fp32 on ``device``: random weights (initialised directly on the device, which is much
    faster than on the CPU at real size) or the checkpoint at ``model_path``. Speed does not depend on the weights;
    parity does: ``randomize`` perturbs every parameter of random weights (``randomize_weights``)."""
    from jina_clip_v2.modeling import JinaCLIPModel

    torch.manual_seed(seed)
    if model_path:
        return JinaCLIPModel.from_pretrained(model_path, config=config, dtype=torch.float32, load_processor=False).to(device)
    with torch.device(device):
        model = JinaCLIPModel(config)
    if randomize:
        randomize_weights(model, seed)
    return model.to(device)


def randomize_weights(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Fresh init leaves biases at 0, norms at 1 and q/v biases at 0: a wrong wiring (missing bias, swapped
    gates, wrong eps) hides behind them. Add N(0, scale^2) to every vector parameter (biases, norm weights and
    biases, q/v biases, the logit scale) and N(0, (scale / 2.5)^2) to every matrix (0.02 = the init std), so parity
    is measured on weights with nothing trivial left (as tests/_tiny.py's tiny_model)."""
    generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            std = scale if param.ndim <= 1 else scale / 2.5
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
            param.add_(noise.to(device=param.device, dtype=param.dtype))
    return model


def weight_summary(model: torch.nn.Module, source: str) -> dict:
    """What the parity numbers were measured on: the weights' source, and how many vector parameters are still
    trivial (all zero, or all one: fresh-init biases and norms)."""
    vectors = [p for p in model.parameters() if p.ndim <= 1]
    return {
        "source": source,
        "vector_parameters": len(vectors),
        "all_zero_vectors": sum(bool((p == 0).all()) for p in vectors),
        "all_one_vectors": sum(bool((p == 1).all()) for p in vectors),
    }


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def config_summary(config) -> dict:
    t, v = config.text_config, config.vision_config
    return {
        "text": {
            "hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads, "intermediate_size": t.intermediate_size,
            "vocab_size": t.vocab_size, "pad_token_id": t.pad_token_id,
        },
        "vision": {
            "hidden_size": v.hidden_size, "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads, "intermediate_size": v.intermediate_size,
            "image_size": v.image_size, "patch_size": v.patch_size, "patch_dropout": v.patch_dropout,
        },
        "projection_dim": config.projection_dim,
        "matryoshka_dimensions": list(config.matryoshka_dimensions),
    }


def set_attn(model, implementation: str) -> str | None:
    """Switch both towers' attention; returns None on success or the reason it is not available."""
    if implementation == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            return "flash_attn (FlashAttention-2) is not installed or not usable on this device"
    try:
        model.set_attn_implementation(implementation)
    except (ImportError, ValueError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def use_image_size(model, size: int, base_pos: torch.Tensor, base_size: int) -> None:
    """Put the vision tower at ``size`` px, resampling the position table from the same fp32 original every time
    (so every dtype / implementation sees the same weights), then cast the table to the tower's dtype."""
    from torch import nn

    vision = model.config.vision_config
    dtype = model.vision_model.patch_embed.proj.weight.dtype
    requires_grad = model.vision_model.pos_embed.requires_grad
    vision.image_size = base_size
    model.vision_model.pos_embed = nn.Parameter(base_pos.clone(), requires_grad=requires_grad)
    model.set_image_size(size)
    model.vision_model.pos_embed.data = model.vision_model.pos_embed.data.to(dtype)


# ----------------------------------------------------------------------------------------------------
# Devices, dtypes, timing, memory
# ----------------------------------------------------------------------------------------------------


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    return device


@contextmanager
def cpu_threads(threads: int | None, tiny: bool, device: torch.device):
    """torch's CPU thread count for the body, restored afterwards (``main(argv)`` may run inside another process,
    e.g. pytest): explicit, or 1 for tiny models on CPU, where per-op thread synchronisation costs more than the
    microsecond-sized ops themselves (and is catastrophic on a loaded machine)."""
    if threads is None and tiny and device.type == "cpu":
        threads = 1
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def results_path(name: str, tiny: bool) -> str:
    """The default ``--out``: ``benchmarks/results/<name>[_tiny].json``."""
    return str(ROOT / "benchmarks" / "results" / (f"{name}_tiny.json" if tiny else f"{name}.json"))


def run_benchmark(args, run: Callable[[Any, torch.device], dict]) -> dict:
    """``run(args, device)`` on ``args.device`` with ``args.threads`` CPU threads (``cpu_threads``)."""
    device = resolve_device(args.device)
    with cpu_threads(args.threads, tiny=args.tiny, device=device):
        return run(args, device)


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """bf16 by default on CUDA, fp32 on CPU."""
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``iters`` times, each bracketed by a device synchronisation
    (CPU: wall clock). Returns the median (the reported number), min, max and every time in seconds."""
    first = None
    for index in range(warmup):
        start = time.perf_counter()
        fn()
        synchronize(device)
        if index == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(max(1, iters)):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "first_warmup_s": first,
        "warmup": warmup,
        "iters": len(times),
    }


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, rounds: int,
                inference: bool = True) -> dict[str, dict]:
    """Time several variants A B C A B C ...: ``warmup`` untimed calls of each, then ``rounds`` rounds that call each
    variant once, so that a load change on a shared machine hits every variant alike. Per variant: the ``measure``
    fields (median of its rounds, ...) or ``{"status": "oom" | "error"}``; a failing variant drops out of the later
    rounds. Compare two variants with ``pair_ratio`` (round by round), not by dividing their medians."""
    results: dict[str, dict] = {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    firsts: dict[str, float | None] = {name: None for name in fns}
    free_memory(device)
    reset_peak_memory(device)

    def call(name: str) -> float | None:
        try:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            return time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - a failing variant is a result
            results[name] = {"status": "oom" if is_oom(err) else "error", "error": f"{type(err).__name__}: {str(err)[:300]}"}
            return None

    with torch.inference_mode() if inference else contextlib.nullcontext():
        for index in range(warmup):
            for name in fns:
                if name not in results:
                    seconds = call(name)
                    if index == 0:
                        firsts[name] = seconds
        for _ in range(max(1, rounds)):
            for name in fns:
                if name not in results:
                    seconds = call(name)
                    if seconds is not None:
                        times[name].append(seconds)
        if any(r.get("status") for r in results.values()):
            free_memory(device, collect=True)
        for name in fns:
            if name in results:
                continue
            t = times[name]
            results[name] = {"status": "ok", "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                             "times_s": t, "first_warmup_s": firsts[name], "warmup": warmup, "iters": len(t),
                             "interleaved": True, "peak_memory_bytes": None}
            if device.type == "cuda":  # each variant's own peak: one more (untimed) call after a reset
                free_memory(device)
                reset_peak_memory(device)
                fns[name]()
                results[name]["peak_memory_bytes"] = peak_memory(device)
    return results


def pair_ratio(numerator: dict, denominator: dict) -> dict | None:
    """Round-by-round ratios of two ``interleaved`` timings (numerator time / denominator time in the same round):
    median, min, max and all of them; None unless both ran."""
    if numerator.get("status") != "ok" or denominator.get("status") != "ok":
        return None
    ratios = [a / b for a, b in zip(numerator["times_s"], denominator["times_s"]) if b > 0]
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "ratios": ratios}


def spread(timing: dict) -> float | None:
    """(max - min) / median of a timing: how noisy its rounds were."""
    if timing.get("status") != "ok" or not timing.get("median_s"):
        return None
    return (timing["max_s"] - timing["min_s"]) / timing["median_s"]


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int, inference: bool = False) -> dict:
    """``measure`` with the peak-memory counter reset first; an OOM or any error becomes ``{"status": "oom" | "error"}``
    instead of a crash (a configuration that does not fit is a result)."""
    free_memory(device)
    reset_peak_memory(device)
    failure = None
    try:
        with torch.inference_mode() if inference else contextlib.nullcontext():
            timing = measure(fn, device, warmup, iters)
    except Exception as err:  # noqa: BLE001
        failure = {"status": "oom" if is_oom(err) else "error", "error": f"{type(err).__name__}: {str(err)[:300]}"}
    if failure:  # outside the except block, so the traceback and the tensors its frames hold are gone
        free_memory(device, collect=True)
        return failure
    return {"status": "ok", **timing, "peak_memory_bytes": peak_memory(device)}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Bytes: ``torch.cuda.max_memory_allocated`` since the last reset (weights included); None on CPU."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def free_memory(device: torch.device, collect: bool = False) -> None:
    """Return cached CUDA blocks (so each configuration's peak starts from the same floor); ``collect`` also runs
    the garbage collector (after an OOM, whose traceback keeps tensors alive; costly, so not by default)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(err, oom_type) or "out of memory" in str(err).lower()


@contextmanager
def exact_fp32():
    """No TF32 anywhere (matmul and cuDNN convolutions): for the fp32 parity references."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def parity(candidate: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> dict:
    """Max abs diff and min cosine of embeddings against the fp32 SDPA reference. ``ok``: cosine >= 0.999 for
    bf16/fp16 runs, >= 0.99999 for fp32 runs."""
    candidate, reference = candidate.detach().float().cpu(), reference.detach().float().cpu()
    cosine = torch.nn.functional.cosine_similarity(candidate, reference, dim=-1)
    threshold = 0.99999 if dtype == torch.float32 else 0.999
    return {
        "max_abs_diff": float((candidate - reference).abs().max()),
        "reference_max_abs": float(reference.abs().max()),
        "min_cosine": float(cosine.min()),
        "cosine_threshold": threshold,
        "ok": bool(cosine.min() >= threshold),
        "reference": "fp32 sdpa (no TF32)",
    }


# ----------------------------------------------------------------------------------------------------
# Environment and results
# ----------------------------------------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def env_info(device: torch.device) -> dict:
    import transformers

    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "device_type": device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "flash_attn": _package_version("flash_attn") or _package_version("flash-attn"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["cuda_capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_bytes"] = int(props.total_memory)
    return info


def target(
    name: str,
    description: str,
    threshold: float,
    measured: float | None,
    *,
    higher_is_better: bool = True,
    unit: str = "",
    note: str | None = None,
    force_unmeasured: str | None = None,
) -> dict:
    """One row of the "targets" section: pass / fail against the issue's threshold, or unmeasured."""
    if measured is None or (isinstance(measured, float) and not math.isfinite(measured)):
        status = "unmeasured"
    elif force_unmeasured:
        status = "unmeasured"
    else:
        status = "pass" if (measured >= threshold if higher_is_better else measured <= threshold) else "fail"
    notes = [n for n in (force_unmeasured, note) if n]
    return {
        "name": name,
        "description": description,
        "threshold": threshold,
        "comparison": ">=" if higher_is_better else "<=",
        "unit": unit,
        "measured": measured,
        "status": status,
        "note": "; ".join(notes) or None,
    }


def clean_json(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, dtypes/devices/paths -> strings."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return clean_json(value.item())
    return str(value)


def write_results(result: dict, markdown: str, out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (JSON, strict: no NaN) and the markdown next to it (same name, ``.md``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(clean_json(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md = out.with_suffix(".md")
    md.write_text(markdown, encoding="utf-8")
    return out, md


def publish(result: dict, markdown: str, out: str | Path) -> dict:
    """Write the result (``write_results``), print where and the targets table; return the result."""
    json_path, md_path = write_results(result, markdown, out)
    print(f"wrote {json_path} and {md_path}")
    print(md_targets(result["targets"]))
    return result


def result_header(benchmark: str, device: torch.device, settings: dict, config, model, peak, peak_source, **extra) -> dict:
    """The fields every benchmark result starts with (``header`` + environment, settings, config, sizes, peak)."""
    return header({
        "benchmark": benchmark,
        "env": env_info(device),
        "settings": settings,
        "config": config_summary(config),
        "parameters": {"text": count_parameters(model.text_model), "vision": count_parameters(model.vision_model)},
        "peak_tflops": peak,
        "peak_tflops_source": peak_source,
        **extra,
    })


def header(result: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **result,
    }


# ----------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def fmt_bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def md_environment(result: dict) -> str:
    env, settings = result["env"], result["settings"]
    peak, source = result.get("peak_tflops"), result.get("peak_tflops_source")
    peak_text = f"{peak} TFLOP/s ({source})" if peak else "unknown (MFU not reported; pass --peak-tflops)"
    dirty = " (dirty)" if env.get("git_dirty") else ""
    return (
        f"- device: **{env['device_name']}** ({env['device']}), torch {env['torch']}, transformers "
        f"{env['transformers']}, CUDA {env.get('cuda') or '-'}, flash_attn {env.get('flash_attn') or '-'}\n"
        f"- dtype: {settings['dtype']}; peak for MFU: {peak_text}\n"
        f"- config: {'tiny' if settings.get('tiny') else 'real size'}; git {str(env.get('git_commit'))[:12]}{dirty}; "
        f"{result['created']}\n"
    )


def md_targets(targets: Sequence[dict]) -> str:
    rows = []
    for t in targets:
        measured = t["measured"]
        shown = fmt_pct(measured) if t["unit"] == "MFU" else fmt(measured, ".4g")
        threshold = fmt_pct(t["threshold"]) if t["unit"] == "MFU" else fmt(t["threshold"], ".4g")
        rows.append([t["name"], f"{t['comparison']} {threshold} {t['unit'] if t['unit'] != 'MFU' else ''}".strip(),
                     shown, f"**{t['status']}**", t["note"] or ""])
    return md_table(["target", "threshold", "measured", "status", "note"], rows)


def step_peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes one call of ``fn`` allocates above what was allocated when it started: a training step's
    activations, gradients and temporaries, not the resident weights, optimizer moments and inputs.

    CUDA: ``max_memory_allocated - memory_allocated``. CPU: torch's CPU allocator, which (with the profiler's
    ``profile_memory``) reports every tensor allocation and free with its running total of the bytes allocated
    since profiling began; the peak of that total is exact. tracemalloc does not see torch's allocations, and
    the peak RSS lags behind frees (malloc keeps freed pages) and counts the interpreter and libraries."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations, pending = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append(event)
    if not allocations:
        return 0
    allocations.sort(key=lambda event: event.start_time_ns)
    first = allocations[0].extra_fields
    start = first.total_allocated - first.alloc_size  # 0 unless an earlier profiling session left a count
    return int(max(event.extra_fields.total_allocated for event in allocations) - start)
