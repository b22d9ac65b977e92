"""Accuracy of a preference scorer on human preference test sets (Pick-a-Pic pairs, HPDv2 rankings).

A scorer is a callable ``scorer(images, prompts) -> Tensor[B]`` (PIL RGB images, one prompt per
image, higher is better) with a ``name`` attribute. Two test-set schemas are supported:

- Pairwise (Pick-a-Pic): one row per pair with ``caption``, two images and ``label_0`` (1.0 =
  image 0 preferred, 0.0 = image 1 preferred, 0.5 = tie). Unlike training, ties are kept: the
  PickScore protocol scores them (see :func:`pairwise_accuracy`).
- Ranked (HPDv2 ``test.json``): one group per prompt with K images and their human ranks, rank 1
  the best (see :func:`ranking_accuracy`).

Reference numbers: PickScore 70.2% on the Pick-a-Pic test set with the tie rule; on the HPDv2
test set, pairwise accuracy HPSv2 83.3% and PickScore 79.8%.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import datasets
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from diffalign.data.pairs import DataError, load_pairs_jsonl, load_pickapic_table, open_pair_image

TIE = 0.5
LABELS = (0.0, TIE, 1.0)
QUANTILE_LEVELS = 101  # default threshold candidates: 0 and the 0%, 1%, ..., 100% quantiles of |p0 - p1|

Scores = Sequence[float] | np.ndarray | torch.Tensor


class AccuracyDataError(DataError):
    """Unusable test data or inputs; the message names the file, row and column (or argument)."""


@dataclass(frozen=True)
class PairwiseResult:
    """Pairwise accuracy under the Pick-a-Pic tie protocol (see :func:`pairwise_accuracy`).

    ``accuracy``: mean credit over all ``n`` pairs, in [0, 1]. ``accuracy_no_ties``: mean credit
    with threshold 0 over the ``n_no_ties`` pairs whose label is not a tie (None if there are
    none). ``label_ties`` / ``predicted_ties``: pairs labelled / predicted as ties (the latter with
    ``tie_threshold``).
    """

    accuracy: float
    accuracy_no_ties: float | None
    tie_threshold: float
    n: int
    n_no_ties: int
    label_ties: int
    predicted_ties: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RankingResult:
    """Agreement of scores with human rankings (see :func:`ranking_accuracy`).

    ``pairwise_accuracy``: credit over the ``n_pairs`` within-group pairs with different true
    ranks (None if there are none). ``spearman``: mean Spearman rho over the
    ``n_spearman_groups`` groups where it is defined (None if there are none).
    """

    pairwise_accuracy: float | None
    spearman: float | None
    n_groups: int
    n_pairs: int
    n_spearman_groups: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairwiseTestSet:
    """A pairwise test set: ``table`` has columns caption (str), image_0 and image_1 (image bytes,
    a path str, a ``{"bytes", "path"}`` dict or a PIL image) and label_0 (1.0, 0.0 or 0.5), ties kept."""

    source: str
    table: datasets.Dataset

    def __len__(self) -> int:
        return len(self.table)


@dataclass
class RankedTestSet:
    """A ranked test set: group ``i`` has ``prompts[i]``, images ``image_paths[i]`` (existing files)
    and their human ``ranks[i]`` (ints, lower = better, same length)."""

    source: str
    prompts: list[str]
    image_paths: list[list[Path]]
    ranks: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompts)


# Metrics ------------------------------------------------------------------------------------------

def pair_probabilities(score_0: Scores, score_1: Scores) -> np.ndarray:
    """Probability that image 0 is preferred, per pair: the softmax over the pair's two scores.

    ``score_0``, ``score_1``: [N] finite scores (for PickScore the logit-scaled similarities, as
    the model outputs them). Returns float64 [N] in [0, 1]: ``p0 = sigmoid(s0 - s1)``; ``p1 = 1 - p0``.
    """
    return 0.5 * (1.0 + np.tanh(_score_difference(score_0, score_1) / 2.0))


def pairwise_accuracy(score_0: Scores, score_1: Scores, label_0: Scores, tie_threshold: float = 0.0) -> PairwiseResult:
    """Accuracy of a scorer on labelled pairs with the Pick-a-Pic (PickScore paper) tie protocol.

    ``score_0``, ``score_1``: [N] finite scores of images 0 and 1; ``label_0``: [N] human labels,
    1.0 (image 0 preferred), 0.0 (image 1 preferred) or 0.5 (tie). With ``p0`` from
    :func:`pair_probabilities` and ``p1 = 1 - p0``, the model predicts a tie when
    ``|p0 - p1| <= tie_threshold`` (so equal scores are always a predicted tie), else the image with
    the higher probability. Each pair earns credit 1 when prediction and label agree (a tie
    predicted for a tie included), 0.5 when exactly one of them is a tie, 0 when they name
    opposite images; accuracy is the mean credit.

    ``accuracy_no_ties`` is the HPSv2 / ImageReward style number: the same credit with threshold 0
    over the pairs whose label is not a tie (a pair with equal scores still earns 0.5).
    ``tie_threshold`` is in [0, 1] in practice (``|p0 - p1|`` is); fit it with
    :func:`best_tie_threshold` on a validation split, not on the pairs being reported.
    """
    difference = _score_difference(score_0, score_1)
    labels = _check_labels(label_0, len(difference))
    tie_threshold = _check_threshold(tie_threshold, "tie_threshold")
    predicted = _predictions(difference, tie_threshold)
    credit = _credits(predicted, labels)
    decided = labels != TIE
    credit_no_ties = _credits(_predictions(difference[decided], 0.0), labels[decided])
    return PairwiseResult(
        accuracy=float(credit.mean()),
        accuracy_no_ties=float(credit_no_ties.mean()) if decided.any() else None,
        tie_threshold=tie_threshold,
        n=len(labels),
        n_no_ties=int(decided.sum()),
        label_ties=int((~decided).sum()),
        predicted_ties=int((predicted == TIE).sum()),
    )


def best_tie_threshold(score_0: Scores, score_1: Scores, label_0: Scores,
                       candidates: Scores | None = None) -> tuple[float, float]:
    """The tie threshold with the highest :func:`pairwise_accuracy` on these pairs, and that accuracy.

    Grid search over ``candidates`` (default: 0 and the 0%, 1%, ..., 100% quantiles of
    ``|p0 - p1|``, taken as observed values, which are where the accuracy changes). Among equally
    good candidates the smallest wins. Fit it on a validation split and apply the threshold to the
    test split; this function does not split, so its accuracy on the fitted pairs is optimistic.
    Returns ``(threshold, accuracy)`` as floats.
    """
    difference = _score_difference(score_0, score_1)
    labels = _check_labels(label_0, len(difference))
    gaps = np.abs(np.tanh(difference / 2.0))
    if candidates is None:
        grid = np.concatenate([[0.0], np.quantile(gaps, np.linspace(0.0, 1.0, QUANTILE_LEVELS), method="lower")])
    else:
        grid = _as_vector(candidates, "candidates")
        if len(grid) == 0:
            raise AccuracyDataError("candidates is empty; give at least one tie threshold.")
        for value in grid:
            _check_threshold(value, "candidates")
    grid = np.unique(grid)
    accuracies = [_credits(_predictions(difference, threshold), labels).mean() for threshold in grid]
    best = int(np.argmax(accuracies))
    return float(grid[best]), float(accuracies[best])


def ranking_accuracy(scores: Sequence[Scores], ranks: Sequence[Sequence[int]]) -> RankingResult:
    """Agreement of per-group scores with human ranks (HPDv2 schema: rank 1 is best, lower = better).

    ``scores``: G groups, group ``i`` a [K_i] sequence of finite scores (higher = better);
    ``ranks``: G lists of K_i ints. K may differ between groups. Only the order of ranks matters.

    - Pairwise accuracy: over all image pairs within a group whose true ranks differ (pairs with
      equal true ranks are skipped), credit 1 when the better-ranked image has the higher score,
      0.5 when the scores are equal, 0 otherwise; pooled over all pairs of all groups. With no
      rank ties and a constant K this equals HPSv2's per-group mean of its inversion score.
    - Spearman: per group, rho between scores and negated ranks (Pearson correlation of average
      ranks, see :func:`spearman_rho`), averaged over the groups where it is defined (K >= 2 and
      neither scores nor ranks constant).
    """
    if len(scores) != len(ranks):
        raise AccuracyDataError(f"scores has {len(scores)} groups but ranks has {len(ranks)}.")
    credit, pairs, rhos = 0.0, 0, []
    for group, (group_scores, group_ranks) in enumerate(zip(scores, ranks)):
        values = _as_vector(group_scores, f"scores[{group}]")
        true_ranks = _check_ranks(group_ranks, len(values), group)
        group_credit, group_pairs = _ranked_pair_credit(values, true_ranks)
        credit, pairs = credit + group_credit, pairs + group_pairs
        rho = spearman_rho(values, -true_ranks)
        if rho is not None:
            rhos.append(rho)
    return RankingResult(
        pairwise_accuracy=credit / pairs if pairs else None,
        spearman=float(np.mean(rhos)) if rhos else None,
        n_groups=len(scores),
        n_pairs=pairs,
        n_spearman_groups=len(rhos),
    )


def spearman_rho(x: Scores, y: Scores) -> float | None:
    """Spearman's rank correlation of two [K] sequences, in [-1, 1].

    The Pearson correlation of their ranks, tied values getting the average of the ranks they span
    (the textbook definition, as ``scipy.stats.spearmanr``). None when K < 2 or either is constant.
    """
    rank_x, rank_y = _average_ranks(_as_vector(x, "x")), _average_ranks(_as_vector(y, "y"))
    if len(rank_x) != len(rank_y):
        raise AccuracyDataError(f"x has {len(rank_x)} values but y has {len(rank_y)}.")
    rank_x, rank_y = rank_x - rank_x.mean(), rank_y - rank_y.mean()
    norm = np.sqrt((rank_x ** 2).sum() * (rank_y ** 2).sum())
    if len(rank_x) < 2 or norm == 0:
        return None
    return float(np.clip((rank_x * rank_y).sum() / norm, -1.0, 1.0))


# Loaders ------------------------------------------------------------------------------------------

def load_pairwise_test_set(source: str | Path, split: str = "test", limit: int | None = None) -> PairwiseTestSet:
    """Load a pairwise test set, ties kept, cut to its first ``limit`` pairs.

    ``source`` is one of: a ``.parquet`` file or a folder of them (searched recursively) with the
    Pick-a-Pic columns caption, jpg_0, jpg_1 (image bytes) and label_0; a Hub dataset id of the
    same schema, read with ``datasets.load_dataset(source, split=split)`` (e.g.
    ``yuvalkirstain/pickapic_v2`` with split ``test`` or ``test_unique``); or the project's
    ``.jsonl`` pair file, rows ``{"caption", "image_0", "image_1", "label_0"}`` with image paths
    relative to the JSONL file. Labels must be 1.0, 0.0 or 0.5. Raises :class:`AccuracyDataError`
    naming the file, row and column of the first problem; images are decoded only when scored.
    """
    name = str(source)
    limit = _check_limit(limit)
    table = load_pairs_jsonl(Path(source)) if name.endswith(".jsonl") else load_pickapic_table(name, split)
    if limit is not None and len(table) > limit:
        table = table.select(range(limit))
    _check_table(table, name)
    if len(table) == 0:
        raise AccuracyDataError(f"{name}: no pairs.")
    return PairwiseTestSet(source=name, table=table)


def load_ranked_test_set(source: str | Path, images_root: str | Path | None = None,
                         limit: int | None = None) -> RankedTestSet:
    """Load an HPDv2-style ranked test set (its ``test.json``), cut to the first ``limit`` groups.

    The file is a JSON list of objects with "prompt" (str), "image_path" (list of image paths) and
    "rank" (list of ints, 1 = best; "ranking" is accepted as an alias) of equal lengths. Image
    paths are relative to ``images_root``, by default the JSON file's folder (HPDv2 keeps its test
    images in ``test/`` beside ``test.json``: pass that folder). Every image must exist. Raises
    :class:`AccuracyDataError` naming the file, row (0-based list index) and key of the first problem.
    """
    path = Path(source)
    limit = _check_limit(limit)
    if not path.is_file():
        raise AccuracyDataError(f"{path}: ranked test set (JSON file) not found.")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AccuracyDataError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(rows, list):
        raise AccuracyDataError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}.")
    if images_root is not None and not Path(images_root).is_dir():
        raise AccuracyDataError(f"{path}: images_root {images_root} is not a folder.")
    root = Path(images_root) if images_root is not None else path.resolve().parent
    rows = rows[:limit] if limit is not None else rows
    if not rows:
        raise AccuracyDataError(f"{path}: no groups.")
    groups = [_ranked_group(row, path, index, root, images_root is None) for index, row in enumerate(rows)]
    prompts, image_paths, ranks = (list(column) for column in zip(*groups))
    return RankedTestSet(source=str(source), prompts=prompts, image_paths=image_paths, ranks=ranks)


# Drivers ------------------------------------------------------------------------------------------

def evaluate_pairwise(scorer: Callable, source: str | Path | PairwiseTestSet, batch_size: int = 16,
                      tie_threshold: float | None = None, validation_fraction: float = 0.0,
                      limit: int | None = None, progress: bool = True, seed: int = 0,
                      split: str = "test") -> dict:
    """Score every image of a pairwise test set and report the Pick-a-Pic accuracies as a JSON-ready dict.

    ``source``: anything :func:`load_pairwise_test_set` reads (``split`` and ``limit`` apply to
    that loading only), or a loaded :class:`PairwiseTestSet`. Images are opened as RGB and scored
    ``batch_size`` at a time under ``torch.no_grad``, each with its pair's caption. The tie
    threshold is

    - ``tie_threshold`` when given (``validation_fraction`` must then be 0);
    - else, with ``0 < validation_fraction < 1``: fitted with :func:`best_tie_threshold` on a
      seeded random ``validation_fraction`` of the pairs (the first ``round(n * fraction)`` of
      ``np.random.default_rng(seed).permutation(n)``), the accuracies being reported on the
      remaining pairs only;
    - else 0.

    Keys: scorer, source, n_pairs (pairs reported on), accuracy, accuracy_no_ties, n_pairs_no_ties,
    tie_threshold, tie_threshold_from ("argument", "validation split" or "default"), label_ties,
    predicted_ties, validation_fraction, n_validation_pairs, validation_accuracy (None without a
    split), seed, and in_sample_best_tie_threshold / in_sample_best_accuracy: the threshold fitted
    on the reported pairs themselves (optimistic; run on a validation split to get a threshold for
    ``tie_threshold`` on the test split, as in the PickScore paper).
    """
    _check_batch_size(batch_size)
    if not 0.0 <= validation_fraction < 1.0:
        raise AccuracyDataError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    if tie_threshold is not None and validation_fraction > 0:
        raise AccuracyDataError("give either tie_threshold or validation_fraction > 0 (which fits the threshold), "
                                "not both.")
    test_set = source if isinstance(source, PairwiseTestSet) else load_pairwise_test_set(source, split, limit)
    labels = np.asarray(test_set.table["label_0"], dtype=np.float64)
    scores = _score_all(scorer, 2 * len(test_set), _pair_image_loader(test_set), batch_size, progress)
    score_0, score_1 = scores[0::2], scores[1::2]
    reported = np.arange(len(labels))
    validation: dict[str, Any] = {"n_validation_pairs": 0, "validation_accuracy": None}
    if tie_threshold is not None:
        threshold, threshold_from = tie_threshold, "argument"
    elif validation_fraction > 0:
        fitted, reported = _split_indices(len(labels), validation_fraction, seed)
        threshold, accuracy = best_tie_threshold(score_0[fitted], score_1[fitted], labels[fitted])
        threshold_from = "validation split"
        validation = {"n_validation_pairs": len(fitted), "validation_accuracy": accuracy}
    else:
        threshold, threshold_from = 0.0, "default"
    result = pairwise_accuracy(score_0[reported], score_1[reported], labels[reported], threshold)
    in_sample_threshold, in_sample_accuracy = best_tie_threshold(score_0[reported], score_1[reported],
                                                                 labels[reported])
    return {
        "scorer": scorer.name,
        "source": test_set.source,
        "n_pairs": result.n,
        "accuracy": result.accuracy,
        "accuracy_no_ties": result.accuracy_no_ties,
        "n_pairs_no_ties": result.n_no_ties,
        "tie_threshold": result.tie_threshold,
        "tie_threshold_from": threshold_from,
        "label_ties": result.label_ties,
        "predicted_ties": result.predicted_ties,
        "validation_fraction": validation_fraction,
        **validation,
        "seed": seed,
        "in_sample_best_tie_threshold": in_sample_threshold,
        "in_sample_best_accuracy": in_sample_accuracy,
    }


def evaluate_ranking(scorer: Callable, source: str | Path | RankedTestSet, images_root: str | Path | None = None,
                     batch_size: int = 16, limit: int | None = None, progress: bool = True) -> dict:
    """Score every image of a ranked test set and report :func:`ranking_accuracy` as a JSON-ready dict.

    ``source``: a JSON file :func:`load_ranked_test_set` reads (``images_root`` and ``limit``
    apply to that loading only), or a loaded :class:`RankedTestSet`. Images are opened as RGB and scored
    ``batch_size`` at a time (a batch may mix groups) under ``torch.no_grad``, each with its
    group's prompt. Keys: scorer, source, n_groups, n_images, n_pairs, pairwise_accuracy,
    spearman, n_spearman_groups.
    """
    _check_batch_size(batch_size)
    test_set = source if isinstance(source, RankedTestSet) else load_ranked_test_set(source, images_root, limit)
    sizes = [len(images) for images in test_set.image_paths]
    scores = _score_all(scorer, sum(sizes), _ranked_image_loader(test_set), batch_size, progress)
    result = ranking_accuracy(np.split(scores, np.cumsum(sizes)[:-1]), test_set.ranks)
    return {
        "scorer": scorer.name,
        "source": test_set.source,
        "n_groups": result.n_groups,
        "n_images": sum(sizes),
        "n_pairs": result.n_pairs,
        "pairwise_accuracy": result.pairwise_accuracy,
        "spearman": result.spearman,
        "n_spearman_groups": result.n_spearman_groups,
    }


# Helpers ------------------------------------------------------------------------------------------

def _as_vector(values: Scores, name: str) -> np.ndarray:
    """``values`` as a finite float64 [N] array (tensors are detached and moved to the CPU)."""
    if isinstance(values, torch.Tensor):
        array = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise AccuracyDataError(f"{name} must be a 1-D sequence of numbers: {error}") from error
    if array.ndim != 1:
        raise AccuracyDataError(f"{name} must be 1-D, got shape {tuple(array.shape)}.")
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        raise AccuracyDataError(f"{name} must be finite; index {bad[0]} is {array[bad[0]]}.")
    return array


def _score_difference(score_0: Scores, score_1: Scores) -> np.ndarray:
    first, second = _as_vector(score_0, "score_0"), _as_vector(score_1, "score_1")
    if len(first) != len(second):
        raise AccuracyDataError(f"score_0 has {len(first)} values but score_1 has {len(second)}.")
    return first - second


def _check_labels(label_0: Scores, count: int) -> np.ndarray:
    labels = _as_vector(label_0, "label_0")
    if len(labels) != count:
        raise AccuracyDataError(f"label_0 has {len(labels)} values but there are {count} score pairs.")
    if count == 0:
        raise AccuracyDataError("no pairs to evaluate.")
    bad = np.flatnonzero(~np.isin(labels, LABELS))
    if len(bad):
        raise AccuracyDataError(f"label_0 must be 1.0, 0.0 or 0.5 (tie); index {bad[0]} is {labels[bad[0]]}.")
    return labels


def _check_threshold(value: float, name: str) -> float:
    if not np.isfinite(value) or value < 0:
        raise AccuracyDataError(f"{name} must be a finite number >= 0, got {value}.")
    return float(value)


def _predictions(difference: np.ndarray, threshold: float) -> np.ndarray:
    """Predicted label_0 per pair: 0.5 when ``|p0 - p1| = |tanh(d / 2)| <= threshold``, else 1.0 / 0.0."""
    tie = np.abs(np.tanh(difference / 2.0)) <= threshold
    return np.where(tie, TIE, np.where(difference > 0, 1.0, 0.0))


def _credits(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 for agreement, 0.5 when exactly one of prediction and label is a tie, 0 for opposite images."""
    one_tie = (predicted == TIE) | (labels == TIE)
    return np.where(predicted == labels, 1.0, np.where(one_tie, 0.5, 0.0))


