"""HPSv2 and HPSv2.1: an open_clip ViT-H-14 fine-tuned on HPDv2; score = cos(image, text).

The HPS checkpoint holds the complete model state, so it is loaded (strictly) into an
architecture built without pretrained weights: the 3.9 GB LAION base checkpoint the official
package downloads first is not needed. Preprocessing is HPSv2's: resize the longest side to 224
(bicubic), zero-pad to a square, OpenAI CLIP mean/std. Benchmark tables report 100 · cos.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from diffalign.scorers.base import Scorer, ScorerLoadError
from diffalign.scorers.loading import load_state_dict_file, load_strict, resolve_file
from diffalign.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocess

HPS_FILES = {"hpsv2": "HPS_v2_compressed.pt", "hpsv2.1": "HPS_v2.1_compressed.pt"}


class OpenClipSimilarity(Scorer):
    """``cos(image, text)`` of a frozen open_clip CLIP model (about 0.25-0.35 for HPS on SD outputs)."""

    def __init__(self, model, tokenizer, preprocess: ClipPreprocess, name: str, scale: str, batch_size: int = 32):
        super().__init__(batch_size)
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name, self.scale = name, scale

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised image features [b, D] (float32) of normalised pixels [b, 3, S, S]."""
        return F.normalize(self.model.encode_image(pixel_values.to(self.device, self.dtype)).float(), dim=-1)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def score_pil(self, images: list[Image.Image], prompts: list[str] | None) -> torch.Tensor:
        return (self.image_features(self.preprocess.pil(images)) * self.text_features(prompts)).sum(-1)

    def score_tensor(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return (self.image_features(self.preprocess.tensor(images)) * self.text_features(prompts)).sum(-1)


def build_open_clip(architecture: str):
    """An open_clip model without pretrained weights, and its tokenizer.

    ``architecture`` is an open_clip model name (e.g. "ViT-H-14") or a path to an open_clip model
    config JSON (registered under its file stem), as the tests do with tiny architectures.
    """
    import open_clip

    name = architecture
    if architecture.endswith(".json"):
        path = Path(architecture).expanduser()
        if not path.is_file():
            raise ScorerLoadError(f"open_clip architecture config {path} does not exist")
        open_clip.add_model_config(path)
        name = path.stem
    if name not in open_clip.list_models():
        raise ScorerLoadError(f"unknown open_clip architecture {architecture!r}; HPS uses ViT-H-14. "
                              "Pass an open_clip model name or a model config .json path.")
    logging.disable(logging.WARNING)  # open_clip logs "no pretrained weights loaded": the caller loads them
    try:
        return open_clip.create_model(name, pretrained=None, device="cpu"), open_clip.get_tokenizer(name)
    finally:
        logging.disable(logging.NOTSET)


def load_hps(version: str = "hpsv2.1", checkpoint: str = "xswu/HPSv2", architecture: str = "ViT-H-14",
             batch_size: int = 32) -> OpenClipSimilarity:
    """HPSv2 ("hpsv2") or HPSv2.1 ("hpsv2.1"). ``checkpoint``: the Hub repo of the HPS files, a
    folder holding ``HPS_v2*_compressed.pt``, or the file itself."""
    if version not in HPS_FILES:
        raise ScorerLoadError(f"unknown HPS version {version!r}; expected one of {sorted(HPS_FILES)}")
    model, tokenizer = build_open_clip(architecture)
    path = resolve_file(checkpoint, HPS_FILES[version], f"{version} checkpoint", "checkpoint")
    load_strict(model, load_state_dict_file(path, f"{version} checkpoint"), f"{version} checkpoint", path)
    visual = model.visual
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    preprocess = ClipPreprocess(size=int(size), geometry="longest",
                                mean=tuple(getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN),
                                std=tuple(getattr(visual, "image_std", None) or OPENAI_CLIP_STD))
    return OpenClipSimilarity(model, tokenizer, preprocess, name=version, batch_size=batch_size,
                              scale=f"{version}: cosine(image, text), about 0.25-0.35; benchmark tables report 100 * cosine")
