"""Contrastive losses of jina-clip-v2 (paper sections 3.3 and 3.4), computed on embeddings only.

Every function takes raw (unnormalised) embeddings; nothing here knows about the model.

- ``info_nce`` (eq. 1) and ``info_nce_plus`` (eq. 2): the two losses at one embedding width, scored
  against the local batch or against candidates gathered from every rank.
- ``contrastive_loss``: one task's loss, eq. 1 or eq. 2 summed over the Matryoshka widths (section
  3.4), with global in-batch negatives.
- ``joint_loss``: eq. 3, the text task plus the image-text task, each with its own temperature.
- ``LearnableTemperature``: CLIP's clamped logit scale, one instance per task.
- ``gather_with_grad`` and ``average_gradients``: the distributed plumbing.
- ``grad_cache_step`` and ``split_batch``: gradient caching (Gao et al., 2021) for contrastive batches
  larger than one forward pass with activations can hold.

Distributed scaling convention
------------------------------
Each rank scores its local rows against the rows of all ranks. Its loss is
``world_size * (sum of its local per-row losses) / global_batch``, which for equal local batches is
simply the mean over its local rows, so the mean of the rank losses is exactly the single-process loss
of the concatenated batch (also with unequal local batches). The backward of ``gather_with_grad`` sums
the gradients of all ranks' losses with respect to a rank's rows, so a rank sees ``world_size`` times
the matching slice of the single-process gradient on its own embeddings; DDP averages parameter
gradients over the ranks, which divides that factor out again and yields exactly the single-process
parameter gradient. Parameters that DDP does not reduce (e.g. temperatures kept outside the wrapped
model) need ``average_gradients``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "MATRYOSHKA_DIMS",
    "JointLoss",
    "LearnableTemperature",
    "TaskLoss",
    "average_gradients",
    "contrastive_loss",
    "gather_with_grad",
    "grad_cache_step",
    "info_nce",
    "info_nce_plus",
    "joint_loss",
    "split_batch",
]

MATRYOSHKA_DIMS: tuple[int, ...] = (64, 128, 256, 512, 768, 1024)
"""Section 3.4: every loss is evaluated on these prefixes of the 1024-d embeddings and summed."""

Temperature = Union[Tensor, float]
"""The softmax temperature tau: a positive float, or a 0-d tensor such as ``LearnableTemperature()()``."""


class LearnableTemperature(nn.Module):
    """A learnable softmax temperature tau, stored as CLIP's logit scale ``log(1 / tau)``.

    Learning the log of the inverse keeps tau positive and makes optimiser steps relative rather than
    absolute (Radford et al., 2021). The scale is capped at ``max_scale`` (100, i.e. tau >= 0.01) as in
    CLIP, because an unbounded scale makes the softmax arbitrarily sharp and training unstable.
    ``forward`` applies the cap; call ``clamp_()`` after every optimiser step, as CLIP does, so the raw
    parameter never drifts above the cap, where the clamp would give it a zero gradient forever.

    Eq. 3 sums two independently tempered losses: use one instance for the text task and one for the
    image-text task.
    """

    def __init__(self, init: float = 0.05, max_scale: float = 100.0) -> None:
        super().__init__()
        if not max_scale > 0:
            raise ValueError(f"max_scale must be positive, got {max_scale}")
        if not init >= 1.0 / max_scale:
            raise ValueError(
                f"initial temperature must be at least 1/max_scale = {1.0 / max_scale:g}, got {init}"
            )
        self.max_log_scale = math.log(max_scale)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)))

    def forward(self) -> Tensor:
        """The current temperature tau, a 0-d tensor that carries the gradient."""
        return torch.exp(-self.logit_scale.clamp(max=self.max_log_scale))

    @torch.no_grad()
    def clamp_(self) -> None:
        """Pull the logit scale back under its cap (call after ``optimizer.step()``)."""
        self.logit_scale.clamp_(max=self.max_log_scale)

    def extra_repr(self) -> str:
        return f"temperature={self().item():.4g}, max_scale={math.exp(self.max_log_scale):g}"


# --------------------------------------------------------------------------------------------------
# Eq. 1 and eq. 2 at one embedding width
# --------------------------------------------------------------------------------------------------


def info_nce(
    q: Tensor,
    p: Tensor,
    temperature: Temperature,
    *,
    q_all: Tensor | None = None,
    p_all: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """Bidirectional InfoNCE of eq. 1 on cosine similarities: ``L_nce = L-> + L<-``.

    Args:
        q, p: (b, D) raw embeddings; ``p[i]`` is the positive of ``q[i]``.
        temperature: tau.
        q_all, p_all: (N, D) candidates of the global batch (e.g. from ``gather_with_grad``), holding the
            local rows at ``[offset, offset + b)``. Both or neither; default: the local batch.
        offset: index of the first local row in ``q_all`` / ``p_all``.

    Returns:
        The sum of the two directions, each the mean over the b local rows.
    """
    _check_pairs(q, p)
    _check_temperature(temperature)
    q_all, p_all = _candidates(q, p, q_all, p_all, offset)
    return _nce_direction(q, p_all, temperature, offset) + _nce_direction(p, q_all, temperature, offset)


def info_nce_plus(
    q: Tensor,
    p: Tensor,
    negatives: Tensor,
    temperature: Temperature,
    *,
    q_all: Tensor | None = None,
    p_all: Tensor | None = None,
    negatives_all: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """InfoNCE with hard negatives, eq. 2 (``L_nce+``).

    Args:
        q, p: (b, D) raw embeddings; ``p[i]`` is the positive of ``q[i]``.
        negatives: (b, K, D) hard negatives of each query (K = 7 in the paper; any K works).
        temperature: tau.
        q_all, p_all, negatives_all: the global batch, as in ``info_nce``; all three or none.
        offset: index of the first local row in the global batch.

    Returns:
        query->document term, whose denominator runs over every in-batch positive and every hard
        negative of every row, plus the plain document->query term; each the mean over local rows.
    """
    _check_pairs(q, p)
    _check_negatives(negatives, q, "negatives")
    _check_temperature(temperature)
    if (q_all is None) != (negatives_all is None):
        raise ValueError("negatives_all must be given exactly when q_all and p_all are")
    q_all, p_all = _candidates(q, p, q_all, p_all, offset)
    if negatives_all is None:
        negatives_all = negatives
    else:
        _check_negatives(negatives_all, q_all, "negatives_all")
        if negatives_all.shape[1] != negatives.shape[1]:
            raise ValueError(
                f"negatives has {negatives.shape[1]} negatives per query but negatives_all has "
                f"{negatives_all.shape[1]}"
            )
    # Eq. 2, query->document: the denominator sums e^{cos(q, p_i)} and e^{cos(q, n_{j,i})} over every
    # row i and every j, so all positives and all negatives are candidates. Positives come first, so
    # the positive of local row i stays at index offset + i.
    documents = torch.cat([p_all, negatives_all.flatten(0, 1)])
    # Eq. 2, document->query: the plain eq. 1 term; hard negatives are never scored against queries.
    return _nce_direction(q, documents, temperature, offset) + _nce_direction(
        p, q_all, temperature, offset
    )


def _nce_direction(
    anchors: Tensor, candidates: Tensor, temperature: Temperature, offset: int
) -> Tensor:
    """One direction of eq. 1: mean over anchors of ``-ln softmax(cos(anchor, candidates) / tau)`` at
    the positive, which for anchor i is candidate ``offset + i``."""
    # Cosines in fp32 even under autocast: at tau = 0.01 the logits reach 100, where bf16 resolves
    # only steps of 0.5 and would swamp the differences the softmax depends on.
    with torch.autocast(anchors.device.type, enabled=False):
        anchors = F.normalize(anchors.float(), dim=-1)
        candidates = F.normalize(candidates.float(), dim=-1)
        logits = anchors @ candidates.T / temperature
        labels = torch.arange(anchors.shape[0], device=anchors.device) + offset
        return F.cross_entropy(logits, labels)


def _candidates(
    q: Tensor, p: Tensor, q_all: Tensor | None, p_all: Tensor | None, offset: int
) -> tuple[Tensor, Tensor]:
    """The global (q_all, p_all) the local rows are scored against, validated."""
    if q_all is None and p_all is None:
        if offset != 0:
            raise ValueError(f"offset={offset} needs the global batch (q_all and p_all)")
        return q, p
    if q_all is None or p_all is None:
        raise ValueError("q_all and p_all must be given together")
    _check_pairs(q_all, p_all)
    if q_all.shape[1] != q.shape[1]:
        raise ValueError(
            f"embedding width mismatch: local rows are {q.shape[1]}-d, global rows {q_all.shape[1]}-d"
        )
    if not 0 <= offset <= q_all.shape[0] - q.shape[0]:
        raise ValueError(
            f"offset={offset} puts the {q.shape[0]} local rows outside the {q_all.shape[0]} global rows"
        )
    return q_all, p_all


def _check_pairs(q: Tensor, p: Tensor) -> None:
    if q.dim() != 2 or p.dim() != 2:
        raise ValueError(
            f"embeddings must be 2-D (batch, dim), got shapes {tuple(q.shape)} and {tuple(p.shape)}"
        )
    if q.shape[0] != p.shape[0]:
        raise ValueError(
            f"batch size mismatch: {q.shape[0]} queries but {p.shape[0]} targets "
            "(each query needs exactly one positive)"
        )
    if q.shape[1] != p.shape[1]:
        raise ValueError(
            f"embedding width mismatch: queries are {q.shape[1]}-d but targets are {p.shape[1]}-d"
        )


def _check_negatives(negatives: Tensor, q: Tensor, name: str) -> None:
    if negatives.dim() != 3 or negatives.shape[0] != q.shape[0] or negatives.shape[2] != q.shape[1]:
        raise ValueError(
            f"{name} must have shape (batch, num_negatives, dim) = ({q.shape[0]}, K, {q.shape[1]}) "
            f"to match the queries, got {tuple(negatives.shape)}"
        )


def _check_temperature(temperature: Temperature) -> None:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
    elif not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


# --------------------------------------------------------------------------------------------------
# Matryoshka sums (section 3.4) and the joint loss (eq. 3)
# --------------------------------------------------------------------------------------------------


@dataclass
class TaskLoss:
    """One task's loss: the Matryoshka sum that is optimised, and its per-width terms for logging."""

    loss: Tensor
    per_dim: dict[int, Tensor]

    def detach(self) -> TaskLoss:
        return TaskLoss(self.loss.detach(), self.per_dim)

    def log_values(self, prefix: str) -> dict[str, float]:
        """``{prefix: total, prefix/dim_<d>: term}`` as Python floats."""
        values = {prefix: self.loss.item()}
        values.update({f"{prefix}/dim_{dim}": term.item() for dim, term in self.per_dim.items()})
        return values


