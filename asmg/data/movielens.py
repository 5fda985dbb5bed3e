"""MovieLens loaders: 100K (u.data + u.item genres), 1M/10M (``::`` files), 20M/25M/latest (csv).

Explicit ratings: label = 1 if rating >= 4 else 0, genres are the item's categories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from asmg.data._io import check_numeric as _check_numeric
from asmg.data._io import read_table as _read_table
from asmg.data._io import require as _require
from asmg.data.log import DataError, InteractionLog, make_log, stable_ids

POSITIVE_RATING = 4.0
ML100K_GENRES = 19


def _explicit_events(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": frame["user_id"].astype("int64"),
        "item_id": frame["item_id"].astype("int64"),
        "ts": frame["ts"].astype("int64"),
        "label": (frame["rating"].astype("float32") >= POSITIVE_RATING).astype("float32"),
    })


def load_ml100k(data_dir: str | Path) -> InteractionLog:
    root = Path(data_dir)
    hint = "point --data-dir at the unpacked ml-100k folder (see `asmg datasets download ml-100k`)"
    ratings = _read_table(_require(root / "u.data", hint), "\t", ["user_id", "item_id", "rating", "ts"])
    items = pd.read_csv(_require(root / "u.item", hint), sep="|", header=None, encoding="latin-1")
    if items.shape[1] != 5 + ML100K_GENRES:
        raise DataError(f"{root / 'u.item'}: {items.shape[1]} fields per line; expected {5 + ML100K_GENRES} "
                        "(id|title|release|video release|url|19 genre flags)")
    flags = items.iloc[:, 5:].to_numpy(dtype=np.int8)
    item_idx, genre = np.nonzero(flags)
    categories = pd.DataFrame({"item_id": items.iloc[item_idx, 0].to_numpy(np.int64), "category_id": genre})
    return make_log("ml-100k", _explicit_events(ratings), categories, implicit=False)


def _split_genres(items: pd.DataFrame) -> pd.DataFrame:
    genres = items[["item_id", "genres"]].assign(genre=items["genres"].astype(str).str.split("|")).explode("genre")
    genres = genres[genres["genre"].notna() & (genres["genre"] != "(no genres listed)")]
    return pd.DataFrame({"item_id": genres["item_id"].astype("int64"),
                         "category_id": stable_ids(genres["genre"].reset_index(drop=True)).to_numpy()})


def load_ml_colon(data_dir: str | Path, name: str) -> InteractionLog:
    """MovieLens 1M and 10M: ratings.dat and movies.dat with ``::`` separators."""
    root = Path(data_dir)
    hint = f"point --data-dir at the unpacked {name} folder"
    ratings = _read_table(_require(root / "ratings.dat", hint), "::", ["user_id", "item_id", "rating", "ts"])
    movies = pd.read_csv(_require(root / "movies.dat", hint), sep="::", engine="python", header=None,
                         names=["item_id", "title", "genres"], encoding="latin-1")
    return make_log(name, _explicit_events(ratings), _split_genres(movies), implicit=False)


def in_time_range(ts: pd.Series, since: str | None, until: str | None) -> pd.Series:
    """Events with since <= time < until (UTC dates or timestamps; None = open)."""
    keep = pd.Series(True, index=ts.index)
    if since is not None:
        keep &= ts >= int(pd.Timestamp(since, tz="UTC").timestamp())
    if until is not None:
        keep &= ts < int(pd.Timestamp(until, tz="UTC").timestamp())
    return keep


def load_ml_csv(data_dir: str | Path, name: str, since: str | None = None, until: str | None = None
                ) -> InteractionLog:
    """MovieLens 20M, 25M and latest: ratings.csv and movies.csv with headers; ``since``/``until``
    keep a time slice (the paper's MovieLens is ml-25m from 2014 through 2018)."""
    root = Path(data_dir)
    hint = f"point --data-dir at the unpacked {name} folder"
    ratings = pd.read_csv(_require(root / "ratings.csv", hint))
    expected = {"userId", "movieId", "rating", "timestamp"}
    if not expected <= set(ratings.columns):
        raise DataError(f"{root / 'ratings.csv'}: header has {list(ratings.columns)}; expected {sorted(expected)}")
    ratings = ratings.rename(columns={"userId": "user_id", "movieId": "item_id", "timestamp": "ts"})
    _check_numeric(ratings, root / "ratings.csv", ["user_id", "item_id", "rating", "ts"], header_lines=1)
    ratings = ratings[in_time_range(ratings["ts"], since, until)]
    movies = pd.read_csv(_require(root / "movies.csv", hint)).rename(columns={"movieId": "item_id"})
    return make_log(name, _explicit_events(ratings), _split_genres(movies), implicit=False)
