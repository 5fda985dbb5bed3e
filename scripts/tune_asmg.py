"""Choose ASMG's configuration and the serving guard's settings on validation periods only.

Usage:
  python scripts/tune_asmg.py --dataset ml-100k --data-dir ../shared/datasets/ml-100k \
      --lr 0.01 --epochs 1 --batch-size 256 --seeds 0,1 --out runs/tune-asmg-ml100k

Every candidate runs with the same base settings as IU (given by the flags: the base chosen by
`asmg tune-base` or the preset) and stops at the last validation period (asmg.tuning.validation_window),
so nothing at or after the first test period is read. Writes candidates.json (every run's per-period
AUCs, for the record) and candidates.md (the table that docs/ keeps).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from asmg.config import RunConfig
from asmg.data.registry import load_dataset
from asmg.prepare import prepare_periods
from asmg.presets import PRESETS, preset
from asmg.tuning import simulate_guard, validation_runs, validation_window

# name -> (method, meta overrides)
CANDIDATES: dict[str, tuple[str, dict]] = {
    "paper (direct output)": ("asmg-gru-multi", {}),
    "residual": ("asmg-gru-multi", {"output": "residual"}),
    "residual, meta batch 256": ("asmg-gru-multi", {"output": "residual", "batch_size": 256}),
    "residual, 3 meta epochs": ("asmg-gru-multi", {"output": "residual", "epochs": 3}),
    "residual, meta lr 3e-3": ("asmg-gru-multi", {"output": "residual", "lr": 3e-3}),
    "residual, k 4": ("asmg-gru-multi", {"output": "residual", "k": 4}),
    "residual, RMS-normalised inputs": ("asmg-gru-multi", {"output": "residual", "normalize": True}),
    "residual, shrinkage 1": ("asmg-gru-multi", {"output": "residual", "correction_l2": 1.0}),
    "residual, shrinkage 10": ("asmg-gru-multi", {"output": "residual", "correction_l2": 10.0}),
    "linear (learned weights over k)": ("asmg-linear", {}),
    "residual on the window mean": ("asmg-gru-multi", {"output": "residual", "anchor": "mean"}),
    "residual on the window mean, 3 meta epochs": ("asmg-gru-multi", {"output": "residual", "anchor": "mean",
                                                                       "epochs": 3}),
    "residual on the window mean, k 4": ("asmg-gru-multi", {"output": "residual", "anchor": "mean", "k": 4}),
    "residual, meta lr 1e-3": ("asmg-gru-multi", {"output": "residual", "lr": 1e-3}),
    "residual, meta lr 3e-3, k 4": ("asmg-gru-multi", {"output": "residual", "lr": 3e-3, "k": 4}),
    "residual on the window mean, meta lr 3e-3": ("asmg-gru-multi", {"output": "residual", "anchor": "mean",
                                                                      "lr": 3e-3}),
}
GUARD_GRID = [(decay, margin) for decay in (0.0, 0.5, 0.8) for margin in (0.0, 0.001, 0.003)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default="../shared/datasets/ml-100k")
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--only", default="", help="';'-separated candidate names")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/tune-asmg")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    protocol_of = preset(args.dataset)[0] if args.dataset in PRESETS else RunConfig()
    base = RunConfig(train=replace(protocol_of.train, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size),
                     protocol=protocol_of.protocol)
    first, last = validation_window(base.protocol)
    data = prepare_periods(load_dataset(args.dataset, args.data_dir), base.protocol, cache_dir=".cache/samples")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_file = out / "candidates.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    record["setup"] = {"dataset": args.dataset, "train": base.train.__dict__, "seeds": seeds,
                       "validation_periods": [first, last]}

    def per_period(runs: list[dict], method: str) -> dict[int, list[float]]:
        return {str(r["seed"]): [p["auc"] for p in r["validation_periods"]] for r in runs if r["method"] == method}

    if "iu" not in record:
        runs = validation_runs(data, base, ["iu"], seeds, args.workers)
        record["iu"] = {"periods": [p["period"] for p in runs[0]["validation_periods"]],
                        "auc": per_period(runs, "iu")}
    record.setdefault("candidates", {})
    for name, (method, meta) in CANDIDATES.items():
        if (args.only and name not in args.only.split(";")) or name in record["candidates"]:
            continue
        cfg = replace(base, meta=replace(base.meta, **meta))
        runs = validation_runs(data, cfg, [method], seeds, args.workers)
        record["candidates"][name] = {"method": method, "meta": meta, "auc": per_period(runs, method)}
        record_file.write_text(json.dumps(record, indent=1))
        print(summary_line(record, name, first, last), file=sys.stderr, flush=True)
    record_file.write_text(json.dumps(record, indent=1))
    (out / "candidates.md").write_text(markdown(record, first, last))
    print(markdown(record, first, last))


def window_mean(record: dict, aucs: dict, first: int, last: int) -> list[float]:
    """Per seed: the mean AUC over the validation window."""
    periods = record["iu"]["periods"]
    keep = [i for i, p in enumerate(periods) if first <= p <= last]
    return [float(np.mean([aucs[seed][i] for i in keep])) for seed in sorted(aucs)]


def summary_line(record: dict, name: str, first: int, last: int) -> str:
    iu = np.mean(window_mean(record, record["iu"]["auc"], first, last))
    auc = np.mean(window_mean(record, record["candidates"][name]["auc"], first, last))
    return f"{name}: {auc:.4f} vs IU {iu:.4f} ({(auc / iu - 1) * 100:+.2f}%)"


def markdown(record: dict, first: int, last: int) -> str:
    setup = record["setup"]
    iu_seeds = window_mean(record, record["iu"]["auc"], first, last)
    iu = float(np.mean(iu_seeds))
    lines = [f"### {setup['dataset']}: validation periods {first}-{last}, seeds "
             f"{', '.join(map(str, setup['seeds']))}; base lr {setup['train']['lr']:g}, "
             f"{setup['train']['epochs']} epoch(s), batch {setup['train']['batch_size']}", "",
             "| candidate | AUC (mean ± std over seeds) | vs IU |", "|---|---|---|",
             f"| IU | {iu:.4f} ± {np.std(iu_seeds):.4f} | - |"]
    for name, entry in record["candidates"].items():
        seeds = window_mean(record, entry["auc"], first, last)
        lift = (np.mean(seeds) / iu - 1) * 100
        lines.append(f"| {name} | {np.mean(seeds):.4f} ± {np.std(seeds):.4f} | {lift:+.2f}% |")
    lines += ["", "Serving guard over {IU, each candidate} (decay, margin): validation AUC vs IU", "",
              "| candidate | " + " | ".join(f"{d:g}, {m:g}" for d, m in GUARD_GRID) + " |",
              "|---|" + "---|" * len(GUARD_GRID)]
    periods = record["iu"]["periods"]
    keep = [i for i, p in enumerate(periods) if first <= p <= last]
    for name, entry in record["candidates"].items():
        cells = []
        for decay, margin in GUARD_GRID:
            means = []
            for seed in entry["auc"]:
                served = simulate_guard({"asmg": entry["auc"][seed], "iu": record["iu"]["auc"][seed]}, decay, margin)
                means.append(np.mean([served[i] for i in keep]))
            cells.append(f"{(np.mean(means) / iu - 1) * 100:+.2f}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
