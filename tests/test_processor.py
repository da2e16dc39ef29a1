"""The image processor reproduces the release's preprocessing exactly (the oracle, `release_transform`, restates
torchvision's semantics independently of transformers: see tests/_release_transform.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _release_transform import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, release_transform
from _tiny import ROOT, build_processor, build_tokenizer
from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    # Smooth gradients plus noise: resampling and a one-pixel crop shift both change values.
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    noisy = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


def _processor(size: int) -> JinaCLIPImageProcessor:
    return JinaCLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


# (width, height) for S = 56. The overhang after the resize is long - 56; odd overhangs are where the
# crop rounding matters: 1 and 5 round down, 3 and 7 round up (floor cropping would be off by one).
CASES_56 = {
    "square": (56, 56),
    "overhang1_no_resize": (57, 56),
    "overhang3_no_resize": (56, 59),
    "overhang5_no_resize": (61, 56),
    "overhang7_no_resize": (56, 63),
    "overhang1_down": (114, 112),
    "overhang3_down": (112, 118),
    "overhang5_down": (183, 168),
    "overhang7_down": (168, 189),
    "even_overhang_up": (28, 30),  # 28x30 -> 56x60: overhang 4
    "overhang3_up": (37, 39),  # 37x39 -> 56x59 (int(59.03))
    "overhang7_up": (9, 8),  # 9x8 -> 63x56
    "truncating_ratio_landscape": (100, 77),  # long = int(56 * 100 / 77) = 72
    "truncating_ratio_portrait": (77, 131),  # long = int(56 * 131 / 77) = 95: overhang 39 (3 mod 4)
    "tiny_upscale": (13, 17),  # 56 x int(56 * 17 / 13) = 73: overhang 17
    "wide": (300, 41),
    "tall": (45, 250),
}


@pytest.mark.parametrize("name", list(CASES_56))
def test_processor_equals_release_transform(name):
    width, height = CASES_56[name]
    image = _image(width, height, seed=width * 1000 + height)
    expected = release_transform(image, 56)
    ours = _processor(56)(image, return_tensors="pt")["pixel_values"][0]
    assert ours.dtype == torch.float32 and ours.shape == expected.shape == (3, 56, 56)
    # Exactly equal: division by 255 vs multiplication by 1/255 (in float64, then rounded) agree on all 256
    # uint8 values, and the normalisation runs in float32 on both sides.
    assert torch.equal(ours, expected), (ours - expected).abs().max().item()


def test_rescale_equals_totensor_division_for_every_uint8_value():
    # transformers rescales by multiplying with 1/255 (in float64, then rounded to float32); torchvision's
    # ToTensor divides by 255 in float32. Both give the correctly rounded float32 for every uint8 value,
    # so no override of `rescale` is needed for bit-exact parity.
    processor = _processor(56)
    values = np.arange(256, dtype=np.uint8).reshape(1, 1, 256)
    rescaled = processor.rescale(values, processor.rescale_factor)
    assert rescaled.dtype == np.float32
    assert np.array_equal(rescaled[0, 0], torch.arange(256, dtype=torch.uint8).float().div(255).numpy())


def test_odd_overhangs_cover_both_rounding_directions():
    # The release rounds half to even; a floor crop (transformers' CLIPImageProcessor) differs on overhangs
    # 3 and 7 (mod 4), so the parity test above can tell the two apart.
    assert [int(round(overhang / 2.0)) for overhang in (1, 3, 5, 7)] == [0, 2, 2, 4]
    for name in ("overhang1_no_resize", "overhang3_no_resize", "overhang5_down", "overhang7_down"):
        image = _image(*CASES_56[name], seed=1)
        ours = _processor(56)(image, return_tensors="pt")["pixel_values"][0]
        floored = release_transform(image, 56, crop_offset=lambda overhang: overhang // 2)
        overhang = max(CASES_56[name]) * 56 // min(CASES_56[name]) - 56
        assert overhang in (1, 3, 5, 7)
        assert torch.equal(ours, release_transform(image, 56))
        if overhang % 4 == 3:
            assert (ours - floored).abs().max().item() > 0.1
        else:
            assert torch.equal(ours, floored)


@pytest.mark.parametrize("size", [224, 512])
def test_processor_equals_release_transform_at_real_sizes(size):
    for width, height in ((size + 3, int(size * 1.4)), (int(size * 1.9) + 1, size + 7), (640, 427)):
        image = _image(width, height, seed=size + width)
        expected = release_transform(image, size)
        ours = _processor(size)(image, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(ours, expected), (width, height)


def test_default_processor_is_the_release_512_configuration():
    processor = JinaCLIPImageProcessor()
    assert processor.size == {"shortest_edge": 512} and processor.crop_size == {"height": 512, "width": 512}
    assert tuple(processor.image_mean) == OPENAI_CLIP_MEAN and tuple(processor.image_std) == OPENAI_CLIP_STD
    assert int(processor.resample) == int(Image.BICUBIC)
    assert processor.do_resize and processor.do_center_crop and processor.do_rescale and processor.do_normalize


def test_processor_batches_real_images_and_tokenises_text():
    paths = sorted((ROOT / "data" / "tuxpaint" / "images").iterdir())[:40:8]
    images = [Image.open(path) for path in paths]
    processor = build_processor(build_tokenizer())
    out = processor(text=["a frog", "un oiseau rouge sur une branche"], images=images, padding=True, return_tensors="pt")
    assert out["pixel_values"].shape == (len(images), 3, 56, 56)
    for index, image in enumerate(images):
        assert torch.equal(out["pixel_values"][index], release_transform(image.convert("RGB"), 56))
    assert out["input_ids"].shape[0] == 2 and out["input_ids"][0, 0].item() == 0
    assert out["attention_mask"][0].sum() < out["attention_mask"][1].sum()
    assert (out["input_ids"][0][out["attention_mask"][0] == 0] == 1).all()  # right padding with <pad> = 1


def test_processor_keeps_hidden_colours_unless_asked_to_composite():
    # The release converts with PIL's plain convert("RGB"): a fully transparent red image is red. With
    # alpha_background (opt-in) it is composited, like transformers' convert_to_rgb does on white.
    transparent = Image.new("RGBA", (60, 60), (255, 0, 0, 0))
    red, white = Image.new("RGB", (60, 60), (255, 0, 0)), Image.new("RGB", (60, 60), (255, 255, 255))
    processor = _processor(56)
    pixels = lambda image, **kw: processor(image, return_tensors="pt", **kw)["pixel_values"]  # noqa: E731
    assert torch.equal(pixels(transparent), pixels(red))
    assert torch.equal(pixels(transparent, alpha_background=[255, 255, 255]), pixels(white))


# The release's preprocessor_config.json (reference section 3.1, at the tiny size), as transformers.js and
# fastembed read it.
RELEASE_LAYOUT = {
    "auto_map": {
        "AutoImageProcessor": "jinaai/jina-clip-implementation--processing_clip.JinaCLIPImageProcessor",
        "AutoProcessor": "jinaai/jina-clip-implementation--processing_clip.JinaCLIPProcessor",
    },
    "fill_color": 0,
    "image_processor_type": "JinaCLIPImageProcessor",
    "interpolation": "bicubic",
    "mean": list(OPENAI_CLIP_MEAN),
    "processor_class": "JinaCLIPProcessor",
    "resize_mode": "shortest",
    "size": 56,
    "std": list(OPENAI_CLIP_STD),
}


def test_saved_layout_is_the_releases_and_loads_back_with_the_same_pixels(tmp_path):
    """preprocessor_config.json holds the release's keys (and our decoding options, which the clients ignore);
    the processor reads it back, reads the release's own file, and reads the transformers-style layout that
    folders exported before were written in: the same pixels every time."""
    import json

    from transformers import AutoImageProcessor

    images = [_image(w, h, seed) for seed, (w, h) in enumerate(CASES_56.values())]
    processor = JinaCLIPImageProcessor(size=56, exif_transpose=True)
    expected = processor(images, return_tensors="np")["pixel_values"]
    processor.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "preprocessor_config.json").read_text())
    assert saved == {
        **RELEASE_LAYOUT, "auto_map": {"AutoImageProcessor": "processing_jina_clip.JinaCLIPImageProcessor"},  # our code
        "exif_transpose": True, "fetch_timeout": 20.0, "fetch_max_bytes": 64 * 1024 * 1024,
        "max_image_pixels": 89_478_485, "max_resize_pixels": 2**23,  # the input bounds (issue 20)
    }  # fmt: skip
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "preprocessor_config.json").write_text(json.dumps(RELEASE_LAYOUT))
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "JinaCLIPImageProcessor", "size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56},
        "resample": 3, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "do_resize": True,
        "do_center_crop": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
    }))  # fmt: skip
    loaded = [
        AutoImageProcessor.from_pretrained(tmp_path / "saved", trust_remote_code=True),  # the copied remote code
        JinaCLIPImageProcessor.from_pretrained(tmp_path / "release"),
        JinaCLIPImageProcessor.from_pretrained(tmp_path / "before"),
    ]
    assert type(loaded[0]).__name__ == "JinaCLIPImageProcessor" and loaded[0].exif_transpose is True
    for reloaded in loaded:
        assert np.array_equal(reloaded(images, return_tensors="np")["pixel_values"], expected)
        assert reloaded.to_dict()["size"] == 56 and reloaded.to_dict()["interpolation"] == "bicubic"
    # Settings the release's keys cannot say are kept in transformers' keys (and refused by exports).
    lanczos = JinaCLIPImageProcessor(size=56, resample=1).to_dict()
    assert lanczos["resample"] == 1 and "interpolation" not in lanczos
    with pytest.raises(ValueError, match="resize_mode 'longest' is not supported"):
        JinaCLIPImageProcessor(size=56, resize_mode="longest")
    with pytest.raises(ValueError, match="interpolation must be one of"):
        JinaCLIPImageProcessor(size=56, interpolation="lanczos")


def test_export_refuses_preprocessing_the_clients_cannot_read():
    from jina_clip_v2.hub.export import ExportError, canonical_processor
    from _tiny import tiny_config

    processor = build_processor(build_tokenizer())
    processor.image_processor.resample = 1  # lanczos: no key of the release's layout says it
    with pytest.raises(ExportError, match=r"\['resample'\] have no key in the release's preprocessor_config.json"):
        canonical_processor(processor, tiny_config())
