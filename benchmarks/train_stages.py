"""The stage setup the training-step benchmarks share (``train_step.py`` times steps, ``train_memory.py`` scales
batches): each stage's config and settings from training's own config files (the paper's Table 6), the tiny shapes,
the benchmark's variants and batches."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from jina_clip_v2.benchmarks import common
from jina_clip_v2.training.batches import ImageTextBatch, TextBatch
from jina_clip_v2.training.config import StageConfig, load_config
from jina_clip_v2.training.step import TrainStep

PAPER_GPUS = 8  # Table 6's batch sizes are global over 8 GPUs
# Per-device micro batches the real-size step starts from (halved on OOM): text pairs / triplets, image-text pairs.
REAL_MICRO = {1: (128, 128), 2: (32, 32), 3: (4, 32)}
TINY_STAGE = {1: {"seq_len": 16, "image_size": 28}, 2: {"seq_len": 32, "image_size": 42}, 3: {"seq_len": 32, "image_size": 56}}
TINY_MICRO = {1: (4, 4), 2: (4, 4), 3: (2, 4)}
# Gradient-caching chunk sizes (rows per forward with activations, as train.grad_cache) of the tiny model: the stage
# configs' sizes are meant for the real model on an 80 GB GPU and exceed every tiny batch (one chunk, nothing cached
# chunk by chunk); 3 splits the tiny batches unevenly (4 -> 3 + 1, stage 3's 14 negatives -> 3 x 4 + 2).
TINY_CHUNK_SIZES = {"text": 3, "image": 3}
VARIANTS = {
    "plain": {"grad_cache": False, "checkpointing": False},
    "checkpointing": {"grad_cache": False, "checkpointing": True},
    "grad_cache": {"grad_cache": True, "checkpointing": False},
    "grad_cache+checkpointing": {"grad_cache": True, "checkpointing": True},
}
SHIPPED_CONFIGS = common.ROOT / "training" / "configs"


def stage_config(stage: int, configs_dir: Path | None = None) -> tuple[StageConfig, str]:
    """The stage's config, read by training's loader, and where it came from: ``configs_dir``/stage{N}.yaml,
    else the shipped one (the paper's Table 6)."""
    path = Path(configs_dir or SHIPPED_CONFIGS) / f"stage{stage}.yaml"
    if path.is_file():
        shown = path.relative_to(common.ROOT) if path.is_relative_to(common.ROOT) else path
        return load_config(path, [f"stage={stage}"]), str(shown)
    return load_config(SHIPPED_CONFIGS / f"stage{stage}.yaml"), "paper Table 6"


def stage_settings(stage: int, configs_dir: Path | None = None) -> dict:
    """Sequence length, resolution, global batch sizes and hard negatives of ``stage`` from its config, each with
    its source (``file:dotted.key``)."""
    cfg, shown = stage_config(stage, configs_dir)
    where = (lambda key: shown) if shown == "paper Table 6" else (lambda key: f"{shown}:{key}")
    text, image_text = cfg.data.text, cfg.data.image_text
    longer = "data.text.max_length" if text.max_length >= image_text.max_length else "data.image_text.max_length"
    vision = (cfg.model.config or {}).get("vision_config") or {}
    if cfg.model.image_size is not None:
        image_size, image_key = cfg.model.image_size, "model.image_size"
    else:
        image_size, image_key = vision.get("image_size"), "model.config.vision_config.image_size"
    triplets = text.kind == "text_triplets"
    settings = {
        "seq_len": max(text.max_length, image_text.max_length),
        "image_size": image_size,
        "text_batch": text.batch_size,
        "image_text_batch": image_text.batch_size,
        "negatives": text.num_negatives if triplets else 0,
    }
    sources = {
        "seq_len": where(longer),
        "image_size": where(image_key),
        "text_batch": where("data.text.batch_size"),
        "image_text_batch": where("data.image_text.batch_size"),
        "negatives": where("data.text.num_negatives" if triplets else "data.text.kind=text_pairs"),
    }
    if "patch_dropout" in vision:
        settings["patch_dropout"], sources["patch_dropout"] = float(vision["patch_dropout"]), where(
            "model.config.vision_config.patch_dropout"
        )
    settings["sources"] = sources
    return settings


def chunk_sizes(stage: int, args) -> dict:
    """Gradient-caching chunk sizes in samples per forward, as the trainer takes them (``train.grad_cache.
    {text,image}_chunk_size``, per process): ``--text-chunk-size`` / ``--image-chunk-size``, else the tiny model's
    (``TINY_CHUNK_SIZES``) with ``--tiny``, else the stage config's own; each with its source."""
    configs_dir = Path(args.configs_dir) if args.configs_dir else None
    cfg, shown = stage_config(stage, configs_dir)
    shown = str(SHIPPED_CONFIGS.relative_to(common.ROOT) / f"stage{stage}.yaml") if shown == "paper Table 6" else shown
    out, sources = {}, {}
    for tower in ("text", "image"):
        explicit = getattr(args, f"{tower}_chunk_size")
        if explicit is not None:
            out[tower], sources[tower] = explicit, f"--{tower}-chunk-size"
        elif args.tiny:
            out[tower], sources[tower] = TINY_CHUNK_SIZES[tower], "tiny"
        else:
            out[tower] = getattr(cfg.train.grad_cache, f"{tower}_chunk_size")
            sources[tower] = f"{shown}:train.grad_cache.{tower}_chunk_size"
    return {**out, "sources": sources}


def bench_config(cfg: StageConfig, model_config, text_chunk_size: int, image_chunk_size: int) -> StageConfig:
    """The stage's config for the benchmark model: the Matryoshka widths that fit its embedding (the config's,
    else the model's own), and the gradient-caching chunk sizes (samples per forward: every text group,
    queries, positives, negatives and captions, is split into chunks of ``text_chunk_size`` rows, the images
    into chunks of ``image_chunk_size``, exactly as in training)."""
    width = model_config.projection_dim
    dims = cfg.loss.matryoshka_dims
    if dims is not None and max(dims) > width:
        dims = list(model_config.matryoshka_dimensions)
    grad_cache = dataclasses.replace(cfg.train.grad_cache, text_chunk_size=text_chunk_size, image_chunk_size=image_chunk_size)
    train = dataclasses.replace(cfg.train, grad_cache=grad_cache, log_with=[])
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, matryoshka_dims=dims), train=train)


