"""SML (Zhang et al., "How to retrain recommender system? A sequential meta-learning method", SIGIR 2020).

A transfer module f fuses the previous model and the model just fine-tuned on the newest period:
theta^_t = train(theta_{t-1}, D_t), theta_t = f(theta_{t-1}, theta^_t), and theta_t is served. f is
trained so its output does well on the NEXT period. Per period t (test-then-train, as ASMG):
1. train f on D_t through the stored pair: minimise loss(f(theta_{t-2}, theta^_{t-1}), D_t) (the pair that
   produced the model just tested on D_t; at the first update the pair is (pretrained, pretrained));
2. theta^_t = train(theta_{t-1}, D_t); 3. theta_t = f(theta_{t-1}, theta^_t) over every row.

f, one per parameter tensor: the three channels [a, b, a * b] (a = previous, b = trained) over the
coordinates of one row (an embedding row, one output unit's weights, a bias vector) go through two
1-wide convolutions (as SML's 3x1 filters: they mix the channels at each coordinate, ReLU) and a dense
layer over the flattened feature map (mixes coordinates). Embedding tables share f across their rows,
so training gathers only the rows a batch touches. ``meta.output = "residual"`` adds b to the dense
output and zero-initialises it (f starts as IU), like ASMG's option; lr/batch/epochs come from ``meta``.
SML-MF is the same on the matrix-factorisation base model; ``mf`` is plain IU on it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asmg.batches import BatchMaker, PeriodTensors
from asmg.config import RunConfig, seeded
from asmg.methods.base import State, UpdateMethod, pack, unpack
from asmg.mf import init_mf_params, is_mf
from asmg.model import EMBEDDINGS, Batch, Params, compact_batch, loss, serving_copy, table_sizes
from asmg.train import train_base

CHANNELS = (8, 4)
TRANSFER_INIT_PURPOSE = 41
TRANSFER_SHUFFLE_PURPOSE = 43


def as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """[rows, coords]: tables and weight matrices by row, vectors as one row."""
    return tensor if tensor.dim() == 2 else tensor.reshape(1, -1)


class TransferCNN(nn.Module):
    """(previous, trained) rows [R, c] -> fused rows [R, c]."""

    def __init__(self, coords: int, residual: bool, gen: torch.Generator, channels: tuple[int, int] = CHANNELS
                 ) -> None:
        super().__init__()

        def uniform(fan_in: int, *shape: int) -> nn.Parameter:
            return nn.Parameter((torch.rand(*shape, generator=gen) * 2 - 1) / math.sqrt(fan_in))

        n1, n2 = channels
        self.residual = residual
        self.conv1_w, self.conv1_b = uniform(3, n1, 3, 1), uniform(3, n1)
        self.conv2_w, self.conv2_b = uniform(n1, n2, n1, 1), uniform(n1, n2)
        if residual:
            self.dense_w, self.dense_b = nn.Parameter(torch.zeros(coords, n2 * coords)), nn.Parameter(
                torch.zeros(coords))
        else:
            self.dense_w, self.dense_b = uniform(n2 * coords, coords, n2 * coords), uniform(n2 * coords, coords)

    def forward(self, previous: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
        x = torch.stack([previous, trained, previous * trained], dim=1)  # [R, 3, c]
        x = F.relu(F.conv1d(x, self.conv1_w, self.conv1_b))
        x = F.relu(F.conv1d(x, self.conv2_w, self.conv2_b))  # [R, n2, c]
        out = F.linear(x.flatten(1), self.dense_w, self.dense_b)
        return out + trained if self.residual else out


class Transfer(nn.Module):
    """One TransferCNN per parameter tensor of the base model."""

    def __init__(self, params: Params, residual: bool, gen: torch.Generator) -> None:
        super().__init__()
        self.nets = nn.ModuleDict({_key(n): TransferCNN(as_rows(t).shape[1], residual, gen)
                                   for n, t in params.items()})

    def fuse(self, previous: Params, trained: Params, rows: dict[str, torch.Tensor] | None = None) -> Params:
        """f over every row, or only over ``rows[name]`` of the embedding tables named there."""
        out = {}
        for name, a in previous.items():
            b = trained[name]
            pick = rows.get(name) if rows is not None and name in EMBEDDINGS else None
            if pick is not None:
                out[name] = self.nets[_key(name)](a[pick], b[pick])
            else:
                out[name] = self.nets[_key(name)](as_rows(a), as_rows(b)).reshape(a.shape)
        return out


class Sml(UpdateMethod):
    name = "sml"
    model_kind = "mlp"

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.previous: Params = {}
        self.trained: Params = {}
        self.transfer: Transfer | None = None
        self.meta_steps = 0

    def initial_params(self, sizes: dict[str, int], seed: int) -> Params:
        """The untrained base model pretraining starts from (the updater's hook; MF for SML-MF)."""
        from asmg.model import init_params

        return init_mf_params(sizes, seed) if self.model_kind == "mf" else init_params(sizes, seed)

    def start(self, pretrained: Params) -> None:
        _check_kind(self, pretrained)
        super().start(pretrained)
        residual = self.cfg.meta.output == "residual"
        gen = seeded(self.cfg.seed, 0, TRANSFER_INIT_PURPOSE)
        self.transfer = Transfer(self.base, residual, gen).to(self.device)
        self.previous = self.trained = self.base

    def grow(self, sizes: dict[str, int], gen: torch.Generator) -> Params:
        """The stored pair gets the same new rows as the base model."""
        added = super().grow(sizes, gen)
        for name, rows in added.items():
            self.previous = {**self.previous, name: torch.cat([self.previous[name], rows])}
            self.trained = {**self.trained, name: torch.cat([self.trained[name], rows])}
        return added

    def update(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        data = data.to(self.device)
        self.train_transfer(data, item_cats)
        trained = train_base(self.base, data, item_cats, self.cfg.train, self.cfg.seed, device=self.device)
        self.previous, self.trained = self.base, trained
        with torch.no_grad():
            self.base = {n: t.detach() for n, t in self.transfer.fuse(self.previous, self.trained).items()}

    def train_transfer(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        meta = self.cfg.meta
        optimiser = torch.optim.Adam(self.transfer.parameters(), lr=meta.lr)
        maker = BatchMaker(item_cats, table_sizes(self.base), self.device)
        for epoch in range(meta.epochs):
            gen = seeded(self.cfg.seed, data.period, TRANSFER_SHUFFLE_PURPOSE + 100 * epoch)
            for batch in maker.epoch(data, meta.batch_size, gen):
                optimiser.zero_grad(set_to_none=True)
                self.transfer_loss(batch).backward()
                optimiser.step()
                self.meta_steps += 1

    def transfer_loss(self, batch: Batch) -> torch.Tensor:
        """loss(f(previous, trained), batch), fusing only the embedding rows the batch uses (row_gather)."""
        if not self.cfg.meta.row_gather:
            return loss(self.transfer.fuse(self.previous, self.trained), batch)
        rows, local = compact_batch(batch)
        return loss(self.transfer.fuse(self.previous, self.trained, rows), local)

    def serving(self) -> Params:
        return serving_copy(self.base)

    def incremental(self) -> Params:
        """theta^_t: the model fine-tuned on D_t before the transfer fused it."""
        return self.trained

    def state(self) -> tuple[State, dict[str, Any]]:
        tensors = {**pack("base", self.base), **pack("previous", self.previous), **pack("trained", self.trained),
                   **pack("transfer", dict(self.transfer.state_dict()))}
        return tensors, {"meta_steps": self.meta_steps}

    def load_state(self, tensors: State, meta: dict[str, Any]) -> None:
        self.start(unpack("base", tensors, self.device))
        self.transfer.load_state_dict(unpack("transfer", tensors, self.device))
        self.previous = unpack("previous", tensors, self.device)
        self.trained = unpack("trained", tensors, self.device)
        self.meta_steps = meta["meta_steps"]


class SmlMf(Sml):
    name = "sml-mf"
    model_kind = "mf"


class MfIncrementalUpdate(UpdateMethod):
    """IU on the matrix-factorisation base model (the reference line for SML-MF)."""

    name = "mf"
    model_kind = "mf"

    def initial_params(self, sizes: dict[str, int], seed: int) -> Params:
        return init_mf_params(sizes, seed)

    def start(self, pretrained: Params) -> None:
        _check_kind(self, pretrained)
        super().start(pretrained)

    def update(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        self.base = train_base(self.base, data, item_cats, self.cfg.train, self.cfg.seed, device=self.device)

    def serving(self) -> Params:
        return serving_copy(self.base)


def _check_kind(method: UpdateMethod, pretrained: Params) -> None:
    want = getattr(method, "model_kind", "mlp")
    if (want == "mf") != is_mf(pretrained):
        raise RuntimeError(f"method '{method.name}' needs a pretrained {want} model: the updater must build the "
                           "untrained model with method.initial_params(sizes, seed) before pretraining")


def _key(name: str) -> str:
    return name.replace(".", "__")
