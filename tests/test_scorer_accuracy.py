"""Scorer accuracy on human preference test sets: tie protocol, thresholds, rankings, loaders, drivers."""

from __future__ import annotations

import io
import json
import math

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffalign.data.pairs import DataError
from diffalign.evaluation.scorer_accuracy import (
    AccuracyDataError,
    best_tie_threshold,
    evaluate_pairwise,
    evaluate_ranking,
    load_pairwise_test_set,
    load_ranked_test_set,
    pair_probabilities,
    pairwise_accuracy,
    ranking_accuracy,
    spearman_rho,
)
from diffalign.paths import asset

RED, BLUE, DARK_RED = (255, 0, 0), (0, 0, 255), (128, 0, 0)
CHANNELS = {"red": 0, "green": 1, "blue": 2}

# Six pairs covering every credit case (score_1 = 0, so score_0 is the difference d).
# |p0 - p1| = |tanh(d / 2)|: 0.762, 0.762, 0, 0.0997, 0.0997, 0.149.
SIX_D = [2.0, -2.0, 0.0, 0.2, -0.2, 0.3]
SIX_LABELS = [1.0, 1.0, 0.5, 0.5, 0.5, 0.0]


class MeanRedScorer:
    """Fake scorer: the mean red channel in [0, 1]; ignores the prompt. Records each call's prompts."""

    name = "mean-red"

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, images, prompts):
        assert len(images) == len(prompts) and all(image.mode == "RGB" for image in images)
        self.calls.append(list(prompts))
        return torch.tensor([np.asarray(image)[..., 0].mean() / 255 for image in images], dtype=torch.float32)


class PromptChannelScorer(MeanRedScorer):
    """Fake prompt-dependent scorer: the mean of the channel the prompt names (red, green or blue)."""

    name = "prompt-channel"

    def __call__(self, images, prompts):
        self.calls.append(list(prompts))
        return torch.tensor([np.asarray(image)[..., CHANNELS[prompt]].mean() / 255
                             for image, prompt in zip(images, prompts)])


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep parquet load caches out of the user's Hugging Face cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def png_bytes(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)
    return path


# (color_0, color_1, label_0): with mean-red, credits 1, 0, 1 (tie = tie) and 0.5 (label tie, predicted 0).
DRIVER_PAIRS = [(RED, BLUE, 1.0), (RED, BLUE, 0.0), (RED, RED, 0.5), (DARK_RED, BLUE, 0.5)]


def write_parquet(path, pairs=DRIVER_PAIRS, **extra_columns):
    frame = pd.DataFrame({"caption": [f"pair {i}" for i in range(len(pairs))],
                          "jpg_0": [png_bytes(pair[0]) for pair in pairs],
                          "jpg_1": [png_bytes(pair[1]) for pair in pairs],
                          "label_0": [pair[2] for pair in pairs], **extra_columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    return path


def write_jsonl(folder, pairs=DRIVER_PAIRS):
    lines = []
    for index, (color_0, color_1, label) in enumerate(pairs):
        write_png(folder / "images" / f"{index}_0.png", color_0)
        write_png(folder / "images" / f"{index}_1.png", color_1)
        lines.append(json.dumps({"caption": f"pair {index}", "image_0": f"images/{index}_0.png",
                                 "image_1": f"images/{index}_1.png", "label_0": label}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ranked(folder, groups, rank_key="rank"):
    """HPDv2-style test.json beside a test/ image folder; groups: (prompt, colors, ranks)."""
    rows = []
    for group, (prompt, colors, ranks) in enumerate(groups):
        names = [f"{group:03d}_{k}.png" for k in range(len(colors))]
        for name, color in zip(names, colors):
            write_png(folder / "test" / name, color)
        rows.append({"prompt": prompt, "image_path": names, rank_key: ranks})
    path = folder / "test.json"
    path.write_text(json.dumps(rows))
    return path


RANKED_GROUPS = [("red", [RED, BLUE, DARK_RED], [1, 3, 2]), ("blue", [RED, BLUE], [2, 1])]


# Metrics ----------------------------------------------------------------------------------------

def test_pair_probabilities_is_the_two_way_softmax():
    p0 = pair_probabilities(torch.tensor([0.0, 1.0, 1000.0]), [0.0, 0.0, 0.0])
    assert p0.tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-1)), 1.0])
    assert pair_probabilities([0.0], [1000.0]).tolist() == [0.0]


