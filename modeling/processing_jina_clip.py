"""Images of jina-clip-v2, read exactly as the release reads them: the one image decoder of the package and the
image processor around it. (The tokenizer is loaded by `tokenization_jina_clip.py`.)

Decoding (`load_image`) is the release's `Image.open(...)` then PIL's own `.convert("RGB")`, for every mode:
transparent pixels keep the colour stored under them (no compositing), palette, 16-bit, float, CMYK and
1-bit images become RGB as PIL converts them, animations give their first frame, and EXIF orientation is
not applied. Two departures are available as explicit options, off by default because they change the
embedding of the same file: `alpha_background` (composite transparency on a colour, as transformers'
`convert_to_rgb` does on white) and `exif_transpose` (apply the EXIF orientation, as transformers'
`load_image` does).

Preprocessing (`JinaCLIPImageProcessor`): the release resizes the shortest side to the image size (bicubic),
centre-crops with torchvision's `CenterCrop` (offsets `round((h - crop) / 2)`), divides by 255 and normalizes
with the OpenAI CLIP mean/std. transformers' `CLIPImageProcessorPil` does the same except for the crop offset
(it floors), which moves the crop by one pixel whenever the overhang is 3 mod 4; this subclass rounds as the
release, and decodes every input with `load_image` using the options saved in its preprocessor_config.json,
so `encode_image`, the processor, Sentence-Transformers, training and evaluation all see the same pixels.

Remote images are fetched with a total deadline and a byte cap (`fetch_timeout`, `fetch_max_bytes`), from
http(s) only, following at most a few redirects and only to http(s) (`fetching_jina_clip.fetch_url`).

Bounded cost: every input's cost is decided before the work. An encoded image (file, URL, data URI, bytes) whose
header declares more than `max_image_pixels` pixels is refused before it is decoded (a 34-byte WebP can declare
12000 x 12000). The resize is bounded by `max_resize_pixels`: a processor whose target (size or crop) alone holds
more pixels is refused, and an image so elongated that its shortest-edge resize would exceed the budget (a 1 x
10000 PNG at 512 px would be 512 x 5,120,000) is cut to the band the centre crop keeps and only that band is
resampled (PIL's `resize(box=...)`, the filter positions of the full resize). Its pixels equal the full resize's,
or differ by a few 8-bit levels in rare pixels where PIL orders its two passes differently for the band. Every
image within the budget (at 512 px: aspect ratios up to 32:1) takes the release's path unchanged, bit for bit.

This file is Hub remote code: it imports PIL, numpy and transformers (no torch), nothing of this repository except
relatively (`fetching_jina_clip.py`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
# CLIPImageProcessorPil first ships in transformers 5.4 (as JinaEmbeddingsV3, see configuration_jina_clip.py;
# this file is also loaded alone, from processor folders, so it says so itself).
try:
    from transformers import CLIPImageProcessorPil
    from transformers.processing_utils import ImagesKwargs
except ImportError as err:
    import transformers

    raise ImportError(
        "jina-clip-v2's image processor needs transformers>=5.4 (the first release with CLIPImageProcessorPil), "
        f"but transformers {transformers.__version__} is installed: pip install -U 'transformers>=5.4'"
    ) from err

from .fetching_jina_clip import DEFAULT_FETCH_MAX_BYTES, DEFAULT_FETCH_TIMEOUT_S, ImageLoadError, fetch_url

# An encoded image may declare at most this many pixels (PIL's own warning threshold, `Image.MAX_IMAGE_PIXELS`:
# 0.25 GiB as RGB); PIL itself refuses twice as many whatever this is set to.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# The resize may produce at most this many pixels (32 x 512 x 512: aspect ratios up to 32:1 at 512 px keep the
# release's path); a target larger than this is refused, a more elongated image cut before it is resampled.
DEFAULT_MAX_RESIZE_PIXELS = 2**23
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


# ----------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------


def load_image(
    image: Any,
    *,
    exif_transpose: bool = False,
    alpha_background: Sequence[int] | None = None,
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT_S,
    fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
):
    """Any supported image input as an RGB PIL image, as the release decodes it (see the module docstring).

    Accepts PIL images, local paths (str or os.PathLike), http(s) URLs (any case of the scheme), base64
    `data:image/...` URIs, encoded bytes or an open binary file (`io.BytesIO`), and numpy arrays (HxW, HxWxC or CxHxW; uint8, or float in [0, 1]).

    Args:
        exif_transpose: apply the EXIF orientation tag (the release does not).
        alpha_background: an (R, G, B) colour to composite transparent pixels on (the release keeps the
            colour stored under transparent pixels).
        fetch_timeout / fetch_max_bytes: total deadline (seconds) and size cap (bytes) of a URL fetch.
        max_image_pixels: an encoded image that declares more pixels is refused before it is decoded (None: no
            limit of ours; PIL still refuses more than twice its `Image.MAX_IMAGE_PIXELS`).
    """
    return to_rgb(
        open_image(image, fetch_timeout=fetch_timeout, fetch_max_bytes=fetch_max_bytes, max_image_pixels=max_image_pixels),
        exif_transpose=exif_transpose,
        alpha_background=alpha_background,
    )


def open_image(
    image: Any,
    *,
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT_S,
    fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
):
    """The input as a PIL image in its stored mode (first frame of an animation), nothing converted yet.
    Encoded inputs declaring more than `max_image_pixels` pixels are refused before decoding."""
    from PIL import Image

    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (bytes, bytearray, memoryview)):
        img = _decode(bytes(image), "raw bytes", max_image_pixels)
    elif callable(getattr(image, "read", None)):  # an open file or io.BytesIO: its (remaining) bytes
        img = _decode(image.read(), repr(getattr(image, "name", type(image).__name__)), max_image_pixels)
    elif isinstance(image, np.ndarray) or _is_tensor(image):
        img = _from_array(np.asarray(image.detach().cpu().numpy() if _is_tensor(image) else image))
    elif isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        if not isinstance(source, str):
            source = os.fsdecode(source)
        if _URL.match(source):
            scheme = source.split(":", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise ImageLoadError(f"unsupported URL scheme {scheme!r} in {source!r}: only http(s) image URLs are fetched")
            img = _decode(fetch_url(source, timeout=fetch_timeout, max_bytes=fetch_max_bytes), source, max_image_pixels)
        elif source[:5].lower() == "data:":
            img = _decode(_data_uri_bytes(source), "data URI", max_image_pixels)
        else:
            if os.path.isdir(source):
                raise IsADirectoryError(f"image path is a folder, not a file: {source!r}")
            if not os.path.isfile(source):
                raise FileNotFoundError(f"image file not found: {source!r}")
            with open(source, "rb") as handle:
                img = _decode(handle.read(), repr(source), max_image_pixels)
    else:
        raise TypeError(
            f"unsupported image input of type {type(image).__name__}; expected a PIL image, a path, an http(s) "
            "URL, a data:image URI, encoded bytes, an open binary file or a numpy array"
        )
    if img.width == 0 or img.height == 0:
        raise ImageLoadError(f"image has no pixels ({img.width}x{img.height})")
    return img


def to_rgb(img, *, exif_transpose: bool = False, alpha_background: Sequence[int] | None = None):
    """PIL's `.convert("RGB")` (the release's conversion), with the two opt-in departures."""
    from PIL import Image, ImageOps

    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    # Transparency: an alpha channel, or a transparent palette entry / colour key ("transparency" in info).
    if alpha_background is not None and (img.mode in _ALPHA_MODES or "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*(int(c) for c in alpha_background), 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _decode(data: bytes, origin: str, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageLoadError(f"cannot decode image from {origin}: empty (no bytes)")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        if max_image_pixels is not None and img.width * img.height > max_image_pixels:
            raise ImageLoadError(
                f"image from {origin} is {img.width}x{img.height} pixels ({len(data)} bytes), more than "
                f"max_image_pixels={max_image_pixels}: refused before decoding (raise max_image_pixels to decode it)"
            )
        img.load()  # decode now (first frame), so a truncated file fails here and not in the processor
    except UnidentifiedImageError as err:
        head = data[:8]
        raise ImageLoadError(
            f"cannot decode image from {origin}: not a format PIL recognizes ({len(data)} bytes starting {head!r})"
        ) from err
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"cannot decode image from {origin}: {err}") from err
    return img


def _data_uri_bytes(uri: str) -> bytes:
    header, comma, payload = uri.partition(",")
    media = header[5:].split(";")[0].strip().lower()
    if not comma or not media.startswith("image/"):
        raise ImageLoadError(f"data URI is not an image (media type {media or 'missing'!r}); expected data:image/<type>;base64,...")
    if ";base64" not in header.lower():
        raise ImageLoadError("data: image URIs must be base64-encoded (data:image/<type>;base64,...)")
    try:
        # Whitespace (line-wrapped base64) is allowed; any other non-alphabet character is an error.
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageLoadError(f"invalid base64 in data URI: {err}") from err


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.partition(".")[0] == "torch" and hasattr(value, "detach")


def _from_array(array: np.ndarray):
    """HxW, HxWxC or CxHxW arrays: uint8 as is, floats in [0, 1] scaled to 0..255 (rounded)."""
    from PIL import Image

    shape = array.shape
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels-first -> channels-last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"numpy images must be HxW, HxWx3 or HxWx4 (or channels first); got shape {shape}")
    if array.size == 0:
        raise ImageLoadError(f"image has no pixels (array of shape {shape})")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ImageLoadError(f"numpy images must be uint8, or float in [0, 1]; got dtype {array.dtype}")
        if not np.isfinite(array).all():
            raise ImageLoadError("numpy image holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            # A float image in 0..255 would otherwise clip to white: refuse instead of guessing.
            raise ImageLoadError(
                f"float numpy images must be in [0, 1]; got values in [{low:g}, {high:g}] "
                "(pass uint8 for 0..255 data, or divide by 255)"
            )
        array = (array * 255.0).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


# ----------------------------------------------------------------------------------------------------
# The image processor
# ----------------------------------------------------------------------------------------------------


class JinaCLIPImageProcessorKwargs(ImagesKwargs, total=False):
    """The decoding options, saved in preprocessor_config.json and accepted per call."""

    exif_transpose: bool
    alpha_background: list[int] | None
    fetch_timeout: float
    fetch_max_bytes: int
    max_image_pixels: int | None
    max_resize_pixels: int


_DECODE_OPTIONS = ("exif_transpose", "alpha_background", "fetch_timeout", "fetch_max_bytes", "max_image_pixels")
_OPEN_OPTIONS = ("fetch_timeout", "fetch_max_bytes", "max_image_pixels")

# The saved layout is the release's preprocessor_config.json (reference section 3.1), the only one transformers.js
# and fastembed read (their own JinaCLIPImageProcessor): integer `size` + `resize_mode` "shortest", `interpolation`,
# `fill_color`, `mean` / `std`, `processor_class` "JinaCLIPProcessor" (transformers.js's AutoProcessor pairs it
# with the tokenizer). `to_dict` writes those keys (also nested in processor_config.json) plus our decoding options,
# which the clients ignore; transformers' keys are read too, and written only for what the release's cannot say.
RELEASE_PROCESSOR_CLASS = "JinaCLIPProcessor"
RELEASE_KEYS = ("fill_color", "interpolation", "mean", "resize_mode", "size", "std")
# The release (torchvision) names its two interpolations; PIL's resampling codes of the same filters.
_INTERPOLATIONS = {"bicubic": 3, "bilinear": 2}
# Steps the release always runs (and the clients with it): saved only when switched off or changed.
_RELEASE_STEPS = {
    "do_resize": True,
    "do_center_crop": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
}


def keys_outside_release_layout(settings: dict[str, Any]) -> list[str]:
    """The keys of a saved image-processor dict (`to_dict`) that are neither the release's nor this processor's
    own options: transformers' keys, written for settings the release's keys cannot express, which
    transformers.js and fastembed do not read."""
    known = {*RELEASE_KEYS, *_DECODE_OPTIONS, "max_resize_pixels", "image_processor_type", "auto_map", "processor_class"}
    return sorted(set(settings) - known)


def _from_release_keys(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings in the release's keys (see RELEASE_KEYS) as transformers' image-processor keys; other keys as
    given (transformers' own win where a file holds both)."""
    settings = dict(settings)
    resize_mode = settings.pop("resize_mode", "shortest")
    if resize_mode != "shortest":
        raise ValueError(
            f"resize_mode {resize_mode!r} is not supported: jina-clip resizes the shorter side (resize_mode 'shortest')"
        )
    interpolation = settings.pop("interpolation", None)
    if interpolation is not None:
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
        settings.setdefault("resample", _INTERPOLATIONS[interpolation])
    size = settings.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        settings["size"] = {"shortest_edge": size}
        settings.setdefault("crop_size", {"height": size, "width": size})
    for release_key, key in (("mean", "image_mean"), ("std", "image_std")):
        value = settings.pop(release_key, None)
        if value is not None:  # null is the release class's default: the OpenAI CLIP values (also ours)
            settings.setdefault(key, list(value))
    return settings


