"""The scorer interface: ``scorer(images, prompts) -> Tensor[B]``, higher is better.

Images are either a list of PIL images (any size, converted to RGB) or a float tensor
[B, 3, H, W] (or [3, H, W]) with values in [0, 1] — the one image convention of diffalign's
scorers. Decoded diffusion samples are ``(vae.decode(latents) / 2 + 0.5).clamp(0, 1)``.

Two preprocessing paths (``path=``):

- ``"pil"``: the official preprocessing of the scorer's authors (PIL bicubic resize); use it for
  reported numbers. Tensors given with ``path="pil"`` are rounded to uint8 first, as if saved.
- ``"tensor"``: resize/crop/normalise in torch, differentiable; use it for reward backprop.
- ``"auto"`` (default): PIL images take the PIL path, tensors the tensor path (the PIL path for
  scorers without a differentiable one, such as JPEG size).

Scores are float32 on the scorer's device, one per image, and do not depend on the batch size
(the model runs in eval mode; the text features of each prompt are computed once and cached).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence, Union

import torch
from PIL import Image

from diffalign.scorers.preprocess import tensor_to_pil

Images = Union[torch.Tensor, Sequence[Image.Image], Image.Image]
PATHS = ("auto", "pil", "tensor")


class ScorerLoadError(RuntimeError):
    """A scorer's weights could not be found or do not match its architecture."""


class Scorer(torch.nn.Module):
    """Base class of all scorers: input checks, batching, paths, text-feature cache, frozen eval mode.

    Subclasses set ``name``, ``scale`` (a sentence stating the score's range and meaning),
    ``needs_prompts`` and ``differentiable``, and implement :meth:`score_pil` and, when
    differentiable, :meth:`score_tensor`, each on one batch.
    """

    name = "scorer"
    scale = ""
    needs_prompts = True
    differentiable = True
    text_cache_size = 4096

    def __init__(self, batch_size: int = 32):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # The public call ----------------------------------------------------------------------------

    def forward(self, images: Images, prompts: str | Sequence[str] | None = None, path: str = "auto",
                batch_size: int | None = None) -> torch.Tensor:
        """Scores [B] (float32, scorer device) for B images and their prompts (one str is broadcast)."""
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        images = _as_images(images)
        count = len(images)
        prompts = self._check_prompts(prompts, count)
        if path == "tensor" and not isinstance(images, torch.Tensor):
            raise TypeError(f"{self.name}: path='tensor' needs a float tensor [B, 3, H, W] in [0, 1]; "
                            "convert PIL images with diffalign.scorers.pil_to_tensor")
        if path == "tensor" and not self.differentiable:
            raise TypeError(f"{self.name} has no differentiable tensor path ({self.scale}); use path='pil' or 'auto'")
        use_tensor = isinstance(images, torch.Tensor) and (path == "tensor" or (path == "auto" and self.differentiable))
        if isinstance(images, torch.Tensor) and not use_tensor:
            images = tensor_to_pil(images)
        step = batch_size or self.batch_size
        scores = []
        for start in range(0, count, step):
            chunk_prompts = None if prompts is None else prompts[start:start + step]
            if use_tensor:
                scores.append(self.score_tensor(images[start:start + step], chunk_prompts))
            else:
                with torch.inference_mode():
                    scores.append(self.score_pil(list(images[start:start + step]), chunk_prompts))
        return torch.cat(scores).float()

    # To implement -------------------------------------------------------------------------------

    def score_pil(self, images: list[Image.Image], prompts: list[str] | None) -> torch.Tensor:
        """Scores [b] of one batch through the official PIL preprocessing."""
        raise NotImplementedError

    def score_tensor(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """Scores [b] of one batch of float [b, 3, H, W] images in [0, 1], differentiable."""
        raise NotImplementedError

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text features [b, D] (float32) of prompts not in the cache."""
        raise NotImplementedError

    # Shared helpers -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the scorer's weights (float32 for weight-free scorers)."""
        return next((p.dtype for p in self.parameters()), torch.float32)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text features [b, D] (float32, no grad), computed once per unique prompt."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            with torch.inference_mode():
                features = self.encode_text(missing).float()
            for prompt, feature in zip(missing, features):
                self._text_cache[prompt] = feature.clone()
                self._text_cache.move_to_end(prompt)
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return torch.stack([self._text_cache[p] for p in prompts])

    def train(self, mode: bool = True):
        """Scorers stay in eval mode (dropout off, fixed normalisation) whatever the caller asks."""
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        self._text_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _check_prompts(self, prompts, count: int) -> list[str] | None:
        if prompts is None:
            if self.needs_prompts:
                raise ValueError(f"{self.name} scores an image against its prompt: pass one prompt per image")
            return None
        if isinstance(prompts, str):
            return [prompts] * count
        prompts = list(prompts)
        if len(prompts) != count:
            raise ValueError(f"{self.name}: got {count} images but {len(prompts)} prompts")
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if bad:
            raise TypeError(f"{self.name}: prompts must be str; item {bad[0]} is {type(prompts[bad[0]]).__name__}")
        return prompts

    def extra_repr(self) -> str:
        return f"name={self.name!r}, scale={self.scale!r}, batch_size={self.batch_size}"


def _as_images(images: Images) -> torch.Tensor | list[Image.Image]:
    """Validate the image convention; returns a [B, 3, H, W] float tensor or a list of RGB PIL images."""
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensors must be [B, 3, H, W] (or [3, H, W]), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"image tensors must be float in [0, 1], got dtype {images.dtype}; "
                            "divide uint8 images by 255")
        low, high = images.detach().aminmax()
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(f"image tensors must be in [0, 1], got values in [{low.item():.3f}, {high.item():.3f}]; "
                             "VAE outputs in [-1, 1] map to [0, 1] with (x / 2 + 0.5).clamp(0, 1)")
        return images
    images = list(images)
    if not images:
        raise ValueError("no images to score")
    bad = [i for i, image in enumerate(images) if not isinstance(image, Image.Image)]
    if bad:
        raise TypeError(f"images must be PIL images or one float tensor [B, 3, H, W]; item {bad[0]} is "
                        f"{type(images[bad[0]]).__name__}")
    return [image.convert("RGB") for image in images]

