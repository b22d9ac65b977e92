"""Image preprocessing for CLIP-family scorers: the official PIL path and a differentiable torch path.

Conventions: PIL images are RGB uint8; tensors are float NCHW in [0, 1] (3 channels). Both paths
return normalised pixel values [B, 3, S, S] (float32) for the image tower.

Two resize geometries exist among the published scorers:

- ``"shortest"`` (OpenAI CLIP, PickScore, aesthetic, CLIPScore): resize the short side to S with
  bicubic filtering, then center-crop S x S.
- ``"longest"`` (HPSv2): resize the long side to S with bicubic filtering, then zero-pad to
  S x S, the padding split as (total // 2, total - total // 2) on each axis (pad value 0 before
  normalisation, i.e. black).

The tensor path uses ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``, which
uses PIL's bicubic kernel (a = -0.5) with antialiasing; it differs from PIL on uint8 images only
by rounding and edge handling (see docs/scorers.md for the measured bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPreprocess:
    """Resize/crop/normalise settings of one scorer's image tower.

    ``size``: side S of the square model input; ``geometry``: "shortest" (resize + center crop)
    or "longest" (resize + zero pad); ``mean``/``std``: per-channel normalisation of [0, 1] pixels.
    """

    size: int
    geometry: str = "shortest"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self):
        if self.geometry not in ("shortest", "longest"):
            raise ValueError(f"geometry must be 'shortest' or 'longest', got {self.geometry!r}")

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step, with the rounding of the official code."""
        if self.geometry == "longest":
            scale = self.size / max(height, width)
            return round(height * scale), round(width * scale)
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.size * long / short)
        return (self.size, new_long) if height <= width else (new_long, self.size)

    def pil(self, images: list[Image.Image]) -> torch.Tensor:
        """Official path: PIL bicubic resize, crop or pad, /255, normalise -> [B, 3, S, S] float32."""
        return torch.stack([self._normalise(self._pil_geometry(image.convert("RGB"))) for image in images])

    def tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable path for float [B, 3, H, W] images in [0, 1] -> [B, 3, S, S] (input dtype)."""
        height, width = images.shape[-2:]
        new_h, new_w = self.resized_shape(height, width)
        if (new_h, new_w) != (height, width):
            images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        if self.geometry == "shortest":
            top, left = _crop_offsets(new_h, new_w, self.size)
            images = images[..., top:top + self.size, left:left + self.size]
        else:
            pad_h, pad_w = self.size - new_h, self.size - new_w
            images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def _pil_geometry(self, image: Image.Image) -> Image.Image:
        new_h, new_w = self.resized_shape(image.height, image.width)
        if (new_h, new_w) != (image.height, image.width):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        if self.geometry == "shortest":
            top, left = _crop_offsets(new_h, new_w, self.size)
            return image.crop((left, top, left + self.size, top + self.size))
        canvas = Image.new("RGB", (self.size, self.size), (0, 0, 0))
        canvas.paste(image, ((self.size - new_w) // 2, (self.size - new_h) // 2))
        return canvas

    def _normalise(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std


def _crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """Top/left of a centered size x size crop, rounded down as transformers' CLIP processor does."""
    return (height - size) // 2, (width - size) // 2


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float [B, 3, H, W] in [0, 1] -> RGB PIL images (rounded to uint8, as when saving a PNG)."""
    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(item) for item in array]


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> float32 [B, 3, H, W] in [0, 1]."""
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise ValueError(f"pil_to_tensor needs images of one size, got {sorted(sizes)}")
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
