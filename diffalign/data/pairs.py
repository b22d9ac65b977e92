"""Pairwise preference datasets: Pick-a-Pic v2 style tables and local JSONL files.

Both formats are normalised to one table with columns ``caption`` (str), ``image_0`` and
``image_1`` (JPEG/PNG bytes for Pick-a-Pic, absolute path str for JSONL) and ``label_0`` (float:
1.0 = image_0 won, 0.0 = image_1 won, 0.5 = tie). Ties carry no preference and are dropped and
counted. Items are decoded lazily and augmented with :class:`PairTransform`, deterministically per
(seed, epoch, index).
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import datasets
import torch
from PIL import Image

from diffalign.config import DataConfig
from diffalign.data.transforms import PairTransform
from diffalign.jsonl import jsonl_rows

REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
COLUMNS = ("caption", "image_0", "image_1", "label_0")  # normalised table columns = JSONL keys
TIE = 0.5
_RENAME = {"jpg_0": "image_0", "jpg_1": "image_1"}
_JSONL_FEATURES = datasets.Features({"caption": datasets.Value("string"), "image_0": datasets.Value("string"),
                                     "image_1": datasets.Value("string"), "label_0": datasets.Value("float64")})


class DataError(ValueError):
    """Bad preference data; the message names the file or dataset, the row and the column."""


@dataclass
class PairStats:
    """Counts of a preference table.

    ``rows``: rows read (ties included); ``ties_dropped``: rows with label_0 == 0.5; ``pairs``:
    pairs kept after dropping ties and applying ``max_pairs``. For a streaming table all three are
    None up front; :class:`StreamingPreferencePairs` counts them while iterating.
    """

    rows: int | None
    ties_dropped: int | None
    pairs: int | None


def load_preference_table(
        config: DataConfig) -> tuple[datasets.Dataset | datasets.IterableDataset, PairStats]:
    """Load and normalise the pairwise table described by ``config``.

    Map-style tables come back without ties and cut to ``config.max_pairs``. Streaming tables
    (``format="pickapic"`` with ``streaming=True``) come back as they are, ties included: the
    wrapper skips and counts them while iterating. Raises :class:`DataError` on bad input or when
    no pairs remain.
    """
    if config.format == "jsonl":
        table, source = load_pairs_jsonl(Path(config.path)), config.path
    elif config.format == "pickapic":
        table, source = load_pickapic_table(config.path, config.split, config.streaming), config.path
    else:
        raise DataError(f"Unknown data format {config.format!r}; expected 'pickapic' or 'jsonl'.")
    if isinstance(table, datasets.IterableDataset):
        return table, PairStats(rows=None, ties_dropped=None, pairs=None)
    rows = len(table)
    table = table.filter(_not_tie_batch, input_columns="label_0", batched=True, with_indices=True,
                         fn_kwargs={"source": source}, desc="Dropping ties")
    ties = rows - len(table)
    if config.max_pairs is not None and len(table) > config.max_pairs:
        table = table.select(range(config.max_pairs))
    if len(table) == 0:
        raise DataError(f"{source}: no preference pairs left: {rows} rows, {ties} ties dropped "
                        f"(label_0 == 0.5), max_pairs={config.max_pairs}.")
    return table, PairStats(rows=rows, ties_dropped=ties, pairs=len(table))


def build_pair_dataset(config: DataConfig, seed: int) -> tuple[torch.utils.data.Dataset, PairStats]:
    """Load the table of ``config`` and wrap it: :class:`PreferencePairDataset` (map-style) or
    :class:`StreamingPreferencePairs` (streaming), with the config's :class:`PairTransform`."""
    table, stats = load_preference_table(config)
    transform = PairTransform(config.resolution, config.center_crop, config.random_flip)
    if isinstance(table, datasets.IterableDataset):
        return StreamingPreferencePairs(table, transform, seed, max_pairs=config.max_pairs, source=config.path), stats
    return PreferencePairDataset(table, transform, seed, source=config.path), stats