@pytest.mark.parametrize("threshold, accuracy, predicted_ties", [
    (0.0, 3.0 / 6, 1),  # predictions 1, 0, T, 1, 0, 1 -> credits 1, 0, 1, .5, .5, 0
    (0.2, 4.5 / 6, 4),  # predictions 1, 0, T, T, T, T -> credits 1, 0, 1, 1, 1, .5
])
def test_pairwise_accuracy_tie_protocol_by_hand(threshold, accuracy, predicted_ties):
    result = pairwise_accuracy(torch.tensor(SIX_D), np.zeros(6), SIX_LABELS, tie_threshold=threshold)
    assert result.accuracy == pytest.approx(accuracy)
    assert result.accuracy_no_ties == pytest.approx(1 / 3)  # pairs 0, 1, 5 at threshold 0: credits 1, 0, 0
    assert (result.n, result.n_no_ties, result.label_ties, result.predicted_ties) == (6, 3, 3, predicted_ties)
    assert result.tie_threshold == threshold
    assert set(result.to_dict()) == {"accuracy", "accuracy_no_ties", "tie_threshold", "n", "n_no_ties",
                                     "label_ties", "predicted_ties"}


def test_pairwise_accuracy_without_decided_labels_has_no_no_ties_accuracy():
    result = pairwise_accuracy([1.0, 2.0], [1.0, 0.0], [0.5, 0.5])
    assert result.accuracy == pytest.approx(0.75)
    assert result.accuracy_no_ties is None and result.n_no_ties == 0


@pytest.mark.parametrize("args, message", [
    (([1.0, 2.0], [0.0], [1.0, 1.0]), "score_0 has 2 values but score_1 has 1"),
    (([1.0], [0.0], [1.0, 0.0]), "label_0 has 2 values but there are 1 score pairs"),
    (([1.0, 2.0], [0.0, 0.0], [1.0, 0.7]), r"label_0 must be 1.0, 0.0 or 0.5 \(tie\); index 1 is 0.7"),
    (([1.0, float("nan")], [0.0, 0.0], [1.0, 0.0]), "score_0 must be finite; index 1 is nan"),
    (([], [], []), "no pairs to evaluate"),
])
def test_pairwise_accuracy_bad_input(args, message):
    with pytest.raises(AccuracyDataError, match=message):
        pairwise_accuracy(*args)


def test_negative_threshold_is_an_error():
    with pytest.raises(AccuracyDataError, match="tie_threshold must be a finite number >= 0"):
        pairwise_accuracy([1.0], [0.0], [1.0], tie_threshold=-0.1)


def test_best_tie_threshold_picks_the_smallest_best():
    # Accuracy by threshold: [0, .0997) 3/6, [.0997, .149) 4/6, [.149, ...) 4.5/6 (all-ties included).
    threshold, accuracy = best_tie_threshold(SIX_D, np.zeros(6), SIX_LABELS)
    assert threshold == pytest.approx(math.tanh(0.15))
    assert accuracy == pytest.approx(0.75)
    assert best_tie_threshold(SIX_D, np.zeros(6), SIX_LABELS, candidates=[0.5, 0.12, 0.0]) == (0.5, 0.75)
    assert best_tie_threshold(SIX_D, np.zeros(6), SIX_LABELS, candidates=[0.0, 0.12]) == (0.12, pytest.approx(4 / 6))
    with pytest.raises(AccuracyDataError, match="candidates is empty"):
        best_tie_threshold(SIX_D, np.zeros(6), SIX_LABELS, candidates=[])


