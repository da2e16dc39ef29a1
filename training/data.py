"""The data side of the trainer: streamed, interleaved, sharded, shuffled, resumable batches for the four
dataset kinds of the paper (section 3.1).

Kinds and their column schemas (after per-source renaming with ``SourceConfig.columns``, which maps OUR
column name -> the source's column name; a dotted name such as ``"json.caption"`` reads a field of a
dict/JSON column):

``text_pairs`` (D^txt;p)
    ``query`` (str), ``document`` (str).
``text_triplets`` (D^txt;t)
    ``query`` (str), ``positive`` (str), ``negatives`` (list of ``num_negatives`` = 7 str; extra ones are
    dropped, an example with fewer is skipped and counted).
``image_text_short`` (D^mm;s) and ``image_text_long`` (D^mm;l)
    ``image`` (PIL image, encoded bytes, ``{"bytes", "path"}`` dict as datasets stores images, or a
    path; a relative path is resolved against ``SourceConfig.image_root``, by default the source's local
    folder), ``caption`` (str). Short and long captions share the schema; the only difference is the
    ``max_length`` the stage gives them (77 in stage 1, 512 later): long captions keep up to
    ``max_length`` tokens.
    Webdataset shards: the image is the sample's ``jpg``/``jpeg``/``png``/``webp`` member, the caption
    its ``txt`` member or the ``caption``/``text`` field of its ``json`` member. Local shards are read
    sample by sample (``training.sources``), each with its own members; a Hub dataset of shards goes
    through datasets' webdataset builder, which takes the member names from the first samples of the
    first shard and reads later members under other names as missing (counted as skipped), so all shards
    of such a source must share a layout.

Without an explicit mapping a column is looked up under its own name and a few common aliases
(``_CANDIDATES``).

Batches (``TaskStream.__next__``), all tensors on CPU:

* ``text_pairs``: ``{"query": BatchEncoding, "document": BatchEncoding}``
* ``text_triplets``: ``{"query", "document" (the positive), "negatives": BatchEncoding of B*K rows,
  row-major (query i's negatives are rows i*K .. i*K+K-1), "num_negatives": K}``
* ``image_text_*``: ``{"pixel_values": FloatTensor (B, 3, S, S), "caption": BatchEncoding}``

Each ``BatchEncoding`` holds ``input_ids`` and ``attention_mask``, truncated to ``max_length`` and padded
to the longest row of the batch. With ``keep_raw=True`` a batch also carries ``"raw"``: the examples'
texts and source index (for debugging and tests).

Pipeline (every source is a streaming ``datasets.IterableDataset``)::

    load_dataset(..., streaming=True)          # Hub id, local folder (Hub layout or plain), file, glob
      .decode(False)                           # images stay bytes/paths until a batch needs them
      .map(rename + normalize, features=...)   # common schema, so sources can be interleaved
    interleave_datasets(probabilities=normalized weights, seed, stopping_strategy="all_exhausted")
      .shuffle(seed, buffer_size)              # train only
    split_dataset_by_node(rank, world_size)    # disjoint shards (or 1-in-world_size examples) per rank
      .set_epoch(epoch)                        # new shard order, interleaving and buffer seeds each epoch

Images are decoded in the main process after the stream: RGB, transparency composited onto white; at
train time the release's augmentation, ``RandomResizedCrop(image_size, scale=(0.9, 1.0),
ratio=(3/4, 4/3), bicubic)`` (as torchvision's, reimplemented with PIL and a ``random.Random`` seeded from
(seed, rank, epoch, example index) so that a resumed run draws the same crops), then the processor's
rescale and CLIP mean/std normalization; at eval time the processor's own resize + center crop. An image
that fails to decode is skipped (the batch is filled with the next example) and counted in
``TaskStream.skipped``, with a logged warning; so are empty texts, triplets with too few negatives and bad
rows (``training.sources``: invalid JSON, wrong types; ``on_bad_row="error"`` stops at the first instead).
A source that yields ``max_consecutive_skips`` unusable examples in a row stops the stream with a
``DataError`` naming the source and the reasons counted.

Nothing is lost silently: skipped examples, damaged files and the rows they lost, texts cut and URL fetches are
counted and logged by ``training.data_report`` (the counting and the stop rules), and ``TaskStream.report()``
is the run's summary (``training_summary.json``: ``data``).

Bounded cost per example: a text is cut at ``max_text_chars`` characters before it is tokenized (default
64 per token of ``max_length``: a text's first ``max_length`` tokens practically never span more, so the
tokens are those of the whole text; a 1 GiB text would otherwise take the tokenizer's memory with it).
Images are decoded with the processor's bounds (``max_image_pixels``, ``fetch_timeout``,
``fetch_max_bytes``). URL fetches (only from sources with ``fetch_urls: true``, ``training.sources``) have
a budget per source: ``max_fetch_failure_seconds`` of failed fetches in a row, and ``max_fetch_failure_rate`` of
all (``training.data_report``).

Resume. ``IterableDataset.state_dict()`` is exact for a stream without a shuffle buffer, but not with
one: datasets saves the position of the buffer's *input* and drops the buffer content, so a resumed
stream refills the buffer with new data and yields different examples (datasets documents this, and
``tests/test_data.py`` checks it: after a shuffled resume the next examples differ). Exact resume is
therefore done by deterministic replay: the state records ``(epoch, examples consumed in that epoch on
this rank)``; loading it rebuilds the same seeded pipeline, sets the epoch and skips that many raw
examples. Skipping reads but does not decode images or tokenize, and never costs more than one epoch of
this rank's shard. ``exact_resume=False`` uses datasets' own state instead (instant, but the shuffle
buffer's content is lost as described); the state always carries datasets' state dict as well.

Costs to know: examples are read, decoded and tokenized in the calling process (``num_threads`` decodes
a batch's images in a thread pool); datasets sleeps 5 s (``datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN``,
a workaround for apache/arrow#45214) whenever an interleaved or shuffled iterator over parquet ends or
is dropped, i.e. once per epoch and once per resume.
"""

