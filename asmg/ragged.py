"""Ragged (list-of-lists) arrays as flat values + lengths, without per-row Python."""

from __future__ import annotations

import numpy as np


def positions_within(lengths: np.ndarray) -> np.ndarray:
    """For each flat element, its index inside its own row: lengths [2, 3] -> [0, 1, 0, 1, 2]."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def gather_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of rows that begin at ``starts`` with ``lengths`` elements each."""
    return np.repeat(np.asarray(starts, dtype=np.int64), lengths) + positions_within(lengths)