def test_ranking_accuracy_variable_k_and_equal_ranks():
    scores = [torch.tensor([3.0, 1.0, 2.0]),  # perfect: 3 of 3 pairs
              [1.0, 2.0, 2.0, 0.0],          # ranks 1, 1, 2, 3: pair (0, 1) skipped; credits 0, 1, .5, 1, 1
              np.array([5.0, 4.0]),          # reversed: 0 of 1
              [1.0, 1.0, 1.0],               # constant scores: 3 pairs at 0.5, no Spearman
              [7.0, 3.0]]                    # equal ranks: no pairs, no Spearman
    ranks = [[1, 3, 2], [1, 1, 2, 3], [2, 1], [1, 2, 3], [1, 1]]
    result = ranking_accuracy(scores, ranks)
    assert result.pairwise_accuracy == pytest.approx((3 + 3.5 + 0 + 1.5) / 12)
    assert result.spearman == pytest.approx((1.0 + 0.5 - 1.0) / 3)
    assert (result.n_groups, result.n_pairs, result.n_spearman_groups) == (5, 12, 3)


def test_ranking_accuracy_bad_input():
    with pytest.raises(AccuracyDataError, match="scores has 1 groups but ranks has 2"):
        ranking_accuracy([[1.0]], [[1], [1]])
    with pytest.raises(AccuracyDataError, match="group 1: 2 scores but 3 ranks"):
        ranking_accuracy([[1.0], [1.0, 2.0]], [[1], [1, 2, 3]])
    with pytest.raises(AccuracyDataError, match="group 0: rank 1 must be an int, got 2.5"):
        ranking_accuracy([[1.0, 2.0]], [[1, 2.5]])


def test_spearman_against_hand_computation():
    # No ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) with rank differences -1, 1, -1, 1, 0.
    assert spearman_rho([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))
    # Ties: average ranks [2, 3.5, 3.5, 1] and [3.5, 3.5, 2, 1]; centred products 2.25 / sqrt(4.5 * 4.5).
    assert spearman_rho([1, 2, 2, 0], [-1, -1, -2, -3]) == pytest.approx(0.5)
    assert spearman_rho([1, 2], [2, 1]) == pytest.approx(-1.0)
    assert spearman_rho([1, 1, 1], [1, 2, 3]) is None
    assert spearman_rho([1], [1]) is None


# Loaders ----------------------------------------------------------------------------------------

def test_parquet_file_and_folder_keep_ties(tmp_path):
    single = load_pairwise_test_set(write_parquet(tmp_path / "one" / "test.parquet"))
    assert len(single) == 4
    assert single.table.column_names == ["caption", "image_0", "image_1", "label_0"]
    assert single.table["label_0"] == [1.0, 0.0, 0.5, 0.5]
    write_parquet(tmp_path / "many" / "a.parquet", DRIVER_PAIRS[:2])
    write_parquet(tmp_path / "many" / "sub" / "b.parquet", DRIVER_PAIRS[2:])
    folder = load_pairwise_test_set(tmp_path / "many", limit=3)
    assert folder.table["label_0"] == [1.0, 0.0, 0.5]


def test_jsonl_pairs_keep_ties_and_resolve_paths(tmp_path):
    test_set = load_pairwise_test_set(write_jsonl(tmp_path / "set"), limit=3)
    assert test_set.table["label_0"] == [1.0, 0.0, 0.5]
    assert test_set.table[0]["image_0"] == str((tmp_path / "set" / "images" / "0_0.png").resolve())
    shipped = asset("data", "tiny-prefs", "pairs.jsonl")
    assert len(load_pairwise_test_set(shipped)) == sum(1 for line in open(shipped) if line.strip())


