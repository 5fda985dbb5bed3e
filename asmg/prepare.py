"""From an interaction log to per-period sample tables, cached as Parquet keyed by inputs and options."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from asmg.config import ProtocolConfig
from asmg.data.log import InteractionLog
from asmg.data.periods import PeriodBounds, period_bounds
from asmg.data.samples import build_samples

CACHE_VERSION = "1"


@dataclass(frozen=True)
class PreparedPeriods:
    name: str
    bounds: PeriodBounds
    periods: dict[int, pd.DataFrame]  # period number -> samples in canonical order

    def sizes(self) -> dict[int, int]:
        return {p: len(f) for p, f in self.periods.items()}


def log_fingerprint(log: InteractionLog) -> str:
    """Content hash of the log's tables (fast: pandas' vectorised row hashes)."""
    digest = hashlib.sha256()
    for frame in (log.events, log.item_categories):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(f"{log.name}|{log.implicit}".encode())
    return digest.hexdigest()


def cache_key(log: InteractionLog, protocol: ProtocolConfig, data_seed: int) -> str:
    options = json.dumps({"v": CACHE_VERSION, "split": protocol.split, "n": protocol.n_periods,
                          "history": protocol.history_len, "seed": data_seed if log.implicit else None},
                         sort_keys=True)
    return hashlib.sha256(f"{log_fingerprint(log)}|{options}".encode()).hexdigest()[:24]


def prepare_periods(log: InteractionLog, protocol: ProtocolConfig, data_seed: int = 0,
                    cache_dir: str | Path | None = None) -> PreparedPeriods:
    path = Path(cache_dir) / f"{log.name}-{cache_key(log, protocol, data_seed)}.parquet" if cache_dir else None
    if path is not None and path.is_file():
        table = pq.read_table(path)
        bounds = np.asarray(json.loads(table.schema.metadata[b"asmg_bounds"]), dtype=np.int64)
        samples = table.to_pandas(types_mapper=pd.ArrowDtype)
        samples = samples.astype({c: t for c, t in _SCALARS.items()})
    else:
        samples = build_samples(log, seed=data_seed, history_len=protocol.history_len)
        bounds = period_bounds(samples["ts"].to_numpy(np.int64), protocol.split, protocol.n_periods).bounds
        samples["period"] = PeriodBounds(bounds).assign(samples["ts"].to_numpy(np.int64))
        samples = samples[samples["period"] > 0].reset_index(drop=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(samples, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   b"asmg_bounds": json.dumps(bounds.tolist()).encode()})
            tmp = path.with_suffix(".tmp")
            pq.write_table(table, tmp)
            tmp.replace(path)
    periods = {int(p): frame.reset_index(drop=True) for p, frame in samples.groupby("period", sort=True)}
    return PreparedPeriods(log.name, PeriodBounds(bounds), periods)


_SCALARS = {"user_id": "int64", "item_id": "int64", "ts": "int64", "label": "float32", "period": "int32"}
