"""The serving guard (champion/challenger): several update strategies run side by side; the one with
the best recent record serves.

Why: ASMG's generator can lose to plain IU for stretches (little meta-training signal, a calm period
after noisy ones), and a product must never keep serving a model that loses to its IU shadow. Every
period each candidate's served model is tested on the new period BEFORE anything trains on it
(prequential); the record is an exponentially weighted mean of those AUCs, and the champion changes
only when a challenger leads by more than a margin, so the choice for period t+1 uses periods <= t.

IU costs nothing extra next to ASMG: the ASMG method's base model IS the IU model (same start, same
data, same seeds), so the "iu" candidate is a view of it rather than a second training run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from asmg.batches import PeriodTensors
from asmg.config import RunConfig
from asmg.methods.base import State, UpdateMethod
from asmg.model import Params, serving_copy
from asmg.train import evaluate


@dataclass
class Record:
    """One candidate's prequential record: EW mean AUC and the last period's metrics."""

    score: float | None = None
    last: dict[str, float] = field(default_factory=dict)
    periods: int = 0

    def add(self, metrics: dict[str, float], decay: float) -> None:
        auc = metrics["auc"]
        if np.isfinite(auc):
            self.score = auc if self.score is None else decay * self.score + (1 - decay) * auc
        self.last = {k: float(v) for k, v in metrics.items()}
        self.periods += 1


def choose_champion(records: dict[str, Record], champion: str, margin: float) -> str:
    """The challenger with the best score takes over only if it leads the champion by more than ``margin``."""
    scored = {name: r.score for name, r in records.items() if r.score is not None}
    if not scored:
        return champion
    best = max(scored, key=lambda name: scored[name])
    held = scored.get(champion)
    if held is None or scored[best] > held + margin:
        return best
    return champion


class GuardedMethod(UpdateMethod):
    """Candidates from ``cfg.guard.candidates``: an ASMG method (its IU base is the "iu" candidate) and,
    optionally, BU-w methods trained alongside."""

    def __init__(self, cfg: RunConfig, device: torch.device,
                 make_method: Callable[[str, RunConfig, torch.device], UpdateMethod],
                 name: str = "asmg-guarded") -> None:
        """``make_method``: the registry's constructor of the candidates (passed in: the registry imports this)."""
        super().__init__(cfg, device)
        self.name = name
        self.members: dict[str, UpdateMethod] = {}
        self.views: dict[str, Callable[[], Params]] = {}
        for candidate in cfg.guard.candidates:
            if candidate == "iu":
                continue
            member = make_method(candidate, cfg, device)
            self.members[candidate] = member
            self.views[candidate] = member.serving
        asmg = next((m for n, m in self.members.items() if n.startswith("asmg")), None)
        if "iu" in cfg.guard.candidates:
            if asmg is None:
                iu = make_method("iu", cfg, device)
                self.members["iu"] = iu
                self.views["iu"] = iu.serving
            else:
                self.views["iu"] = lambda: serving_copy(asmg.incremental())
        self.order = [c for c in cfg.guard.candidates if c in self.views]
        if not self.order:
            raise ValueError("the guard needs at least one candidate")
        self.records = {c: Record() for c in self.order}
        self.champion = self.order[0]
        self.history: list[str] = []  # the candidate served after each update
        self.seconds: dict[str, float] = {}

    def start(self, pretrained: Params) -> None:
        super().start(pretrained)
        for member in self.members.values():
            member.start(pretrained)

    def grow(self, sizes: dict[str, int], gen: torch.Generator) -> Params:
        state = gen.get_state()
        added: Params = {}
        for member in self.members.values():
            gen.set_state(state)  # every member grows the same new rows
            added = member.grow(sizes, gen)
        self.base = next(iter(self.members.values())).base
        return added

    def observe(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        """Test every candidate on D_t as the served model is tested: before new rows exist."""
        for name in self.order:
            self.records[name].add(evaluate(self.views[name](), data, item_cats), self.cfg.guard.decay)

    def update(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        """Train every candidate on D_t (observe() has tested them on it), then pick the model for t+1."""
        self.seconds = {}
        for member in self.members.values():
            member.update(data, item_cats)
            self.seconds.update(getattr(member, "seconds", {}))
        self.base = next(iter(self.members.values())).base
        self.champion = choose_champion(self.records, self.champion, self.cfg.guard.margin)
        self.history.append(self.champion)

    def serving(self) -> Params:
        return self.views[self.champion]()

    def incremental(self) -> Params:
        return self.views["iu"]() if "iu" in self.views else self.base

    def candidate_report(self) -> dict[str, Any]:
        """Which candidate serves next, and every candidate's last tested metrics and running score."""
        return {"served": self.champion,
                "candidates": {n: {**r.last, "score": r.score} for n, r in self.records.items() if r.last}}

    # -- checkpoints -----------------------------------------------------------------------------
    def state(self) -> tuple[State, dict[str, Any]]:
        tensors: State = {}
        metas: dict[str, Any] = {}
        for name, member in self.members.items():
            member_tensors, metas[name] = member.state()
            tensors.update({f"{name}/{k}": v for k, v in member_tensors.items()})
        records = {n: {"score": r.score, "last": r.last, "periods": r.periods} for n, r in self.records.items()}
        return tensors, {"members": metas, "records": records, "champion": self.champion, "history": self.history}

    def load_state(self, tensors: State, meta: dict[str, Any]) -> None:
        for name, member in self.members.items():
            head = f"{name}/"
            member.load_state({k[len(head):]: v for k, v in tensors.items() if k.startswith(head)},
                              meta["members"][name])
        self.base = next(iter(self.members.values())).base
        self.records = {n: Record(r["score"], r["last"], r["periods"]) for n, r in meta["records"].items()}
        self.champion = meta["champion"]
        self.history = list(meta["history"])
