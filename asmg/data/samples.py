"""Training samples as the paper builds them, vectorised over whole columns.

A sample is (user, target item, label, history) where history holds up to ``history_len`` most
recent positive items of the user strictly before the event's time (events at the same second do not
see each other). Implicit logs get one negative per positive: an item drawn uniformly among all items
of the log that the user had not interacted with up to that time (inclusive).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from asmg.config import HISTORY_LEN
from asmg.data.log import DataError, InteractionLog
from asmg.data.negatives import sample_negatives
from asmg.ragged import gather_rows


def canonical_order(events: pd.DataFrame) -> pd.DataFrame:
    """Time order with a deterministic tie-break, so offline and streaming see the same sequence."""
    return events.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def history_matrix(user: np.ndarray, ts: np.ndarray, label: np.ndarray, item: np.ndarray,
                   history_len: int = HISTORY_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Per event, the ids of the user's last ``history_len`` positives strictly before its time.

    Returns (hist [n, history_len] int64, oldest first and left-padded with 0; lengths [n]).
    Inputs must be in canonical (time) order.
    """
    n = len(user)
    order = np.lexsort((np.arange(n), user))  # group by user, keep time order inside
    u, t, pos = user[order], ts[order], label[order] > 0
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_group = new_user | np.r_[True, t[1:] != t[:-1]]
    cum_pos = np.cumsum(pos) - pos  # positives strictly before this row in the global sorted order
    # positives before the first row of the (user, ts) group: ties do not see each other
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    end = cum_pos[group_start]  # index into the positives array (exclusive end)
    begin = np.maximum(cum_pos[user_start], end - history_len)
    pos_items = item[order][pos]
    offsets = end[:, None] - history_len + np.arange(history_len)[None, :]
    valid = offsets >= begin[:, None]
    hist_sorted = np.where(valid, pos_items[np.clip(offsets, 0, max(len(pos_items) - 1, 0))] if len(pos_items)
                           else 0, 0)
    hist = np.empty_like(hist_sorted)
    hist[order] = hist_sorted
    lengths = np.empty(n, dtype=np.int64)
    lengths[order] = valid.sum(axis=1)
    return hist.astype(np.int64), lengths


def build_samples(log: InteractionLog, seed: int = 0, history_len: int = HISTORY_LEN) -> pd.DataFrame:
    """Samples of the whole log in canonical order: user_id, item_id, ts, label, history (list of item ids)."""
    events = canonical_order(log.events)
    user = events["user_id"].to_numpy(np.int64)
    item = events["item_id"].to_numpy(np.int64)
    ts = events["ts"].to_numpy(np.int64)
    label = events["label"].to_numpy(np.float32)
    if log.implicit:
        label = np.ones_like(label)
    hist, lengths = history_matrix(user, ts, label, item, history_len)
    samples = _frame(user, item, ts, label, hist, lengths)
    if log.implicit:
        samples = _with_negatives(samples, log, seed, hist, lengths)
    samples["categories"] = item_category_lists(samples["item_id"].to_numpy(np.int64), log.item_categories)
    return samples


def _with_negatives(samples: pd.DataFrame, log: InteractionLog, seed: int, hist: np.ndarray,
                    lengths: np.ndarray) -> pd.DataFrame:
    user, item = samples["user_id"].to_numpy(np.int64), samples["item_id"].to_numpy(np.int64)
    ts, label = samples["ts"].to_numpy(np.int64), samples["label"].to_numpy(np.float32)
    rng = np.random.default_rng(seed)
    catalogue = np.unique(item)
    negative = sample_negatives(user, ts, user, item, ts, catalogue, rng)
    negatives = _frame(user, negative, ts, np.zeros_like(label), hist, lengths)
    both = pd.concat([samples, negatives], ignore_index=True)
    # positive then its negative, in time order
    interleave = np.argsort(np.r_[np.arange(len(samples)) * 2, np.arange(len(samples)) * 2 + 1], kind="stable")
    return both.iloc[interleave].reset_index(drop=True)


def item_category_lists(items: np.ndarray, item_categories: pd.DataFrame) -> pd.Series:
    """Each item's categories as a list column (ragged gather, no per-row Python)."""
    table = item_categories.sort_values(["item_id", "category_id"], kind="stable")
    known, starts, counts = np.unique(table["item_id"].to_numpy(np.int64), return_index=True, return_counts=True)
    values = table["category_id"].to_numpy(np.int64)
    pos = np.clip(np.searchsorted(known, items), 0, max(len(known) - 1, 0))
    found = (known[pos] == items) if len(known) else np.zeros(len(items), dtype=bool)
    lengths = np.where(found, counts[pos] if len(known) else 0, 0)
    first = np.where(found, starts[pos] if len(known) else 0, 0)
    take = gather_rows(first, lengths)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[take], type=pa.int64()))
    return pd.Series(pd.arrays.ArrowExtensionArray(arr))


def _frame(user, item, ts, label, hist, lengths) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": user, "item_id": item, "ts": ts, "label": label.astype(np.float32),
        "history": ragged_from_padded(hist, lengths),
    })


def ragged_from_padded(hist: np.ndarray, lengths: np.ndarray) -> pd.Series:
    """Left-padded [n, L] matrix -> Arrow-backed list column (no per-row Python objects)."""
    width = hist.shape[1]
    keep = np.arange(width)[None, :] >= (width - lengths)[:, None]
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    values = pa.array(hist[keep], type=pa.int64())
    arr = pa.ListArray.from_arrays(pa.array(offsets), values)
    return pd.Series(pd.arrays.ArrowExtensionArray(arr))


def padded_from_ragged(hist: pd.Series | pa.Array, width: int = HISTORY_LEN) -> tuple[np.ndarray, np.ndarray]:
    """List column -> left-padded [n, width] int64 matrix and lengths (inverse of the above)."""
    arr = pa.array(hist)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]  # a sliced array keeps its parent's offsets
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = np.diff(offsets)
    if len(lengths) and lengths.max() > width:
        raise DataError(f"history longer than {width} items")
    out = np.zeros((len(lengths), width), dtype=np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    col = width - np.repeat(lengths, lengths) + (np.arange(len(values)) - np.repeat(offsets[:-1], lengths))
    out[row, col] = values
    return out, lengths
