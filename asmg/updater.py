"""THE per-period update path, shared by the offline runner and the streaming trainer.

For each period, in order: encode its samples (vocabularies grow), test the served model on it,
grow the method's tables, then let the method update; the first ``pretrain_periods`` periods are
collected and used once to pretrain the base model every method starts from.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

from asmg.artifacts import ArtifactError, bundle_exists, load_bundle, save_bundle
from asmg.batches import PeriodTensors, encode_period
from asmg.config import RunConfig, resolve_device, seeded
from asmg.methods import UpdateMethod, make_method
from asmg.model import Params
from asmg.train import evaluate, train_base
from asmg.vocab import ItemCategories, Vocabularies, Vocabulary

GROW_PURPOSE = 3
PRETRAIN_PERIOD = 0
PRETRAINED = "pretrained/"  # checkpoint keys of the progressive pretraining's model so far


@dataclass
class PeriodResult:
    period: int
    samples: int
    metrics: dict[str, float] | None  # the served model tested on this period (None before pretraining)
    shadow: dict[str, float] | None  # the plain IU model of the same run, where the method has one
    seconds: dict[str, float] = field(default_factory=dict)
    # the serving guard: every candidate tested on this period, and the one chosen to serve the next
    candidates: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PeriodUpdater:
    def __init__(self, method: str, cfg: RunConfig, pretrain_cache: str | None = None) -> None:
        """``pretrain_cache``: a folder (or URI) where pretrained models are kept by a hash of everything
        they depend on, so an experiment pretrains once per (data, base settings, seed), not once per run."""
        self.pretrain_cache = pretrain_cache
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.method: UpdateMethod = make_method(method, cfg, self.device)
        self.vocabs = Vocabularies()
        self.pretrain_data: list[PeriodTensors] = []  # pretrain_mode "union": the periods so far
        self.pretrained: Params = {}  # pretrain_mode "progressive": the model so far
        self.started = False
        self.last_period = 0

    def step(self, period: int, samples: pd.DataFrame, train: bool = True,
             with_shadow: bool = False) -> PeriodResult:
        if len(samples) == 0:
            raise ValueError(f"period {period} has no samples: skip it rather than step on it")
        if period <= self.last_period:
            raise ValueError(f"period {period} arrives after period {self.last_period}; periods must increase")
        seconds: dict[str, float] = {}
        clock = time.perf_counter()
        data = encode_period(samples, self.vocabs, period, self.cfg.protocol.history_len).to(self.device)
        item_cats = self.vocabs.item_categories.table
        metrics = shadow = None
        if self.started:
            metrics = evaluate(self.method.serving(), data, item_cats)
            if with_shadow:
                shadow = evaluate(self.method.incremental(), data, item_cats)
            self.method.observe(data, item_cats)
        seconds["evaluate"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if not self.started:
            progressive = self.cfg.train.pretrain_mode == "progressive"
            if progressive:
                self.pretrained = self.pretrain_progressively(data)
            else:
                self.pretrain_data.append(data)
            if period >= self.cfg.protocol.pretrain_periods:
                self.method.start(self.pretrained if progressive else self.pretrain())
                self.pretrain_data, self.pretrained = [], {}
                self.started = True
            seconds["pretrain"] = time.perf_counter() - clock
        elif train:
            self.method.grow(self.vocabs.sizes(), seeded(self.cfg.seed, period, GROW_PURPOSE))
            self.method.update(data, item_cats)
            seconds["update"] = time.perf_counter() - clock
            seconds.update(getattr(self.method, "seconds", {}))  # finer phases where a method times them
        self.last_period = period
        report = getattr(self.method, "candidate_report", None)
        candidates = report() if report is not None and metrics is not None else None
        return PeriodResult(period, len(data), metrics, shadow, seconds, candidates)

    def pretrain(self) -> Params:
        initial = self.method.initial_params(self.vocabs.sizes(), self.cfg.seed)
        params = {n: t.to(self.device) for n, t in initial.items()}
        union = PeriodTensors.concat(self.pretrain_data)
        union = PeriodTensors(PRETRAIN_PERIOD, union.user, union.item, union.history, union.label)
        cached = None
        if self.pretrain_cache is not None:
            cached = f"{self.pretrain_cache}/{self._pretrain_key(initial, union)}"
            if bundle_exists(cached):
                try:
                    return {n: t.to(self.device) for n, t in load_bundle(cached)[0].items()}
                except ArtifactError:
                    pass  # a damaged entry is recomputed and overwritten
        trained = train_base(params, union, self.vocabs.item_categories.table, self.cfg.train, self.cfg.seed,
                             epochs=self.cfg.train.pretrain_epochs, device=self.device)
        if cached is not None:
            save_bundle(cached, trained, {"kind": "pretrained"})
        return trained

    def pretrain_progressively(self, data: PeriodTensors) -> Params:
        """``pretrain_epochs`` epochs over this period, from the model so far: rows it already has keep what
        they learned, rows new in this period start where :meth:`pretrain` would start them."""
        initial = self.method.initial_params(self.vocabs.sizes(), self.cfg.seed)
        params = {n: t.to(self.device) for n, t in initial.items()}
        for name, known in self.pretrained.items():
            params[name][: known.shape[0]] = known  # tables only grow; a dense tensor keeps its shape
        return train_base(params, data, self.vocabs.item_categories.table, self.cfg.train, self.cfg.seed,
                          epochs=self.cfg.train.pretrain_epochs, device=self.device)

    def _pretrain_key(self, initial: Params, union: PeriodTensors) -> str:
        """Everything pretraining depends on: data, category table, starting point, settings, seed, device."""
        digest = hashlib.sha256()
        for tensor in (union.user, union.item, union.history, union.label,
                       torch.from_numpy(self.vocabs.item_categories.table), *initial.values()):
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
        digest.update(json.dumps({"train": asdict(self.cfg.train), "seed": self.cfg.seed, "device": self.device.type,
                                  "shapes": {n: list(t.shape) for n, t in initial.items()}},
                                 sort_keys=True).encode())
        return digest.hexdigest()[:32]

    def serving(self) -> Params:
        return self.method.serving()

    # -- checkpoints: everything needed to continue exactly where this left off ---------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = self.method.state() if self.started else ({}, {})
        tensors = {f"method/{k}": v for k, v in tensors.items()}
        tensors["vocab/users"] = torch.from_numpy(self.vocabs.users.ids.copy())
        tensors["vocab/items"] = torch.from_numpy(self.vocabs.items.ids.copy())
        tensors["vocab/categories"] = torch.from_numpy(self.vocabs.categories.ids.copy())
        tensors["vocab/item_categories"] = torch.from_numpy(self.vocabs.item_categories.table.copy())
        for i, p in enumerate(self.pretrain_data):
            for f in ("user", "item", "history", "label"):
                tensors[f"pretrain/{i}/{f}"] = getattr(p, f).contiguous().cpu()
        for name, t in self.pretrained.items():
            tensors[f"{PRETRAINED}{name}"] = t.contiguous().cpu()
        info = {"method": self.method.name, "config": self.cfg.to_dict(), "started": self.started,
                "last_period": self.last_period, "method_meta": meta,
                "pretrain_periods": [p.period for p in self.pretrain_data]}
        return tensors, json.loads(json.dumps(info))

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> PeriodUpdater:
        updater = cls(info["method"], RunConfig.from_dict(info["config"]))
        vocabs = updater.vocabs
        vocabs.users = Vocabulary(tensors["vocab/users"].numpy())
        vocabs.items = Vocabulary(tensors["vocab/items"].numpy())
        vocabs.categories = Vocabulary(tensors["vocab/categories"].numpy())
        vocabs.item_categories = ItemCategories(tensors["vocab/item_categories"].numpy().copy())
        updater.pretrain_data = [
            PeriodTensors(p, *(tensors[f"pretrain/{i}/{f}"].to(updater.device) for f in ("user", "item", "history",
                                                                                       "label")))
            for i, p in enumerate(info["pretrain_periods"])]
        updater.pretrained = {k[len(PRETRAINED):]: v.to(updater.device) for k, v in tensors.items()
                              if k.startswith(PRETRAINED)}
        updater.started = info["started"]
        updater.last_period = info["last_period"]
        if updater.started:
            method_tensors = {k[len("method/"):]: v for k, v in tensors.items() if k.startswith("method/")}
            updater.method.load_state(method_tensors, info["method_meta"])
        return updater
