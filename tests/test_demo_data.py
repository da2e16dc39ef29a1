"""The committed Tux Paint demo set (data/tuxpaint/) is consistent and rebuilds byte-identically."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "tuxpaint"
BUILDER = ROOT / "data" / "build_demo_data.py"
STAMPS = Path("/usr/share/tuxpaint/stamps")
LANG_RE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]+)*$")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    with open(DATA / "captions.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def splits() -> dict:
    return json.loads((DATA / "splits.json").read_text(encoding="utf-8"))


def test_records_are_well_formed(records):
    assert len(records) >= 300
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "ids must be unique"
    assert ids == sorted(ids)
    english = [r["en"] for r in records]
    assert len(english) == len(set(english)), "English captions are deduplicated"
    for r in records:
        assert set(r) == {"id", "image", "category", "en", "captions"}
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", r["id"])
        assert r["image"] in (f"images/{r['id']}.jpg", f"images/{r['id']}.png")
        assert r["category"] and r["category"] != "symbols"
        assert r["en"] and r["en"] == r["en"].strip()
        assert r["captions"]["en"] == r["en"]
        for lang, caption in r["captions"].items():
            assert LANG_RE.match(lang), lang
            assert caption and caption == caption.strip() and "\ufffd" not in caption


def test_languages(records):
    languages = {lang for r in records for lang in r["captions"]}
    assert len(languages) >= 40
    assert {"en", "de", "fr", "ja", "ru", "pt-br", "zh-cn"} <= languages


def test_images_open_as_rgb(records):
    on_disk = {p.name for p in (DATA / "images").iterdir()}
    assert on_disk == {Path(r["image"]).name for r in records}, "no missing or stray images"
    for r in records:
        with Image.open(DATA / r["image"]) as im:
            im.load()
            assert im.mode == "RGB", (r["id"], im.mode)
            assert 1 <= min(im.size) <= 128 and max(im.size) <= 192, (r["id"], im.size)


def test_splits_partition_ids(records, splits):
    assert set(splits) == {"train", "test"}
    train, test = set(splits["train"]), set(splits["test"])
    assert test, "test split must be non-empty"
    assert train, "train split must be non-empty"
    assert not train & test
    assert train | test == {r["id"] for r in records}
    assert len(splits["train"]) + len(splits["test"]) == len(records)


def test_size_budget():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024, total


def test_readme_mentions_licence():
    text = (DATA / "README.md").read_text(encoding="utf-8")
    assert "GPL-2" in text and "tuxpaint-stamps-default" in text
    assert "python -m jina_clip_v2.data.build_demo_data" in text


def _installed_version() -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "tuxpaint-stamps-default"], capture_output=True, text=True
    )
    return out.stdout.strip() or None


@pytest.mark.slow
def test_rebuild_is_byte_identical(tmp_path):
    if not STAMPS.is_dir():
        pytest.skip(f"{STAMPS} absent (Debian package tuxpaint-stamps-default not installed)")
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    built_from = re.search(r"version `([^`]+)`", readme)
    installed = _installed_version()
    if built_from and installed and built_from.group(1) != installed:
        pytest.skip(f"committed data built from {built_from.group(1)}, installed {installed}")
    out = tmp_path / "tuxpaint"
    subprocess.run([sys.executable, str(BUILDER), "--out", str(out)], check=True, capture_output=True)
    for name in ("captions.jsonl", "splits.json", "README.md"):
        assert (out / name).read_bytes() == (DATA / name).read_bytes(), name
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in (DATA / "images").iterdir())
