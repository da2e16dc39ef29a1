"""Gradient caching (Gao et al., 2021): the full-batch contrastive loss with activations held for one chunk
at a time.

A contrastive loss does not decompose over rows (every row sits in every denominator), so plain gradient
accumulation would shrink the pool of in-batch negatives. ``grad_cache_step`` keeps the full-batch loss:

1. encode every chunk without a graph, remembering the RNG state it started from;
2. evaluate the loss on the concatenated embeddings as leaves and backpropagate, which caches
   d loss / d embedding (and fills the gradients of parameters inside the loss, such as temperatures);
3. re-encode each chunk with a graph, replaying its RNG state (``torch.random.fork_rng``) so dropout draws
   the same masks, and backpropagate the cached slice of d loss / d embedding into the encoder.

The parameter gradients equal those of one backward through the plainly encoded chunks, and the CPU/CUDA
generators end where that plain pass would leave them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jina_clip_v2.training.losses import LossOutput

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["grad_cache_step", "split_batch"]

Encode = Callable[[Any], Tensor]
EmbeddingGroup = tuple[Encode, Sequence[Any]]
"""``(encode, chunks)``: the group's embeddings are ``encode(chunk)`` concatenated over its chunks."""

Output = TypeVar("Output", Tensor, LossOutput)


@dataclass
class _RngState:
    """The CPU and CUDA generator states a chunk was first encoded with."""

    cpu: Tensor
    cuda: list[Tensor]

    @classmethod
    def capture(cls) -> _RngState:
        # CUDA states only when CUDA is in use: initializing it here would be a side effect.
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return cls(torch.get_rng_state(), cuda)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body from these states, then put the generators back as they were (the first pass
        already advanced them; a replay must not advance them twice)."""
        with torch.random.fork_rng(devices=list(range(len(self.cuda)))):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def grad_cache_step(
    loss_fn: Callable[..., Output],
    groups: Sequence[EmbeddingGroup],
    *,
    accelerator: Accelerator | None = None,
    model: nn.Module | None = None,
) -> Output:
    """Backpropagate ``loss_fn`` over a batch encoded chunk by chunk (see the module docstring).

    Randomness drawn from other generators than torch's default CPU / CUDA ones (explicit
    ``torch.Generator`` objects) is not replayed.

    Args:
        loss_fn: called with one embedding tensor per group; returns a loss tensor or a ``LossOutput``.
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


def split_batch(batch: Tensor | Mapping[str, Tensor], chunk_size: int) -> list[Tensor] | list[dict[str, Tensor]]:
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
