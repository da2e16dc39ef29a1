"""The encode runtime of jina-clip-v2: what `JinaCLIPModel.encode_text` / `encode_image` do around the model.

- The encode policy (listing, checks, the character bound, Matryoshka truncation + normalisation) is
  `policy_jina_clip.py`, torch-free, shared with the ONNX Runtime helper, Sentence-Transformers and evaluation.
- The checks of the features API (`unpack_text_inputs`, `check_text_inputs`, `unpack_pixel_values`).
- Text batching: one tokenization, texts sorted by token count in token-budget batches (`text_batches`), run
  unpadded where that is the fastest exact path (`text_batch_plan`), with the layouts of unpadded batches
  (`pack_texts`, `length_buckets`).
- The image pool: decoding and preprocessing in worker threads, in bounded memory for any iterable.
- `encode_text` / `encode_image` themselves (the model's methods are these functions).

Thread safety: nothing here changes the model or a module-level setting per call. The one shared object a call
changes is the fast tokenizer, whose Rust backend holds the truncation settings of its last call: calls to one
tokenizer are serialised (`policy_jina_clip.tokenize`). A model in training mode is switched to eval for the call and back (do not encode from
several threads while training).

This file is Hub remote code: it imports numpy, torch and transformers, nothing of this repository except
relatively.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from .policy_jina_clip import (
    BUCKET_PADDING,
    DEFAULT_IMAGE_BATCH,
    DEFAULT_IMAGE_TOKENS_PER_BATCH,
    TEXTS_PER_CHUNK,
    add_task_instruction,
    as_list,
    check_texts,
    check_truncate_dim,
    default_image_workers,
    image_batch_size,
    image_stream,
    image_workers,
    length_buckets,
    pixel_batches,
    positive_int,
    refuse_unknown_tokenizer_arguments,
    text_batches,
    text_settings,
    tokenize,
    truncate_and_normalize,
)

logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------
# Checks of the features API
# ----------------------------------------------------------------------------------------------------


def unpack_text_inputs(input_ids, attention_mask):
    """`get_text_features` inputs as tensors: the release's callers pass the tokenizer's `BatchEncoding`
    positionally (`model.get_text_features(tokenizer(texts))`); its mask is used unless one is given."""
    if isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise ValueError(f"text inputs need 'input_ids'; got a mapping with keys {sorted(input_ids)}")
        if attention_mask is None:
            attention_mask = input_ids.get("attention_mask")
        input_ids = input_ids["input_ids"]
    if input_ids is None:
        raise ValueError("get_text_features needs input_ids (a tensor, or the tokenizer's BatchEncoding)")
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(np.asarray(input_ids))
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        attention_mask = torch.as_tensor(np.asarray(attention_mask))
    return input_ids, attention_mask


def unpack_pixel_values(pixel_values):
    """`get_image_features` input as a tensor: also the image processor's `BatchFeature` (or any mapping
    holding `pixel_values`) passed positionally, as release code does, and numpy arrays."""
    if isinstance(pixel_values, Mapping):
        if "pixel_values" not in pixel_values:
            raise ValueError(f"image inputs need 'pixel_values'; got a mapping with keys {sorted(pixel_values)}")
        pixel_values = pixel_values["pixel_values"]
    if pixel_values is None:
        raise ValueError("get_image_features needs pixel_values (a tensor, or the image processor's BatchFeature)")
    if not isinstance(pixel_values, torch.Tensor):
        pixel_values = torch.as_tensor(np.asarray(pixel_values))
    return pixel_values


def eager() -> bool:
    """False while torch.compile / torch.export / the ONNX exporter trace: value checks (`int(t.max())`) would
    be data-dependent guards there, and traced graphs only see example inputs."""
    compiler = torch.compiler
    exporting = getattr(compiler, "is_exporting", lambda: False)()
    return not (compiler.is_compiling() or exporting or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def check_text_inputs(input_ids, attention_mask, vocab_size: int, values: bool) -> None:
    """Shapes, dtypes and (`values`) values a tokenizer gives: ids in [0, vocab_size), a mask of the same
    shape, and at least one token per text (an all-zero mask row would pool to a zero vector)."""
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must have shape (batch, sequence) with at least one token; got {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise TypeError(f"input_ids must hold integer token ids; got dtype {input_ids.dtype}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}")
    if not values or not eager():
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary (0 .. {vocab_size - 1})")
    empty = (attention_mask.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"text(s) {empty[:10]} have no token (an all-zero attention_mask row): nothing to embed")


def check_pixel_values(pixel_values, values: bool) -> None:
    if pixel_values.ndim == 4 and pixel_values.shape[0] == 0:
        raise ValueError("pixel_values holds no image (batch of 0)")
    if not pixel_values.is_floating_point():  # raw 0..255 pixels, not the processor's normalized floats
        raise TypeError(f"pixel_values must be floating point (the image processor's output); got {pixel_values.dtype}")
    if values and eager() and not bool(torch.isfinite(pixel_values).all()):
        raise ValueError("pixel_values holds NaN or infinite values")


# ----------------------------------------------------------------------------------------------------
# Text batching and the layouts of unpadded batches
# ----------------------------------------------------------------------------------------------------

# Token budget of one encode_text batch (real tokens when unpadded, texts x longest when padded), per device
# type. CPU: smaller batches keep the activations in the cache. Measured on 256 long-tailed texts (15,162 tokens), a
# 2-layer real-width text tower, fp32, process CPU time, 3 interleaved rounds, ratio to a 4096-token budget (issue 25,
# benchmarks/README.md "Every entry point"): 1 thread, budgets 256 / 512 / 1024 / 2048: 0.97 / 0.93 / 0.99 / 1.00; 2
# threads, 512 / 1024: 0.98 / 0.96. 1024 is below 4096 in both. CUDA: large enough that the default batch_size
# (32 texts) binds first for texts up to 1024 tokens; a memory bound (activations of ~32k tokens), not tuned.
DEFAULT_TEXT_TOKENS_PER_BATCH = {"cpu": 1024, "cuda": 32768}


def text_batch_plan(model, lengths: Sequence[int], batch_size: int = 32, max_tokens_per_batch: int | None = None,
                    device=None) -> tuple[list[list[int]], bool]:
    """How `encode_text` batches texts of these token counts: (batches of indices, unpadded).

    Unpadded batches where they are the fastest exact path: under FlashAttention (varlen kernels) and, for
    eager/SDPA, on CPU (length buckets, see `JinaCLIPModel.get_text_features`; measured faster than padded batches,
    see benchmarks/README.md). On CUDA without FlashAttention, padded length-sorted batches (one fused SDPA kernel
    per layer). jina-clip-v1's JinaBERT tower, and towers compiled by `compile_towers` (every layout would be a new
    graph), are always padded."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else model.device
    attn = model.config.text_config._attn_implementation or ""
    unpadded = (
        model.config.version == "v2"
        and not model._towers_compiled
        and ("flash" in attn or (device.type == "cpu" and attn in ("eager", "sdpa")))
    )
    if max_tokens_per_batch is None:
        max_tokens_per_batch = DEFAULT_TEXT_TOKENS_PER_BATCH.get(device.type, DEFAULT_TEXT_TOKENS_PER_BATCH["cuda"])
    return text_batches(lengths, batch_size, max_tokens_per_batch, unpadded), unpadded


