"""The paper's protocol, offline: every method starts from one pretrained model and walks the periods.

Writes ``results.json``, ``results.md`` (the paper's table layout) and ``auc_by_period.png``.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from asmg.config import RunConfig, resolve_device
from asmg.logs import apply_setup, current_setup, log_context
from asmg.prepare import PreparedPeriods
from asmg.updater import PeriodUpdater

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentSpec:
    dataset: str
    methods: Sequence[str]
    seeds: Sequence[int]
    cfg: RunConfig
    last_period: int | None = None  # stop early (hyper-parameter search on validation periods)
    note: str = ""
    pretrain_cache: str | None = None  # keep pretrained models here (see PeriodUpdater)


def run_method(method: str, seed: int, data: PreparedPeriods, spec: ExperimentSpec,
               on_period=None) -> dict[str, Any]:
    cfg = spec.cfg.with_seed(seed)
    updater = PeriodUpdater(method, cfg, pretrain_cache=spec.pretrain_cache)
    last = spec.last_period or max(data.periods)
    started = time.perf_counter()
    evaluated = []
    for period in sorted(p for p in data.periods if p <= last):
        with log_context(method=method, seed=seed, period=period):  # fields of JSON log lines (asmg/logs.py)
            result = updater.step(period, data.periods[period], train=period < last)
            if result.metrics is not None:
                evaluated.append({"period": period, **{k: result.metrics[k] for k in ("auc", "logloss", "samples")},
                                  "seconds": result.seconds,
                                  **({"candidates": result.candidates} if result.candidates else {})})
                log.info("period %d: AUC %.4f, logloss %.4f", period, result.metrics["auc"],
                         result.metrics["logloss"], extra={"auc": result.metrics["auc"],
                                                           "logloss": result.metrics["logloss"],
                                                           "samples": result.metrics["samples"],
                                                           "seconds": result.seconds})
        if on_period:
            on_period(period, result)
    first_test = cfg.protocol.first_test_period
    tests = [e for e in evaluated if e["period"] >= first_test]
    log.info("%s seed %d: test AUC %.4f", method, seed, _mean([e["auc"] for e in tests]),
             extra={"method": method, "seed": seed, "mean_auc": _mean([e["auc"] for e in tests]),
                    "mean_logloss": _mean([e["logloss"] for e in tests]), "seconds": time.perf_counter() - started})
    return {
        "method": method, "seed": seed,
        "periods": tests,
        "validation_periods": [e for e in evaluated if e["period"] < first_test],
        "mean_auc": _mean([e["auc"] for e in tests]),
        "mean_logloss": _mean([e["logloss"] for e in tests]),
        "seconds": time.perf_counter() - started,
    }


def _run_job(job: tuple[str, int], data: PreparedPeriods, spec: ExperimentSpec, queue) -> dict[str, Any]:
    """One (method, seed) run in a worker process; reports each period through the queue."""
    torch.set_num_threads(1)
    method, seed = job
    return run_method(method, seed, data, spec, lambda period, result: queue.put((job, period)))


def run_experiment(data: PreparedPeriods, spec: ExperimentSpec, out: Path | None = None,
                   show_progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """Every (method, seed) run, ``workers`` at a time in separate processes (one torch thread each)."""
    jobs = [(m, s) for m in spec.methods for s in spec.seeds]
    n_periods = len([p for p in data.periods if p <= (spec.last_period or max(data.periods))])
    done: dict[tuple[str, int], dict[str, Any]] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not show_progress) as progress:
        overall = progress.add_task("runs", total=len(jobs))
        tasks = {job: progress.add_task(f"  {job[0]} seed {job[1]}", total=n_periods, visible=False) for job in jobs}

        def finished(job: tuple[str, int], run: dict[str, Any]) -> None:
            done[job] = run
            progress.update(tasks[job], visible=False)
            progress.advance(overall)
            progress.console.log(f"{job[0]:>16} seed {job[1]}: test AUC {run['mean_auc']:.4f} "
                                 f"logloss {run['mean_logloss']:.4f} ({run['seconds']:.1f}s)")

        def advanced(job: tuple[str, int]) -> None:
            if job not in done:
                progress.update(tasks[job], advance=1, visible=True)

        if workers <= 1:
            for job in jobs:
                finished(job, run_method(job[0], job[1], data, spec, lambda p, r, j=job: advanced(j)))
        else:
            context = mp.get_context("spawn")
            with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context, initializer=apply_setup,
                                                                   initargs=current_setup()) as pool:
                queue = manager.Queue()
                futures = {pool.submit(_run_job, job, data, spec, queue): job for job in jobs}
                pending = set(futures)
                while pending:
                    _drain(queue, advanced)
                    ready, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in ready:
                        finished(futures[future], future.result())
                _drain(queue, advanced)
    runs = [done[job] for job in jobs]
    results = {
        "dataset": spec.dataset,
        "protocol": {**spec.cfg.to_dict()["protocol"], "bounds": data.bounds.to_list(),
                     "period_samples": {str(p): n for p, n in data.sizes().items()},
                     "train": spec.cfg.to_dict()["train"], "meta": spec.cfg.to_dict()["meta"],
                     "guard": spec.cfg.to_dict()["guard"],
                     "device": str(resolve_device(spec.cfg.device)), "last_period": spec.last_period,
                     "hyperparameter_note": spec.note},
        "runs": runs,
        "summary": summarise(runs),
    }
    if out is not None:
        write_outputs(results, out)
    return results


def _drain(queue, advanced) -> None:
    while True:
        try:
            job, _ = queue.get_nowait()
        except Exception:  # queue.Empty through the manager proxy
            return
        advanced(tuple(job))


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        aucs = [r["mean_auc"] for r in runs if r["method"] == method]
        lls = [r["mean_logloss"] for r in runs if r["method"] == method]
        secs = [r["seconds"] for r in runs if r["method"] == method]
        per_period = [_update_seconds(r) for r in runs if r["method"] == method]
        summary[method] = {"auc_mean": _mean(aucs), "auc_std": _std(aucs), "logloss_mean": _mean(lls),
                           "logloss_std": _std(lls), "seconds_mean": _mean(secs),
                           "update_seconds_per_period": _mean(per_period)}
    for method, candidate_runs in candidate_runs_of(runs).items():
        summary[method] = {**summarise(candidate_runs)[method], "seconds_mean": float("nan"),
                           "update_seconds_per_period": float("nan")}
    iu = summary.get("iu", {}).get("auc_mean")
    for stats in summary.values():
        stats["auc_rel_impr_vs_iu"] = (stats["auc_mean"] / iu - 1.0) * 100 if iu else float("nan")
    return summary


def candidate_runs_of(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The serving guard's candidates as runs of their own ("asmg-guarded/iu"): each candidate's model was
    tested on every test period inside the guard's run (the same models a separate run of that method would
    train), so the table can show them without training them twice."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if not run["periods"] or not all("candidates" in p for p in run["periods"]):
            continue
        for name in run["periods"][0]["candidates"]["candidates"]:
            tested = [p["candidates"]["candidates"][name] for p in run["periods"]]
            label = f"{run['method']}/{name}"
            out.setdefault(label, []).append({
                "method": label, "seed": run["seed"], "seconds": float("nan"),
                "periods": [{"period": p["period"], "auc": t["auc"], "logloss": t["logloss"], "samples": t["samples"]}
                            for p, t in zip(run["periods"], tested, strict=True)],
                "mean_auc": _mean([t["auc"] for t in tested]), "mean_logloss": _mean([t["logloss"] for t in tested])})
    return out


def _update_seconds(run: dict[str, Any]) -> float:
    """Mean seconds one period's update took in a run (every updated period, validation and test)."""
    entries = [*run.get("validation_periods", []), *run["periods"]]
    return _mean([e["seconds"]["update"] for e in entries if "update" in e.get("seconds", {})])


