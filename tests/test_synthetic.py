"""The synthetic drifting log: schema, determinism, drift, arrivals, labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from asmg.data.synthetic import synthetic_log

SMALL = dict(n_users=300, n_items=200, n_categories=10, n_periods=31, events_per_period=1500)


def item_share(items: pd.Series, n_items: int) -> np.ndarray:
    return np.bincount(items.to_numpy(), minlength=n_items) / len(items)


def first_last_tv(drift: float, seed: int) -> float:
    """Total variation between item popularity in the first and the last period."""
    log = synthetic_log(**SMALL, seed=seed, drift=drift, new_user_fraction=0.0, new_item_fraction=0.0)
    per = SMALL["events_per_period"]
    first = item_share(log.events["item_id"].iloc[:per], SMALL["n_items"])
    last = item_share(log.events["item_id"].iloc[-per:], SMALL["n_items"])
    return 0.5 * float(np.abs(first - last).sum())


def test_schema_and_periods() -> None:
    log = synthetic_log(**SMALL, seed=1)
    events = log.events
    assert len(events) == 31 * 1500
    assert [str(t) for t in events.dtypes] == ["int64", "int64", "int64", "float32"]
    assert events["ts"].is_monotonic_increasing
    period = (events["ts"] - events["ts"].iloc[0] // 86_400 * 86_400) // 86_400
    assert (period.value_counts().sort_index().to_numpy() == 1500).all()  # equal-count chunks = periods
    assert log.implicit and (events["label"] == 1.0).all()
    cats = log.item_categories
    assert cats["category_id"].between(0, 9).all() and set(cats["item_id"]) == set(range(200))
    assert (cats.groupby("item_id").size() >= 1).all() and (cats.groupby("item_id").size() > 1).any()


def test_deterministic_for_a_seed() -> None:
    a = synthetic_log(**SMALL, seed=7, implicit=False)
    b = synthetic_log(**SMALL, seed=7, implicit=False)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.item_categories, b.item_categories)
    c = synthetic_log(**SMALL, seed=8, implicit=False)
    assert not a.events.equals(c.events)


def test_drift_changes_popularity() -> None:
    for seed in (0, 1):
        still, moving = first_last_tv(0.0, seed), first_last_tv(0.5, seed)
        assert still < 0.3  # sampling noise only
        assert moving > still + 0.2


def test_user_interests_drift() -> None:
    """The same users' category mix moves between the first and last third with drift, not without."""
    def shift(drift: float) -> float:
        log = synthetic_log(**SMALL, seed=3, drift=drift, new_user_fraction=0.0, new_item_fraction=0.0)
        primary = log.item_categories.drop_duplicates("item_id").set_index("item_id")["category_id"]
        events = log.events.assign(cat=lambda e: primary.reindex(e["item_id"]).to_numpy())
        third = len(events) // 3
        early = pd.crosstab(events["user_id"].iloc[:third], events["cat"].iloc[:third], normalize="index")
        late = pd.crosstab(events["user_id"].iloc[-third:], events["cat"].iloc[-third:], normalize="index")
        early, late = early.align(late, join="inner", axis=0)
        early, late = early.align(late, join="outer", axis=1, fill_value=0.0)
        return float(0.5 * (early - late).abs().sum(axis=1).mean())

    assert shift(0.5) > shift(0.0) + 0.1


def test_new_ids_arrive_later() -> None:
    log = synthetic_log(**SMALL, seed=2, new_user_fraction=0.3, new_item_fraction=0.3)
    events = log.events
    period = (events["ts"] - events["ts"].min()) // 86_400
    first_seen_user = period.groupby(events["user_id"]).min()
    first_seen_item = period.groupby(events["item_id"]).min()
    assert (first_seen_user > 10).sum() > 20 and (first_seen_item > 10).sum() > 10
    first_period = events[period == 0]
    assert first_period["item_id"].max() < 0.7 * 200 + 1  # late items (the top 30% of ids) absent at start
    assert first_period["user_id"].max() < 0.7 * 300 + 1
    assert events["item_id"].max() >= 0.7 * 200  # and they do show up later


def test_explicit_labels() -> None:
    log = synthetic_log(**SMALL, seed=4, implicit=False)
    labels = log.events["label"]
    assert not log.implicit and set(labels.unique()) == {0.0, 1.0}
    assert 0.35 < labels.mean() < 0.65


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="drift"):
        synthetic_log(drift=1.5)
    with pytest.raises(ValueError, match="new_user_fraction"):
        synthetic_log(new_user_fraction=1.0)


def test_large_catalogue_uses_sampled_candidates() -> None:
    log = synthetic_log(n_users=2000, n_items=5000, n_periods=3, events_per_period=3000, seed=0)
    assert len(log.events) == 9000 and log.events["item_id"].nunique() > 500


def test_the_demo_replay_at_its_default_size_is_the_named_synthetic_stream() -> None:
    """The demo replays `scaled_synthetic_log(77_500)`; the experiments' `synthetic` must be that same stream."""
    from asmg.data.synthetic import named_synthetic_log, scaled_synthetic_log

    demo, named = scaled_synthetic_log(77_500), named_synthetic_log("synthetic", cache_dir=None)
    pd.testing.assert_frame_equal(demo.events, named.events)
    bigger = scaled_synthetic_log(310_000)
    assert len(bigger.events) > 3 * len(demo.events) and bigger.events["user_id"].nunique() > 800
