"""Full-width embeddings with an on-disk cache, and the Matryoshka truncation applied on top of them.

Every benchmark encodes its texts and images **once**, at the model's full width, through the model's
own ``encode_text`` / ``encode_image`` (any object with those two methods works: our
``JinaCLIPModel``, the release loaded with ``AutoModel``, or a stand-in). A sweep over truncation
dims then only slices: ``truncate_and_normalize`` (the model's own encode policy,
``jina_clip_v2.modeling.policy_jina_clip``) keeps the first ``dim`` coordinates and L2-normalises them -- the
model's ``truncate_dim`` semantics (slice, then normalise). Whether the
model normalised before returning does not matter: a positive rescaling of a row does not change its
normalised prefix.

The cache (:class:`EmbeddingCache`) stores one ``.npy`` (float32) per encode request under a key that
hashes

* the model's identity (:func:`model_fingerprint`: class, config, processor settings, and a strided
  sample of every weight tensor -- cheap even at 0.9B parameters, and any training step changes it),
* the modality and the encode options (e.g. the ``retrieval.query`` instruction),
* the *content* of the inputs (every text; every image's encoded bytes, or its pixels).

Because the key is the content, not the task name, identical inputs are shared across tasks (the
3,600 Crossmodal-3600 images are encoded once for all 36 languages) and a rerun of a sweep encodes
nothing at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jina_clip_v2._io import atomic_write

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
#: Values sampled per weight tensor for the fingerprint (strided over the flattened tensor).
FINGERPRINT_SAMPLES = 4096
#: Images decoded and handed to ``encode_image`` at a time (bounds host memory: ViDoRe pages are ~10 MB decoded).
DEFAULT_IMAGE_CHUNK = 64
#: Texts handed to ``encode_text`` at a time (the model sorts by length within a call).
DEFAULT_TEXT_CHUNK = 8192


# --------------------------------------------------------------------------------------------
# Images: lazily decoded, content-hashed
# --------------------------------------------------------------------------------------------


class ImageList(Sequence):
    """Images of a benchmark, kept in their stored form and decoded only when encoded.

    Items may be ``{"bytes": ..., "path": ...}`` dicts (a ``datasets`` ``Image(decode=False)`` column),
    raw encoded bytes, file paths (relative ones resolve against ``base_dir``) or PIL images.
    ``digest(i)`` hashes the stored bytes (or the pixels of a PIL image) without decoding.
    """

    def __init__(self, items: Sequence[Any], base_dir: str | os.PathLike | None = None):
        # Lazy sequences with a `select` (a dataset column) stay lazy; anything else becomes a list.
        self._items = items if hasattr(items, "select") else list(items)
        self._base = Path(base_dir) if base_dir is not None else None

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.select(range(*index.indices(len(self))))
        return self.load(index)

    def select(self, indices: Sequence[int]) -> "ImageList":
        indices = list(indices)
        if hasattr(self._items, "select"):
            return ImageList(self._items.select(indices), self._base)
        return ImageList([self._items[i] for i in indices], self._base)

    def _path(self, path: str) -> Path:
        candidate = Path(path)
        if not candidate.is_absolute() and self._base is not None and (self._base / candidate).exists():
            return self._base / candidate
        return candidate

    def _raw(self, index: int) -> bytes | None:
        item = self._items[index]
        if isinstance(item, dict):
            if item.get("bytes"):
                return bytes(item["bytes"])
            if item.get("path"):
                return self._path(item["path"]).read_bytes()
            raise ValueError(f"image {index} has neither bytes nor a path")
        if isinstance(item, (bytes, bytearray)):
            return bytes(item)
        if isinstance(item, (str, os.PathLike)):
            return self._path(os.fspath(item)).read_bytes()
        return None  # a decoded image

    def load(self, index: int):
        """The ``index``-th image as a decoded PIL image in its stored mode (first frame). The model's image
        processor converts it to RGB with its own options, exactly as for a file given to ``encode_image``."""
        from PIL import Image

        from jina_clip_v2.modeling.processing_jina_clip import open_image

        raw = self._raw(index)
        if raw is None:
            image = self._items[index]
            if not isinstance(image, Image.Image):
                raise TypeError(f"unsupported image item {type(image).__name__} at index {index}")
            return image
        return open_image(raw)

    def digest(self, index: int) -> bytes:
        raw = self._raw(index)
        if raw is None:
            image = self._items[index]
            head = f"pil:{image.mode}:{image.size}".encode()
            return hashlib.sha256(head + image.tobytes()).digest()
        return hashlib.sha256(raw).digest()


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256(b"texts\0")
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def images_digest(images: ImageList) -> str:
    h = hashlib.sha256(b"images\0")
    for index in range(len(images)):
        h.update(images.digest(index))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Model identity
# --------------------------------------------------------------------------------------------

# Config keys that say where a model was loaded from or which library wrote it, not what it computes.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "name_or_path", "transformers_version", "_commit_hash", "truncate_dim"}


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in sorted(value.items()) if k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _processor_description(model: Any) -> Any:
    """Tokenizer and image-processor settings (they change embeddings as much as weights do)."""
    try:
        processor = model.processor
    except Exception:  # no processor attached: nothing to describe
        return None
    if processor is None:
        return None
    out: dict[str, Any] = {"class": type(processor).__name__}
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_dict"):
        out["image_processor"] = _scrub(image_processor.to_dict())
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        out["tokenizer"] = {"class": type(tokenizer).__name__, "size": len(tokenizer)}
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # Padding / truncation state is set by every call (it is not what the tokenizer *is*).
            state = json.loads(backend.to_str())
            state.pop("truncation", None)
            state.pop("padding", None)
            out["tokenizer"]["sha256"] = hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()
    return out


def model_fingerprint(model: Any) -> str:
    """A hex digest that changes whenever the model's embeddings can change.

    Hashes the model class, its config (minus where-it-came-from keys), its processor settings, and
    for every tensor of its ``state_dict`` the name, shape, dtype and ``FINGERPRINT_SAMPLES`` values
    strided over the flattened tensor (so hashing a 0.9B model reads a few MB, not 3.5 GB).
    Objects without a ``state_dict`` hash their class and config only: pass an explicit
    ``fingerprint=`` to :class:`Embedder` for those.
    """
    h = hashlib.sha256(f"fingerprint-v{CACHE_FORMAT_VERSION}\0".encode())
    cls = type(model)
    h.update(f"{cls.__module__}.{cls.__qualname__}\0".encode())
    config = getattr(model, "config", None)
    if config is not None:
        raw = config.to_dict() if hasattr(config, "to_dict") else vars(config)
        h.update(json.dumps(_scrub(raw), sort_keys=True).encode())
    h.update(json.dumps(_processor_description(model), sort_keys=True).encode())
    state_dict = getattr(model, "state_dict", None)
    if callable(state_dict):
        import torch

        with torch.no_grad():
            for name, tensor in state_dict().items():
                if not isinstance(tensor, torch.Tensor):
                    continue
                h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\0".encode())
                flat = tensor.detach().reshape(-1)
                if flat.numel() == 0:
                    continue
                if flat.numel() > FINGERPRINT_SAMPLES:
                    index = torch.linspace(0, flat.numel() - 1, FINGERPRINT_SAMPLES, device=flat.device).long()
                    flat = flat[index]
                h.update(flat.float().cpu().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


class EmbeddingCache:
    """``<root>/<model fingerprint[:16]>/<key[:32]>.npy`` plus a ``.json`` sidecar (label, shape, options).

    The file name depends on the key alone, so identical inputs of different tasks share one entry.
    Writes are atomic (temporary file, then rename), so an interrupted run never leaves a truncated
    entry behind. ``hits`` / ``misses`` count lookups (the tests and the CLI summary read them).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, model_fp: str, key: str, label: str = "") -> Path:
        return self.root / model_fp[:16] / f"{key[:32]}.npy"

    def load(self, model_fp: str, key: str, label: str) -> np.ndarray | None:
        path = self.path(model_fp, key, label)
        if not path.exists():
            self.misses += 1
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:  # unreadable entry: recompute and overwrite
            logger.warning("ignoring unreadable cache entry %s (%s)", path, err)
            self.misses += 1
            return None
        self.hits += 1
        return array

    def save(self, model_fp: str, key: str, label: str, array: np.ndarray, meta: dict) -> Path:
        path = self.path(model_fp, key, label)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path.with_suffix(".npy"), "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        with atomic_write(path.with_suffix(".json")) as handle:
            handle.write(json.dumps(meta, indent=1, sort_keys=True))
        return path


