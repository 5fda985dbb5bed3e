"""One period's samples as tensors of embedding rows, and batches cut from them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from asmg.data.samples import padded_from_ragged
from asmg.model import Batch
from asmg.ragged import gather_rows
from asmg.vocab import Vocabularies


@dataclass(frozen=True)
class PeriodTensors:
    """Rows are final: ids unknown when encoded are never in here (the vocabulary grew first)."""

    period: int
    user: torch.Tensor
    item: torch.Tensor
    history: torch.Tensor  # [n, L], 0 = padding
    label: torch.Tensor

    def __len__(self) -> int:
        return self.user.shape[0]

    def to(self, device: torch.device) -> PeriodTensors:
        return PeriodTensors(self.period, self.user.to(device), self.item.to(device), self.history.to(device),
                             self.label.to(device))

    @staticmethod
    def concat(parts: list[PeriodTensors]) -> PeriodTensors:
        return PeriodTensors(parts[-1].period, *(torch.cat([getattr(p, f) for p in parts])
                                                  for f in ("user", "item", "history", "label")))


def _ragged(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    arr = pa.array(column)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64), np.diff(offsets)


def encode_period(samples: pd.DataFrame, vocabs: Vocabularies, period: int, history_len: int) -> PeriodTensors:
    """Grow the vocabularies with this period's ids (first-appearance order) and encode its samples."""
    user_ids = samples["user_id"].to_numpy(np.int64)
    item_ids = samples["item_id"].to_numpy(np.int64)
    history_ids, lengths = padded_from_ragged(samples["history"], history_len)
    vocabs.users.add(user_ids)
    new_items = vocabs.items.add(np.concatenate([item_ids, history_ids[history_ids_mask(lengths, history_len)]]))
    if "categories" in samples.columns and len(samples):
        cat_values, cat_lengths = _ragged(samples["categories"])
        vocabs.categories.add(cat_values)
        _assign_new_item_categories(vocabs, item_ids, new_items, cat_values, cat_lengths)
    vocabs.item_categories.grow(len(vocabs.items))
    history = vocabs.items.lookup(history_ids.reshape(-1)).reshape(history_ids.shape)
    history[~history_ids_mask(lengths, history_len)] = 0
    return PeriodTensors(
        period=period,
        user=torch.from_numpy(vocabs.users.lookup(user_ids)),
        item=torch.from_numpy(vocabs.items.lookup(item_ids)),
        history=torch.from_numpy(history),
        label=torch.from_numpy(samples["label"].to_numpy(np.float32).copy()),
    )


def history_ids_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    return np.arange(width)[None, :] >= (width - lengths)[:, None]


def _assign_new_item_categories(vocabs: Vocabularies, item_ids: np.ndarray, new_items: np.ndarray,
                                cat_values: np.ndarray, cat_lengths: np.ndarray) -> None:
    """Categories of items first seen now, from the first sample that names each of them."""
    if not len(new_items):
        return
    _, first = np.unique(item_ids, return_index=True)
    first = first[np.isin(item_ids[first], new_items)]
    starts = np.cumsum(cat_lengths) - cat_lengths
    lengths = cat_lengths[first]
    take = gather_rows(starts[first], lengths)
    vocabs.item_categories.grow(len(vocabs.items))
    vocabs.item_categories.assign(vocabs.items.lookup(item_ids[first]), vocabs.categories.lookup(cat_values[take]),
                                  lengths)


CHUNK_SAMPLES = 65_536  # samples assembled at once: bounded memory, few large ops


class BatchMaker:
    """Cuts batches; clamps rows a model does not have yet to its fallback row 0."""

    def __init__(self, item_categories: np.ndarray, sizes: dict[str, int], device: torch.device) -> None:
        self.item_cats = torch.from_numpy(item_categories).to(device)
        self.sizes = sizes
        self.device = device

    def batch(self, data: PeriodTensors, index: torch.Tensor | slice) -> Batch:
        user, item, history, label = (_take(t, index) for t in (data.user, data.item, data.history, data.label))
        item_cats, history_cats = _take(self.item_cats, item), _take(self.item_cats, history)
        n_cat = self.sizes["category"]
        return Batch(
            user=_clamp(user, self.sizes["user"]),
            item=_clamp(item, self.sizes["item"]),
            history=_clamp(history, self.sizes["item"]),
            history_mask=history > 0,
            item_cats=_clamp(item_cats, n_cat),
            item_cat_mask=(item_cats > 0) & (item_cats < n_cat),
            history_cats=_clamp(history_cats, n_cat),
            history_cat_mask=(history_cats > 0) & (history_cats < n_cat),
            label=label,
        )

    def epoch(self, data: PeriodTensors, batch_size: int, gen: torch.Generator | None) -> Iterator[Batch]:
        """Shuffled when a generator is given (training), in order otherwise (evaluation).

        Batches are cut from chunks assembled in one go (gathers, category look-ups, clamps and masks over
        ~64k samples at once), so a step only slices contiguous tensors; the batches are the same.
        """
        n = len(data)
        order = torch.randperm(n, generator=gen).to(self.device) if gen is not None else None
        chunk = max(batch_size, CHUNK_SAMPLES // batch_size * batch_size)
        for chunk_start in range(0, n, chunk):
            index = (order[chunk_start:chunk_start + chunk] if order is not None
                     else slice(chunk_start, chunk_start + chunk))
            assembled = self.batch(data, index)
            for start in range(0, len(assembled), batch_size):
                yield assembled.slice(start, start + batch_size)


def _take(table: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
    """table[index] along dim 0, for an index tensor of any shape by index_select (a row copy: several times
    faster on CPU than advanced indexing's per-element gather)."""
    if isinstance(index, slice):
        return table[index]
    if table.dim() == 2 and table.shape[1] == 1:  # one category per item: scalars gather ~3x faster than rows
        return table.view(-1).index_select(0, index.reshape(-1)).view(*index.shape, 1)
    rows = table.index_select(0, index.reshape(-1))
    return rows.view(*index.shape, *table.shape[1:])


def _clamp(rows: torch.Tensor, size: int) -> torch.Tensor:
    """Ids the model has no row for yet -> the fallback row 0. Usually every id is known: on CPU one max
    (~10x cheaper than the select) skips the pass; on a GPU it would cost a sync, so the select always runs."""
    if rows.device.type == "cpu" and (rows.numel() == 0 or int(rows.max()) < size):
        return rows
    return torch.where(rows < size, rows, torch.zeros_like(rows))
