"""IU (fine-tune on the newest period) and BU-w (fine-tune on the union of the last w periods)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from asmg.batches import PeriodTensors
from asmg.config import RunConfig
from asmg.methods.base import State, UpdateMethod, pack, pack_periods, unpack_periods
from asmg.model import Params, serving_copy
from asmg.train import train_base


class IncrementalUpdate(UpdateMethod):
    """IU: theta_t = train(init = theta_{t-1}, data = D_t)."""

    name = "iu"

    def update(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        self.base = train_base(self.base, data, item_cats, self.cfg.train, self.cfg.seed, device=self.device)

    def serving(self) -> Params:
        return serving_copy(self.base)


class BatchUpdate(UpdateMethod):
    """BU-w: theta_t = train(init = theta_{t-1}, data = D_{t-w+1} u ... u D_t), one epoch."""

    def __init__(self, cfg: RunConfig, device: torch.device, window: int) -> None:
        super().__init__(cfg, device)
        self.window = window
        self.name = f"bu-{window}"
        self.recent: list[PeriodTensors] = []

    def update(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        self.recent = [*self.recent, data][-self.window:]
        union = PeriodTensors.concat(self.recent)
        self.base = train_base(self.base, union, item_cats, self.cfg.train, self.cfg.seed, device=self.device)

    def serving(self) -> Params:
        return serving_copy(self.base)

    def state(self) -> tuple[State, dict[str, Any]]:
        return {**pack("base", self.base), **pack_periods("recent", self.recent)}, {"recent": len(self.recent)}

    def load_state(self, tensors: State, meta: dict[str, Any]) -> None:
        super().load_state(tensors, meta)
        self.recent = unpack_periods("recent", tensors, meta["recent"], self.device)
