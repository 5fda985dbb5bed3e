"""The paper's MovieLens: ml-25m restricted to 2014-2018, read from the ml-25m files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from asmg.data.registry import DATASETS, load_dataset, resolve_dir


def utc(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").timestamp())


def write_ml25m(root: Path) -> None:
    root.mkdir(parents=True)
    rows = [  # user, movie, rating, time
        (1, 10, 4.0, "2013-12-31 23:59:59"),  # before the slice
        (1, 11, 5.0, "2014-01-01 00:00:00"),  # first second of the slice
        (2, 10, 2.0, "2016-06-15 12:00:00"),
        (3, 12, 4.5, "2018-12-31 23:59:59"),  # last second of the slice
        (3, 13, 4.0, "2019-01-01 00:00:00"),  # after it
        (4, 13, 3.0, "2020-05-05 00:00:00"),  # a user only outside the slice
    ]
    lines = ["userId,movieId,rating,timestamp", *(f"{u},{m},{r},{utc(t)}" for u, m, r, t in rows)]
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    (root / "movies.csv").write_text("movieId,title,genres\n10,A (1995),Drama|Comedy\n11,B (1996),Drama\n"
                                     "12,C (2000),(no genres listed)\n13,D (2019),IMAX\n")


def test_slice_keeps_2014_through_2018_only(tmp_path: Path) -> None:
    write_ml25m(tmp_path / "ml-25m")
    log = load_dataset("ml-25m-2014-2018", tmp_path)  # a download destination holding ml-25m/
    events = log.events
    assert events["ts"].tolist() == [utc("2014-01-01"), utc("2016-06-15 12:00"), utc("2018-12-31 23:59:59")]
    assert events["user_id"].tolist() == [1, 2, 3]
    assert events["label"].tolist() == [1.0, 0.0, 1.0]  # rating >= 4, as the paper labels MovieLens
    assert set(log.item_categories["item_id"]) == {10, 11, 13}  # genres of every movie; none listed = none
    full = load_dataset("ml-25m", tmp_path)
    assert len(full.events) == 6  # the plain ml-25m is not sliced


def test_slice_downloads_and_reads_the_ml25m_archive(tmp_path: Path) -> None:
    entry, base = DATASETS["ml-25m-2014-2018"], DATASETS["ml-25m"]
    assert entry.url == base.url and entry.folder == base.folder == "ml-25m"
    write_ml25m(tmp_path / "ml-25m")
    assert resolve_dir(entry, tmp_path) == tmp_path / "ml-25m"
