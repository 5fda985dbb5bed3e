"""Negative sampling, all of it: implicit data (positives only) gets sampled negatives, uniform over a catalogue,
never an item the user had. Three callers, three shapes of the same rule, one constant (:data:`NEGATIVE_DRAWS`,
the draws tried before giving up):

- :func:`sample_negatives`: the offline sample builder (asmg/data/samples.py), one RNG over the whole log;
- :func:`counter_negative` with :func:`draw_uniform`: the windowing role (streams/windowing/core.py), draws from
  a counter-based hash of (seed, partition, offset, draw), so a replayed batch draws the same whatever the
  batching (one RNG over the log cannot give that);
- :func:`sample_for_rows`: the scorer's online evaluation, ``k`` negatives per positive row.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import numpy as np

from asmg.data.log import DataError

NEGATIVE_DRAWS = 64
MASK64 = (1 << 64) - 1


# --- offline: one RNG over the log ------------------------------------------------------------------------------


def sample_negatives(user: np.ndarray, ts: np.ndarray, seen_user: np.ndarray, seen_item: np.ndarray,
                     seen_ts: np.ndarray, catalogue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per event, uniform over ``catalogue``, never one the user had by then (ts inclusive)."""
    import pandas as pd

    order = np.argsort(catalogue)
    catalogue = catalogue[order]
    n_items = np.int64(len(catalogue))
    # first time each (user, item) pair was seen, keyed by user * n_items + item position
    key = seen_user.astype(np.int64) * n_items + np.searchsorted(catalogue, seen_item)
    frame = pd.DataFrame({"key": key, "ts": seen_ts}).groupby("key", sort=True)["ts"].min()
    keys, first_ts = frame.index.to_numpy(), frame.to_numpy()
    negatives = np.full(len(user), -1, dtype=np.int64)
    todo = np.arange(len(user))
    for _ in range(NEGATIVE_DRAWS):
        if len(todo) == 0:
            break
        draw = rng.integers(0, n_items, size=len(todo))
        probe = user[todo].astype(np.int64) * n_items + draw
        at = np.clip(np.searchsorted(keys, probe), 0, max(len(keys) - 1, 0))
        taken = (keys[at] == probe) & (first_ts[at] <= ts[todo]) if len(keys) else np.zeros(len(todo), bool)
        negatives[todo[~taken]] = catalogue[draw[~taken]]
        todo = todo[taken]
    if len(todo):
        raise DataError(f"{len(todo)} events of users who had interacted with (nearly) every item: "
                        "cannot sample a negative; drop such users or use explicit labels")
    return negatives



# --- streaming: counter-based draws ---------------------------------------------------------------------------


def _mix_scalar(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def draw_uniform(seed: int, partition: int, offsets: np.ndarray, draw: int = 0) -> np.ndarray:
    """Uniform [0, 1) numbers from (seed, partition, offset, draw): the same whatever the batching."""
    base = _mix_scalar(_mix_scalar(seed & MASK64) ^ (partition & MASK64))
    keys = _mix(np.asarray(offsets, dtype=np.int64).astype(np.uint64) ^ np.uint64(base))
    with np.errstate(over="ignore"):
        bits = _mix(keys + np.uint64(draw))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def draw_uniform_one(seed: int, partition: int, offset: int, draw: int) -> float:
    base = _mix_scalar(_mix_scalar(seed & MASK64) ^ (partition & MASK64))
    key = _mix_scalar((offset & MASK64) ^ base)
    return (_mix_scalar((key + draw) & MASK64) >> 11) * 2.0**-53



def counter_negative(catalogue: Sequence[int], item: int, had: Container[int], first: float, seed: int,
                     partition: int, offset: int) -> int | None:
    """Index into ``catalogue`` of the negative for the positive ``item`` at (partition, offset): up to
    :data:`NEGATIVE_DRAWS` counter-based draws (``first`` is draw 0, from :func:`draw_uniform`), never the item
    or one in ``had``; None when every draw hit one."""
    size = len(catalogue)
    u = first
    for draw in range(NEGATIVE_DRAWS):
        if draw:
            u = draw_uniform_one(seed, partition, offset, draw)
        candidate = min(int(u * size), size - 1)
        negative = catalogue[candidate]
        if negative != item and negative not in had:
            return candidate
    return None


# --- online evaluation ----------------------------------------------------------------------------------------


def sample_for_rows(catalogue: np.ndarray, items: np.ndarray, histories: Sequence[Sequence[int]], k: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``k`` items per positive, uniform over ``catalogue``, never the event's item or one in its history.

    Returns (owner: index of the positive each negative belongs to, negative item ids). Implicit streams
    carry positives only; the scorer's online evaluation mirrors the windowing role's one negative per positive
    with it.
    """
    owners, negatives = [], []
    if len(catalogue) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    draws = rng.integers(len(catalogue), size=(len(items), k, NEGATIVE_DRAWS))
    for row, (item, history) in enumerate(zip(items.tolist(), histories, strict=True)):
        taken = {item, *history}
        for j in range(k):
            for draw in draws[row, j]:
                if (candidate := int(catalogue[draw])) not in taken:
                    owners.append(row)
                    negatives.append(candidate)
                    break
    return np.asarray(owners, np.int64), np.asarray(negatives, np.int64)