def pack_texts(input_ids, attention_mask):
    """The real tokens of a right-padded batch as one row: (packed ids (1, T), position ids (1, T) restarting at 0
    for every text, the text of every token (T,), the lengths (n,))."""
    keep = attention_mask.bool()
    lengths = keep.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("every text needs at least one non-pad token")
    packed_ids = input_ids[keep][None]
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=input_ids.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    position_ids = (torch.arange(packed_ids.shape[1], device=input_ids.device) - starts[segment])[None]
    return packed_ids, position_ids, segment, lengths


def pool_packed(hidden, segment, lengths):
    """Masked mean of the packed hidden states (T, D) per text, summed in fp32."""
    sums = torch.zeros(len(lengths), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    return sums.index_add_(0, segment, hidden.float()) / lengths[:, None].float()


# ----------------------------------------------------------------------------------------------------
# The image pool
# ----------------------------------------------------------------------------------------------------


def default_image_batch_size(model, device=None) -> int:
    """encode_image's batch when none is given: `image_batch_size` (the policy's per-device image token budget) for
    the device and the model's image tokens."""
    device = torch.device(device) if device is not None else model.device
    return image_batch_size(device.type, model.config.vision_config.num_positions)


def _stack_pixels(arrays: list[np.ndarray], pin_memory: bool):
    # Stacked straight into (pinned, on CUDA) torch memory: one copy, and the host-to-device copy can overlap.
    out = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.from_numpy(arrays[0][:0]).dtype, pin_memory=pin_memory)
    np.stack(arrays, out=out.numpy())
    return out