# --------------------------------------------------------------------------------------------
# The embedder
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _full_width(model: Any) -> Iterator[None]:
    """Temporarily clear a default ``config.truncate_dim`` so ``encode_*`` returns every coordinate."""
    config = getattr(model, "config", None)
    previous = getattr(config, "truncate_dim", None)
    if previous is None:
        yield
        return
    config.truncate_dim = None
    try:
        yield
    finally:
        config.truncate_dim = previous


def _accepts(function: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _to_numpy(embeddings: Any) -> np.ndarray:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().float().cpu().numpy()
    elif isinstance(embeddings, list) and embeddings and hasattr(embeddings[0], "detach"):
        embeddings = np.stack([row.detach().float().cpu().numpy() for row in embeddings])
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"the model returned embeddings of shape {array.shape}; expected (n, dim)")
    if not np.isfinite(array).all():
        raise ValueError("the model returned NaN or inf embeddings")
    return array


class Embedder:
    """Full-width, un-truncated embeddings of a model, computed once and cached.

    Args:
        model: anything with ``encode_text(texts, ...)`` and ``encode_image(images, ...)`` returning
            ``(n, dim)`` arrays or tensors. Optional keyword arguments (``task``, ``batch_size``,
            ``normalize_embeddings``, ``show_progress_bar``, ``convert_to_numpy``) are passed only
            when the method accepts them.
        cache: an :class:`EmbeddingCache`, or ``None`` to always encode.
        batch_size: forwarded to ``encode_*`` (None: their own defaults, e.g. encode_image's measured batch for the
            device).
        fingerprint: the model identity used in cache keys (default: :func:`model_fingerprint`).
        show_progress: progress bars over the encode chunks.
    """

    def __init__(
        self,
        model: Any,
        cache: EmbeddingCache | None = None,
        *,
        batch_size: int | None = None,
        fingerprint: str | None = None,
        show_progress: bool = True,
        image_chunk: int = DEFAULT_IMAGE_CHUNK,
        text_chunk: int = DEFAULT_TEXT_CHUNK,
    ):
        for method in ("encode_text", "encode_image"):
            if not callable(getattr(model, method, None)):
                raise TypeError(f"the model must have an `{method}` method ({type(model).__name__} has none)")
        self.model = model
        self.cache = cache
        self.batch_size = batch_size
        self.fingerprint = fingerprint or model_fingerprint(model)
        self.show_progress = show_progress
        self.image_chunk = image_chunk
        self.text_chunk = text_chunk
        self.encoded = {"text": 0, "image": 0}  # items actually sent to the model

    def _kwargs(self, method: Callable, task: str | None) -> dict:
        kwargs: dict[str, Any] = {}
        wanted = {
            "batch_size": self.batch_size,
            "normalize_embeddings": False,
            "show_progress_bar": False,
            "convert_to_numpy": True,
        }
        for name, value in wanted.items():
            if value is not None and _accepts(method, name):
                kwargs[name] = value
        instructions = getattr(getattr(self.model, "config", None), "task_instructions", None)
        if task is not None and isinstance(instructions, Mapping) and task not in instructions:
            # A model without this instruction (jina-clip-v1 has none) embeds queries like documents, as
            # its paper evaluates it: the suite's "use the query instruction" means "none" here.
            logger.info("the model has no %r instruction: encoding without one", task)
            task = None
        if task is not None:
            if not _accepts(method, "task"):
                raise TypeError(f"{type(self.model).__name__}.encode_text does not accept task={task!r}")
            kwargs["task"] = task
        return kwargs

    def _cached(self, modality: str, digest: str, options: dict, label: str, compute: Callable[[], np.ndarray]):
        key = hashlib.sha256(
            json.dumps(
                {"v": CACHE_FORMAT_VERSION, "model": self.fingerprint, "modality": modality, "options": options, "inputs": digest},
                sort_keys=True,
            ).encode()
        ).hexdigest()
        label = f"{label}-{modality}" if label else modality
        if self.cache is not None:
            hit = self.cache.load(self.fingerprint, key, label)
            if hit is not None:
                return hit
        array = compute()
        if self.cache is not None:
            meta = {"label": label, "modality": modality, "options": options, "shape": list(array.shape)}
            self.cache.save(self.fingerprint, key, label, array, meta)
        return array

    def _progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=" items", disable=not self.show_progress, leave=False)

    def encode_texts(self, texts: Sequence[str], *, task: str | None = None, label: str = "") -> np.ndarray:
        """``(len(texts), width)`` float32 embeddings, full width, not normalised."""
        texts = [str(t) for t in texts]
        if not texts:
            raise ValueError(f"no texts to encode ({label or 'unnamed'})")

        def compute() -> np.ndarray:
            method = self.model.encode_text
            kwargs = self._kwargs(method, task)
            parts = []
            with _full_width(self.model), self._progress(len(texts), f"{label or 'texts'}: texts") as bar:
                for start in range(0, len(texts), self.text_chunk):
                    chunk = texts[start : start + self.text_chunk]
                    parts.append(_to_numpy(method(chunk, **kwargs)))
                    self.encoded["text"] += len(chunk)
                    bar.update(len(chunk))
            return np.concatenate(parts)

        return self._cached("text", texts_digest(texts), {"task": task}, label, compute)

    def encode_images(self, images: ImageList | Sequence[Any], *, label: str = "") -> np.ndarray:
        """``(len(images), width)`` float32 embeddings, full width, not normalised."""
        if not isinstance(images, ImageList):
            images = ImageList(images)
        if len(images) == 0:
            raise ValueError(f"no images to encode ({label or 'unnamed'})")

        def compute() -> np.ndarray:
            method = self.model.encode_image
            kwargs = self._kwargs(method, None)
            parts = []
            with _full_width(self.model), self._progress(len(images), f"{label or 'images'}: images") as bar:
                for start in range(0, len(images), self.image_chunk):
                    chunk = [images.load(i) for i in range(start, min(start + self.image_chunk, len(images)))]
                    parts.append(_to_numpy(method(chunk, **kwargs)))
                    self.encoded["image"] += len(chunk)
                    bar.update(len(chunk))
            return np.concatenate(parts)

        return self._cached("image", images_digest(images), {}, label, compute)


__all__ = [
    "DEFAULT_IMAGE_CHUNK",
    "DEFAULT_TEXT_CHUNK",
    "Embedder",
    "EmbeddingCache",
    "ImageList",
    "images_digest",
    "model_fingerprint",
    "texts_digest",
]
