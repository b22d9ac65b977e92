"""Statistics of score tables: bootstrap confidence intervals, paired win rates, the HPSv2 protocol.

Conventions (shared by every report):

- Confidence intervals are percentile bootstrap intervals, clustered by prompt: each resample
  draws clusters (prompts) with replacement and keeps all values of each drawn cluster; the
  statistic of a resample is the mean over all its values. With one value per cluster this is
  the ordinary bootstrap. Resampling is seeded, so the same inputs give the same interval.
- A win of A over B is ``a > b`` for a pair, a tie ``a == b``; win rate = (wins + 0.5 ties) / n.
- HPSv2 protocol: the scores of one style, in table order, split into 10 consecutive chunks
  (``np.array_split``); report the mean of the chunk means and their ``np.std`` (ddof=0).

All inputs are 1-D sequences of finite floats; NaN or infinite values are an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

_RESAMPLE_BLOCK = 1 << 22  # resampled cluster indices held at once (fixed, so results do not depend on memory)


class StatsError(ValueError):
    """Unusable statistics input: empty, mismatched lengths, NaN/inf values or bad settings."""


@dataclass
class MeanCI:
    """Mean of n values with a bootstrap interval [low, high]; std is the sample std (ddof=1, 0.0 if n == 1)."""

    mean: float
    low: float
    high: float
    n: int
    std: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class WinRate:
    """Paired win rate of A over B, (wins + 0.5 ties) / n, with a bootstrap interval [low, high]."""

    rate: float
    low: float
    high: float
    wins: int
    losses: int
    ties: int
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_mean_ci(values: Sequence[float], clusters: Sequence | None = None, confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> MeanCI:
    """Mean of ``values`` and its percentile cluster-bootstrap interval.

    ``clusters`` labels each value (e.g. its prompt id); None = one cluster per value. Clusters
    are numbered in order of first appearance, so the result depends only on the grouping, not on
    the label values. A constant input (n == 1 included) gives low == high == mean.
    """
    values = _as_values(values, "values")
    codes = _cluster_codes(clusters, len(values))
    _check_settings(confidence, resamples)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    if np.ptp(values) == 0:
        return MeanCI(mean, mean, mean, len(values), std)
    sums = np.bincount(codes, weights=values)
    counts = np.bincount(codes).astype(np.float64)
    rng = np.random.default_rng(seed)
    block = max(1, _RESAMPLE_BLOCK // len(sums))
    means = np.concatenate([_resampled_means(rng, sums, counts, min(block, resamples - start))
                            for start in range(0, resamples, block)])
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return MeanCI(mean, float(low), float(high), len(values), std)


def paired_win_rate(a: Sequence[float], b: Sequence[float], clusters: Sequence | None = None,
                    confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> WinRate:
    """Win rate of A over B on paired scores (a[i] vs b[i]) with a cluster-bootstrap interval."""
    a, b = _as_pair(a, b)
    wins, ties = int((a > b).sum()), int((a == b).sum())
    outcome = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    ci = bootstrap_mean_ci(outcome, clusters, confidence, resamples, seed)
    return WinRate(ci.mean, ci.low, ci.high, wins, len(a) - wins - ties, ties, len(a))


def paired_difference(a: Sequence[float], b: Sequence[float], clusters: Sequence | None = None,
                      confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> MeanCI:
    """Mean of the paired differences a - b with a cluster-bootstrap interval."""
    a, b = _as_pair(a, b)
    return bootstrap_mean_ci(a - b, clusters, confidence, resamples, seed)


def hpsv2_chunk_stats(values: Sequence[float], chunks: int = 10) -> tuple[float, float]:
    """(mean, np.std ddof=0) of the means of ``chunks`` consecutive chunks (``np.array_split``) of ``values``."""
    values = _as_values(values, "values")
    if chunks < 1 or len(values) < chunks:
        raise StatsError(f"the HPSv2 protocol needs at least {chunks} values for {chunks} chunks, got {len(values)}")
    chunk_means = np.array([chunk.mean() for chunk in np.array_split(values, chunks)])
    return float(chunk_means.mean()), float(chunk_means.std())


def _resampled_means(rng: np.random.Generator, sums: np.ndarray, counts: np.ndarray, size: int) -> np.ndarray:
    """Means of ``size`` resamples, each drawing len(sums) clusters with replacement: [size]."""
    drawn = rng.integers(0, len(sums), size=(size, len(sums)))
    return sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)


def _as_values(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise StatsError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise StatsError(f"{name} is empty")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise StatsError(f"{name} has {bad.size} NaN/inf values of {array.size}, at positions "
                         f"{bad[:10].tolist()}{' ...' if bad.size > 10 else ''}")
    return array


def _as_pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_values(a, "a"), _as_values(b, "b")
    if len(a) != len(b):
        raise StatsError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    return a, b


def _cluster_codes(clusters: Sequence | None, n: int) -> np.ndarray:
    """Cluster numbers 0..C-1 in order of first appearance: [n]."""
    if clusters is None:
        return np.arange(n)
    labels = np.asarray(clusters)
    if labels.shape != (n,):
        raise StatsError(f"clusters must have one label per value ({n}), got shape {labels.shape}")
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _check_settings(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise StatsError(f"resamples must be >= 1, got {resamples}")