def image_batches(items: Iterator, image_processor, batch_size: int, num_workers: int, pin_memory: bool):
    """(indices, {"pixel_values": (n, 3, H, W) tensor}, {}) for consecutive batches of `items`, in order: the policy's
    `pixel_batches` (decoded and preprocessed by a thread pool while the caller embeds the previous batch), stacked
    into (pinned, for CUDA) torch memory."""
    stack = lambda arrays: _stack_pixels(arrays, pin_memory)  # noqa: E731
    for indices, pixels in pixel_batches(items, image_processor, batch_size, num_workers, stack):
        yield indices, {"pixel_values": pixels}, {}


# ----------------------------------------------------------------------------------------------------
# encode_text / encode_image
# ----------------------------------------------------------------------------------------------------

def _same_device(a, b) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda" and (a.index is None) != (b.index is None):
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


def _to_device(tensors: dict, device) -> dict:
    if device.type == "cuda":
        # From pinned memory the copy is asynchronous: the host prepares the next batch meanwhile.
        return {k: (v if v.is_pinned() else v.pin_memory()).to(device, non_blocking=True) for k, v in tensors.items()}
    return {k: v.to(device) for k, v in tensors.items()}


def run_batches(model, batches: Iterable, embed: Callable, count: int | None, device, show_progress_bar: bool | None,
                description: str, truncate_dim: int | None, normalize: bool):
    """`embed` over `batches` ((indices, CPU tensors, embed kwargs) triples): the (n, dim) embeddings, each batch's
    rows truncated and normalised as it comes (`truncate_and_normalize` is row by row) and written at its indices,
    i.e. in the caller's order, into one tensor allocated once (`count` rows; None: an iterable of unknown length,
    whose batches come in order and are concatenated). So no second copy of all pooled outputs is ever held. The
    model is switched to eval mode (and back) only when it is training: sweeping every module costs milliseconds per
    call at real size."""
    if device is not None and not _same_device(torch.device(device), model.device):
        model.to(device)
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
    was_training = model.training
    if was_training:
        model.eval()
    out, parts = None, []
    try:
        with tqdm(total=count, desc=description, disable=not show_progress_bar) as bar:
            for indices, batch, options in batches:
                rows = embed(_to_device(batch, model.device), **options).pooler_output
                rows = truncate_and_normalize(rows, truncate_dim, normalize)
                if count is None:
                    parts.append(rows)
                else:
                    if out is None:
                        out = rows.new_empty((count, rows.shape[-1]))
                    out[torch.tensor(indices, device=rows.device)] = rows
                bar.update(len(indices))
    finally:
        if was_training:
            model.train()
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the image workers (or the text chunks) if the forward pass raised
    return out if count is not None else torch.cat(parts)


def finish(embeddings, single: bool, convert_to_numpy: bool, convert_to_tensor: bool):
    """A tensor, an array or a list of rows (one row for a single input)."""
    if convert_to_tensor:
        return embeddings[0] if single else embeddings
    if convert_to_numpy:
        array = embeddings.float().cpu().numpy()
        return array[0] if single else array
    rows = list(embeddings.unbind(0))
    return rows[0] if single else rows


