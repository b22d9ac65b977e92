"""Pair selection from one prompt's scored images, against hand-listed pairs."""

import pytest

from diffalign.data.selectors import select_pairs


def test_all_pairs_orient_winner_first_and_drop_ties():
    scores = [0.2, 0.9, 0.5, 0.5]
    assert select_pairs(scores) == [(1, 0), (2, 0), (3, 0), (1, 2), (1, 3)]
    assert select_pairs(scores, margin=0.35) == [(1, 0), (1, 2), (1, 3)]
    assert select_pairs(scores, margin=0.5) == [(1, 0)]


def test_best_worst():
    assert select_pairs([0.3, 0.1, 0.7], "best-worst") == [(2, 1)]
    assert select_pairs([0.3, 0.35], "best-worst", margin=0.1) == []
    assert select_pairs([0.3], "best-worst") == []


def test_adjacent_and_best_rest():
    scores = [0.2, 0.9, 0.5, 0.45]
    assert select_pairs(scores, "adjacent") == [(1, 2), (2, 3), (3, 0)]
    assert select_pairs(scores, "adjacent", margin=0.1) == [(1, 2), (3, 0)]
    assert select_pairs(scores, "best-rest") == [(1, 2), (1, 3), (1, 0)]
    assert select_pairs(scores, "best-rest", margin=0.5) == [(1, 0)]
    assert select_pairs([0.4, 0.4], "adjacent") == []  # a tie
    assert select_pairs([0.4], "best-rest") == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="must be one of"):
        select_pairs([1, 2], "adjacent-ish")
    with pytest.raises(ValueError, match="margin"):
        select_pairs([1, 2], margin=-1)
