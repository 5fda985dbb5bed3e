"""Small synthetic period data shared by the library tests, and where the shared ML-100K copy is."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from asmg.data.log import make_log
from asmg.data.samples import build_samples
from streams.wire.period_store import ragged_samples_table


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


REPO = Path(__file__).resolve().parents[1]


def ml100k_dir() -> Path | None:
    """The ML-100K folder (holding u.data): ``ASMG_DATA_DIR`` when set (the folder itself, or a folder holding
    ``ml-100k``), else ``../shared/datasets/ml-100k`` beside the repository; None when neither has it."""
    configured = os.environ.get("ASMG_DATA_DIR", "").strip()
    candidates = [Path(configured), Path(configured) / "ml-100k"] if configured else \
        [REPO.parent / "shared" / "datasets" / "ml-100k"]
    return next((c for c in candidates if (c / "u.data").is_file()), None)


def require_ml100k() -> Path:
    """The ML-100K folder, or skip the calling test with the reason."""
    found = ml100k_dir()
    if found is None:
        where = os.environ.get("ASMG_DATA_DIR") or str(REPO.parent / "shared" / "datasets" / "ml-100k")
        pytest.skip(f"ML-100K not found (looked in {where}; set ASMG_DATA_DIR to the folder holding u.data)")
    return found


def _ragged(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
    return lengths, np.fromiter((x for v in lists for x in v), dtype=np.int64, count=int(lengths.sum()))


def samples_table(user: list[int], item: list[int], ts: list[int], label: list[float],
                  history: list[list[int]], categories: list[list[int]], period: int) -> pa.Table:
    """Columns with Python lists -> an Arrow table in the store's schema and canonical row order."""
    return ragged_samples_table(np.asarray(user, dtype=np.int64), np.asarray(item, dtype=np.int64),
                                np.asarray(ts, dtype=np.int64), np.asarray(label, dtype=np.float32),
                                _ragged(history), _ragged(categories), period)
