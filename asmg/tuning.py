"""Choosing hyper-parameters on validation periods only.

Why: with the authors' base settings (lr 1e-3, one epoch) IU underfits small periods, and every
comparison against an underfit IU flatters whatever sees more data. So the base training (lr, epochs
per period, batch size) is chosen per dataset by IU's mean AUC on the validation periods, which end
before the first test period's model is built: a run stops at ``last_validation_period`` and nothing
after it is read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from asmg.config import ProtocolConfig, RunConfig
from asmg.experiment import ExperimentSpec, run_experiment
from asmg.methods.guard import Record, choose_champion
from asmg.prepare import PreparedPeriods

VALIDATION_PERIODS = 6  # tested periods used to choose, the last of them two before the first test period
PRETRAIN_CACHE = ".cache/pretrained"


@dataclass(frozen=True)
class BaseCandidate:
    lr: float
    epochs: int
    batch_size: int

    @property
    def label(self) -> str:
        return f"lr {self.lr:g}, {self.epochs} epoch{'s' if self.epochs > 1 else ''}, batch {self.batch_size}"

    def apply(self, cfg: RunConfig) -> RunConfig:
        return replace(cfg, train=replace(cfg.train, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size))


AUTO_GRID = tuple(BaseCandidate(lr, epochs, batch) for lr, epochs, batch in
                  itertools.product((1e-3, 3e-3, 1e-2), (1, 3), (256, 1024)))


def validation_window(protocol: ProtocolConfig) -> tuple[int, int]:
    """(first, last) period whose test AUC chooses: they end two periods before the first test period,
    so the model tested on D_{first_test} is never built (the run stops training at ``last``)."""
    last = protocol.first_test_period - 2
    first = max(protocol.pretrain_periods + 1, last - VALIDATION_PERIODS + 1)
    if first > last:
        raise ValueError(f"no validation periods between pretraining (1..{protocol.pretrain_periods}) and the "
                         f"first test period {protocol.first_test_period}")
    return first, last


def validation_auc(runs: list[dict[str, Any]], method: str, first: int, last: int) -> float:
    """Mean over seeds of a method's mean AUC on the validation periods first..last."""
    means = [np.mean([p["auc"] for p in r["validation_periods"] if first <= p["period"] <= last])
             for r in runs if r["method"] == method]
    return float(np.mean(means))


def validation_runs(data: PreparedPeriods, cfg: RunConfig, methods: Sequence[str], seeds: Sequence[int],
                    workers: int = 1) -> list[dict[str, Any]]:
    """Every (method, seed) run under ``cfg``, stopped at the last validation period."""
    _, last = validation_window(cfg.protocol)
    spec = ExperimentSpec(data.name, list(methods), list(seeds), cfg, last_period=last, pretrain_cache=PRETRAIN_CACHE)
    return run_experiment(data, spec, show_progress=False, workers=workers)["runs"]


def validate(data: PreparedPeriods, cfg: RunConfig, methods: Sequence[str], seeds: Sequence[int],
             workers: int = 1) -> dict[str, float]:
    """Validation AUC of each method under ``cfg``."""
    first, last = validation_window(cfg.protocol)
    runs = validation_runs(data, cfg, methods, seeds, workers)
    return {m: validation_auc(runs, m, first, last) for m in methods}


def simulate_guard(aucs: dict[str, list[float]], decay: float, margin: float) -> list[float]:
    """The AUC the serving guard would have served each period, from its candidates' per-period AUCs
    (candidate models do not depend on the guard's choice, so this equals running it). The first
    candidate serves until the records say otherwise, exactly as ``GuardedMethod`` does."""
    names = list(aucs)
    records = {n: Record() for n in names}
    champion, served = names[0], []
    for t in range(len(aucs[names[0]])):
        served.append(aucs[champion][t])
        for n in names:
            records[n].add({"auc": aucs[n][t]}, decay)
        champion = choose_champion(records, champion, margin)
    return served


def choose_base(data: PreparedPeriods, cfg: RunConfig, seeds: Sequence[int] = (0,),
                grid: Sequence[BaseCandidate] = AUTO_GRID, workers: int = 1,
                on_candidate: Callable[[BaseCandidate, float], None] | None = None
                ) -> tuple[RunConfig, list[tuple[BaseCandidate, float]]]:
    """The base settings under which IU does best on the validation periods, and every candidate's AUC."""
    scores = []
    for candidate in grid:
        auc = validate(data, candidate.apply(cfg), ["iu"], seeds, workers)["iu"]
        scores.append((candidate, auc))
        if on_candidate:
            on_candidate(candidate, auc)
    return best_of(scores)[0].apply(cfg), scores


def best_of(scores: Sequence[tuple[BaseCandidate, float]]) -> tuple[BaseCandidate, float]:
    """The candidate with the highest validation AUC (the first of equals)."""
    return max(scores, key=lambda pair: pair[1])


def auto_base(data: PreparedPeriods, cfg: RunConfig, seeds: Sequence[int], workers: int = 1,
              say: Callable[[str], None] = print) -> tuple[RunConfig, str]:
    """``--preset auto``: the base settings chosen on this dataset's own validation periods, with a note
    that says what was chosen from what (the results' hyper-parameter line carries it)."""
    first, last = validation_window(cfg.protocol)
    say(f"choosing the base training on validation periods {first}-{last} ({len(AUTO_GRID)} IU runs per seed; "
        f"seeds {', '.join(map(str, seeds))})")
    chosen, scores = choose_base(data, cfg, seeds, AUTO_GRID, workers,
                                 on_candidate=lambda c, auc: say(f"  {c.label}: IU validation AUC {auc:.4f}"))
    best = best_of(scores)
    note = (f"--preset auto: base training chosen by IU's AUC on validation periods {first}-{last} among "
            f"{len(scores)} candidates ({best[0].label}: {best[1]:.4f}); generator: the default ASMG configuration")
    say(f"chosen: {best[0].label}")
    return chosen, note
