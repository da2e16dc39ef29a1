"""Gradient caching through the trainer's own step (training/step.py ``TrainStep``, training/grad_cache.py), on
the tiny model: chunk sizes in samples (3 rows, which divides none of the batches) give the plain step's loss,
gradients, gradient norm and RNG state, for stage-1 pairs and stage-3 triplets with 7 hard negatives; and the
chunk size, not the batch, bounds the rows of every encoder forward.

With dropout active (hidden and attention dropout in the text tower, patch dropout in the vision tower) a
plain step over the whole batch draws other masks than any chunked encoding can (one draw per layer for all
rows, instead of one per chunk and layer), so there the plain reference is the same ``TrainStep`` whose encoder
runs the chunks one after another with a graph: what gradient caching replays (its first pass draws the masks,
the re-encoding replays them from the saved RNG state). Without dropout the reference is the plain step itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from _tiny import ROOT, tiny_model
from jina_clip_v2.training import grad_cache
from jina_clip_v2.training.batches import ImageTextBatch, TextBatch
from jina_clip_v2.training.config import load_config
from jina_clip_v2.training.grad_cache import split_batch
from jina_clip_v2.training.launch import build_accelerator, reset_accelerate_state
from jina_clip_v2.training.step import TrainStep

TINY = ROOT / "training" / "configs" / "tiny.yaml"
CHUNK = 3  # rows per chunk: divides none of the batches below (4 or 8 rows, 28 or 56 negatives)
TEMPERATURES = {"text": 0.05, "image_text": 0.07}
DROPOUT = {"text": {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}, "vision": {"patch_dropout": 0.25}}
# fp32: every gradient element (clipped to a global norm of 1) within 1e-6 absolute; the loss (~50) and the
# norm before clipping (~500) within 1e-6 relative (their absolute resolution in fp32 is 4e-6 / 3e-5).
TOLERANCE = 1e-6


@pytest.fixture
def accelerator(tmp_path):
    # Not tiny.yaml's deterministic / cpu_threads: both would change the whole test process.
    cfg = load_config(TINY, ["train.log_with=[]", "train.deterministic=false", "train.cpu_threads=null"])
    accelerator = build_accelerator(cfg, tmp_path, cpu=True)
    yield accelerator
    reset_accelerate_state()


def stage_config(stage: int, *, enabled: bool):
    """tiny.yaml's stage (1: text pairs; 3: triplets with 7 negatives) for the tests' 32-wide tiny model, with
    gradient caching in chunks of ``CHUNK`` samples per tower when ``enabled``."""
    return load_config(TINY, [
        f"stage={stage}", "model.init_from=null", "train.log_with=[]", "loss.matryoshka_dims=[8, 16, 32]",
        f"train.grad_cache={{enabled: {str(enabled).lower()}, text_chunk_size: {CHUNK}, image_chunk_size: {CHUNK}}}",
    ])


def texts(rows: int, generator: torch.Generator, length: int = 12) -> dict[str, torch.Tensor]:
    """Right-padded random texts of 3..length tokens (<s> ... </s>, pad id 1), as the data stream batches them."""
    lengths = torch.randint(3, length + 1, (rows,), generator=generator)
    ids = torch.randint(4, 1000, (rows, length), generator=generator)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids[:, 0] = 0
    ids[torch.arange(rows), lengths - 1] = 2
    return {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}


def batches(stage: int, rows: int, seed: int = 0) -> tuple[TextBatch, ImageTextBatch]:
    generator = torch.Generator().manual_seed(seed)
    negatives = 7 if stage == 3 else 0
    text = TextBatch(texts(rows, generator), texts(rows, generator),
                     texts(rows * negatives, generator) if negatives else None, negatives)
    image = ImageTextBatch(torch.randn(rows, 3, 56, 56, generator=generator), texts(rows, generator))
    return text, image


class ChunkedEncoder(nn.Module):
    """The plain reference under dropout: the wrapped encoder run with a graph on the chunks gradient caching
    uses, in its order (each text group chunk by chunk, then the images), so the dropout draws are the same."""

    def __init__(self, encoder: nn.Module, chunk_size: int):
        super().__init__()
        self.encoder, self.chunk_size = encoder, chunk_size

    def forward(self, texts: dict | None = None, images: dict | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for name, encoding in (texts or {}).items():
            out[name] = torch.cat([self.encoder(texts={name: c})[name] for c in split_batch(encoding, self.chunk_size)])
        for name, pixels in (images or {}).items():
            out[name] = torch.cat([self.encoder(images={name: c})[name] for c in split_batch(pixels, self.chunk_size)])
        return out


def run_step(step: TrainStep, text: TextBatch, image: ImageTextBatch, seed: int = 7) -> dict:
    """One call of the trainer's step from a fixed RNG state; returns its loss, the gradients the optimizer
    stepped with (after clipping), the global norm before clipping, and the CPU RNG state it left."""
    grads: dict[str, torch.Tensor] = {}
    named = [*step.model.named_parameters(), *(("temperature." + n, p) for n, p in step.temperatures.named_parameters())]

    def capture(optimizer, args, kwargs):
        grads.update({name: p.grad.detach().clone() for name, p in named if p.grad is not None})

    handle = step.optimizer.optimizer.register_step_pre_hook(capture)
    torch.manual_seed(seed)
    try:
        output = step(text, image)
    finally:
        handle.remove()
    return {"loss": output.loss, "text_loss": output.text.loss, "image_loss": output.image_text.loss, "grads": grads,
            "grad_norm": step.last_grad_norm, "rng": torch.get_rng_state()}


def assert_same_step(cached: dict, plain: dict) -> None:
    for key in ("loss", "text_loss", "image_loss", "grad_norm"):
        a, b = float(cached[key]), float(plain[key])
        assert abs(a - b) <= TOLERANCE * max(1.0, abs(b)), (key, a, b)
    assert cached["grads"].keys() == plain["grads"].keys() and len(plain["grads"]) > 20
    for name, grad in plain["grads"].items():
        difference = float((cached["grads"][name] - grad).abs().max())
        assert difference <= TOLERANCE, (name, difference, float(grad.abs().max()))
    assert torch.equal(cached["rng"], plain["rng"])  # the generators end where the plain pass leaves them


def two_steps(stage: int, accelerator, dropout: bool) -> tuple[TrainStep, TrainStep]:
    """A gradient-caching step and a plain one around two identical tiny models (seeded init)."""
    overrides = DROPOUT if dropout else {}
    steps = []
    for enabled in (True, False):
        model = tiny_model(seed=0, **{k: dict(v) for k, v in overrides.items()})
        steps.append(TrainStep(stage_config(stage, enabled=enabled), model, accelerator, temperatures=TEMPERATURES))
    assert steps[0].grad_cache.enabled and not steps[1].grad_cache.enabled
    return steps[0], steps[1]


@pytest.mark.parametrize("stage", [1, 3], ids=["stage1_pairs", "stage3_triplets"])
def test_grad_cache_step_equals_plain_step(stage, accelerator):
    """No dropout: chunks of 3 samples give the plain (one forward over the whole batch) step's loss and gradients."""
    cached, plain = two_steps(stage, accelerator, dropout=False)
    text, image = batches(stage, rows=8)
    assert_same_step(run_step(cached, text, image), run_step(plain, text, image))


