"""Hyper-parameter search for ml-100k on validation periods only (tested on D_18..D_23; nothing later is read).

Usage: python scripts/tune_ml100k.py --data-dir ../shared/datasets/ml-100k --out runs/tune
Each candidate runs IU and ASMG-GRU multi for the given seeds with --last-period 23.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from asmg.config import RunConfig
from asmg.data.registry import load_dataset
from asmg.experiment import ExperimentSpec, run_experiment
from asmg.prepare import prepare_periods

LAST_VALIDATION_PERIOD = 23
FIRST_VALIDATION_PERIOD = 18

CANDIDATES = {
    "authors": {},
    "authors+residual": {"meta": {"output": "residual"}},
    "lr1e-2,b256": {"train": {"lr": 1e-2, "batch_size": 256}},
    "lr1e-2,b256+residual": {"train": {"lr": 1e-2, "batch_size": 256}, "meta": {"output": "residual"}},
    "lr1e-2,b256+residual,meta-b256": {"train": {"lr": 1e-2, "batch_size": 256},
                                       "meta": {"output": "residual", "batch_size": 256}},
    "lr1e-2,b256+residual,meta-epochs3": {"train": {"lr": 1e-2, "batch_size": 256},
                                          "meta": {"output": "residual", "epochs": 3}},
    "authors+residual,meta-epochs3": {"meta": {"output": "residual", "epochs": 3}},
    "authors+residual,meta-lr3e-2": {"meta": {"output": "residual", "lr": 3e-2}},
    "authors+residual,meta-lr3e-3": {"meta": {"output": "residual", "lr": 3e-3}},
    "authors+residual,k4": {"meta": {"output": "residual", "k": 4}},
    "authors+residual,meta-b256": {"meta": {"output": "residual", "batch_size": 256}},
    "lr3e-3+residual": {"train": {"lr": 3e-3}, "meta": {"output": "residual"}},
    "authors+residual,meta-b256,meta-epochs3": {"meta": {"output": "residual", "batch_size": 256, "epochs": 3}},
    "authors+residual,meta-b128": {"meta": {"output": "residual", "batch_size": 128}},
    "authors+residual,meta-b256,hidden8": {"meta": {"output": "residual", "batch_size": 256, "hidden": 8}},
    "authors+residual,meta-b256,meta-lr3e-3": {"meta": {"output": "residual", "batch_size": 256, "lr": 3e-3}},
    "authors+residual,normalize": {"meta": {"output": "residual", "normalize": True}},
    "authors+residual,normalize,meta-b256": {"meta": {"output": "residual", "normalize": True, "batch_size": 256}},
    "authors+direct,normalize": {"meta": {"normalize": True}},
}


def configure(base: RunConfig, change: dict) -> RunConfig:
    return replace(base, train=replace(base.train, **change.get("train", {})),
                   meta=replace(base.meta, **change.get("meta", {})))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="runs/tune")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = RunConfig()
    data = prepare_periods(load_dataset("ml-100k", args.data_dir), base.protocol, cache_dir=".cache/samples")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, change in CANDIDATES.items():
        if args.only and name not in args.only.split(";"):
            continue
        spec = ExperimentSpec("ml-100k", ["iu", "asmg-gru-multi"], seeds, configure(base, change),
                              last_period=LAST_VALIDATION_PERIOD)
        results = run_experiment(data, spec, show_progress=False)
        row = {}
        for method in spec.methods:
            aucs = [np.mean([p["auc"] for p in r["validation_periods"] if p["period"] >= FIRST_VALIDATION_PERIOD])
                    for r in results["runs"] if r["method"] == method]
            row[method] = float(np.mean(aucs))
        row["lift_pct"] = (row["asmg-gru-multi"] / row["iu"] - 1) * 100
        table[name] = row
        print(json.dumps({name: row}), flush=True)
        (out / "validation.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
