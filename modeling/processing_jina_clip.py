"""Image preprocessing identical to the jina-clip-v2 release.

The release resizes the shortest side to the image size (bicubic), centre-crops with torchvision's
`CenterCrop` (offsets `round((h - crop) / 2)`), divides by 255 and normalises with the OpenAI CLIP
mean/std. transformers' `CLIPImageProcessorPil` does the same except for the crop offset (it floors),
which moves the crop by one pixel whenever the overhang is 3 mod 4; this subclass rounds as the release.
"""

from __future__ import annotations

from transformers import CLIPImageProcessorPil


class JinaCLIPImageProcessor(CLIPImageProcessorPil):
    size = {"shortest_edge": 512}
    crop_size = {"height": 512, "width": 512}

    def center_crop(self, image, size, **kwargs):
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)  # pads, as torchvision does
        top = int(round((height - size.height) / 2.0))
        left = int(round((width - size.width) / 2.0))
        return image[..., top : top + size.height, left : left + size.width]


__all__ = ["JinaCLIPImageProcessor"]
