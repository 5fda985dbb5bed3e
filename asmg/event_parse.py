"""The common shape of an event parsed in C (event_parse.c): the first path of
:func:`asmg.event_batch.parse_events_fast`.

Why: Arrow's JSON reader (the previous fast path) spent ~2.4 CPU-s per 1M events inferring and building a
table for a handful of fields; a scanner that knows the schema reads a ~100-byte event in well under a
microsecond. It accepts only rows that :func:`asmg.events.parse_event` accepts with the same values (plain
ASCII objects of the usual fields, see the C file); the caller parses every other row the reference way.
Float ``ts`` tokens are converted here by numpy, as Python's float() (and so json) converts them.
tests/test_event_parse.py checks the agreement on generated valid and invalid records.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from asmg import native

SOURCE = Path(__file__).with_name("event_parse.c")
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared")
TS_TEXT = 32  # as in event_parse.c
_i64 = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_u8 = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
_i8 = np.ctypeslib.ndpointer(np.int8, flags="C_CONTIGUOUS")


@cache
def library() -> ctypes.CDLL | None:
    """The compiled parser, or None (ASMG_NATIVE_PARSER=0, no compiler, build failed): callers use Arrow's."""
    lib = native.load(SOURCE, FLAGS, "event-parse", "ASMG_NATIVE_PARSER", "events are parsed with Arrow")
    if lib is None:
        return None
    fn = lib.asmg_parse_events
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int64, _i64, _i64, ctypes.c_int64, _u8, _i64, _i64, _i64, _u8, _u8,
                   _i8, _i64, _i64, ctypes.c_int64]
    return lib


def _joined(values: Sequence[bytes | None]) -> tuple[bytes, np.ndarray]:
    """All values in one buffer and their lengths (a missing or non-bytes value: an empty row, never accepted)."""
    try:
        buffer = b"".join(values)  # type: ignore[arg-type]
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))  # type: ignore[arg-type]
        if lengths.sum() == len(buffer):  # else a memoryview of wider items: len() is not its byte count
            return buffer, lengths
    except TypeError:
        pass
    present = [v if isinstance(v, bytes) else b"" for v in values]
    return b"".join(present), np.fromiter(map(len, present), dtype=np.int64, count=len(present))


def parse_columns(values: Sequence[bytes | None], max_ts: float) -> dict[str, np.ndarray] | None:
    """Per row: ok, user, item, ts (float64), label (int8), cat_lengths (0 unless ok); cat_values of the ok rows
    in row order, as given. None when the library is unavailable."""
    lib = library()
    if lib is None:
        return None
    n = len(values)
    buffer, lengths = _joined(values)
    starts = np.cumsum(lengths) - lengths
    ok, ts_float = np.zeros(n, dtype=np.uint8), np.zeros(n, dtype=np.uint8)
    user, item, ts_int = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    label, cat_lengths = np.ones(n, dtype=np.int8), np.zeros(n, dtype=np.int64)
    ts_text = np.zeros(n * TS_TEXT, dtype=np.uint8)
    cat_values = np.empty(len(buffer) // 2 + 1, dtype=np.int64)  # a value takes a digit and a separator
    used = lib.asmg_parse_events(buffer, len(buffer), starts, lengths, n, ok, user, item, ts_int, ts_float,
                                 ts_text, label, cat_lengths, cat_values, len(cat_values))
    if used < 0:
        raise RuntimeError("native event parser refused its arguments")
    accepted = ok.astype(bool)
    ts = ts_int.astype(np.float64)
    floats = np.flatnonzero(ts_float)
    if len(floats):
        ts[floats] = ts_text.view(f"S{TS_TEXT}")[floats].astype(np.float64)
    with np.errstate(invalid="ignore"):
        in_range = np.isfinite(ts) & (ts >= 0) & (ts < max_ts)
    cat_values = cat_values[:used][np.repeat(in_range[accepted], cat_lengths[accepted])]
    accepted &= in_range
    cat_lengths[~accepted] = 0
    return {"ok": accepted, "user": user, "item": item, "ts": ts, "label": label, "cat_lengths": cat_lengths,
            "cat_values": cat_values}
