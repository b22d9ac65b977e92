"""The shapes checker (:func:`diffalign.shapes.check`) as a scorer, so the evaluation commands report it
beside the learned scorers. Programmatic, not differentiable; prompts must be shapes captions.

Also the shapes area (:func:`diffalign.shapes.object_area_fraction`): a preference any model of the
shapes world can express whatever the caption (bigger objects), used to check that a trainer moves
a model at all (docs/embedded-model.md)."""

from __future__ import annotations

import torch
from PIL import Image

from diffalign import shapes
from diffalign.scorers.base import Scorer

METRICS = ("correct", "fraction")


class ShapesChecker(Scorer):
    """``correct``: 1 when every attribute the caption states is right, else 0 (mean = accuracy);
    ``fraction``: right attributes / stated attributes, in [0, 1]."""

    differentiable = False

    def __init__(self, metric: str = "correct", batch_size: int = 64):
        super().__init__(batch_size)
        if metric not in METRICS:
            raise ValueError(f"shapes-checker metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        self.name = "shapes-checker" if metric == "correct" else "shapes-checker-fraction"
        self.scale = ("1 if every stated attribute (colour, shape, size, position) is right, else 0"
                      if metric == "correct" else "right attributes / stated attributes, in [0, 1]")

    def score_pil(self, images: list[Image.Image], prompts: list[str] | None) -> torch.Tensor:
        results = [shapes.check(image, prompt) for image, prompt in zip(images, prompts)]
        values = [float(r.correct) if self.metric == "correct" else r.fraction_right for r in results]
        return torch.tensor(values, dtype=torch.float32, device=self.device)


class ShapesArea(Scorer):
    """Share of non-background pixels, in [0, 1] (a 64x64 large square is about 0.3). Prompts are ignored."""

    needs_prompts = False
    differentiable = False
    name = "shapes-area"
    scale = "share of pixels whose nearest shapes palette colour is not the background, in [0, 1]"

    def score_pil(self, images: list[Image.Image], prompts: list[str] | None) -> torch.Tensor:
        return torch.tensor([shapes.object_area_fraction(image) for image in images], dtype=torch.float32,
                            device=self.device)