def _check_ranks(ranks: Sequence[int], count: int, group: int) -> np.ndarray:
    values = list(ranks)
    if len(values) != count:
        raise AccuracyDataError(f"group {group}: {count} scores but {len(values)} ranks.")
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise AccuracyDataError(f"group {group}: rank {position} must be an int, got {value!r}.")
    return np.asarray(values, dtype=np.float64)


def _ranked_pair_credit(scores: np.ndarray, ranks: np.ndarray) -> tuple[float, int]:
    """(summed credit, pair count) over the pairs i < j of one group with ranks[i] != ranks[j]."""
    upper = np.triu(np.ones((len(scores), len(scores)), dtype=bool), k=1)
    score_gap = (scores[:, None] - scores[None, :])[upper]
    rank_gap = (ranks[:, None] - ranks[None, :])[upper]
    ranked = rank_gap != 0
    agree = np.sign(score_gap[ranked]) == -np.sign(rank_gap[ranked])
    credit = np.where(score_gap[ranked] == 0, 0.5, agree.astype(np.float64))
    return float(credit.sum()), int(ranked.sum())


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (ascending); tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise AccuracyDataError(f"limit must be a positive int or None, got {limit!r}.")
    return limit


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AccuracyDataError(f"batch_size must be a positive int, got {batch_size!r}.")