class JinaCLIPImageProcessor(CLIPImageProcessorPil):
    """CLIP preprocessing with the release's crop rounding, decoding every input with `load_image`.

    Inputs: one image or a list of images, each anything `load_image` accepts (PIL images, paths, URLs, data
    URIs, bytes, numpy arrays). Options (saved with the processor, overridable per call): `exif_transpose`,
    `alpha_background`, `fetch_timeout`, `fetch_max_bytes`, `max_image_pixels` (see `load_image`) and
    `max_resize_pixels` (the resize budget: see the module docstring)."""

    valid_kwargs = JinaCLIPImageProcessorKwargs
    size = {"shortest_edge": 512}
    crop_size = {"height": 512, "width": 512}
    exif_transpose = False
    alpha_background = None
    fetch_timeout = DEFAULT_FETCH_TIMEOUT_S
    fetch_max_bytes = DEFAULT_FETCH_MAX_BYTES
    max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
    max_resize_pixels = DEFAULT_MAX_RESIZE_PIXELS

    def load_image(self, image: Any, **options):
        """One input as the RGB PIL image this processor resizes (its saved options, overridable here)."""
        settings = {name: getattr(self, name) for name in _DECODE_OPTIONS}
        settings.update(options)
        return load_image(image, **settings)

    def fetch_images(self, image_url_or_urls):
        """Encoded inputs (paths, URLs, data URIs, bytes) as opened PIL images, through `open_image` with this
        processor's fetch limits; other inputs unchanged. (transformers' processors call this first.)"""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike, bytes, bytearray, memoryview)):
            return open_image(image_url_or_urls, **{name: getattr(self, name) for name in _OPEN_OPTIONS})
        return image_url_or_urls

    def preprocess(self, images, *args, **kwargs):
        options = {name: kwargs.pop(name) for name in _DECODE_OPTIONS if name in kwargs}
        budget = kwargs.pop("max_resize_pixels", self.max_resize_pixels)
        plan = self._resize_plan(kwargs, budget)  # a target too large for the budget fails before any decoding
        if isinstance(images, np.ndarray) and images.ndim == 4 or isinstance(images, (list, tuple)):
            items = list(images)  # a batch (a 4-D array is a stack of images)
        else:
            items = [images]
        if kwargs.get("do_convert_rgb", self.do_convert_rgb) is False:
            settings = {name: options.get(name, getattr(self, name)) for name in _OPEN_OPTIONS}
            decoded = [open_image(item, **settings) for item in items]
        else:
            decoded = [self.load_image(item, **options) for item in items]
        if plan is not None:
            decoded = [_bounded_resize_input(image, item, index, budget, **plan) for index, (item, image) in enumerate(zip(items, decoded))]
        # Converted here already: transformers' own convert_to_rgb would composite transparency on white
        # (PIL keeps a palette image's transparent colour in `info` after convert("RGB")).
        kwargs["do_convert_rgb"] = False
        return super().preprocess(decoded, *args, **kwargs)

    def _resize_plan(self, kwargs: dict, budget: int) -> dict | None:
        """Check that the call's target sizes fit `budget` (pixels); the shortest-edge resize that
        `_bounded_resize_input` bounds per image, or None when there is none to bound."""
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
            raise ValueError(f"max_resize_pixels must be an int >= 1, got {budget!r}")
        do_resize, do_crop = kwargs.get("do_resize", self.do_resize), kwargs.get("do_center_crop", self.do_center_crop)
        size, crop = _size_dict(kwargs.get("size", self.size)), _size_dict(kwargs.get("crop_size", self.crop_size))
        edge = size.get("shortest_edge")
        targets = []
        if do_resize:
            targets.append(("size", size, (edge, edge) if edge is not None else (size.get("height"), size.get("width"))))
        if do_crop:
            targets.append(("crop_size", crop, (crop.get("height"), crop.get("width"))))
        for name, value, (height, width) in targets:
            if height is not None and width is not None and not (height >= 1 and width >= 1 and height * width <= budget):
                raise ValueError(
                    f"image processor {name} {value} is out of range: its images would hold {height * width} pixels, "
                    f"more than max_resize_pixels={budget} (such a preprocessor_config.json allocates gigabytes per "
                    "image; raise max_resize_pixels if it is meant)"
                )
        if not do_resize or not edge or size.get("longest_edge"):
            return None
        crop_hw = (crop["height"], crop["width"]) if do_crop and "height" in crop and "width" in crop else None
        return {"shortest_edge": int(edge), "crop": crop_hw, "resample": kwargs.get("resample", self.resample)}

    def center_crop(self, image, size, **kwargs):
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)  # pads, as torchvision does
        top = int(round((height - size.height) / 2.0))
        left = int(round((width - size.width) / 2.0))
        return image[..., top : top + size.height, left : left + size.width]

    # Saving and loading: the release's preprocessor_config.json layout (see RELEASE_KEYS above).

    def __init__(self, **kwargs):
        kwargs = _from_release_keys(kwargs)
        # Only read by resize_mode "longest" (pad to a square); the shortest side resized to the crop size never
        # needs padding. Kept so that the saved file says what the release's says.
        fill_color = kwargs.pop("fill_color", 0)
        super().__init__(**kwargs)
        self.fill_color = fill_color

    def to_dict(self) -> dict[str, Any]:
        """The settings in the release's keys (plus this processor's decoding options, and transformers' keys
        for what the release's cannot express): the content of preprocessor_config.json."""
        output = super().to_dict()
        size, crop_size = output.pop("size", None), output.pop("crop_size", None)
        size = dict(size) if size is not None else None
        crop_size = dict(crop_size) if crop_size is not None else None
        edge = (size or {}).get("shortest_edge")
        if size == {"shortest_edge": edge} and crop_size == {"height": edge, "width": edge}:
            output.update(size=edge, resize_mode="shortest")
        else:
            output.update(size=size, crop_size=crop_size)
        resample = output.pop("resample", None)
        names = {code: name for name, code in _INTERPOLATIONS.items()}
        if resample is not None and int(resample) in names:
            output["interpolation"] = names[int(resample)]
        else:
            output["resample"] = resample
        for key, release_key in (("image_mean", "mean"), ("image_std", "std")):
            if output.get(key) is not None:
                output[release_key] = [float(v) for v in output.pop(key)]
        output["fill_color"] = self.fill_color
        for name, value in _RELEASE_STEPS.items():
            if name in output and output[name] == value:
                del output[name]
        return output

    def to_json_string(self) -> str:
        """preprocessor_config.json: `to_dict` with the release's `processor_class`, which transformers.js's
        AutoProcessor reads to pair this image processor with the folder's tokenizer (transformers reads the
        processor class from processor_config.json)."""
        return json.dumps({**self.to_dict(), "processor_class": RELEASE_PROCESSOR_CLASS}, indent=2, sort_keys=True) + "\n"


