"""Is every entry point as fast as the best one? Issue 25's table, on CPU (successor of ``encode_table.py``'s text
and image rows for the other entry points).

    python -m jina_clip_v2.benchmarks.entry_points [--sections text image bf16 memory] [--rounds 3]
        [--out benchmarks/results/entry_points.json]

Method (every section): one torch thread (``torch.set_num_threads(1)``, ONNX Runtime ``intra_op_num_threads=1``),
**process CPU time** (``time.process_time``: on a shared machine it moves far less with other processes' load than
wall time; the image pool's worker threads are counted too), the variants of a section interleaved round by round
(A B C A B C ...), every ratio taken pair by pair within a round (median and min-max over the rounds). Random
weights (``common.randomize_weights``; the Hub is unreachable here). The image section also records wall time: the
decode pool's threads overlap with the model there, which CPU time cannot show: speed does not depend on them; the bf16 cosines
would be more meaningful on real ones.

- ``text``: 256 long-tailed demo captions (``compare_modeling.long_tailed_texts``: 77 languages, 1-300 words) and the
  test tokenizer (XLM-R layout, 1000 pieces), a real-width (1024) text tower ``--text-layers`` deep, exported as
  ``jina-clip export`` / ``jina-clip onnx`` write it. Rows, each against ``encode_text``: the Sentence-Transformers
  module (``SentenceTransformer(folder, trust_remote_code=True).encode``), the ONNX helper (``JinaCLIPOnnx``) fp32
  and int8; the largest cosine distance of each row's embeddings to ``encode_text``'s.
- ``image``: ````--images`` photo-like 1024x768 files (half PNG, half JPEG) at 512 px, a real-width vision tower
  ``--vision-layers`` deep: ``encode_image(paths)`` (default batch) and at explicit batch sizes, against a user loop
  (PIL open + processor + ``get_image_features``, one image at a time), and transformers' image-feature-extraction
  pipeline (``JinaCLIPImageFeatureExtractionPipeline``, its default batch).
- ``bf16``: the full-depth towers (24 text layers, 24 vision layers at 512 px, real width): ``encode_text`` /
  ``encode_image`` with bf16 weights against fp32, speed ratio and the smallest cosine between the two.
- ``memory``: the resident peak (``VmHWM``) of a fresh process running ``encode_text`` on 10k and on 100k short
  texts (tiny model, test tokenizer), this checkout's ``modeling/`` and, with ``--baseline``, another copy's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jina_clip_v2.benchmarks import common
from jina_clip_v2.benchmarks.compare_modeling import _test_helpers, long_tailed_texts

IMAGE_BATCHES = (1, 2, 8)


def wide_config(text_layers: int, vision_layers: int, image_size: int):
    from jina_clip_v2.modeling import JinaCLIPConfig

    return JinaCLIPConfig(
        text_config=dict(vocab_size=1000, num_hidden_layers=text_layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        vision_config=dict(num_hidden_layers=vision_layers, image_size=image_size),
    )


def wide_model(text_layers: int, vision_layers: int, image_size: int, processor):
    from jina_clip_v2.modeling import JinaCLIPModel

    model = common.randomize_weights(JinaCLIPModel(wide_config(text_layers, vision_layers, image_size)).eval(), seed=0)
    model.processor = processor
    return model


def interleaved_cpu(fns: dict, rounds: int, warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Process CPU seconds and wall seconds of each variant per round, A B C A B C ..., after ``warmup`` untimed
    rounds."""
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    for index in range(warmup + rounds):
        for name, fn in fns.items():
            start, start_wall = time.process_time(), time.perf_counter()
            fn()
            seconds, wall_seconds = time.process_time() - start, time.perf_counter() - start_wall
            print(f"  round {index - warmup + 1 if index >= warmup else 'warmup'} {name}: {seconds:.2f} CPU s, {wall_seconds:.2f} s",
                  file=sys.stderr, flush=True)
            if index >= warmup:
                cpu[name].append(seconds)
                wall[name].append(wall_seconds)
    return cpu, wall


def ratio(numerator: list[float], denominator: list[float]) -> dict:
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "ratios": ratios}


def min_cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def rows(times: dict[str, list[float]], reference: str, extra: dict[str, dict] | None = None,
         wall: dict[str, list[float]] | None = None) -> list[dict]:
    out = []
    for name, t in times.items():
        row = {"name": name, "median_cpu_s": statistics.median(t), "times_cpu_s": t,
               f"over_{reference}": ratio(t, times[reference]) if name != reference else None}
        if wall is not None:
            row |= {"median_wall_s": statistics.median(wall[name]), "times_wall_s": wall[name],
                    f"over_{reference}_wall": ratio(wall[name], wall[reference]) if name != reference else None}
        out.append(row | (extra or {}).get(name, {}))
    return out


