"""Sentence-Transformers input module of jina-clip-v2: the library's own multimodal `Transformer`, plus
batches that mix texts and images.

Sentence-Transformers (>= 6) serves this model natively: it loads the processor (XLM-R tokenizer + image
processor), sees that `forward` returns no `last_hidden_state`, and calls `get_text_features` /
`get_image_features`, taking their `pooler_output` as the sentence embedding. Texts, images, prompts and
`truncate_dim` all go through that native path unchanged.

What the native module cannot do is a batch holding both texts and images: Sentence-Transformers files
such a batch under the chat "message" modality, which a dual encoder without a chat template does not
have, and refuses it ("This batch mixes multiple modalities ... Encode each modality separately"). The
released jina-clip-v2 accepted mixed lists (its own `custom_st.Transformer`), so this subclass adds exactly
that: a mixed batch is split by modality, each part goes through the native `preprocess` and `forward`,
and the embeddings are put back in input order.

This file is copied into exported model folders and loaded by Sentence-Transformers with
`trust_remote_code=True` (modules.json type `custom_st.JinaCLIPTransformer`).
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from sentence_transformers.base.modality import infer_modality
    from sentence_transformers.base.modules.transformer import Transformer
except ImportError as err:  # pragma: no cover - depends on the installed version
    raise ImportError(
        "this model's Sentence-Transformers module needs sentence-transformers>=6.0 "
        "(`pip install -U 'sentence-transformers>=6'`)"
    ) from err

# `features["modality"]` of a split batch, and the separator of its per-modality feature keys.
MIXED = "text+image (split)"
_SEP = "::"


class JinaCLIPTransformer(Transformer):
    """`sentence_transformers` `Transformer` that also encodes lists mixing texts and images."""

    @property
    def modalities(self) -> list:
        # Sentence-Transformers calls a batch of several modalities "message" (`infer_batch_modality`) and
        # checks it against this list before calling `preprocess`; listing it lets mixed batches reach
        # `preprocess` below, which splits them. Real chat messages are refused there.
        return [*self.modality_config, "message"]

    def _item_modality(self, item: Any):
        try:
            return infer_modality(item, supported_modalities=list(self.modality_config))
        except (TypeError, ValueError) as err:
            raise ValueError(f"cannot encode an input of type {type(item).__name__}: {err}") from err

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        modalities = [self._item_modality(item) for item in inputs]
        kinds = list(dict.fromkeys(modalities))
        if len(kinds) <= 1:
            return super().preprocess(inputs, prompt=prompt, **kwargs)
        unsupported = [kind for kind in kinds if kind not in self.modality_config]
        if unsupported:
            raise ValueError(
                f"this model embeds texts and images (alone or mixed in one list); got inputs of modality "
                f"{unsupported} (chat messages and text+image dicts are not supported)"
            )
        features: dict[str, Any] = {"modality": MIXED}
        for kind in kinds:
            positions = [i for i, modality in enumerate(modalities) if modality == kind]
            part = super().preprocess([inputs[i] for i in positions], prompt=prompt, **kwargs)
            features.update({f"{kind}{_SEP}{key}": value for key, value in part.items()})
            features[f"{kind}{_SEP}positions"] = torch.tensor(positions)
        return features

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        if features.get("modality") != MIXED:
            return super().forward(features, **kwargs)
        embeddings, positions = [], []
        for kind in self.modality_config:
            prefix = f"{kind}{_SEP}"
            part = {key[len(prefix) :]: value for key, value in features.items() if key.startswith(prefix)}
            if not part:
                continue
            positions.append(part.pop("positions"))
            embeddings.append(super().forward(part, **kwargs)[self.module_output_name])
        dtype = embeddings[0].dtype
        for embedding in embeddings[1:]:
            dtype = torch.promote_types(dtype, embedding.dtype)
        order = torch.cat(positions).to(embeddings[0].device).argsort()
        features[self.module_output_name] = torch.cat([e.to(dtype) for e in embeddings])[order]
        return features
