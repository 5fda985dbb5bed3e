"""The interface every update method implements, and state packing for checkpoints."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from asmg.batches import PeriodTensors
from asmg.config import RunConfig
from asmg.model import Params, canonical, grow_params, init_params

State = dict[str, torch.Tensor]


class UpdateMethod(ABC):
    """Lifecycle: start(pretrained) once, then per period grow(...) and update(D_t); serving() any time."""

    name: str = "method"

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.base: Params = {}

    def initial_params(self, sizes: dict[str, int], seed: int) -> Params:
        """The untrained base model pretraining starts from (Embedding & MLP unless the method says otherwise)."""
        return init_params(sizes, seed)

    def start(self, pretrained: Params) -> None:
        self.base = canonical({n: t.to(self.device) for n, t in pretrained.items()})

    def grow(self, sizes: dict[str, int], gen: torch.Generator) -> Params:
        """Append rows for new ids to the base model; returns the appended rows for subclasses to reuse."""
        self.base, added = grow_params(self.base, sizes, gen)
        return added

    def observe(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        """D_t has arrived and the served model was just tested on it, before any table grows or
        anything trains: the moment for a method to test other models it keeps (the serving guard)."""
        return None

    @abstractmethod
    def update(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        """Consume D_t: afterwards serving() is the model for period t+1."""

    @abstractmethod
    def serving(self) -> Params:
        """The model to serve next (its row 0 is whatever the method keeps there)."""

    def incremental(self) -> Params:
        """The plainly incrementally updated model (IU shadow), where the method has one."""
        return self.base

    def state(self) -> tuple[State, dict[str, Any]]:
        return pack("base", self.base), {}

    def load_state(self, tensors: State, meta: dict[str, Any]) -> None:
        self.base = unpack("base", tensors, self.device)


def pack(prefix: str, params: dict[str, torch.Tensor]) -> State:
    return {f"{prefix}/{name}": t.detach().contiguous().cpu() for name, t in params.items()}


def unpack(prefix: str, tensors: State, device: torch.device) -> dict[str, torch.Tensor]:
    head = prefix + "/"
    return canonical({k[len(head):]: t.to(device) for k, t in tensors.items() if k.startswith(head)})


def pack_periods(prefix: str, periods: list[PeriodTensors]) -> State:
    out: State = {}
    for i, p in enumerate(periods):
        for field in ("user", "item", "history", "label"):
            out[f"{prefix}/{i}/{field}"] = getattr(p, field).contiguous().cpu()
        out[f"{prefix}/{i}/period"] = torch.tensor([p.period])
    return out


def unpack_periods(prefix: str, tensors: State, count: int, device: torch.device) -> list[PeriodTensors]:
    return [PeriodTensors(int(tensors[f"{prefix}/{i}/period"][0]),
                          *(tensors[f"{prefix}/{i}/{f}"].to(device) for f in ("user", "item", "history", "label")))
            for i in range(count)]