@dataclass
class JointLoss:
    """Eq. 3: the optimised sum of the text-task and image-text-task losses, and both parts."""

    loss: Tensor
    text: TaskLoss
    image_text: TaskLoss

    def detach(self) -> JointLoss:
        return JointLoss(self.loss.detach(), self.text.detach(), self.image_text.detach())

    def log_values(self) -> dict[str, float]:
        """``loss``, ``loss/text[/dim_<d>]`` and ``loss/image_text[/dim_<d>]`` as Python floats."""
        return {
            "loss": self.loss.item(),
            **self.text.log_values("loss/text"),
            **self.image_text.log_values("loss/image_text"),
        }


def contrastive_loss(
    q: Tensor,
    p: Tensor,
    temperature: Temperature,
    *,
    negatives: Tensor | None = None,
    dims: Sequence[int] | None = MATRYOSHKA_DIMS,
    gather: bool = True,
) -> TaskLoss:
    """One task's loss: eq. 1, or eq. 2 when ``negatives`` are given, summed over Matryoshka widths.

    Every width is computed from the same embeddings (one forward pass). Each term truncates to the
    first d features and only then normalises, as section 3.4 and inference-time truncation do.

    Args:
        q, p: (b, D) raw embeddings of the queries and their positives.
        temperature: tau of this task.
        negatives: (b, K, D) hard negatives (stage 3's text task), or None.
        dims: the prefix widths to sum over, each at most D; None means the full width only. The
            largest one given is the widest evaluated: D is not added implicitly.
        gather: score against the rows of every rank (global in-batch negatives), with the scaling
            convention of the module docstring. Without a process group this changes nothing.
    """
    _check_pairs(q, p)
    if negatives is not None:
        _check_negatives(negatives, q, "negatives")
    dims = _check_dims(dims, q.shape[1])
    q_all, p_all, negatives_all, offset, weight = q, p, negatives, 0, 1.0
    if gather:
        # Gather once at full width: the prefixes of the gathered rows are the gathered prefixes.
        q_all, offset = gather_with_grad(q)
        p_all, _ = gather_with_grad(p)
        if negatives is not None:
            negatives_all, _ = gather_with_grad(negatives)
        weight = _world_size() * q.shape[0] / q_all.shape[0]
    per_dim = {}
    for dim in dims:
        if negatives is None:
            term = info_nce(
                q[:, :dim], p[:, :dim], temperature,
                q_all=q_all[:, :dim], p_all=p_all[:, :dim], offset=offset,
            )
        else:
            term = info_nce_plus(
                q[:, :dim], p[:, :dim], negatives[..., :dim], temperature,
                q_all=q_all[:, :dim], p_all=p_all[:, :dim], negatives_all=negatives_all[..., :dim],
                offset=offset,
            )
        per_dim[dim] = weight * term
    total = torch.stack(list(per_dim.values())).sum()
    return TaskLoss(total, {dim: term.detach() for dim, term in per_dim.items()})


