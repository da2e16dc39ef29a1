"""The encode policy of jina-clip-v2, torch-free: how inputs are listed (`as_list`, `image_stream`: what is one
input and what is a batch), the argument checks, the character bound of texts (`TEXT_CHARS_PER_TOKEN`), the
Matryoshka check (`check_truncate_dim`) and truncation + normalisation (`truncate_and_normalize`: slice first,
then L2-normalise), the thread-safe, character-bounded tokenization (`tokenize`), and the order texts are run in
(`text_batches`: sorted by token count into token-budget batches; `length_buckets`), and the image batches
(`image_batch_size`: the per-device image token budget; `pixel_batches`: decoded and preprocessed by a thread pool
ahead of the model, in order). `encoding_jina_clip.py` (the model's `encode_*`), the ONNX Runtime helper
(`hub/onnx_runtime.py`), Sentence-Transformers (`hub/custom_st.py`) and the evaluation all use these, so each
rule exists once.

This file is Hub remote code: it imports numpy only (no torch: the ONNX Runtime helper runs without it), nothing of
this repository.
"""

from __future__ import annotations

import inspect
import itertools
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Characters of a text read before tokenizing, per token of `max_length`: a text longer than
# TEXT_CHARS_PER_TOKEN x max_length characters is cut there first (a 20M-character text would otherwise cost
# gigabytes in the tokenizer). XLM-R averages ~4 characters per token (~1.5 in CJK scripts), so at 512 tokens the
# 32,768 characters kept are 16x what the kept tokens need; and the cut is checked never to change them (see
# `tokenize`). `encode_text(max_chars=...)` sets another bound.
TEXT_CHARS_PER_TOKEN = 64

# Tasks of jina-embeddings-v3 that jina-clip-v2 users carry over; only retrieval.query exists here.
EMBEDDINGS_V3_TASKS = ("retrieval.passage", "separation", "classification", "text-matching")


def _is_array(value: Any) -> bool:
    # numpy arrays and tensors (torch, ...) without importing torch
    return hasattr(value, "ndim") and hasattr(value, "shape") and not isinstance(value, (str, bytes))


def _is_file(value: Any) -> bool:
    return callable(getattr(value, "read", None))


def as_list(inputs: Any, kind: str) -> tuple[list, bool]:
    """`inputs` as a non-empty list, and whether a single input was given.

    Texts: a string is one text; a list, tuple, 1-D array or any other iterable of strings is a batch.
    Images: a string, path, bytes, open file (or `io.BytesIO`), PIL image or a 2-D / 3-D array (HxW, HxWxC,
    CxHxW) is one image; a list, tuple or 4-D array is a batch (for other iterables see `image_stream`). A
    mapping is refused (iterating it would give its keys), so are arrays of other ranks."""
    if inputs is None:
        raise ValueError(f"{kind} must not be None")
    if isinstance(inputs, Mapping):
        hint = " (Sentence-Transformers' {'image': ...} inputs go to SentenceTransformer.encode)" if kind == "images" else ""
        raise TypeError(f"{kind} must be {'a string' if kind == 'texts' else 'an image'} or a list of them, not a "
                        f"{type(inputs).__name__} (a mapping would be read as its keys){hint}")
    if _is_array(inputs):
        items, single = _array_items(inputs, kind)
    elif kind == "texts":
        single = isinstance(inputs, (str, bytes, bytearray)) or not isinstance(inputs, Iterable)
        items = [inputs] if single else list(inputs)
    else:
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
    if not items:
        raise ValueError(f"{kind} must not be empty")
    return items, single


