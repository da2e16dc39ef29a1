"""The batches of one training step, typed: a text-task batch and an image-text batch.

``training.data`` streams plain dicts (``{"query": BatchEncoding, ...}``, documented there); the step
takes them as ``TextBatch`` / ``ImageTextBatch`` (``from_stream``), moves them to the device and hands its
encoder the named groups of texts and images (``text_groups`` / ``image_groups``). ``concat`` joins the
batches of several processes into the one a single process would see (the distributed-equivalence test)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ImageTextBatch", "TextBatch", "concat_encodings"]

Encoding = dict[str, Tensor]
"""``{"input_ids": (rows, length), "attention_mask": (rows, length)}``, right-padded."""


def _encoding(value: Mapping) -> Encoding:
    return {"input_ids": value["input_ids"], "attention_mask": value["attention_mask"]}


def _to(encoding: Encoding, device: torch.device | str) -> Encoding:
    return {key: value.to(device, non_blocking=True) for key, value in encoding.items()}


def concat_encodings(encodings: Sequence[Encoding], pad_id: int = 1) -> Encoding:
    """Concatenate tokenized batches of different padded lengths (right padding with ``pad_id``)."""
    length = max(e["input_ids"].shape[1] for e in encodings)
    ids, masks = [], []
    for e in encodings:
        extra = length - e["input_ids"].shape[1]
        ids.append(F.pad(e["input_ids"], (0, extra), value=pad_id))
        masks.append(F.pad(e["attention_mask"], (0, extra), value=0))
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}


@dataclass
class TextBatch:
    """The text task of one step: queries and their positives (``document``); in stage 3 also
    ``num_negatives`` hard negatives per query, row-major (query i's are rows i*K .. i*K+K-1)."""

    query: Encoding
    document: Encoding
    negatives: Encoding | None = None
    num_negatives: int = 0

    @classmethod
    def from_stream(cls, batch: Mapping) -> TextBatch:
        negatives = batch.get("negatives")
        return cls(
            query=_encoding(batch["query"]),
            document=_encoding(batch["document"]),
            negatives=None if negatives is None else _encoding(negatives),
            num_negatives=int(batch.get("num_negatives", 0)) if negatives is not None else 0,
        )

    @property
    def rows(self) -> int:
        return self.query["input_ids"].shape[0]

    def to(self, device: torch.device | str) -> TextBatch:
        negatives = None if self.negatives is None else _to(self.negatives, device)
        return TextBatch(_to(self.query, device), _to(self.document, device), negatives, self.num_negatives)

    def text_groups(self) -> dict[str, Encoding]:
        groups = {"query": self.query, "document": self.document}
        if self.negatives is not None:
            groups["negatives"] = self.negatives
        return groups

    def to_dict(self) -> dict:
        """Plain tensors and ints (what ``torch.load(weights_only=True)`` reads back; ``from_stream``
        takes it)."""
        out: dict = {"query": dict(self.query), "document": dict(self.document)}
        if self.negatives is not None:
            out.update(negatives=dict(self.negatives), num_negatives=self.num_negatives)
        return out

    @classmethod
    def concat(cls, batches: Sequence[TextBatch], pad_id: int = 1) -> TextBatch:
        negatives = None
        if batches[0].negatives is not None:
            negatives = concat_encodings([b.negatives for b in batches], pad_id)
        return cls(
            concat_encodings([b.query for b in batches], pad_id),
            concat_encodings([b.document for b in batches], pad_id),
            negatives,
            batches[0].num_negatives,
        )


@dataclass
class ImageTextBatch:
    """The image-text task of one step: normalized pixels (rows, 3, S, S) and their captions."""

    pixel_values: Tensor
    caption: Encoding

    @classmethod
    def from_stream(cls, batch: Mapping) -> ImageTextBatch:
        return cls(pixel_values=batch["pixel_values"], caption=_encoding(batch["caption"]))

    @property
    def rows(self) -> int:
        return self.pixel_values.shape[0]

    def to(self, device: torch.device | str) -> ImageTextBatch:
        return ImageTextBatch(self.pixel_values.to(device, non_blocking=True), _to(self.caption, device))

    def to_dict(self) -> dict:
        return {"pixel_values": self.pixel_values, "caption": dict(self.caption)}

    @classmethod
    def concat(cls, batches: Sequence[ImageTextBatch], pad_id: int = 1) -> ImageTextBatch:
        return cls(
            torch.cat([b.pixel_values for b in batches]), concat_encodings([b.caption for b in batches], pad_id)
        )
