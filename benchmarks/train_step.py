"""One training step of each jina-clip-v2 stage: plain vs gradient caching, with and without gradient checkpointing.

A step is what ``training/stage.py`` does per batch (paper eq. 3): embed a text batch (pairs; stage 3: query,
positive and 7 hard negatives) and an image-text batch, the joint InfoNCE / InfoNCE+ loss summed over the Matryoshka
widths with globally gathered negatives (``training.losses.joint_loss``), backward, AdamW step (betas 0.9/0.98,
eps 1e-6, weight decay 0.02; built here with ``torch.optim.AdamW``), temperature clamp. Mixed precision as in
Accelerate's ``bf16``: fp32 weights and optimiser, bf16 autocast (CUDA); fp32 on CPU.

Per stage and variant: median step time, samples/s (text pairs or triplets + image-text pairs), model-FLOPs MFU,
hardware-FLOPs HFU (with the checkpointing recompute and gradient caching's extra pass), peak memory, and the loss
path (Matryoshka sum, gather) timed on its own as a share of the step.

Stage settings (sequence length, resolution, batch sizes, negatives) are read from ``training/configs/stage{N}.yaml``
when present, else from the paper's Table 6. The paper's batches are global over 8 H100s (16384 per task in stage 1)
and only fit through gradient caching; a step here uses a per-device micro batch (``--text-batch`` /
``--image-batch``, default per stage below), halved until the plain step fits, and every variant runs at that
same batch so their times compare directly.

    python -m jina_clip_v2.benchmarks.train_step                      # real size, CUDA -> benchmarks/results/train_step.json + .md
    python -m jina_clip_v2.benchmarks.train_step --tiny --device cpu  # seconds, for CI
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from jina_clip_v2.benchmarks import common
from jina_clip_v2.benchmarks.flops import (
    contrastive_loss_flops,
    detect_peak_tflops,
    mfu,
    text_forward_flops,
    train_step_flops,
    vision_forward_flops,
    vision_train_tokens,
)

# Paper Table 6 (global batch sizes over 8 GPUs). Stage 1's resolution grows 224 -> 384; the step is benchmarked at 224.
PAPER_STAGES = {
    1: {"seq_len": 77, "image_size": 224, "image_text_batch": 16384, "text_batch": 16384, "negatives": 0},
    2: {"seq_len": 512, "image_size": 384, "image_text_batch": 8192, "text_batch": 8192, "negatives": 0},
    3: {"seq_len": 512, "image_size": 512, "image_text_batch": 1024, "text_batch": 128, "negatives": 7},
}
PAPER_GPUS = 8
# Per-device micro batches the real-size step starts from (halved on OOM): text pairs / triplets, image-text pairs.
REAL_MICRO = {1: (128, 128), 2: (32, 32), 3: (4, 32)}
TINY_STAGE = {1: {"seq_len": 16, "image_size": 28}, 2: {"seq_len": 32, "image_size": 42}, 3: {"seq_len": 32, "image_size": 56}}
TINY_MICRO = {1: (4, 4), 2: (4, 4), 3: (2, 4)}
VARIANTS = {
    "plain": {"grad_cache": False, "checkpointing": False},
    "checkpointing": {"grad_cache": False, "checkpointing": True},
    "grad_cache": {"grad_cache": True, "checkpointing": False},
    "grad_cache+checkpointing": {"grad_cache": True, "checkpointing": True},
}
YAML_KEYS = {
    "seq_len": ("max_seq_length", "max_length", "seq_len", "max_text_length", "text_max_length", "sequence_length", "max_seq_len"),
    "image_size": ("image_size", "resolution", "img_size", "image_resolution"),
    "image_text_batch": ("image_text_batch_size", "image_batch_size", "mm_batch_size", "batch_size_image_text"),
    "text_batch": ("text_batch_size", "text_pairs_batch_size", "text_pair_batch_size", "batch_size_text", "triplet_batch_size"),
    "negatives": ("num_negatives", "hard_negatives", "negatives_per_query", "num_hard_negatives"),
}
# Children of a mapping whose key contains "batch" (e.g. `batch_size: {text: 16384, image_text: 16384}`).
YAML_BATCH_CHILDREN = {"image_text_batch": ("image_text", "image", "images", "mm"), "text_batch": ("text", "texts", "text_pairs", "triplets")}


# ----------------------------------------------------------------------------------------------------
# Stage settings
# ----------------------------------------------------------------------------------------------------


def _find_key(tree, names: Sequence[str], batch_children: Sequence[str] = (), skip: Sequence[str] = ()):
    """First positive int (or list of ints: the first of a growing schedule, e.g. 224 ... 384) under any of
    ``names``, or under one of ``batch_children`` inside a mapping whose key mentions "batch"; breadth-first.
    Returns (value, dotted key) or (None, None)."""

    def as_int(value):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return min(value)
        return None

    queue = [(tree, "")]
    while queue:
        node, where = queue.pop(0)
        if isinstance(node, dict):
            for name in names:
                if as_int(node.get(name)) is not None:
                    return as_int(node[name]), where + name
            for key, child in node.items():
                if isinstance(child, dict) and "batch" in str(key).lower():
                    for name in batch_children:
                        if as_int(child.get(name)) is not None:
                            return as_int(child[name]), f"{where}{key}.{name}"
            queue.extend((v, f"{where}{k}.") for k, v in node.items() if isinstance(v, (dict, list)) and k not in skip)
        elif isinstance(node, list):
            queue.extend((v, f"{where}[{i}].") for i, v in enumerate(node) if isinstance(v, (dict, list)))
    return None, None


# training/stage.py's layout (training/configs/*.yaml): `data.text` / `data.image_text` blocks, the resolution under
# `model`, and per-stage overrides in `stages: {N: {...}}` on top of a base block whose `stage:` says which it is.
STAGE_YAML_PATHS = {
    "seq_len": (("data", "text", "max_length"), ("data", "image_text", "max_length")),
    "image_size": (("model", "image_size"), ("model", "config", "vision_config", "image_size")),
    "text_batch": (("data", "text", "batch_size"),),
    "image_text_batch": (("data", "image_text", "batch_size"),),
    "negatives": (("data", "text", "num_negatives"),),
}
SKIP_SUBTREES = ("stages", "resolution_switch")  # other stages' values / a later resolution: never the answer


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _at(tree, path: Sequence[str]):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def stage_settings(stage: int, configs_dir: Path | None = None) -> dict:
    """Sequence length, resolution, global batch sizes and negatives of ``stage``, each with its source: the
    stage's YAML (training/stage.py's layout first, then any recognisable key), else the paper's Table 6."""
    settings = dict(PAPER_STAGES[stage])
    sources = {key: "paper Table 6" for key in settings}
    path = (configs_dir or common.ROOT / "training" / "configs") / f"stage{stage}.yaml"
    if path.is_file():
        shown = path.relative_to(common.ROOT) if path.is_relative_to(common.ROOT) else path
        try:
            import yaml

            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except Exception as err:  # noqa: BLE001 - an unreadable config falls back to the paper, and says so
            sources["yaml_error"] = f"{type(err).__name__}: {err}"
            tree = {}
        if not isinstance(tree, dict):
            tree = {}
        stages = tree.get("stages") if isinstance(tree.get("stages"), dict) else {}
        override = stages.get(stage) or stages.get(str(stage))
        if isinstance(override, dict) and tree.get("stage", stage) != stage:
            tree = _deep_merge(tree, override)
        generic = {k: v for k, v in tree.items() if k not in SKIP_SUBTREES}
        for key, names in YAML_KEYS.items():
            found = [(value, ".".join(p)) for p in STAGE_YAML_PATHS[key]
                     if isinstance(value := _at(tree, p), int) and not isinstance(value, bool) and value > 0]
            if key == "seq_len" and found:
                found = [max(found)]  # texts and captions share one length in the benchmark: the longer one
            if not found:
                value, name = _find_key(generic, names, YAML_BATCH_CHILDREN.get(key, ()), skip=SKIP_SUBTREES)
                found = [(value, name)] if value is not None else []
            if found:
                settings[key], sources[key] = found[0][0], f"{shown}:{found[0][1]}"
        if sources["negatives"] == "paper Table 6" and _at(tree, ("data", "text", "kind")) in ("text_pairs",):
            settings["negatives"], sources["negatives"] = 0, f"{shown}:data.text.kind=text_pairs"
        dropout = _at(tree, ("model", "config", "vision_config", "patch_dropout"))
        if isinstance(dropout, (int, float)) and not isinstance(dropout, bool):
            settings["patch_dropout"], sources["patch_dropout"] = float(dropout), f"{shown}:model.config.vision_config.patch_dropout"
    settings["sources"] = sources
    return settings


