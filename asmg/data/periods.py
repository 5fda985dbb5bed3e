"""Period boundaries on event time: N equal-count chunks or calendar units.

Equal-count chunks are snapped to timestamps (a period is a half-open time interval), so a stream
cut at the same bounds yields the same periods; ties at a boundary go to the later period, which
moves a few samples between neighbours compared with cutting at exact positions. The remainder after
N x floor(n / N) events is dropped, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from asmg.data.log import DataError


@dataclass(frozen=True)
class PeriodBounds:
    """Period p (1-based) holds events with bounds[p-1] <= ts < bounds[p]."""

    bounds: np.ndarray

    @property
    def n_periods(self) -> int:
        return len(self.bounds) - 1

    def assign(self, ts: np.ndarray) -> np.ndarray:
        """Period number per event, 0 for events outside every period."""
        period = np.searchsorted(self.bounds, ts, side="right")
        period[(ts < self.bounds[0]) | (ts >= self.bounds[-1])] = 0
        return period.astype(np.int32)

    def to_list(self) -> list[int]:
        return [int(b) for b in self.bounds]


def equal_count_bounds(ts: np.ndarray, n_periods: int) -> PeriodBounds:
    ts = np.sort(np.asarray(ts, dtype=np.int64))
    chunk = len(ts) // n_periods
    if chunk == 0:
        raise DataError(f"{len(ts)} events cannot fill {n_periods} periods")
    starts = ts[np.arange(n_periods) * chunk]
    end = ts[n_periods * chunk] if n_periods * chunk < len(ts) else ts[-1] + 1
    bounds = np.r_[starts, end]
    if np.any(np.diff(bounds) <= 0):
        raise DataError("too many events share one timestamp for equal-count periods; use a calendar split")
    return PeriodBounds(bounds)


def calendar_bounds(ts: np.ndarray, freq: str) -> PeriodBounds:
    """Tumbling windows of a pandas frequency ('1D', '7D', '1h'), aligned to the epoch."""
    step = pd.Timedelta(freq).total_seconds()
    if step <= 0:
        raise DataError(f"period length '{freq}' must be positive")
    step = int(step)
    first = (int(np.min(ts)) // step) * step
    last = (int(np.max(ts)) // step + 1) * step
    return PeriodBounds(np.arange(first, last + 1, step, dtype=np.int64))


def period_bounds(ts: np.ndarray, split: str, n_periods: int) -> PeriodBounds:
    if split == "equal":
        return equal_count_bounds(ts, n_periods)
    try:
        bounds = calendar_bounds(ts, split)
    except ValueError as exc:
        raise DataError(f"split '{split}' is neither 'equal' nor a duration such as '1D' ({exc})") from exc
    return PeriodBounds(bounds.bounds[: n_periods + 1]) if bounds.n_periods > n_periods else bounds
