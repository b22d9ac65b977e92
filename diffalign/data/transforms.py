"""Pair-consistent image preprocessing for preference pairs (pure functions, no I/O).

Both images of a pair get the same random decisions: one horizontal flip and one crop position
(as fractions of the free space) are drawn per pair, so that the winner and the loser differ only
in content, never in augmentation.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image


class PairTransform:
    """Resize, crop, flip and normalise the two images of a preference pair consistently.

    Steps, per image: convert to RGB; resize the short side to ``resolution`` (bilinear,
    antialiased); crop ``resolution x resolution`` (centre, or at a random position drawn once per
    pair); flip horizontally (drawn once per pair, p=0.5, only if ``random_flip``); scale to [-1, 1].

    The SDXL micro-conditioning ``time_ids`` of each image are
    ``(orig_h, orig_w, crop_top, crop_left, resolution, resolution)``: ``orig_*`` is the size
    before resizing, the crop coordinates are in the resized image, and when the image is flipped
    ``crop_left`` is measured from the right edge (``resized_w - crop_left - resolution``), as in
    the diffusers SDXL training example.
    """

    def __init__(self, resolution: int, center_crop: bool = True, random_flip: bool = False) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be > 0, got {resolution}.")
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip

    def __repr__(self) -> str:
        return (f"PairTransform(resolution={self.resolution}, center_crop={self.center_crop}, "
                f"random_flip={self.random_flip})")

    def __call__(self, image_w: Image.Image, image_l: Image.Image, rng: random.Random) -> dict[str, torch.Tensor]:
        """Transform a (winner, loser) pair with the random decisions drawn once from ``rng``.

        Returns ``pixel_values_w`` and ``pixel_values_l``: float32 ``[3, R, R]`` in [-1, 1], and
        ``time_ids_w`` and ``time_ids_l``: float32 ``[6]``.
        """
        (pixels_w, pixels_l), (time_ids_w, time_ids_l) = self.transform_group([image_w, image_l], rng)
        return {"pixel_values_w": pixels_w, "pixel_values_l": pixels_l,
                "time_ids_w": time_ids_w, "time_ids_l": time_ids_l}

    def transform_group(self, images: list[Image.Image], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform K images of one prompt with one crop position and one flip decision drawn from ``rng``.

        Returns pixels float32 ``[K, 3, R, R]`` in [-1, 1] and time ids float32 ``[K, 6]``.
        """
        fractions = None if self.center_crop else (rng.random(), rng.random())
        flip = self.random_flip and rng.random() < 0.5
        pixels, time_ids = zip(*(self.transform_one(image, fractions, flip) for image in images))
        return torch.stack(pixels), torch.stack(time_ids)

    def transform_one(self, image: Image.Image, fractions: tuple[float, float] | None,
                      flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One image with crop fractions ``(top, left)`` in [0, 1) (None = centre crop) and a flip decision.

        Returns pixels float32 ``[3, R, R]`` in [-1, 1] and time ids float32 ``[6]``.
        """
        size = self.resolution
        image = image.convert("RGB")
        orig_w, orig_h = image.size
        scale = size / min(orig_w, orig_h)
        resized_w = max(size, round(orig_w * scale))
        resized_h = max(size, round(orig_h * scale))
        if (resized_w, resized_h) != (orig_w, orig_h):
            image = image.resize((resized_w, resized_h), resample=Image.Resampling.BILINEAR)
        if fractions is None:
            top = int(round((resized_h - size) / 2.0))
            left = int(round((resized_w - size) / 2.0))
        else:
            top = _crop_offset(fractions[0], resized_h - size)
            left = _crop_offset(fractions[1], resized_w - size)
        image = image.crop((left, top, left + size, top + size))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            left = resized_w - left - size
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        time_ids = torch.tensor([orig_h, orig_w, top, left, size, size], dtype=torch.float32)
        return pixels, time_ids


def _crop_offset(fraction: float, free: int) -> int:
    """Offset in ``[0, free]`` for a fraction in [0, 1); uniform fractions give uniform offsets."""
    return min(int(fraction * (free + 1)), free)
