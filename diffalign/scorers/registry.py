"""Scorers by name: ``get_scorer("hpsv2.1")`` or a spec with options, ``"hpsv2.1:checkpoint=/w/HPS_v2.1_compressed.pt"``.

Each name maps to a loader function whose keyword arguments are the scorer's options (where its
weights come from, batch size, ...). Spec option values are parsed as int, float or bool when
they look like one, else kept as strings.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from diffalign.scorers.base import Scorer
from diffalign.scorers.checker import ShapesArea, ShapesChecker
from diffalign.scorers.clip import load_aesthetic, load_clipscore, load_clipscore_l14, load_pickscore, load_shapes_clip
from diffalign.scorers.hps import load_hps
from diffalign.scorers.jpeg import JpegSizeScorer


class UnknownScorerError(KeyError):
    """A scorer name that is not registered; the message lists the registered names."""


class ScorerSpecError(ValueError):
    """A malformed scorer spec or an option the scorer does not have."""


@dataclass(frozen=True)
class ScorerEntry:
    """A registered scorer: its loader and a one-line description."""

    name: str
    loader: Callable[..., Scorer]
    description: str

    def options(self) -> dict[str, object]:
        """Option names and defaults of the loader."""
        return {name: p.default for name, p in inspect.signature(self.loader).parameters.items()}


_REGISTRY: dict[str, ScorerEntry] = {}


def register_scorer(name: str, loader: Callable[..., Scorer], description: str) -> None:
    """Make ``loader(**options)`` available as ``get_scorer(name)``."""
    _REGISTRY[name] = ScorerEntry(name, loader, description)


def available_scorers() -> list[str]:
    return sorted(_REGISTRY)


def scorer_entry(name: str) -> ScorerEntry:
    if name not in _REGISTRY:
        raise UnknownScorerError(f"unknown scorer {name!r}; available: {', '.join(available_scorers())}")
    return _REGISTRY[name]


def parse_scorer_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``"name:key=value,key=value"`` -> (name, options)."""
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ScorerSpecError(f"scorer spec {spec!r}: option {item!r} is not key=value")
        options[key.strip()] = _parse_value(value.strip())
    return name.strip(), options


def get_scorer(spec: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               **options) -> Scorer:
    """Load a scorer by name or spec, frozen in eval mode, on ``device`` in ``dtype``.

    Keyword ``options`` override those in the spec; unknown options are an error that lists the
    accepted ones.
    """
    name, spec_options = parse_scorer_spec(spec)
    entry = scorer_entry(name)
    merged = {**spec_options, **options}
    accepted = entry.options()
    unknown = sorted(set(merged) - set(accepted))
    if unknown:
        raise ScorerSpecError(f"scorer {name!r} has no option {', '.join(unknown)}; options: "
                        + ", ".join(f"{k} (default {v!r})" for k, v in accepted.items()))
    scorer = entry.loader(**merged)
    if device is not None or dtype is not None:
        scorer.to(device=device, dtype=dtype)
    return scorer


def _parse_value(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


register_scorer("pickscore", load_pickscore, "PickScore v1 (CLIP ViT-H/14): logit_scale.exp() * cosine, ~20-23")
register_scorer("hpsv2", functools.partial(load_hps, "hpsv2"), "HPSv2 (open_clip ViT-H-14): cosine, ~0.25-0.35")
register_scorer("hpsv2.1", functools.partial(load_hps, "hpsv2.1"), "HPSv2.1 (open_clip ViT-H-14): cosine, ~0.25-0.35")
register_scorer("aesthetic", load_aesthetic, "LAION aesthetic v2 (CLIP ViT-L/14 + MLP), ~5.4-6.4 for SD outputs")
register_scorer("clipscore", load_clipscore, "CLIPScore, Hessel et al.: 2.5 * max(cosine, 0) on CLIP ViT-B/32")
register_scorer("clipscore-l14", load_clipscore_l14, "CLIPScore, torchmetrics: 100 * max(cosine, 0) on CLIP ViT-L/14")
register_scorer("shapes-clip", load_shapes_clip,
                "embedded tiny CLIP for the shapes model (assets/models/shapes-clip): logit_scale.exp() * cosine")
register_scorer("shapes-checker", functools.partial(ShapesChecker, "correct"),
                "programmatic checker of shapes captions: 1 if every stated attribute is right, else 0")
register_scorer("shapes-checker-fraction", functools.partial(ShapesChecker, "fraction"),
                "programmatic checker of shapes captions: right attributes / stated attributes, in [0, 1]")
register_scorer("shapes-area", ShapesArea,
                "share of non-background pixels of a shapes image, in [0, 1]: bigger objects score higher")
register_scorer("jpeg-compressibility", functools.partial(JpegSizeScorer, -1),
                "minus the JPEG size in kB at quality 95 (DDPO)")
register_scorer("jpeg-incompressibility", functools.partial(JpegSizeScorer, 1),
                "the JPEG size in kB at quality 95 (DDPO)")