def make_batches(config, stage: dict, text_batch: int, image_batch: int, seed: int) -> tuple[TextBatch, ImageTextBatch]:
    """Random full-length texts (all tokens real: the step's work is well defined) and random pixels, as the data
    streams batch them: queries, positives, ``negatives`` per query (stage 3), captions and images."""
    generator = torch.Generator().manual_seed(seed)
    seq, negatives = stage["seq_len"], stage["negatives"]

    def texts(rows: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(4, config.text_config.vocab_size, (rows, seq), generator=generator)
        ids[:, 0], ids[:, -1] = 0, 2
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    text = TextBatch(texts(text_batch), texts(text_batch), texts(text_batch * negatives) if negatives else None, negatives)
    size = stage["image_size"]
    image = ImageTextBatch(torch.randn(image_batch, 3, size, size, generator=generator), texts(image_batch))
    return text, image


def chunk_settings(step: TrainStep) -> dict[str, int]:
    return {"text": step.grad_cache.text_chunk_size, "image": step.grad_cache.image_chunk_size}


def chunk_counts(step: TrainStep, text: TextBatch, image: ImageTextBatch) -> dict[str, int]:
    """Chunks per embedding group of a gradient-caching step (``TrainStep`` splits each group by its tower's size)."""
    texts, images = step.groups(text, image)
    sizes = chunk_settings(step)
    counts = {name: math.ceil(enc["input_ids"].shape[0] / sizes["text"]) for name, enc in texts.items()}
    counts.update({name: math.ceil(pixels.shape[0] / sizes["image"]) for name, pixels in images.items()})
    return counts


def prepare_stage(model, stage_id: int, args, base) -> tuple[StageConfig, dict]:
    """The stage's config and settings (tiny shapes with ``--tiny``), with the model's patch dropout set to the
    stage's. ``base``: the model's original ``pos_embed``, ``image_size`` and ``patch_dropout`` (the default when
    the stage config names none)."""
    cfg, _ = stage_config(stage_id, Path(args.configs_dir) if args.configs_dir else None)
    stage = stage_settings(stage_id, Path(args.configs_dir) if args.configs_dir else None)
    if args.tiny:
        stage.update(TINY_STAGE[stage_id])
        stage["sources"].update({"seq_len": "tiny", "image_size": "tiny"})
    # Patch dropout keeps fewer vision tokens at train time (the FLOPs follow the config): the stage's, else the model's.
    model.config.vision_config.patch_dropout = stage.get("patch_dropout", base["patch_dropout"])
    stage["patch_dropout_used"] = model.config.vision_config.patch_dropout
    return cfg, stage


def md_environment(result: dict) -> str:
    """``common.md_environment``, naming a ``--layers`` model for what it is (real width, not real size)."""
    layers = result["settings"].get("layers")
    text = common.md_environment(result)
    return text.replace("config: real size", f"config: real width, {layers} layer(s) per tower") if layers else text
