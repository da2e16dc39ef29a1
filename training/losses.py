"""Contrastive losses of jina-clip-v2 (paper sections 3.3 and 3.4), computed on embeddings only.

Every function takes raw (unnormalized) embeddings; nothing here knows about the model.

- ``info_nce`` (eq. 1) and ``info_nce_plus`` (eq. 2): the two losses at one embedding width, scored
  against the local batch or against candidates gathered from every rank.
- ``contrastive_loss``: one task's loss, eq. 1 or eq. 2 summed over the Matryoshka widths (section
  3.4), with global in-batch negatives.
- ``joint_loss``: eq. 3, the text task plus the image-text task, each with its own temperature.
- ``LearnableTemperature``: CLIP's clamped logit scale, one instance per task.
- ``LossOutput``: what every loss returns (the optimized value, its Matryoshka terms, its parts).
- ``gather_with_grad`` and ``average_gradients``: the distributed plumbing.

Gradient caching (``training.grad_cache``) evaluates these losses on embeddings computed chunk by chunk.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MATRYOSHKA_DIMS",
    "LearnableTemperature",
    "LossOutput",
    "average_gradients",
    "contrastive_loss",
    "gather_with_grad",
    "info_nce",
    "info_nce_plus",
    "joint_loss",
]

MATRYOSHKA_DIMS: tuple[int, ...] = (64, 128, 256, 512, 768, 1024)
"""Section 3.4: every loss is evaluated on these prefixes of the 1024-d embeddings and summed."""

Temperature = Union[Tensor, float]
"""The softmax temperature tau: a positive float, or a 0-d tensor such as ``LearnableTemperature()()``."""


class LearnableTemperature(nn.Module):
    """A learnable softmax temperature tau, stored as CLIP's logit scale ``log(1 / tau)``.

    Learning the log of the inverse keeps tau positive and makes optimizer steps relative rather than
    absolute (Radford et al., 2021). The scale is capped at ``max_scale`` (100, i.e. tau >= 0.01) as in
    CLIP, because an unbounded scale makes the softmax arbitrarily sharp and training unstable.
    ``forward`` applies the cap; call ``clamp_()`` after every optimizer step, as CLIP does, so the raw
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
class LossOutput:
    """What every loss returns: ``loss``, the value that is optimized; for one task its Matryoshka terms
    (``per_dim``: width -> detached term); for eq. 3 its two tasks (``parts``: ``text``, ``image_text``)."""

    loss: Tensor
    per_dim: dict[int, Tensor] = field(default_factory=dict)
    parts: dict[str, LossOutput] = field(default_factory=dict)

    @property
    def text(self) -> LossOutput:
        return self.parts["text"]

    @property
    def image_text(self) -> LossOutput:
        return self.parts["image_text"]

    def detach(self) -> LossOutput:
        return LossOutput(self.loss.detach(), self.per_dim, {name: part.detach() for name, part in self.parts.items()})

    def terms(self, prefix: str = "loss") -> dict[str, Tensor]:
        """``{prefix: loss, prefix/<part>: part loss}`` as detached tensors (no host sync: the training loop
        sums them over a logging window and reads them only when it logs)."""
        out = {prefix: self.loss.detach()}
        for name, part in self.parts.items():
            out[f"{prefix}/{name}"] = part.loss.detach()
        return out

    def log_values(self, prefix: str = "loss") -> dict[str, float]:
        """``{prefix: total, prefix/dim_<d>: term, prefix/<part>[/dim_<d>]: ...}`` as Python floats."""
        values = {prefix: self.loss.item()}
        values.update({f"{prefix}/dim_{dim}": term.item() for dim, term in self.per_dim.items()})
        for name, part in self.parts.items():
            values.update(part.log_values(f"{prefix}/{name}"))
        return values


def contrastive_loss(
    q: Tensor,
    p: Tensor,
    temperature: Temperature,
    *,
    negatives: Tensor | None = None,
    dims: Sequence[int] | None = MATRYOSHKA_DIMS,
    gather: bool = True,
) -> LossOutput:
    """One task's loss: eq. 1, or eq. 2 when ``negatives`` are given, summed over Matryoshka widths.

    Every width is computed from the same embeddings (one forward pass). Each term truncates to the
    first d features and only then normalizes, as section 3.4 and inference-time truncation do.

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
    return LossOutput(total, {dim: term.detach() for dim, term in per_dim.items()})


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
) -> LossOutput:
    """Eq. 3: text-task loss plus image-text InfoNCE, each Matryoshka-summed with its own temperature.

    Stages 1 and 2 pass text pairs; stage 3 passes ``text_negatives`` (b, 7, D) and the text task
    becomes InfoNCE+ (eq. 2). ``dims`` and ``gather`` apply to both tasks, as in ``contrastive_loss``.
    """
    text = contrastive_loss(
        text_queries, text_targets, text_temperature,
        negatives=text_negatives, dims=dims, gather=gather,
    )
    image_text = contrastive_loss(captions, images, image_temperature, dims=dims, gather=gather)
    return LossOutput(text.loss + image_text.loss, parts={"text": text, "image_text": image_text})


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


def gather_with_grad(tensor: Tensor) -> tuple[Tensor, int]:
    """All-gather ``tensor`` along dim 0 from every rank, keeping the autograd graph.

    Returns ``(gathered, offset)``: the rows of all ranks in rank order, and the index of this rank's
    first row in them. Without an initialized process group, or with a single process, returns
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
    # torch's autograd all-gather needs equal shapes: pad every rank's rows to the largest local batch.
    # Its backward hands each rank the gradient of its rows summed over all ranks' losses (every rank's
    # loss used them), which the scaling convention of the module docstring rests on.
    padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, max(sizes) - tensor.shape[0]))
    gathered = dist_nn.all_gather(padded)
    rows = torch.cat([part[:size] for part, size in zip(gathered, sizes)])
    return rows, sum(sizes[: dist.get_rank()])


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