def _array_items(array: Any, kind: str) -> tuple[list, bool]:
    ndim, dtype = array.ndim, str(getattr(array, "dtype", ""))
    if kind == "texts":
        return ([array.item()] if ndim == 0 else list(array)), ndim == 0  # a 1-D array of strings is a batch
    if ndim in (2, 3):
        return [array], True  # one image; iterating a 2-D greyscale image would yield its rows
    if ndim == 4:
        return list(array), False  # a stack of images
    if ndim == 1 and (array.shape[0] == 0 or dtype == "object" or dtype.startswith(("<U", "|S"))):
        return list(array), False  # paths, bytes or images in an object array (or none: refused as empty)
    raise ValueError(
        f"numpy images must be HxW, HxWxC or CxHxW, or a batch of them (NxHxWxC or NxCxHxW); got a {ndim}-D array of "
        f"shape {tuple(array.shape)}" + (" (for encoded image bytes pass bytes(array))" if ndim == 1 else "")
    )


_END = object()


def image_stream(images: Any) -> tuple[Iterator, bool, int | None]:
    """(iterator over the images, single image?, count or None). One image, lists, tuples and arrays go through
    `as_list`; any other iterable (a generator, a dataset) is streamed, never materialised. Open files and byte
    buffers are one image each, although Python iterates them (by lines)."""
    one = isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, list, tuple, Mapping)) or _is_file(images)
    if one or _is_array(images) or not isinstance(images, Iterable):
        items, single = as_list(images, "images")
        return iter(items), single, len(items)
    iterator = iter(images)
    first = next(iterator, _END)
    if first is _END:
        raise ValueError("images must not be empty")
    return itertools.chain([first], iterator), False, len(images) if isinstance(images, Sized) else None


# Image tokens (patches + CLS, `vision_config.num_positions`) of one image batch when `batch_size` is not given, per
# device type. CPU: the vision tower's per-image cost grows with the batch once a batch's activations spill out of the
# cache (issue 25: element-wise ops 2-4x slower). Measured at 512 px (1297 tokens per image; one thread, 8 images,
# real-width tower; benchmarks/README.md "Every entry point"): batches of 1 / 2 / 8 took 0.975 / 1.000 / 1.118x the
# CPU time of a per-image user loop (PyTorch), and ONNX Runtime's graph 463 / 494 / 566 ms per image. So about one
# 512-px image's tokens: 1 image at 384 and 512 px, 4 at 224 px (257 tokens each). Other devices: 32 images (large
# batches fill a GPU).
DEFAULT_IMAGE_TOKENS_PER_BATCH = {"cpu": 1100}
DEFAULT_IMAGE_BATCH = 32


