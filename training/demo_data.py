"""Training sources and a held-out retrieval set built from the repository's multilingual demo data,
``data/tuxpaint/`` (Tux Paint stamps: ~500 photos of objects, captions in up to 78 languages; see its
README), in the formats ``training.data`` streams.

``write_demo_sources(out_dir)`` writes, deterministically (same inputs -> byte-identical files):

``image_text.parquet``
    one row per (image, language): ``image`` (datasets ``Image`` column: the JPEG/PNG bytes), ``caption``
    (the caption in that language), ``long_caption``, ``id``, ``lang``, ``category``. Rows are in a
    seeded random order. ``long_caption`` is a STAND-IN for the paper's long-caption set D^mm;l (GPT-4v
    descriptions, WIT concatenations): the caption followed by 2-3 of the same image's captions in other
    languages and its category word, i.e. a longer, multi-sentence text about the same image. Two sources
    read this file: ``image_text_short`` (``caption``) and ``image_text_long`` (``columns={"caption":
    "long_caption"}``).
``image_text-000000.tar``
    a webdataset shard with a subset of the pairs (each image once, in a rotating language):
    ``<key>.jpg`` (non-JPEG images are re-encoded as JPEG), ``<key>.txt``, ``<key>.json``.
``text_pairs.jsonl``
    ``{"query", "document", ...}``: translation pairs, English -> every other language and a few pairs
    between two other languages, per image (identical texts are left out).
``text_triplets.jsonl``
    ``{"query", "positive", "negatives": [7], ...}``: the query is a caption in one language, the positive
    the same image's caption in another language, the negatives 7 captions of OTHER images in the
    positive's language, taken from the same category first (hard negatives), then from others.

Images in several languages means the same image (or sentence) can appear twice in a batch, a false
negative for the contrastive loss; at demo scale this is accepted.

Files are replaced atomically and an identical existing file is left in place, so processes of a
distributed run may all call ``write_demo_sources`` on a shared folder while others already read it.

Each image's captions come only from its split (``splits.json``), so ``heldout_eval_set("test")`` is
disjoint from the training sources.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image

from jina_clip_v2._io import atomic_write
from jina_clip_v2.modeling.processing_jina_clip import load_image
from jina_clip_v2.training.sources import SourceConfig

# Package data (jina_clip_v2.data): next to training/ in a checkout and in an installed package alike.
DATA_ROOT = Path(__file__).resolve().parent.parent / "data" / "tuxpaint"

# Default languages of the image-text and text sources: widely spoken ones with (near) full coverage.
# Every (image, language) row carries its image's bytes, so all ~66 languages per image would make the
# parquet ~25x larger than the images; pass langs="all" for every language.
DEMO_LANGS = ("en", "de", "fr", "es", "it", "pt-br", "ru", "ja", "zh-cn", "ko", "ar", "hi")

NUM_NEGATIVES = 7
DEMO_PREFIX = "demo://"  # a source path naming the bundled demo data in a stage config


def load_records(data_root: str | Path | None = None) -> list[dict]:
    root = Path(data_root or DATA_ROOT)
    with open(root / "captions.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_split(split: str, data_root: str | Path | None = None) -> list[dict]:
    """The records of one split (``train`` / ``test``), in ``splits.json`` order."""
    root = Path(data_root or DATA_ROOT)
    splits = json.loads((root / "splits.json").read_text(encoding="utf-8"))
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; the demo set has {sorted(splits)}")
    by_id = {r["id"]: r for r in load_records(root)}
    return [by_id[i] for i in splits[split]]


def _languages(records: list[dict], langs) -> list[str]:
    present = sorted({lang for r in records for lang in r["captions"]})
    if langs is None:
        langs = DEMO_LANGS
    if langs == "all":
        return present
    unknown = [lang for lang in langs if lang not in present]
    if unknown:
        raise ValueError(f"languages {unknown} have no caption in this split")
    return list(langs)


def _long_caption(record: dict, lang: str, langs: list[str], rng: random.Random) -> str:
    caption = record["captions"][lang]
    caps = record["captions"]
    pool = [other for other in langs if other in caps] if sum(o in caps for o in langs) > 3 else list(caps)
    others = sorted({caps[other] for other in pool if other != lang and caps[other] != caption})
    extra = rng.sample(others, min(len(others), rng.choice((2, 3))))
    return " ".join([caption, *extra, f"({record['category']})"])


def _jpeg_bytes(data: bytes) -> bytes:
    if data[:3] == b"\xff\xd8\xff":
        return data
    buffer = io.BytesIO()
    load_image(data).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _publish(path: Path, write) -> None:
    """``write(handle)`` into ``path`` atomically, leaving an identical existing file untouched: several
    processes may write the same (deterministic) demo files while others already read them."""
    with atomic_write(path, "wb", keep_identical=True) as handle:
        write(handle)


def _write_parquet(handle, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Features, Value
    from datasets import Image as HFImage

    features = Features(
        {
            "image": HFImage(),
            "caption": Value("string"),
            "long_caption": Value("string"),
            "id": Value("string"),
            "lang": Value("string"),
            "category": Value("string"),
        }
    )
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    metadata = {b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()}
    table = table.replace_schema_metadata(metadata)
    pq.write_table(table, handle, row_group_size=512)


def _write_jsonl(handle, rows: list[dict]) -> None:
    for row in rows:
        handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def _write_tar(handle, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))


def _text_pairs(records: list[dict], langs: list[str], rng: random.Random) -> list[dict]:
    rows = []
    for record in records:
        caps = record["captions"]
        available = [lang for lang in langs if lang in caps]
        if "en" in caps:
            for lang in available:
                if lang != "en" and caps[lang] != caps["en"]:
                    rows.append(_pair(record, "en", lang))
        others = [lang for lang in available if lang != "en"]
        for _ in range(min(2, len(others) // 2)):
            a, b = rng.sample(others, 2)
            if caps[a] != caps[b]:
                rows.append(_pair(record, a, b))
    rng.shuffle(rows)
    return rows


def _pair(record: dict, a: str, b: str) -> dict:
    caps = record["captions"]
    return {"query": caps[a], "document": caps[b], "lang_query": a, "lang_document": b, "id": record["id"]}


def _triplets(records: list[dict], langs: list[str], rng: random.Random) -> list[dict]:
    by_lang: dict[str, list[tuple[str, str, str]]] = {}  # lang -> [(id, category, caption)]
    for other in records:
        for lang, text in other["captions"].items():
            by_lang.setdefault(lang, []).append((other["id"], other["category"], text))
    by_lang_category: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for lang, entries in by_lang.items():
        for entry in entries:
            by_lang_category.setdefault((lang, entry[1]), []).append(entry)

    rows = []
    for record in records:
        caps = record["captions"]
        for lang_q in [lang for lang in langs if lang in caps]:
            query = caps[lang_q]
            choices = [lang for lang in langs if lang in caps and lang != lang_q and caps[lang] != query]
            if not choices:
                continue
            lang_p = rng.choice(choices)
            positive = caps[lang_p]
            # hard negatives: other images of the same category, captioned in the positive's language
            seen = {query, positive}
            same = []
            for other_id, _, text in by_lang_category[(lang_p, record["category"])]:
                if other_id != record["id"] and text not in seen:
                    seen.add(text)
                    same.append(text)
            negatives = rng.sample(same, min(NUM_NEGATIVES, len(same)))
            pool = by_lang[lang_p]  # then random other images (any category) until there are 7
            for _ in range(50 * NUM_NEGATIVES):
                if len(negatives) == NUM_NEGATIVES:
                    break
                other_id, category, text = pool[rng.randrange(len(pool))]
                if other_id != record["id"] and category != record["category"] and text not in seen:
                    seen.add(text)
                    negatives.append(text)
            if len(negatives) < NUM_NEGATIVES:
                continue
            rows.append(
                {
                    "query": query,
                    "positive": positive,
                    "negatives": negatives,
                    "lang_query": lang_q,
                    "lang_positive": lang_p,
                    "id": record["id"],
                }
            )
    rng.shuffle(rows)
    return rows


def write_demo_sources(
    out_dir: str | Path,
    split: str = "train",
    langs=None,
    *,
    data_root: str | Path | None = None,
    seed: int = 0,
) -> dict[str, SourceConfig]:
    """Write the demo's training files into ``out_dir`` and return their sources, keyed
    ``image_text_short``, ``image_text_long``, ``image_text_webdataset`` (kind image_text_short),
    ``text_pairs`` and ``text_triplets``. ``langs``: a list of language codes, None (``DEMO_LANGS``) or
    ``"all"``."""
    root = Path(data_root or DATA_ROOT)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_split(split, root)
    langs = _languages(records, langs)
    rng = random.Random(f"tuxpaint-demo:{split}:{seed}")

    image_bytes = {r["id"]: (root / r["image"]).read_bytes() for r in records}
    rows = []
    for record in records:
        for lang in langs:
            if lang in record["captions"]:
                rows.append(
                    {
                        "image": {"bytes": image_bytes[record["id"]], "path": Path(record["image"]).name},
                        "caption": record["captions"][lang],
                        "long_caption": _long_caption(record, lang, langs, rng),
                        "id": record["id"],
                        "lang": lang,
                        "category": record["category"],
                    }
                )
    rng.shuffle(rows)
    _publish(out / "image_text.parquet", lambda handle: _write_parquet(handle, rows))

    samples = []
    for i, record in enumerate(records):
        available = [lang for lang in langs if lang in record["captions"]]
        lang = available[i % len(available)]
        caption = record["captions"][lang]
        meta = {"id": record["id"], "lang": lang, "category": record["category"], "caption": caption}
        samples.append(
            (
                f"{record['id']}-{lang}",
                {
                    "jpg": _jpeg_bytes(image_bytes[record["id"]]),
                    "txt": caption.encode("utf-8"),
                    "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                },
            )
        )
    _publish(out / "image_text-000000.tar", lambda handle: _write_tar(handle, samples))

    pairs, triplets = _text_pairs(records, langs, rng), _triplets(records, langs, rng)
    _publish(out / "text_pairs.jsonl", lambda handle: _write_jsonl(handle, pairs))
    _publish(out / "text_triplets.jsonl", lambda handle: _write_jsonl(handle, triplets))

    parquet = str((out / "image_text.parquet").resolve())
    return {
        "image_text_short": SourceConfig(path=parquet, format="parquet"),
        "image_text_long": SourceConfig(path=parquet, format="parquet", columns={"caption": "long_caption"}),
        "image_text_webdataset": SourceConfig(path=str((out / "image_text-000000.tar").resolve()), format="webdataset"),
        "text_pairs": SourceConfig(path=str((out / "text_pairs.jsonl").resolve()), format="json"),
        "text_triplets": SourceConfig(path=str((out / "text_triplets.jsonl").resolve()), format="json"),
    }


def demo_sources(demo_dir: str | Path, split: str = "train", langs=None) -> dict[str, SourceConfig]:
    """``write_demo_sources`` once per (split, languages) under ``demo_dir``, reused afterwards (the files
    are deterministic): the sources ``demo://<name>`` in a stage config stand for."""
    name = split if langs is None else f"{split}-{'-'.join(langs)}"
    folder = Path(demo_dir) / name
    index = folder / "sources.json"
    if index.is_file():
        return {key: SourceConfig(**value) for key, value in json.loads(index.read_text(encoding="utf-8")).items()}
    sources = write_demo_sources(folder, split=split, langs=langs)
    with atomic_write(index) as handle:  # written last: a folder without it is rewritten
        json.dump({key: dataclasses.asdict(value) for key, value in sources.items()}, handle, indent=2)
    return sources


