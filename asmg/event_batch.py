"""Many events at once: the fast path of :func:`asmg.events.parse_event` for a batch of JSON values.

Why: ``json.loads`` plus validation costs ~15 µs per record on a small machine, an order of magnitude too
slow for a stream of 50k events/s. The common shape (integer ids, numeric ``ts``, 0/1 ``label``, integer
``categories``) is read by a C scanner (asmg/event_parse.py, ~0.15 µs a record) or, without a C compiler,
by Arrow's JSON reader and validated on whole columns (~3.5 µs). Any other row is left to
:func:`asmg.events.parse_event`, the reference: the fast path accepts a subset of what it accepts, with the
same values, so a caller gets identical results whichever path a row took.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from asmg.event_parse import parse_columns
from asmg.events import MAX_CATEGORIES, MAX_EVENT_ID, MAX_TS, SCHEMA_VERSION


@dataclass
class FastEvents:
    """Columns of a batch; only rows with ``ok`` hold parsed values (the others need the slow path).

    ``categories`` is ragged: row i holds ``cat_values[cat_starts[i]:cat_starts[i] + cat_lengths[i]]``,
    sorted and without repeats.
    """

    ok: np.ndarray
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    cat_lengths: np.ndarray
    cat_values: np.ndarray

    @classmethod
    def none_ok(cls, n: int) -> FastEvents:
        zeros = np.zeros(n, dtype=np.int64)
        return cls(np.zeros(n, dtype=bool), zeros, zeros.copy(), np.zeros(n), np.ones(n, dtype=np.int8),
                   zeros.copy(), np.zeros(0, dtype=np.int64))


def _ints(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, valid) of an integer id column; None when the column has another type (slow path)."""
    column = table.column(name)
    if not pa.types.is_int64(column.type):
        return None
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    values = column.fill_null(0).to_numpy().astype(np.int64, copy=False)
    return values, valid & (values >= 0)


def _numbers(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    column = table.column(name)
    if not (pa.types.is_int64(column.type) or pa.types.is_float64(column.type) or pa.types.is_boolean(column.type)):
        return None
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    values = pc.cast(column, pa.float64()).fill_null(np.nan).to_numpy()
    return values, valid


def parse_events_fast(values: Sequence[bytes | None]) -> FastEvents:
    """Parse the rows that have the common shape; ``ok`` is False for every row the caller must parse
    one at a time (any row when the batch as a whole does not parse, or a column has an unusual type)."""
    native = parse_columns(values, MAX_TS)
    if native is not None:
        lengths, flat = canonical_categories(native["cat_lengths"], native["cat_values"])
        return FastEvents(native["ok"], native["user"], native["item"], native["ts"], native["label"], lengths, flat)
    return parse_events_arrow(values)


def parse_events_arrow(values: Sequence[bytes | None]) -> FastEvents:
    """:func:`parse_events_fast` with Arrow's JSON reader: where the native parser cannot be built."""
    n = len(values)
    out = FastEvents.none_ok(n)
    try:  # the usual batch: every value present, one line each (checked on the joined bytes, in C)
        buffer = b"\n".join(values)  # type: ignore[arg-type]
        clean = buffer.count(b"\n") == n - 1 and b"\r" not in buffer and all(values)
    except TypeError:  # a record without a value
        clean = False
    if clean and b"\\u" in buffer:  # escapes (maybe lone surrogates): the reference parser decides those rows
        clean = False
    if clean:
        rows = range(n)
    else:
        rows = [i for i, v in enumerate(values)
                if v and b"\n" not in v and b"\r" not in v and b"\\u" not in v]
        buffer = b"\n".join(values[i] for i in rows)  # type: ignore[misc]
    if not rows:
        return out
    try:
        table = pj.read_json(io.BytesIO(buffer), read_options=pj.ReadOptions(
            use_threads=False, block_size=max(len(buffer) + 1, 1 << 16)))
    except pa.ArrowException:
        return out  # one bad record spoils the batch for Arrow: every row goes the slow way
    if table.num_rows != len(rows) or not {"user_id", "item_id", "ts"} <= set(table.column_names):
        return out
    ok = np.ones(len(rows), dtype=bool)
    user, item, ts = _ints(table, "user_id"), _ints(table, "item_id"), _numbers(table, "ts")
    if user is None or item is None or ts is None or pa.types.is_boolean(table.column("ts").type):
        return out
    ok &= user[1] & item[1] & ts[1] & np.isfinite(ts[0]) & (ts[0] >= 0) & (ts[0] < MAX_TS)
    label = np.ones(len(rows), dtype=np.int8)
    if "label" in table.column_names:
        parsed = _numbers(table, "label")
        if parsed is None:
            return out
        given = np.where(parsed[1], parsed[0], 1.0)
        ok &= (given == 0) | (given == 1)
        label = np.where(given == 0, 0, 1).astype(np.int8)
    if "v" in table.column_names:
        column = table.column("v")
        if not pa.types.is_int64(column.type):
            return out
        ok &= column.fill_null(-1).to_numpy(zero_copy_only=False) == SCHEMA_VERSION  # v: null is refused
    for name in ("control", "event_id"):
        if name in table.column_names:
            column = table.column(name)
            if name == "control" or not (pa.types.is_string(column.type) or pa.types.is_null(column.type)):
                ok &= column.is_null().to_numpy(zero_copy_only=False)  # the slow path decides those
            else:
                length = pc.utf8_length(column).fill_null(1).to_numpy(zero_copy_only=False)
                ok &= (length >= 1) & (length <= MAX_EVENT_ID)
    cat_lengths = np.zeros(len(rows), dtype=np.int64)
    cat_values = np.zeros(0, dtype=np.int64)
    if "categories" in table.column_names:
        column = table.column("categories").combine_chunks()
        if pa.types.is_list(column.type) and pa.types.is_int64(column.type.value_type):
            flat = column.flatten()
            if flat.null_count:
                return out
            cat_lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            cat_values = flat.to_numpy().astype(np.int64, copy=False)
            row = np.repeat(np.arange(len(rows)), cat_lengths)
            bad = np.zeros(len(rows), dtype=bool)
            bad[row[cat_values < 0]] = True
            ok &= ~bad & (cat_lengths <= MAX_CATEGORIES)
        elif not pa.types.is_null(column.type):
            return out
    index = np.asarray(rows, dtype=np.int64)
    out.ok[index] = ok
    out.user[index], out.item[index], out.ts[index] = user[0], item[0], ts[0]
    out.label[index] = label
    lengths, flat = canonical_categories(cat_lengths, cat_values)
    flat = flat[np.repeat(ok, lengths)]
    lengths[~ok] = 0
    out.cat_lengths[index] = lengths  # rows ascend, so the flat values are already in row order
    out.cat_values = flat
    return out


def canonical_categories(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's categories sorted and without repeats (as the windowing role stores them)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(values) == 0:
        return lengths.copy(), np.asarray(values, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    first = np.zeros(len(values), dtype=bool)
    first[(np.cumsum(lengths) - lengths)[lengths > 0]] = True
    if np.all(first[1:] | (values[1:] > values[:-1])):  # every row strictly increasing already (the usual case)
        return lengths.copy(), values
    row = np.repeat(np.arange(len(lengths)), lengths)
    order = np.lexsort((values, row))
    row, values = row[order], values[order]
    keep = np.r_[True, (row[1:] != row[:-1]) | (values[1:] != values[:-1])]
    return np.bincount(row[keep], minlength=len(lengths)).astype(np.int64), values[keep]
