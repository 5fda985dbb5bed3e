"""Ragged (list-of-lists) arrays as flat values + lengths, without per-row Python."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def positions_within(lengths: np.ndarray) -> np.ndarray:
    """For each flat element, its index inside its own row: lengths [2, 3] -> [0, 1, 0, 1, 2]."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def gather_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of rows that begin at ``starts`` with ``lengths`` elements each: the output position plus
    its row's shift (one ``np.repeat``, the costly step, where start + position within the row took two)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    shift = np.asarray(starts, dtype=np.int64) - (ends - lengths)
    return np.repeat(shift, lengths) + np.arange(ends[-1] if len(ends) else 0)


def select_rows(lengths: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` (indices, in that order) of a ragged column given as (lengths, flat values)."""
    starts = np.cumsum(lengths) - lengths
    picked = lengths[rows]
    return picked, values[gather_rows(starts[rows], picked)]


def list_array(lengths: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """A ragged column as an Arrow list<int64> array."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(values, dtype=np.int64), pa.int64()))
