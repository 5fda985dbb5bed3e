"""The one interaction table every loader produces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

EVENT_COLUMNS = {"user_id": "int64", "item_id": "int64", "ts": "int64", "label": "float32"}
CATEGORY_COLUMNS = {"item_id": "int64", "category_id": "int64"}


class DataError(ValueError):
    """Bad input data: the message names the file, line or column, and what was expected."""


@dataclass(frozen=True)
class InteractionLog:
    """Events plus the item->category relation in long form (one row per pair).

    Ids are int64 everywhere; string ids are mapped with :func:`stable_ids`, so the same raw id
    gets the same number in every run and every process (offline and streaming agree).
    ``implicit`` logs hold positives only; sample building adds one sampled negative per positive.
    """

    name: str
    events: pd.DataFrame
    item_categories: pd.DataFrame
    implicit: bool

    def __post_init__(self) -> None:
        for frame, columns, what in (
            (self.events, EVENT_COLUMNS, "events"),
            (self.item_categories, CATEGORY_COLUMNS, "item_categories"),
        ):
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise DataError(f"{self.name}: {what} table lacks columns {missing}; expected {list(columns)}")

    @property
    def n_users(self) -> int:
        return int(self.events["user_id"].nunique())

    @property
    def n_items(self) -> int:
        return int(self.events["item_id"].nunique())


def stable_ids(values: pd.Series) -> pd.Series:
    """Map arbitrary ids to non-negative int64 with a fixed hash (integers stay as they are)."""
    if pd.api.types.is_integer_dtype(values):
        return values.astype("int64")
    hashed = pd.util.hash_pandas_object(values.astype(str), index=False).to_numpy(np.uint64)
    return pd.Series((hashed >> np.uint64(1)).astype(np.int64), index=values.index, name=values.name)


def make_log(
    name: str,
    events: pd.DataFrame,
    item_categories: pd.DataFrame | None,
    implicit: bool,
) -> InteractionLog:
    """Coerce dtypes, sort events by time (stable), and build the log."""
    events = events.astype(EVENT_COLUMNS)[list(EVENT_COLUMNS)]
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    if item_categories is None:
        item_categories = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in CATEGORY_COLUMNS.items()})
    item_categories = (
        item_categories.astype(CATEGORY_COLUMNS)[list(CATEGORY_COLUMNS)].drop_duplicates().reset_index(drop=True)
    )
    return InteractionLog(name=name, events=events, item_categories=item_categories, implicit=implicit)
