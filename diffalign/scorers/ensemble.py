"""Combining several scorers: per-group win-fraction labels (RankDPO) and z-scored means.

Scores of n scorers for groups of K images are a tensor [n, G, K] (higher is better for every
scorer). Labels are computed within each group, so scorers on different scales combine without
calibration.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from diffalign.scorers.base import Scorer


def win_fractions(scores: torch.Tensor) -> torch.Tensor:
    """RankDPO labels ψ [G, K] from scores [n, G, K]: ψ_i = C_i / (n · (K - 1)).

    C_i counts the (scorer, other image) comparisons image i wins; a tie counts 1/2 for each
    side, so ψ is in [0, 1] and, per group, sums to K / 2. K must be at least 2.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be [n_scorers, groups, K], got shape {tuple(scores.shape)}")
    n, _, k = scores.shape
    if k < 2:
        raise ValueError(f"win fractions need K >= 2 images per group, got K={k}")
    diff = scores.unsqueeze(-1) - scores.unsqueeze(-2)  # [n, G, K, K]: image i (row) vs j (column)
    wins = (diff > 0).float() + 0.5 * (diff == 0).float()
    wins = wins.sum(-1) - 0.5  # remove the self-comparison (a tie with itself)
    return wins.sum(0) / (n * (k - 1))


def zscore_mean(scores: torch.Tensor, weights: Sequence[float] | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Weighted mean over scorers of per-group z-scores: [n, G, K] -> [G, K].

    Each scorer's scores are standardised within a group (mean 0, population std 1); a group in
    which a scorer gives every image the same score contributes 0 for that scorer. ``weights``
    (n values, default equal) are normalised to sum to 1.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be [n_scorers, groups, K], got shape {tuple(scores.shape)}")
    mean = scores.mean(-1, keepdim=True)
    std = scores.std(-1, unbiased=False, keepdim=True)
    z = torch.where(std > eps, (scores - mean) / std.clamp(min=eps), torch.zeros_like(scores))
    w = torch.ones(scores.shape[0], dtype=scores.dtype, device=scores.device) if weights is None else \
        torch.as_tensor(weights, dtype=scores.dtype, device=scores.device)
    if w.numel() != scores.shape[0] or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {scores.shape[0]} non-negative numbers with a positive sum, got {weights}")
    return torch.einsum("n,ngk->gk", w / w.sum(), z)


class ScorerEnsemble:
    """Several scorers scored together; labels per group of K images of one prompt."""

    def __init__(self, scorers: Sequence[Scorer], weights: Sequence[float] | None = None):
        if not scorers:
            raise ValueError("an ensemble needs at least one scorer")
        names = [s.name for s in scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"ensemble scorer names must be unique, got {names}")
        if weights is not None and len(weights) != len(scorers):
            raise ValueError(f"got {len(weights)} weights for {len(scorers)} scorers")
        self.scorers = list(scorers)
        self.weights = None if weights is None else list(weights)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.scorers]

    def score_all(self, images, prompts: Sequence[str] | None, path: str = "auto") -> torch.Tensor:
        """Raw scores [n, B] (float32, CPU) of every scorer on the same B images."""
        return torch.stack([scorer(images, prompts, path=path).detach().float().cpu() for scorer in self.scorers])

    def group_labels(self, images: Sequence[Image.Image] | torch.Tensor, prompts: Sequence[str],
                     group_size: int) -> dict[str, torch.Tensor]:
        """Labels for B = G·K images laid out group by group (K consecutive images per prompt).

        Returns ``raw`` [n, G, K], ``win_fraction`` [G, K] and ``zscore`` [G, K].
        """
        count = len(images)
        if group_size < 2 or count % group_size:
            raise ValueError(f"{count} images do not split into groups of K={group_size} (K >= 2)")
        raw = self.score_all(images, prompts).view(len(self.scorers), count // group_size, group_size)
        return {"raw": raw, "win_fraction": win_fractions(raw), "zscore": zscore_mean(raw, self.weights)}