from __future__ import annotations

import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

# max_text_chars' default, per token of max_length: encode_text's character bound
from jina_clip_v2.modeling.policy_jina_clip import TEXT_CHARS_PER_TOKEN
from jina_clip_v2.training.data_report import DataReport
from jina_clip_v2.training.images import default_image_size, image_from_record, normalize_images, random_resized_crop
from jina_clip_v2.training.sources import (
    IMAGE_KINDS,
    KIND_COLUMNS,
    KINDS,
    DataError,
    SourceConfig,
    load_source,
    source_label,
)

logger = logging.getLogger(__name__)

_END = object()  # the end of an iterator, for next(iterator, _END)
ON_BAD_ROW = ("skip", "error")


@dataclass
class TaskDataConfig:
    kind: str
    sources: list[SourceConfig]
    batch_size: int  # per process (local) batch size
    max_length: int = 77  # tokens
    image_size: int | None = None  # for image kinds (None: the processor's crop size)
    num_negatives: int = 7  # triplets
    shuffle_buffer: int = 1000
    seed: int = 0
    max_consecutive_skips: int = 1000  # unusable examples in a row from one source before a DataError
    on_bad_row: str = "skip"  # skip | error
    name: str = "data"  # how errors name the task (the config key: "data.text", "data.image_text")
    query_instruction: str = ""  # prepended to every query of a text task (recorded in the export's config)
    max_text_chars: int | None = None  # texts are cut here before tokenizing (None: 64 per token of max_length)
    max_fetch_failure_seconds: float = 120.0  # seconds failed URL fetches in a row may cost one source
    max_fetch_failure_rate: float = 0.9  # failed share of a source's URL fetches (after MIN_FETCHES_FOR_RATE)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown data kind {self.kind!r}; expected one of {KINDS}")
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        if not self.sources:
            raise ValueError("a task needs at least one source")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
        if self.on_bad_row not in ON_BAD_ROW:
            raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {self.on_bad_row!r}")
        if self.max_text_chars is not None and self.max_text_chars < 1:
            raise ValueError(f"max_text_chars must be >= 1, got {self.max_text_chars}")
        if not self.max_fetch_failure_seconds > 0 or not 0 <= self.max_fetch_failure_rate <= 1:
            raise ValueError(
                "max_fetch_failure_seconds must be > 0 and max_fetch_failure_rate in [0, 1]; got "
                f"{self.max_fetch_failure_seconds} and {self.max_fetch_failure_rate}"
            )

    def source_label(self, index: int) -> str:
        return source_label(self.sources[index], f"{self.name}.sources.{index}")