def batched_text_features(model, input_ids, attention_mask, max_tokens_per_batch: int | None = None) -> torch.Tensor:
    """The raw (un-normalised) embeddings (n, dim) of an already tokenized batch, in its order, computed as
    `encode_text` computes them: texts sorted by token count into token-budget batches, unpadded where that is the
    fastest exact path (`text_batch_plan`). The entry point of callers that tokenize themselves (the
    Sentence-Transformers module); gradients flow through it as through `get_text_features`."""
    input_ids, attention_mask = unpack_text_inputs(input_ids, attention_mask)
    check_text_inputs(input_ids, attention_mask, model.config.text_config.vocab_size, values=True)
    lengths = attention_mask.sum(1).tolist()
    batches, unpadded = text_batch_plan(model, lengths, len(lengths), max_tokens_per_batch, input_ids.device)
    # A right-padded batch (the tokenizers' default) is cut to each batch's longest text; other layouts stay whole.
    right_padded = bool((attention_mask[:, :-1] >= attention_mask[:, 1:]).all())
    out = None
    for indices in batches:
        rows = torch.tensor(indices, device=input_ids.device)
        width = max(lengths[i] for i in indices) if right_padded else input_ids.shape[1]
        pooled = model.get_text_features(
            input_ids[rows, :width], attention_mask=attention_mask[rows, :width], unpadded=unpadded, check_inputs=False
        ).pooler_output
        if out is None:
            out = pooled.new_empty((len(lengths), pooled.shape[-1]))
        out = out.index_copy(0, rows, pooled) if pooled.requires_grad else out.index_copy_(0, rows, pooled)
    return out




@torch.inference_mode()
def encode_text(
    model,
    sentences: str | Sequence[str],
    task: str | None = None,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    convert_to_numpy: bool = True,
    convert_to_tensor: bool = False,
    device: str | torch.device | None = None,
    normalize_embeddings: bool = True,
    truncate_dim: int | None = None,
    max_length: int | None = None,
    max_tokens_per_batch: int | None = None,
    max_chars: int | None = None,
    **tokenizer_kwargs,
):
    """Embed texts. Returns a (n, dim) float32 array by default (a vector for a single string).

    The texts are tokenized in chunks of `TEXTS_PER_CHUNK` (memory stays flat however many are given); each chunk's
    texts are sorted by token count (longest first) and grouped into batches of at most `batch_size` texts and
    `max_tokens_per_batch` tokens; where the backend makes it pay (FlashAttention, or eager/SDPA on CPU) the batches
    are unpadded, so (almost) no pad token is computed (`text_batch_plan`). The outputs come back in the input order
    and equal those of encoding each text alone (to float rounding). Safe to call from several threads on one model
    (in eval mode, as loaded).

    Args:
        task: "retrieval.query" prepends the release's query instruction; None adds nothing. (jina-clip-v1 has no
            instructions: any task is an error there.)
        truncate_dim: keep the first k dims (one of `config.matryoshka_dimensions`), then L2-normalise.
        max_length: tokens per text (default `config.max_text_length`, 512 as in the release).
        max_tokens_per_batch: token budget per batch: real tokens when unpadded, texts x longest text when padded
            (default: `DEFAULT_TEXT_TOKENS_PER_BATCH` for the device). A text longer than the budget gets a batch of
            its own.
        max_chars: characters of a text read before tokenizing (default `TEXT_CHARS_PER_TOKEN` x max_length): a
            longer text is cut there, which never changes the tokens kept (a text where it could is refused, as is
            any longer text with truncation=False).
        tokenizer_kwargs: passed to the tokenizer (e.g. truncation=False). Padding options (padding,
            pad_to_multiple_of) only shape padded batches: they change no embedding.
    """
    config = model.config
    texts, single = as_list(sentences, "texts")
    check_texts(texts)
    truncate_dim = check_truncate_dim(truncate_dim, config.matryoshka_dimensions, config.projection_dim, config.truncate_dim)
    settings = text_settings(tokenizer_kwargs, max_length, config.max_text_length)
    batch_size = positive_int(batch_size, "batch_size")
    if max_tokens_per_batch is not None:
        max_tokens_per_batch = positive_int(max_tokens_per_batch, "max_tokens_per_batch")
    texts = add_task_instruction(texts, task, config.task_instructions)
    tokenizer = model.processor.tokenizer
    refuse_unknown_tokenizer_arguments(tokenizer, tokenizer_kwargs)
    padding = settings.pop("padding", True)
    pad_to_multiple_of = settings.pop("pad_to_multiple_of", None)
    settings.pop("return_tensors", None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.text_config.pad_token_id

    def chunk_batches(start: int):
        # One tokenization per chunk: the batching's lengths and every batch's ids come from it.
        encoded = tokenize(tokenizer, texts[start : start + TEXTS_PER_CHUNK], settings, max_chars, start, padding=False,
                           return_attention_mask=False)
        ids = encoded["input_ids"]
        lengths = [len(row) for row in ids]
        empty = [start + index for index, length in enumerate(lengths) if length == 0]
        if empty:  # e.g. "" with add_special_tokens=False: it would pool to a zero vector
            raise ValueError(f"text(s) {empty[:10]} give no token at all (with these tokenizer settings): nothing to embed")
        batches, unpadded = text_batch_plan(model, lengths, batch_size, max_tokens_per_batch, device)
        flat = torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)
        del encoded, ids
        length_table = torch.tensor(lengths, dtype=torch.long)
        starts = torch.cumsum(length_table, 0) - length_table
        for indices in batches:
            rows = torch.tensor(indices, dtype=torch.long)
            width = max(lengths[i] for i in indices)
            if not unpadded:
                if padding == "max_length":
                    width = max(width, settings["max_length"])
                if pad_to_multiple_of:
                    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
            offsets = torch.arange(width)
            real = offsets[None] < length_table[rows][:, None]
            input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
            input_ids[real] = flat[(starts[rows][:, None] + offsets[None])[real]]  # right padding, as the release
            yield [start + i for i in indices], {"input_ids": input_ids, "attention_mask": real.long()}, {"unpadded": unpadded}

    def embed(batch, unpadded):
        return model.get_text_features(batch["input_ids"], attention_mask=batch["attention_mask"], unpadded=unpadded, check_inputs=False)

    batches = itertools.chain.from_iterable(map(chunk_batches, range(0, len(texts), TEXTS_PER_CHUNK)))
    embeddings = run_batches(model, batches, embed, len(texts), device, show_progress_bar, "Encoding texts", truncate_dim,
                             normalize_embeddings)
    return finish(embeddings, single, convert_to_numpy, convert_to_tensor)


