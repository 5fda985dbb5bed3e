"""History and negative sampling on hand-made cases."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from asmg.data.log import DataError, make_log
from asmg.data.negatives import sample_negatives
from asmg.data.periods import calendar_bounds, equal_count_bounds
from asmg.data.samples import build_samples, history_matrix, padded_from_ragged, ragged_from_padded


def _log(rows, implicit=False, categories=None):
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "label"])
    return make_log("hand", events, categories, implicit=implicit)


def _histories(samples):
    return [list(h) for h in samples["history"]]


def test_history_holds_earlier_positives_only_and_ties_do_not_see_each_other():
    samples = build_samples(_log([
        (1, 10, 100, 1), (1, 11, 200, 0), (1, 12, 300, 1), (1, 13, 300, 1), (1, 14, 400, 1),
        (2, 10, 150, 1),
    ]))
    by_item = {(u, i): h for u, i, h in zip(samples["user_id"], samples["item_id"], _histories(samples), strict=True)}
    assert by_item[(1, 10)] == []
    assert by_item[(1, 11)] == [10]
    assert by_item[(1, 12)] == [10]  # item 11 was a negative
    assert by_item[(1, 13)] == [10]  # 12 happened at the same second: not before
    assert by_item[(1, 14)] == [10, 12, 13]
    assert by_item[(2, 10)] == []  # another user's history is separate


def test_history_keeps_repeated_items_and_caps_length():
    rows = [(1, 5 if t % 2 else 6, t, 1) for t in range(40)]
    samples = build_samples(_log(rows))
    last = _histories(samples)[-1]
    assert len(last) == 30
    assert last == [5 if t % 2 else 6 for t in range(9, 39)]  # the 30 most recent, oldest first


def test_history_matrix_matches_a_direct_loop_on_random_data():
    rng = np.random.default_rng(3)
    n = 400
    user, item = rng.integers(0, 7, n), rng.integers(0, 50, n)
    ts, label = np.sort(rng.integers(0, 60, n)), (rng.random(n) < 0.6).astype(np.float32)
    hist, lengths = history_matrix(user, ts, label, item, history_len=5)
    for i in range(n):
        expected = [item[j] for j in range(n) if user[j] == user[i] and ts[j] < ts[i] and label[j] > 0][-5:]
        assert lengths[i] == len(expected)
        assert list(hist[i, 5 - lengths[i]:]) == expected
        assert not hist[i, : 5 - lengths[i]].any()  # left-padded with 0
    assert hist.dtype == np.int64 and (lengths < 5).any()


def test_padded_ragged_round_trip_survives_slicing():
    samples = build_samples(_log([(1, i, i, 1) for i in range(1, 8)]))
    part = samples.iloc[3:].reset_index(drop=True)
    padded, lengths = padded_from_ragged(part["history"], 30)
    assert list(lengths) == [3, 4, 5, 6]
    assert list(padded[-1, -6:]) == [1, 2, 3, 4, 5, 6]
    assert padded.dtype == np.int64 and not padded[:, :24].any()
    empty = ragged_from_padded(np.zeros((3, 30), np.int64), np.zeros(3, np.int64))  # no history at all
    assert str(pa.array(empty).type) == "list<item: int64>" and [list(h) for h in empty] == [[], [], []]


def test_negatives_avoid_items_the_user_had_by_then():
    rows = [(1, 1, 10, 1), (1, 2, 20, 1), (1, 3, 30, 1), (2, 4, 30, 1), (2, 1, 40, 1)]
    samples = build_samples(_log(rows, implicit=True), seed=7)
    assert len(samples) == 2 * len(rows)
    assert list(samples["label"]) == [1, 0] * len(rows)
    negatives = samples[samples["label"] == 0]
    seen = {1: {(1, 10), (2, 20), (3, 30)}, 2: {(4, 30), (1, 40)}}
    for user, item, ts in zip(negatives["user_id"], negatives["item_id"], negatives["ts"], strict=True):
        assert not any(i == item and t <= ts for i, t in seen[user])
    # user 1 at t=30 had items 1, 2, 3 (3 at that very second): only item 4 is left
    assert negatives.iloc[2]["item_id"] == 4


def test_negatives_repeat_with_the_seed_and_change_with_it():
    rng = np.random.default_rng(0)
    rows = [(int(u), int(i), int(t), 1) for u, i, t in zip(rng.integers(1, 20, 400), rng.integers(1, 50, 400),
                                                            np.sort(rng.integers(0, 1000, 400)), strict=True)]
    log = _log(rows, implicit=True)
    first, again, other = (build_samples(log, seed=s) for s in (5, 5, 6))
    negatives = lambda frame: frame.loc[frame.label == 0, "item_id"].tolist()  # noqa: E731
    assert negatives(first) == negatives(again)  # a replay of the same log draws the same negatives
    assert negatives(first) != negatives(other)


def test_negative_sampling_is_uniform_over_unseen_items():
    rng = np.random.default_rng(0)
    n = 20000
    user = np.zeros(n, dtype=np.int64)
    ts = np.full(n, 5, dtype=np.int64)
    catalogue = np.arange(10, dtype=np.int64)
    negatives = sample_negatives(user, ts, np.array([0, 0]), np.array([3, 7]), np.array([1, 1]), catalogue, rng)
    counts = np.bincount(negatives, minlength=10)
    assert counts[3] == 0 and counts[7] == 0
    assert np.all(np.abs(counts[[0, 1, 2, 4, 5, 6, 8, 9]] / n - 1 / 8) < 0.01)


def test_negative_sampling_refuses_users_who_saw_everything():
    with pytest.raises(DataError, match="every item"):
        sample_negatives(np.array([0]), np.array([9]), np.array([0, 0]), np.array([1, 2]), np.array([1, 1]),
                         np.array([1, 2]), np.random.default_rng(0))


def test_categories_follow_the_target_item():
    categories = pd.DataFrame({"item_id": [10, 10, 11], "category_id": [3, 4, 5]})
    samples = build_samples(_log([(1, 10, 1, 1), (1, 11, 2, 1), (1, 12, 3, 1)], categories=categories))
    assert [list(c) for c in samples["categories"]] == [[3, 4], [5], []]


def test_equal_count_periods_are_time_intervals_and_drop_the_remainder():
    ts = np.arange(100)
    bounds = equal_count_bounds(ts, 3)
    assert bounds.to_list() == [0, 33, 66, 99]
    periods = bounds.assign(ts)
    assert list(np.bincount(periods)) == [1, 33, 33, 33]  # event 99 is the dropped remainder


def test_calendar_periods_align_to_days():
    day = 86400
    bounds = calendar_bounds(np.array([day * 3 + 5, day * 5 + 10]), "1D")
    assert bounds.to_list() == [3 * day, 4 * day, 5 * day, 6 * day]