def joint_loss(
    text_queries: Tensor,
    text_targets: Tensor,
    captions: Tensor,
    images: Tensor,
    *,
    text_temperature: Temperature,
    image_temperature: Temperature,
    text_negatives: Tensor | None = None,
    dims: Sequence[int] | None = MATRYOSHKA_DIMS,
    gather: bool = True,
) -> JointLoss:
    """Eq. 3: text-task loss plus image-text InfoNCE, each Matryoshka-summed with its own temperature.

    Stages 1 and 2 pass text pairs; stage 3 passes ``text_negatives`` (b, 7, D) and the text task
    becomes InfoNCE+ (eq. 2). ``dims`` and ``gather`` apply to both tasks, as in ``contrastive_loss``.
    """
    text = contrastive_loss(
        text_queries, text_targets, text_temperature,
        negatives=text_negatives, dims=dims, gather=gather,
    )
    image_text = contrastive_loss(captions, images, image_temperature, dims=dims, gather=gather)
    return JointLoss(text.loss + image_text.loss, text, image_text)


def _check_dims(dims: Sequence[int] | None, width: int) -> tuple[int, ...]:
    if dims is None:
        return (width,)
    dims = tuple(dims)
    if not dims:
        raise ValueError("Matryoshka dims must not be empty (use None for the full width only)")
    if len(set(dims)) != len(dims):
        raise ValueError(f"Matryoshka dims must be distinct, got {dims}")
    for dim in dims:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"Matryoshka dims must be positive integers, got {dims}")
        if dim > width:
            raise ValueError(
                f"Matryoshka dim {dim} exceeds the embedding width {width} (dims={dims})"
            )
    return dims


