#!/usr/bin/env python
"""Build the small multilingual image-caption demo set in ``data/tuxpaint/``.

Why this exists
---------------
No machine this project runs on can reach the Hugging Face Hub, and no package
registry ships COCO, Flickr30K, XM3600 or any other real image-text benchmark.
The one source of *real* photos paired with *human-written* captions in many
languages that can be had offline is Debian's ``tuxpaint-stamps-default``
package (GPL-2): about 540 cut-out photos of everyday objects, each with an
English caption and translations into up to ~77 languages.  This script turns
them into a compact, committed retrieval set (a few MB) that the demos,
evaluation code and tests can use without any network access.

What it does
------------
* scans ``<stamps>/<category>/.../<name>.png`` (the ``symbols/`` category is
  skipped: flags, coins, letters and shapes are not objects);
* keeps a stamp only when it has a PNG and a ``<name>.txt`` whose first line
  (the English caption) is non-empty; the following ``xx.utf8=...`` /
  ``xx_YY.utf8=...`` lines are translations;
* drops stamps whose English caption repeats an earlier one (first by sorted
  path wins);
* composites transparency onto white, resizes with bicubic so the shorter side
  is 128 px while the longer side is at most 192 px (aspect ratio kept, no
  crop), and saves an optimised JPEG (quality 85), or a PNG when that is
  smaller;
* writes ``captions.jsonl`` (one record per image), ``splits.json`` (a
  deterministic train/test split by ``sha1(id) % 5``) and ``README.md``.

Everything is sorted and uses fixed parameters, so rerunning it gives
byte-identical output.  Rebuild with::

    python -m jina_clip_v2.data.build_demo_data
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from jina_clip_v2.modeling.processing_jina_clip import load_image

PACKAGE = "tuxpaint-stamps-default"
DEFAULT_STAMPS = Path("/usr/share/tuxpaint/stamps")
DEFAULT_OUT = Path(__file__).resolve().parent / "tuxpaint"
SKIP_CATEGORIES = frozenset({"symbols"})

SHORT_SIDE = 128
MAX_LONG_SIDE = 192
JPEG_QUALITY = 85
TEST_MODULUS = 5  # sha1(id) % 5 == 0 -> test

# ``xx.utf8=...``, ``xx_YY.utf8=...``, ``ca@valencia.utf8=...``
TRANSLATION_RE = re.compile(r"^([A-Za-z]{2,3}(?:_[A-Za-z]{2})?(?:@[A-Za-z]+)?)\.utf-?8=(.*)$", re.IGNORECASE)
# glibc locale modifiers -> BCP-47 subtags
MODIFIERS = {"latin": "latn", "cyrillic": "cyrl", "valencia": "valencia"}


def normalise_lang(code: str) -> str:
    """``pt_BR`` -> ``pt-br``, ``sr@latin`` -> ``sr-latn``, ``ca@valencia`` -> ``ca-valencia``."""
    code, _, modifier = code.partition("@")
    code = code.lower().replace("_", "-")
    if modifier:
        modifier = modifier.lower()
        code = f"{code}-{MODIFIERS.get(modifier, modifier)}"
    return code


def clean_text(text: str) -> str:
    """Strip and collapse runs of whitespace."""
    return " ".join(text.split())


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace").lstrip("\ufeff")


def parse_caption_file(path: Path) -> tuple[str, dict[str, str]] | None:
    """Return (english, {lang: caption}) or None when there is no English caption."""
    try:
        text = read_text(path)
    except OSError:
        return None
    lines = text.splitlines()
    if not lines:
        return None
    english = clean_text(lines[0])
    # A first line that looks like a translation means the English line is missing.
    if not english or TRANSLATION_RE.match(lines[0].strip()):
        return None
    captions = {"en": english}
    for line in lines[1:]:
        m = TRANSLATION_RE.match(line.strip())
        if not m:
            continue
        lang, caption = normalise_lang(m.group(1)), clean_text(m.group(2))
        if caption and lang != "en" and lang not in captions:
            captions[lang] = caption
    ordered = {"en": english}
    ordered.update(sorted((k, v) for k, v in captions.items() if k != "en"))
    return english, ordered


def slugify(rel_path: str) -> str:
    stem = rel_path[: -len(".png")] if rel_path.lower().endswith(".png") else rel_path
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")


def resize(im: Image.Image) -> Image.Image:
    w, h = im.size
    scale = min(SHORT_SIDE / min(w, h), MAX_LONG_SIDE / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return im.resize(size, Image.Resampling.BICUBIC)


def encode(im: Image.Image) -> tuple[str, bytes]:
    """Return (extension, bytes): optimised JPEG, or PNG when that is smaller."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    jpeg = buf.getvalue()
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    png = buf.getvalue()
    return ("png", png) if len(png) < len(jpeg) else ("jpg", jpeg)


def package_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True, text=True, check=True
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def split_of(record_id: str) -> str:
    digest = int(hashlib.sha1(record_id.encode("utf-8")).hexdigest(), 16)
    return "test" if digest % TEST_MODULUS == 0 else "train"


