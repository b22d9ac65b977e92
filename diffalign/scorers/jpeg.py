"""JPEG (in)compressibility (DDPO): the size in kB (1 kB = 1000 bytes) of the image saved as JPEG
at quality 95, negated for compressibility. Not differentiable; prompts are ignored."""

from __future__ import annotations

import io

import torch
from PIL import Image

from diffalign.scorers.base import Scorer


def jpeg_size_kb(image: Image.Image, quality: int = 95) -> float:
    """Bytes / 1000 of the RGB uint8 image encoded by PIL as JPEG at ``quality``."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


class JpegSizeScorer(Scorer):
    """``sign · jpeg_size_kb``: sign -1 rewards compressible images, +1 incompressible ones."""

    needs_prompts = False
    differentiable = False

    def __init__(self, sign: int, quality: int = 95, batch_size: int = 64):
        super().__init__(batch_size)
        if sign not in (-1, 1):
            raise ValueError(f"sign must be -1 or 1, got {sign}")
        self.sign, self.quality = sign, quality
        self.name = "jpeg-compressibility" if sign < 0 else "jpeg-incompressibility"
        self.scale = f"{'-' if sign < 0 else '+'}JPEG size in kB at quality {quality} (tensors are rounded to uint8 first)"

    def score_pil(self, images: list[Image.Image], prompts: list[str] | None) -> torch.Tensor:
        sizes = [self.sign * jpeg_size_kb(image, self.quality) for image in images]
        return torch.tensor(sizes, dtype=torch.float32, device=self.device)
