"""Score tables to summaries and paired comparisons (the JSON schemas reports are built from).

A score table is a DataFrame with the manifest columns (image, prompt_id, prompt, category,
sample, seed) and one float column per scorer, higher is better, rows in manifest order. All
intervals are cluster-bootstrap intervals with the prompt as cluster (see
:mod:`diffalign.evaluation.stats`).

summary::

    {"run", "n_images", "n_prompts", "confidence",
     "scorers": {scorer: {"overall": MeanCI, "categories": {category: MeanCI},
                          "hpsv2_protocol": {category: {"mean", "std", "chunks"}}}}}

comparison::

    {"a", "b", "n_pairs", "confidence",
     "scorers": {scorer: {"win_rate": WinRate, "mean_difference": MeanCI (A - B),
                          "categories": {category: {"win_rate", "mean_difference"}}}}}

``categories`` lists categories in table order; it is empty when no row has a category (the
empty category "" is a key only when other rows have one). ``hpsv2_protocol`` has the
categories with at least 10 images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffalign.evaluation.stats import bootstrap_mean_ci, hpsv2_chunk_stats, paired_difference, paired_win_rate

MANIFEST_COLUMNS = ("image", "prompt_id", "prompt", "category", "sample", "seed")
UNKNOWN_SEED = -1
KEY = ["prompt_id", "sample"]
HPSV2_CHUNKS = 10
OVERALL = "all"  # the category of overall rows in summary_rows / comparison_rows
_SHOW = 5  # examples shown in error messages


class EvaluationError(ValueError):
    """Score tables that cannot be summarised or compared; the message says which rows and columns."""


def scorer_columns(table: pd.DataFrame) -> list[str]:
    """The scorer columns of a score table: every column that is not a manifest column, in table order."""
    return [str(column) for column in table.columns if column not in MANIFEST_COLUMNS]


def summarize(table: pd.DataFrame, scorers: list[str], run: str, confidence: float = 0.95, resamples: int = 2000,
              seed: int = 0) -> dict:
    """The summary of one run's score table (schema in the module docstring)."""
    _check_table(table, scorers, run)
    categories = _categories(table)
    result = {}
    for scorer in scorers:
        result[scorer] = {
            "overall": _mean_ci(table, scorer, confidence, resamples, seed),
            "categories": {category: _mean_ci(rows, scorer, confidence, resamples, seed)
                           for category, rows in categories.items()},
            "hpsv2_protocol": {category: _hpsv2_protocol(rows[scorer]) for category, rows in categories.items()
                               if len(rows) >= HPSV2_CHUNKS},
        }
    return {"run": run, "n_images": len(table), "n_prompts": int(table["prompt_id"].nunique()),
            "confidence": confidence, "resamples": resamples, "bootstrap_seed": seed, "scorers": result}