# ----------------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------------


def matryoshka_dims(config) -> list[int]:
    """The training widths (section 3.4: 64 ... 1024) where they fit the embedding, else the config's."""
    from jina_clip_v2.training.losses import MATRYOSHKA_DIMS

    width = config.projection_dim
    dims = [d for d in MATRYOSHKA_DIMS if d <= width]
    return dims if dims and dims[-1] == width else list(config.matryoshka_dimensions)


def make_batch(config, stage: dict, text_batch: int, image_batch: int, device: torch.device, seed: int) -> dict:
    """Random full-length texts (all tokens real: the step's work is well defined) and random pixels.

    Texts in one tensor, in the order [queries; positives; negatives (stage 3); captions]: one text forward."""
    generator = torch.Generator().manual_seed(seed)
    negatives = stage["negatives"]
    num_texts = text_batch * (2 + negatives) + image_batch
    seq = stage["seq_len"]
    ids = torch.randint(4, config.text_config.vocab_size, (num_texts, seq), generator=generator)
    ids[:, 0], ids[:, -1] = 0, 2
    size = stage["image_size"]
    return {
        "text": {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)},
        "pixel_values": torch.randn(image_batch, 3, size, size, generator=generator).to(device),
        "counts": [text_batch, text_batch, text_batch * negatives, image_batch],
        "negatives": negatives,
    }


