"""Tests of training/losses.py: every loss against a naive per-row reference (value and gradient),
global negatives (simulated and with two real processes), gradient caching, and bad inputs."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from jina_clip_v2.training.grad_cache import grad_cache_step, split_batch
from jina_clip_v2.training.losses import (
    LearnableTemperature,
    LossOutput,
    average_gradients,
    contrastive_loss,
    gather_with_grad,
    info_nce,
    info_nce_plus,
    joint_loss,
)

TOL = 1e-5


# --------------------------------------------------------------------------------------------------
# Naive references: one row at a time, -ln of the softmax written out, in float64
# --------------------------------------------------------------------------------------------------


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(a, b) / (a.norm() * b.norm())


def _neg_log_softmax(anchor: Tensor, positive: Tensor, candidates: Sequence[Tensor], tau) -> Tensor:
    """-ln( e^{cos(anchor, positive)/tau} / sum_c e^{cos(anchor, c)/tau} )."""
    numerator = torch.exp(_cos(anchor, positive) / tau)
    denominator = sum(torch.exp(_cos(anchor, candidate) / tau) for candidate in candidates)
    return -torch.log(numerator / denominator)


def naive_direction(anchors: Tensor, positives: Tensor, candidates: Sequence[Tensor], tau) -> Tensor:
    """Mean over rows r of -ln softmax of anchors[r] at positives[r] among ``candidates``."""
    anchors, positives = anchors.double(), positives.double()
    candidates = [candidate.double() for candidate in candidates]
    terms = [
        _neg_log_softmax(anchors[r], positives[r], candidates, tau) for r in range(len(anchors))
    ]
    return sum(terms) / len(terms)


def naive_info_nce(q: Tensor, p: Tensor, tau) -> Tensor:
    """Eq. 1."""
    return naive_direction(q, p, list(p), tau) + naive_direction(p, q, list(q), tau)


def naive_info_nce_plus_forward(q: Tensor, p: Tensor, negatives: Tensor, tau) -> Tensor:
    """Eq. 2, query->document: the denominator runs over p_i and n_{j,i} for every row i and every j."""
    documents = [p[i] for i in range(len(p))]
    documents += [negatives[i, j] for i in range(len(p)) for j in range(negatives.shape[1])]
    return naive_direction(q, p, documents, tau)


def naive_info_nce_plus(q: Tensor, p: Tensor, negatives: Tensor, tau) -> Tensor:
    """Eq. 2: query->document with negatives plus plain document->query."""
    return naive_info_nce_plus_forward(q, p, negatives, tau) + naive_direction(p, q, list(q), tau)


def assert_close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=TOL, rtol=0)


def embeddings(*shape: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, requires_grad=True)


def check_value_and_grad(loss: Tensor, reference: Tensor, inputs: Sequence[Tensor]) -> None:
    assert_close(loss, reference)
    # Keep the graph: loss and reference may share a subgraph (e.g. the temperature).
    grads = torch.autograd.grad(loss, inputs, retain_graph=True)
    reference_grads = torch.autograd.grad(reference, inputs)
    for grad, reference_grad in zip(grads, reference_grads):
        assert_close(grad, reference_grad)


# --------------------------------------------------------------------------------------------------
# Eq. 1, eq. 2, Matryoshka sums, temperatures, eq. 3
# --------------------------------------------------------------------------------------------------


def test_info_nce_matches_naive_reference() -> None:
    q, p = embeddings(6, 16, seed=0), embeddings(6, 16, seed=1)
    check_value_and_grad(info_nce(q, p, 0.05), naive_info_nce(q, p, 0.05), [q, p])


def test_info_nce_plus_matches_naive_reference_with_seven_negatives() -> None:
    q, p, n = embeddings(5, 16, seed=0), embeddings(5, 16, seed=1), embeddings(5, 7, 16, seed=2)
    check_value_and_grad(
        info_nce_plus(q, p, n, 0.05), naive_info_nce_plus(q, p, n, 0.05), [q, p, n]
    )


def test_hard_negatives_only_enter_the_query_to_document_direction() -> None:
    q, p, n = embeddings(5, 16, seed=0), embeddings(5, 16, seed=1), embeddings(5, 7, 16, seed=2)
    # Everything the negatives add must be the change of the query->document term alone.
    added = info_nce_plus(q, p, n, 0.05) - info_nce(q, p, 0.05)
    expected = naive_info_nce_plus_forward(q, p, n, 0.05) - naive_direction(q, p, list(p), 0.05)
    assert_close(added, expected)
    # ... and that change is real (the negatives are not ignored).
    assert added.abs().item() > 0.1


@pytest.mark.parametrize("with_negatives", [False, True])
def test_matryoshka_sum_over_truncated_then_normalised_prefixes(with_negatives: bool) -> None:
    dims = (4, 8, 16)
    q, p, n = embeddings(4, 16, seed=0), embeddings(4, 16, seed=1), embeddings(4, 7, 16, seed=2)
    out = contrastive_loss(q, p, 0.05, negatives=n if with_negatives else None, dims=dims)
    terms = {
        d: naive_info_nce_plus(q[:, :d], p[:, :d], n[..., :d], 0.05)
        if with_negatives
        else naive_info_nce(q[:, :d], p[:, :d], 0.05)
        for d in dims
    }
    inputs = [q, p, n] if with_negatives else [q, p]
    check_value_and_grad(out.loss, sum(terms.values()), inputs)
    assert list(out.per_dim) == list(dims)
    for d in dims:
        assert_close(out.per_dim[d], terms[d])
        assert not out.per_dim[d].requires_grad
    assert set(out.log_values("text")) == {"text", "text/dim_4", "text/dim_8", "text/dim_16"}


def test_temperature_gradient_matches_naive_reference() -> None:
    temperature = LearnableTemperature(init=0.07)
    q, p = embeddings(6, 16, seed=0), embeddings(6, 16, seed=1)
    tau = temperature()
    assert_close(tau, torch.tensor(0.07))
    check_value_and_grad(
        info_nce(q, p, tau), naive_info_nce(q, p, tau), [q, p, temperature.logit_scale]
    )


def test_learnable_temperature_is_clamped_like_clip() -> None:
    temperature = LearnableTemperature(init=0.05, max_scale=100.0)
    with torch.no_grad():
        temperature.logit_scale.fill_(10.0)  # overshoot, e.g. by optimiser momentum
    assert_close(temperature(), torch.tensor(0.01))
    temperature.clamp_()
    assert temperature.logit_scale.item() == pytest.approx(math.log(100.0))
    # At the cap the parameter still receives a gradient, so it can move back down.
    temperature().backward()
    assert temperature.logit_scale.grad.item() != 0.0
    with pytest.raises(ValueError, match="at least 1/max_scale"):
        LearnableTemperature(init=0.005, max_scale=100.0)


def test_joint_loss_is_eq3_with_a_temperature_per_task() -> None:
    dims = (8, 16)
    text_temperature, image_temperature = LearnableTemperature(0.05), LearnableTemperature(0.07)
    tq, tp, tn = embeddings(4, 16, seed=0), embeddings(4, 16, seed=1), embeddings(4, 7, 16, seed=2)
    captions, images = embeddings(5, 16, seed=3), embeddings(5, 16, seed=4)
    t_tau, i_tau = text_temperature(), image_temperature()
    out = joint_loss(
        tq, tp, captions, images,
        text_temperature=t_tau, image_temperature=i_tau, text_negatives=tn, dims=dims,
    )
    text_reference = sum(naive_info_nce_plus(tq[:, :d], tp[:, :d], tn[..., :d], t_tau) for d in dims)
    image_reference = sum(naive_info_nce(captions[:, :d], images[:, :d], i_tau) for d in dims)
    assert_close(out.text.loss, text_reference)
    assert_close(out.image_text.loss, image_reference)
    check_value_and_grad(
        out.loss,
        text_reference + image_reference,
        [tq, tp, tn, captions, images, text_temperature.logit_scale, image_temperature.logit_scale],
    )
    logged = out.detach().log_values()
    assert logged["loss"] == pytest.approx(logged["loss/text"] + logged["loss/image_text"])
    assert "loss/text/dim_8" in logged and "loss/image_text/dim_16" in logged


# --------------------------------------------------------------------------------------------------
# Global negatives
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(4, 4), (3, 5)])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_simulated_ranks_against_gathered_batch_equal_the_full_batch(
    sizes: tuple[int, int], with_negatives: bool
) -> None:
    """Each "rank" scores its rows against the concatenated batch with its offset; with the scaling
    convention (rank loss = world_size * local sum / global batch) the mean over ranks is the
    single-process loss, in value and gradient."""
    total, world_size = sum(sizes), len(sizes)
    q, p, n = embeddings(total, 16, seed=0), embeddings(total, 16, seed=1), embeddings(total, 7, 16, seed=2)

    def loss(rows: slice, offset: int = 0, **global_batch: Tensor) -> Tensor:
        if with_negatives:
            return info_nce_plus(q[rows], p[rows], n[rows], 0.05, offset=offset, **global_batch)
        return info_nce(q[rows], p[rows], 0.05, offset=offset, **global_batch)

    global_batch = {"q_all": q, "p_all": p}
    if with_negatives:
        global_batch["negatives_all"] = n
    rank_losses, offset = [], 0
    for size in sizes:
        weight = world_size * size / total
        rank_losses.append(weight * loss(slice(offset, offset + size), offset, **global_batch))
        offset += size
    full = loss(slice(None))
    check_value_and_grad(sum(rank_losses) / world_size, full, [q, p, n] if with_negatives else [q, p])


def test_gather_with_grad_is_identity_without_process_group() -> None:
    x = torch.randn(3, 4)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0


LOCAL_SIZES = (3, 5)  # unequal on purpose: the last batch of an epoch can be smaller
DIMS = (8, 16)


def _make_global_batch() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    total = sum(LOCAL_SIZES)
    return {
        name: torch.randn(*shape, generator=generator)
        for name, shape in {
            "tq": (total, 16), "tp": (total, 16), "tn": (total, 7, 16),
            "captions": (total, 16), "images": (total, 16), "raw_images": (total, 12),
        }.items()
    }


def _distributed_setup() -> tuple[LearnableTemperature, LearnableTemperature, nn.Module]:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 16))
    return LearnableTemperature(0.05), LearnableTemperature(0.07), encoder


def _distributed_losses(
    batch: dict[str, Tensor], text_t: LearnableTemperature, image_t: LearnableTemperature
) -> Callable[[Tensor], LossOutput]:
    """Eq. 3 where the image embeddings come from an encoder (exercised through grad_cache_step)."""

    def loss_fn(images: Tensor) -> LossOutput:
        return joint_loss(
            batch["tq"], batch["tp"], batch["captions"], images,
            text_temperature=text_t(), image_temperature=image_t(),
            text_negatives=batch["tn"], dims=DIMS,
        )

    return loss_fn


def _distributed_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(LOCAL_SIZES),
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        start = sum(LOCAL_SIZES[:rank])
        rows = slice(start, start + LOCAL_SIZES[rank])
        batch = {name: value[rows].requires_grad_() for name, value in _make_global_batch().items()}
        text_t, image_t, encoder = _distributed_setup()

        # Part 1: joint loss with gathered negatives, gradients with respect to the local embeddings.
        out = joint_loss(
            batch["tq"], batch["tp"], batch["captions"], batch["images"],
            text_temperature=text_t(), image_temperature=image_t(), text_negatives=batch["tn"],
            dims=DIMS,
        )
        out.loss.backward()
        average_gradients([text_t.logit_scale, image_t.logit_scale])
        gathered, offset = gather_with_grad(batch["tq"].detach())
        result = {
            "loss": out.loss.detach(),
            "grads": {name: value.grad for name, value in batch.items() if value.grad is not None},
            "temperature_grads": [text_t.logit_scale.grad, image_t.logit_scale.grad],
            "offset": offset,
            "gathered_rows": gathered.shape[0],
        }

        # Part 2: gradient caching where the loss backward itself runs the gather's all-reduce; the
        # parameter gradients are averaged as DDP would.
        text_t.zero_grad()
        image_t.zero_grad()
        detached = {name: value.detach() for name, value in batch.items()}
        grad_cache_step(
            _distributed_losses(detached, text_t, image_t),
            [(encoder, split_batch(detached["raw_images"], 2))],
        )
        parameters = [*encoder.parameters(), text_t.logit_scale, image_t.logit_scale]
        average_gradients(parameters)
        result["grad_cache_grads"] = [parameter.grad for parameter in parameters]
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    mp.spawn(
        _distributed_worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=len(LOCAL_SIZES),
        join=True,
    )
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(len(LOCAL_SIZES))]
    world_size = len(LOCAL_SIZES)

    # Single-process reference on the concatenated batch.
    batch = {name: value.requires_grad_() for name, value in _make_global_batch().items()}
    text_t, image_t, encoder = _distributed_setup()
    full = joint_loss(
        batch["tq"], batch["tp"], batch["captions"], batch["images"],
        text_temperature=text_t(), image_temperature=image_t(), text_negatives=batch["tn"],
        dims=DIMS,
    )
    full.loss.backward()

    # The mean of the rank losses is the full-batch loss ...
    assert_close(sum(r["loss"] for r in results) / world_size, full.loss)
    start = 0
    for rank, result in enumerate(results):
        assert result["offset"] == start and result["gathered_rows"] == sum(LOCAL_SIZES)
        rows = slice(start, start + LOCAL_SIZES[rank])
        # ... and each rank's gradient on its own rows is world_size x the full-batch slice, which
        # DDP's averaging over ranks turns into exactly the full-batch parameter gradient.
        assert set(result["grads"]) == {"tq", "tp", "tn", "captions", "images"}
        for name, grad in result["grads"].items():
            assert_close(grad / world_size, batch[name].grad[rows])
        for grad, reference in zip(
            result["temperature_grads"], [text_t.logit_scale.grad, image_t.logit_scale.grad]
        ):
            assert_close(grad, reference)
        start += LOCAL_SIZES[rank]

    # Gradient caching across processes equals a plain single-process backward through the encoder.
    text_t.zero_grad()
    image_t.zero_grad()
    detached = {name: value.detach() for name, value in batch.items()}
    _distributed_losses(detached, text_t, image_t)(encoder(detached["raw_images"])).loss.backward()
    parameters = [*encoder.parameters(), text_t.logit_scale, image_t.logit_scale]
    for result in results:
        for grad, parameter in zip(result["grad_cache_grads"], parameters):
            assert_close(grad, parameter.grad)


# --------------------------------------------------------------------------------------------------
# Gradient caching
# --------------------------------------------------------------------------------------------------


def _encoder(in_features: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(in_features, 32), nn.GELU(), nn.Dropout(0.3), nn.Linear(32, 16)
    ).train()


def _image_text_case() -> tuple[list[nn.Module], list, Callable[..., LossOutput]]:
    text_encoder, image_encoder = _encoder(12, seed=0), _encoder(20, seed=1)
    temperature = LearnableTemperature(0.07)
    captions, images = torch.randn(8, 12), torch.randn(8, 20)
    groups = [
        (text_encoder, split_batch(captions, 3)),
        (image_encoder, split_batch(images, 3)),
    ]

    def loss_fn(caption_embeddings: Tensor, image_embeddings: Tensor) -> LossOutput:
        return contrastive_loss(caption_embeddings, image_embeddings, temperature(), dims=(8, 16))

    return [text_encoder, image_encoder, temperature], groups, loss_fn


def _hard_negative_text_case() -> tuple[list[nn.Module], list, Callable[..., LossOutput]]:
    encoder = _encoder(12, seed=2)  # one text encoder for queries, documents and negatives
    temperature = LearnableTemperature(0.05)
    batch, num_negatives = 4, 7
    queries, documents = torch.randn(batch, 12), torch.randn(batch, 12)
    negatives = torch.randn(batch * num_negatives, 12)
    groups = [
        (encoder, split_batch(queries, 3)),
        (encoder, split_batch(documents, 3)),
        (encoder, split_batch(negatives, 5)),
    ]

    def loss_fn(q: Tensor, p: Tensor, n: Tensor) -> LossOutput:
        return contrastive_loss(
            q, p, temperature(), negatives=n.view(batch, num_negatives, -1), dims=(8, 16)
        )

    return [encoder, temperature], groups, loss_fn


def _plain_step(groups: list, loss_fn: Callable[..., LossOutput]) -> Tensor:
    """The reference: encode the same chunks in the same order with a graph, one backward."""
    embeddings = [torch.cat([encode(chunk) for chunk in chunks]) for encode, chunks in groups]
    loss = loss_fn(*embeddings).loss
    loss.backward()
    return loss.detach()


def _gradients(modules: list[nn.Module]) -> list[Tensor]:
    grads = [parameter.grad.clone() for module in modules for parameter in module.parameters()]
    for module in modules:
        module.zero_grad(set_to_none=True)
    return grads


ACCUMULATION_STEPS = 2


@pytest.fixture
def accelerator():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    # Accelerate keeps process-wide singleton state: start and leave it clean for other tests.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATION_STEPS)
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("case", [_image_text_case, _hard_negative_text_case])
def test_grad_cache_equals_full_batch_loss_and_gradients(case: Callable) -> None:
    modules, groups, loss_fn = case()

    torch.manual_seed(123)
    reference_loss = _plain_step(groups, loss_fn)
    reference_rng = torch.get_rng_state()
    reference_grads = _gradients(modules)

    torch.manual_seed(123)
    out = grad_cache_step(loss_fn, groups)
    assert not out.loss.requires_grad
    assert_close(out.loss, reference_loss)
    for grad, reference in zip(_gradients(modules), reference_grads, strict=True):
        assert_close(grad, reference)
    # The random stream advanced exactly as in the plain step (the replay did not consume it).
    assert torch.equal(torch.get_rng_state(), reference_rng)

    # Dropout is live, so matching above needed the replayed RNG states.
    torch.manual_seed(7)
    assert (_plain_step(groups, loss_fn) - reference_loss).abs().item() > 1e-4


def test_grad_cache_under_accelerate(accelerator) -> None:
    modules, groups, loss_fn = _image_text_case()
    torch.manual_seed(5)
    reference_loss = _plain_step(groups, loss_fn)
    reference_grads = _gradients(modules)

    torch.manual_seed(5)
    out = grad_cache_step(loss_fn, groups, accelerator=accelerator, model=modules[0])
    assert_close(out.loss, reference_loss)
    # accelerator.backward divided the loss for gradient accumulation, exactly once: the cached
    # gradients carry the division into the encoders, and the temperature gets it too.
    for grad, reference in zip(_gradients(modules), reference_grads, strict=True):
        assert_close(grad, reference / ACCUMULATION_STEPS)


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


def test_mismatched_batch_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="batch size mismatch: 4 queries but 5 targets"):
        info_nce(torch.randn(4, 8), torch.randn(5, 8), 0.05)
    with pytest.raises(ValueError, match=r"negatives must have shape .*\(4, K, 8\)"):
        info_nce_plus(torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 7, 8), 0.05)
    with pytest.raises(ValueError, match="batch size mismatch"):
        joint_loss(
            torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8), torch.randn(6, 8),
            text_temperature=0.05, image_temperature=0.05, dims=None,
        )


def test_matryoshka_dims_are_validated() -> None:
    q, p = torch.randn(4, 512), torch.randn(4, 512)
    with pytest.raises(ValueError, match="Matryoshka dim 768 exceeds the embedding width 512"):
        contrastive_loss(q, p, 0.05)  # the paper's dims need 1024-d embeddings
    with pytest.raises(ValueError, match="distinct"):
        contrastive_loss(q, p, 0.05, dims=(64, 64))
    with pytest.raises(ValueError, match="positive integers"):
        contrastive_loss(q, p, 0.05, dims=(0, 64))
    # The widest dim is the caller's: None evaluates the full width, a list only what it names.
    assert list(contrastive_loss(q, p, 0.05, dims=None).per_dim) == [512]
    assert list(contrastive_loss(q, p, 0.05, dims=(64, 128)).per_dim) == [64, 128]


def test_inconsistent_global_batch_is_rejected() -> None:
    q, p = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="given together"):
        info_nce(q, p, 0.05, q_all=torch.randn(8, 8))
    with pytest.raises(ValueError, match="outside the 8 global rows"):
        info_nce(q, p, 0.05, q_all=torch.randn(8, 8), p_all=torch.randn(8, 8), offset=5)
    with pytest.raises(ValueError, match="needs the global batch"):
        info_nce(q, p, 0.05, offset=1)
    with pytest.raises(ValueError, match="temperature must be positive"):
        info_nce(q, p, 0.0)


def test_split_batch() -> None:
    chunks = split_batch({"input_ids": torch.arange(10), "attention_mask": torch.ones(10)}, 4)
    assert [len(chunk["input_ids"]) for chunk in chunks] == [4, 4, 2]
    with pytest.raises(ValueError, match="same number of rows"):
        split_batch({"input_ids": torch.arange(10), "attention_mask": torch.ones(9)}, 4)
    with pytest.raises(ValueError, match="no chunks"):
        grad_cache_step(lambda x: x.sum(), [(nn.Identity(), [])])
