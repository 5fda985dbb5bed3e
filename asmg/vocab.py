"""Growing vocabularies: raw int64 ids -> embedding rows. Row 0 is the fallback / padding row."""

from __future__ import annotations

import numpy as np
import pandas as pd

from asmg.ragged import positions_within


class Vocabulary:
    """Ids get rows in order of first appearance; existing rows never move, so tables only grow."""

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self._ids = np.asarray(ids if ids is not None else [], dtype=np.int64)
        self._index = pd.Index(self._ids)

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def __len__(self) -> int:
        """Rows including the fallback row 0."""
        return len(self._ids) + 1

    def add(self, raw: np.ndarray) -> np.ndarray:
        """Append unseen ids in order of first appearance; returns the new ids."""
        uniq = pd.unique(np.asarray(raw, dtype=np.int64))
        new = uniq[self._index.get_indexer(uniq) < 0]
        if len(new):
            self._ids = np.concatenate([self._ids, new])
            self._index = pd.Index(self._ids)
        return new

    def lookup(self, raw: np.ndarray) -> np.ndarray:
        """Rows for ids; unknown ids -> 0."""
        return self._index.get_indexer(np.asarray(raw, dtype=np.int64)) + 1


class ItemCategories:
    """Item row -> category rows (padded with 0). Filled once per item, when it first appears."""

    def __init__(self, table: np.ndarray | None = None) -> None:
        self.table = table if table is not None else np.zeros((1, 1), dtype=np.int64)

    def grow(self, n_items: int) -> None:
        if n_items > self.table.shape[0]:
            pad = np.zeros((n_items - self.table.shape[0], self.table.shape[1]), dtype=np.int64)
            self.table = np.concatenate([self.table, pad])

    def assign(self, item_rows: np.ndarray, cat_rows: np.ndarray, lengths: np.ndarray) -> None:
        """Set categories of the given items (ragged: ``cat_rows`` split by ``lengths``)."""
        width = int(lengths.max()) if len(lengths) else 0
        if width > self.table.shape[1]:
            self.table = np.pad(self.table, ((0, 0), (0, width - self.table.shape[1])))
        self.grow(int(item_rows.max()) + 1 if len(item_rows) else 0)
        self.table[item_rows] = 0
        col = positions_within(lengths)
        self.table[np.repeat(item_rows, lengths), col] = cat_rows


class Vocabularies:
    """Users, items and categories, plus each item's categories."""

    def __init__(self) -> None:
        self.users = Vocabulary()
        self.items = Vocabulary()
        self.categories = Vocabulary()
        self.item_categories = ItemCategories()

    def sizes(self) -> dict[str, int]:
        return {"user": len(self.users), "item": len(self.items), "category": len(self.categories)}
