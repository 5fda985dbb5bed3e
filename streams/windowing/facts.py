"""Accepted events of open periods, as columns: what the windowing role keeps until a period closes.

A :class:`Facts` is a column set with ragged categories; the windowing state stores one per processed
batch (Arrow IPC bytes: no pickle, typed, compact) and the core concatenates, filters and turns them
into the period's samples with whole-column operations.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from asmg.ragged import list_array, select_rows

SCALARS = ("offset", "user", "item", "ts", "label", "period", "neg", "has_neg")
DTYPES = {"offset": np.int64, "user": np.int64, "item": np.int64, "ts": np.int64, "label": np.int8,
          "period": np.int32, "neg": np.int64, "has_neg": np.bool_}


@dataclass
class Facts:
    """One row per accepted event (offset order): the event, its period, and its sampled negative
    (implicit positives; ``has_neg`` False where none could be drawn or none is wanted)."""

    offset: np.ndarray
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    period: np.ndarray
    neg: np.ndarray
    has_neg: np.ndarray
    cat_lengths: np.ndarray
    cat_values: np.ndarray
    neg_cat_lengths: np.ndarray
    neg_cat_values: np.ndarray

    @classmethod
    def empty(cls) -> Facts:
        values = {name: np.zeros(0, dtype=DTYPES[name]) for name in SCALARS}
        ragged = {name: np.zeros(0, dtype=np.int64) for name in
                  ("cat_lengths", "cat_values", "neg_cat_lengths", "neg_cat_values")}
        return cls(**values, **ragged)

    def __len__(self) -> int:
        return len(self.offset)

    def select(self, rows: np.ndarray) -> Facts:
        """Rows by index array or boolean mask, in the given order."""
        rows = np.flatnonzero(rows) if rows.dtype == np.bool_ else np.asarray(rows, dtype=np.int64)
        cat_lengths, cat_values = select_rows(self.cat_lengths, self.cat_values, rows)
        neg_lengths, neg_values = select_rows(self.neg_cat_lengths, self.neg_cat_values, rows)
        return Facts(**{name: getattr(self, name)[rows] for name in SCALARS}, cat_lengths=cat_lengths,
                     cat_values=cat_values, neg_cat_lengths=neg_lengths, neg_cat_values=neg_values)

    @staticmethod
    def concat(parts: list[Facts]) -> Facts:
        if not parts:
            return Facts.empty()
        if len(parts) == 1:
            return parts[0]
        return Facts(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Facts)})

    # -- bytes in the state topic ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        batch = pa.record_batch(
            [pa.array(getattr(self, name)) for name in SCALARS]
            + [list_array(self.cat_lengths, self.cat_values), list_array(self.neg_cat_lengths, self.neg_cat_values)],
            names=[*SCALARS, "categories", "neg_categories"])
        sink = io.BytesIO()
        with ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Facts:
        table = ipc.open_stream(io.BytesIO(raw)).read_all().combine_chunks()
        values = {name: table.column(name).to_numpy().astype(DTYPES[name], copy=False) for name in SCALARS}
        ragged = {}
        for name, prefix in (("categories", "cat"), ("neg_categories", "neg_cat")):
            column = table.column(name).chunk(0) if table.num_rows else pa.array([], pa.list_(pa.int64()))
            offsets = column.offsets.to_numpy()
            ragged[f"{prefix}_lengths"] = np.diff(offsets).astype(np.int64)
            ragged[f"{prefix}_values"] = column.flatten().to_numpy().astype(np.int64, copy=False)
        return cls(**values, **ragged)
