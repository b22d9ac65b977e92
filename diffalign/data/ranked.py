"""Ranked preference records: one prompt, K >= 2 images, and how good each image is.

A ranked JSONL file holds one record per line (blank lines are skipped)::

    {"prompt": "a red circle",
     "images": ["img/0_0.png", "img/0_1.png", "img/0_2.png"],   # K >= 2; relative to the file's folder, or absolute
     "labels": [1.0, 0.25, 0.25],          # optional: training labels psi, higher is better
     "scores": [21.3, 20.1, 20.1],         # optional: one combined score per image, higher is better
     "ranks": [1, 2, 2],                   # optional: 1 = best, ties share a rank
     "raw_scores": {"pickscore": [...], "hpsv2.1": [...]},   # optional: per-scorer scores, higher is better
     "sources": ["sdxl", "sdxl", "sd15"],  # optional: the model that made each image
     "seeds": [11, 12, 13],                # optional: the seed of each image
     "id": "00042"}                        # optional: a stable prompt id

At least one of ``labels``, ``scores`` or ``ranks`` is required. Training uses
:attr:`RankedRecord.training_labels`: ``labels`` if given, else RankDPO win fractions of ``scores``,
else win fractions of the ranks (an image wins against every image ranked below it; ties count 1/2),
so psi_i = (wins_i) / (K - 1) lies in [0, 1]. Pairwise data is the case K = 2.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from diffalign.data.pairs import DataError, item_rng, open_pair_image
from diffalign.jsonl import jsonl_rows
from diffalign.scorers.ensemble import win_fractions

_LIST_KEYS = ("labels", "scores", "ranks", "sources", "seeds")


@dataclass
class RankedRecord:
    """K images of one prompt with their labels, scores and/or ranks (all lists of length K)."""

    prompt: str
    images: list[str]
    labels: list[float] | None = None
    scores: list[float] | None = None
    ranks: list[int] | None = None
    raw_scores: dict[str, list[float]] = field(default_factory=dict)
    sources: list[str] | None = None
    seeds: list[int] | None = None
    id: str | None = None

    @property
    def k(self) -> int:
        return len(self.images)

    @property
    def training_labels(self) -> list[float]:
        """psi [K], higher is better: ``labels``, else win fractions of ``scores``, else of ``ranks``."""
        if self.labels is not None:
            return [float(value) for value in self.labels]
        values = self.scores if self.scores is not None else [-rank for rank in self.ranks]
        return win_fractions(torch.tensor([[values]], dtype=torch.float64))[0].tolist()

    def to_json(self) -> dict:
        """The JSONL object of this record (keys that are None or empty are left out)."""
        return {key: value for key, value in asdict(self).items() if value not in (None, {})}


def record_from_json(row: dict, where: str, root: Path | None = None, check_files: bool = True) -> RankedRecord:
    """Validate one JSON object (``where`` names it in errors, e.g. ``file.jsonl:12``) and build a record.

    Relative image paths are resolved against ``root``; with ``check_files`` every image must exist.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    unknown = sorted(set(row) - {"prompt", "images", "raw_scores", "id", *_LIST_KEYS})
    if unknown:
        raise DataError(f"{where}: unknown keys {unknown}; a ranked record has prompt, images, labels, scores, ranks, "
                        "raw_scores, sources, seeds, id.")
    prompt, images = row.get("prompt"), row.get("images")
    if not isinstance(prompt, str):
        raise DataError(f"{where}: 'prompt' must be a string, got {prompt!r}.")
    if not isinstance(images, list) or len(images) < 2 or not all(isinstance(p, str) and p for p in images):
        raise DataError(f"{where}: 'images' must be a list of at least 2 image paths (K >= 2), got {images!r}.")
    k = len(images)
    if not any(row.get(key) is not None for key in ("labels", "scores", "ranks")):
        raise DataError(f"{where}: give at least one of 'labels', 'scores' or 'ranks' (one value per image).")
    for key in _LIST_KEYS:
        value = row.get(key)
        if value is not None and (not isinstance(value, list) or len(value) != k):
            raise DataError(f"{where}: '{key}' must be a list of {k} values (one per image), got {value!r}.")
    for key in ("labels", "scores"):
        if row.get(key) is not None and not all(_finite_number(v) for v in row[key]):
            raise DataError(f"{where}: '{key}' must hold finite numbers, got {row[key]!r}.")
    if row.get("labels") is not None and not all(0.0 <= v <= 1.0 for v in row["labels"]):
        raise DataError(f"{where}: 'labels' must lie in [0, 1] (win fractions), got {row['labels']!r}.")
    if row.get("ranks") is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                for v in row["ranks"]):
        raise DataError(f"{where}: 'ranks' must be integers >= 1 (1 = best), got {row['ranks']!r}.")
    raw = row.get("raw_scores") or {}
    if not isinstance(raw, dict) or not all(isinstance(v, list) and len(v) == k and all(_finite_number(x) for x in v)
                                            for v in raw.values()):
        raise DataError(f"{where}: 'raw_scores' must map scorer names to lists of {k} finite numbers.")
    paths = [str(_resolve(path, root)) for path in images]
    if check_files:
        missing = [path for path in paths if not Path(path).is_file()]
        if missing:
            raise DataError(f"{where}: image file not found: {missing[0]}" +
                            (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return RankedRecord(prompt=prompt, images=paths, labels=row.get("labels"), scores=row.get("scores"),
                        ranks=row.get("ranks"), raw_scores=raw, sources=row.get("sources"), seeds=row.get("seeds"),
                        id=None if row.get("id") is None else str(row["id"]))


def read_ranked_jsonl(path: str | Path, check_files: bool = True) -> list[RankedRecord]:
    """Every record of a ranked JSONL file (images relative to its folder). Raises DataError with file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ranked JSONL file not found.")
    records = []
    for where, row in jsonl_rows(path, DataError):
        records.append(record_from_json(row, where, path.resolve().parent, check_files))
    if not records:
        raise DataError(f"{path}: no ranked records.")
    return records


def write_ranked_jsonl(records: Iterable[RankedRecord], path: str | Path) -> Path:
    """Write records as ranked JSONL, atomically (a temporary file renamed into place)."""
    from diffalign.evaluation.generate import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(record.to_json()) + "\n" for record in records))
    return path


class RankedDataset(torch.utils.data.Dataset):
    """Map-style dataset of ranked records, each padded to ``k_max`` images.

    Item ``i``: ``caption`` (str), ``index`` (int), ``pixel_values`` float32 ``[k_max, 3, R, R]`` in
    [-1, 1] (zeros where padded), ``time_ids`` float32 ``[k_max, 6]``, ``labels`` float32 ``[k_max]``
    (psi, higher is better; 0 where padded) and ``mask`` bool ``[k_max]`` (True for real images). All
    K images of a record share one crop and flip, drawn from (seed, epoch, i) only, so items do
    not depend on worker count or order. ``k_max`` defaults to the largest K in ``records``.
    """

    def __init__(self, records: Sequence[RankedRecord], transform, seed: int = 0, k_max: int | None = None):
        if not records:
            raise DataError("a ranked dataset needs at least one record")
        largest = max(record.k for record in records)
        if k_max is not None and k_max < largest:
            raise DataError(f"k_max={k_max} is smaller than the largest record (K={largest})")
        self.records, self.transform, self.seed = list(records), transform, seed
        self.labels = [record.training_labels for record in self.records]  # derived once, not per item
        self.k_max, self.epoch = k_max or largest, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def captions(self) -> list[str]:
        """Every record's prompt, in item order."""
        return [record.prompt for record in self.records]

    def __getitem__(self, index: int) -> dict:
        record, k = self.records[int(index)], self.records[int(index)].k
        images = [open_pair_image(path, "ranked records", int(index), f"images[{j}]")
                  for j, path in enumerate(record.images)]
        pixels, time_ids = self.transform.transform_group(images, item_rng(self.seed, self.epoch, int(index)))
        pad = self.k_max - k
        return {"caption": record.prompt, "index": int(index),
                "pixel_values": torch.cat([pixels, pixels.new_zeros(pad, *pixels.shape[1:])]),
                "time_ids": torch.cat([time_ids, time_ids.new_zeros(pad, 6)]),
                "labels": torch.tensor(self.labels[int(index)] + [0.0] * pad, dtype=torch.float32),
                "mask": torch.tensor([True] * k + [False] * pad)}


# Pairs from ranked records --------------------------------------------------------------------------

GAPS = ("score", "rank")


def ranked_to_pairs(records: Sequence[RankedRecord], selection: str = "all", margin: float = 0.0,
                    gap: str = "score", scorer: str | None = None) -> list[dict]:
    """Pair JSONL rows (caption, image_0 = winner, image_1, label_0 = 1.0, gap) from ranked records.

    A record's images are ordered by one value per image, higher is better: ``raw_scores[scorer]`` when
    ``scorer`` is given, else ``scores``, else the training labels (win fractions). ``selection`` and
    ``margin`` are those of :func:`diffalign.data.selectors.select_pairs` (pairs within ``margin`` are
    ties and dropped). ``gap`` is each pair's difficulty for Curriculum DPO (larger = easier): the value
    difference (``score``) or the difference of the two images' positions in the order (``rank``, 1 for
    neighbours). Image paths are kept as they are (absolute when read by :func:`read_ranked_jsonl`).
    """
    from diffalign.data.selectors import select_pairs

    if gap not in GAPS:
        raise DataError(f"gap must be one of {GAPS}, got {gap!r}")
    rows = []
    for number, record in enumerate(records):
        if scorer is not None:
            if scorer not in record.raw_scores:
                raise DataError(f"record {number} ({record.prompt!r}) has no raw_scores[{scorer!r}]; it has "
                                f"{sorted(record.raw_scores) or 'none'}")
            values = record.raw_scores[scorer]
        else:
            values = record.scores if record.scores is not None else record.training_labels
        values = [float(value) for value in values]
        position = {image: place for place, image in
                    enumerate(sorted(range(record.k), key=lambda index: (-values[index], index)))}
        for winner, loser in select_pairs(values, selection, margin):
            difficulty = values[winner] - values[loser] if gap == "score" else position[loser] - position[winner]
            rows.append({"caption": record.prompt, "image_0": record.images[winner], "image_1": record.images[loser],
                         "label_0": 1.0, "gap": float(difficulty)})
    return rows


# Adapters -----------------------------------------------------------------------------------------

def records_from_hpdv2(test_json: str | Path, images_root: str | Path | None = None,
                       limit: int | None = None) -> list[RankedRecord]:
    """HPDv2 ranked lists (``test.json``: prompt, image_path, rank with 1 = best) as ranked records."""
    from diffalign.evaluation.scorer_accuracy import load_ranked_test_set

    test_set = load_ranked_test_set(test_json, images_root, limit)
    return [RankedRecord(prompt=prompt, images=[str(p) for p in paths], ranks=[int(r) for r in ranks], id=str(index))
            for index, (prompt, paths, ranks) in enumerate(zip(test_set.prompts, test_set.image_paths, test_set.ranks))]


def records_from_groups(rows: Iterable[dict], group_key: str = "prompt_id", image_key: str = "image_path",
                        rank_key: str = "rank", score_key: str | None = None, root: str | Path | None = None,
                        where: str = "groups") -> list[RankedRecord]:
    """ImageReward-style rows (one image per row: group id, prompt, image, rank and/or score) grouped
    into ranked records, groups in first-seen order. Groups with fewer than two images are an error."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if group_key not in row or "prompt" not in row or image_key not in row:
            raise DataError(f"{where}: each row needs '{group_key}', 'prompt' and '{image_key}'; got keys {sorted(row)}.")
        groups.setdefault(str(row[group_key]), []).append(row)
    records = []
    for group_id, members in groups.items():
        json_row = {"prompt": members[0]["prompt"], "images": [str(m[image_key]) for m in members], "id": group_id}
        if rank_key and all(rank_key in m for m in members):
            json_row["ranks"] = [m[rank_key] for m in members]
        if score_key and all(score_key in m for m in members):
            json_row["scores"] = [m[score_key] for m in members]
        records.append(record_from_json(json_row, f"{where}: group {group_id}", None if root is None else Path(root),
                                        check_files=root is not None))
    return records


def records_from_pairs(captions: Sequence[str], images_0: Sequence[str], images_1: Sequence[str],
                       labels_0: Sequence[float]) -> list[RankedRecord]:
    """Pairwise preferences (label_0 = 1: image_0 won) as K = 2 records with labels (label_0, 1 - label_0)."""
    return [RankedRecord(prompt=caption, images=[str(a), str(b)], labels=[float(label), 1.0 - float(label)])
            for caption, a, b, label in zip(captions, images_0, images_1, labels_0)]


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _resolve(path: str, root: Path | None) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() or root is None else root / candidate
