"""A synthetic interaction log whose users and items drift over time, for tests, benchmarks and demos.

Why: the ASMG question is whether a model kept fresh beats one that goes stale. A stationary toy log
can't show that, so here user interests, item popularity and category trends move every period
(AR(1) random walks: ``x_t = sqrt(1 - drift^2) x_{t-1} + drift * noise``, variance kept constant) and
new users and items keep arriving. ``drift=0`` (with no arrivals) is stationary.

Model: users and items have latent vectors; an item's vector sits near its category's centre. Each
period, users are drawn by a fixed activity weight among those who have arrived, and each picks an
item by softmax(affinity + item popularity + category trend) over the items that have arrived
(Gumbel-max, vectorised; sampled candidates for catalogues over 2,048 items). Explicit logs label each
event Bernoulli(sigmoid(3 * (affinity - the period's median affinity))), about half positive; implicit
logs keep every event as a positive.
Periods are days from 2014-10-01 UTC by default, ``events_per_period`` events each, so 31 equal-count
chunks of a 31-period log are exactly its periods. Ids are assigned in arrival order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from asmg.data.log import InteractionLog, make_log

START = "2014-10-01"
MAX_CHUNK_CELLS = 1 << 21
EXACT_MAX_ITEMS = 2048
CANDIDATES = 128
SECOND_CATEGORY_P = 0.2
LABEL_SHARPNESS = 3.0
DEFAULT_CACHE = Path(".cache/synthetic")


def _arrivals(n: int, new_fraction: float, n_periods: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival period per id: most at period 0, the rest spread over later periods (sorted by id)."""
    n_new = int(round(new_fraction * n)) if n_periods > 1 else 0
    n_new = min(n_new, n - 1)  # at least one id must exist from the start
    later = np.sort(rng.integers(1, n_periods, size=n_new)) if n_new else np.zeros(0, np.int64)
    return np.concatenate([np.zeros(n - n_new, np.int64), later])