def sgemm_gflops(rows: int, width: int, inner: int, repeats: int = 5) -> dict[str, float]:
    """One thread's fp32 matrix multiply rate, (rows x width) @ (width x inner), best of ``repeats``: ONNX Runtime's
    (a one-MatMul graph, the kernel its text graph runs) and torch's."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((rows, width), dtype=np.float32), rng.standard_normal((width, inner), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "sgemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", inner])], [numpy_helper.from_array(w, "w")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                   options, providers=["CPUExecutionProvider"])
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    flops = 2 * rows * width * inner
    cpu = torch.device("cpu")
    fns = {"onnxruntime": lambda: session.run(None, {"x": x}), "torch": lambda: tx @ tw}
    return {name: flops / common.measure(fn, cpu, 1, repeats)["min_s"] / 1e9 for name, fn in fns.items()}


def fp32_ceiling(text_config, lengths: list[int], times: dict[str, list[float]]) -> dict:
    """How fast could any fp32 graph run these texts? The matmul FLOPs (``training.flops.text_forward_flops``: real
    tokens for ``encode_text``; the ONNX helper's padded sorted batches) over ONNX Runtime's own best fp32 matmul rate,
    as a fraction of ``encode_text``'s time: a lower bound on the helper's fp32 ratio (the non-matmul work only adds)."""
    from jina_clip_v2.hub.onnx_runtime import DEFAULT_TEXT_TOKENS_PER_BATCH
    from jina_clip_v2.modeling.policy_jina_clip import text_batches
    from jina_clip_v2.training.flops import text_forward_flops

    real = text_forward_flops(text_config, lengths)["total"]
    batches = text_batches(lengths, 32, DEFAULT_TEXT_TOKENS_PER_BATCH, unpadded=False)
    padded = sum(text_forward_flops(text_config, [lengths[batch[0]]] * len(batch))["total"] for batch in batches)
    rates = sgemm_gflops(DEFAULT_TEXT_TOKENS_PER_BATCH, text_config.hidden_size, text_config.intermediate_size)
    encode_text_s = statistics.median(times["encode_text"])
    return {
        "matmul_gflop_real_tokens": real / 1e9, "matmul_gflop_onnx_padded": padded / 1e9, "sgemm_gflops": rates,
        "encode_text_gflops": real / 1e9 / encode_text_s,
        "onnx_fp32_gflops": padded / 1e9 / statistics.median(times["onnx_fp32"]),
        "onnx_fp32_lower_bound_over_encode_text": padded / 1e9 / rates["onnxruntime"] / encode_text_s,
    }


def text_section(args) -> dict:
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    from jina_clip_v2.hub.export import export_model
    from jina_clip_v2.hub.onnx import export_onnx
    from jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx

    tiny = _test_helpers()
    processor = tiny.build_processor(tiny.build_tokenizer())
    model = wide_model(args.text_layers, 1, 56, processor)
    texts = long_tailed_texts(args.texts)
    lengths = [len(ids) for ids in processor.tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        export_model(model, folder, processor=processor)
        export_onnx(folder, precisions=["fp32", "int8"], parity=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        onnx = {p: JinaCLIPOnnx(folder, precision=p, session_options=options) for p in ("fp32", "int8")}
        st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
        torch.set_num_threads(1)
        fns = {
            "encode_text": lambda: model.encode_text(texts),
            "sentence_transformers": lambda: st.encode(texts, show_progress_bar=False),
            "onnx_fp32": lambda: onnx["fp32"].encode_text(texts),
            "onnx_int8": lambda: onnx["int8"].encode_text(texts),
        }
        outputs = {name: fn() for name, fn in fns.items()}  # also the warm-up
        times, _ = interleaved_cpu(fns, args.rounds, 0)
    reference = outputs["encode_text"]
    extra = {name: {"min_cosine_vs_encode_text": min_cosine(out, reference)} for name, out in outputs.items()}
    return {"texts": len(texts), "tokens": sum(lengths), "lengths": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
            "text_layers": args.text_layers, "rows": rows(times, "encode_text", extra),
            "fp32_ceiling": fp32_ceiling(model.config.text_config, lengths, times)}


def image_section(args) -> dict:
    import torch
    from PIL import Image

    from jina_clip_v2.benchmarks.encode_table import make_images
    from jina_clip_v2.modeling.pipeline_jina_clip import JinaCLIPImageFeatureExtractionPipeline
    from jina_clip_v2.modeling.policy_jina_clip import default_image_workers

    tiny = _test_helpers()
    processor = tiny.build_processor(tiny.build_tokenizer(), image_size=512)
    model = wide_model(1, args.vision_layers, 512, processor)
    torch.set_num_threads(1)

    @torch.inference_mode()
    def user_loop(paths):
        out = []
        for path in paths:
            with Image.open(path) as image:
                pixels = processor.image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
            out.append(model.get_image_features(pixels).pooler_output)
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).numpy()

    # The image-feature-extraction pipeline (the class `custom_pipelines` names), at transformers' default batch.
    pipe = JinaCLIPImageFeatureExtractionPipeline(model=model, image_processor=processor.image_processor)

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images)
        fns = {"user_loop": lambda: user_loop(paths), "encode_image": lambda: model.encode_image(paths),
               "pipeline": lambda: np.asarray(pipe(paths), dtype=np.float32).reshape(len(paths), -1)}
        for batch in IMAGE_BATCHES:
            fns[f"encode_image_batch_{batch}"] = lambda batch=batch: model.encode_image(paths, batch_size=batch)
        outputs = {name: fn() for name, fn in fns.items()}
        times, wall = interleaved_cpu(fns, args.rounds, 0)
    extra = {name: {"min_cosine_vs_user_loop": min_cosine(out, outputs["user_loop"])} for name, out in outputs.items()}
    return {"images": len(paths), "image_size": 512, "vision_layers": args.vision_layers, "decode_workers": default_image_workers(),
            "rows": rows(times, "user_loop", extra, wall)}


def bf16_section(args) -> dict:
    import torch

    from jina_clip_v2.benchmarks.encode_table import make_images
    from jina_clip_v2.modeling.loading_jina_clip import native_bf16

    tiny = _test_helpers()
    processor = tiny.build_processor(tiny.build_tokenizer(), image_size=512)
    fp32 = wide_model(24, 24, 512, processor)
    bf16 = wide_model(24, 24, 512, processor).to(torch.bfloat16)
    bf16.load_state_dict(fp32.state_dict())
    torch.set_num_threads(1)
    texts = long_tailed_texts(args.bf16_texts, seed=1)
    out: dict = {"native_bf16": native_bf16(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "text_layers": 24,
                 "vision_layers": 24, "texts": len(texts)}
    fns = {"fp32": lambda: fp32.encode_text(texts), "bf16": lambda: bf16.encode_text(texts)}
    outputs = {name: fn() for name, fn in fns.items()}
    times, _ = interleaved_cpu(fns, args.bf16_rounds, warmup=0)
    out["text"] = {"min_cosine": min_cosine(outputs["bf16"], outputs["fp32"]), "rows": rows(times, "fp32")}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.bf16_images)
        fns = {"fp32": lambda: fp32.encode_image(paths), "bf16": lambda: bf16.encode_image(paths)}
        outputs = {name: fn() for name, fn in fns.items()}
        times, _ = interleaved_cpu(fns, args.bf16_rounds, warmup=0)
    out["image"] = {"images": len(paths), "image_size": 512, "min_cosine": min_cosine(outputs["bf16"], outputs["fp32"]),
                    "rows": rows(times, "fp32")}
    return out


def peak_rss(modeling: str, count: int) -> dict:
    """Run in a fresh process: the resident peak (MiB) of encode_text on ``count`` short demo texts, and before it."""
    from jina_clip_v2.benchmarks.compare_modeling import TINY, load_modeling

    tiny = _test_helpers()
    package = load_modeling(Path(modeling), "measured_modeling")
    model = package.JinaCLIPModel(package.JinaCLIPConfig(**TINY)).eval()
    model.processor = tiny.build_processor(tiny.build_tokenizer())
    words = " ".join(tiny.caption_corpus()).split()
    texts = [" ".join(words[i % len(words) : i % len(words) + 8]) for i in range(count)]
    model.encode_text(texts[:100])
    hwm = lambda: int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024  # noqa: E731
    before = hwm()
    model.encode_text(texts, show_progress_bar=False)
    return {"before_mib": before, "peak_mib": hwm()}


def memory_section(args) -> dict:
    copies = {"current": str(common.ROOT / "modeling")}
    if args.baseline:
        copies["baseline"] = str(Path(args.baseline) / "modeling")
    out: dict = {}
    for name, folder in copies.items():
        out[name] = {}
        for count in (10_000, 100_000):
            code = f"import json; from jina_clip_v2.benchmarks.entry_points import peak_rss; print(json.dumps(peak_rss({folder!r}, {count})))"
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            out[name][str(count)] = json.loads(result.stdout.strip().splitlines()[-1])
        out[name]["peak_100k_over_10k"] = out[name]["100000"]["peak_mib"] / out[name]["10000"]["peak_mib"]
    return out


def _fmt_ratio(r: dict | None) -> str:
    return "-" if r is None else f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]"


def markdown(result: dict) -> str:
    lines = [f"# Entry points (issue 25), {result['env'].get('device_name', 'cpu')}", ""]
    if "text" in result:
        t = result["text"]
        lines += [f"## Text: {t['texts']} texts, {t['tokens']} tokens, {t['text_layers']}-layer real-width tower", "",
                  common.md_table(["row", "median CPU s", "/ encode_text [min, max]", "min cosine vs encode_text"],
                                  [[r["name"], f"{r['median_cpu_s']:.3f}", _fmt_ratio(r["over_encode_text"]),
                                    f"{r['min_cosine_vs_encode_text']:.6f}"] for r in t["rows"]]), ""]
        c = t["fp32_ceiling"]
        lines += [f"fp32 ceiling: {c['matmul_gflop_real_tokens']:.1f} GFLOP of matmuls on real tokens ({c['matmul_gflop_onnx_padded']:.1f} in the "
                  f"ONNX helper's padded batches); one-thread fp32 matmul rate ONNX Runtime {c['sgemm_gflops']['onnxruntime']:.1f}, torch "
                  f"{c['sgemm_gflops']['torch']:.1f} GFLOP/s; encode_text runs {c['encode_text_gflops']:.1f}, the ONNX helper fp32 "
                  f"{c['onnx_fp32_gflops']:.1f} GFLOP/s. At ONNX Runtime's best matmul rate the fp32 helper needs at least "
                  f"{c['onnx_fp32_lower_bound_over_encode_text']:.3f} of encode_text's time.", ""]
    if "image" in result:
        i = result["image"]
        lines += [f"## Image: {i['images']} images at {i['image_size']} px, {i['vision_layers']}-layer real-width tower", "",
                  common.md_table(["row", "median CPU s", "/ user loop [min, max]", "median wall s", "wall / user loop [min, max]",
                                   "min cosine vs user loop"],
                                  [[r["name"], f"{r['median_cpu_s']:.3f}", _fmt_ratio(r["over_user_loop"]), f"{r['median_wall_s']:.3f}",
                                    _fmt_ratio(r["over_user_loop_wall"]), f"{r['min_cosine_vs_user_loop']:.6f}"] for r in i["rows"]]), ""]
    if "bf16" in result:
        b = result["bf16"]
        lines += [f"## bf16 vs fp32, full depth (native bf16: {b['native_bf16']}, torch CPU capability {b['cpu_capability']})", "",
                  common.md_table(["tower", "bf16 / fp32 CPU time [min, max]", "min cosine"],
                                  [[k, _fmt_ratio(b[k]["rows"][1]["over_fp32"]), f"{b[k]['min_cosine']:.6f}"] for k in ("text", "image")]), ""]
    if "memory" in result:
        m = result["memory"]
        lines += ["## Peak RSS of encode_text, 10k vs 100k short texts (tiny model)", "",
                  common.md_table(["modeling", "10k MiB", "100k MiB", "100k / 10k"],
                                  [[k, f"{v['10000']['peak_mib']:.0f}", f"{v['100000']['peak_mib']:.0f}", f"{v['peak_100k_over_10k']:.2f}"]
                                   for k, v in m.items()]), ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=["text", "image", "bf16", "memory"], choices=["text", "image", "bf16", "memory"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--vision-layers", type=int, default=1)
    parser.add_argument("--bf16-texts", type=int, default=32)
    parser.add_argument("--bf16-images", type=int, default=2)
    parser.add_argument("--bf16-rounds", type=int, default=2)
    parser.add_argument("--baseline", help="a folder holding another modeling/ copy, for the memory section")
    parser.add_argument("--out", type=Path, default=common.ROOT / "benchmarks" / "results" / "entry_points.json")
    args = parser.parse_args(argv)
    import torch

    result: dict = {"benchmark": "entry_points", "env": common.env_info(torch.device("cpu")), "settings": vars(args) | {"out": str(args.out)},
                    "timing": "process CPU time, 1 thread, interleaved rounds, pair-by-pair ratios"}
    sections = {"text": text_section, "image": image_section, "bf16": bf16_section, "memory": memory_section}
    for name in args.sections:
        result[name] = sections[name](args)
        print(json.dumps({name: result[name]}, indent=1, default=str)[:3000], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(common.clean_json(result), indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result) + "\n")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