def image_batch_size(device_type: str, tokens_per_image: int) -> int:
    """The image batch when none is given: `DEFAULT_IMAGE_TOKENS_PER_BATCH` of the device type ("cpu", "cuda", ...)
    over the image tokens, at least 1 and at most `DEFAULT_IMAGE_BATCH`."""
    budget = DEFAULT_IMAGE_TOKENS_PER_BATCH.get(device_type)
    if budget is None:
        return DEFAULT_IMAGE_BATCH
    return max(1, min(DEFAULT_IMAGE_BATCH, budget // tokens_per_image))


def default_image_workers() -> int:
    """Threads decoding images: one per available CPU core, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def image_workers(num_workers: Any) -> int:
    """`num_workers` checked (an int >= 0), or `default_image_workers()` for None."""
    if num_workers is None:
        return default_image_workers()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    return num_workers


def _preprocess_image(image_processor, item) -> np.ndarray:
    # One image through the processor, which decodes it with the package's one decoder (load_image).
    return image_processor([item], return_tensors="np")["pixel_values"][0]


def pixel_batches(items: Iterator, image_processor, batch_size: int, num_workers: int,
                  stack: Callable[[list[np.ndarray]], Any] = np.stack) -> Iterator[tuple[list[int], Any]]:
    """(indices, `stack`ed (n, 3, H, W) pixels) for consecutive batches of `items`, in order.

    With workers, a thread pool decodes and preprocesses images one by one while the caller embeds the previous
    batch; at most 2 x batch_size images are submitted ahead, so memory stays bounded for any input length.
    Without, the processor runs on each batch in the calling thread. Both give the same pixels: the processor
    treats every image on its own."""
    start = 0
    if num_workers == 0:
        while chunk := list(itertools.islice(items, batch_size)):
            yield list(range(start, start + len(chunk))), stack(list(image_processor(chunk, return_tensors="np")["pixel_values"]))
            start += len(chunk)
        return
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="jina-clip-images")
    pending: deque = deque()
    window = 2 * batch_size

    def top_up() -> None:
        for item in itertools.islice(items, window - len(pending)):
            pending.append(pool.submit(_preprocess_image, image_processor, item))

    try:
        top_up()
        while pending:
            arrays = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            top_up()  # the workers prepare the next batch while this one is embedded
            yield list(range(start, start + len(arrays))), stack(arrays)
            start += len(arrays)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def positive_int(value: Any, name: str) -> int:
    """`value` as a count >= 1, or a clear error (bools and floats are mistakes, not counts)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_texts(texts: list) -> None:
    """Every text a string (the characters themselves are checked where they are read, in `tokenize`)."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {index} is {type(text).__name__}")


def _check_unicode(texts: list[str], first_index: int) -> None:
    for index, text in enumerate(texts):
        if text.isascii():
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # lone surrogates: no tokenizer can read them
            raise ValueError(
                f"text {first_index + index} is not valid Unicode ({err.reason} at position {err.start}: "
                f"{text[err.start]!r})"
            ) from None


def add_task_instruction(texts: list[str], task: str | None, instructions: Mapping[str, str]) -> list[str]:
    """The release's instruction of `task` before every text (task=None: the texts as they are)."""
    if task is None:
        return texts
    if not instructions:
        raise ValueError(
            f"task={task!r}: this model has no task instructions (jina-clip-v1 embeds queries and documents alike); "
            "call encode_text without task"
        )
    if task not in instructions:
        # jina-clip-v2 kept one of jina-embeddings-v3's five adapters (paper section 3.1).
        hint = " (a jina-embeddings-v3 task: jina-clip-v2 has only the query instruction; embed documents with task=None)"
        raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(instructions)}{hint if task in EMBEDDINGS_V3_TASKS else ''}")
    return [instructions[task] + text for text in texts]


def check_truncate_dim(truncate_dim: Any, matryoshka_dimensions: Sequence[int], width: int, default: int | None = None) -> int | None:
    """The Matryoshka check of every entry point: `truncate_dim` (or `default` when None) must be one of the
    trained prefixes `matryoshka_dimensions`; a model trained without them (jina-clip-v1) takes none. numpy
    integers pass; bools and floats are refused although True == 1 and 8.0 == 8 (a float cannot slice, and True
    is a mistake, not a width)."""
    truncate_dim = truncate_dim if truncate_dim is not None else default
    if truncate_dim is None:
        return None
    dims = list(matryoshka_dimensions or [])
    if not dims:
        raise ValueError(
            f"truncate_dim={truncate_dim!r}: this model was not trained with Matryoshka representation learning "
            f"(jina-clip-v1; config.matryoshka_dimensions is empty), so truncated embeddings would not be "
            f"meaningful; use the full {width}-d embeddings (truncate_dim=None)"
        )
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer)) or int(truncate_dim) not in dims:
        raise ValueError(f"truncate_dim={truncate_dim!r} is not supported; valid values: {dims}")
    return int(truncate_dim)