def collect(stamps: Path) -> tuple[list[dict], dict[str, int]]:
    """Scan the stamps; return the kept entries (without images) and skip counts."""
    stats = {"png": 0, "no_caption": 0, "duplicate_caption": 0}
    seen_en: set[str] = set()
    seen_ids: dict[str, str] = {}
    entries = []
    pngs = sorted(p.relative_to(stamps).as_posix() for p in stamps.rglob("*") if p.suffix.lower() == ".png")
    for rel in pngs:
        category = rel.split("/", 1)[0]
        if "/" not in rel or category in SKIP_CATEGORIES:
            continue
        stats["png"] += 1
        parsed = parse_caption_file((stamps / rel).with_suffix(".txt"))
        if parsed is None:
            stats["no_caption"] += 1
            continue
        english, captions = parsed
        if english in seen_en:
            stats["duplicate_caption"] += 1
            continue
        seen_en.add(english)
        rid = slugify(rel)
        if rid in seen_ids:
            raise RuntimeError(f"id collision: {rel} and {seen_ids[rid]} -> {rid}")
        seen_ids[rid] = rel
        entries.append({"id": rid, "source": rel, "category": category, "en": english, "captions": captions})
    return entries, stats


def write_readme(out: Path, records: list[dict], splits: dict, stats: dict, version: str) -> None:
    languages = sorted({lang for r in records for lang in r["captions"]})
    n_captions = sum(len(r["captions"]) for r in records)
    per_lang = {lang: sum(lang in r["captions"] for r in records) for lang in languages}
    categories = sorted({r["category"] for r in records})
    per_cat = ", ".join(f"{c} {sum(r['category'] == c for r in records)}" for c in categories)
    lang_list = ", ".join(f"{lang} ({per_lang[lang]})" for lang in languages)
    text = f"""# Tux Paint stamps: a small multilingual image-caption set

Cut-out photos of everyday objects with human-written captions in many languages, built from the
Debian package `{PACKAGE}` (version `{version}`), used offline by the demos, evaluation code and
tests. Generated by `data/build_demo_data.py`; do not edit by hand.

## Licence

The images and captions come from Tux Paint's stamp collection, licensed under the **GNU General
Public License, version 2** (GPL-2); see `/usr/share/doc/{PACKAGE}/copyright` on a Debian system
or <https://tuxpaint.org/>. The files here are derived from that package (resized, flattened onto
white, re-encoded) and are distributed under the same licence.

## Contents

- {len(records)} images in `images/` (transparency composited onto white, bicubic resize to a
  shorter side of {SHORT_SIDE} px with the longer side capped at {MAX_LONG_SIDE} px, JPEG quality
  {JPEG_QUALITY} or PNG when smaller)
- {len(languages)} languages, {n_captions} captions in all (English included)
- `captions.jsonl`: one record per image:
  `{{"id", "image", "category", "en", "captions": {{lang: caption}}}}`; language codes are lower-case
  with `-` (`pt_BR` -> `pt-br`, `sr@latin` -> `sr-latn`, `ca@valencia` -> `ca-valencia`)
- `splits.json`: `train` ({len(splits['train'])}) / `test` ({len(splits['test'])}); an image is in
  `test` when `int(sha1(id).hexdigest(), 16) % {TEST_MODULUS} == 0`

Categories: {per_cat}.

Languages (images with a caption in that language): {lang_list}.

Selection: {stats['png']} PNG stamps outside `symbols/`; {stats['no_caption']} skipped for having no
English caption (mostly `*_mirror.png` variants and Tux cartoons without a `.txt`);
{stats['duplicate_caption']} skipped because their English caption repeats an earlier stamp's
(first by sorted path kept).

## Rebuilding

With `{PACKAGE}` installed (`apt-get install {PACKAGE}`):

    python -m jina_clip_v2.data.build_demo_data            # writes data/tuxpaint/
    python -m jina_clip_v2.data.build_demo_data --out DIR  # writes elsewhere

The output is deterministic: rerunning it gives byte-identical files.
"""
    (out / "README.md").write_text(text, encoding="utf-8", newline="\n")


def build(stamps: Path, out: Path) -> dict:
    entries, stats = collect(stamps)
    if not entries:
        raise SystemExit(f"no captioned stamps found under {stamps}")
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    records, written = [], set()
    for entry in entries:
        # The stamps are cut-out photos on transparency: stored on white, as they are shown. The package's one
        # decoder does it (alpha_background), so the committed pixels are what the model's loader would give.
        ext, data = encode(resize(load_image(stamps / entry["source"], alpha_background=(255, 255, 255))))
        name = f"{entry['id']}.{ext}"
        path = images_dir / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        written.add(name)
        records.append(
            {
                "id": entry["id"],
                "image": f"images/{name}",
                "category": entry["category"],
                "en": entry["en"],
                "captions": entry["captions"],
            }
        )
    records.sort(key=lambda r: r["id"])
    for stale in images_dir.iterdir():  # images left over from an earlier build
        if stale.is_file() and stale.name not in written:
            stale.unlink()

    with open(out / "captions.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    splits = {"train": [], "test": []}
    for r in records:
        splits[split_of(r["id"])].append(r["id"])
    with open(out / "splits.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(splits, f, indent=1)
        f.write("\n")
    write_readme(out, records, splits, stats, package_version())
    return {"records": records, "splits": splits, "stats": stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stamps", type=Path, default=DEFAULT_STAMPS, help="Tux Paint stamps folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/tuxpaint)")
    args = parser.parse_args(argv)
    if not args.stamps.is_dir():
        print(f"{args.stamps} not found: install the Debian package {PACKAGE}", file=sys.stderr)
        return 1
    result = build(args.stamps, args.out)
    records = result["records"]
    n_langs = len({lang for r in records for lang in r["captions"]})
    print(
        f"wrote {len(records)} images, {n_langs} languages, "
        f"{sum(len(r['captions']) for r in records)} captions to {args.out} "
        f"(train {len(result['splits']['train'])}, test {len(result['splits']['test'])})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
