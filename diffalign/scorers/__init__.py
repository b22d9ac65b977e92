"""Preference scorers: ``get_scorer(name)(images, prompts) -> Tensor[B]`` (higher is better).

Images are PIL images or float tensors [B, 3, H, W] in [0, 1]; see :mod:`diffalign.scorers.base`
for the two preprocessing paths and docs/scorers.md for each scorer's definition and scale.
"""

from diffalign.scorers.base import Scorer, ScorerLoadError
from diffalign.scorers.checker import ShapesArea, ShapesChecker
from diffalign.scorers.clip import AestheticHead, AestheticScorer, ClipSimilarity
from diffalign.scorers.ensemble import ScorerEnsemble, win_fractions, zscore_mean
from diffalign.scorers.hps import OpenClipSimilarity
from diffalign.scorers.jpeg import JpegSizeScorer, jpeg_size_kb
from diffalign.scorers.preprocess import ClipPreprocess, pil_to_tensor, tensor_to_pil
from diffalign.scorers.registry import (ScorerSpecError, UnknownScorerError, available_scorers, get_scorer,
                                        parse_scorer_spec, register_scorer, scorer_entry)

__all__ = ["AestheticHead", "AestheticScorer", "ClipPreprocess", "ClipSimilarity", "JpegSizeScorer", "ShapesArea", "ShapesChecker",
           "OpenClipSimilarity", "Scorer", "ScorerEnsemble", "ScorerLoadError", "available_scorers",
           "get_scorer", "jpeg_size_kb", "parse_scorer_spec", "pil_to_tensor", "register_scorer",
           "scorer_entry", "tensor_to_pil", "ScorerSpecError", "UnknownScorerError", "win_fractions", "zscore_mean"]
