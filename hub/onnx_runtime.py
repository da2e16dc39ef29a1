"""Embed texts and images with the ONNX exports of a jina-clip-v2 folder, without PyTorch.

    from jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx

    model = JinaCLIPOnnx("jina-clip-v2-converted", precision="int8")   # reads <folder>/onnx/*.onnx
    queries = model.encode_text(["Ein Hund spielt im Schnee"], task="retrieval.query", truncate_dim=256)
    images = model.encode_image(["dog.jpg", "https://example.com/cat.png"], truncate_dim=256)
    print(queries @ images.T)

The inputs are prepared exactly as `encode_text` / `encode_image` prepare them, by the same code: the
encode policy (`modeling/policy_jina_clip.py`: what is one input and what is a batch, the argument checks, the
release's query instruction for `task="retrieval.query"`, the character bound and the tokenization with
truncation at the config's `max_text_length`, 512 as in the release, the Matryoshka check), the folder's
tokenizer.json as written (`tokenization_jina_clip.load_tokenizer`), and the package's one image decoder and
processor (`processing_jina_clip.load_image` / `JinaCLIPImageProcessor`, which read paths, URLs with a deadline
and a byte cap, data URIs, bytes, open files, numpy arrays and PIL images). The graphs (written by
`jina-clip onnx`) return the pooled embeddings before normalization (`text_embeddings`, `image_embeddings`) and
L2-normalized (`l2norm_*`); Matryoshka truncation is the one step done here, by the policy's
`truncate_and_normalize`: keep the first k dims of the un-normalized output, then L2-normalize.

This module imports numpy, onnxruntime, transformers (tokenizer) and PIL, never torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jina_clip_v2.modeling import policy_jina_clip as policy
from jina_clip_v2.modeling.policy_jina_clip import truncate_and_normalize
from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor
from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer

# File names as transformers.js loads jina_clip towers: `JinaCLIPTextModel` / `JinaCLIPVisionModel` default
# to `onnx/text_model*.onnx` / `onnx/vision_model*.onnx`, and its `dtype` option picks the suffix
# (fp32 -> "", fp16 -> "_fp16", q8 -> "_quantized": 8-bit weights, the default of its wasm device).
TOWER_FILES = {"text": "text_model", "vision": "vision_model"}
PRECISION_SUFFIXES = {"fp32": "", "fp16": "_fp16", "int8": "_quantized"}
# transformers.js' `dtype` for each precision (what a browser user passes to load that file).
TRANSFORMERS_JS_DTYPES = {"fp32": "fp32", "fp16": "fp16", "int8": "q8"}
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUTS = ("text_embeddings", "l2norm_text_embeddings")
VISION_INPUTS = ("pixel_values",)
# Token budget of one text batch (texts x longest text; padded, sorted by length). Small batches keep ONNX Runtime's
# activations in the cache: on a 2-layer real-width text graph, one thread, 256 long-tailed texts, budgets of
# 64 / 128 / 256 / 512 / 1024 / 4096 tokens took 9.5 / 9.4 / 9.2 / 9.5 / 10.3 / 13.3 s in fp32 and 3.3 / 3.2 / 3.1 /
# 3.2 / 3.4 / 5.0 s in int8 (CPU time; benchmarks/README.md, "Every entry point"). A longer text runs alone.
DEFAULT_TEXT_TOKENS_PER_BATCH = 256
VISION_OUTPUTS = ("image_embeddings", "l2norm_image_embeddings")


def onnx_file_name(tower: str, precision: str) -> str:
    """`text_model.onnx`, `vision_model_fp16.onnx`, `text_model_quantized.onnx`, ..."""
    if tower not in TOWER_FILES:
        raise ValueError(f"unknown tower {tower!r}; expected one of {sorted(TOWER_FILES)}")
    if precision not in PRECISION_SUFFIXES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISION_SUFFIXES)}")
    return f"{TOWER_FILES[tower]}{PRECISION_SUFFIXES[precision]}.onnx"


class JinaCLIPOnnx:
    """The two ONNX towers of an exported folder, with the folder's tokenizer and image processor.

    Args:
        model_folder: the exported folder (config.json, tokenizer, processor_config.json).
        onnx_folder: where the `.onnx` files are (default: `<model_folder>/onnx`).
        precision: "fp32", "fp16" or "int8" (the files `jina-clip onnx` writes).
        providers: ONNX Runtime execution providers (default: CPU).
        session_options: an `onnxruntime.SessionOptions` (threads, graph optimization level, ...).
    """

    def __init__(
        self,
        model_folder: str | os.PathLike,
        *,
        onnx_folder: str | os.PathLike | None = None,
        precision: str = "fp32",
        providers: Sequence[str] | None = None,
        session_options: Any = None,
    ):
        self.folder = Path(model_folder)
        self.onnx_folder = Path(onnx_folder) if onnx_folder is not None else self.folder / "onnx"
        if precision not in PRECISION_SUFFIXES:
            raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISION_SUFFIXES)}")
        self.precision = precision
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no config.json in {self.folder}: expected a folder written by `jina-clip export`")
        from ._util import read_json_object

        config = read_json_object(config_path)
        self.vocab_size = int((config.get("text_config") or {}).get("vocab_size") or 0) or None
        vision = config.get("vision_config") or {}
        self.image_size = int(vision.get("image_size") or 0) or None
        # Patches + CLS of one image (JinaCLIPVisionConfig.num_positions), for the default image batch.
        self.image_tokens = (int(vision.get("image_size") or 512) // int(vision.get("patch_size") or 14)) ** 2 + 1
        self.matryoshka_dimensions = list(config.get("matryoshka_dimensions") or [])
        self.projection_dim = config.get("projection_dim")
        self.max_text_length = int(config.get("max_text_length", 512))
        self.task_instructions = dict(config.get("task_instructions") or {})
        self.truncate_dim = config.get("truncate_dim")
        self.tokenizer = load_tokenizer(self.folder)
        self.image_processor = JinaCLIPImageProcessor.from_pretrained(str(self.folder))
        self.providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        # The device the default batches are chosen for: the first provider's ("CUDAExecutionProvider" -> "cuda").
        first = next((p if isinstance(p, str) else p[0] for p in self.providers), "CPUExecutionProvider")
        self.device_type = "cpu" if first == "CPUExecutionProvider" else first.removesuffix("ExecutionProvider").lower()
        self.session_options = session_options
        self._sessions: dict[str, Any] = {}

    # -- sessions -------------------------------------------------------------------------------------

    def session(self, tower: str):
        """The `onnxruntime.InferenceSession` of one tower ("text" / "vision"), created on first use."""
        if tower not in self._sessions:
            import onnxruntime as ort

            path = self.onnx_folder / onnx_file_name(tower, self.precision)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: export the towers first with `jina-clip onnx --model {self.folder}`"
                )
            self._sessions[tower] = ort.InferenceSession(str(path), self.session_options, providers=self.providers)
        return self._sessions[tower]

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """The text graph on token ids: {"text_embeddings", "l2norm_text_embeddings"}."""
        feed = {
            "input_ids": _checked_ids(input_ids, self.vocab_size, "input_ids", "token id"),
            "attention_mask": _checked_ids(attention_mask, 2, "attention_mask", "mask value"),
        }
        if feed["attention_mask"].shape != feed["input_ids"].shape:
            raise ValueError(f"attention_mask has shape {feed['attention_mask'].shape}, input_ids {feed['input_ids'].shape}")
        return dict(zip(TEXT_OUTPUTS, self.session("text").run(list(TEXT_OUTPUTS), feed)))

    def run_vision(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """The vision graph on preprocessed pixels: {"image_embeddings", "l2norm_image_embeddings"}."""
        feed = {"pixel_values": _checked_pixels(pixel_values, self.image_size)}
        return dict(zip(VISION_OUTPUTS, self.session("vision").run(list(VISION_OUTPUTS), feed)))

    # -- encode API (as JinaCLIPModel.encode_text / encode_image) --------------------------------------

    def tokenize(
        self, texts: Sequence[str], max_length: int | None = None, max_chars: int | None = None, first_index: int = 0
    ) -> dict[str, np.ndarray]:
        """`encode_text`'s tokenization (`policy_jina_clip.tokenize`), padded to the longest text."""
        settings = policy.text_settings({}, max_length, self.max_text_length)
        encoded = policy.tokenize(self.tokenizer, list(texts), settings, max_chars, first_index, padding=True, return_tensors="np")
        return {name: encoded[name] for name in TEXT_INPUTS}

    def preprocess(self, images: Sequence[Any]) -> np.ndarray:
        """`encode_image`'s preprocessing: decode with the package's decoder, resize, crop, normalize."""
        return self.image_processor(list(images), return_tensors="np")["pixel_values"]

    def encode_text(
        self,
        sentences: str | Sequence[str],
        *,
        task: str | None = None,
        batch_size: int = 32,
        truncate_dim: int | None = None,
        normalize_embeddings: bool = True,
        max_length: int | None = None,
        max_chars: int | None = None,
        max_tokens_per_batch: int | None = None,
    ) -> np.ndarray:
        """(n, dim) float32 embeddings of texts (a vector for a single string), as `encode_text`: tokenized per chunk
        of `TEXTS_PER_CHUNK`, sorted by token count into batches of at most `batch_size` texts and
        `max_tokens_per_batch` (default `DEFAULT_TEXT_TOKENS_PER_BATCH`) texts x longest tokens, outputs in input
        order."""
        texts, single = policy.as_list(sentences, "texts")
        policy.check_texts(texts)
        truncate_dim = policy.check_truncate_dim(truncate_dim, self.matryoshka_dimensions, self.projection_dim, self.truncate_dim)
        texts = policy.add_task_instruction(texts, task, self.task_instructions)
        batch_size = policy.positive_int(batch_size, "batch_size")
        budget = policy.positive_int(max_tokens_per_batch or DEFAULT_TEXT_TOKENS_PER_BATCH, "max_tokens_per_batch")
        settings = policy.text_settings({}, max_length, self.max_text_length)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 1
        out = None
        for start in range(0, len(texts), policy.TEXTS_PER_CHUNK):
            ids = policy.tokenize(self.tokenizer, texts[start : start + policy.TEXTS_PER_CHUNK], settings, max_chars, start,
                                  padding=False, return_attention_mask=False)["input_ids"]
            lengths = [len(row) for row in ids]
            # As encode_text: sorted by token count into token-budget batches (padded: ONNX graphs take a mask), each
            # padded to its longest text only; rows written back at their input positions.
            for indices in policy.text_batches(lengths, batch_size, budget, unpadded=False):
                input_ids = np.full((len(indices), lengths[indices[0]]), pad_id, dtype=np.int64)
                attention_mask = np.zeros_like(input_ids)
                for row, index in enumerate(indices):
                    input_ids[row, : lengths[index]] = ids[index]
                    attention_mask[row, : lengths[index]] = 1
                rows = truncate_and_normalize(self.run_text(input_ids, attention_mask)["text_embeddings"], truncate_dim, normalize_embeddings)
                if out is None:
                    out = np.empty((len(texts), rows.shape[1]), dtype=np.float32)
                out[np.asarray(indices) + start] = rows
        return out[0] if single else out

    def encode_image(
        self,
        images: Any,
        *,
        batch_size: int | None = None,
        truncate_dim: int | None = None,
        normalize_embeddings: bool = True,
        num_workers: int | None = None,
    ) -> np.ndarray:
        """(n, dim) float32 embeddings of images (a vector for a single image), as `encode_image`: one image, a
        list, or any iterable (streamed), decoded and preprocessed by `num_workers` threads (default: one per core, at
        most 8) while the graph runs, in batches of `batch_size` (default: the policy's `image_batch_size` for the
        execution provider's device, 1 image at 512 px on CPU), rows in input order."""
        truncate_dim = policy.check_truncate_dim(truncate_dim, self.matryoshka_dimensions, self.projection_dim, self.truncate_dim)
        if batch_size is None:
            batch_size = policy.image_batch_size(self.device_type, self.image_tokens)
        batch_size = policy.positive_int(batch_size, "batch_size")
        num_workers = policy.image_workers(num_workers)
        items, single, count = policy.image_stream(images)
        rows = [
            truncate_and_normalize(self.run_vision(pixels)["image_embeddings"], truncate_dim, normalize_embeddings)
            for _, pixels in policy.pixel_batches(items, self.image_processor, batch_size, 0 if count == 1 else num_workers)
        ]
        out = np.concatenate(rows)
        return out[0] if single else out