def _size_dict(value) -> dict:
    """A size as a dict of its set fields (transformers keeps them as dicts or as `SizeDict`s)."""
    if not isinstance(value, dict):
        value = {key: getattr(value, key, None) for key in ("shortest_edge", "longest_edge", "height", "width")}
    return {key: item for key, item in value.items() if item is not None}


def _bounded_resize_input(image, item: Any, index: int, budget: int, *, shortest_edge: int, crop, resample):
    """`image` unchanged when its shortest-edge resize holds at most `budget` pixels (the release's path). A more
    elongated image is cut to the band the centre crop keeps, resampled with PIL's `resize(box=...)` at the
    positions of the full resize: the processor's own resize of that band is then the identity and its crop
    takes the same pixels. Without a crop such an image is refused (naming it and its size)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        return image  # arrays and tensors are the caller's memory already; transformers resizes them as given
    width, height = image.size
    portrait = width <= height  # transformers' rule: the width is the short side of a square image
    short, long = (width, height) if portrait else (height, width)
    new_long = int(shortest_edge * long / short)  # transformers' get_resize_output_image_size
    if shortest_edge * new_long <= budget:
        return image
    name = item if isinstance(item, (str, os.PathLike)) and len(str(item)) <= 200 else f"image {index} of the batch"
    # The band is resampled by PIL as transformers resamples these modes (its numpy round trip keeps them).
    if crop is None or image.mode not in ("RGB", "L", "RGBA"):
        raise ImageLoadError(
            f"{name} is {width}x{height} pixels: resized to a shortest edge of {shortest_edge} it would hold "
            f"{shortest_edge * new_long} pixels, more than max_resize_pixels={budget} (crop it first"
            + (", or enable the centre crop)" if crop is None else f", or convert its {image.mode} pixels to RGB)")
        )
    crop_long = crop[0] if portrait else crop[1]
    band = max(crop_long, shortest_edge)  # the band's short side stays `shortest_edge`: resizing it is the identity
    # The band starts where the full resize's centre crop starts, less the band's own crop offset.
    start = int(round((new_long - crop_long) / 2.0)) - int(round((band - crop_long) / 2.0))
    scale = long / new_long  # source pixels per resized pixel along the long side
    # Only the source rows (portrait) or columns (landscape) the band's filter reaches, plus a margin so that no
    # filter is clamped at a cut the full resize does not have; cut at whole pixels, so that the box PIL gets
    # (single-precision floats) has small, precise offsets.
    margin = 4 * max(scale, 1.0) + 2
    low = max(0, int(start * scale - margin))
    high = min(long, int(math.ceil((start + band) * scale + margin)))
    first, last = start * scale - low, (start + band) * scale - low
    if portrait:
        return image.crop((0, low, width, high)).resize((shortest_edge, band), resample, box=(0, first, width, last))
    return image.crop((low, 0, high, height)).resize((band, shortest_edge), resample, box=(first, 0, last, height))


__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_RESIZE_PIXELS",
    "ImageLoadError",
    "JinaCLIPImageProcessor",
    "RELEASE_KEYS",
    "RELEASE_PROCESSOR_CLASS",
    "keys_outside_release_layout",
    "load_image",
    "open_image",
    "to_rgb",
]
