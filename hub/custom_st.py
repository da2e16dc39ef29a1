"""Sentence-Transformers input module of jina-clip-v2: the library's own multimodal `Transformer` (>= 5.4),
plus the few things it cannot know about this model.

Sentence-Transformers (>= 5.4, 6.x included) serves this model natively: it loads the processor (XLM-R
tokenizer + image processor), sees that `forward` returns no `last_hidden_state`, and calls
`get_text_features` / `get_image_features`, taking their `pooler_output` as the sentence embedding. Texts,
images and prompts go through that native path unchanged. This subclass adds:

- **Mixed batches.** Sentence-Transformers files a batch holding both texts and images under the chat
  "message" modality, which a dual encoder does not have. The released jina-clip-v2 accepted mixed lists,
  so a mixed batch is split by modality, each part goes through the native `preprocess` and `forward`,
  and the embeddings are put back in input order.
- **Which strings are images.** A string is a text, except a `data:image/...` URI and the path of an
  existing local image file (Sentence-Transformers' own rule). A string that looks like an http(s) image
  URL is a *text* unless `fetch_image_urls` is true (saved in sentence_bert_config.json, default false;
  or set `model[0].fetch_image_urls = True`): a server embedding user queries must not fetch whatever URL
  a query names. Images are asked for explicitly with `{"image": url_or_path}` (and texts with
  `{"text": ...}`). Every image input is decoded by the model's image processor (`processing_jina_clip`),
  so URLs go through its bounded fetch (`fetch_timeout`, `fetch_max_bytes`, http(s) only).
- **`task`.** `encode(..., task="retrieval.query")` prepends the release's query instruction, as
  `encode_text(task=...)` and jina-embeddings-v3's `task` argument do (the same as
  `prompt_name="retrieval.query"`); an unknown task is a `ValueError`.
- **Texts through the model's encode runtime.** A text batch is embedded by `encode_text`'s own runtime
  (`encoding_jina_clip.batched_text_features`: sorted by token count into token-budget batches, unpadded where
  that is the fastest exact path, e.g. length buckets on CPU), not as one padded call of the text tower: the
  same embeddings, at `encode_text`'s speed (benchmarks/entry_points.py). Images go through the native path.
- **`truncate_dim`.** Only the trained Matryoshka widths (`config.matryoshka_dimensions`) are accepted,
  by `encode_text`'s own check (`policy_jina_clip.check_truncate_dim`, numpy integers included); another value
  is a `ValueError`. Sentence-Transformers truncates after the last
  module and gives modules no view of the value, so `forward` reads it from the `SentenceTransformer`
  call it runs in (`_requested_truncate_dim`).

Sentence-Transformers 5.0-5.3 have no multimodal `Transformer`: loading there fails with an error naming
the version to install. This file is copied into exported model folders and loaded by
Sentence-Transformers with `trust_remote_code=True` (modules.json type `custom_st.JinaCLIPTransformer`); there
it imports the folder's `policy_jina_clip.py` relatively, here the package's.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch

try:
    from sentence_transformers.base.modality import infer_modality
    from sentence_transformers.base.modules.transformer import Transformer
except ImportError as err:  # pragma: no cover - depends on the installed version
    raise ImportError(
        "this model's Sentence-Transformers module needs sentence-transformers>=5.4 (the first release with "
        "multimodal processors): pip install -U 'sentence-transformers>=5.4'"
    ) from err

try:  # in an exported folder: the copies next to this file (transformers copies relative imports along)
    from .encoding_jina_clip import batched_text_features
    from .policy_jina_clip import check_truncate_dim
except ImportError:  # in the package (jina_clip_v2.hub), where the runtime lives in jina_clip_v2.modeling
    from jina_clip_v2.modeling.encoding_jina_clip import batched_text_features
    from jina_clip_v2.modeling.policy_jina_clip import check_truncate_dim

logger = logging.getLogger(__name__)

# `features["modality"]` of a split batch, and the separator of its per-modality feature keys.
MIXED = "text+image (split)"
_SEP = "::"
_EXPLICIT = ("text", "image")
_ST_TASKS = ("query", "document")


def _is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


class JinaCLIPTransformer(Transformer):
    """`sentence_transformers` `Transformer` for jina-clip-v2 (see the module docstring)."""

    config_keys = [*Transformer.config_keys, "fetch_image_urls"]

    def __init__(self, *args, fetch_image_urls: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_image_urls = bool(fetch_image_urls)
        self._warned_url_text = False
        # Every string that reaches the native preprocessing is a text: `preprocess` below decides which
        # strings are images and decodes those itself, so the library's URL / path guess must not re-read
        # a text as an image.
        self.input_formatter.supported_modalities = ["text"]

    @property
    def modalities(self) -> list:
        # Sentence-Transformers calls a batch of several modalities "message" (`infer_batch_modality`) and
        # checks it against this list before calling `preprocess`; listing it lets mixed batches reach
        # `preprocess` below, which splits them. Real chat messages are refused there.
        return [*self.modality_config, "message"]

    # ------------------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------------------

    def _classify(self, item: Any) -> tuple[Any, Any]:
        """(modality, value) of one input, by the rules of the module docstring."""
        if isinstance(item, dict) and len(item) == 1 and next(iter(item)) in _EXPLICIT:
            kind, value = next(iter(item.items()))
            if kind == "text" and not isinstance(value, str):
                raise ValueError(f'{{"text": ...}} inputs must hold a string, not {type(value).__name__}')
        else:
            try:
                kind = infer_modality(item, supported_modalities=list(self.modality_config))
            except (TypeError, ValueError) as err:
                raise ValueError(f"cannot encode an input of type {type(item).__name__}: {err}") from err
            value = item
            if kind == "image" and isinstance(item, str) and _is_url(item) and not self.fetch_image_urls:
                if not self._warned_url_text:
                    logger.warning(
                        "a string that looks like an image URL is embedded as text (%s); pass {'image': url} "
                        "or set fetch_image_urls=True on the model's first module to embed the image",
                        item[:80],
                    )
                    self._warned_url_text = True
                kind = "text"
        if kind == "image" and (isinstance(value, (str, bytes, bytearray, memoryview)) or hasattr(value, "__fspath__")):
            # Decoded by the model's image processor: its decoder and its bounded fetch for URLs.
            value = self.processor.image_processor.fetch_images(value)
        return kind, value

    def _resolve_task(self, task: str | None, prompt: str | None) -> str | None:
        # "query" / "document" are Sentence-Transformers' own (encode_query / encode_document pass them with
        # the prompt of the same name already resolved).
        if task is None or task in _ST_TASKS:
            return prompt
        instructions = self.model.config.task_instructions
        if task not in instructions:
            raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(instructions)} (and None)")
        if prompt not in (None, "", instructions[task]):
            raise ValueError(
                f"task={task!r} prepends {instructions[task]!r}, and another prompt ({prompt!r}) was given too: "
                "pass one of them"
            )
        return instructions[task]

    def preprocess(self, inputs, prompt: str | None = None, task: str | None = None, **kwargs) -> dict[str, Any]:
        prompt = self._resolve_task(task, prompt)
        classified = [self._classify(item) for item in inputs]
        kinds = list(dict.fromkeys(kind for kind, _ in classified))
        unsupported = [kind for kind in kinds if kind not in self.modality_config]
        if unsupported:
            raise ValueError(
                f"this model embeds texts and images (alone or mixed in one list); got inputs of modality "
                f"{unsupported} (chat messages and text+image dicts are not supported)"
            )
        values = [value for _, value in classified]
        if len(kinds) <= 1:
            return super().preprocess(values, prompt=prompt, **kwargs)
        features: dict[str, Any] = {"modality": MIXED}
        for kind in kinds:
            positions = [i for i, (modality, _) in enumerate(classified) if modality == kind]
            part = super().preprocess([values[i] for i in positions], prompt=prompt, **kwargs)
            features.update({f"{kind}{_SEP}{key}": value for key, value in part.items()})
            features[f"{kind}{_SEP}positions"] = torch.tensor(positions)
        return features

    # ------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------

    def _requested_truncate_dim(self) -> int | None:
        """The `truncate_dim` of the Sentence-Transformers call this forward runs in: the `truncate_dim`
        local of the nearest `SentenceTransformer` method frame holding this module (`encode` in 5.x,
        `_inference` in 6.x), else that model's `truncate_dim` attribute; None outside such a call."""
        frame, owner = sys._getframe(1), None
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if candidate is not self and isinstance(candidate, torch.nn.Module) and any(m is self for m in candidate.children()):
                owner = candidate
                if "truncate_dim" in frame.f_locals:
                    return frame.f_locals["truncate_dim"]
            frame = frame.f_back
        return getattr(owner, "truncate_dim", None)

    def _check_truncate_dim(self) -> None:
        config = self.model.config
        check_truncate_dim(self._requested_truncate_dim(), config.matryoshka_dimensions, config.projection_dim)

    def _forward_modality(self, kind: str, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        # Texts through encode_text's runtime unless the caller asks for more than the pooled embedding.
        if kind == "text" and not kwargs and not getattr(self.model.config, "output_hidden_states", False):
            features[self.module_output_name] = batched_text_features(
                self.model, features["input_ids"], features.get("attention_mask")
            )
            return features
        return super().forward(features, **kwargs)

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        self._check_truncate_dim()
        if features.get("modality") != MIXED:
            return self._forward_modality(features.get("modality", "text"), features, **kwargs)
        embeddings, positions = [], []
        for kind in self.modality_config:
            prefix = f"{kind}{_SEP}"
            part = {key[len(prefix) :]: value for key, value in features.items() if key.startswith(prefix)}
            if not part:
                continue
            positions.append(part.pop("positions"))
            embeddings.append(self._forward_modality(kind, part, **kwargs)[self.module_output_name])
        dtype = embeddings[0].dtype
        for embedding in embeddings[1:]:
            dtype = torch.promote_types(dtype, embedding.dtype)
        order = torch.cat(positions).to(embeddings[0].device).argsort()
        features[self.module_output_name] = torch.cat([e.to(dtype) for e in embeddings])[order]
        return features
