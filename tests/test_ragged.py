"""Ragged helpers against their plain-Python meaning."""

from __future__ import annotations

import numpy as np
import pytest

from asmg.ragged import gather_rows, positions_within, select_rows


@pytest.mark.parametrize("seed", range(4))
def test_gather_rows_concatenates_the_ranges(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 50))
    starts, lengths = rng.integers(0, 1000, n), rng.integers(0, 6, n)
    expected = [s + k for s, length in zip(starts.tolist(), lengths.tolist(), strict=True) for k in range(length)]
    assert gather_rows(starts, lengths).tolist() == expected
    assert positions_within(lengths).tolist() == [k for length in lengths.tolist() for k in range(length)]


def test_select_rows_in_the_given_order() -> None:
    lengths, values = np.array([2, 0, 3]), np.array([1, 2, 3, 4, 5])
    picked, flat = select_rows(lengths, values, np.array([2, 0, 1, 2]))
    assert picked.tolist() == [3, 2, 0, 3] and flat.tolist() == [3, 4, 5, 1, 2, 3, 4, 5]