def markdown_table(results: dict[str, Any]) -> str:
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [f"# {results['dataset']}: mean over test periods {results['protocol']['first_test_period']}.."
             f"{results['protocol']['n_periods']} (seeds {', '.join(map(str, seeds))})", "",
             "| method | AUC | LogLoss | AUC impr. vs IU | seconds/run | update s/period |",
             "|---|---|---|---|---|---|"]
    for method, s in results["summary"].items():
        impr = "-" if method == "iu" or math.isnan(s["auc_rel_impr_vs_iu"]) else f"{s['auc_rel_impr_vs_iu']:+.2f}%"
        seconds, update = s["seconds_mean"], s.get("update_seconds_per_period", float("nan"))
        lines.append(f"| {method} | {s['auc_mean']:.4f} ± {s['auc_std']:.4f} | {s['logloss_mean']:.4f} ± "
                     f"{s['logloss_std']:.4f} | {impr} | {_cell(seconds, '.1f')} | {_cell(update, '.2f')} |")
    lines += ["", f"Hyper-parameters used: {settings_line(results['protocol'])}"]
    note = results["protocol"].get("hyperparameter_note")
    if note:
        lines += ["", f"Where they come from: {note}"]
    return "\n".join(lines) + "\n"


def _cell(value: float, spec: str) -> str:
    """A table cell; '-' where a row has no such figure (a guard's candidate has no time of its own)."""
    return "-" if math.isnan(value) else format(value, spec)


def settings_line(protocol: dict[str, Any]) -> str:
    """The settings a run actually used (preset plus every override), as one line."""
    train, meta, guard = protocol["train"], protocol["meta"], protocol.get("guard")
    mode = train.get("pretrain_mode", "union")
    pretrain = f"{train['pretrain_epochs']} to pretrain" + ("" if mode == "union" else f" ({mode})")
    line = (f"base lr {train['lr']:g}, batch {train['batch_size']}, {train['epochs']} epoch(s) per period, "
            f"{pretrain}; generator k {meta['k']}, hidden {meta['hidden']}, "
            f"meta lr {meta['lr']:g}, meta batch {meta['batch_size']}, {meta['epochs']} meta epoch(s), "
            f"{meta['output']} output")
    if meta.get("correction_l2"):
        line += f", shrinkage {meta['correction_l2']:g}"
    if guard:
        line += f"; guard {'+'.join(guard['candidates'])}, decay {guard['decay']:g}, margin {guard['margin']:g}"
    return line


def plot_auc_by_period(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    every_run = [*results["runs"], *(r for runs in candidate_runs_of(results["runs"]).values() for r in runs)]
    for method in results["summary"]:
        runs = [r for r in every_run if r["method"] == method]
        periods = [p["period"] for p in runs[0]["periods"]]
        aucs = np.array([[p["auc"] for p in r["periods"]] for r in runs])
        mean, std = aucs.mean(0), aucs.std(0)
        ax.plot(periods, mean, marker="o", label=method)
        ax.fill_between(periods, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("test period (D_t)")
    ax.set_ylabel("AUC")
    ax.set_title(f"{results['dataset']}: test AUC per period (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=True))
    (out / "results.md").write_text(markdown_table(results))
    if results["runs"] and results["runs"][0]["periods"]:
        plot_auc_by_period(results, out / "auc_by_period.png")


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _std(values: list[float]) -> float:
    return float(np.std(values)) if values else float("nan")