def truncate_and_normalize(embeddings: Any, truncate_dim: int | None = None, normalize: bool = True):
    """Matryoshka truncation: the first `truncate_dim` dims of the un-normalised embeddings, then (`normalize`)
    L2-normalise each row, never the other way round. numpy in, float32 numpy out (x / max(||x||, 1e-12), as
    `torch.nn.functional.normalize`); a torch tensor stays a tensor of its dtype (normalised in float32)."""
    tensor = type(embeddings).__module__.partition(".")[0] == "torch"
    if not tensor:
        embeddings = np.asarray(embeddings, dtype=np.float32)
    if truncate_dim is not None:
        width = embeddings.shape[-1]
        if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer)) or not 1 <= truncate_dim <= width:
            raise ValueError(f"cannot truncate {width}-d embeddings to {truncate_dim!r} dims")
        embeddings = embeddings[..., : int(truncate_dim)]
    if not normalize:
        return embeddings
    if tensor:  # torch.nn.functional.normalize, written with tensor methods (this file imports no torch)
        rows = embeddings.float()
        return (rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(embeddings.dtype)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.maximum(norms, np.float32(1e-12))


def text_settings(tokenizer_kwargs: dict, max_length: int | None, default_max_length: Any) -> dict:
    """The tokenizer settings of encode_text: the release's (truncation at max_length, default the config's
    `max_text_length`), each overridable; padding options are for padded batches only and are taken out."""
    if "adapter_mask" in tokenizer_kwargs:  # earlier releases took it; the tokenizer would ignore it
        raise TypeError(
            "encode_text no longer takes adapter_mask (removed from the release's interface too): jina-clip-v2 has "
            "one LoRA adapter, merged into the weights and applied to every text; pass task='retrieval.query' for "
            "the query instruction, or nothing for documents"
        )
    if max_length is None:
        # 0 or less would make the tokenizer skip truncation: a config value that says so is refused.
        max_length = positive_int(default_max_length, "config.max_text_length")
    else:
        max_length = positive_int(max_length, "max_length")
    return {"truncation": True, **tokenizer_kwargs, "max_length": max_length}


def refuse_unknown_tokenizer_arguments(tokenizer, tokenizer_kwargs: dict) -> None:
    """encode_text passes its extra keywords to the tokenizer, which only warns about names it does not know: a
    typo (`normalise_embeddings=False`) would be ignored silently. Names the tokenizer's __call__ declares pass."""
    known = inspect.signature(type(tokenizer).__call__).parameters
    unknown = sorted(name for name in tokenizer_kwargs if name not in known)
    if unknown:
        raise TypeError(
            f"encode_text got unexpected keyword argument(s) {unknown}: neither an encode_text argument nor a "
            f"setting of the tokenizer ({type(tokenizer).__name__}.__call__)"
        )


def bound_characters(texts: list[str], limit: int) -> tuple[list[str], list[int]]:
    """Texts longer than `limit` characters cut to their first `limit` (and the indices of those cut)."""
    cut = [index for index, text in enumerate(texts) if len(text) > limit]
    if not cut:
        return texts, cut
    texts = list(texts)
    for index in cut:
        texts[index] = texts[index][:limit]
    return texts, cut



# Texts of an unpadded batch share one padded call of the text tower while padding them to the longest of their
# bucket adds at most this fraction of their real tokens (0: only equal lengths share a call). Padding is masked,
# so it changes no output; it only trades a little work for fewer, larger kernel calls.
BUCKET_PADDING = 0.125
# Texts tokenized per call of the tokenizer in `encode_text` (and the ONNX Runtime helper): the tokenizer's output
# costs ~5-6 KB per short text, so tokenizing 100k texts up front held ~0.5 GB; per chunk, memory stays flat as the
# input grows (benchmarks/entry_points.py, "memory"), and each chunk still sorts thousands of texts by length to
# fill its token-budget batches.
TEXTS_PER_CHUNK = 4096


def text_batches(lengths: Sequence[int], batch_size: int, max_tokens: int, unpadded: bool) -> list[list[int]]:
    """Text indices in batches, longest first (ties in input order): at most `batch_size` texts and `max_tokens`
    tokens per batch (the real tokens when `unpadded`, texts x longest text when padded). A text longer than
    the budget gets a batch of its own. Short texts go in large batches, long ones in small: memory stays flat."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens_per_batch must be >= 1, got {max_tokens}")
    batches: list[list[int]] = []
    tokens = 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        current = batches[-1] if batches else None
        # Descending order: a padded batch's longest text is its first, so it holds len(batch) x that.
        grown = tokens + lengths[index] if unpadded else (len(current) + 1) * lengths[current[0]] if current else 0
        if current and len(current) < batch_size and grown <= max_tokens:
            current.append(index)
            tokens = grown
        else:
            batches.append([index])
            tokens = lengths[index]
    return batches


def length_buckets(lengths: Sequence[int], padding: float = BUCKET_PADDING) -> list[list[int]]:
    """Text indices in buckets, longest first, such that padding each bucket to its longest text costs at most
    `padding` x the bucket's real tokens."""
    buckets: list[list[int]] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if buckets and (len(buckets[-1]) + 1) * lengths[buckets[-1][0]] <= (1.0 + padding) * (real + lengths[index]):
            buckets[-1].append(index)
            real += lengths[index]
        else:
            buckets.append([index])
            real = lengths[index]
    return buckets


_TOKENIZER_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOKENIZER_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tokenizer) -> threading.Lock:
    """The lock that serialises `tokenize`'s calls to one tokenizer: a fast tokenizer keeps the truncation and
    padding settings of its last call in its Rust backend, so two threads tokenizing with different `max_length`
    would get each other's settings (silently wrong ids)."""
    with _TOKENIZER_LOCKS_GUARD:
        lock = _TOKENIZER_LOCKS.get(tokenizer)
        if lock is None:
            lock = _TOKENIZER_LOCKS[tokenizer] = threading.Lock()
        return lock


