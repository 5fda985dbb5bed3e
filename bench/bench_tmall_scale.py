"""Tmall-scale cost of one period: IU vs ASMG-GRU multi (row-gather and full-table), and sample building.

Synthetic workload shaped like the paper's Tmall: ~50k users, ~43k items, 634 categories, one category
per item, Zipf-like popularity, 200k samples per period (100k clicks + one sampled negative each).
Prints one JSON object. Usage: python bench/bench_tmall_scale.py [--build-events 3000000] [--skip-full-table]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from asmg.batches import BatchMaker, encode_period
from asmg.config import HISTORY_LEN, RunConfig, resolve_device
from asmg.data.log import make_log
from asmg.data.samples import build_samples
from asmg.methods.incremental import IncrementalUpdate
from asmg.methods.meta import AsmgMethod
from asmg.model import init_params, table_sizes
from asmg.train import warm_up_optimiser
from asmg.vocab import Vocabularies

USERS, ITEMS, CATEGORIES = 50_000, 43_000, 634
DAY = 86_400


def synthetic_clicks(n_events: int, n_days: int, seed: int) -> pd.DataFrame:
    """Every user and item active, with a skewed (power-law, exponent 0.8) popularity as in click logs;
    every click is a positive (implicit data)."""
    rng = np.random.default_rng(seed)
    user = _power_law(rng, USERS, n_events)
    item = _power_law(rng, ITEMS, n_events)
    ts = np.sort(rng.integers(0, n_days * DAY, n_events))
    return pd.DataFrame({"user_id": user, "item_id": item, "ts": ts, "label": np.ones(n_events, np.float32)})


def _power_law(rng: np.random.Generator, n: int, size: int, exponent: float = 0.8) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    ranks = rng.choice(n, size=size, p=weights / weights.sum())
    return rng.permutation(n)[ranks] + 1  # popularity unrelated to the id


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


def meta_step_seconds(method: AsmgMethod, cats: np.ndarray, steps: int | None) -> float:
    """Mean seconds of one generator training step (loss, backward, Adam) over ``steps`` steps."""
    steps = steps or 20
    maker = BatchMaker(cats, table_sizes(method.base), method.device)
    weights = method.step_weights(len(method.models))
    optimiser = torch.optim.Adam(method.generator.parameters(), lr=method.cfg.meta.lr)
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        for _ in range(steps):
            periods = [method.periods[i % len(method.periods)] for i in range(len(method.models))]
            batches = {i: maker.batch(p, torch.randint(len(p), (method.cfg.meta.batch_size,), generator=gen))
                       for i, p in enumerate(periods)}
            optimiser.zero_grad()
            method.meta_loss(batches, weights, method.initial_state()).backward()
            optimiser.step()

    return timed(run) / steps


def bench_period(samples_per_period: int, skip_full_table: bool, steps: int | None) -> dict[str, float]:
    cfg = RunConfig()  # authors' settings: batch 1024, k = 3, hidden 4, 1 epoch
    device = resolve_device(cfg.device)
    frames = period_frames(samples_per_period, cfg.meta.k + 2)
    vocabs = Vocabularies()
    data = [encode_period(f, vocabs, period=i + 1, history_len=HISTORY_LEN).to(device) for i, f in enumerate(frames)]
    cats = vocabs.item_categories.table
    params = {n: t.to(device) for n, t in init_params(vocabs.sizes(), seed=0).items()}
    out: dict[str, float] = {"samples_per_period": float(np.mean([len(d) for d in data])),
                             "users": len(vocabs.users) - 1, "items": len(vocabs.items) - 1,
                             "categories": len(vocabs.categories) - 1}
    out["optimiser_import_seconds"] = timed(warm_up_optimiser)  # once per process, not per period
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
    out.update({f"asmg_multi_{phase}_seconds": seconds for phase, seconds in asmg.seconds.items()})
    steps_per_period = math.ceil(len(data[-1]) / cfg.meta.batch_size)
    out["row_gather_meta_step_seconds"] = meta_step_seconds(asmg, cats, steps)
    if not skip_full_table:
        full = AsmgMethod(replace(cfg, meta=replace(cfg.meta, row_gather=False)), device, "multi")
        full.load_state(state, meta)
        if steps is None:  # measured: a whole period with the authors' full-table generation
            out["asmg_multi_full_table_period_seconds"] = timed(lambda: full.update(data[-1], cats))
        out["full_table_meta_step_seconds"] = meta_step_seconds(full, cats, steps)
        out["meta_step_speedup"] = out["full_table_meta_step_seconds"] / out["row_gather_meta_step_seconds"]
        if steps is not None:  # extrapolated from `steps` timed meta steps of each path
            out["asmg_multi_full_table_period_seconds"] = out["asmg_multi_period_seconds"] + steps_per_period * (
                out["full_table_meta_step_seconds"] - out["row_gather_meta_step_seconds"])
            out["full_table_period_is_extrapolated"] = True
        out["row_gather_speedup"] = out["asmg_multi_full_table_period_seconds"] / out["asmg_multi_period_seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples-per-period", type=int, default=200_000)
    parser.add_argument("--build-events", type=int, default=3_000_000)
    parser.add_argument("--skip-full-table", action="store_true")
    parser.add_argument("--full-table-steps", type=int, default=None,
                        help="time this many full-table meta steps and extrapolate the period (default: run it)")
    args = parser.parse_args()
    result = {"device": str(resolve_device()), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "machine": platform.machine()}
    result.update(bench_build(args.build_events))
    result.update(bench_period(args.samples_per_period, args.skip_full_table, args.full_table_steps))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
