"""Ranked preference records: JSONL format, validation errors, labels and adapters."""

import json

import pytest
from PIL import Image

from diffalign.data import DataError
from diffalign.data.ranked import (RankedRecord, ranked_to_pairs, read_ranked_jsonl, records_from_groups,
                                   records_from_hpdv2, records_from_pairs, write_ranked_jsonl)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    for name in ("a", "b", "c", "d"):
        Image.new("RGB", (8, 8), "red").save(folder / f"{name}.png")
    return folder


def write_lines(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_labels_from_scores_ranks_or_given(tmp_path, images):
    path = write_lines(tmp_path / "ranked.jsonl", [
        {"prompt": "p0", "images": ["img/a.png", "img/b.png", "img/c.png"], "scores": [3.0, 1.0, 1.0]},
        {"prompt": "p1", "images": ["img/a.png", "img/b.png", "img/c.png", "img/d.png"], "ranks": [2, 1, 4, 2]},
        {"prompt": "p2", "images": ["img/a.png", "img/b.png"], "labels": [0.0, 1.0], "scores": [5.0, 1.0]},
        ""])
    records = read_ranked_jsonl(path)
    assert [r.k for r in records] == [3, 4, 2]
    assert records[0].images[0] == str(images / "a.png")
    assert records[0].training_labels == pytest.approx([1.0, 0.25, 0.25])  # (2 wins, 0.5/2, 0.5/2)
    # ranks (2, 1, 4, 2): image 1 beats all (3/3); images 0 and 3 beat image 2 and tie each other (1.5/3)
    assert records[1].training_labels == pytest.approx([0.5, 1.0, 0.0, 0.5])
    assert records[2].training_labels == [0.0, 1.0]  # explicit labels win over scores


def test_round_trip_keeps_every_field(tmp_path, images):
    record = RankedRecord(prompt="p", images=[str(images / "a.png"), str(images / "b.png")], scores=[1.0, 2.0],
                          raw_scores={"pickscore": [20.0, 21.0]}, sources=["m1", "m2"], seeds=[3, 4], id="x")
    back = read_ranked_jsonl(write_ranked_jsonl([record], tmp_path / "out" / "r.jsonl"))
    assert back == [record]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "images": ["img/a.png"], "scores": [1.0]}, "at least 2 image paths"),
    ({"prompt": "p", "images": ["img/a.png", "img/b.png"]}, "at least one of 'labels', 'scores' or 'ranks'"),
    ({"prompt": "p", "images": ["img/a.png", "img/b.png"], "scores": [1.0]}, "'scores' must be a list of 2"),
    ({"prompt": "p", "images": ["img/a.png", "img/b.png"], "labels": [1.5, 0.0]}, "must lie in \\[0, 1\\]"),
    ({"prompt": "p", "images": ["img/a.png", "img/b.png"], "ranks": [0, 1]}, "integers >= 1"),
    ({"prompt": "p", "images": ["img/a.png", "img/b.png"], "scores": [1.0, float("nan")]}, "finite numbers"),
    ({"prompt": "p", "images": ["img/a.png", "img/zz.png"], "scores": [1.0, 2.0]}, "image file not found: .*zz.png"),
    ({"prompt": 3, "images": ["img/a.png", "img/b.png"], "scores": [1.0, 2.0]}, "'prompt' must be a string"),
    ({"prompt": "p", "images": ["img/a.png", "img/b.png"], "score": [1.0, 2.0]}, "unknown keys \\['score'\\]"),
    ({"prompt": "p", "images": ["img/a.png", "img/b.png"], "ranks": [1, 2], "raw_scores": {"x": [1]}}, "raw_scores"),
])
def test_bad_records_name_file_line_and_problem(tmp_path, images, row, message):
    good = {"prompt": "ok", "images": ["img/a.png", "img/b.png"], "ranks": [1, 2]}
    path = write_lines(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=f"bad.jsonl:2: .*{message}"):
        read_ranked_jsonl(path)


def test_not_json_and_empty_files_are_errors(tmp_path):
    with pytest.raises(DataError, match="x.jsonl:1: not valid JSON"):
        read_ranked_jsonl(write_lines(tmp_path / "x.jsonl", ["{nope"]))
    with pytest.raises(DataError, match="no ranked records"):
        read_ranked_jsonl(write_lines(tmp_path / "y.jsonl", [""]))


def test_hpdv2_adapter_reads_ranked_lists(tmp_path, images):
    (tmp_path / "test.json").write_text(json.dumps([
        {"prompt": "p0", "image_path": ["a.png", "b.png", "c.png"], "rank": [3, 1, 2]}]))
    (record,) = records_from_hpdv2(tmp_path / "test.json", images_root=images)
    assert record.ranks == [3, 1, 2] and record.images[1].endswith("b.png")
    assert record.training_labels == pytest.approx([0.0, 1.0, 0.5])