class PreferencePairDataset(torch.utils.data.Dataset):
    """Map-style dataset over a tie-free normalised table.

    Item ``i`` is a dict: ``caption`` (str), ``index`` (int, = i), ``pixel_values_w`` and
    ``pixel_values_l`` (float32 ``[3, R, R]`` in [-1, 1]), ``time_ids_w`` and ``time_ids_l``
    (float32 ``[6]``, SDXL micro-conditioning). ``_w`` is the preferred image. The augmentation
    rng is seeded from (seed, epoch, i) only, so an item is the same whatever the worker count or
    order, which makes runs reproducible and resumable.
    """

    def __init__(self, table: datasets.Dataset, transform: PairTransform, seed: int,
                 source: str = "dataset") -> None:
        _check_columns(table.column_names, source, COLUMNS)
        self.table = table
        self.transform = transform
        self.seed = seed
        self.source = source
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation draws of ``epoch`` from now on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _make_item(self.table[int(index)], int(index), self.transform,
                          item_rng(self.seed, self.epoch, int(index)), self.source)

    def captions(self) -> list[str]:
        """All captions, in item order (reads the caption column only, decodes no image)."""
        return list(self.table.select_columns("caption")["caption"])


class StreamingPreferencePairs(torch.utils.data.IterableDataset):
    """Iterable dataset over a streaming normalised table; yields the same items as
    :class:`PreferencePairDataset`.

    Ties are skipped while iterating. ``stats`` (a :class:`PairStats`) counts rows, ties and pairs
    of the current pass in the iterating process: with DataLoader workers the counts live in the
    worker processes. With workers, datasets gives each worker its own shards (files); workers
    beyond the number of shards get none, and each worker stops after its share of ``max_pairs``.
    ``index`` is the pair's position in the stream with one worker; with ``n`` workers it is
    ``k * n + worker_id`` for the worker's ``k``-th pair, so augmentations depend on the worker
    count. The stream is read in file order, unshuffled.
    """

    def __init__(self, table: datasets.IterableDataset, transform: PairTransform, seed: int,
                 max_pairs: int | None = None, source: str = "dataset") -> None:
        self.table = table
        self.transform = transform
        self.seed = seed
        self.max_pairs = max_pairs
        self.source = source
        self.epoch = 0
        self.stats = PairStats(rows=0, ties_dropped=0, pairs=0)

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation draws of ``epoch`` from now on."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        limit = self.max_pairs
        if limit is not None:
            limit = limit // num_workers + (1 if worker_id < limit % num_workers else 0)
        self.stats = PairStats(rows=0, ties_dropped=0, pairs=0)
        if limit == 0:
            return
        for row in self.table:
            if self.stats.rows == 0:
                _check_columns(list(row), self.source, COLUMNS)
            self.stats.rows += 1
            label = _check_label(row["label_0"], self.source, self.stats.rows - 1)
            if label == TIE:
                self.stats.ties_dropped += 1
                continue
            index = self.stats.pairs * num_workers + worker_id
            self.stats.pairs += 1
            yield _make_item(row, index, self.transform, item_rng(self.seed, self.epoch, index), self.source)
            if limit is not None and self.stats.pairs >= limit:
                return


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    """An rng that depends on (seed, epoch, index) only, stable across processes and runs."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _make_item(row: dict, index: int, transform: PairTransform, rng: random.Random, source: str) -> dict[str, Any]:
    label = float(row["label_0"])
    winner, loser = ("image_0", "image_1") if label > TIE else ("image_1", "image_0")
    image_w = open_pair_image(row[winner], source, index, winner)
    image_l = open_pair_image(row[loser], source, index, loser)
    return {"caption": row["caption"], "index": index, **transform(image_w, image_l, rng)}


def open_pair_image(value: Any, source: str, index: int, column: str) -> Image.Image:
    """Decode an image from bytes, a path, a ``{"bytes", "path"}`` dict or a PIL image."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if not isinstance(value, (bytes, bytearray, str)):
        raise DataError(f"{source} row {index}: column {column} holds {type(value).__name__}, "
                        f"expected image bytes or a path.")
    try:
        image = Image.open(io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value)
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{source} row {index}: column {column} is not a readable image: {error}") from error
    return image


