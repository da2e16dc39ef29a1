"""Benchmarks that cannot flatter (issue 16), each rule checked without timing: parity on randomised weights, the
vision target on equal attention backends, the stock transformers text baseline with its default attention, the
batching benchmarked being encode_text's own, variants interleaved with round-by-round ratios, executed FLOPs of the
packed path counted as computed, end-to-end rows beside the model-only ones."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _tiny import build_processor, tiny_config, tiny_model
from jina_clip_v2.benchmarks import common, encode, encode_table
from jina_clip_v2.modeling.encoding_jina_clip import text_batch_plan
from jina_clip_v2.training import flops


def test_parity_weights_are_randomised(tmp_path):
    fresh = common.build_model(tiny_config(), torch.device("cpu"))
    assert common.weight_summary(fresh, "fresh")["all_zero_vectors"] > 0  # what fresh init leaves: zero biases...
    assert common.weight_summary(fresh, "fresh")["all_one_vectors"] > 0  # ... and identity norms
    model = common.build_model(tiny_config(), torch.device("cpu"), randomize=True)
    summary = common.weight_summary(model, "randomised")
    assert summary["all_zero_vectors"] == 0 and summary["all_one_vectors"] == 0
    assert float(model.vision_model.blocks[0].attn.q_bias.detach().abs().min()) > 0
    # The benchmark measures its parity on such weights, and says so in its JSON.
    out = tmp_path / "e.json"
    encode.main(["--tiny", "--device", "cpu", "--skip-images", "--skip-text", "--no-e2e", "--warmup", "0", "--iters", "1",
                 "--out", str(out)])
    weights = json.loads(out.read_text())["weights"]
    assert weights["all_zero_vectors"] == 0 and weights["all_one_vectors"] == 0 and "randomised" in weights["source"]


def _run(impl, attn, batch, images_per_s, compiled=False):
    return {"impl": impl, "attn": attn, "compiled": compiled, "image_size": 512, "batch_size": batch, "status": "ok",
            "images_per_s": images_per_s, "mfu": None}


def test_vision_target_compares_equal_backends_not_compile():
    """A compiled (or FlashAttention) speedup alone cannot pass the timm target: it is the SDPA-vs-SDPA pair, both
    uncompiled, at our best batch, from the round-by-round ratios."""
    assert encode.IMAGE_PAIRS == (("sdpa", "timm-fused"), ("eager", "timm-naive"))
    ratio = {"median": 1.1, "min": 1.0, "max": 1.2, "ratios": [1.0, 1.1, 1.2]}
    image = {
        "runs": [_run("jina_clip", "sdpa", 8, 110.0), _run("jina_clip", "sdpa", 8, 500.0, compiled=True),
                 _run("jina_clip", "flash_attention_2", 8, 400.0)],
        "baseline": {"runs": [_run("timm", "timm-fused", 8, 100.0)], "parity": [{"image_size": 512, "ok": True}]},
        "pairs": [{"image_size": 512, "batch_size": 8, "attention": "sdpa", "compiled": False, "speedup": ratio},
                  {"image_size": 512, "batch_size": 8, "attention": "sdpa", "compiled": True,
                   "speedup": {"median": 5.0, "min": 5.0, "max": 5.0, "ratios": [5.0]}}],
    }
    result = {"settings": {"tiny": False, "image_sizes": [512], "skip_images": False}, "env": {"device_name": "NVIDIA H100"},
              "image": image, "text": {"runs": [], "unpadded": {}}}
    target = next(t for t in encode.compute_targets(result) if t["name"] == "image_speedup_vs_timm_512px")
    assert target["measured"] == 1.1 and target["status"] == "fail"
    assert "sdpa" in target["note"] and "not compiled" in target["note"]


def test_text_baseline_is_the_stock_class_with_its_default_attention():
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

    model = tiny_model(seed=2)
    model.set_attn_implementation("eager")  # our model's setting must not leak into the baseline
    stock = encode_table.stock_text_tower(model)
    default = JinaEmbeddingsV3Model(JinaEmbeddingsV3Config(**model.config.text_config.to_dict()), add_pooling_layer=False)
    assert type(stock) is JinaEmbeddingsV3Model
    assert stock.config._attn_implementation == default.config._attn_implementation == "sdpa"
    ids = torch.randint(4, 900, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.inference_mode():
        ours = model.get_text_features(ids, attention_mask=mask, unpadded=False).pooler_output
        theirs = encode_table.stock_features(stock, ids, mask)
    assert (ours - theirs).abs().max().item() <= 1e-5  # same weights, same embedding


def test_benchmark_text_baseline_in_the_json(tmp_path):
    out = tmp_path / "e.json"
    encode.main(["--tiny", "--device", "cpu", "--skip-images", "--no-e2e", "--text-batch-sizes", "4", "--warmup", "0",
                 "--iters", "1", "--out", str(out)])
    runs = json.loads(out.read_text())["text"]["runs"]
    baseline = [r for r in runs if r.get("baseline")]
    assert [r["path"] for r in baseline] == ["stock_padded"]
    assert "JinaEmbeddingsV3Model" in baseline[0]["impl"] and baseline[0]["attn"] == "sdpa"
    assert all(r["speedup_vs_baseline"]["ratios"] for r in runs if r["status"] == "ok" and not r.get("baseline"))


def test_benchmarked_batching_is_encode_texts_own(tokenizer):
    model = tiny_model(seed=4)
    model.processor = build_processor(tokenizer)
    texts = encode_table.make_texts(tokenizer, encode_table.long_tailed_lengths(70, seed=1, high=120), seed=1)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    calls, _ = encode_table.record_calls(model, "get_text_features", lambda: model.encode_text(texts))
    batches, unpadded = text_batch_plan(model, lengths)  # what encode.py's "encode_text_batching" path runs
    assert len(calls) == len(batches) > 1
    for (args, kwargs), batch in zip(calls, batches):
        assert kwargs["attention_mask"].sum(1).tolist() == [lengths[i] for i in batch]
        assert kwargs["unpadded"] == unpadded
    # The table's model-only row replays exactly those calls.
    replayed = encode_table.replay(model, "get_text_features", calls)()
    assert [len(o) for o in replayed] == [len(b) for b in batches]


def test_variants_are_interleaved_and_compared_round_by_round():
    order = []
    timings = common.interleaved({name: (lambda n=name: order.append(n)) for name in "ABC"}, torch.device("cpu"), 1, 3)
    assert order == list("ABC") * 4  # one warmup round, then three rounds A B C
    assert all(t["iters"] == 3 and t["interleaved"] for t in timings.values())
    a = {"status": "ok", "times_s": [2.0, 4.0, 9.0]}
    b = {"status": "ok", "times_s": [1.0, 4.0, 3.0]}
    assert common.pair_ratio(a, b)["ratios"] == [2.0, 1.0, 3.0] and common.pair_ratio(a, b)["median"] == 2.0
    assert common.pair_ratio(a, {"status": "oom"}) is None
    failing = common.interleaved({"ok": lambda: None, "bad": lambda: 1 / 0}, torch.device("cpu"), 0, 2)
    assert failing["bad"]["status"] == "error" and failing["ok"]["iters"] == 2


def test_unpadded_flops_are_counted_as_computed():
    """Unpadded eager / SDPA batches compute each length bucket padded to its longest text: the executed FLOPs say
    so (equal to torch's FlopCounterMode on the model's own unpadded path), a little above the real-token FLOPs and
    far below a (T, T) block mask over the packed row."""
    model = tiny_model(seed=6)
    model.set_attn_implementation("eager")
    lengths = [20, 19, 18, 7, 3]  # buckets [20, 19, 18] (padded to 20) and [7], [3]
    ids = torch.randint(4, 900, (len(lengths), max(lengths)))
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    with FlopCounterMode(display=False) as counter:
        model.get_text_features(ids, attention_mask=mask, unpadded=True)
    spans = encode.bucket_lengths(lengths)
    assert spans == [20, 20, 20, 7, 3]
    computed, executed = encode._executed_flops(model.config.text_config, [lengths], padded=False, buckets=True)
    real = flops.text_forward_flops(model.config.text_config, lengths)
    assert computed == sum(spans) and counter.get_total_flops() == executed > real["total"]
    assert executed <= 1.125 * real["total"]  # at most BUCKET_PADDING of padding per bucket
    padded = encode._executed_flops(model.config.text_config, [lengths], padded=True, buckets=False)[1]
    assert executed < padded
    # A (T, T) block mask over the packed row would count T^2.
    block = flops.text_forward_flops(model.config.text_config, lengths, attention_lengths=[sum(lengths)])
    assert block["attention"] > flops.text_forward_flops(model.config.text_config, spans)["attention"]


def test_end_to_end_rows_beside_model_only(tokenizer, tmp_path):
    model = tiny_model(seed=8)
    model.processor = build_processor(tokenizer)
    texts = encode_table.make_texts(tokenizer, encode_table.long_tailed_lengths(24, seed=2, high=100), seed=2)
    text = encode_table.text_section(model, tokenizer, texts, torch.device("cpu"), warmup=0, rounds=1)
    kinds = {r["name"]: r["kind"] for r in text["rows"]}
    assert kinds["encode_text_default"] == "end_to_end" and kinds["replay_default"] == "model_only"
    assert kinds["stock_padded_arrival"] == "model_only" and all(r["status"] == "ok" for r in text["rows"])
    assert all(p["max_abs_diff"] <= 1e-5 for p in text["parity"])  # every row embeds as each text alone
    paths = encode_table.make_images(tmp_path, 4, size=(120, 90))
    image = encode_table.image_section(model, paths, torch.device("cpu"), warmup=0, rounds=1, workers=[1, 2])
    names = {r["name"] for r in image["rows"]}
    assert {"forward_only", "encode_image_default", "encode_image_serial", "preprocess_serial_batches",
            "preprocess_pool_2_workers", "per_image_loop"} <= names
    assert image["summary"]["workers_equal_serial_bitwise"] is True
    md = encode_table.md_sections({"text": text, "image": image})
    assert "encode_text(texts)" in md and "encode_image(paths)" in md
    assert np.isfinite(image["summary"]["serial_over_best_pool"]["median"])
