"""Pairwise preference data: loading, tie dropping and pair-consistent augmentation."""

from __future__ import annotations

from diffalign.data.pairs import (
    REQUIRED_COLUMNS,
    DataError,
    PairStats,
    PreferencePairDataset,
    StreamingPreferencePairs,
    build_pair_dataset,
    load_preference_table,
)
from diffalign.data.transforms import PairTransform

__all__ = [
    "REQUIRED_COLUMNS",
    "DataError",
    "PairStats",
    "PairTransform",
    "PreferencePairDataset",
    "StreamingPreferencePairs",
    "build_pair_dataset",
    "load_preference_table",
]