class Trainer:
    """Model, the two task temperatures and AdamW over both; one ``step`` per call."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype, dims: list[int], chunks: int):
        from jina_clip_v2.training.losses import LearnableTemperature

        self.model, self.device, self.dtype, self.dims, self.chunks = model, device, dtype, dims, chunks
        self.text_temperature = LearnableTemperature().to(device)
        self.image_temperature = LearnableTemperature().to(device)
        self.optimizer = None
        self.base_patch_dropout = model.config.vision_config.patch_dropout

    def build_optimizer(self) -> None:
        """After ``set_image_size`` (which replaces the position table): AdamW with the paper's hyper-parameters."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += list(self.text_temperature.parameters()) + list(self.image_temperature.parameters())
        self.optimizer = torch.optim.AdamW(
            params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.02, fused=self.device.type == "cuda"
        )

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def encode_text(self, chunk: dict) -> torch.Tensor:
        with self.autocast():
            return self.model.get_text_features(chunk["input_ids"], attention_mask=chunk["attention_mask"]).pooler_output

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model.get_image_features(pixels).pooler_output

    def loss(self, batch: dict, text_embeds: torch.Tensor, image_embeds: torch.Tensor, dims=None, gather: bool = True):
        from jina_clip_v2.training.losses import joint_loss

        queries, positives, negatives, captions = text_embeds.split(batch["counts"])
        k = batch["negatives"]
        return joint_loss(
            queries, positives, captions, image_embeds,
            text_temperature=self.text_temperature(), image_temperature=self.image_temperature(),
            text_negatives=negatives.reshape(queries.shape[0], k, -1) if k else None,
            dims=self.dims if dims is None else dims, gather=gather,
        )

    def step(self, batch: dict, grad_cache: bool):
        from jina_clip_v2.training.losses import grad_cache_step, split_batch

        if grad_cache:
            texts, images = batch["text"], batch["pixel_values"]
            text_chunk = max(1, math.ceil(texts["input_ids"].shape[0] / self.chunks))
            image_chunk = max(1, math.ceil(images.shape[0] / self.chunks))
            out = grad_cache_step(
                lambda t, i: self.loss(batch, t, i),
                [(self.encode_text, split_batch(texts, text_chunk)), (self.encode_image, split_batch(images, image_chunk))],
            )
        else:
            out = self.loss(batch, self.encode_text(batch["text"]), self.encode_image(batch["pixel_values"]))
            out.loss.backward()
            out = out.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.text_temperature.clamp_()
        self.image_temperature.clamp_()
        return out