def resolve_sources(sources: list[SourceConfig], demo_dir: str | Path, langs=None) -> list[SourceConfig]:
    """Replace ``demo://<name>`` sources by the bundled demo data written under ``demo_dir``."""
    resolved, written = [], {}
    for source in sources:
        if isinstance(source.path, str) and source.path.startswith(DEMO_PREFIX):
            key = source.path[len(DEMO_PREFIX):]
            split = source.split or "train"
            if split not in written:
                written[split] = demo_sources(demo_dir, split, langs)
            if key not in written[split]:
                raise ValueError(f"unknown demo source {source.path!r}; available: {sorted(written[split])}")
            resolved.append(dataclasses.replace(written[split][key], weight=source.weight))
        else:
            resolved.append(source)
    return resolved


def heldout_eval_set(
    split: str = "test", langs=None, *, data_root: str | Path | None = None
) -> tuple[list[Image.Image], list[tuple[str, int, str]]]:
    """The images of ``split`` (RGB PIL, in ``splits.json`` order) and every caption as
    ``(caption, image_index, lang)``; ``langs``: a list, or None for every language present."""
    root = Path(data_root or DATA_ROOT)
    records = load_split(split, root)
    keep = None if langs is None else set(_languages(records, langs))
    images = [load_image(str(root / r["image"])) for r in records]
    entries = [
        (caption, index, lang)
        for index, record in enumerate(records)
        for lang, caption in record["captions"].items()
        if keep is None or lang in keep
    ]
    return images, entries


__all__ = [
    "DEMO_LANGS",
    "demo_sources",
    "heldout_eval_set",
    "load_records",
    "load_split",
    "resolve_sources",
    "write_demo_sources",
]
