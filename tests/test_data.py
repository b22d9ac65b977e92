"""Pairwise preference data: pair-consistent transforms, loading, tie dropping, errors, streaming."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffalign.config import DataConfig
from diffalign.data import (
    DataError,
    PairStats,
    PairTransform,
    PreferencePairDataset,
    StreamingPreferencePairs,
    build_pair_dataset,
    load_preference_table,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "assets" / "data" / "tiny-prefs" / "pairs.jsonl"


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep parquet loads and filter caches out of the user's Hugging Face cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def gradient_image(width: int, height: int) -> Image.Image:
    """Red channel = 4 * x, green = 4 * y: every pixel tells where it came from."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    array = np.stack([4 * x, 4 * y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return Image.fromarray(array)


def solid(color: tuple[int, int, int], size: int = 16) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(folder: Path, rows: list[dict]) -> Path:
    """rows: caption, label_0 and optional image colours c0/c1; images are written next to the file."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        record = {"caption": row["caption"], "label_0": row["label_0"]}
        for side in (0, 1):
            name = f"{i}_{side}.png"
            solid(row.get(f"c{side}", (255, 0, 0) if side == 0 else (0, 0, 255))).save(folder / name)
            record[f"image_{side}"] = name
        lines.append(json.dumps(record))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_parquet(path: Path, files: int = 1) -> Path:
    """The shipped tiny set (ties included) as Pick-a-Pic style parquet, split over ``files`` files."""
    records = [json.loads(line) for line in TINY.read_text().splitlines() if line.strip()]
    folder = TINY.parent
    table = pa.table({
        "caption": [r["caption"] for r in records],
        "jpg_0": [(folder / r["image_0"]).read_bytes() for r in records],
        "jpg_1": [(folder / r["image_1"]).read_bytes() for r in records],
        "label_0": [float(r["label_0"]) for r in records],
        "best_image_uid": ["x"] * len(records),
    })
    path.mkdir(parents=True, exist_ok=True)
    step = -(-len(records) // files)
    for index in range(files):
        pq.write_table(table.slice(index * step, step), path / f"train-{index:05d}.parquet")
    return path if files > 1 else path / "train-00000.parquet"


# PairTransform -----------------------------------------------------------------------------------

def test_same_image_gets_identical_crop_and_flip():
    transform = PairTransform(24, center_crop=False, random_flip=True)
    image = gradient_image(40, 30)
    for seed in range(20):
        out = transform(image, image.copy(), random.Random(seed))
        assert torch.equal(out["pixel_values_w"], out["pixel_values_l"])
        assert torch.equal(out["time_ids_w"], out["time_ids_l"])


def test_flip_and_crop_are_reflected_in_pixels_and_time_ids():
    size, width, height = 16, 48, 16  # short side == resolution: no resize, crop offset only in x
    transform = PairTransform(size, center_crop=False, random_flip=True)
    image = gradient_image(width, height)
    flips, lefts = set(), set()
    for seed in range(40):
        out = transform(image, image, random.Random(seed))
        red = (out["pixel_values_w"][0, 0] + 1) * 127.5 / 4  # source x of each output column
        orig_h, orig_w, top, left, target_h, target_w = out["time_ids_w"].tolist()
        assert (orig_h, orig_w, top, target_h, target_w) == (height, width, 0, size, size)
        flipped = bool(red[0] > red[-1])
        source_left = round(float(red[-1] if flipped else red[0]))
        assert left == (width - source_left - size if flipped else source_left)
        flips.add(flipped)
        lefts.add(source_left)
    assert flips == {True, False}
    assert len(lefts) > 5


def test_center_crop_time_ids_and_no_flip():
    out = PairTransform(16, center_crop=True, random_flip=False)(gradient_image(48, 32), gradient_image(32, 32),
                                                                  random.Random(0))
    assert out["time_ids_w"].tolist() == [32, 48, 0, 4, 16, 16]  # resized to 24x16, centre crop at x=4
    assert out["time_ids_l"].tolist() == [32, 32, 0, 0, 16, 16]


def test_output_shape_dtype_and_range():
    out = PairTransform(32)(solid((255, 255, 255), 50).convert("L"), solid((0, 0, 0), 70).convert("RGBA"),
                           random.Random(0))
    for side in ("w", "l"):
        assert out[f"pixel_values_{side}"].shape == (3, 32, 32)
        assert out[f"pixel_values_{side}"].dtype == torch.float32
        assert out[f"time_ids_{side}"].shape == (6,)
        assert out[f"time_ids_{side}"].dtype == torch.float32
    assert torch.all(out["pixel_values_w"] == 1.0)
    assert torch.all(out["pixel_values_l"] == -1.0)


# JSONL loading -----------------------------------------------------------------------------------

def test_jsonl_ties_dropped_and_counted(tmp_path):
    path = write_jsonl(tmp_path, [{"caption": "a", "label_0": 1.0}, {"caption": "tie", "label_0": 0.5},
                                  {"caption": "b", "label_0": 0}, {"caption": "c", "label_0": 1}])
    dataset, stats = build_pair_dataset(DataConfig(format="jsonl", path=str(path), resolution=16), seed=0)
    assert stats == PairStats(rows=4, ties_dropped=1, pairs=3)
    assert isinstance(dataset, PreferencePairDataset)
    assert len(dataset) == 3
    assert dataset.captions() == ["a", "b", "c"]


def test_winner_follows_label_in_both_directions(tmp_path):
    red, blue = (255, 0, 0), (0, 0, 255)
    path = write_jsonl(tmp_path, [{"caption": "first wins", "label_0": 1.0, "c0": red, "c1": blue},
                                  {"caption": "second wins", "label_0": 0.0, "c0": blue, "c1": red}])
    dataset, _ = build_pair_dataset(DataConfig(format="jsonl", path=str(path), resolution=16), seed=0)
    for item in (dataset[0], dataset[1]):
        assert torch.all(item["pixel_values_w"][0] == 1.0) and torch.all(item["pixel_values_w"][2] == -1.0)
        assert torch.all(item["pixel_values_l"][0] == -1.0) and torch.all(item["pixel_values_l"][2] == 1.0)


def test_max_pairs_applies_after_dropping_ties(tmp_path):
    path = write_jsonl(tmp_path, [{"caption": "tie", "label_0": 0.5}, {"caption": "a", "label_0": 1.0},
                                  {"caption": "b", "label_0": 0.0}, {"caption": "c", "label_0": 1.0}])
    dataset, stats = build_pair_dataset(DataConfig(format="jsonl", path=str(path), max_pairs=2, resolution=16), 0)
    assert stats == PairStats(rows=4, ties_dropped=1, pairs=2)
    assert dataset.captions() == ["a", "b"]


def test_all_ties_or_empty_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "ties", [{"caption": "a", "label_0": 0.5}, {"caption": "b", "label_0": 0.5}])
    with pytest.raises(DataError, match=r"no preference pairs left: 2 rows, 2 ties"):
        load_preference_table(DataConfig(format="jsonl", path=str(path)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"no preference pairs left: 0 rows"):
        load_preference_table(DataConfig(format="jsonl", path=str(empty)))


@pytest.mark.parametrize("line, message", [
    ("{not json", r"pairs.jsonl:2: not valid JSON"),
    ('{"caption": "x", "image_0": "0_0.png", "image_1": "0_1.png"}', r"pairs.jsonl:2: missing key\(s\) label_0"),
    ('{"caption": "x", "image_0": "0_0.png", "image_1": "0_1.png", "label_0": 2}', r"pairs.jsonl:2: key label_0"),
    ('{"caption": "x", "image_0": "0_0.png", "image_1": "gone.png", "label_0": 1}',
     r"pairs.jsonl:2: key image_1: image file not found: .*gone.png"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path, [{"caption": "ok", "label_0": 1.0}])
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(DataError, match=message):
        load_preference_table(DataConfig(format="jsonl", path=str(path)))


# Pick-a-Pic (parquet) loading --------------------------------------------------------------------

def test_parquet_missing_column_is_named(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"caption": ["a"], "jpg_0": [b""], "label_0": [1.0]}), path)
    with pytest.raises(DataError, match=r"missing column\(s\) jpg_1; available columns: caption, jpg_0, label_0"):
        load_preference_table(DataConfig(path=str(path)))


def test_unreadable_image_names_row_and_column(tmp_path):
    good = png_bytes(solid((255, 0, 0)))
    path = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"caption": ["a", "b"], "jpg_0": [good, good], "jpg_1": [good, b"not an image"],
                             "label_0": [1.0, 1.0]}), path)
    dataset, stats = build_pair_dataset(DataConfig(path=str(path), resolution=16), seed=0)
    assert stats.pairs == 2
    dataset[0]
    with pytest.raises(DataError, match=r"broken.parquet row 1: column image_1 is not a readable image"):
        dataset[1]


def test_parquet_loads_normalised_and_drops_ties(tmp_path):
    path = tiny_parquet(tmp_path / "pq")
    table, stats = load_preference_table(DataConfig(path=str(path)))
    assert stats == PairStats(rows=26, ties_dropped=2, pairs=24)
    assert table.column_names == ["caption", "image_0", "image_1", "label_0"]
    assert isinstance(table[0]["image_0"], bytes)


# Determinism and streaming -----------------------------------------------------------------------

def test_items_are_deterministic_per_seed_epoch_index():
    config = DataConfig(format="jsonl", path=str(TINY), resolution=48, center_crop=False, random_flip=True)
    first, _ = build_pair_dataset(config, seed=3)
    second, _ = build_pair_dataset(config, seed=3)
    for index in (0, 5, 11):
        a, b = first[index], second[index]
        assert all(torch.equal(a[key], b[key]) for key in ("pixel_values_w", "pixel_values_l", "time_ids_w"))
    differs = False
    for index in range(len(first)):
        first.set_epoch(0)
        before = first[index]["pixel_values_w"]
        first.set_epoch(1)
        differs |= not torch.equal(before, first[index]["pixel_values_w"])
    assert differs


def test_streaming_parquet_matches_map_style(tmp_path):
    path = tiny_parquet(tmp_path / "pq")
    common = dict(path=str(path), resolution=32, center_crop=False, random_flip=True)
    mapped, _ = build_pair_dataset(DataConfig(**common), seed=1)
    streamed, stats = build_pair_dataset(DataConfig(**common, streaming=True), seed=1)
    assert isinstance(streamed, StreamingPreferencePairs)
    assert stats == PairStats(rows=None, ties_dropped=None, pairs=None)
    items = list(streamed)
    assert streamed.stats == PairStats(rows=26, ties_dropped=2, pairs=24)
    assert len(items) == len(mapped)
    for item in items:
        expected = mapped[item["index"]]
        assert item["caption"] == expected["caption"]
        for key in ("pixel_values_w", "pixel_values_l", "time_ids_w", "time_ids_l"):
            assert torch.equal(item[key], expected[key])
    limited, _ = build_pair_dataset(DataConfig(**common, streaming=True, max_pairs=5), seed=1)
    assert [item["index"] for item in limited] == [0, 1, 2, 3, 4]


def test_streaming_workers_split_shards_without_duplicates(tmp_path):
    folder = tiny_parquet(tmp_path / "pq", files=2)
    dataset, _ = build_pair_dataset(DataConfig(path=str(folder), resolution=16, streaming=True), seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    items = list(loader)
    assert len(items) == 24
    assert len({item["index"] for item in items}) == 24
    mapped, _ = build_pair_dataset(DataConfig(path=str(folder), resolution=16), seed=0)
    assert sorted(item["caption"] for item in items) == sorted(mapped.captions())


# Shipped assets and collation --------------------------------------------------------------------

def test_shipped_tiny_set_loads():
    dataset, stats = build_pair_dataset(DataConfig(format="jsonl", path=str(TINY), resolution=64), seed=0)
    assert stats == PairStats(rows=26, ties_dropped=2, pairs=24)
    assert len(dataset) == 24
    assert all(caption.startswith("a ") for caption in dataset.captions())


def test_dataloader_default_collate():
    dataset, _ = build_pair_dataset(DataConfig(format="jsonl", path=str(TINY), resolution=32), seed=0)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0)))
    assert set(batch) == {"caption", "index", "pixel_values_w", "pixel_values_l", "time_ids_w", "time_ids_l"}
    assert batch["pixel_values_w"].shape == batch["pixel_values_l"].shape == (4, 3, 32, 32)
    assert batch["time_ids_w"].shape == batch["time_ids_l"].shape == (4, 6)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    assert len(batch["caption"]) == 4 and isinstance(batch["caption"][0], str)