def _check_columns(available: list[str] | None, source: str, required: tuple[str, ...]) -> None:
    if available is None:
        return
    missing = [name for name in required if name not in available]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; available columns: "
                        f"{', '.join(available) or '(none)'}.")


def _check_label(value: Any, source: str, row: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise DataError(f"{source} row {row}: column label_0 must be a number in [0, 1], got {value!r}.")
    return float(value)


def _not_tie_batch(labels: list, indices: list[int], source: str) -> list[bool]:
    return [_check_label(label, source, row) != TIE for label, row in zip(labels, indices)]


def load_pickapic_table(source: str, split: str = "train",
                        streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
    """A Pick-a-Pic-schema table, ties kept, columns normalised (caption, image_0, image_1, label_0).

    ``source``: a .parquet file, a folder of them (searched recursively) or a ``datasets`` Hub id
    (read with ``split``).
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(str(file) for file in path.rglob("*.parquet"))
        if not files:
            raise DataError(f"{source}: folder holds no .parquet files.")
        table = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
    elif str(source).endswith(".parquet"):
        if not path.is_file():
            raise DataError(f"{source}: parquet file not found.")
        table = datasets.load_dataset("parquet", data_files=[str(path)], split="train", streaming=streaming)
    else:
        try:
            table = datasets.load_dataset(str(source), split=split, streaming=streaming)
        except (FileNotFoundError, ConnectionError, ValueError) as error:
            raise DataError(f"{source}: not a .parquet file or folder, and datasets.load_dataset could not load it "
                            f"(split {split!r}): {error}") from error
    _check_columns(table.column_names, str(source), REQUIRED_COLUMNS)
    if table.column_names is None:
        return table.rename_columns(_RENAME)
    return table.select_columns(list(REQUIRED_COLUMNS)).rename_columns(_RENAME)


def load_pairs_jsonl(path: Path) -> datasets.Dataset:
    """The project's JSONL pairs as a normalised table, ties kept; image paths made absolute and checked."""
    if not path.is_file():
        raise DataError(f"{path}: JSONL file not found.")
    folder = path.resolve().parent
    columns: dict[str, list] = {key: [] for key in COLUMNS}
    gaps: list[float] = []
    with_gap: bool | None = None  # set by the first line: every line gives "gap" or none does
    for where, record in jsonl_rows(path, DataError):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}.")
        missing = [key for key in COLUMNS if key not in record]
        if missing:
            raise DataError(f"{where}: missing key(s) {', '.join(missing)}; found {', '.join(record) or '(none)'}.")
        if not isinstance(record["caption"], str):
            raise DataError(f"{where}: key caption must be a string, got {record['caption']!r}.")
        label = record["label_0"]
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not 0.0 <= label <= 1.0:
            raise DataError(f"{where}: key label_0 must be a number in [0, 1], got {label!r}.")
        with_gap = ("gap" in record) if with_gap is None else with_gap
        if ("gap" in record) != with_gap:
            raise DataError(f"{where}: key gap is given on some lines and not on others; give it on all or none.")
        if with_gap:
            gap = record["gap"]
            if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0.0 <= gap < float("inf"):
                raise DataError(f"{where}: key gap (the pair's difficulty gap) must be a number >= 0, got {gap!r}.")
            gaps.append(float(gap))
        columns["caption"].append(record["caption"])
        columns["label_0"].append(float(label))
        for key in ("image_0", "image_1"):
            if not isinstance(record[key], str) or not record[key]:
                raise DataError(f"{where}: key {key} must be an image path, got {record[key]!r}.")
            image = folder / record[key]
            if not image.is_file():
                raise DataError(f"{where}: key {key}: image file not found: {image}")
            columns[key].append(str(image))
    if gaps:
        features = datasets.Features({**_JSONL_FEATURES, "gap": datasets.Value("float64")})
        return datasets.Dataset.from_dict({**columns, "gap": gaps}, features=features)
    return datasets.Dataset.from_dict(columns, features=_JSONL_FEATURES)