def _check_table(table: datasets.Dataset, name: str) -> None:
    """Check the caption and label_0 columns row by row (images are checked when opened)."""
    columns = table.select_columns(["caption", "label_0"])[:]
    for row, (caption, label) in enumerate(zip(columns["caption"], columns["label_0"])):
        if not isinstance(caption, str):
            raise AccuracyDataError(f"{name} row {row}: column caption must be a string, got {caption!r}.")
        _check_label_value(label, f"{name} row {row}: column label_0")


def _check_label_value(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in LABELS:
        raise AccuracyDataError(f"{where} must be 1.0, 0.0 or 0.5 (tie), got {value!r}.")
    return float(value)


def _ranked_group(row: Any, path: Path, index: int, root: Path,
                  default_root: bool) -> tuple[str, list[Path], list[int]]:
    where = f"{path} row {index}"
    if not isinstance(row, dict):
        raise AccuracyDataError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    rank_key = "rank" if "rank" in row else "ranking"
    missing = [key for key in ("prompt", "image_path") if key not in row]
    missing += [] if rank_key in row else ["rank (or ranking)"]
    if missing:
        raise AccuracyDataError(f"{where}: missing key(s) {', '.join(missing)}; found {', '.join(row) or '(none)'}.")
    prompt, images, ranks = row["prompt"], row["image_path"], row[rank_key]
    if not isinstance(prompt, str):
        raise AccuracyDataError(f"{where}: key prompt must be a string, got {prompt!r}.")
    if not isinstance(images, list) or not images or not all(isinstance(image, str) and image for image in images):
        raise AccuracyDataError(f"{where}: key image_path must be a non-empty list of paths, got {images!r}.")
    if not isinstance(ranks, list) or not all(isinstance(rank, int) and not isinstance(rank, bool) for rank in ranks):
        raise AccuracyDataError(f"{where}: key {rank_key} must be a list of ints, got {ranks!r}.")
    if len(ranks) != len(images):
        raise AccuracyDataError(f"{where}: key image_path has {len(images)} paths but key {rank_key} has "
                                f"{len(ranks)} ranks.")
    files = [root / image for image in images]
    for position, file in enumerate(files):
        if not file.is_file():
            hint = " (paths are resolved against the JSON file's folder; pass images_root)" if default_root else ""
            raise AccuracyDataError(f"{where}: key image_path[{position}]: image file not found: {file}{hint}")
    return prompt, files, ranks


def _pair_image_loader(test_set: PairwiseTestSet) -> Callable[[int], tuple[Image.Image, str]]:
    """Image ``k`` of a pair table: pair ``k // 2``, column image_0 (even k) or image_1 (odd k)."""

    def load(index: int) -> tuple[Image.Image, str]:
        row, column = index // 2, f"image_{index % 2}"
        record = test_set.table[row]
        return open_pair_image(record[column], test_set.source, row, column).convert("RGB"), record["caption"]
    return load


def _ranked_image_loader(test_set: RankedTestSet) -> Callable[[int], tuple[Image.Image, str]]:
    """Image ``k`` of a ranked set, counting through the groups in order, with its group's prompt."""
    flat = [(group, path) for group, paths in enumerate(test_set.image_paths) for path in paths]

    def load(index: int) -> tuple[Image.Image, str]:
        group, path = flat[index]
        return open_pair_image(str(path), test_set.source, group, "image_path").convert("RGB"), test_set.prompts[group]
    return load


def _score_all(scorer: Callable, count: int, load: Callable[[int], tuple[Image.Image, str]], batch_size: int,
               progress: bool) -> np.ndarray:
    """float64 [count] scores of images ``load(0) ... load(count - 1)``, ``batch_size`` per scorer call."""
    scores = []
    bar = tqdm(total=count, desc=f"scoring {scorer.name}", unit="img", disable=not progress)
    for start in range(0, count, batch_size):
        images, prompts = zip(*(load(index) for index in range(start, min(start + batch_size, count))))
        with torch.no_grad():
            batch = scorer(list(images), list(prompts))
        if not isinstance(batch, torch.Tensor) or tuple(batch.shape) != (len(images),):
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(f"scorer {scorer.name} returned {shape} for {len(images)} images; expected a "
                             f"tensor of shape ({len(images)},).")
        scores.append(_as_vector(batch, f"scores of {scorer.name}"))
        bar.update(len(images))
    bar.close()
    return np.concatenate(scores)


def _split_indices(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (validation, rest) pair indices: a seeded random ``fraction`` of ``count`` and the remainder."""
    n_validation = int(round(count * fraction))
    if not 1 <= n_validation <= count - 1:
        raise AccuracyDataError(f"validation_fraction {fraction} of {count} pairs leaves {n_validation} validation "
                                f"and {count - n_validation} test pairs; both need at least one.")
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[:n_validation]), np.sort(order[n_validation:])
