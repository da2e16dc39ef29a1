"""Tests of benchmarks/ and of the FLOPs module (training/flops.py): the analytic FLOPs against torch's
FlopCounterMode, the GPU peak table, the stage settings (read by training's config loader), and both benchmark
scripts end to end on the tiny config (valid strict JSON with the documented keys, a
markdown report, passing parity). GPU-only checks (bf16 vs fp32, FlashAttention-2 vs SDPA, the packed varlen path)
are marked `gpu` and skipped without CUDA.

The timm baseline runs only in a subprocess: timm imports torchvision, which must never enter this process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from _tiny import ROOT
from jina_clip_v2.benchmarks import common, encode, train_step
from jina_clip_v2.benchmarks import flops as flops_cli
from jina_clip_v2.training import flops
from jina_clip_v2.training.config import ConfigError

STATUSES = {"pass", "fail", "unmeasured"}


def _strict_json(path: Path) -> dict:
    """json.loads that refuses NaN / Infinity (not JSON, although Python writes them by default)."""

    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant} in {path}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _tiny_model():
    config = common.build_config(tiny=True)
    return common.build_model(config, torch.device("cpu")).eval()


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [56, 84, 100])  # grids 4, 6 and 7 (100 px floors to 7 x 14 = 98)
def test_vision_flops_equal_flop_counter(size):
    # FlopCounterMode counts matmuls / convolutions / attention kernels only, as flops.py does: no softmax,
    # LayerNorm, SiLU, RoPE, bias or residual adds. The eager path makes Q K^T and A V plain bmm's.
    model = _tiny_model()
    model.set_attn_implementation("eager")
    model.set_image_size(size)
    batch = 3
    counted = _counted(lambda: model.get_image_features(torch.randn(batch, 3, size, size)))
    analytic = flops.vision_forward_flops(model.config.vision_config, size)
    assert counted == batch * analytic["total"]
    v = model.config.vision_config
    assert analytic["patch_embed"] == 2 * (size // 14) ** 2 * 3 * 14 * 14 * v.hidden_size


def test_text_flops_equal_flop_counter_padded_and_real_lengths():
    model = _tiny_model()
    model.set_attn_implementation("eager")
    lengths = [20, 13, 7]
    ids = torch.randint(4, 900, (3, 20))
    mask = (torch.arange(20)[None] < torch.tensor(lengths)[:, None]).long()
    counted = _counted(lambda: model.get_text_features(ids, attention_mask=mask))
    text = model.config.text_config
    # A padded batch executes every position: the count equals the padded-length FLOPs exactly ...
    assert counted == flops.text_forward_flops(text, [20] * 3)["total"]
    # ... while the model FLOPs (what MFU is quoted on) count real tokens only, and each unpadded sequence alone
    # matches the counter exactly.
    real = flops.text_forward_flops(text, lengths)
    assert real["tokens"] == sum(lengths) and real["total"] < counted
    for length in lengths:
        alone = _counted(lambda n=length: model.get_text_features(ids[:1, :n]))
        assert alone == flops.text_forward_flops(text, length)["total"]
    # Attention makes the per-token cost grow with the sequence.
    assert flops.text_flops_per_token(text, 512) > flops.text_flops_per_token(text, 8)


def test_backward_is_twice_forward():
    """The training-step convention: forward + backward = 3 x forward (exact for the towers' matmuls when the
    input needs a gradient; with pixel inputs that need none, the patch convolution's input gradient is skipped,
    0.16 % of an image's FLOPs at 512 px)."""
    model = _tiny_model().train()
    model.set_attn_implementation("eager")
    pixels = torch.randn(2, 3, 56, 56, requires_grad=True)
    counted = _counted(lambda: model.get_image_features(pixels).pooler_output.sum().backward())
    forward = 2 * flops.vision_forward_flops(model.config.vision_config, 56)["total"]
    assert counted == 3 * forward
    step = flops.train_step_flops(forward, gradient_checkpointing=True, grad_cache=True)
    assert step["model"] == 3 * forward and step["hardware"] == 5 * forward

    ids = torch.randint(4, 900, (2, 16))
    counted = _counted(lambda: model.get_text_features(ids).pooler_output.sum().backward())
    assert counted == 3 * flops.text_forward_flops(model.config.text_config, [16, 16])["total"]


def test_real_size_flops_are_plausible():
    config = common.build_config()
    per_image = flops.vision_forward_flops(config.vision_config, 512)
    # ~2 x 304M parameters x 1297 tokens + attention: about 0.95 TFLOP per 512 px image.
    assert 0.85e12 < per_image["total"] < 1.05e12
    assert per_image["attention"] / per_image["total"] < 0.2
    # Text: 2 x 302M non-embedding parameters per token plus attention.
    assert 0.6e9 < flops.text_flops_per_token(config.text_config, 77) < 0.65e9
    # The loss is small next to the towers at stage-1 sizes.
    loss = flops.contrastive_loss_flops(2048, [64, 128, 256, 512, 768, 1024])
    assert loss < 0.01 * 2048 * flops.vision_forward_flops(config.vision_config, 224)["total"]


def test_peak_table_and_mfu():
    assert flops.peak_tflops_for("NVIDIA H100 80GB HBM3")[0] == 989.4
    assert flops.peak_tflops_for("NVIDIA H100 PCIe")[0] == 756.5
    assert flops.peak_tflops_for("NVIDIA H200")[0] == 989.4
    assert flops.peak_tflops_for("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert flops.peak_tflops_for("NVIDIA GH200 480GB")[1].startswith("GH200")
    assert flops.peak_tflops_for("Some Unknown GPU") == (None, None)
    assert flops.detect_peak_tflops("cpu", torch.bfloat16) == (None, None)
    assert flops.detect_peak_tflops("cpu", torch.bfloat16, override=123.0) == (123.0, "--peak-tflops")
    assert flops.mfu(989.4e12, 2.0, 989.4) == pytest.approx(0.5)
    assert flops.mfu(1e12, 1.0, None) is None


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


TINY_STAGE_YAML = (
    "output_dir: unused\n"
    "model: {processor_from: tokenizer, image_size: 224, config: {vision_config: {image_size: 56}}}\n"
    "data:\n"
    "  text: {kind: text_pairs, batch_size: 4096, max_length: 77, sources: [{path: pairs}]}\n"
    "  image_text: {kind: image_text_short, batch_size: 2048, max_length: 77, sources: [{path: captions}]}\n"
    "optim: {text_lr: 0.0001}\n"
    "train: {steps: 10}\n"
)


def test_stage_settings_from_yaml_and_fallback(tmp_path):
    """The settings are read by training's loader (so a file training would reject is rejected here too, naming the
    key); without a file, the shipped stage config (the paper's Table 6)."""
    (tmp_path / "stage1.yaml").write_text("stage: 1\n" + TINY_STAGE_YAML, encoding="utf-8")
    s1 = train_step.stage_settings(1, tmp_path)
    assert (s1["image_size"], s1["seq_len"], s1["text_batch"], s1["image_text_batch"]) == (224, 77, 4096, 2048)
    assert s1["sources"]["text_batch"].endswith("data.text.batch_size")
    s2 = train_step.stage_settings(2, tmp_path)  # no file: the paper's Table 6
    assert (s2["seq_len"], s2["image_size"], s2["image_text_batch"], s2["text_batch"], s2["negatives"]) == (512, 384, 8192, 8192, 0)
    assert set(s2["sources"].values()) == {"paper Table 6"}
    (tmp_path / "stage3.yaml").write_text("stage: 3\nbatch_size: {text: 4096}\n" + TINY_STAGE_YAML, encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown config key 'batch_size'"):
        train_step.stage_settings(3, tmp_path)


def test_stage_settings_read_training_stage_layout(tmp_path):
    """training/stage.py's YAML layout: data.text / data.image_text blocks, the resolution under model, and
    per-stage overrides under `stages:` on a base block (whose resolution_switch must not be taken)."""
    (tmp_path / "stage3.yaml").write_text(
        "stage: 1\n"
        "output_dir: unused\n"
        "model: {image_size: null, processor_from: tokenizer, config: {vision_config: {image_size: 56}}}\n"
        "data:\n"
        "  text: {kind: text_pairs, batch_size: 32, max_length: 16, sources: [{path: pairs}]}\n"
        "  image_text: {kind: image_text_short, batch_size: 32, max_length: 16, sources: [{path: captions}]}\n"
        "train: {steps: 200, resolution_switch: {at_step: 100, image_size: 70}}\n"
        "stages:\n"
        "  3:\n"
        "    model: {image_size: 84}\n"
        "    data:\n"
        "      text: {kind: text_triplets, batch_size: 8, max_length: 32, num_negatives: 7}\n"
        "      image_text: {kind: image_text_long, max_length: 32}\n",
        encoding="utf-8",
    )
    s3 = train_step.stage_settings(3, tmp_path)
    assert (s3["seq_len"], s3["image_size"], s3["text_batch"], s3["image_text_batch"], s3["negatives"]) == (32, 84, 8, 32, 7)
    assert s3["sources"]["image_size"].endswith(":model.image_size")
    assert s3["sources"]["negatives"].endswith(":data.text.num_negatives")


def test_train_step_chunk_sizes_are_the_trainers(tmp_path):
    """Gradient caching is configured by chunk sizes in samples, as the trainer takes them
    (train.grad_cache.{text,image}_chunk_size): by default the stage config's own, with --tiny the tiny model's,
    and --text-chunk-size / --image-chunk-size override; no number of chunks anywhere."""
    (tmp_path / "stage1.yaml").write_text(
        "stage: 1\n" + TINY_STAGE_YAML.replace("train: {steps: 10}", "train: {steps: 10, grad_cache: {text_chunk_size: 7, image_chunk_size: 5}}"),
        encoding="utf-8",
    )
    args = train_step.parse_args(["--configs-dir", str(tmp_path)])
    assert train_step.chunk_sizes(1, args) == {
        "text": 7, "image": 5, "sources": {"text": f"{tmp_path / 'stage1.yaml'}:train.grad_cache.text_chunk_size",
                                           "image": f"{tmp_path / 'stage1.yaml'}:train.grad_cache.image_chunk_size"}}
    shipped = train_step.stage_config(3)[0].train.grad_cache  # no stage3.yaml in tmp_path: the shipped config
    s3 = train_step.chunk_sizes(3, args)
    assert (s3["text"], s3["image"]) == (shipped.text_chunk_size, shipped.image_chunk_size)
    assert s3["sources"]["text"] == "training/configs/stage3.yaml:train.grad_cache.text_chunk_size"
    tiny = train_step.chunk_sizes(1, train_step.parse_args(["--tiny", "--configs-dir", str(tmp_path)]))
    assert (tiny["text"], tiny["image"], tiny["sources"]["text"]) == (3, 3, "tiny")
    explicit = train_step.chunk_sizes(1, train_step.parse_args(["--tiny", "--text-chunk-size", "2", "--image-chunk-size", "9"]))
    assert (explicit["text"], explicit["image"], explicit["sources"]["image"]) == (2, 9, "--image-chunk-size")
    cfg = train_step.bench_config(train_step.stage_config(1, tmp_path)[0], common.build_config(tiny=True), 2, 9)
    assert (cfg.train.grad_cache.text_chunk_size, cfg.train.grad_cache.image_chunk_size) == (2, 9)
    for argv in (["--chunks", "4"], ["--text-chunk-size", "0"], ["--image-chunk-size", "-1"]):
        with pytest.raises(SystemExit):
            train_step.parse_args(argv)


def test_lengths_and_packing():
    lengths = encode.sample_lengths(1000, median=64, sigma=0.8, low=8, high=512, seed=0)
    assert lengths == encode.sample_lengths(1000, median=64, sigma=0.8, low=8, high=512, seed=0)
    assert min(lengths) >= 8 and max(lengths) <= 512 and 40 < sorted(lengths)[500] < 90
    rows = encode.token_rows([5, 3, 9], vocab_size=100, seed=0)
    assert [len(r) for r in rows] == [5, 3, 9] and all(r[0] == 0 and r[-1] == 2 for r in rows)
    assert all((r[1:-1] >= 4).all() for r in rows)  # never <pad> or another special id inside a text
    packed = encode.pack_rows(rows, torch.device("cpu"))
    assert packed["cu_seq_lens"].tolist() == [0, 5, 8, 17] and packed["max_length"] == 9
    assert packed["position_ids"][0, 5:8].tolist() == [0, 1, 2]
    padded = encode.pad_rows(rows, 1, torch.device("cpu"))
    assert padded["attention_mask"].sum().item() == 17 and (padded["input_ids"][1, 3:] == 1).all()


def test_packed_paths_match_padded_on_cpu():
    """The registered varlen attention (CPU: its per-text reference loop) gives the padded embeddings, both under the
    benchmark-side packing of the stock tower and under the model's own unpadded API."""
    from transformers import AttentionInterface

    model = _tiny_model()
    rows = encode.token_rows([9, 30, 17, 8], vocab_size=1000, seed=3)
    batch = encode.pad_rows(rows, 1, torch.device("cpu"))
    with torch.inference_mode():
        padded = model.get_text_features(**batch).pooler_output
        AttentionInterface.register(encode.VARLEN_ATTENTION, encode._varlen_attention)
        model.config.text_config._attn_implementation = encode.VARLEN_ATTENTION
        packed = encode.packed_text_features(model, encode.pack_rows(rows, torch.device("cpu")))
        assert (packed - padded).abs().max() < 1e-5
        own = encode.model_unpadded_path(model)
        if own is not None:
            assert (own[1](batch["input_ids"], batch["attention_mask"]) - padded).abs().max() < 1e-5


def test_targets_and_json_cleaning(tmp_path):
    assert common.target("a", "", 1.5, 2.0)["status"] == "pass"
    assert common.target("a", "", 1.35, 1.4, higher_is_better=False)["status"] == "fail"
    assert common.target("a", "", 1.0, None)["status"] == "unmeasured"
    assert common.target("a", "", 1.0, 2.0, force_unmeasured="tiny")["status"] == "unmeasured"
    out, md = common.write_results({"x": float("nan"), "y": (1, torch.float32)}, "# t\n", tmp_path / "r.json")
    assert _strict_json(out) == {"x": None, "y": [1, "torch.float32"]} and md.read_text() == "# t\n"


# ----------------------------------------------------------------------------------------------------
# The scripts end to end (tiny, CPU)
# ----------------------------------------------------------------------------------------------------


def _check_common(result: dict, benchmark: str) -> None:
    assert result["benchmark"] == benchmark and result["schema_version"] == common.SCHEMA_VERSION
    env = result["env"]
    for key in ("device", "device_name", "torch", "transformers", "git_commit", "python"):
        assert key in env
    assert isinstance(result["config"]["text"]["hidden_size"], int)
    assert result["parameters"]["text"] > 0 and result["parameters"]["vision"] > 0
    assert result["targets"] and all(t["status"] in STATUSES for t in result["targets"])
    for t in result["targets"]:
        assert set(t) >= {"name", "threshold", "measured", "status", "unit", "comparison"}
        assert t["status"] == "unmeasured"  # tiny config: never a pass/fail claim


def test_encode_tiny_cpu(tmp_path):
    out = tmp_path / "encode.json"
    encode.main(["--tiny", "--device", "cpu", "--no-timm", "--warmup", "0", "--iters", "1", "--out", str(out)])
    result = _strict_json(out)
    _check_common(result, "encode")
    assert result["settings"]["dtype"] == "fp32" and result["peak_tflops"] is None

    image = result["image"]
    assert image["baseline"] == {"skipped": "--no-timm"}
    ok = [r for r in image["runs"] if r["status"] == "ok"]
    assert {(r["image_size"], r["batch_size"]) for r in ok} == {(28, 1), (28, 4), (56, 1), (56, 4)}
    for r in ok:
        assert r["median_s"] > 0 and r["images_per_s"] == pytest.approx(r["batch_size"] / r["median_s"])
        assert isinstance(r["flops_per_image"], int) and r["mfu"] is None and r["peak_memory_bytes"] is None
    assert all(p["ok"] and p["max_abs_diff"] < 1e-5 for p in image["parity"])

    text = result["text"]
    paths = {r["path"] for r in text["runs"] if r["status"] == "ok"}
    # The model's own unpadded path on each backend when it has one, else the benchmark-side packing.
    unpadded = ({"unpadded_model_varlen", "unpadded_model_sdpa"} if text["unpadded"]["model"]["available"]
                else {"packed_varlen"})
    assert paths == {"stock_padded", "padded_sdpa", "encode_text_batching"} | unpadded
    assert text["unpadded"]["varlen_kernel"]["backend"] == "reference_loop"  # CPU: correctness only
    assert not text["unpadded"]["varlen_kernel"]["speed_claim"]
    for r in text["runs"]:
        if r["status"] != "ok":
            continue
        assert 0 < r["real_tokens"] <= r["computed_tokens"]
        assert r["tokens_per_s"] == pytest.approx(r["real_tokens"] / r["median_s"])  # real tokens only
        assert r["flops_real"] <= r["flops_executed"]
        if r["layout"] in ("packed", "model_unpadded"):
            if r["backend"] != "sdpa length buckets":  # a packed row: no pad token computed at all
                assert r["padding_fraction"] == 0 and r["flops_executed"] == r["flops_real"]
            else:  # each length bucket padded to its longest text, at most 12.5 % of its real tokens
                assert 0 <= r["padding_fraction"] <= 0.125 / 1.125 and r["flops_executed"] >= r["flops_real"]
    # Every fast path equals the fp32 SDPA reference (fp32 here: to rounding).
    assert {p["path"] for p in text["parity"]} == {"stock_padded", "padded_sdpa", "encode_text_batching"} | unpadded
    assert all(p["ok"] and p["max_abs_diff"] < 1e-5 for p in text["parity"])

    md = out.with_suffix(".md").read_text()
    for heading in ("# Encoding benchmark", "## Targets", "## Image encoding", "## Text encoding", "## Parity vs fp32 SDPA"):
        assert heading in md
    assert "image_mfu_512px" in md and "| stock_padded |" in md
    assert "torchvision" not in sys.modules  # timm stayed out of this process


def test_encode_timm_baseline_in_subprocess(tmp_path):
    """The timm Eva baseline, in a child process (it imports torchvision); without timm, a recorded skip."""
    out = tmp_path / "encode_timm.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "jina_clip_v2.benchmarks.encode", "--tiny", "--device", "cpu", "--skip-text", "--image-sizes", "56",
         "--batch-sizes", "2", "--warmup", "0", "--iters", "1", "--timm-modes", "fused", "naive", "--attn", "sdpa", "eager",
         "--no-e2e", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = _strict_json(out)["image"]
    baseline = image["baseline"]
    if "skipped" in baseline:
        assert baseline["skipped"].startswith("timm not importable")
        pytest.skip(baseline["skipped"])
    assert [r["status"] for r in baseline["runs"]] == ["ok", "ok"]
    assert {r["attn"] for r in baseline["runs"]} == {"timm-fused", "timm-naive"}
    for p in baseline["parity"]:  # same weights, same outputs (fp32): timm is the independent oracle
        assert p["ok"] and p["max_abs_diff_vs_jina_clip_sdpa"] < 1e-5
    # Like with like: ours SDPA vs timm's fused (SDPA) attention, ours eager vs timm's written-out attention.
    pairs = {(p["jina_clip"], p["timm"]) for p in image["pairs"]}
    assert pairs == {("jina_clip sdpa", "timm fused"), ("jina_clip eager", "timm naive")}
    assert all(p["speedup"]["ratios"] and not p["compiled"] for p in image["pairs"])


def test_encode_records_missing_timm_as_skipped(tmp_path, monkeypatch):
    def no_timm():
        raise ImportError("No module named 'timm'")

    monkeypatch.setattr(encode, "import_timm", no_timm)
    out = tmp_path / "e.json"
    encode.main(["--tiny", "--device", "cpu", "--skip-text", "--image-sizes", "56", "--batch-sizes", "1",
                 "--warmup", "0", "--iters", "1", "--out", str(out)])
    result = _strict_json(out)
    assert result["image"]["baseline"] == {"skipped": "timm not importable: ImportError: No module named 'timm'"}
    assert [r["status"] for r in result["image"]["runs"]] == ["ok"] and "text" not in result
    speedup = next(t for t in result["targets"] if t["name"] == "image_speedup_vs_timm_512px")
    assert speedup["status"] == "unmeasured" and "timm not importable" in speedup["note"]


def test_train_step_tiny_cpu(tmp_path):
    out = tmp_path / "train.json"
    train_step.main(["--tiny", "--device", "cpu", "--warmup", "0", "--iters", "1", "--configs-dir", str(tmp_path),
                     "--out", str(out)])
    result = _strict_json(out)
    _check_common(result, "train_step")
    assert [s["stage"] for s in result["stages"]] == [1, 2, 3]
    for stage in result["stages"]:
        assert [r["variant"] for r in stage["runs"]] == list(train_step.VARIANTS)
        for r in stage["runs"]:
            assert r["status"] == "ok", r
            assert r["loss_finite"] and r["median_s"] > 0
            assert r["samples_per_s"] == pytest.approx((r["text_batch"] + r["image_batch"]) / r["median_s"])
            extra = int(r["checkpointing"]) + int(r["grad_cache"])
            forward = stage["flops_forward"]["towers_forward"]
            assert r["hardware_flops"] == pytest.approx(r["model_flops"] + extra * forward)
        assert set(stage["step_time_ratios"]) == {"grad_cache / plain", "grad_cache+checkpointing / checkpointing"}
        # Chunk sizes in samples, recorded where they came from; chunks per group follow from the rows.
        assert (stage["grad_cache"]["text"], stage["grad_cache"]["image"]) == (3, 3)
        assert stage["grad_cache"]["sources"] == {"text": "tiny", "image": "tiny"}
        for r in stage["runs"]:
            if not r["grad_cache"]:
                assert r["grad_cache_chunk_sizes"] is None and r["grad_cache_chunks"] is None
                continue
            assert r["grad_cache_chunk_sizes"] == {"text": 3, "image": 3}
            rows = {"query": r["text_batch"], "document": r["text_batch"], "caption": r["image_batch"], "image": r["image_batch"]}
            if stage["settings"]["negatives"]:
                rows["negatives"] = r["text_batch"] * stage["settings"]["negatives"]
            assert r["grad_cache_chunks"] == {name: math.ceil(n / 3) for name, n in rows.items()}
        path = stage["loss_path"]
        assert path["full_s"] > 0 and 0 < path["share_of_plain_step"] and path["world_size"] == 1
    s3 = result["stages"][2]
    assert s3["settings"]["negatives"] == 7 and s3["runs"][0]["samples_per_step"] == s3["text_batch"] + s3["image_batch"]
    names = [t["name"] for t in result["targets"]]
    assert names == ["train_stage1_mfu", "grad_cache_overhead_stage1", "grad_cache_overhead_stage2", "grad_cache_overhead_stage3"]
    md = out.with_suffix(".md").read_text()
    for heading in ("# Training-step benchmark", "## Targets", "## Steps", "## Loss path"):
        assert heading in md


def test_step_peak_bytes_counts_torch_cpu_allocations():
    """The CPU peak is torch's allocator's own count (tracemalloc does not see torch): exact bytes of the tensors
    allocated during the call at its high point, nothing allocated before it."""
    resident = torch.empty(4_000_000, dtype=torch.uint8)  # allocated before: not in the peak, nor is its free

    def work():
        a = torch.empty(1_000_000, dtype=torch.uint8)
        b = torch.empty(2_000_000, dtype=torch.uint8)
        del a
        c = torch.empty(3_000_000, dtype=torch.uint8)  # high point: b + c
        del b, c

    assert common.step_peak_bytes(work, torch.device("cpu")) == 5_000_000
    assert common.step_peak_bytes(lambda: None, torch.device("cpu")) == 0
    del resident


def test_train_step_memory_scaling_tiny_cpu(tmp_path):
    """Plain vs gradient caching at growing batches under a budget (stage-3 triplets: the plain step's peak grows
    fastest): the plain step exceeds the budget at some batch (recorded with its measured peak, then not run at
    larger batches) while gradient caching runs every batch within it; variants interleaved, ratios round by
    round where both ran."""
    out = tmp_path / "mem.json"
    train_step.main(["--tiny", "--device", "cpu", "--memory-scaling", "--stages", "3", "--batches", "2", "4", "8",
                     "--memory-budget-mb", "3", "--iters", "2", "--configs-dir", str(tmp_path), "--out", str(out)])
    result = _strict_json(out)
    assert result["benchmark"] == "train_step_memory" and result["targets"] == []
    (stage,) = result["memory_scaling"]
    budget = 3 * 2**20
    assert stage["memory_budget_bytes"] == budget and (stage["grad_cache"]["text"], stage["grad_cache"]["image"]) == (3, 3)
    # AdamW's two moments (and a scalar step count per parameter)
    assert stage["resident"]["optimizer_state_bytes"] == pytest.approx(2 * stage["resident"]["parameters_bytes"], rel=1e-3)
    rows = {(r["variant"], r["batch"]): r for r in stage["rows"]}
    assert sorted(rows) == [(v, b) for v in ("grad_cache", "plain") for b in (2, 4, 8)]
    for b in (2, 4, 8):
        cached = rows["grad_cache", b]
        assert cached["status"] == "ok" and 0 < cached["step_peak_bytes"] <= budget and cached["within_budget"]
        assert cached["interleaved"] and len(cached["times_s"]) == 2
        assert cached["grad_cache_chunks"]["negatives"] == math.ceil(7 * b / 3)
    plain = [rows["plain", b] for b in (2, 4, 8)]
    assert plain[0]["status"] == "ok" and plain[0]["step_peak_bytes"] > rows["grad_cache", 2]["step_peak_bytes"]
    exceeded = next(r for r in plain if r["status"] == "exceeds_budget")
    assert exceeded["step_peak_bytes"] > budget and not exceeded["within_budget"] and "budget" in exceeded["error"]
    later = plain[plain.index(exceeded) + 1:]
    assert all(r["status"] == "exceeds_budget" and r["step_peak_bytes"] is None for r in later)
    ratios = {r["batch"]: r["grad_cache / plain"] for r in stage["step_time_ratios"]}
    for r in plain:
        assert (ratios[r["batch"]] is not None) == (r["status"] == "ok")
    assert ratios[2]["ratios"] == [a / b for a, b in zip(rows["grad_cache", 2]["times_s"], rows["plain", 2]["times_s"])]
    summary = stage["summary"]
    assert summary["grad_cache"]["largest_batch_within_budget"] == 8 > summary["plain"]["largest_batch_within_budget"]
    assert summary["plain"]["bytes_per_sample"] > summary["grad_cache"]["bytes_per_sample"]
    md = out.with_suffix(".md").read_text()
    assert "# Gradient caching: step memory and time" in md and "exceeds_budget" in md


def test_flops_cli(capsys):
    summary = flops_cli.main(["--tiny", "--image-sizes", "56", "--seq-lens", "16"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(summary))
    assert summary["train_step_multipliers"]["plain"] == 3.0


# ----------------------------------------------------------------------------------------------------
# GPU-only: bf16 / FlashAttention-2 / packed varlen parity (skipped without CUDA)
# ----------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _mid_model(device):
    """Wider than the tiny config (head_dim 64, as the real model) but quick: 4 layers of width 256."""
    from jina_clip_v2.modeling import JinaCLIPConfig

    config = JinaCLIPConfig(
        text_config=dict(vocab_size=4000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=1024, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        vision_config=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=682,
                           image_size=224, patch_size=14),
        projection_dim=256, matryoshka_dimensions=[64, 128, 256],
    )
    return common.build_model(config, device).eval()


def _text_batch(device, vocab=4000):
    rows = encode.token_rows(encode.sample_lengths(8, median=64, sigma=0.8, low=8, high=256, seed=1), vocab, seed=1)
    return rows, encode.pad_rows(rows, 1, device)


def _cosines(a, b):
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.mark.gpu
@needs_cuda
def test_bf16_matches_fp32_on_gpu():
    device = torch.device("cuda")
    model = _mid_model(device)
    model.set_attn_implementation("sdpa")
    pixels = torch.randn(4, 3, 224, 224, device=device)
    _, batch = _text_batch(device)
    with torch.inference_mode(), common.exact_fp32():
        image32 = model.get_image_features(pixels).pooler_output
        text32 = model.get_text_features(**batch).pooler_output
    model.to(torch.bfloat16)
    with torch.inference_mode():
        image16 = model.get_image_features(pixels.bfloat16()).pooler_output
        text16 = model.get_text_features(**batch).pooler_output
    assert _cosines(image16, image32).min() > 0.999
    assert _cosines(text16, text32).min() > 0.999


@pytest.mark.gpu
@needs_cuda
def test_flash_attention_2_matches_sdpa_on_gpu():
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        pytest.skip("flash_attn is not installed")
    device = torch.device("cuda")
    model = _mid_model(device)
    model.set_attn_implementation("sdpa")
    pixels = torch.randn(4, 3, 224, 224, device=device)
    _, batch = _text_batch(device)
    with torch.inference_mode(), common.exact_fp32():
        reference = (model.get_image_features(pixels).pooler_output, model.get_text_features(**batch).pooler_output)
    model.to(torch.bfloat16)
    outputs = {}
    for implementation in ("sdpa", "flash_attention_2"):
        model.set_attn_implementation(implementation)
        with torch.inference_mode():
            outputs[implementation] = (model.get_image_features(pixels.bfloat16()).pooler_output,
                                       model.get_text_features(**batch).pooler_output)
    for fa2, sdpa, fp32 in zip(outputs["flash_attention_2"], outputs["sdpa"], reference):
        assert _cosines(fa2, fp32).min() > 0.999  # FlashAttention-2 (bf16) vs the fp32 SDPA reference
        assert _cosines(fa2, sdpa).min() > 0.999  # ... and vs SDPA in the same dtype


@pytest.mark.gpu
@needs_cuda
def test_packed_varlen_matches_padded_on_gpu():
    from transformers import AttentionInterface

    device = torch.device("cuda")
    if encode.varlen_backend(device) == "reference_loop":
        pytest.skip("no varlen kernel (torch.nn.attention.varlen or flash_attn) on this machine")
    model = _mid_model(device).to(torch.bfloat16)
    rows, batch = _text_batch(device)
    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        padded = model.get_text_features(**batch).pooler_output
    AttentionInterface.register(encode.VARLEN_ATTENTION, encode._varlen_attention)
    model.config.text_config._attn_implementation = encode.VARLEN_ATTENTION
    with torch.inference_mode():
        packed = encode.packed_text_features(model, encode.pack_rows(rows, device))
        assert _cosines(packed, padded).min() > 0.999  # benchmark-side packing of the stock tower
        own = encode.model_unpadded_path(model)
        if own is not None:  # the model's unpadded API on the same varlen kernel
            assert _cosines(own[1](batch["input_ids"], batch["attention_mask"]), padded).min() > 0.999


@pytest.mark.gpu
@needs_cuda
def test_scripts_run_on_gpu(tmp_path):
    result = encode.main(["--tiny", "--device", "cuda", "--no-timm", "--warmup", "0", "--iters", "1",
                          "--out", str(tmp_path / "e.json")])
    assert result["settings"]["dtype"] == "bf16"
    assert all(r["peak_memory_bytes"] > 0 for r in result["image"]["runs"] if r["status"] == "ok")
    assert all(p["ok"] for p in result["image"]["parity"] + result["text"]["parity"])
    result = train_step.main(["--tiny", "--device", "cuda", "--stages", "1", "--warmup", "0", "--iters", "1",
                              "--out", str(tmp_path / "t.json")])
    assert all(r["status"] == "ok" and math.isfinite(r["loss"]) for r in result["stages"][0]["runs"])