@torch.inference_mode()
def encode_image(
    model,
    images,
    batch_size: int | None = None,
    show_progress_bar: bool | None = None,
    convert_to_numpy: bool = True,
    convert_to_tensor: bool = False,
    device: str | torch.device | None = None,
    normalize_embeddings: bool = True,
    truncate_dim: int | None = None,
    num_workers: int | None = None,
):
    """Embed images given as PIL images, paths, http(s) URLs, data:image URIs, bytes, open files or numpy arrays
    (one, a list, or any iterable, e.g. a generator of paths; see `image_stream`), decoded as the release decodes
    them (`processing_jina_clip.load_image`, with the options saved in the image processor). Returns a (n, dim)
    float32 array by default (a vector for a single image).

    Args:
        batch_size: images per forward pass (default `default_image_batch_size`: 32 on GPUs; on CPU the measured
            best, 1 image at 512 px). Every batch size gives the same embeddings.
        num_workers: threads that decode and preprocess images while the model embeds the previous batch
            (default `min(8, CPU cores)`; 0: everything in the calling thread). At most 2 x `batch_size` images
            are read ahead of the model, so an iterator of any length streams in bounded memory. The pixels are
            the same bit for bit whatever the number of workers.
    """
    config = model.config
    truncate_dim = check_truncate_dim(truncate_dim, config.matryoshka_dimensions, config.projection_dim, config.truncate_dim)
    batch_size = default_image_batch_size(model, device) if batch_size is None else positive_int(batch_size, "batch_size")
    num_workers = image_workers(num_workers)
    items, single, count = image_stream(images)
    target = torch.device(device) if device is not None else model.device
    batches = image_batches(
        items, model.processor.image_processor, batch_size, 0 if count == 1 else num_workers, pin_memory=target.type == "cuda"
    )
    embeddings = run_batches(
        model, batches, lambda batch: model.get_image_features(batch["pixel_values"], check_inputs=False), count, device,
        show_progress_bar, "Encoding images", truncate_dim, normalize_embeddings,
    )
    return finish(embeddings, single, convert_to_numpy, convert_to_tensor)


__all__ = [
    "BUCKET_PADDING",
    "DEFAULT_IMAGE_BATCH",
    "DEFAULT_IMAGE_TOKENS_PER_BATCH",
    "DEFAULT_TEXT_TOKENS_PER_BATCH",
    "as_list",
    "check_truncate_dim",
    "default_image_batch_size",
    "default_image_workers",
    "encode_image",
    "encode_text",
    "image_batches",
    "image_stream",
    "length_buckets",
    "positive_int",
    "text_batch_plan",
    "text_batches",
    "truncate_and_normalize",
]
