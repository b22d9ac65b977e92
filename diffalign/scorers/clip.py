"""Scorers on a transformers ``CLIPModel``: PickScore, CLIPScore and the LAION aesthetic predictor.

All three embed images with ``visual_projection(vision_model(x).pooler_output)`` and texts with
``text_projection(text_model(ids).pooler_output)``, L2-normalised in float32. Preprocessing
(size, crop, mean, std) is read from the model's ``preprocessor_config.json``: OpenAI CLIP's
resize-shortest-side + center crop (bicubic).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, CLIPModel

from diffalign.scorers.base import Scorer, ScorerLoadError
from diffalign.scorers.loading import from_pretrained, load_state_dict_file, load_strict, resolve_file
from diffalign.scorers.preprocess import ClipPreprocess

BICUBIC = 3


class ClipTowers(Scorer):
    """A frozen CLIPModel with its tokenizer and preprocessing; subclasses define the score."""

    def __init__(self, model: CLIPModel, tokenizer, preprocess: ClipPreprocess, batch_size: int = 32):
        super().__init__(batch_size)
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised image features [b, D] (float32) of normalised pixels [b, 3, S, S]."""
        pixel_values = pixel_values.to(self.device, self.dtype)
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_text_length,
                                return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    @property
    def max_text_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    def score_pil(self, images: list[Image.Image], prompts: list[str] | None) -> torch.Tensor:
        return self.score_features(self.image_features(self.preprocess.pil(images)), prompts)

    def score_tensor(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.score_features(self.image_features(self.preprocess.tensor(images)), prompts)

    def score_features(self, image_features: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """Scores [b] from normalised image features [b, D]."""
        raise NotImplementedError


class ClipSimilarity(ClipTowers):
    """``multiplier · cos(image, text)``, optionally floored at 0, with an optional text prefix.

    ``multiplier=None`` uses the model's learned temperature ``logit_scale.exp()`` (PickScore).
    """

    def __init__(self, model, tokenizer, preprocess, name: str, scale: str, multiplier: float | None = None,
                 floor_zero: bool = False, text_prefix: str = "", batch_size: int = 32):
        super().__init__(model, tokenizer, preprocess, batch_size)
        self.name, self.scale = name, scale
        self.multiplier, self.floor_zero, self.text_prefix = multiplier, floor_zero, text_prefix

    def score_features(self, image_features: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        text = self.text_features([self.text_prefix + p for p in prompts])
        cosine = (image_features * text).sum(-1)
        if self.floor_zero:
            cosine = cosine.clamp(min=0)
        multiplier = self.model.logit_scale.float().exp() if self.multiplier is None else self.multiplier
        return multiplier * cosine


class AestheticHead(torch.nn.Module):
    """The LAION improved-aesthetic-predictor MLP: in -> 1024 -> 128 -> 64 -> 16 -> 1, no activations.

    Dropout layers (0.2, 0.2, 0.1) keep the published state-dict keys ``layers.{0,2,4,6,7}``; they
    are inactive in eval mode.
    """

    def __init__(self, in_features: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(in_features, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


class AestheticScorer(ClipTowers):
    """LAION aesthetic v2: the MLP head on the L2-normalised CLIP ViT-L/14 image embedding (prompt-free)."""

    name = "aesthetic"
    scale = "LAION aesthetic score, roughly 1-10 (about 5.4-6.4 for SD outputs); prompts are ignored"
    needs_prompts = False

    def __init__(self, model, tokenizer, preprocess, head: AestheticHead, batch_size: int = 32):
        super().__init__(model, tokenizer, preprocess, batch_size)
        self.head = head.requires_grad_(False).eval()

    def score_features(self, image_features: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.head(image_features.to(self.dtype)).float()


# Loading ----------------------------------------------------------------------------------------

def load_clip(source: str, what: str, option: str) -> CLIPModel:
    return from_pretrained(CLIPModel.from_pretrained, source, what, option)


def load_processing(source: str, what: str, option: str) -> tuple[object, ClipPreprocess]:
    """Tokenizer and :class:`ClipPreprocess` from a CLIP processor folder or Hub id."""
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, source, f"{what} tokenizer", option)
    processor = from_pretrained(_pil_image_processor_class().from_pretrained, source, f"{what} image processor", option)
    return tokenizer, preprocess_from_processor(processor, f"{what} image processor ({source})")


def preprocess_from_processor(processor, what: str) -> ClipPreprocess:
    """The resize/crop/normalise settings of a CLIP image processor; only the CLIP recipe is supported."""
    size = _size_field(processor.size, "shortest_edge")
    crop = (_size_field(processor.crop_size, "height"), _size_field(processor.crop_size, "width"))
    if not (processor.do_resize and processor.do_center_crop and size and crop == (size, size)):
        raise ScorerLoadError(f"{what}: expected OpenAI CLIP preprocessing (resize shortest edge to S, center crop "
                              f"S x S), got size={processor.size}, crop_size={processor.crop_size}")
    if int(processor.resample) != BICUBIC:
        raise ScorerLoadError(f"{what}: expected bicubic resampling (3), got {processor.resample}")
    return ClipPreprocess(size=int(size), geometry="shortest", mean=tuple(processor.image_mean),
                          std=tuple(processor.image_std))


def _size_field(size, key: str):
    """A field of a processor size: a dict (transformers < 5), a SizeDict (>= 5) or a bare int."""
    if isinstance(size, int):
        return size
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _pil_image_processor_class():
    """transformers >= 5 names the PIL-based CLIP processor CLIPImageProcessorPil; before, CLIPImageProcessor."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def has_processor_files(source: str) -> bool:
    folder = Path(source).expanduser()
    return folder.is_dir() and (folder / "preprocessor_config.json").is_file()


def load_pickscore(model: str = "yuvalkirstain/PickScore_v1",
                   processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", batch_size: int = 32) -> ClipSimilarity:
    """PickScore v1: ``logit_scale.exp() · cos`` (about 20-23) of a CLIP ViT-H/14 fine-tuned on Pick-a-Pic.

    ``processor`` defaults to the processor the authors published with it; a local ``model``
    folder that has its own ``preprocessor_config.json`` uses that instead.
    """
    clip = load_clip(model, "PickScore model", "model")
    processor_source = model if has_processor_files(model) else processor
    tokenizer, preprocess = load_processing(processor_source, "PickScore processor", "processor")
    return ClipSimilarity(clip, tokenizer, preprocess, name="pickscore", batch_size=batch_size,
                          scale="PickScore: logit_scale.exp() * cosine, about 20-23 for SD outputs")


def load_shapes_clip(model: str | None = None, batch_size: int = 64) -> ClipSimilarity:
    """The embedded tiny scorer (assets/models/shapes-clip, trained by scripts/pretrain_tiny_scorer.py on the
    procedural shapes data): PickScore's formula ``logit_scale.exp() · cos`` on a 64 px CLIP, in [-100, 100]."""
    from diffalign.paths import asset

    model = model or str(asset("models", "shapes-clip"))
    clip = load_clip(model, "shapes-clip model", "model")
    tokenizer, preprocess = load_processing(model, "shapes-clip processor", "model")
    return ClipSimilarity(clip, tokenizer, preprocess, name="shapes-clip", batch_size=batch_size,
                          scale="logit_scale.exp() * cosine of the embedded 64 px CLIP, in [-100, 100]")


def load_clipscore(model: str = "openai/clip-vit-base-patch32", weight: float = 2.5,
                   text_prefix: str = "A photo depicts ", batch_size: int = 32) -> ClipSimilarity:
    """CLIPScore of Hessel et al. (2021): ``2.5 · max(cos, 0)`` on CLIP ViT-B/32, captions prefixed
    with "A photo depicts " as in the authors' code. Range [0, 2.5]."""
    clip = load_clip(model, "CLIPScore model", "model")
    tokenizer, preprocess = load_processing(model, "CLIPScore processor", "model")
    return ClipSimilarity(clip, tokenizer, preprocess, name="clipscore", multiplier=weight, floor_zero=True,
                          text_prefix=text_prefix, batch_size=batch_size,
                          scale=f"CLIPScore (Hessel et al.): {weight} * max(cosine, 0), prompt prefixed with {text_prefix!r}")


def load_clipscore_l14(model: str = "openai/clip-vit-large-patch14", batch_size: int = 32) -> ClipSimilarity:
    """CLIPScore as torchmetrics defines it: ``100 · max(cos, 0)`` on CLIP ViT-L/14, no prefix. Range [0, 100]."""
    clip = load_clip(model, "CLIPScore-L14 model", "model")
    tokenizer, preprocess = load_processing(model, "CLIPScore-L14 processor", "model")
    return ClipSimilarity(clip, tokenizer, preprocess, name="clipscore-l14", multiplier=100.0, floor_zero=True,
                          batch_size=batch_size, scale="CLIPScore (torchmetrics): 100 * max(cosine, 0)")


def load_aesthetic(clip: str = "openai/clip-vit-large-patch14", head: str = "trl-lib/ddpo-aesthetic-predictor",
                   head_file: str = "aesthetic-model.pth", batch_size: int = 32) -> AestheticScorer:
    """LAION aesthetic predictor v2 (sac+logos+ava1-l14-linearMSE): ``head`` is a Hub repo holding
    ``head_file``, a folder holding it, or the .pth/.safetensors file itself."""
    model = load_clip(clip, "aesthetic CLIP model", "clip")
    tokenizer, preprocess = load_processing(clip, "aesthetic CLIP processor", "clip")
    path = resolve_file(head, head_file, "aesthetic MLP head", "head")
    mlp = AestheticHead(in_features=model.config.projection_dim)
    load_strict(mlp, load_state_dict_file(path, "aesthetic MLP head"), "aesthetic MLP head", path)
    return AestheticScorer(model, tokenizer, preprocess, mlp, batch_size=batch_size)
