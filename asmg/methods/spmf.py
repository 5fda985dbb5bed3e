"""SPMF (Wang et al., "Streaming ranking based recommender systems", SIGIR 2018) as the paper's baseline.

A reservoir keeps a uniform sample of the past (classic reservoir sampling, Algorithm R, fed every
period with that period's samples). Per period t:
1. replay sample from the reservoir (which holds only periods before t), of size
   m = min(|R|, ceil(replay_fraction * |D_t|)) drawn without replacement, split between positives and
   negatives in the reservoir's own proportion (m_pos = round(m * n_pos / |R|)) so the replay does not
   shift the label balance; positives are drawn with probability proportional to exp(rank / n_pos),
   rank 1 = the positive the current model theta_{t-1} scores highest, rank n_pos = the lowest (so what
   the model now gets wrong is replayed most, up to e times as often); negatives uniformly;
2. theta_t = train(theta_{t-1}, D_t u replay), one epoch;
3. D_t enters the reservoir.
Capacity = round(capacity_fraction * |pretraining data|). Methods do not see the pretraining data, so it
is estimated at the first update as pretrain_periods * |D_first| (exact for equal-count periods); the
reservoir fills from the first update period on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from asmg.batches import PeriodTensors
from asmg.config import RunConfig, seeded
from asmg.methods.base import State, UpdateMethod, pack, pack_periods, unpack_periods
from asmg.model import Params, serving_copy
from asmg.train import predict, train_base

CAPACITY_FRACTION = 0.1
REPLAY_FRACTION = 0.5
RESERVOIR_PURPOSE = 31
REPLAY_PURPOSE = 37
FIELDS = ("user", "item", "history", "label")


def take(data: PeriodTensors, index: torch.Tensor) -> PeriodTensors:
    return PeriodTensors(data.period, *(getattr(data, f)[index] for f in FIELDS))


def reservoir_slots(seen: int, arriving: int, capacity: int, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm R for ``arriving`` items that are stream items seen, seen+1, ... (0-based).

    Item i goes to slot i while i < capacity, afterwards to a uniform slot r in [0, i] when r < capacity
    (probability capacity / (i + 1)). Returns (slots, items): slot slots[j] now holds arriving item
    items[j]; when one period writes a slot twice, the later item wins, exactly as in the sequential loop.
    """
    index = seen + np.arange(arriving, dtype=np.int64)
    draw = torch.rand(arriving, generator=gen, dtype=torch.float64).numpy()
    slot = np.where(index < capacity, index, np.floor(draw * (index + 1)).astype(np.int64))
    items = np.flatnonzero(slot < capacity)
    reverse = items[::-1]
    slots, first = np.unique(slot[reverse], return_index=True)  # first in reverse = last write
    return slots, reverse[first]


class Reservoir:
    """A uniform sample of every sample offered so far, at most ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seen = 0
        self.data: PeriodTensors | None = None

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def add(self, data: PeriodTensors, gen: torch.Generator) -> None:
        slots, items = reservoir_slots(self.seen, len(data), self.capacity, gen)
        size = min(self.seen + len(data), self.capacity)
        self.seen += len(data)
        if not len(slots):
            return
        slots_t, items_t = torch.from_numpy(slots).to(data.user.device), torch.from_numpy(items).to(data.user.device)
        parts = []
        for f in FIELDS:
            new = getattr(data, f)
            old = getattr(self.data, f) if self.data is not None else new[:0]
            out = torch.cat([old, new.new_zeros(size - len(old), *new.shape[1:])])
            out[slots_t] = new[items_t]
            parts.append(out)
        self.data = PeriodTensors(data.period, *parts)


def replay_weights(scores: torch.Tensor) -> torch.Tensor:
    """exp(rank / n) with rank 1 for the highest score (ties keep sample order)."""
    n = scores.shape[0]
    order = torch.argsort(scores, descending=True, stable=True)
    rank = torch.empty(n, dtype=torch.float64)
    rank[order] = torch.arange(1, n + 1, dtype=torch.float64)
    return torch.exp(rank / max(n, 1))


class Spmf(UpdateMethod):
    name = "spmf"

    def __init__(self, cfg: RunConfig, device: torch.device, capacity_fraction: float = CAPACITY_FRACTION,
                 replay_fraction: float = REPLAY_FRACTION) -> None:
        super().__init__(cfg, device)
        self.capacity_fraction = capacity_fraction
        self.replay_fraction = replay_fraction
        self.reservoir: Reservoir | None = None
        self.replayed = 0

    def update(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        data = data.to(self.device)
        if self.reservoir is None:
            estimate = self.cfg.protocol.pretrain_periods * len(data)
            self.reservoir = Reservoir(max(1, round(self.capacity_fraction * estimate)))
        replay = self.replay_sample(data, item_cats)
        train_on = PeriodTensors.concat([replay, data]) if replay is not None else data
        self.base = train_base(self.base, train_on, item_cats, self.cfg.train, self.cfg.seed, device=self.device)
        self.reservoir.add(data, seeded(self.cfg.seed, data.period, RESERVOIR_PURPOSE))

    def replay_sample(self, data: PeriodTensors, item_cats: np.ndarray) -> PeriodTensors | None:
        past = self.reservoir.data if self.reservoir is not None else None
        if past is None or not len(past):
            return None
        gen = seeded(self.cfg.seed, data.period, REPLAY_PURPOSE)
        size = min(len(past), math.ceil(self.replay_fraction * len(data)))
        positive = past.label.cpu() > 0.5
        pos, neg = torch.nonzero(positive).squeeze(1), torch.nonzero(~positive).squeeze(1)
        n_pos = min(len(pos), round(size * len(pos) / len(past)))
        n_neg = min(len(neg), size - n_pos)
        picks = [neg[torch.randperm(len(neg), generator=gen)[:n_neg]]]
        if n_pos:
            scores = torch.from_numpy(predict(self.base, take(past, pos.to(past.user.device)), item_cats))
            picks.append(pos[torch.multinomial(replay_weights(scores), n_pos, replacement=False, generator=gen)])
        index = torch.cat(picks)
        self.replayed += len(index)
        return take(past, index.to(past.user.device))

    def serving(self) -> Params:
        return serving_copy(self.base)

    def state(self) -> tuple[State, dict[str, Any]]:
        tensors, meta = pack("base", self.base), {"replayed": self.replayed}
        if self.reservoir is not None:
            meta.update(capacity=self.reservoir.capacity, seen=self.reservoir.seen, stored=len(self.reservoir))
            if self.reservoir.data is not None:
                tensors.update(pack_periods("reservoir", [self.reservoir.data]))
        return tensors, meta

    def load_state(self, tensors: State, meta: dict[str, Any]) -> None:
        super().load_state(tensors, meta)
        self.replayed = meta["replayed"]
        if "capacity" in meta:
            self.reservoir = Reservoir(meta["capacity"])
            self.reservoir.seen = meta["seen"]
            if meta["stored"]:
                self.reservoir.data = unpack_periods("reservoir", tensors, 1, self.device)[0]
