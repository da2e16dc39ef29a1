"""Building the paper's multimodal training data (section 3.1) from public image-text sets, as ``datasets``
transforms and a resumable, streaming writer (``jina-clip data captions``; the hard-negative triplets are
``training.mine_negatives``).

Recipes (``--recipe``), each a caption rule of section 3.1:

``captions``
    image-caption pairs (DFN, CommonPool): the caption goes to the short-caption set D^mm;s, unless it is
    longer than 256 tokens (the real XLM-R tokenizer, special tokens not counted): those few are held out for
    the long-caption set D^mm;l.
``qa``
    visual question answering (DocVQA, TatDQA, InfographicsVQA, SciGraphQA, ArXivQA, the ViDoRe training
    set): "we concatenate query and answer for each sample" (a list of answers: the first); the caption goes
    to both sets.
``wit``
    WIT: the reference caption in D^mm;s; "a concatenation of caption, page title, section title, page
    description and section description" in D^mm;l.
``long``
    long descriptions (GPT-4v, ArXivCap): D^mm;l only.

Every image is decoded by the package's one decoder (the release's semantics) and stored once at the
paper's 384 px (section 3.1: "All images are resized to (384, 384)"): by default its shorter side, aspect
kept and never enlarged, so the train-time random resized crop still sees the whole image
(``--resize-mode squash``: exactly 384 x 384), as JPEG (quality 95).

Output (the layout the stage configs read: ``{path: <out>/image_text_short/*.parquet}``)::

    <out>/image_text_short/part-00000.parquet   image (datasets Image), caption, num_tokens, source_row
    <out>/image_text_long/part-00000.parquet
    <out>/skipped.jsonl                          {"row": "<file> row 17", "reason": ...} per unusable row
    <out>/state.json                             rows read and shards written: the resume point

Streaming and resumable: rows are read one by one (local parquet / jsonl files row by row, so one bad row
costs one row, as in training; Hub ids, folders and webdataset shards through ``datasets`` streaming),
every ``--shard-size`` source rows the sets' rows so far become one shard each and ``state.json`` records
the rows read (atomically, after the shards): a killed run, started again with the same arguments,
continues after the last recorded row. A row without the recipe's fields, with an empty caption or an
undecodable image is named in ``skipped.jsonl`` and skipped.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from jina_clip_v2._io import atomic_write
from jina_clip_v2.training.images import image_from_record
from jina_clip_v2.training.sources import _infer_format, _local_files, _normalize_format, _raw_rows

logger = logging.getLogger(__name__)

RECIPES = ("captions", "qa", "wit", "long")
LONG_CAPTION_TOKENS = 256  # section 3.1: captions longer than 256 tokens are held out for D^mm;l
IMAGE_SIZE = 384  # section 3.1: all images are resized to (384, 384)
SHORT, LONG = "image_text_short", "image_text_long"
# The fields each recipe reads and the column names public sets use for them (first present wins); map
# others with `columns` ({field: column}).
FIELDS = {
    "captions": {"image": ("image", "jpg", "png", "webp", "img"), "caption": ("caption", "txt", "text")},
    "qa": {"image": ("image", "img"), "question": ("question", "query"), "answer": ("answer", "answers")},
    "wit": {
        "image": ("image", "image_url"),
        "caption": ("caption_reference_description",),
        "page_title": ("page_title",),
        "section_title": ("section_title",),
        "page_description": ("context_page_description",),
        "section_description": ("context_section_description",),
    },
    "long": {"image": ("image", "jpg", "png"), "caption": ("long_caption", "caption", "txt", "text")},
}
_OPTIONAL = {"page_title", "section_title", "page_description", "section_description"}  # WIT rows lack some


class RowProblem(ValueError):
    """Why a source row is unusable (recorded in skipped.jsonl)."""


# ----------------------------------------------------------------------------------------------------
# Reading rows
# ----------------------------------------------------------------------------------------------------


def read_rows(source: str, *, fmt: str | None = None, split: str = "train", name: str | None = None) -> Iterator[dict]:
    """Every row of `source` as ``{"_where": "<file> row N", "_row": dict}`` (``"_row"`` is a `RowProblem` for a
    row that cannot be read): local parquet / jsonl files row by row (training.sources' reader), anything else
    (a Hub id, a folder, webdataset shards) through datasets' streaming loader, images left encoded."""
    fmt = _normalize_format(fmt)
    files = _local_files(source)
    if files is not None and (fmt or _infer_format(files)) in ("parquet", "json"):
        for path in files:
            for where, row in _raw_rows(path, fmt or _infer_format([path])):
                yield {"_where": where, "_row": RowProblem(str(row)) if isinstance(row, Exception) else row}
        return
    from datasets import load_dataset

    if files is not None:
        dataset = load_dataset(fmt or _infer_format(files), data_files={split: files}, split=split, streaming=True)
    else:
        dataset = load_dataset(source, name, split=split, streaming=True)
    try:
        dataset = dataset.decode(False)
    except Exception:  # noqa: BLE001 - features unknown: nothing is decoded anyway
        pass
    for number, row in enumerate(dataset):
        yield {"_where": f"{source} row {number}", "_row": row}


def _field(row: dict, field: str, recipe: str, columns: dict[str, str]) -> Any:
    names = (columns[field],) if field in columns else FIELDS[recipe][field]
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if field in _OPTIONAL:
        return None
    raise RowProblem(f"no {field!r} (looked for {list(names)}; the row has {sorted(row)})")


def _text(value: Any, field: str) -> str:
    if isinstance(value, (list, tuple)):  # DocVQA / InfographicsVQA: a list of equivalent answers
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if not isinstance(value, str):
        raise RowProblem(f"{field!r} is {type(value).__name__}, not a text")
    return " ".join(value.split())


# ----------------------------------------------------------------------------------------------------
# The transforms (datasets `map(batched=True)` functions on {"_where", "_row"} batches)
# ----------------------------------------------------------------------------------------------------


def build_captions(batch: dict[str, list], *, recipe: str, columns: dict[str, str] | None = None) -> dict[str, list]:
    """Section 3.1's captions of a batch of rows: ``image`` (the row's image value, still encoded),
    ``short`` / ``long`` (the caption for each set, None when the recipe puts none there) and ``problem``."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {RECIPES}")
    columns = dict(columns or {})
    out: dict[str, list] = {"image": [], "short": [], "long": [], "problem": []}
    for row in batch["_row"]:
        image = short = long = problem = None
        try:
            if isinstance(row, Exception):
                raise row
            image = _field(row, "image", recipe, columns)
            if recipe == "qa":
                question = _text(_field(row, "question", recipe, columns), "question")
                answer = _text(_field(row, "answer", recipe, columns), "answer")
                short = long = f"{question} {answer}".strip()  # "we concatenate query and answer"
            elif recipe == "wit":
                short = _text(_field(row, "caption", recipe, columns), "caption")
                parts = [short] + [
                    _text(value, field)
                    for field in ("page_title", "section_title", "page_description", "section_description")
                    if (value := _field(row, field, recipe, columns)) is not None
                ]
                long = " ".join(part for part in parts if part)
            elif recipe == "long":
                long = _text(_field(row, "caption", recipe, columns), "caption")
            else:
                short = _text(_field(row, "caption", recipe, columns), "caption")
            if not (short or long):
                raise RowProblem("empty caption")
        except RowProblem as err:
            problem, image, short, long = str(err), None, None, None
        for key, value in (("image", image), ("short", short), ("long", long), ("problem", problem)):
            out[key].append(value)
    return out


def count_tokens(batch: dict[str, list], *, tokenizer, column: str = "short") -> dict[str, list]:
    """``<column>_tokens``: the token count of each caption in `column` (the real tokenizer's pieces, without
    the special tokens), None for rows without one."""
    texts = [text or "" for text in batch[column]]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return {f"{column}_tokens": [len(piece) if text else None for piece, text in zip(ids, batch[column])]}


def split_by_length(batch: dict[str, list], *, recipe: str, threshold: int = LONG_CAPTION_TOKENS) -> dict[str, list]:
    """The `captions` recipe's hold-out: a caption over `threshold` tokens moves from the short set to the
    long one (section 3.1); other recipes keep their sets."""
    if recipe != "captions":
        return {}
    short, long = list(batch["short"]), list(batch["long"])
    short_tokens, long_tokens = list(batch["short_tokens"]), list(batch["long_tokens"])
    for i, tokens in enumerate(short_tokens):
        if tokens is not None and tokens > threshold:
            short[i], long[i], short_tokens[i], long_tokens[i] = None, short[i], None, tokens
    return {"short": short, "long": long, "short_tokens": short_tokens, "long_tokens": long_tokens}


def resize_images(batch: dict[str, list], *, size: int = IMAGE_SIZE, mode: str = "shortest", image_root: str | None = None) -> dict[str, list]:
    """Each row's image decoded once (the package's decoder) and stored at `size` px as JPEG bytes: the
    shorter side (aspect kept, never enlarged) or, with ``mode="squash"``, exactly size x size."""
    from PIL import Image

    images, problems = [], list(batch["problem"])
    for i, value in enumerate(batch["image"]):
        if problems[i] is not None:
            images.append(None)
            continue
        try:
            image = image_from_record(value, image_root)
            if mode == "squash":
                image = image.resize((size, size), Image.BICUBIC)
            elif min(image.size) > size:
                scale = size / min(image.size)
                image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=95)
            images.append(buffer.getvalue())
        except Exception as err:  # noqa: BLE001 - an undecodable image is a skipped row, named
            images.append(None)
            problems[i] = f"undecodable image ({type(err).__name__}: {err})"
    return {"image": images, "problem": problems}


# ----------------------------------------------------------------------------------------------------
# The resumable writer
# ----------------------------------------------------------------------------------------------------


class ShardWriter:
    """Rows of several output sets in shards, committed together with `state.json` every `every` source rows
    (see the module docstring); `rows_read` is where a restarted run continues."""

    def __init__(self, out: Path, kinds: tuple[str, ...], features, *, every: int, signature: dict):
        self.out, self.kinds, self.features, self.every = Path(out), kinds, features, every
        self.buffers: dict[str, list[dict]] = {kind: [] for kind in kinds}
        self.skipped: list[dict] = []
        self.state = {"signature": signature, "rows_read": 0, "shards": {k: 0 for k in kinds}, "rows": {k: 0 for k in kinds}, "skipped": Counter(), "done": False}
        path = self.out / "state.json"
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("signature") != signature:
                raise ValueError(f"{self.out} was built with other arguments ({saved.get('signature')}); use another --out")
            self.state.update(saved)
            self.state["skipped"] = Counter(saved.get("skipped", {}))
        for kind in kinds:
            (self.out / kind).mkdir(parents=True, exist_ok=True)
        self.pending = 0

    @property
    def rows_read(self) -> int:
        return self.state["rows_read"]

    def add(self, kind: str, row: dict) -> None:
        self.buffers[kind].append(row)

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append({"row": where, "reason": reason})
        self.state["skipped"][reason.split(" (")[0]] += 1
        if len(self.skipped) <= 3 or len(self.skipped) % 1000 == 0:
            logger.warning("skipping %s: %s", where, reason)

    def row_done(self) -> None:
        self.pending += 1
        if self.pending >= self.every:
            self.commit()

    def commit(self, done: bool = False) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for kind, rows in self.buffers.items():
            if not rows:
                continue
            features = self.features[kind]
            table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
            table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()})
            index = self.state["shards"][kind]
            with atomic_write(self.out / kind / f"part-{index:05d}.parquet", "wb") as handle:
                pq.write_table(table, handle, row_group_size=256)
            self.state["shards"][kind] = index + 1
            self.state["rows"][kind] += len(rows)
            self.buffers[kind] = []
        if self.skipped:
            with open(self.out / "skipped.jsonl", "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in self.skipped)
            self.skipped = []
        self.state["rows_read"] += self.pending
        self.state["done"] = done
        self.pending = 0
        with atomic_write(self.out / "state.json") as handle:
            json.dump({**self.state, "skipped": dict(self.state["skipped"])}, handle, indent=2)


def _caption_features():
    from datasets import Features, Value
    from datasets import Image as HFImage

    return Features({"image": HFImage(), "caption": Value("string"), "num_tokens": Value("int32"), "source_row": Value("string")})


def build_image_text(
    source: str,
    out: str | os.PathLike,
    *,
    recipe: str,
    tokenizer,
    columns: dict[str, str] | None = None,
    fmt: str | None = None,
    split: str = "train",
    name: str | None = None,
    image_size: int = IMAGE_SIZE,
    resize_mode: str = "shortest",
    long_threshold: int = LONG_CAPTION_TOKENS,
    shard_size: int = 10000,
    batch_size: int = 64,
    limit: int | None = None,
) -> dict:
    """Stream `source` through the recipe's transforms into `out` (see the module docstring); resumes from
    `out/state.json`. Returns the state (rows read, rows and shards per set, skipped rows by reason)."""
    from datasets import IterableDataset
    from tqdm.auto import tqdm

    if resize_mode not in ("shortest", "squash"):
        raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {resize_mode!r}")
    kinds = {"captions": (SHORT, LONG), "qa": (SHORT, LONG), "wit": (SHORT, LONG), "long": (LONG,)}[recipe]
    signature = {"source": source, "recipe": recipe, "columns": dict(columns or {}), "image_size": image_size,
                 "resize_mode": resize_mode, "long_threshold": long_threshold, "split": split, "name": name}  # fmt: skip
    features = _caption_features()
    writer = ShardWriter(Path(out), kinds, {k: features for k in kinds}, every=shard_size, signature=signature)
    if writer.state["done"]:
        logger.info("%s is complete (%d rows read)", out, writer.rows_read)
        return writer.state
    files = _local_files(source)
    image_root = os.path.dirname(os.path.abspath(files[0])) if files else (source if os.path.isdir(source) else None)
    rows = IterableDataset.from_generator(partial(read_rows, source, fmt=fmt, split=split, name=name))
    if writer.rows_read:
        logger.info("resuming %s after %d rows", out, writer.rows_read)
        rows = rows.skip(writer.rows_read)  # before the transforms: skipped rows are read, not decoded
    if limit is not None:
        rows = rows.take(max(0, limit - writer.rows_read))
    pipeline = (
        rows.map(partial(build_captions, recipe=recipe, columns=columns), batched=True, batch_size=batch_size)
        .map(partial(count_tokens, tokenizer=tokenizer, column="short"), batched=True, batch_size=batch_size)
        .map(partial(count_tokens, tokenizer=tokenizer, column="long"), batched=True, batch_size=batch_size)
        .map(partial(split_by_length, recipe=recipe, threshold=long_threshold), batched=True, batch_size=batch_size)
        .map(partial(resize_images, size=image_size, mode=resize_mode, image_root=image_root), batched=True, batch_size=batch_size)
    )
    for example in tqdm(pipeline, desc=f"building {Path(out).name}", unit=" rows", initial=writer.rows_read):
        if example["problem"] is not None:
            writer.skip(example["_where"], example["problem"])
        else:
            for kind, column in ((SHORT, "short"), (LONG, "long")):
                if example[column] and kind in kinds:
                    writer.add(kind, {"image": {"bytes": example["image"], "path": None}, "caption": example[column],
                                      "num_tokens": example[f"{column}_tokens"], "source_row": example["_where"]})  # fmt: skip
        writer.row_done()
    writer.commit(done=True)
    return writer.state


__all__ = [
    "FIELDS",
    "IMAGE_SIZE",
    "LONG_CAPTION_TOKENS",
    "RECIPES",
    "RowProblem",
    "ShardWriter",
    "build_captions",
    "build_image_text",
    "count_tokens",
    "read_rows",
    "resize_images",
    "split_by_length",
]
