"""Pairs for pairwise training from K scored images of one prompt (pure functions on score lists).

Scores are "higher is better". A pair ``(winner, loser)`` holds indices into the prompt's images;
pairs whose score gap is ``<= margin`` are ties and are never returned.
"""

from __future__ import annotations

from typing import Sequence

SELECTIONS = ("all", "adjacent", "best-rest", "best-worst")


def select_pairs(scores: Sequence[float], selection: str = "all", margin: float = 0.0) -> list[tuple[int, int]]:
    """(winner, loser) index pairs of one prompt's images.

    ``all``: every pair with a gap above ``margin`` (K(K-1)/2 at most), in index order;
    ``adjacent``: neighbours in score order (best vs second, second vs third, ...; K-1 at most);
    ``best-rest``: the highest score against every other image (K-1 at most);
    ``best-worst``: the highest against the lowest score, if their gap is above ``margin``.
    Equal scores are ordered by index (the first counts as higher); a pair within ``margin`` is a tie.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"pair selection must be one of {SELECTIONS}, got {selection!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    scores = [float(value) for value in scores]
    order = sorted(range(len(scores)), key=lambda index: (-scores[index], index))  # best first
    if selection != "all":
        candidates = {"adjacent": list(zip(order, order[1:])), "best-rest": [(order[0], j) for j in order[1:]],
                      "best-worst": [(order[0], order[-1])]}[selection] if len(order) >= 2 else []
        return [(i, j) for i, j in candidates if scores[i] - scores[j] > margin]
    pairs = []
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if abs(scores[i] - scores[j]) > margin:
                pairs.append((i, j) if scores[i] > scores[j] else (j, i))
    return pairs