def _walk(x: np.ndarray, drift: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    return np.sqrt(1.0 - drift**2) * x + drift * scale * rng.standard_normal(x.shape)


def _pick_items(users: np.ndarray, available: np.ndarray, user_vec: np.ndarray, item_vec: np.ndarray,
                bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each event's item from softmax(affinity + bias) over the available items.

    Small catalogues: exact Gumbel-max, in chunks to bound memory. Large ones: sampling-importance-
    resampling, i.e. ``CANDIDATES`` draws from softmax(bias), then Gumbel-max on affinity among them
    (approximate, but events x CANDIDATES instead of events x items).
    """
    picked = np.empty(len(users), np.int64)
    if len(available) <= EXACT_MAX_ITEMS:
        step = max(1, MAX_CHUNK_CELLS // len(available))
        for lo in range(0, len(users), step):
            logits = user_vec[users[lo:lo + step]] @ item_vec[available].T + bias[available]
            logits += rng.gumbel(size=logits.shape)
            picked[lo:lo + step] = available[np.argmax(logits, axis=1)]
        return picked
    weights = np.exp(bias[available] - bias[available].max())
    candidates = rng.choice(available, size=(len(users), CANDIDATES), p=weights / weights.sum())
    step = max(1, MAX_CHUNK_CELLS // CANDIDATES)
    for lo in range(0, len(users), step):
        block, cand = users[lo:lo + step], candidates[lo:lo + step]
        logits = np.einsum("ed,ekd->ek", user_vec[block], item_vec[cand])
        logits += rng.gumbel(size=logits.shape)
        picked[lo:lo + step] = cand[np.arange(len(block)), np.argmax(logits, axis=1)]
    return picked


def synthetic_log(
    n_users: int = 1000,
    n_items: int = 500,
    n_categories: int = 20,
    n_periods: int = 31,
    events_per_period: int = 1000,
    seed: int = 0,
    drift: float = 0.3,
    implicit: bool = True,
    dim: int = 8,
    new_user_fraction: float = 0.3,
    new_item_fraction: float = 0.3,
    period_seconds: int = 86_400,
    start: str = START,
    name: str = "synthetic",
) -> InteractionLog:
    """Generate a drifting log (see the module docstring). Deterministic for a given ``seed``."""
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be in [0, 1], got {drift}")
    if min(n_users, n_items, n_categories, n_periods, dim) < 1 or events_per_period < 0:
        raise ValueError("n_users, n_items, n_categories, n_periods and dim must be >= 1, events_per_period >= 0")
    if not (0.0 <= new_user_fraction < 1.0 and 0.0 <= new_item_fraction < 1.0):
        raise ValueError("new_user_fraction and new_item_fraction must be in [0, 1)")
    rng = np.random.default_rng(seed)

    user_arrival = _arrivals(n_users, new_user_fraction, n_periods, rng)
    item_arrival = _arrivals(n_items, new_item_fraction, n_periods, rng)
    centres = rng.standard_normal((n_categories, dim))
    category = rng.integers(0, n_categories, size=n_items)
    item_vec = (centres[category] + 0.5 * rng.standard_normal((n_items, dim))) / np.sqrt(dim)
    user_vec = rng.standard_normal((n_users, dim))
    popularity = rng.standard_normal(n_items)
    trend = 0.5 * rng.standard_normal(n_categories)
    activity = rng.lognormal(0.0, 1.0, size=n_users)

    second = rng.random(n_items) < SECOND_CATEGORY_P
    if n_categories > 1:
        other = (category + rng.integers(1, n_categories, size=n_items)) % n_categories
    else:
        other, second = category, np.zeros(n_items, bool)
    item_categories = pd.DataFrame({
        "item_id": np.concatenate([np.arange(n_items), np.flatnonzero(second)]),
        "category_id": np.concatenate([category, other[second]]),
    })

    origin = int(pd.Timestamp(start, tz="UTC").timestamp())
    frames = []
    for period in range(n_periods):
        if period:
            user_vec = _walk(user_vec, drift, 1.0, rng)
            popularity = _walk(popularity, drift, 1.0, rng)
            trend = _walk(trend, drift, 0.5, rng)
        active = np.flatnonzero(user_arrival <= period)
        available = np.flatnonzero(item_arrival <= period)
        weights = activity[active] / activity[active].sum()
        users = rng.choice(active, size=events_per_period, p=weights)
        items = _pick_items(users, available, user_vec, item_vec, popularity + trend[category], rng)
        ts = origin + period * period_seconds + np.sort(rng.integers(0, period_seconds, events_per_period))
        if implicit:
            label = np.ones(events_per_period, np.float32)
        else:
            affinity = np.einsum("ij,ij->i", user_vec[users], item_vec[items])
            centred = affinity - (np.median(affinity) if len(affinity) else 0.0)
            chance = 1.0 / (1.0 + np.exp(-LABEL_SHARPNESS * centred))
            label = (rng.random(events_per_period) < chance).astype(np.float32)
        frames.append(pd.DataFrame({"user_id": users, "item_id": items, "ts": ts, "label": label}))
    events = pd.concat(frames, ignore_index=True)
    return make_log(name, events, item_categories, implicit=implicit)


# Named settings, loadable like datasets (``--dataset NAME``; no files needed). ``synthetic`` is the
# demo's embedded default; ``synthetic-large`` has the paper's per-period size (100,000 explicit samples
# per period) for the experiment on a stream whose drift is known, with 17 periods (1.7M samples) so that
# five seeds of every method fit on two cores: its preset pretrains on 1-5 and tests on 11-17.
SYNTHETIC_SETTINGS: dict[str, dict] = {
    "synthetic": {"n_users": 800, "n_items": 600, "n_categories": 12, "n_periods": 31,
                  "events_per_period": 2500, "seed": 0, "implicit": False},
    "synthetic-large": {"n_users": 20_000, "n_items": 5_000, "n_categories": 40, "n_periods": 17,
                        "events_per_period": 100_000, "seed": 0, "implicit": False},
}


def scaled_synthetic_log(total_events: int) -> InteractionLog:
    """The 'synthetic' stream stretched to about ``total_events`` (the demo's and benchmarks' replay): the
    same drift and periods, users and items growing with the events once past its defaults."""
    settings = SYNTHETIC_SETTINGS["synthetic"]
    per_period = max(1, total_events // settings["n_periods"])
    return synthetic_log(**{**settings, "events_per_period": per_period,
                            "n_users": max(settings["n_users"], per_period // 4),
                            "n_items": max(settings["n_items"], per_period // 5)}, name="synthetic")


GENERATOR_VERSION = "1"  # bump when the generator's output changes, so cached logs are rebuilt


def named_synthetic_log(name: str, cache_dir: str | Path | None = DEFAULT_CACHE) -> InteractionLog:
    """One of ``SYNTHETIC_SETTINGS`` (drift 0.3 per period, 30% of users and items arriving later).

    The large one takes minutes to generate, so logs are cached as Parquet keyed by their settings.
    """
    settings = SYNTHETIC_SETTINGS[name]
    if cache_dir is None:
        return synthetic_log(**settings, name=name)
    key = hashlib.sha256(json.dumps({**settings, "v": GENERATOR_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    events_file, categories_file = (Path(cache_dir) / f"{name}-{key}-{part}.parquet" for part in ("events", "cats"))
    if events_file.is_file() and categories_file.is_file():
        return make_log(name, pd.read_parquet(events_file), pd.read_parquet(categories_file),
                        implicit=settings["implicit"])
    log = synthetic_log(**settings, name=name)
    events_file.parent.mkdir(parents=True, exist_ok=True)
    for frame, path in ((log.events, events_file), (log.item_categories, categories_file)):
        partial = path.with_suffix(".partial")
        frame.to_parquet(partial, index=False)
        partial.replace(path)  # readers never see half a file
    return log
