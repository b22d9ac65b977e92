"""Pairs for pairwise training from K scored images of one prompt (pure functions on score lists).

Scores are "higher is better". A pair ``(winner, loser)`` holds indices into the prompt's images;
pairs whose score gap is ``<= margin`` are ties and are never returned.
"""

from __future__ import annotations

from typing import Sequence

SELECTIONS = ("all", "best-worst")


def select_pairs(scores: Sequence[float], selection: str = "all", margin: float = 0.0) -> list[tuple[int, int]]:
    """(winner, loser) index pairs of one prompt's images.

    ``all``: every pair with a gap above ``margin`` (K(K-1)/2 at most), in index order;
    ``best-worst``: the highest against the lowest score, if their gap is above ``margin``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"pair selection must be one of {SELECTIONS}, got {selection!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    scores = [float(value) for value in scores]
    if selection == "best-worst":
        if len(scores) < 2:
            return []
        best = max(range(len(scores)), key=scores.__getitem__)
        worst = min(range(len(scores)), key=scores.__getitem__)
        return [(best, worst)] if scores[best] - scores[worst] > margin else []
    pairs = []
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if abs(scores[i] - scores[j]) > margin:
                pairs.append((i, j) if scores[i] > scores[j] else (j, i))
    return pairs
