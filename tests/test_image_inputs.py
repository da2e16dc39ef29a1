"""One image decoder behind every entry point: the same file gives the same pixels through `encode_image`,
the image processor, a Sentence-Transformers path string, the training data pipeline and the evaluation
loader, and those pixels are the release's: plain `PIL.Image.open(path).convert("RGB")`, then the release
transform (tests/_release_transform.py). Files cover every mode PIL converts differently."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _release_transform import release_pixels, release_transform
from _tiny import build_processor, build_tokenizer, tiny_model

SIZE = 56


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x * 3 + y) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)


def _exif_rotated_jpeg(path: Path) -> None:
    image = Image.fromarray(_photo(90, 60, 7))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(path, format="JPEG", quality=92, exif=exif)


def _write_files(folder: Path) -> dict[str, Path]:
    """At least 15 files, one per way PIL's convert("RGB") can differ from a naive conversion."""
    files: dict[str, Path] = {}

    def save(name: str, image: Image.Image, fmt: str, **kwargs) -> None:
        path = folder / f"{name}.{fmt.lower()}"
        image.save(path, format=fmt, **kwargs)
        files[name] = path

    rgb = Image.fromarray(_photo(80, 64, 1))
    save("rgb_png", rgb, "PNG")
    save("rgb_jpeg", rgb, "JPEG", quality=90)
    hidden = np.dstack([_photo(70, 50, 2), np.where(np.arange(70)[None, :] % 3 == 0, 255, 0).repeat(50, 0)]).astype(np.uint8)
    save("rgba_hidden_colours", Image.fromarray(hidden), "PNG")  # transparent pixels keep colours
    half = hidden.copy()
    half[..., 3] = 128
    save("rgba_half_transparent", Image.fromarray(half), "PNG")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette", palette, "PNG")
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    save("palette_transparency", transparent, "PNG", transparency=3)
    save("gif_palette", palette, "GIF")
    save("la", Image.fromarray(np.dstack([_photo(60, 40, 3)[..., 0], _photo(60, 40, 4)[..., 1]])), "PNG")
    save("greyscale", rgb.convert("L"), "PNG")
    save("bilevel", rgb.convert("1"), "PNG")
    sixteen = (_photo(64, 48, 5)[..., 0].astype(np.uint16) * 257).astype(np.uint16)  # spans 0..65535
    save("i16_png", Image.fromarray(sixteen), "PNG")
    save("i32_tiff", Image.fromarray(sixteen.astype(np.int32)), "TIFF")
    save("float_tiff", Image.fromarray(_photo(50, 50, 6)[..., 1].astype(np.float32) * 1.5), "TIFF")
    save("cmyk_jpeg", rgb.convert("CMYK"), "JPEG", quality=90)
    _exif_rotated_jpeg(folder / "exif_rotated.jpeg")
    files["exif_rotated"] = folder / "exif_rotated.jpeg"
    save("one_pixel", Image.new("RGB", (1, 1), (200, 10, 90)), "PNG")
    save("very_wide", Image.fromarray(_photo(600, 12, 8)), "PNG")
    save("very_tall", Image.fromarray(_photo(9, 400, 9)), "PNG")
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    path = folder / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    files["animated_gif"] = path
    save("webp_alpha", Image.fromarray(hidden), "WEBP", lossless=True)
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return _write_files(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer(), image_size=SIZE)


@pytest.fixture(scope="module")
def model(processor):
    model = tiny_model(seed=0)
    model.processor = processor
    return model


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