def test_pairwise_loader_errors(tmp_path):
    """Reading the files is shared with training (diffalign.data.pairs, DataError); the stricter
    label rule of test sets raises AccuracyDataError, a DataError too."""
    bad_columns = tmp_path / "cols.parquet"
    pd.DataFrame({"caption": ["a"], "jpg_0": [b""], "label_0": [1.0]}).to_parquet(bad_columns)
    with pytest.raises(DataError, match=r"cols.parquet: missing column\(s\) jpg_1"):
        load_pairwise_test_set(bad_columns)
    bad_label = write_parquet(tmp_path / "label.parquet", [(RED, BLUE, 1.0), (RED, BLUE, 0.3)])
    with pytest.raises(AccuracyDataError, match=r"label.parquet row 1: column label_0 must be 1.0, 0.0 or 0.5"):
        load_pairwise_test_set(bad_label)
    with pytest.raises(DataError, match="missing.parquet: parquet file not found"):
        load_pairwise_test_set(tmp_path / "missing.parquet")
    jsonl = write_jsonl(tmp_path / "set")
    (tmp_path / "set" / "images" / "1_1.png").unlink()
    with pytest.raises(DataError, match=r"pairs.jsonl:2: key image_1: image file not found: .*1_1.png"):
        load_pairwise_test_set(jsonl)


def test_unreadable_image_names_row_and_column(tmp_path):
    path = tmp_path / "broken.parquet"
    pd.DataFrame({"caption": ["a", "b"], "jpg_0": [png_bytes(RED)] * 2, "jpg_1": [png_bytes(BLUE), b"junk"],
                  "label_0": [1.0, 0.0]}).to_parquet(path)
    with pytest.raises(DataError, match=r"broken.parquet row 1: column image_1 is not a readable image"):
        evaluate_pairwise(MeanRedScorer(), path, progress=False)


def test_ranked_loader_roots_and_alias(tmp_path):
    path = write_ranked(tmp_path, RANKED_GROUPS, rank_key="ranking")
    test_set = load_ranked_test_set(path, images_root=tmp_path / "test", limit=1)
    assert test_set.prompts == ["red"] and test_set.ranks == [[1, 3, 2]]
    assert test_set.image_paths[0][2] == tmp_path / "test" / "000_2.png"
    rows = json.loads(path.read_text())
    for row in rows:
        row["image_path"] = [f"test/{name}" for name in row["image_path"]]
    path.write_text(json.dumps(rows))
    assert len(load_ranked_test_set(path)) == 2  # relative to the JSON file's folder by default


@pytest.mark.parametrize("edit, message", [
    (lambda row: row.update(rank=[1, 2]), r"row 1: key image_path has 3 paths but key rank has 2 ranks"),
    (lambda row: row.pop("rank"), r"row 1: missing key\(s\) rank \(or ranking\)"),
    (lambda row: row.update(image_path=row["image_path"][:2] + ["nope.png"]),
     r"row 1: key image_path\[2\]: image file not found: .*nope.png"),
    (lambda row: row.update(rank=[1, "2", 3]), r"row 1: key rank must be a list of ints"),
])
def test_ranked_loader_errors(tmp_path, edit, message):
    path = write_ranked(tmp_path, [RANKED_GROUPS[1], RANKED_GROUPS[0]])
    rows = json.loads(path.read_text())
    edit(rows[1])
    path.write_text(json.dumps(rows))
    with pytest.raises(AccuracyDataError, match=r"test.json " + message):
        load_ranked_test_set(path, images_root=tmp_path / "test")


def test_ranked_loader_hints_at_images_root(tmp_path):
    path = write_ranked(tmp_path, RANKED_GROUPS)
    with pytest.raises(AccuracyDataError, match="row 0: key image_path.*pass images_root"):
        load_ranked_test_set(path)


# Drivers ----------------------------------------------------------------------------------------

