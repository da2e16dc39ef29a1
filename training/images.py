"""Images for training: decoding (any value an image column holds -> RGB), the release's train-time crop,
normalization to the processor's pixel statistics, and the on-the-fly augmented views of the unified-batch
ablation.

``image_from_record`` turns what an image column holds into an RGB image through the package's one decoder
(`jina_clip_v2.modeling.processing_jina_clip.load_image`, the release's semantics). The train-time transform is the release's: open_clip-style ``RandomResizedCrop(image_size, scale=(0.9, 1.0),
ratio=(3/4, 4/3), bicubic)``, reimplemented with PIL and a ``random.Random`` the stream seeds per example
so that a resumed run draws the same crops.
"""

from __future__ import annotations

import io
import math
import os
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from jina_clip_v2.modeling.processing_jina_clip import load_image as decode_image

# The release's training transform: open_clip-style RandomResizedCrop with scale (0.9, 1.0), bicubic.
CROP_SCALE = (0.9, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _as_image_record(value: Any, image_root: str | None) -> dict | None:
    """Anything an image column may hold -> datasets' undecoded {"bytes", "path"} form."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path and image_root and not os.path.isabs(path) and "://" not in path:
            path = os.path.join(image_root, path)
        return {"bytes": data, "path": path}
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


def image_from_record(value: Any, image_root: str | None = None, image_processor=None) -> Image.Image:
    """A PIL image / bytes / {"bytes", "path"} dict / path (or URL) as a fully loaded RGB image, decoded by the
    package's one decoder (`processing_jina_clip.load_image`): with `image_processor`'s decoding options when
    given (a `JinaCLIPImageProcessor`), else the release's defaults."""
    if isinstance(value, Image.Image):
        source = value
    else:
        record = _as_image_record(value, image_root)
        if record is None or (record["bytes"] is None and not record["path"]):
            raise ValueError("missing image")
        source = record["bytes"] if record["bytes"] is not None else record["path"]
    return image_processor.load_image(source) if image_processor is not None else decode_image(source)


def random_resized_crop_box(
    width: int, height: int, rng: random.Random, scale=CROP_SCALE, ratio=CROP_RATIO
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params (top, left, h, w), drawing from a python Random."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return top, left, h, w
    in_ratio = width / height  # fallback: the central crop with the aspect clamped into `ratio`
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: Image.Image, size: int, rng: random.Random, scale=CROP_SCALE, ratio=CROP_RATIO):
    top, left, h, w = random_resized_crop_box(image.width, image.height, rng, scale, ratio)
    return image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)


def normalize_images(images: list[Image.Image], image_processor) -> torch.Tensor:
    """(B, 3, H, W) float32 from same-size RGB images: rescale (1/255), then the processor's mean/std
    (CLIP's), computed on the whole batch at once."""
    pixels = torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image in images])).float()
    pixels.mul_(float(getattr(image_processor, "rescale_factor", 1 / 255)))  # (B, H, W, 3), in place
    pixels.sub_(torch.tensor(image_processor.image_mean, dtype=torch.float32))
    pixels.div_(torch.tensor(image_processor.image_std, dtype=torch.float32))
    return pixels.permute(0, 3, 1, 2).contiguous()


def default_image_size(image_processor) -> int:
    crop = getattr(image_processor, "crop_size", None)
    if crop is not None:
        height = crop["height"] if isinstance(crop, dict) else getattr(crop, "height", None)
        if height:
            return int(height)
    size = image_processor.size
    return int(size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge)


def augment_views(pixels: torch.Tensor, scale: tuple[float, float] = (0.25, 1.0)) -> torch.Tensor:
    """A SimCLR-style augmented view of a normalized pixel batch, on the fly: a random resized crop
    (area fraction in ``scale``, aspect 3/4..4/3) back to the same size, a horizontal flip with
    probability 1/2 and brightness / contrast jitter (+-0.4), drawn from torch's global generator (so
    checkpoints restore it). Used for the unified-batch ablation, whose second image view the data
    stream does not provide."""
    batch, _, height, width = pixels.shape
    generator_device = "cpu"
    area = torch.empty(batch, device=generator_device).uniform_(scale[0], scale[1])
    log_ratio = torch.empty(batch, device=generator_device).uniform_(math.log(3 / 4), math.log(4 / 3))
    ratio = log_ratio.exp()
    crop_w = (area * ratio).sqrt().clamp(max=1.0)
    crop_h = (area / ratio).sqrt().clamp(max=1.0)
    center_x = (torch.rand(batch) * 2 - 1) * (1 - crop_w)
    center_y = (torch.rand(batch) * 2 - 1) * (1 - crop_h)
    flip = torch.where(torch.rand(batch) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = crop_w * flip
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = center_y
    brightness = torch.empty(batch, 1, 1, 1).uniform_(-0.4, 0.4)
    contrast = torch.empty(batch, 1, 1, 1).uniform_(0.6, 1.4)
    theta = theta.to(device=pixels.device, dtype=pixels.dtype)
    grid = F.affine_grid(theta, [batch, pixels.shape[1], height, width], align_corners=False)
    view = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    view = (view - mean) * contrast.to(view) + mean + brightness.to(view)
    return view


__all__ = [
    "CROP_RATIO",
    "CROP_SCALE",
    "augment_views",
    "default_image_size",
    "image_from_record",
    "normalize_images",
    "random_resized_crop",
    "random_resized_crop_box",
]
