"""The release's image preprocessing restated from torchvision's source, independently of transformers and of
this package (the oracle of the processor and image-input tests).

The release (jina-clip-implementation, transform.py, eval mode, resize_mode "shortest") runs torchvision:
Resize(S, BICUBIC) -> CenterCrop(S) -> convert("RGB") -> ToTensor -> Normalize(OpenAI CLIP mean/std), and its
`encode_image` opens files with `Image.open(...)` and converts them with `.convert("RGB")` first.
- Resize(int) on a PIL image: the short side becomes S, the long side int(S * long / short), then
  `img.resize((w, h), Image.BICUBIC)`;
- CenterCrop: offsets int(round((h - S) / 2.0)) (Python rounds half to even: overhang 3 -> 2, 7 -> 4);
- ToTensor: uint8 -> float32, divided by 255; Normalize: (x - mean) / std in float32.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def release_transform(image: Image.Image, size: int, crop_offset=lambda overhang: int(round(overhang / 2.0))) -> torch.Tensor:
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.BICUBIC)
    top, left = crop_offset(new_height - size), crop_offset(new_width - size)
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    tensor = tensor.to(torch.float32).div(255)
    mean = torch.as_tensor(OPENAI_CLIP_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(OPENAI_CLIP_STD, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub(mean).div(std)


def release_pixels(path, size: int) -> torch.Tensor:
    """What the release's `encode_image(path)` feeds its vision tower: plain PIL open + convert("RGB")."""
    with Image.open(path) as image:
        return release_transform(image.convert("RGB"), size)