def test_evaluate_pairwise_end_to_end(tmp_path):
    path = write_parquet(tmp_path / "test.parquet")
    scorer = MeanRedScorer()
    report = evaluate_pairwise(scorer, path, batch_size=3, progress=False)
    json.dumps(report)
    assert [len(call) for call in scorer.calls] == [3, 3, 2]
    assert scorer.calls[0] == ["pair 0", "pair 0", "pair 1"]
    assert report["accuracy"] == pytest.approx(2.5 / 4)
    assert report["accuracy_no_ties"] == pytest.approx(0.5)
    counts = ("n_pairs", "n_pairs_no_ties", "label_ties", "predicted_ties")
    assert [report[key] for key in counts] == [4, 2, 2, 1]
    assert (report["scorer"], report["source"], report["tie_threshold"], report["tie_threshold_from"]) == (
        "mean-red", str(path), 0.0, "default")
    assert report["validation_accuracy"] is None and report["n_validation_pairs"] == 0
    # In sample, tying the dark-red pair (|p0 - p1| = tanh(128 / 255 / 2)) is best: 3 of 4.
    assert report["in_sample_best_tie_threshold"] == pytest.approx(math.tanh(128 / 255 / 2))
    assert report["in_sample_best_accuracy"] == pytest.approx(0.75)
    fixed = evaluate_pairwise(MeanRedScorer(), write_jsonl(tmp_path / "set"), tie_threshold=0.3, progress=False)
    assert (fixed["accuracy"], fixed["predicted_ties"], fixed["tie_threshold_from"]) == (0.75, 2, "argument")


def test_evaluate_pairwise_fits_threshold_on_validation_split(tmp_path):
    pairs = DRIVER_PAIRS * 3
    report = evaluate_pairwise(MeanRedScorer(), write_parquet(tmp_path / "test.parquet", pairs),
                               validation_fraction=0.5, seed=3, progress=False)
    order = np.random.default_rng(3).permutation(len(pairs))
    fitted, reported = np.sort(order[:6]), np.sort(order[6:])
    red = {RED: 1.0, BLUE: 0.0, DARK_RED: 128 / 255}
    score_0 = np.array([red[pair[0]] for pair in pairs])
    score_1 = np.array([red[pair[1]] for pair in pairs])
    labels = np.array([pair[2] for pair in pairs])
    threshold, validation_accuracy = best_tie_threshold(score_0[fitted], score_1[fitted], labels[fitted])
    expected = pairwise_accuracy(score_0[reported], score_1[reported], labels[reported], threshold)
    assert (report["n_validation_pairs"], report["n_pairs"]) == (6, 6)
    assert report["tie_threshold_from"] == "validation split"
    assert report["tie_threshold"] == pytest.approx(threshold)
    assert report["validation_accuracy"] == pytest.approx(validation_accuracy)
    assert report["accuracy"] == pytest.approx(expected.accuracy)


def test_evaluate_pairwise_bad_settings(tmp_path):
    path = write_parquet(tmp_path / "test.parquet")
    with pytest.raises(AccuracyDataError, match="either tie_threshold or validation_fraction"):
        evaluate_pairwise(MeanRedScorer(), path, tie_threshold=0.1, validation_fraction=0.5, progress=False)
    with pytest.raises(AccuracyDataError, match="leaves 0 validation and 4 test pairs"):
        evaluate_pairwise(MeanRedScorer(), path, validation_fraction=0.1, progress=False)


def test_scorer_with_wrong_output_shape_is_named(tmp_path):
    class Broken(MeanRedScorer):
        name = "broken"

        def __call__(self, images, prompts):
            return torch.zeros(len(images), 2)

    with pytest.raises(ValueError, match=r"scorer broken returned \(2, 2\) for 2 images"):
        evaluate_pairwise(Broken(), write_parquet(tmp_path / "test.parquet"), batch_size=2, progress=False)


def test_evaluate_ranking_end_to_end(tmp_path):
    path = write_ranked(tmp_path, RANKED_GROUPS)
    scorer = PromptChannelScorer()
    report = evaluate_ranking(scorer, path, images_root=tmp_path / "test", batch_size=2, progress=False)
    json.dumps(report)
    assert scorer.calls == [["red", "red"], ["red", "blue"], ["blue"]]  # a batch may mix groups
    assert report == {"scorer": "prompt-channel", "source": str(path), "n_groups": 2, "n_images": 5, "n_pairs": 4,
                      "pairwise_accuracy": 1.0, "spearman": pytest.approx(1.0), "n_spearman_groups": 2}
    red_only = evaluate_ranking(MeanRedScorer(), path, images_root=tmp_path / "test", progress=False)
    assert red_only["pairwise_accuracy"] == pytest.approx(0.75)  # the blue group comes out reversed
    assert red_only["spearman"] == pytest.approx(0.0)
