"""Tmall (IJCAI-15 repeat buyers, ``user_log_format1.csv``) prepared as the ASMG paper does.

Prep, in this order: clicks only (``action_type`` 0) of October 2014; the top ``n_users`` users by
click count in that month (ties broken by the smaller user id, so the cut is deterministic); then items
with at least ``min_item_clicks`` clicks among those users' clicks. One pass, no re-filtering after the
item cut, as in the paper's description. Implicit: every click is a positive; ``cat_id`` is the category.

The log only has a day (``time_stamp`` is MMDD, the year is implied), so ``ts`` is unix seconds of
00:00 UTC of that day and all clicks of a day tie. Ties keep file order (every sort here is stable), so
"earlier in the file" stands in for "earlier in the day", the only order the file gives.
"""

from __future__ import annotations

import calendar
from pathlib import Path

import numpy as np
import pandas as pd

from asmg.data._io import check_numeric, find_file, match_columns, read_csv_chunks, where
from asmg.data.log import DataError, InteractionLog, make_log

COLUMNS = ("user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp", "action_type")
NEEDED = ("user_id", "item_id", "cat_id", "time_stamp", "action_type")
CLICK = 0
FILES = ("user_log_format1.csv", "data_format1/user_log_format1.csv", "user_log_format1.csv.gz")
HINT = ("download data_format1.zip from https://tianchi.aliyun.com/dataset/dataDetail?dataId=42 (login "
        "needed) and put user_log_format1.csv in --data-dir (see `asmg datasets download tmall`)")


def load_tmall(
    data_dir: str | Path,
    n_users: int = 50_000,
    min_item_clicks: int = 20,
    year: int = 2014,
    month: int = 10,
    chunksize: int = 2_000_000,
) -> InteractionLog:
    """Load and prepare the Tmall click log (see the module docstring for the rules)."""
    path = find_file(Path(data_dir), FILES, HINT)
    header = list(pd.read_csv(path, nrows=0).columns)
    names = match_columns(header, {c: c for c in NEEDED}, path)
    expected = f"{len(header)} fields {header} per line"
    kept: list[pd.DataFrame] = []
    # Chunked so only the month's clicks are held; no usecols, so short/long rows are still caught.
    for start, chunk in read_csv_chunks(path, expected, chunksize):
        chunk = chunk.rename(columns={v: k for k, v in names.items()})
        check_numeric(chunk, path, NEEDED, header_lines=1, offset=start)
        stamp = chunk["time_stamp"].to_numpy(np.int64)
        mm, dd = stamp // 100, stamp % 100
        bad = (mm < 1) | (mm > 12) | (dd < 1) | (dd > 31)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: {where(path, start + row, 1)}: column 'time_stamp' has "
                            f"{int(stamp[row])}; expected MMDD (month 1-12, day 1-31)")
        mask = (chunk["action_type"].to_numpy() == CLICK) & (mm == month)
        kept.append(chunk.loc[mask, list(NEEDED)])
    clicks = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=list(NEEDED))
    clicks = clicks.astype({c: "int64" for c in NEEDED})

    days = calendar.monthrange(year, month)[1]
    clicks = clicks[clicks["time_stamp"] % 100 <= days]
    counts = clicks["user_id"].value_counts().rename("n").reset_index()
    top = counts.sort_values(["n", "user_id"], ascending=[False, True], kind="stable").head(n_users)
    clicks = clicks[clicks["user_id"].isin(top["user_id"])]
    item_counts = clicks["item_id"].value_counts()
    clicks = clicks[clicks["item_id"].isin(item_counts.index[item_counts >= min_item_clicks])]

    month_start = int(pd.Timestamp(year=year, month=month, day=1, tz="UTC").timestamp())
    events = pd.DataFrame({
        "user_id": clicks["user_id"],
        "item_id": clicks["item_id"],
        "ts": month_start + (clicks["time_stamp"] % 100 - 1) * 86_400,
        "label": np.float32(1.0),
    })
    categories = clicks[["item_id", "cat_id"]].rename(columns={"cat_id": "category_id"})
    return make_log("tmall", events, categories, implicit=True)
