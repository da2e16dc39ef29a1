"""One image decoder behind every entry point: the same file gives the same pixels through `encode_image`,
the image processor, a Sentence-Transformers path string, the training data pipeline and the evaluation
loader, and those pixels are the release's: plain `PIL.Image.open(path).convert("RGB")`, then the release
transform (tests/_release_transform.py). Files cover every mode PIL converts differently."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from _inputs import write_image_files as _write_files
from _release_transform import release_pixels, release_transform

SIZE = 56


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return _write_files(tmp_path_factory.mktemp("images"))


def test_the_table_covers_every_mode(files):
    assert len(files) >= 15
    modes = set()
    for path in files.values():
        with Image.open(path) as image:
            modes.add(image.mode)
    assert {"RGB", "RGBA", "P", "LA", "L", "1", "I;16", "I", "F", "CMYK"} <= modes, modes
    with Image.open(files["animated_gif"]) as gif:
        assert gif.n_frames == 3
    with Image.open(files["exif_rotated"]) as jpeg:
        assert jpeg.getexif()[0x0112] == 6


@pytest.fixture(scope="module")
def reference(files) -> dict[str, torch.Tensor]:
    return {name: release_pixels(path, SIZE) for name, path in files.items()}


def test_processor_on_paths_and_opened_files_equals_the_release(files, reference, processor):
    for name, path in files.items():
        by_path = processor(images=[str(path)], return_tensors="pt")["pixel_values"][0]
        with Image.open(path) as image:
            by_image = processor(images=image, return_tensors="pt")["pixel_values"][0]
        by_bytes = processor(images=path.read_bytes(), return_tensors="pt")["pixel_values"][0]
        for got in (by_path, by_image, by_bytes):
            assert torch.equal(got, reference[name]), name


def test_encode_image_feeds_the_release_pixels(files, reference, model, monkeypatch):
    seen = []
    forward = model.get_image_features

    def spy(pixel_values, **kwargs):
        seen.append(pixel_values.clone())
        return forward(pixel_values, **kwargs)

    monkeypatch.setattr(model, "get_image_features", spy)
    names = list(files)
    model.encode_image([str(files[name]) for name in names], batch_size=len(names))
    (pixels,) = seen
    for index, name in enumerate(names):
        assert torch.equal(pixels[index], reference[name]), name


def test_training_pipeline_feeds_the_release_pixels(files, reference, processor, tmp_path):
    pytest.importorskip("datasets")
    from jina_clip_v2.training.data import SourceConfig, TaskDataConfig, build_task_stream

    names = list(files)
    rows = [{"image": str(files[name]), "caption": f"caption {i}"} for i, name in enumerate(names)]
    (tmp_path / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = TaskDataConfig(
        kind="image_text_short",
        sources=[SourceConfig(path=str(tmp_path / "images.jsonl"), format="json")],
        batch_size=len(names),
        image_size=SIZE,
    )
    batch = next(iter(build_task_stream(cfg, processor, train=False, keep_raw=True)))
    order = [int(raw["caption"].split()[-1]) for raw in batch["raw"]]
    for row, index in enumerate(order):
        assert torch.equal(batch["pixel_values"][row], reference[names[index]]), names[index]


def test_evaluation_loader_feeds_the_release_pixels(files, reference, processor):
    from jina_clip_v2.evaluation.embedder import ImageList

    names = list(files)
    stored = ImageList([{"bytes": files[name].read_bytes(), "path": None} for name in names])
    by_path = ImageList([str(files[name]) for name in names])
    for index, name in enumerate(names):
        for images in (stored, by_path):
            pixels = processor(images=images.load(index), return_tensors="pt")["pixel_values"][0]
            assert torch.equal(pixels, reference[name]), name


def test_sentence_transformers_path_strings_feed_the_release_pixels(files, reference, tmp_path):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from _notebook_model import export_tiny_model

    folder = export_tiny_model(tmp_path / "tiny")
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    names = list(files)
    features = st[0].preprocess([str(files[name]) for name in names])
    for index, name in enumerate(names):
        assert torch.equal(features["pixel_values"][index], reference[name]), name


def test_opt_in_options_change_only_what_they_name(files, processor):
    image_processor = processor.image_processor
    exif = files["exif_rotated"]
    with Image.open(exif) as image:
        upright = image.transpose(Image.Transpose.ROTATE_270).convert("RGB")  # orientation 6, applied by hand
        assert image.size == (90, 60) and upright.size == (60, 90)
    rotated = image_processor(images=str(exif), exif_transpose=True, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(rotated, release_transform(upright, SIZE))
    hidden = files["rgba_hidden_colours"]
    on_white = image_processor(images=str(hidden), alpha_background=[255, 255, 255], return_tensors="pt")["pixel_values"][0]
    with Image.open(hidden) as image:
        composite = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    assert torch.equal(on_white, release_transform(composite.convert("RGB"), SIZE))
    # Options saved with the processor are read back with it.
    image_processor.exif_transpose = True
    try:
        buffer = io.BytesIO()
        saved = type(image_processor).from_dict(image_processor.to_dict())
        assert saved.exif_transpose is True and saved.alpha_background is None
        assert torch.equal(saved(images=str(exif), return_tensors="pt")["pixel_values"][0], rotated)
    finally:
        image_processor.exif_transpose = False
    # An image other entry points would see the same way: the first frame of an animation, never another one.
    gif = image_processor(images=str(files["animated_gif"]), return_tensors="pt")["pixel_values"][0]
    assert torch.equal(gif, release_transform(Image.new("RGB", (40, 40), (250, 0, 0)), SIZE))