def compare(a: pd.DataFrame, b: pd.DataFrame, scorers: list[str], name_a: str, name_b: str,
            confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of run A against run B (schema in the module docstring).

    Rows are paired on (prompt_id, sample) and kept in A's order. Both tables must cover the same
    keys with the same prompt, category and seed for each key (same initial noise), else
    :class:`EvaluationError`. Seed -1 (imported images) means unknown and pairs with any seed.
    """
    _check_table(a, scorers, name_a)
    _check_table(b, scorers, name_b)
    pairs = _pair(a, b, name_a, name_b)
    categories = _categories(pairs)
    result = {}
    for scorer in scorers:
        result[scorer] = {**_paired(pairs, scorer, confidence, resamples, seed),
                          "categories": {category: _paired(rows, scorer, confidence, resamples, seed)
                                         for category, rows in categories.items()}}
    return {"a": name_a, "b": name_b, "n_pairs": len(pairs), "confidence": confidence, "resamples": resamples,
            "bootstrap_seed": seed, "scorers": result}


def summary_rows(summary: dict) -> list[dict]:
    """Flat rows of a summary for CSV: one per (scorer, category), category "all" for overall.

    Keys: run, scorer, category, mean, low, high, std, n, hpsv2_mean, hpsv2_std (None where the
    category has no HPSv2-protocol numbers, always for "all").
    """
    rows = []
    for scorer, result in summary["scorers"].items():
        protocol = result["hpsv2_protocol"]
        entries = [(OVERALL, result["overall"], None)]
        entries += [(category, value, protocol.get(category)) for category, value in result["categories"].items()]
        for category, value, hpsv2 in entries:
            rows.append({"run": summary["run"], "scorer": scorer, "category": category, **value,
                         "hpsv2_mean": hpsv2["mean"] if hpsv2 else None,
                         "hpsv2_std": hpsv2["std"] if hpsv2 else None})
    return rows


def comparison_rows(comparison: dict) -> list[dict]:
    """Flat rows of a comparison for CSV: one per (scorer, category), category "all" for overall.

    Keys: a, b, scorer, category, win_rate, win_low, win_high, wins, losses, ties, n, diff_mean,
    diff_low, diff_high, diff_std.
    """
    rows = []
    for scorer, result in comparison["scorers"].items():
        for category, value in [(OVERALL, result), *result["categories"].items()]:
            win, diff = value["win_rate"], value["mean_difference"]
            rows.append({"a": comparison["a"], "b": comparison["b"], "scorer": scorer, "category": category,
                         "win_rate": win["rate"], "win_low": win["low"], "win_high": win["high"],
                         "wins": win["wins"], "losses": win["losses"], "ties": win["ties"], "n": win["n"],
                         "diff_mean": diff["mean"], "diff_low": diff["low"], "diff_high": diff["high"],
                         "diff_std": diff["std"]})
    return rows


def _check_table(table: pd.DataFrame, scorers: list[str], run: str) -> None:
    """Manifest and scorer columns present, at least one row, no missing scores, unique keys."""
    missing = [column for column in (*MANIFEST_COLUMNS, *scorers) if column not in table.columns]
    if missing:
        raise EvaluationError(f"{run}: score table has no column(s) {missing}; columns are {list(table.columns)}")
    if table.empty:
        raise EvaluationError(f"{run}: score table has no rows")
    for scorer in scorers:
        values = pd.to_numeric(table[scorer], errors="coerce").to_numpy(float)
        bad = table.loc[~np.isfinite(values), KEY]
        if len(bad):
            raise EvaluationError(f"{run}: scorer {scorer!r} has {len(bad)} missing, infinite or non-numeric values, "
                                  f"e.g. (prompt_id, sample) {_examples(bad)}")
    duplicated = table.loc[table.duplicated(KEY, keep=False), KEY]
    if len(duplicated):
        raise EvaluationError(f"{run}: {len(duplicated)} rows share a (prompt_id, sample) key, e.g. "
                              f"{_examples(duplicated)}")


def _pair(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> pd.DataFrame:
    """A's rows joined with B's on (prompt_id, sample); scorer columns get suffixes _a and _b."""
    merged = a.merge(b, on=KEY, how="outer", suffixes=("_a", "_b"), indicator=True, sort=False)
    only_a = merged.loc[merged["_merge"] == "left_only", KEY]
    only_b = merged.loc[merged["_merge"] == "right_only", KEY]
    if len(only_a) or len(only_b):
        raise EvaluationError(
            f"{name_a} and {name_b} do not cover the same (prompt_id, sample) keys: {len(only_a)} of {len(a)} "
            f"rows of {name_a} are missing in {name_b} (e.g. {_examples(only_a)}), {len(only_b)} of {len(b)} rows "
            f"of {name_b} are missing in {name_a} (e.g. {_examples(only_b)}); generate both runs from the same "
            "prompt set with the same images per prompt")
    pairs = a[KEY].merge(merged, on=KEY, how="left")
    for column, what in (("prompt", "prompt texts"), ("category", "categories")):
        differ = pairs.loc[pairs[f"{column}_a"].fillna("") != pairs[f"{column}_b"].fillna(""), KEY]
        if len(differ):
            raise EvaluationError(f"{name_a} and {name_b} have different {what} for {len(differ)} keys, e.g. "
                                  f"(prompt_id, sample) {_examples(differ)}: they were generated from different "
                                  "prompt sets")
    known = (pairs["seed_a"] != UNKNOWN_SEED) & (pairs["seed_b"] != UNKNOWN_SEED)
    differ = pairs.loc[known & (pairs["seed_a"] != pairs["seed_b"]), KEY]
    if len(differ):
        raise EvaluationError(f"{name_a} and {name_b} used different seeds for {len(differ)} of {len(pairs)} "
                              f"images, e.g. (prompt_id, sample) {_examples(differ)}: this is not a paired "
                              "comparison; generate both runs with the same --seed")
    return pairs.rename(columns={"category_a": "category"})


def _categories(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows per category in order of first appearance; {} when no row has a category (missing = "")."""
    category = table["category"].fillna("").astype(str)
    if (category == "").all():
        return {}
    return {name: rows for name, rows in table.groupby(category, sort=False)}


def _mean_ci(rows: pd.DataFrame, scorer: str, confidence: float, resamples: int, seed: int) -> dict:
    return bootstrap_mean_ci(rows[scorer].to_numpy(float), rows["prompt_id"].to_numpy(), confidence, resamples,
                             seed).to_dict()


def _paired(pairs: pd.DataFrame, scorer: str, confidence: float, resamples: int, seed: int) -> dict:
    """Win rate and mean difference of A over B on paired rows (scorer columns suffixed _a and _b)."""
    args = (pairs[f"{scorer}_a"].to_numpy(float), pairs[f"{scorer}_b"].to_numpy(float),
            pairs["prompt_id"].to_numpy(), confidence, resamples, seed)
    return {"win_rate": paired_win_rate(*args).to_dict(), "mean_difference": paired_difference(*args).to_dict()}


def _hpsv2_protocol(scores: pd.Series) -> dict:
    mean, std = hpsv2_chunk_stats(scores.to_numpy(float), HPSV2_CHUNKS)
    return {"mean": mean, "std": std, "chunks": HPSV2_CHUNKS}


def _examples(keys: pd.DataFrame) -> str:
    shown = ", ".join(f"({prompt_id!r}, {sample})" for prompt_id, sample in keys.head(_SHOW).itertuples(index=False))
    return f"[{shown}{', ...' if len(keys) > _SHOW else ''}]"
