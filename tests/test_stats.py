"""Evaluation statistics: bootstrap intervals, paired win rates, HPSv2 chunks, summaries and comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffalign.evaluation.stats import (
    StatsError,
    bootstrap_mean_ci,
    hpsv2_chunk_stats,
    paired_difference,
    paired_win_rate,
)
from diffalign.evaluation.tables import (
    EvaluationError,
    compare,
    comparison_rows,
    scorer_columns,
    summarize,
    summary_rows,
)


def reference_cluster_bootstrap(values, clusters, confidence, resamples, seed):
    """Loop version: draw C clusters (numbered by first appearance) per resample, mean of their values."""
    groups = {}
    for value, cluster in zip(values, clusters):
        groups.setdefault(cluster, []).append(value)
    groups = list(groups.values())
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(groups), size=len(groups))
        means.append(np.mean(np.concatenate([groups[i] for i in drawn])))
    alpha = 1 - confidence
    return np.quantile(means, [alpha / 2, 1 - alpha / 2])


# ---- stats


def test_win_rate_counts_ties_as_half():
    result = paired_win_rate([1, 2, 3, 3], [0, 3, 1, 3])
    assert (result.wins, result.losses, result.ties, result.n) == (2, 1, 1, 4)
    assert result.rate == 0.625
    assert result.low <= 0.625 <= result.high
    assert set(result.to_dict()) == {"rate", "low", "high", "wins", "losses", "ties", "n"}


def test_bootstrap_mean_std_and_reproducible():
    values = np.random.default_rng(1).normal(2.0, 1.0, size=50)
    first = bootstrap_mean_ci(values, seed=3)
    assert first.mean == pytest.approx(values.mean())
    assert first.std == pytest.approx(values.std(ddof=1))
    assert first.n == 50
    assert first.low < first.mean < first.high
    assert bootstrap_mean_ci(values, seed=3) == first
    assert bootstrap_mean_ci(values, seed=4) != first
    assert bootstrap_mean_ci(values, confidence=0.5, seed=3).high < first.high


def test_bootstrap_matches_loop_reference_with_clusters():
    rng = np.random.default_rng(2)
    values = rng.normal(size=30)
    clusters = [f"p{i // 3 if i < 15 else i}" for i in range(30)]  # 5 prompts of 3 images, 15 of 1
    result = bootstrap_mean_ci(values, clusters, confidence=0.9, resamples=300, seed=7)
    low, high = reference_cluster_bootstrap(values, clusters, 0.9, 300, 7)
    assert (result.low, result.high) == (pytest.approx(low), pytest.approx(high))


def test_one_cluster_per_value_is_plain_bootstrap():
    values = np.random.default_rng(5).normal(size=40)
    plain = bootstrap_mean_ci(values, seed=0)
    assert bootstrap_mean_ci(values, clusters=[f"{i:05d}" for i in range(40)], seed=0) == plain
    assert bootstrap_mean_ci(values, clusters=np.arange(40)[::-1], seed=0) == plain  # labels only group


def test_constant_and_single_values_give_zero_width():
    constant = bootstrap_mean_ci([0.1] * 7, clusters=[0, 0, 1, 1, 2, 2, 3])
    assert (constant.low, constant.high) == (constant.mean, constant.mean)
    assert constant.mean == pytest.approx(0.1)
    single = bootstrap_mean_ci([3.5])
    assert single.to_dict() == {"mean": 3.5, "low": 3.5, "high": 3.5, "n": 1, "std": 0.0}


def test_paired_difference_is_mean_of_differences():
    a, b = [3.0, 1.0, 4.0, 1.0, 5.0], [2.0, 2.0, 2.0, 2.0, 2.0]
    result = paired_difference(a, b, seed=0)
    assert result.mean == pytest.approx(0.8)
    assert result == bootstrap_mean_ci([1.0, -1.0, 2.0, -1.0, 3.0], seed=0)


def test_hpsv2_chunk_stats():
    mean, std = hpsv2_chunk_stats(np.arange(20.0))  # chunk means 0.5, 2.5, ..., 18.5
    assert mean == pytest.approx(9.5)
    assert std == pytest.approx(2 * np.sqrt(99 / 12))
    chunk_means = [1, 4, 7, 9.5, 11.5, 13.5, 15.5, 17.5, 19.5, 21.5]  # 23 values: 3 chunks of 3, 7 of 2
    mean, std = hpsv2_chunk_stats(np.arange(23.0))
    assert mean == pytest.approx(12.05)
    assert std == pytest.approx(np.std(chunk_means))
    with pytest.raises(StatsError, match="at least 10 values"):
        hpsv2_chunk_stats(np.arange(9.0))


def test_stats_input_errors():
    with pytest.raises(StatsError, match="equal lengths, got 3 and 2"):
        paired_win_rate([1, 2, 3], [1, 2])
    with pytest.raises(StatsError, match="empty"):
        bootstrap_mean_ci([])
    with pytest.raises(StatsError, match=r"2 NaN/inf values of 4, at positions \[1, 3\]"):
        bootstrap_mean_ci([1.0, float("nan"), 2.0, float("nan")])
    with pytest.raises(StatsError, match="one label per value"):
        bootstrap_mean_ci([1.0, 2.0], clusters=["a"])
    with pytest.raises(StatsError, match="confidence"):
        bootstrap_mean_ci([1.0, 2.0], confidence=95)


# ---- tables


def score_table(rows, scores, seed_offset=0, **extra):
    """A score table from (prompt_id, category, samples) rows and a flat list of scores."""
    records = [{"image": f"images/{pid}_{k:02d}.png", "prompt_id": pid, "prompt": f"prompt {pid}",
                "category": category, "sample": k, "seed": 100 * int(pid) + k + seed_offset}
               for pid, category, samples in rows for k in range(samples)]
    table = pd.DataFrame(records)
    table["pickscore"] = scores
    for name, values in extra.items():
        table[name] = values
    return table


# photo: 5 prompts x 2 images = 10 images (HPSv2 protocol), anime: 3 prompts x 3 images = 9 images (none)
ROWS = [(f"{i:05d}", "photo", 2) for i in range(5)] + [(f"{i:05d}", "anime", 3) for i in range(5, 8)]
PHOTO = [float(v) for v in range(10)]
ANIME = [10.0, 11.0, 12.0, 20.0, 20.0, 20.0, 30.0, 31.0, 32.0]


def test_scorer_columns():
    table = score_table(ROWS, PHOTO + ANIME, aesthetic=0.0)
    assert scorer_columns(table) == ["pickscore", "aesthetic"]


def test_summarize_means_categories_and_hpsv2_rule():
    table = score_table(ROWS, PHOTO + ANIME)
    summary = summarize(table, ["pickscore"], run="base", resamples=200)
    assert (summary["run"], summary["n_images"], summary["n_prompts"], summary["confidence"]) == ("base", 19, 8, 0.95)
    result = summary["scorers"]["pickscore"]
    assert result["overall"]["mean"] == pytest.approx((45 + 186) / 19)
    assert result["overall"]["n"] == 19
    assert list(result["categories"]) == ["photo", "anime"]
    assert result["categories"]["photo"]["mean"] == pytest.approx(4.5)
    assert result["categories"]["anime"]["mean"] == pytest.approx(186 / 9)
    assert result["categories"]["anime"]["std"] == pytest.approx(np.std(ANIME, ddof=1))
    assert list(result["hpsv2_protocol"]) == ["photo"]
    assert result["hpsv2_protocol"]["photo"] == {"mean": pytest.approx(4.5), "std": pytest.approx(np.std(PHOTO)),
                                                 "chunks": 10}
    for value in [result["overall"], *result["categories"].values()]:
        assert value["low"] <= value["mean"] <= value["high"]

    rows = summary_rows(summary)
    assert [(row["category"], row["hpsv2_mean"] is None) for row in rows] == [
        ("all", True), ("photo", False), ("anime", True)]
    assert rows[1]["mean"] == pytest.approx(4.5)


def test_summarize_without_categories():
    table = score_table([(f"{i:05d}", "", 1) for i in range(12)], [float(i) for i in range(12)])
    result = summarize(table, ["pickscore"], run="base", resamples=50)["scorers"]["pickscore"]
    assert result["categories"] == {} and result["hpsv2_protocol"] == {}
    assert result["overall"]["mean"] == pytest.approx(5.5)


def test_summarize_errors():
    table = score_table(ROWS, PHOTO + ANIME)
    with pytest.raises(EvaluationError, match=r"base: score table has no column\(s\) \['hpsv2'\]; columns are"):
        summarize(table, ["hpsv2"], run="base")
    table.loc[3, "pickscore"] = np.nan
    with pytest.raises(EvaluationError, match=r"1 missing.*\('00001', 1\)"):
        summarize(table, ["pickscore"], run="base")


def test_compare_win_rate_and_difference():
    rows = [("00000", "a", 2), ("00001", "b", 2)]
    a = score_table(rows, [1.0, 2.0, 3.0, 3.0])
    b = score_table(rows, [0.0, 3.0, 1.0, 3.0]).iloc[::-1]  # row order does not matter
    comparison = compare(a, b, ["pickscore"], "dpo", "base", resamples=200)
    assert (comparison["a"], comparison["b"], comparison["n_pairs"]) == ("dpo", "base", 4)
    result = comparison["scorers"]["pickscore"]
    assert result["win_rate"]["rate"] == 0.625
    assert (result["win_rate"]["wins"], result["win_rate"]["losses"], result["win_rate"]["ties"]) == (2, 1, 1)
    assert result["mean_difference"]["mean"] == pytest.approx(0.5)
    assert result["categories"]["a"]["win_rate"]["rate"] == 0.5  # 1 > 0 win, 2 < 3 loss
    assert result["categories"]["b"]["win_rate"]["rate"] == 0.75  # 3 > 1 win, 3 = 3 tie
    assert result["categories"]["b"]["mean_difference"]["mean"] == pytest.approx(1.0)
    rows = comparison_rows(comparison)
    assert [(row["category"], row["win_rate"], row["wins"]) for row in rows] == [
        ("all", 0.625, 2), ("a", 0.5, 1), ("b", 0.75, 1)]


def test_compare_errors():
    rows = [(f"{i:05d}", "", 2) for i in range(4)]
    a = score_table(rows, [float(i) for i in range(8)])
    with pytest.raises(EvaluationError, match=r"2 of 8 rows of dpo are missing in base \(e.g. \[\('00003', 0\), "
                                              r"\('00003', 1\)\]\), 0 of 6 rows of base"):
        compare(a, a.iloc[:6], ["pickscore"], "dpo", "base")
    with pytest.raises(EvaluationError, match="different seeds for 8 of 8 images.*not a paired comparison"):
        compare(a, score_table(rows, [0.0] * 8, seed_offset=1), ["pickscore"], "dpo", "base")
    other_prompt = a.copy()
    other_prompt.loc[0, "prompt"] = "something else"
    with pytest.raises(EvaluationError, match=r"different prompt texts for 1 keys.*\('00000', 0\)"):
        compare(a, other_prompt, ["pickscore"], "dpo", "base")
    with pytest.raises(EvaluationError, match=r"base: score table has no column\(s\) \['aesthetic'\]"):
        compare(a.assign(aesthetic=1.0), a, ["aesthetic"], "dpo", "base")
