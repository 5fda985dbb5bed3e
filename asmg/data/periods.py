"""Periods on event time: the one period scheme (fixed bounds or tumbling windows, the watermark rule), and
the offline splitter's bounds (N equal-count chunks or calendar units).

Equal-count chunks are snapped to timestamps (a period is a half-open time interval), so a stream
cut at the same bounds yields the same periods; ties at a boundary go to the later period, which
moves a few samples between neighbours compared with cutting at exact positions. The remainder after
N x floor(n / N) events is dropped, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from asmg.config import SettingsError
from asmg.data.log import DataError

INF = math.inf


class PeriodScheme:
    """THE period rule: event time -> period number (1-based; 0 = outside every period), period bounds, and
    which periods a watermark has closed. The offline runner, the windowing role, the coordinator and the
    scorer's online evaluation all number periods with it.

    Fixed bounds: period p holds bounds[p-1] <= ts < bounds[p] (a dataset split up front, as the paper does).
    Tumbling: period p holds origin + (p-1)*length <= ts < origin + p*length, p <= count when given.
    """

    def __init__(self, bounds: Sequence[float] | np.ndarray | None = None, length: float | None = None,
                 origin: float | None = None, count: int | None = None) -> None:
        if (bounds is None) == (length is None):
            raise SettingsError("periods need either fixed bounds (ASMG_PERIOD_BOUNDS) or a length "
                                "(ASMG_PERIOD_LENGTH)")
        if length is not None and origin is None:
            raise SettingsError("tumbling periods (ASMG_PERIOD_LENGTH) need ASMG_PERIOD_ORIGIN: the unix time "
                                "where period 1 starts (period numbers must start at 1 for pretraining)")
        if count is not None and count < 1:
            raise SettingsError("ASMG_PERIOD_COUNT must be >= 1")
        self.bounds = list(bounds) if bounds is not None else None
        self.length = length
        self.origin = origin
        self.count = count

    @property
    def fixed(self) -> bool:
        return self.bounds is not None

    @property
    def n_periods(self) -> int | None:
        return len(self.bounds) - 1 if self.bounds is not None else self.count

    def period_of(self, ts: float) -> int:
        """:meth:`assign` of one event time."""
        return int(self.assign(np.asarray([ts], dtype=np.float64))[0])

    def assign(self, ts: np.ndarray) -> np.ndarray:
        """Period number of every event time (0 outside every period, and for NaN and -inf)."""
        ts = np.asarray(ts, dtype=np.float64)
        finite = np.isfinite(ts)
        if self.bounds is not None:
            bounds = np.asarray(self.bounds, dtype=np.float64)
            inside = finite & (ts >= bounds[0]) & (ts < bounds[-1])
            period = np.where(inside, np.searchsorted(bounds, np.where(finite, ts, 0), side="right"), 0)
            return period.astype(np.int32)
        period = np.floor((np.where(finite, ts, self.origin) - self.origin) / self.length).astype(np.int64) + 1
        ok = finite & (ts >= self.origin)
        if self.count is not None:
            ok &= period <= self.count
        return np.where(ok, period, 0).astype(np.int32)

    period_of_many = assign  # the windowing role's name for it

    def start(self, period: int) -> float:
        if self.bounds is not None:
            return self.bounds[period - 1] if period <= len(self.bounds) - 1 else INF
        if self.count is not None and period > self.count:
            return INF
        return self.origin + (period - 1) * self.length

    def end(self, period: int) -> float:
        if self.bounds is not None:
            return self.bounds[period] if period <= len(self.bounds) - 1 else INF
        return self.origin + period * self.length

    def closable_through(self, watermark: float | None) -> int:
        """The last period whose end is <= the watermark (0 when none)."""
        return int(self.closable_through_many(np.asarray([-INF if watermark is None else watermark]))[0])

    def closable_through_many(self, watermark: np.ndarray) -> np.ndarray:
        """:meth:`closable_through` of every element (-inf or NaN: no watermark yet)."""
        watermark = np.asarray(watermark, dtype=np.float64)
        known = ~np.isnan(watermark) & (watermark > -INF)
        if self.bounds is not None:
            bounds = np.asarray(self.bounds, dtype=np.float64)
            through = np.searchsorted(bounds, np.where(known, watermark, bounds[0] - 1), side="right") - 1
            return np.where(known, np.clip(through, 0, len(bounds) - 1), 0)
        finite = np.where(np.isfinite(watermark), watermark, np.where(watermark > 0, 1e300, self.origin))
        through = np.floor(np.clip((finite - self.origin) / self.length, 0, 2**62)).astype(np.int64)
        if self.count is not None:
            through = np.minimum(through, self.count)
        return np.where(known, through, 0)

    def end_of_stream(self) -> float | None:
        """The watermark an end-of-stream marker without a time stands for (fixed bounds only)."""
        return self.bounds[-1] if self.bounds is not None else None

    def describe(self) -> str:
        if self.bounds is not None:
            return f"{len(self.bounds) - 1} fixed periods in [{self.bounds[0]}, {self.bounds[-1]})"
        count = f", {self.count} periods" if self.count is not None else ""
        return f"tumbling periods of {self.length:g}s from {self.origin:g}{count}"


def watermark(max_ts: np.ndarray | float, marker: np.ndarray | float, lateness: float) -> np.ndarray:
    """THE watermark rule: a partition's max event time minus the allowed lateness, or a marker's time when
    that is later (elementwise; -inf stands for "none yet")."""
    return np.maximum(np.asarray(max_ts, dtype=np.float64) - lateness, marker)


class PeriodBounds(PeriodScheme):
    """Fixed bounds as the offline splitter makes them (an int64 array)."""

    def __init__(self, bounds: np.ndarray | Sequence[int]) -> None:
        super().__init__(bounds=bounds)
        self.bounds = np.asarray(bounds)

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