def tokenize(tokenizer, texts: list[str], settings: dict, max_chars: int | None = None, first_index: int = 0, **call_kwargs):
    """The tokenization of `encode_text` (and of the ONNX helper): the tokenizer with `settings` (see
    `text_settings`) and `call_kwargs`, on texts bounded by characters first.

    A text longer than `max_chars` (default `TEXT_CHARS_PER_TOKEN` x max_length) is cut to its first `max_chars`
    characters, and the cut is checked not to change the tokens kept: tokenizers normalise and split text locally
    (within words and whitespace runs), so tokens that end in the first half of the kept characters, with
    `max_chars / 2` characters of the text still after them, are the whole text's. A text whose kept tokens reach
    further (e.g. a huge run of whitespace) is refused, not cut; so is any longer text when truncation is off.
    `first_index`: the position of `texts[0]` among the caller's texts, for the error messages."""
    limit = positive_int(max_chars, "max_chars") if max_chars is not None else TEXT_CHARS_PER_TOKEN * settings["max_length"]
    full_lengths = [len(text) for text in texts]
    texts, cut = bound_characters(texts, limit)
    fast = getattr(tokenizer, "is_fast", False)
    if cut and (settings.get("truncation") in (False, None, "do_not_truncate") or not fast):
        raise ValueError(
            f"text {first_index + cut[0]} has {full_lengths[cut[0]]} characters, more than max_chars={limit}, and "
            f"{'truncation is off' if fast else 'the tokenizer gives no offsets'}: pass a larger max_chars (it bounds "
            "the characters read before tokenizing) or shorten the text"
        )
    _check_unicode(texts, first_index)  # the characters read: a 20M-character text is not copied to check it
    with tokenizer_lock(tokenizer):
        encoded = tokenizer(texts, return_offsets_mapping=bool(cut), **settings, **call_kwargs)
    for index in cut:
        end = max((int(stop) for _, stop in encoded["offset_mapping"][index]), default=0)
        if end > limit // 2:
            raise ValueError(
                f"text {first_index + index} has {full_lengths[index]} characters, more than max_chars={limit}, and its "
                f"kept tokens reach character {end}, past the first {limit // 2}: cutting it could change them. Pass a "
                "larger max_chars (it bounds the characters read before tokenizing) or shorten the text"
            )
    return encoded

__all__ = [
    "BUCKET_PADDING",
    "DEFAULT_IMAGE_BATCH",
    "DEFAULT_IMAGE_TOKENS_PER_BATCH",
    "TEXTS_PER_CHUNK",
    "TEXT_CHARS_PER_TOKEN",
    "add_task_instruction",
    "as_list",
    "bound_characters",
    "check_texts",
    "check_truncate_dim",
    "default_image_workers",
    "image_batch_size",
    "image_stream",
    "image_workers",
    "length_buckets",
    "pixel_batches",
    "positive_int",
    "refuse_unknown_tokenizer_arguments",
    "text_batches",
    "text_settings",
    "tokenize",
    "tokenizer_lock",
    "truncate_and_normalize",
]