def _checked_ids(values: Any, limit: int | None, name: str, what: str) -> np.ndarray:
    """Integer (batch, sequence) ids in [0, limit) as int64: floats are refused (not cast), and so are ids
    ONNX Runtime would read out of the table (-1 as its last row)."""
    array = np.asarray(values)
    if array.dtype == np.bool_ and limit == 2:  # a boolean mask is a 0-1 mask
        array = array.astype(np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be integers (token ids / a 0-1 mask); got dtype {array.dtype}")
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} must have shape (batch, sequence), got {array.shape}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or (limit is not None and high >= limit):
        raise ValueError(f"{name} holds {what} {low if low < 0 else high}, outside 0 .. {limit - 1 if limit else 'max'}")
    return array.astype(np.int64, copy=False)


def _checked_pixels(values: Any, size: int | None) -> np.ndarray:
    """Finite float (batch, 3, size, size) pixels as float32."""
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"pixel_values must be floating point (preprocessed pixels); got dtype {array.dtype}")
    if array.ndim != 4 or array.shape[0] == 0 or array.shape[1] != 3 or (size is not None and array.shape[2:] != (size, size)):
        raise ValueError(f"pixel_values must have shape (batch, 3, {size or 'S'}, {size or 'S'}), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("pixel_values hold NaN or infinite values")
    return array.astype(np.float32, copy=False)


__all__ = [
    "DEFAULT_TEXT_TOKENS_PER_BATCH",
    "JinaCLIPOnnx",
    "PRECISION_SUFFIXES",
    "TOWER_FILES",
    "TRANSFORMERS_JS_DTYPES",
    "load_tokenizer",
    "onnx_file_name",
    "truncate_and_normalize",
]
