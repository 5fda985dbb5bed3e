"""Any CSV/TSV/Parquet interaction table, given which column is which.

So a new dataset needs no new code: ``load_table("clicks.csv", user="uid", item="sku", ts="time")``.
Columns are matched exactly first, then case-insensitively. All parsing is column-wise (pandas/pyarrow);
a bad value is reported with the file, its line (1-based, the header is line 1; Parquet: row) and
what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from asmg.data._io import (
    check_numeric,
    check_present,
    match_columns,
    parser_error,
    require,
    to_int_ids,
    to_unix_seconds,
    where,
)
from asmg.data.log import DataError, InteractionLog, make_log, stable_ids

PARQUET_SUFFIXES = (".parquet", ".pq")


def read_any(path: Path, sep: str | None = None) -> tuple[pd.DataFrame, int]:
    """Read a CSV/TSV (optionally compressed) or Parquet file; returns the frame and its header lines.

    The whole file is read without ``usecols`` on purpose: pandas only checks field counts of
    columns it parses, and a row with extra fields must be an error, not silently shifted data.
    """
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            return pd.read_parquet(path), 0
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"{path}: cannot read as Parquet ({exc})") from exc
    if sep is None:
        sep = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    expected = f"{'tab' if sep == chr(9) else repr(sep)}-separated fields, as many as the header has"
    try:
        return pd.read_csv(path, sep=sep, low_memory=False), 1
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file; expected a header line and rows") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise parser_error(path, exc, expected) from exc


def load_table(
    path: str | Path,
    user: str,
    item: str,
    ts: str,
    label: str | None = None,
    categories: str | None = None,
    categories_sep: str | None = "|",
    ts_format: str | None = None,
    implicit: bool | None = None,
    positive_threshold: float | None = None,
    sep: str | None = None,
    name: str | None = None,
) -> InteractionLog:
    """Load an interaction table with a column mapping.

    - ``ts``: numbers are unix seconds (milliseconds when >= 1e11; or give the unit as ``ts_format``
      "s"/"ms"/"us"/"ns"), strings are ISO 8601 or ``ts_format`` (a strftime pattern); UTC.
    - ``label`` absent: implicit, every row a positive. With ``positive_threshold`` the label column is
      a rating and label = rating >= threshold; without it the label must be 0/1.
    - ``implicit``: defaults to "no label column"; True with a label keeps only the positive rows.
    - ``categories``: one id per row, or several joined by ``categories_sep`` (None: no splitting).
    """
    path = Path(path)
    require(path, "pass the path of a CSV/TSV/Parquet file")
    frame, header = read_any(path, sep)
    roles = {"user": user, "item": item, "ts": ts}
    if label is not None:
        roles["label"] = label
    if categories is not None:
        roles["categories"] = categories
    names = match_columns([str(c) for c in frame.columns], roles, path)
    check_present(frame, path, [names[r] for r in ("user", "item", "ts", "label") if r in names], header)

    item_ids = to_int_ids(frame[names["item"]], path, names["item"], header)
    events = pd.DataFrame({
        "user_id": to_int_ids(frame[names["user"]], path, names["user"], header),
        "item_id": item_ids,
        "ts": to_unix_seconds(frame[names["ts"]], path, names["ts"], ts_format, header),
    })
    if label is None:
        if implicit is False:
            raise DataError(f"{path}: implicit=False needs a label column "
                            "(or a rating column with positive_threshold)")
        events["label"] = np.float32(1.0)
        implicit = True
    else:
        events["label"] = _labels(frame, path, names["label"], positive_threshold, header)
        if implicit is None:
            implicit = False
        elif implicit:
            events = events[events["label"] > 0.5]

    item_categories = None
    if categories is not None:
        item_categories = _categories(frame[names["categories"]], item_ids, categories_sep)
    return make_log(name or path.name.split(".")[0], events, item_categories, implicit=bool(implicit))


def _labels(frame: pd.DataFrame, path: Path, column: str, threshold: float | None, header: int) -> np.ndarray:
    values = frame[[column]].copy()
    check_numeric(values, path, [column], header)
    numbers = values[column].to_numpy(np.float64)
    if threshold is not None:
        return (numbers >= threshold).astype(np.float32)
    bad = (numbers != 0) & (numbers != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: {where(path, row, header)}: column '{column}' has {numbers[row]:g}; "
                        "expected a 0/1 label (for ratings pass positive_threshold)")
    return numbers.astype(np.float32)


def _categories(values: pd.Series, item_ids: pd.Series, sep: str | None) -> pd.DataFrame:
    """Long item->category table; integer-looking category ids stay, others are hashed."""
    pairs = pd.DataFrame({"item_id": item_ids.to_numpy(), "category": values.to_numpy()})
    pairs = pairs[pairs["category"].notna()]
    if sep is not None and not pd.api.types.is_numeric_dtype(values):
        pairs = pairs.assign(category=pairs["category"].astype(str).str.split(sep, regex=False))
        pairs = pairs.explode("category")
        pairs["category"] = pairs["category"].str.strip()
        pairs = pairs[pairs["category"] != ""]
    pairs = pairs.drop_duplicates().reset_index(drop=True)
    numeric = pd.to_numeric(pairs["category"], errors="coerce")
    whole = numeric.notna().all() and bool((numeric == numeric.round()).all())
    category_ids = numeric.astype("int64") if whole else stable_ids(pairs["category"].astype(str))
    return pd.DataFrame({"item_id": pairs["item_id"].astype("int64"), "category_id": category_ids.to_numpy()})