def step_flops(config, stage: dict, text_batch: int, image_batch: int, dims: list[int]) -> dict:
    """Forward FLOPs of one step: every text at full length, images with the training token count, the loss."""
    num_texts = text_batch * (2 + stage["negatives"]) + image_batch
    text = text_forward_flops(config.text_config, [stage["seq_len"]] * num_texts)["total"]
    vision_tokens = vision_train_tokens(config.vision_config, stage["image_size"])
    vision = vision_forward_flops(config.vision_config, stage["image_size"], num_tokens=vision_tokens)["total"] * image_batch
    loss = contrastive_loss_flops(text_batch, dims, stage["negatives"]) + contrastive_loss_flops(image_batch, dims)
    return {"text_forward": text, "vision_forward": vision, "loss_forward": loss, "towers_forward": text + vision}


def loss_path(trainer: Trainer, batch: dict, args, width: int) -> dict:
    """The loss alone (forward + backward on leaf embeddings of the step's shapes): full (Matryoshka + gather),
    full width only, and without the gather; the differences are the Matryoshka and gather overheads."""
    device = trainer.device
    emb_dtype = trainer.dtype  # towers emit autocast-dtype embeddings
    n_text, n_image = sum(batch["counts"]), batch["pixel_values"].shape[0]
    generator = torch.Generator().manual_seed(1)
    text = torch.randn(n_text, width, generator=generator).to(device, emb_dtype)
    image = torch.randn(n_image, width, generator=generator).to(device, emb_dtype)

    def run(dims, gather):
        t, i = text.detach().requires_grad_(), image.detach().requires_grad_()
        trainer.loss(batch, t, i, dims=dims, gather=gather).loss.backward()

    out = {}
    for name, dims, gather in (("full", None, True), ("single_width", [width], True), ("no_gather", None, False)):
        timing = common.timed(lambda d=dims, g=gather: run(d, g), device, args.warmup, args.iters)
        out[name + "_s"] = timing.get("median_s")
    if out["full_s"] is not None and out["single_width_s"] is not None:
        out["matryoshka_overhead_s"] = out["full_s"] - out["single_width_s"]
    if out["full_s"] is not None and out["no_gather_s"] is not None:
        out["gather_overhead_s"] = out["full_s"] - out["no_gather_s"]
    world = torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1
    out["world_size"] = world
    out["note"] = ("single process: gather_with_grad is the identity, so the gather overhead is ~0 here; on N GPUs "
                   "it adds an all-gather of the embeddings and N-times-larger logits") if world == 1 else None
    return out


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------


def run_variant(trainer: Trainer, batch: dict, name: str, args) -> dict:
    spec = VARIANTS[name]
    common.set_checkpointing(trainer.model, spec["checkpointing"])
    trainer.optimizer.zero_grad(set_to_none=True)
    last = {}

    def step():
        last["out"] = trainer.step(batch, spec["grad_cache"])

    run = {"variant": name, **spec, "grad_cache_chunks": args.chunks if spec["grad_cache"] else None}
    run.update(common.timed(step, trainer.device, args.warmup, args.iters))
    trainer.optimizer.zero_grad(set_to_none=True)
    common.set_checkpointing(trainer.model, False)
    if run["status"] == "ok":
        loss = float(last["out"].loss)
        run["loss"] = loss
        run["loss_finite"] = math.isfinite(loss)
    return run