def test_group_and_pair_adapters(images):
    rows = [{"prompt_id": "g1", "prompt": "p", "image_path": "a.png", "rank": 2},
            {"prompt_id": "g1", "prompt": "p", "image_path": "b.png", "rank": 1},
            {"prompt_id": "g2", "prompt": "q", "image_path": "c.png", "rank": 1},
            {"prompt_id": "g2", "prompt": "q", "image_path": "d.png", "rank": 1}]
    first, second = records_from_groups(rows, root=images)
    assert first.id == "g1" and first.training_labels == [0.0, 1.0]
    assert second.training_labels == [0.5, 0.5]  # a tie: no preference, zero pair weight in training
    with pytest.raises(DataError, match="group g3.*at least 2"):
        records_from_groups([{"prompt_id": "g3", "prompt": "p", "image_path": "a.png", "rank": 1}], root=images)
    (pair,) = records_from_pairs(["cap"], ["x.png"], ["y.png"], [1.0])
    assert pair.k == 2 and pair.training_labels == [1.0, 0.0]


def test_ranked_dataset_pads_masks_and_shares_one_crop_and_flip(tmp_path):
    import numpy as np
    import torch

    from diffalign.data.ranked import RankedDataset
    from diffalign.data.transforms import PairTransform

    paths = []
    for k in range(3):  # 48x64 images whose left half is dark: a flip moves it to the right in all of them
        array = np.full((48, 64, 3), 200, dtype=np.uint8)
        array[:, :32] = 20 * k
        Image.fromarray(array).save(tmp_path / f"{k}.png")
        paths.append(str(tmp_path / f"{k}.png"))
    records = [RankedRecord("three", paths, scores=[3.0, 2.0, 1.0]), RankedRecord("two", paths[:2], ranks=[2, 1])]
    dataset = RankedDataset(records, PairTransform(32, center_crop=False, random_flip=True), seed=0)
    assert dataset.k_max == 3 and len(dataset) == 2
    short = dataset[1]
    assert short["mask"].tolist() == [True, True, False] and short["labels"].tolist() == [0.0, 1.0, 0.0]
    assert short["pixel_values"].shape == (3, 3, 32, 32) and short["pixel_values"][2].abs().sum() == 0
    flips = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        item = dataset[0]
        assert item["labels"].tolist() == [1.0, 0.5, 0.0]
        left_dark = [bool(item["pixel_values"][j, :, :, :8].mean() < item["pixel_values"][j, :, :, -8:].mean())
                     for j in range(3)]
        assert len(set(left_dark)) == 1  # the same flip for every image of the record
        assert torch.equal(item["time_ids"][0], item["time_ids"][1])  # the same crop
        flips.add(left_dark[0])
    assert flips == {True, False}
    with pytest.raises(DataError, match="k_max=2 is smaller"):
        RankedDataset(records, PairTransform(32), k_max=2)


def test_pairs_from_ranked_records_with_score_and_rank_gaps():
    record = RankedRecord(prompt="p", images=["a", "b", "c", "d"], scores=[1.0, 4.0, 2.5, 2.5],
                          raw_scores={"clip": [9.0, 1.0, 5.0, 3.0]})
    # order by scores: b (4.0), c (2.5), d (2.5, after c by index), a (1.0); c-d is a tie and dropped
    rows = ranked_to_pairs([record], "all", margin=0.0, gap="score")
    assert [(r["image_0"], r["image_1"], r["gap"]) for r in rows] == [
        ("b", "a", 3.0), ("c", "a", 1.5), ("d", "a", 1.5), ("b", "c", 1.5), ("b", "d", 1.5)]
    assert all(r["caption"] == "p" and r["label_0"] == 1.0 for r in rows)
    ranked = ranked_to_pairs([record], "adjacent", gap="rank")
    assert [(r["image_0"], r["image_1"], r["gap"]) for r in ranked] == [("b", "c", 1.0), ("d", "a", 1.0)]
    by_clip = ranked_to_pairs([record], "best-worst", margin=7.0, gap="rank", scorer="clip")
    assert [(r["image_0"], r["image_1"], r["gap"]) for r in by_clip] == [("a", "b", 3.0)]  # 9 - 1 > 7
    assert ranked_to_pairs([record], "best-worst", margin=8.0, scorer="clip") == []  # gap 8 is within the margin
    with pytest.raises(DataError, match=r"raw_scores\['hps'\]"):
        ranked_to_pairs([record], scorer="hps")
    with pytest.raises(DataError, match="gap must be one of"):
        ranked_to_pairs([record], gap="size")


def test_cli_data_pairs_writes_curriculum_ready_jsonl(tmp_path, images, capsys):
    from diffalign.cli import main
    from diffalign.config import DataConfig
    from diffalign.data.pairs import load_preference_table

    ranked = write_lines(tmp_path / "ranked.jsonl", [
        {"prompt": "p0", "images": ["img/a.png", "img/b.png", "img/c.png"], "scores": [3.0, 1.0, 2.0]}])
    out = tmp_path / "pairs" / "pairs.jsonl"
    assert main(["data", "pairs", "--ranked", str(ranked), "--out", str(out), "--gap", "rank"]) == 0
    assert "3 pairs from 1 ranked records" in capsys.readouterr().out
    table, stats = load_preference_table(DataConfig(format="jsonl", path=str(out)))
    assert stats.pairs == 3 and table["gap"] == [2.0, 1.0, 1.0]
    assert table["image_0"] == [str(images / "a.png"), str(images / "a.png"), str(images / "c.png")]