# --------------------------------------------------------------------------------------------------
# Distributed: global in-batch negatives
# --------------------------------------------------------------------------------------------------


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate the rows of every rank along dim 0 (local batch sizes may differ); the backward
    hands each rank its slice of the gradient summed over all ranks."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, sizes: list[int]) -> Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        # all_gather needs equal shapes: pad every rank's rows to the largest local batch.
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        buffers = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(buffers, padded)
        return torch.cat([buffer[:size] for buffer, size in zip(buffers, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        # Every rank's loss used this rank's rows, so their gradient is the sum over the ranks (the
        # scaling convention of the module docstring rests on this sum). Clone: autograd may share
        # the incoming buffer, and all_reduce works in place.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(tensor: Tensor) -> tuple[Tensor, int]:
    """All-gather ``tensor`` along dim 0 from every rank, keeping the autograd graph.

    Returns ``(gathered, offset)``: the rows of all ranks in rank order, and the index of this rank's
    first row in them. Without an initialised process group, or with a single process, returns
    ``(tensor, 0)``. Every rank must call it (a collective) with the same trailing shape; local batch
    sizes may differ.
    """
    world_size = _world_size()
    if world_size == 1:
        return tensor, 0
    local_size = torch.tensor([tensor.shape[0]], device=tensor.device)
    all_sizes = [torch.empty_like(local_size) for _ in range(world_size)]
    dist.all_gather(all_sizes, local_size)
    sizes = [int(size.item()) for size in all_sizes]
    return _AllGatherWithGrad.apply(tensor, sizes), sum(sizes[: dist.get_rank()])


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` over the ranks in place (nothing to do on a single process).

    For parameters that DDP does not reduce, such as temperatures kept outside the DDP-wrapped model.
    A collective: every rank must pass the same parameters, with a gradient on the same ones.
    """
    world_size = _world_size()
    if world_size == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad.div_(world_size)


# --------------------------------------------------------------------------------------------------
# Gradient caching (Gao et al., 2021)
# --------------------------------------------------------------------------------------------------

Encode = Callable[[Any], Tensor]
EmbeddingGroup = tuple[Encode, Sequence[Any]]
"""``(encode, chunks)``: the group's embeddings are ``encode(chunk)`` concatenated over its chunks."""

LossOutput = TypeVar("LossOutput", Tensor, TaskLoss, JointLoss)


@dataclass
class _RngState:
    """The CPU and CUDA generator states a chunk was first encoded with."""

    cpu: Tensor
    cuda: list[Tensor]

    @classmethod
    def capture(cls) -> _RngState:
        # CUDA states only when CUDA is in use: initialising it here would be a side effect.
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body with these states, then put the generators back as they were: the first pass
        already advanced them, and a replay must not advance them twice."""
        current = _RngState.capture()
        self.restore()
        try:
            yield
        finally:
            current.restore()


def grad_cache_step(
    loss_fn: Callable[..., LossOutput],
    groups: Sequence[EmbeddingGroup],
    *,
    accelerator: Accelerator | None = None,
    model: nn.Module | None = None,
) -> LossOutput:
    """Backpropagate ``loss_fn`` over a batch encoded chunk by chunk (gradient caching).

    A contrastive loss does not decompose over rows (every row sits in every denominator), so plain
    gradient accumulation would shrink the pool of in-batch negatives. Gradient caching keeps the
    full-batch loss while holding activations for one chunk at a time:

    1. encode every chunk without a graph, remembering the RNG state it started from;
    2. evaluate ``loss_fn`` on the concatenated embeddings as leaves and backpropagate, which caches
       d loss / d embedding (and fills the gradients of parameters inside ``loss_fn``, such as
       temperatures);
    3. re-encode each chunk with a graph, replaying its RNG state so dropout draws the same masks, and
       backpropagate the cached slice of d loss / d embedding into the encoder.

    The parameter gradients equal those of one backward through the plainly encoded chunks, and the
    CPU/CUDA generators end where that plain pass would leave them. Randomness drawn from other
    generators (explicit ``torch.Generator`` objects) is not replayed.

    Args:
        loss_fn: called with one embedding tensor per group; returns a loss tensor or a ``TaskLoss``
            / ``JointLoss`` (anything with ``.loss`` and ``.detach()``).
        groups: ``(encode, chunks)`` per embedding group, e.g. text queries, text documents, hard
            negatives, captions, images. Groups may share an encoder.
        accelerator: if given, the loss backward goes through ``accelerator.backward`` (mixed-precision
            loss scaling, division for gradient accumulation); the cached gradients carry that scaling,
            so the chunk backwards are plain. DeepSpeed engines are not supported.
        model: the DDP-wrapped module (via ``accelerator.no_sync`` if an accelerator is given). All
            chunk backwards but the last then skip the gradient all-reduce, so it happens once. If the
            last chunk leaves parameters unused (an image chunk never touches the text tower), DDP
            must be built with ``find_unused_parameters=True``. Every rank must encode the same
            number of chunks, since DDP forwards can be collectives (buffer broadcast).

    Returns:
        ``loss_fn``'s output, detached.
    """
    # 1. Embeddings of every chunk, without activations.
    embeddings: list[Tensor] = []
    chunk_records: list[list[tuple[_RngState, int]]] = []
    with torch.no_grad():
        for index, (encode, chunks) in enumerate(groups):
            if not chunks:
                raise ValueError(f"embedding group {index} has no chunks")
            records, outputs = [], []
            for chunk in chunks:
                state = _RngState.capture()
                outputs.append(encode(chunk))
                records.append((state, outputs[-1].shape[0]))
            chunk_records.append(records)
            embeddings.append(torch.cat(outputs).requires_grad_())

    # 2. The full-batch loss, backpropagated as far as the embeddings.
    output = loss_fn(*embeddings)
    loss = output if isinstance(output, Tensor) else output.loss
    if accelerator is not None:
        accelerator.backward(loss)
    else:
        loss.backward()

    # 3. Re-encode chunk by chunk and push the cached gradients into the encoders.
    replays: list[tuple[Encode, Any, _RngState, Tensor]] = []
    for (encode, chunks), records, embedding in zip(groups, chunk_records, embeddings):
        if embedding.grad is None:  # the loss ignores this group: nothing to backpropagate
            continue
        grads = embedding.grad.split([rows for _, rows in records])
        for chunk, (state, _), grad in zip(chunks, records, grads):
            replays.append((encode, chunk, state, grad))
    for index, (encode, chunk, state, grad) in enumerate(replays):
        is_last = index == len(replays) - 1
        with nullcontext() if is_last else _no_sync(accelerator, model):
            with state.replay():
                embedding = encode(chunk)
            embedding.backward(grad)
    return output.detach()


def _no_sync(accelerator: Accelerator | None, model: nn.Module | None) -> AbstractContextManager:
    """Context that suspends DDP's gradient all-reduce for ``model``, if there is one to suspend."""
    if model is None:
        return nullcontext()
    if accelerator is not None:
        return accelerator.no_sync(model)
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


def split_batch(
    batch: Tensor | Mapping[str, Tensor], chunk_size: int
) -> list[Tensor] | list[dict[str, Tensor]]:
    """Split a batch along dim 0 into chunks of at most ``chunk_size`` rows (the chunks of
    ``grad_cache_step``); a mapping such as a tokenizer's ``BatchEncoding`` is split key by key."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if isinstance(batch, Tensor):
        return list(batch.split(chunk_size))
    rows = {key: value.shape[0] for key, value in batch.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"every entry of the batch needs the same number of rows, got {rows}")
    columns = {key: value.split(chunk_size) for key, value in batch.items()}
    num_chunks = len(next(iter(columns.values())))
    return [{key: column[i] for key, column in columns.items()} for i in range(num_chunks)]
