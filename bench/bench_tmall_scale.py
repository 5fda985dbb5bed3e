"""Tmall-scale cost of one period: IU vs ASMG-GRU multi (row-gather and full-table), and sample building.

Synthetic workload shaped like the paper's Tmall: ~50k users, ~43k items, 634 categories, one category
per item, Zipf-like popularity, 200k samples per period (100k clicks + one sampled negative each).
Prints one JSON object. Usage: python bench/bench_tmall_scale.py [--build-events 3000000] [--skip-full-table]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from asmg.batches import encode_period
from asmg.config import RunConfig, resolve_device
from asmg.data.log import make_log
from asmg.data.samples import build_samples
from asmg.methods.incremental import IncrementalUpdate
from asmg.methods.meta import AsmgMethod
from asmg.model import init_params
from asmg.vocab import Vocabularies

USERS, ITEMS, CATEGORIES = 50_000, 43_000, 634
DAY = 86_400


def synthetic_clicks(n_events: int, n_days: int, seed: int) -> pd.DataFrame:
    """Zipf-like users and items; every click is a positive (implicit data)."""
    rng = np.random.default_rng(seed)
    user = np.minimum(rng.zipf(1.3, n_events), USERS)
    item = np.minimum(rng.zipf(1.2, n_events), ITEMS)
    user = (user * 7919) % USERS + 1  # spread the head over the id space
    item = (item * 104729) % ITEMS + 1
    ts = np.sort(rng.integers(0, n_days * DAY, n_events))
    return pd.DataFrame({"user_id": user, "item_id": item, "ts": ts, "label": np.ones(n_events, np.float32)})


def categories() -> pd.DataFrame:
    items = np.arange(1, ITEMS + 1)
    return pd.DataFrame({"item_id": items, "category_id": items % CATEGORIES + 1})


def bench_build(n_events: int) -> dict[str, float]:
    log = make_log("bench", synthetic_clicks(n_events, 31, seed=1), categories(), implicit=True)
    start = time.perf_counter()
    samples = build_samples(log, seed=0)
    seconds = time.perf_counter() - start
    return {"build_events": n_events, "build_samples": len(samples), "build_seconds": seconds,
            "build_events_per_second": n_events / seconds}


def period_frames(samples_per_period: int, periods: int) -> list[pd.DataFrame]:
    clicks = samples_per_period // 2
    log = make_log("bench", synthetic_clicks(clicks * periods, periods, seed=2), categories(), implicit=True)
    samples = build_samples(log, seed=0)
    day = samples["ts"].to_numpy() // DAY
    return [samples[day == d].reset_index(drop=True) for d in range(periods)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_period(samples_per_period: int, skip_full_table: bool) -> dict[str, float]:
    cfg = RunConfig()  # authors' settings: batch 1024, k = 3, hidden 4, 1 epoch
    device = resolve_device(cfg.device)
    frames = period_frames(samples_per_period, cfg.meta.k + 2)
    vocabs = Vocabularies()
    data = [encode_period(f, vocabs, period=i + 1, history_len=30).to(device) for i, f in enumerate(frames)]
    cats = vocabs.item_categories.table
    params = {n: t.to(device) for n, t in init_params(vocabs.sizes(), seed=0).items()}
    out: dict[str, float] = {"samples_per_period": float(np.mean([len(d) for d in data])),
                             "users": len(vocabs.users) - 1, "items": len(vocabs.items) - 1,
                             "categories": len(vocabs.categories) - 1}
    iu = IncrementalUpdate(cfg, device)
    iu.start(params)
    out["iu_period_seconds"] = timed(lambda: iu.update(data[-1], cats))
    asmg = AsmgMethod(cfg, device, "multi")
    asmg.start(params)
    for d in data[:-1]:  # fill the window: k models and their periods
        asmg.update(d, cats)
    state, meta = asmg.state()
    out["asmg_multi_period_seconds"] = timed(lambda: asmg.update(data[-1], cats))
    out["asmg_multi_meta_steps"] = asmg.meta_steps
    if not skip_full_table:
        full = AsmgMethod(replace(cfg, meta=replace(cfg.meta, row_gather=False)), device, "multi")
        full.load_state(state, meta)
        out["asmg_multi_full_table_period_seconds"] = timed(lambda: full.update(data[-1], cats))
        out["row_gather_speedup"] = out["asmg_multi_full_table_period_seconds"] / out["asmg_multi_period_seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples-per-period", type=int, default=200_000)
    parser.add_argument("--build-events", type=int, default=3_000_000)
    parser.add_argument("--skip-full-table", action="store_true")
    args = parser.parse_args()
    result = {"device": str(resolve_device()), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "machine": platform.machine()}
    result.update(bench_build(args.build_events))
    result.update(bench_period(args.samples_per_period, args.skip_full_table))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