def bench_stage(model, trainer: Trainer, stage_id: int, args, base_pos, base_size, peak, config) -> dict:
    device = trainer.device
    stage = stage_settings(stage_id, Path(args.configs_dir) if args.configs_dir else None)
    if args.tiny:
        stage.update(TINY_STAGE[stage_id])
        stage["sources"].update({"seq_len": "tiny", "image_size": "tiny"})
    text_batch, image_batch = (TINY_MICRO if args.tiny else REAL_MICRO)[stage_id]
    text_batch = args.text_batch or text_batch
    image_batch = args.image_batch or image_batch
    common.use_image_size(model, stage["image_size"], base_pos, base_size)
    # Patch dropout keeps fewer vision tokens at train time (the FLOPs follow the config): the stage's, else the model's.
    model.config.vision_config.patch_dropout = stage.get("patch_dropout", trainer.base_patch_dropout)
    stage["patch_dropout_used"] = model.config.vision_config.patch_dropout
    trainer.build_optimizer()
    dims = trainer.dims
    out = {"stage": stage_id, "settings": stage, "matryoshka_dims": dims,
           "global_batch_per_gpu_at_8_gpus": {"text": stage["text_batch"] // PAPER_GPUS, "image_text": stage["image_text_batch"] // PAPER_GPUS},
           "runs": [], "batch_search": []}
    variants = list(args.variants)
    # The largest batch (halving from the start) at which the first variant fits; every variant then uses it.
    while True:
        batch = make_batch(config, stage, text_batch, image_batch, device, args.seed)
        first = run_variant(trainer, batch, variants[0], args)
        out["batch_search"].append({"text_batch": text_batch, "image_batch": image_batch, "status": first["status"]})
        if first["status"] != "oom" or (text_batch == 1 and image_batch == 1):
            break
        del batch
        common.free_memory(device, collect=True)
        text_batch, image_batch = max(1, text_batch // 2), max(1, image_batch // 2)
    out["text_batch"], out["image_batch"] = text_batch, image_batch
    flops = step_flops(config, stage, text_batch, image_batch, dims)
    out["flops_forward"] = flops
    samples = text_batch + image_batch
    runs = [first] + [run_variant(trainer, batch, name, args) for name in variants[1:]]
    for run in runs:
        run.update({"text_batch": text_batch, "image_batch": image_batch, "samples_per_step": samples})
        step = train_step_flops(flops["towers_forward"], loss_forward_flops=flops["loss_forward"],
                                gradient_checkpointing=run["checkpointing"], grad_cache=run["grad_cache"])
        run["model_flops"], run["hardware_flops"] = step["model"], step["hardware"]
        if run["status"] == "ok":
            seconds = run["median_s"]
            run["samples_per_s"] = samples / seconds
            run["images_per_s"] = image_batch / seconds
            run["text_tokens_per_s"] = sum(batch["counts"]) * stage["seq_len"] / seconds
            run["tflops_per_s"] = step["model"] / seconds / 1e12
            run["mfu"] = mfu(step["model"], seconds, peak)
            run["hfu"] = mfu(step["hardware"], seconds, peak)
    out["runs"] = runs
    if not args.skip_loss_path and first["status"] == "ok":
        path = loss_path(trainer, batch, args, config.projection_dim)
        plain = next((r for r in runs if r["variant"] == "plain" and r["status"] == "ok"), None)
        if plain and path.get("full_s") is not None:
            path["share_of_plain_step"] = path["full_s"] / plain["median_s"]
            for key in ("matryoshka_overhead_s", "gather_overhead_s"):
                if path.get(key) is not None:
                    path[key[: -len("_s")] + "_share"] = path[key] / plain["median_s"]
        out["loss_path"] = path
    ratios = {}
    by_name = {r["variant"]: r for r in runs if r["status"] == "ok"}
    for cached, base in (("grad_cache", "plain"), ("grad_cache+checkpointing", "checkpointing")):
        if cached in by_name and base in by_name:
            ratios[f"{cached} / {base}"] = by_name[cached]["median_s"] / by_name[base]["median_s"]
    out["step_time_ratios"] = ratios
    del batch
    common.free_memory(device, collect=True)
    return out


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
        targets.append(common.target(
            f"grad_cache_overhead_stage{stage_id}", f"stage-{stage_id} gradient-caching step time / plain step time, same batch",
            1.35, ratio, higher_is_better=False, unit="x", force_unmeasured=not_real,
            note=f"{args_chunks(result)} chunks per group",
        ))
    return targets


def args_chunks(result: dict) -> int:
    return result["settings"]["chunks"]


def markdown(result: dict) -> str:
    out = ["# Training-step benchmark\n\n", common.md_environment(result), "\n## Targets\n\n", common.md_targets(result["targets"])]
    rows, loss_rows = [], []
    for stage in result["stages"]:
        st = stage["settings"]
        for r in stage["runs"]:
            rows.append([stage["stage"], f"{st['seq_len']} tok / {st['image_size']} px", r["variant"],
                         f"{r['text_batch']}x{2 + st['negatives']} / {r['image_batch']}", r["status"],
                         common.fmt(r.get("median_s"), ".4g"), common.fmt(r.get("samples_per_s"), ".4g"),
                         common.fmt(r.get("tflops_per_s"), ".3g"), common.fmt_pct(r.get("mfu")), common.fmt_pct(r.get("hfu")),
                         common.fmt_bytes(r.get("peak_memory_bytes"))])
        lp = stage.get("loss_path") or {}
        loss_rows.append([stage["stage"], common.fmt(lp.get("full_s"), ".3g"), common.fmt_pct(lp.get("share_of_plain_step")),
                          common.fmt_pct(lp.get("matryoshka_overhead_share")), common.fmt_pct(lp.get("gather_overhead_share")),
                          ", ".join(f"{k} = {v:.3f}" for k, v in stage["step_time_ratios"].items()) or "-"])
    out += ["\n## Steps\n\nBatch: text rows x texts per row (pairs 2, triplets with 7 negatives 9) / image-text pairs. "
            "MFU on model FLOPs (3 x forward); HFU adds recompute and gradient caching's extra pass.\n\n",
            common.md_table(["stage", "shape", "variant", "batch", "status", "median s", "samples/s", "TFLOP/s", "MFU", "HFU", "peak mem"], rows),
            "\n## Loss path and gradient-caching overhead\n\n",
            common.md_table(["stage", "loss fwd+bwd s", "share of plain step", "Matryoshka share", "gather share", "step-time ratios"], loss_rows)]
    return "".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="jina-clip-v2 training-step benchmark",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast dtype (weights stay fp32); auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--model", default=None, help="local folder of a checkpoint (default: random weights)")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="the first one decides the batch (halved until it fits)")
    p.add_argument("--text-batch", type=int, default=None, help="per-device text pairs / triplets (default per stage)")
    p.add_argument("--image-batch", type=int, default=None, help="per-device image-text pairs (default per stage)")
    p.add_argument("--chunks", type=int, default=4, help="gradient-caching chunks per embedding group")
    p.add_argument("--configs-dir", default=None, help="folder of stage{N}.yaml (default training/configs)")
    p.add_argument("--skip-loss-path", action="store_true")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 with --tiny on CPU, where thread sync costs more than tiny ops; else torch's)")
    p.add_argument("--out", default=None, help="JSON path (markdown next to it); default benchmarks/results/train_step[_tiny].json")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 2
    if args.iters is None:
        args.iters = 2 if args.tiny else 5
    if args.out is None:
        args.out = str(common.ROOT / "benchmarks" / "results" / ("train_step_tiny.json" if args.tiny else "train_step.json"))
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, run, write ``--out`` (JSON) and its ``.md``; returns the result dict."""
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    with common.cpu_threads(args.threads, tiny=args.tiny, device=device):
        return run(args, device)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    dtype = common.resolve_dtype(args.dtype, device)
    peak, peak_source = detect_peak_tflops(device, dtype, args.peak_tflops)
    config = common.build_config(args.tiny, args.model)
    model = common.build_model(config, device, args.model, seed=args.seed).train()
    common.set_attn(model, "sdpa")
    base_size = config.vision_config.image_size
    base_pos = model.vision_model.pos_embed.detach().float().clone()
    trainer = Trainer(model, device, dtype, matryoshka_dims(config), args.chunks)
    settings = dict(vars(args))
    settings["dtype"] = common.dtype_name(dtype)
    settings["precision"] = "fp32 weights + optimiser, autocast " + common.dtype_name(dtype)
    settings["optimizer"] = "torch.optim.AdamW(lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.02, fused on CUDA)"
    result = common.header({
        "benchmark": "train_step",
        "env": common.env_info(device),
        "settings": settings,
        "config": common.config_summary(config),
        "parameters": {"text": common.count_parameters(model.text_model), "vision": common.count_parameters(model.vision_model)},
        "peak_tflops": peak,
        "peak_tflops_source": peak_source,
        "stages": [],
    })
    for stage_id in args.stages:
        result["stages"].append(bench_stage(model, trainer, stage_id, args, base_pos, base_size, peak, config))
    result["targets"] = compute_targets(result)
    json_path, md_path = common.write_results(result, markdown(result), args.out)
    print(f"wrote {json_path} and {md_path}")
    print(common.md_targets(result["targets"]))
    return result


if __name__ == "__main__":
    main()
