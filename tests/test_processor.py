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