def build_dataset(cfg: TaskDataConfig, *, rank: int = 0, world_size: int = 1, train: bool = True):
    """The task's full streaming pipeline (see the module docstring) for one rank."""
    from datasets import interleave_datasets
    from datasets.distributed import split_dataset_by_node

    sources = [load_source(src, cfg.kind, i, label=cfg.source_label(i)) for i, src in enumerate(cfg.sources)]
    if len(sources) == 1:
        ds = sources[0]
    else:
        weights = [float(s.weight) for s in cfg.sources]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {weights}")
        ds = interleave_datasets(
            sources,
            probabilities=[w / sum(weights) for w in weights],
            seed=cfg.seed,
            stopping_strategy="all_exhausted",
        )
    if train and cfg.shuffle_buffer and cfg.shuffle_buffer > 1:
        # The buffer is fed from up to 10 shards at once (better mixing); with a single shard that feeding
        # layer only adds a thread hand-off per example (and, for parquet, a 5 s sleep per epoch): skip it.
        input_shards = min(10, max(1, ds.num_shards))
        ds = ds.shuffle(seed=cfg.seed, buffer_size=cfg.shuffle_buffer, max_buffer_input_shards=input_shards)
    if world_size > 1:
        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    return ds



class TaskStream:
    """An iterator of collated batches over one task's sources: infinite by default (each epoch ends when
    every source is exhausted and the next starts with new shuffle seeds), and resumable exactly."""

    def __init__(
        self,
        cfg: TaskDataConfig,
        processor,
        dataset,
        *,
        rank: int = 0,
        world_size: int = 1,
        train: bool = True,
        epochs: int | None = None,
        exact_resume: bool = True,
        keep_raw: bool = False,
        num_threads: int = 0,
    ):
        self.cfg = cfg
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = getattr(processor, "image_processor", None)
        self.dataset = dataset
        self.rank, self.world_size, self.train = rank, world_size, train
        self.epochs = epochs if epochs is not None else (None if train else 1)
        self.exact_resume = exact_resume
        self.keep_raw = keep_raw
        self.num_threads = num_threads
        self.max_length = cfg.max_length
        self.image_size = cfg.image_size
        if cfg.kind in IMAGE_KINDS:
            if self.image_processor is None:
                raise ValueError("image kinds need a processor with an image_processor")
            if self.image_size is None:
                self.image_size = default_image_size(self.image_processor)
        self.epoch = 0
        self.consumed = 0  # raw examples this rank has read in the current epoch
        self.examples_seen = 0  # raw examples read in all epochs (bookkeeping)
        # Skipped examples, damaged files, texts cut, URL fetches, and the rules that stop on bad data.
        self.data_report = DataReport(cfg)
        self._iterator: Iterator | None = None
        self._native_state: dict | None = None
        self._finished = False
        self._pool = ThreadPoolExecutor(num_threads) if num_threads > 0 else None

    # -- iteration --------------------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> dict:
        examples: list[dict] = []
        while len(examples) < self.cfg.batch_size:
            raws = []
            while len(raws) < self.cfg.batch_size - len(examples):
                raw = self._next_raw()
                if raw is None:
                    break
                raws.append(raw)
            if not raws:
                break
            if self._pool is not None and self.cfg.kind in IMAGE_KINDS:
                prepared = list(self._pool.map(self._prepare, raws))
            else:
                prepared = [self._prepare(raw) for raw in raws]
            for raw, item in zip(raws, prepared):
                source = int(raw[2].get("_source") or 0)
                fetch = item[2] if isinstance(item, tuple) else item.pop("_fetch", None)
                if fetch is not None:
                    self.data_report.count_fetch(source, *fetch)
                if isinstance(item, tuple):
                    if item[0] == "bad_row" and raw[2].get("_where") and raw[0] == 0:
                        self.data_report.count_loss(raw[2]["_where"], int(raw[2].get("_lost") or 1), item[1])
                    self.data_report.skip(item[0], item[1], source=source)
                else:
                    self.data_report.usable(source)
                    examples.append(item)
        if not examples:
            raise StopIteration
        return self._collate(examples)

    def _start_epoch(self) -> None:
        self.dataset.set_epoch(self.epoch)
        skip = self.consumed
        if self._native_state is not None:
            if self._native_state.get("epoch") == self.epoch:
                self.dataset.load_state_dict(self._native_state)
                skip = 0
            self._native_state = None
        iterator = iter(self.dataset)
        for done in range(skip):  # deterministic replay: same seeds, same order, nothing decoded
            if self._read(iterator, _END) is _END:
                raise DataError(
                    f"cannot resume the {self.cfg.kind} data at epoch {self.epoch}, example {skip}: this rank's "
                    f"stream now ends after {done} examples (did the sources or world size change?)"
                )
        self._iterator = iterator

    def _next_raw(self) -> tuple[int, int, dict] | None:
        """The next raw example as (epoch, index in epoch, example); None once `epochs` are done."""
        if self._finished:
            return None
        if self._iterator is None:
            self._start_epoch()
        example = self._read(self._iterator, _END)
        if example is _END:
            if self.consumed == 0:
                raise DataError(
                    f"{self.cfg.name} ({self.cfg.kind}) yielded no examples on rank {self.rank}/{self.world_size} "
                    f"(sources: {', '.join(s.path for s in self.cfg.sources)})"
                )
            self.epoch += 1
            self.consumed = 0
            self._iterator = None
            if self.epochs is not None and self.epoch >= self.epochs:
                self._finished = True
                return None
            return self._next_raw()
        index = self.consumed
        self.consumed += 1
        self.examples_seen += 1
        return self.epoch, index, example

    def _read(self, iterator, default):
        """The next raw example of the dataset; its read errors (not the mapping's ``KeyError``) as a
        ``DataError`` naming the task's sources and the position."""
        try:
            return next(iterator, default)
        except (DataError, KeyError):
            raise
        except Exception as err:
            raise DataError(
                f"{self.cfg.name}: reading example {self.consumed} of epoch {self.epoch} failed (sources: "
                f"{', '.join(s.path for s in self.cfg.sources)}): {type(err).__name__}: {err}"
            ) from err

    def _prepare(self, raw: tuple[int, int, dict]) -> dict | tuple:
        """Decode/augment/validate one raw example (thread-safe); (reason, detail, fetch) when it is skipped.
        `fetch` (also the kept example's "_fetch") is (seconds, ok, detail) for an image fetched from a URL."""
        epoch, index, example = raw
        kind = self.cfg.kind
        if example.get("_bad"):
            return ("bad_row", example["_bad"], None)
        if kind in IMAGE_KINDS:
            caption = example.get("caption")
            if not caption:
                return ("empty_text", "", None)
            record = example.get("image")
            if record is None:
                return ("missing_image", "", None)
            path = record.get("path") if isinstance(record, dict) and record.get("bytes") is None else None
            url = isinstance(path, str) and "://" in path
            started = time.monotonic()
            try:
                image = image_from_record(record, image_processor=self.image_processor)
                if self.train:
                    rng = random.Random(f"{self.cfg.seed}:{self.rank}:{epoch}:{index}")
                    image = random_resized_crop(image, self.image_size, rng)
            except Exception as err:  # noqa: BLE001 - any undecodable image is data corruption
                detail = f"{type(err).__name__}: {err}"
                return ("corrupt_image", detail, (time.monotonic() - started, False, detail) if url else None)
            fetch = (time.monotonic() - started, True, path) if url else None
            return {"image": image, "caption": caption, "_source": example.get("_source"), "_fetch": fetch}
        texts = [example.get(c) for c in KIND_COLUMNS[kind] if c != "negatives"]
        if not all(texts):
            return ("empty_text", "", None)
        if kind == "text_triplets":
            negatives = [n for n in (example.get("negatives") or []) if n]
            if len(negatives) < self.cfg.num_negatives:
                return ("too_few_negatives", f"{len(negatives)} < {self.cfg.num_negatives}", None)
            example = dict(example, negatives=negatives[: self.cfg.num_negatives])
        return example

    def _tokenize(self, texts: list[str]):
        limit = self.cfg.max_text_chars or TEXT_CHARS_PER_TOKEN * self.max_length
        if any(len(text) > limit for text in texts):  # bounded before the tokenizer sees it (module docstring)
            self.data_report.texts_cut += sum(len(text) > limit for text in texts)
            texts = [text[:limit] for text in texts]
        encoding = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding="longest",
            return_tensors="pt",
            return_token_type_ids=False,
        )
        for key in [k for k in encoding if k not in ("input_ids", "attention_mask")]:
            del encoding[key]
        return encoding

    def _collate(self, examples: list[dict]) -> dict:
        kind = self.cfg.kind
        if kind in IMAGE_KINDS:
            images = [e["image"] for e in examples]
            if self.train:
                pixels = normalize_images(images, self.image_processor)
            else:
                size = self.image_size
                pixels = self.image_processor(
                    images=images,
                    size={"shortest_edge": size},
                    crop_size={"height": size, "width": size},
                    return_tensors="pt",
                )["pixel_values"]
            batch = {"pixel_values": pixels.float(), "caption": self._tokenize([e["caption"] for e in examples])}
            raw_columns = ("caption", "_source")
        elif kind == "text_pairs":
            batch = {
                "query": self._tokenize([self.cfg.query_instruction + e["query"] for e in examples]),
                "document": self._tokenize([e["document"] for e in examples]),
            }
            raw_columns = ("query", "document", "_source")
        else:
            k = self.cfg.num_negatives
            batch = {
                "query": self._tokenize([self.cfg.query_instruction + e["query"] for e in examples]),
                "document": self._tokenize([e["positive"] for e in examples]),
                "negatives": self._tokenize([n for e in examples for n in e["negatives"]]),
                "num_negatives": k,
            }
            raw_columns = ("query", "positive", "negatives", "_source")
        if self.keep_raw:
            batch["raw"] = [{c: e.get(c) for c in raw_columns} for e in examples]
        return batch

    def close(self) -> None:
        """Drop the open dataset iterator and the decoding threads (a later batch reopens the iterator at
        the same position and decodes in the main thread)."""
        self._iterator = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def report(self) -> dict:
        """What the data cost, for the run's summary (`DataReport.to_dict`)."""
        return self.data_report.to_dict()

    @property
    def skipped(self):
        """The examples skipped so far, by reason (a Counter)."""
        return self.data_report.skipped

    # -- switches ---------------------------------------------------------------------------------------
    def set_image_size(self, size: int) -> None:
        """Resolution of the following batches (stage 1 ends at 384; stage 3 trains at 512)."""
        self.image_size = int(size)

    def set_max_length(self, n: int) -> None:
        self.max_length = int(n)

    # -- checkpointing ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "version": 1,
            "kind": self.cfg.kind,
            "seed": self.cfg.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "consumed": self.consumed,
            "examples_seen": self.examples_seen,
            "finished": self._finished,
            "image_size": self.image_size,
            "max_length": self.max_length,
            **self.data_report.state_dict(),
            "resume": "replay" if self.exact_resume else "datasets",
        }
        if self._iterator is not None:
            try:
                native = self.dataset.state_dict()
                json.dumps(native)
                state["datasets_state"] = native
            except Exception:  # noqa: BLE001 - optional extra
                pass
        return state

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("kind", self.cfg.kind), ("world_size", self.world_size), ("rank", self.rank)):
            if key in state and state[key] != mine:
                raise ValueError(f"data state is for {key}={state[key]!r}, this stream has {key}={mine!r}")
        if state.get("seed", self.cfg.seed) != self.cfg.seed:
            logger.warning("data state was saved with seed %s, this stream uses %s", state["seed"], self.cfg.seed)
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self.examples_seen = int(state.get("examples_seen", 0))
        self._finished = bool(state.get("finished", False))
        if state.get("image_size") is not None:
            self.image_size = int(state["image_size"])
        if state.get("max_length") is not None:
            self.max_length = int(state["max_length"])
        self.data_report.load_state_dict(state)
        self._iterator = None
        self._native_state = None
        if not self.exact_resume and state.get("datasets_state") is not None:
            self._native_state = state["datasets_state"]


def build_task_stream(
    cfg: TaskDataConfig, processor, *, rank: int = 0, world_size: int = 1, train: bool = True, **options
) -> TaskStream:
    """The batch stream of one task for one process: ``build_dataset`` + ``TaskStream``.

    ``train=False`` skips the shuffle buffer and uses the processor's eval resize/center crop. ``options``
    go to ``TaskStream``: ``epochs`` bounds the stream (default: infinite when training, one pass otherwise;
    a last partial batch is then yielded), ``exact_resume=False`` resumes with datasets' own state dict
    (fast; loses the shuffle buffer's content), ``num_threads`` decodes/crops a batch's images in a thread
    pool (order is kept), ``keep_raw`` adds the examples' texts to every batch.
    """
    if not isinstance(cfg, TaskDataConfig):
        cfg = TaskDataConfig(**cfg)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    dataset = build_dataset(cfg, rank=rank, world_size=world_size, train=train)
    return TaskStream(cfg, processor, dataset, rank=rank, world_size=world_size, train=train, **options)


__all__ = [
    "KINDS",
    "DataError",
    "SourceConfig",
    "TaskDataConfig",
    "TaskStream",
    "build_dataset",
    "build_task_stream",
]
