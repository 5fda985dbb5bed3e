"""Loaders: the shared ML-100K copy, and tiny hand-made files in every other format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from asmg.cli_datasets import app
from asmg.data.generic import load_table
from asmg.data.log import DataError, stable_ids
from asmg.data.registry import DATASETS, describe, load_dataset
from asmg.data.sobazaar import load_sobazaar
from asmg.data.tmall import load_tmall
from tests.helpers import require_ml100k

OCT1 = 1412121600  # 2014-10-01 00:00 UTC
DAY = 86_400


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def assert_schema(log) -> None:
    assert list(log.events.columns) == ["user_id", "item_id", "ts", "label"]
    assert [str(t) for t in log.events.dtypes] == ["int64", "int64", "int64", "float32"]
    assert [str(t) for t in log.item_categories.dtypes] == ["int64", "int64"]
    assert log.events["ts"].is_monotonic_increasing


# ---------------------------------------------------------------- MovieLens


def test_ml100k_counts() -> None:
    ml100k = require_ml100k()
    log = load_dataset("ml-100k", ml100k)
    assert_schema(log)
    assert len(log.events) == 100_000
    assert log.n_users == 943
    assert log.n_items == 1_682
    assert log.item_categories["category_id"].nunique() == 19
    assert int(log.events["label"].sum()) == 55_375
    assert not log.implicit
    # the parent folder works too (a download destination)
    assert len(load_dataset("ml-100k", ml100k.parent).events) == 100_000
    stats = describe(log)
    assert stats["first_event"].startswith("1997-09-20") and stats["last_event"].startswith("1998-04-22")
    assert stats["positive_rate"] == pytest.approx(0.55375)


def test_cli_info_ml100k() -> None:
    result = CliRunner().invoke(app, ["info", "ml-100k"], env={"ASMG_DATA_DIR": str(require_ml100k())})
    assert result.exit_code == 0, result.output
    assert "100,000" in result.output and "943" in result.output and "0.5537" in result.output


def test_ml1m_format(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::10::5::978300760\n1::20::3::978300000\n2::10::4::978301000\n")
    write(tmp_path / "movies.dat", "10::Toy Story (1995)::Animation|Children's|Comedy\n20::Heat (1995)::Action\n")
    log = load_dataset("ml-1m", tmp_path)
    assert_schema(log)
    assert log.events["item_id"].tolist() == [20, 10, 10]
    assert log.events["label"].tolist() == [0.0, 1.0, 1.0]
    per_item = log.item_categories.groupby("item_id").size()
    assert per_item.to_dict() == {10: 3, 20: 1}


def test_ml1m_malformed_line(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::10::5::978300760\n1::xx::3::978300000\n")
    write(tmp_path / "movies.dat", "10::Toy Story (1995)::Animation\n")
    with pytest.raises(DataError, match=r"ratings\.dat: line 2: column 'item_id' has 'xx'; expected a number"):
        load_dataset("ml-1m", tmp_path)


def test_ml20m_format(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,4.0,1112484676\n")
    write(tmp_path / "movies.csv", 'movieId,title,genres\n2,Jumanji (1995),Adventure|Children\n'
                                   '29,"City of Lost Children, The (1995)",(no genres listed)\n')
    log = load_dataset("ml-20m", tmp_path)
    assert_schema(log)
    assert log.events["label"].tolist() == [1.0, 0.0]  # sorted by time: 29 first
    assert log.item_categories["item_id"].tolist() == [2, 2]


def test_movielens_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ratings\.csv: file not found"):
        load_dataset("ml-25m", tmp_path)


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'ml-7m'; known datasets: .*ml-100k.*tmall.*sobazaar"):
        load_dataset("ml-7m", ".")
    assert {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-25m-2014-2018", "ml-latest", "ml-latest-small",
            "tmall", "sobazaar"} == set(DATASETS)


# ---------------------------------------------------------------- Tmall

TMALL_HEADER = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"


def tmall_rows(rows: list[tuple[int, int, int, int, int]]) -> str:
    """(user, item, cat, MMDD, action) -> file text; seller/brand are filler (brand sometimes empty)."""
    lines = [f"{u},{i},{c},7,{'' if n % 3 else 9},{ts},{a}" for n, (u, i, c, ts, a) in enumerate(rows)]
    return TMALL_HEADER + "\n".join(lines) + "\n"


def test_tmall_prep_rules(tmp_path: Path) -> None:
    rows = [
        # user 1: 4 Oct clicks (most active); user 2: 3; user 3 and 4: 2 each (tie -> smaller id wins)
        (1, 100, 5, 1001, 0), (1, 100, 5, 1001, 0), (1, 200, 6, 1002, 0), (1, 300, 6, 1031, 0),
        (2, 100, 5, 1002, 0), (2, 200, 6, 1002, 0), (2, 300, 6, 1015, 0),
        (3, 100, 5, 1003, 0), (3, 400, 8, 1003, 0),
        (4, 100, 5, 1004, 0), (4, 400, 8, 1004, 0),
        # not clicks, or not October: ignored even though they would make user 4 the most active
        (4, 400, 8, 1005, 2), (4, 400, 8, 1005, 1), (4, 400, 8, 1005, 3), (4, 400, 8, 930, 0),
        (4, 400, 8, 1101, 0), (4, 400, 8, 1111, 0), (4, 400, 8, 511, 0),
    ]
    path = write(tmp_path / "user_log_format1.csv", tmall_rows(rows))
    log = load_tmall(tmp_path, n_users=3, min_item_clicks=2)
    assert_schema(log)
    assert log.implicit and (log.events["label"] == 1.0).all()
    # users 1, 2, 3 kept (4 loses the tie); then items 100 (5 clicks), 200 and 300 (2 each) kept,
    # item 400 has only 1 click among the kept users (user 4's clicks no longer count)
    assert set(log.events["user_id"]) == {1, 2, 3}
    assert set(log.events["item_id"]) == {100, 200, 300}
    assert len(log.events) == 4 + 3 + 1
    # ts = midnight UTC of the day; within a day the file order is kept
    assert set(log.events["ts"] - OCT1) <= {d * DAY for d in range(31)}
    day2 = log.events[log.events["ts"] == OCT1 + DAY]
    assert list(zip(day2["user_id"], day2["item_id"], strict=True)) == [(1, 200), (2, 100), (2, 200)]
    assert log.events["ts"].max() == OCT1 + 30 * DAY
    cats = dict(zip(log.item_categories["item_id"], log.item_categories["category_id"], strict=True))
    assert cats == {100: 5, 200: 6, 300: 6}
    # defaults: items need 20 clicks, so none of these survive
    assert len(load_tmall(path.parent).events) == 0


def test_tmall_default_threshold_and_subfolder(tmp_path: Path) -> None:
    rows = [(u, 1, 3, 1010, 0) for u in range(20)] + [(u, 2, 3, 1010, 0) for u in range(19)]
    write(tmp_path / "data_format1" / "user_log_format1.csv", tmall_rows(rows))
    log = load_dataset("tmall", tmp_path)
    assert set(log.events["item_id"]) == {1}
    assert log.n_users == 20


def test_tmall_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"user_log_format1\.csv: file not found.*tianchi\.aliyun\.com"):
        load_tmall(tmp_path)


def test_tmall_missing_column(tmp_path: Path) -> None:
    write(tmp_path / "user_log_format1.csv", "user_id,item_id,cat_id,seller_id,brand_id,action_type\n1,2,3,4,5,0\n")
    with pytest.raises(DataError, match=r"no column 'time_stamp'.*available columns: \['user_id'"):
        load_tmall(tmp_path)


def test_tmall_malformed_lines(tmp_path: Path) -> None:
    good = "1,2,3,4,5,1001,0\n"
    write(tmp_path / "user_log_format1.csv", TMALL_HEADER + good * 3 + "1,2,3,4,5,1001,0,99\n")
    with pytest.raises(DataError, match=r"line 5: 8 fields; expected 7"):
        load_tmall(tmp_path)
    write(tmp_path / "user_log_format1.csv", TMALL_HEADER + good + "\n" + good + "1,abc,3,4,5,1001,0\n")
    with pytest.raises(DataError, match=r"line 5: column 'item_id' has 'abc'; expected a number"):
        load_tmall(tmp_path, chunksize=1)
    write(tmp_path / "user_log_format1.csv", TMALL_HEADER + good + "1,2,3,4,5,1032,0\n")
    with pytest.raises(DataError, match=r"line 3: column 'time_stamp' has 1032; expected MMDD"):
        load_tmall(tmp_path)


# ---------------------------------------------------------------- Sobazaar


def write_gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt") as handle:
        handle.write(text)
    return path


def test_sobazaar(tmp_path: Path) -> None:
    write_gz(tmp_path / "Sobazaar-hashID.csv.gz", (
        "Action,Timestamp,ItemID,UserID\n"
        "content:interact:product_clicked,2014-10-02T10:00:00.123Z,aa11,u1\n"
        "purchase:buy_clicked,2014-10-01T09:00:00,bb22,u2\n"
        "content:interact:product_wanted,2014-10-01T09:00:01.5,aa11,u2\n"
    ))
    log = load_dataset("sobazaar", tmp_path)
    assert_schema(log)
    assert log.implicit and (log.events["label"] == 1.0).all()
    assert log.item_categories.empty
    assert log.events["ts"].tolist() == [1412154000, 1412154001, 1412244000]
    users = stable_ids(pd.Series(["u2", "u2", "u1"]))
    assert log.events["user_id"].tolist() == users.tolist()
    assert (log.events["user_id"] >= 0).all()
    only = load_sobazaar(tmp_path, actions=["purchase:buy_clicked"])
    assert len(only.events) == 1


def test_sobazaar_header_case_and_errors(tmp_path: Path) -> None:
    write(tmp_path / "Sobazaar-hashID.csv", "action,timestamp,itemid,userid\nx,2014-10-01T00:00:00,i,u\n")
    assert len(load_sobazaar(tmp_path).events) == 1
    write(tmp_path / "Sobazaar-hashID.csv", "action,when,itemid,userid\nx,2014-10-01T00:00:00,i,u\n")
    with pytest.raises(DataError, match=r"no column 'Timestamp'.*available columns: \['action', 'when'"):
        load_sobazaar(tmp_path)
    write(tmp_path / "Sobazaar-hashID.csv", "Action,Timestamp,ItemID,UserID\nx,2014-10-01T00:00:00,i,u\n"
                                            "x,yesterday,i,u\n")
    with pytest.raises(DataError, match=r"line 3: column 'Timestamp' has 'yesterday'; expected .*ISO 8601"):
        load_sobazaar(tmp_path)
    (tmp_path / "Sobazaar-hashID.csv").unlink()
    with pytest.raises(DataError, match=r"Sobazaar-hashID\.csv\.gz: file not found"):
        load_sobazaar(tmp_path)


# ---------------------------------------------------------------- generic


def test_generic_csv_ratings_categories(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", (
        "uid,sku,when,stars,tags\n"
        "alice,A1,2021-01-02 00:00:00,5,shoes|red\n"
        "bob,B2,2021-01-01 00:00:00,2,bags\n"
        "alice,B2,2021-01-03T12:00:00Z,4,\n"
    ))
    log = load_table(path, user="uid", item="sku", ts="when", label="stars", categories="tags",
                     positive_threshold=4)
    assert_schema(log)
    assert not log.implicit and log.name == "ratings"
    assert log.events["label"].tolist() == [0.0, 1.0, 1.0]
    assert log.events["ts"].tolist() == [1609459200, 1609545600, 1609675200]
    sku = dict(zip(["A1", "B2"], stable_ids(pd.Series(["A1", "B2"])), strict=True))
    assert log.item_categories.groupby("item_id").size().to_dict() == {sku["A1"]: 2, sku["B2"]: 1}


def test_generic_numeric_ts_and_implicit(tmp_path: Path) -> None:
    path = write(tmp_path / "clicks.csv", "User,Item,Time,Cat\n1,10,1600000000000,3\n2,11,1600000001000,4\n")
    log = load_table(path, user="user", item="item", ts="time", categories="cat")  # case-insensitive
    assert log.implicit and log.events["ts"].tolist() == [1600000000, 1600000001]
    assert log.item_categories.to_dict("list") == {"item_id": [10, 11], "category_id": [3, 4]}
    seconds = write(tmp_path / "s.tsv", "u\ti\tt\tl\n1\t2\t1600000000\t1\n1\t3\t1600000005\t0\n")
    log = load_table(seconds, user="u", item="i", ts="t", label="l")
    assert log.events["ts"].tolist() == [1600000000, 1600000005] and not log.implicit
    positives = load_table(seconds, user="u", item="i", ts="t", label="l", implicit=True)
    assert positives.implicit and positives.events["item_id"].tolist() == [2]


def test_generic_parquet_and_registry(tmp_path: Path) -> None:
    frame = pd.DataFrame({"u": ["x", "y"], "i": [1, 2], "t": pd.to_datetime(["2020-01-01", "2020-01-02"]),
                          "r": [4.5, 1.0]})
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    log = load_dataset("parquet", path, user="u", item="i", ts="t", label="r", positive_threshold=4)
    assert log.events["label"].tolist() == [1.0, 0.0]
    assert log.events["ts"].tolist() == [1577836800, 1577923200]
    frame.assign(i=[1.5, 2.0]).to_parquet(path)
    with pytest.raises(DataError, match=r"row 1: column 'i' has 1.5; expected a whole-number or string id"):
        load_table(path, user="u", item="i", ts="t")


def test_generic_ts_format(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "u,i,day\n1,2,02/01/2021\n1,3,31/12/2020\n")
    log = load_table(path, user="u", item="i", ts="day", ts_format="%d/%m/%Y")
    assert log.events["ts"].tolist() == [1609372800, 1609545600]
    with pytest.raises(DataError, match=r"line 2: column 'day' has '02/01/2021'; expected a time in format"):
        load_table(path, user="u", item="i", ts="day", ts_format="%Y-%m-%d")


def test_generic_errors_name_file_line_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", "u,i,t\n1,2,100\n1,3,101\n")
    with pytest.raises(DataError, match=r"bad\.csv: no column 'label' \(for label\); available columns: "
                                        r"\['u', 'i', 't'\]"):
        load_table(path, user="u", item="i", ts="t", label="label")
    write(path, "u,i,t\n1,2,100\n\n1,3,101,7\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 4: 4 fields; expected 3"):
        load_table(path, user="u", item="i", ts="t")
    write(path, "u,i,t\n1,2,100\n\n1,3\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 4: column 't' is empty; expected a value"):
        load_table(path, user="u", item="i", ts="t")
    write(path, "u,i,t\n1,2,100\n1,3,101\n1,4,soon\n")
    with pytest.raises(DataError, match=r"line 4: column 't' has 'soon'; expected a number"):
        load_table(path, user="u", item="i", ts="t")
    write(path, "u,i,t,y\n1,2,100,1\n1,3,101,5\n")
    with pytest.raises(DataError, match=r"line 3: column 'y' has 5; expected a 0/1 label"):
        load_table(path, user="u", item="i", ts="t", label="y")
    with pytest.raises(DataError, match=r"needs a label column"):
        load_table(path, user="u", item="i", ts="t", implicit=False)
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_table(tmp_path / "nope.csv", user="u", item="i", ts="t")
    write(path, "")
    with pytest.raises(DataError, match=r"bad\.csv: empty file"):
        load_table(path, user="u", item="i", ts="t")


def test_cli_info_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "u,i,t,r\n1,2,1600000000,5\n2,2,1600003600,1\n")
    result = CliRunner().invoke(app, ["info", "csv", "--data-dir", str(path), "--user", "u", "--item", "i",
                                      "--ts", "t", "--label", "r", "--positive-threshold", "4"])
    assert result.exit_code == 0, result.output
    assert "events: 2" in result.output and "positive_rate: 0.5000" in result.output
    result = CliRunner().invoke(app, ["info", "csv", "--data-dir", str(path), "--user", "who"])
    assert result.exit_code == 1 and "no column 'who'" in result.output


def test_loaders_are_vectorised_enough(tmp_path: Path) -> None:
    """No per-row Python: the Python calls a load makes do not grow with the rows (counted with a profiler,
    not timed), and the rows come out as written."""
    import sys

    def load_counting_calls(n: int):
        rng = np.random.default_rng(n)
        frame = pd.DataFrame({"u": rng.integers(0, 1000, n), "i": rng.integers(0, 500, n),
                              "t": 1_600_000_000 + np.arange(n)})
        frame.to_csv(tmp_path / f"big-{n}.csv", index=False)
        calls = [0]

        def count(frame, event, arg):
            if event in ("call", "c_call"):
                calls[0] += 1

        load_table(tmp_path / f"big-{n}.csv", user="u", item="i", ts="t")  # imports and caches out of the count
        sys.setprofile(count)
        try:
            log = load_table(tmp_path / f"big-{n}.csv", user="u", item="i", ts="t")
        finally:
            sys.setprofile(None)
        return frame, log, calls[0]

    _, _, small_calls = load_counting_calls(1_000)
    frame, log, big_calls = load_counting_calls(100_000)
    assert big_calls < small_calls + 1_000, (small_calls, big_calls)  # 99,000 more rows, (almost) no more calls
    events = log.events
    assert len(events) == len(frame)
    np.testing.assert_array_equal(events["user_id"].to_numpy(), frame["u"].to_numpy())
    np.testing.assert_array_equal(events["item_id"].to_numpy(), frame["i"].to_numpy())
    np.testing.assert_array_equal(events["ts"].to_numpy(), frame["t"].to_numpy())
    assert (events["label"] == 1).all()
