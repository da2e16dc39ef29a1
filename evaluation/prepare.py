"""Build local dataset folders for benchmarks that have no Hub copy in a layout we can read.

XTD10 (the paper's "multilingual MS COCO", as in CLIP Benchmark's ``multilingual_mscoco_captions``):
1,000 COCO images with one caption per image in each language, distributed as text files in
https://github.com/adobe-research/Cross-lingual-Test-Dataset-XTD10 (``XTD10/test_image_names.txt``,
``XTD10/test_1kcaptions_<lang>.txt``, German and French under ``MIC/``, Japanese under ``STAIR/``)
plus an archive of the images. :func:`prepare_xtd10` turns a checkout of those files and the
extracted images into a folder that ``datasets.load_dataset`` reads with one split per language::

    <out>/README.md                             configs: one split per language
    <out>/data/<lang>-00000-of-00001.parquet    columns: image_id, image (path relative to <out>), caption
    <out>/images/<file name>                    the images (hard links when possible, else copies)

Images with a missing file are dropped (with a count), as CLIP Benchmark does.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

XTD10_INDEX = "test_image_names.txt"
XTD10_CAPTIONS = "test_1kcaptions_{}.txt"


def _find(root: Path, name: str) -> Path | None:
    hits = sorted(root.rglob(name))
    return hits[0] if hits else None


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _place(source: Path, target: Path) -> None:
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def prepare_xtd10(
    captions_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    out: str | os.PathLike,
    languages: Sequence[str] | None = None,
) -> dict[str, int]:
    """Write the XTD10 folder described in the module docstring; returns ``{language: n_images}``."""
    from datasets import Dataset

    captions_dir, images_dir, out = Path(captions_dir), Path(images_dir), Path(out)
    index_file = _find(captions_dir, XTD10_INDEX)
    if index_file is None:
        raise FileNotFoundError(f"{XTD10_INDEX} not found under {captions_dir}")
    names = [line.strip() for line in _lines(index_file)]
    found = {p.name[len("test_1kcaptions_") : -len(".txt")]: p for p in captions_dir.rglob("test_1kcaptions_*.txt")}
    languages = list(languages) if languages else sorted(found)
    missing_langs = [lang for lang in languages if lang not in found]
    if missing_langs:
        raise FileNotFoundError(f"no caption file for {missing_langs} under {captions_dir} (found {sorted(found)})")
    present = [i for i, name in enumerate(names) if (images_dir / name).is_file()]
    if len(present) < len(names):
        logger.warning("XTD10: %d of %d images are missing and dropped", len(names) - len(present), len(names))
    for i in present:
        _place(images_dir / names[i], out / "images" / names[i])
    counts = {}
    (out / "data").mkdir(parents=True, exist_ok=True)
    for lang in languages:
        captions = _lines(found[lang])
        if len(captions) != len(names):
            raise ValueError(f"{found[lang]} has {len(captions)} lines for {len(names)} images")
        rows = [i for i in present if captions[i].strip()]
        Dataset.from_dict(
            {
                "image_id": [Path(names[i]).stem for i in rows],
                "image": [f"images/{names[i]}" for i in rows],
                "caption": [captions[i].strip() for i in rows],
            }
        ).to_parquet(str(out / "data" / f"{lang}-00000-of-00001.parquet"))
        counts[lang] = len(rows)
    configs = "\n".join(f"  - split: {lang}\n    path: data/{lang}-00000-of-00001.parquet" for lang in languages)
    (out / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        + configs
        + "\n---\n\nXTD10 (multilingual MS COCO 1k test), prepared by `jina-clip eval prepare-xtd10`.\n",
        encoding="utf-8",
    )
    return counts


__all__ = ["prepare_xtd10"]
