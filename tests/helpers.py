"""Small synthetic period data shared by the library tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from asmg.data.log import make_log
from asmg.data.samples import build_samples


def tiny_log(n_events: int = 3000, n_users: int = 40, n_items: int = 60, seed: int = 0,
             category_mods: tuple[int, int] = (5, 7)):
    """Every item has category ``item % a``, odd items also ``item % b + 2a`` (``category_mods=(a, b)``)."""
    first, second = category_mods
    rng = np.random.default_rng(seed)
    user = rng.integers(1, n_users + 1, n_events)
    item = rng.integers(1, n_items + 1, n_events)
    ts = np.sort(rng.integers(0, 10_000, n_events))
    label = ((user + item) % 3 == 0) | (rng.random(n_events) < 0.2)
    events = pd.DataFrame({"user_id": user, "item_id": item, "ts": ts, "label": label.astype(np.float32)})
    cats = pd.DataFrame({"item_id": np.r_[np.arange(1, n_items + 1), np.arange(1, n_items + 1, 2)],
                         "category_id": np.r_[np.arange(1, n_items + 1) % first,
                                                 np.arange(1, n_items + 1, 2) % second + 2 * first]})
    return make_log("tiny", events, cats, implicit=False)


def tiny_samples(**kwargs) -> pd.DataFrame:
    return build_samples(tiny_log(**kwargs))