@pytest.mark.parametrize("stage", [1, 3], ids=["stage1_pairs", "stage3_triplets"])
def test_grad_cache_step_equals_plain_step_with_dropout(stage, accelerator, monkeypatch):
    """Dropout active: the re-encoding replays the first pass's RNG state, so the step equals a plain backward
    through the same chunks (same masks); without the replay it does not, and dropout is really drawn."""
    cached, plain = two_steps(stage, accelerator, dropout=True)
    plain.encoder = ChunkedEncoder(plain.encoder, CHUNK)
    text, image = batches(stage, rows=8)
    reference = run_step(plain, text, image)
    assert_same_step(run_step(cached, text, image), reference)

    # The same plain step from another RNG state draws other masks: dropout is active in this test.
    other = run_step(plain, text, image, seed=8)
    assert abs(float(other["loss"]) - float(reference["loss"])) > 1e-4
    # Without the replay the re-encoding draws fresh masks: the gradients no longer match the loss's.
    cached, plain = two_steps(stage, accelerator, dropout=True)
    plain.encoder = ChunkedEncoder(plain.encoder, CHUNK)
    reference = run_step(plain, text, image)
    monkeypatch.setattr(grad_cache._RngState, "replay", lambda self: torch.random.fork_rng())
    broken = run_step(cached, text, image)
    assert abs(float(broken["loss"]) - float(reference["loss"])) <= TOLERANCE  # the first pass is unchanged
    assert max(float((broken["grads"][n] - g).abs().max()) for n, g in reference["grads"].items()) > 1e-4


@contextmanager
def record_rows(model) -> Iterator[dict[str, list[tuple[int, bool]]]]:
    """Forward pre-hooks on both towers while the block runs: (rows, with a graph) of every forward."""
    seen: dict[str, list[tuple[int, bool]]] = {"text": [], "vision": []}

    def hook(tower, key):
        def record(module, args, kwargs):
            inputs = kwargs.get(key, args[0] if args else None)
            seen[tower].append((int(inputs.shape[0]), torch.is_grad_enabled()))
        return record

    handles = [model.text_model.register_forward_pre_hook(hook("text", "input_ids"), with_kwargs=True),
               model.vision_model.register_forward_pre_hook(hook("vision", "pixel_values"), with_kwargs=True)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("stage", [1, 3], ids=["stage1_pairs", "stage3_triplets"])
def test_chunk_size_not_batch_bounds_rows_per_forward(stage, accelerator):
    """Every forward of a gradient-caching step, with or without a graph, sees at most the chunk size rows, at
    any batch; the plain step's forwards see whole groups (up to 7 x the queries for stage 3's negatives)."""
    cached, plain = two_steps(stage, accelerator, dropout=False)
    for rows in (4, 8, 16):
        text, image = batches(stage, rows=rows)
        with record_rows(cached.model) as seen:
            cached(text, image)
        for tower, calls in seen.items():
            assert max(n for n, _ in calls) == CHUNK, (tower, rows, calls)
            assert {graph for _, graph in calls} == {False, True}  # both passes: no-grad embedding, re-encoding
        # Each group once without and once with a graph, in chunks of CHUNK rows (the last one shorter).
        text_rows = rows * (3 + (7 if stage == 3 else 0))  # queries, positives, captions (+ negatives)
        assert sum(n for n, graph in seen["text"] if graph) == text_rows == sum(n for n, graph in seen["text"] if not graph)
        assert sum(n for n, graph in seen["vision"] if graph) == rows
        with record_rows(plain.model) as seen:
            plain(text, image)
        assert max(n for n, _ in seen["text"]) == rows * (7 if stage == 3 else 1)
        assert max(n for n, _ in seen["vision"]) == rows
