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
so training gathers only the rows a batch touches. f is initialised to output b exactly (SML starts as
IU; see TransferCNN) and sees every tensor divided by its RMS (see Transfer.fuse). f has its own
hyper-parameters, not ASMG's (presets tune those for the generator): Adam at TRANSFER_LR = 3e-4 over
batches of the base model's size, for the base model's epochs. The fused model feeds the next period,
so errors compound: with the authors' meta lr 1e-2 SML diverged on ml-100k (AUC 0.5 by period 13), and
at 1e-3 SML-MF learnt to scale its (underfit) embeddings up a little every period until its logloss
passed 1.1 by period 23. Picked on validation periods 18-23 of ml-100k only (mean AUC, seed 0, authors'
base settings): SML lr 1e-2 0.617, 3e-3 0.688, 1e-3 0.688, 3e-4 0.687 (IU 0.683; without the RMS
scaling 1e-3 gave 0.673); SML-MF lr 1e-3 0.672 (logloss 0.67 -> 1.16), 3e-4 0.680, 1e-4 0.680 (MF IU 0.679).
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
from asmg.methods.incremental import IncrementalUpdate
from asmg.model import EMBEDDINGS, Batch, Params, compact_batch, init_mf_params, is_mf, loss, serving_copy, table_sizes
from asmg.train import train_base

CHANNELS = (8, 4)
NORMALISE = True
TRANSFER_LR = 3e-4  # not meta.lr (see the module docstring)
TRANSFER_INIT_PURPOSE = 41
TRANSFER_SHUFFLE_PURPOSE = 43


def as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """[rows, coords]: tables and weight matrices by row, vectors as one row."""
    return tensor if tensor.dim() == 2 else tensor.reshape(1, -1)


class TransferCNN(nn.Module):
    """(previous, trained) rows [R, c] -> fused rows [R, c].

    Starts as the identity on ``trained`` (so SML starts as IU, and a freshly grown model is not wrecked
    by a random transfer): filters 0 and 1 of the first layer pick +b and -b, the second layer passes
    them on, and the dense layer outputs relu(b) - relu(-b) = b; every other filter is random and enters
    the dense layer with weight 0 until training finds a use for it.
    """

    def __init__(self, coords: int, gen: torch.Generator, channels: tuple[int, int] = CHANNELS) -> None:
        super().__init__()
        n1, n2 = channels

        def uniform(fan_in: int, *shape: int) -> torch.Tensor:
            return (torch.rand(*shape, generator=gen) * 2 - 1) / math.sqrt(fan_in)

        conv1_w, conv1_b = uniform(3, n1, 3), uniform(3, n1)
        conv1_w[:2], conv1_b[:2] = torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]), 0.0
        conv2_w, conv2_b = uniform(n1, n2, n1), uniform(n1, n2)
        conv2_w[:2], conv2_b[:2] = 0.0, 0.0
        conv2_w[0, 0], conv2_w[1, 1] = 1.0, 1.0
        dense_w = torch.zeros(coords, n2, coords)
        dense_w[:, 0], dense_w[:, 1] = torch.eye(coords), -torch.eye(coords)
        self.conv1_w, self.conv1_b = nn.Parameter(conv1_w), nn.Parameter(conv1_b)
        self.conv2_w, self.conv2_b = nn.Parameter(conv2_w), nn.Parameter(conv2_b)
        self.dense_w, self.dense_b = nn.Parameter(dense_w.reshape(coords, n2 * coords)), nn.Parameter(
            torch.zeros(coords))

    def forward(self, previous: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
        x = torch.stack([previous, trained, previous * trained], dim=1)  # [R, 3, c]
        # 1-wide convolutions over the coordinate axis = a channel mix at every coordinate (matmul: far
        # cheaper than conv1d on CPU at these sizes)
        x = F.relu(self.conv1_w @ x + self.conv1_b[:, None])
        x = F.relu(self.conv2_w @ x + self.conv2_b[:, None])  # [R, n2, c]
        return F.linear(x.flatten(1), self.dense_w, self.dense_b)


class Transfer(nn.Module):
    """One TransferCNN per parameter tensor of the base model."""

    def __init__(self, params: Params, gen: torch.Generator, normalise: bool = NORMALISE) -> None:
        super().__init__()
        self.normalise = normalise
        self.nets = nn.ModuleDict({_key(n): TransferCNN(as_rows(t).shape[1], gen)
                                   for n, t in params.items()})

    def fuse(self, previous: Params, trained: Params, rows: dict[str, torch.Tensor] | None = None) -> Params:
        """f over every row, or only over ``rows[name]`` of the embedding tables named there.

        With ``normalise`` f sees each tensor divided by the RMS of the whole trained tensor and its output
        is scaled back, so one transfer step moves a table of 0.05-sized embeddings and a 0.3-sized kernel
        by the same relative amount.
        """
        out = {}
        for name, a in previous.items():
            b = trained[name]
            scale = b.detach().pow(2).mean().sqrt().clamp(min=1e-8) if self.normalise else b.new_ones(())
            pick = rows.get(name) if rows is not None and name in EMBEDDINGS else None
            net = self.nets[_key(name)]
            if pick is not None:
                out[name] = net(a[pick] / scale, b[pick] / scale) * scale
            else:
                out[name] = (net(as_rows(a) / scale, as_rows(b) / scale) * scale).reshape(a.shape)
        return out


class Sml(UpdateMethod):
    """Works on either base model: nothing here depends on the parameters' names."""

    name = "sml"

    def __init__(self, cfg: RunConfig, device: torch.device, lr: float | None = None) -> None:
        super().__init__(cfg, device)
        self.lr = TRANSFER_LR if lr is None else lr
        self.previous: Params = {}
        self.trained: Params = {}
        self.transfer: Transfer | None = None
        self.meta_steps = 0

    def start(self, pretrained: Params) -> None:
        super().start(pretrained)
        gen = seeded(self.cfg.seed, 0, TRANSFER_INIT_PURPOSE)
        self.transfer = Transfer(self.base, gen).to(self.device)
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
        train = self.cfg.train
        optimiser = torch.optim.Adam(self.transfer.parameters(), lr=self.lr)
        maker = BatchMaker(item_cats, table_sizes(self.base), self.device)
        for epoch in range(train.epochs):
            gen = seeded(self.cfg.seed, data.period, TRANSFER_SHUFFLE_PURPOSE + 100 * epoch)
            for batch in maker.epoch(data, train.batch_size, gen):
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


class MfBase:
    """Mixin: the method's base model is matrix factorisation, built through the updater's hook
    ``initial_params`` (pretraining then trains it like any other base model)."""

    name: str
    model_kind = "mf"

    def initial_params(self, sizes: dict[str, int], seed: int) -> Params:
        return init_mf_params(sizes, seed)

    def start(self, pretrained: Params) -> None:
        if not is_mf(pretrained):
            raise RuntimeError(f"method '{self.name}' needs a pretrained MF model: the updater must build the "
                               "untrained model with method.initial_params(sizes, seed) before pretraining")
        super().start(pretrained)  # type: ignore[misc]


class SmlMf(MfBase, Sml):
    name = "sml-mf"


class MfIncrementalUpdate(MfBase, IncrementalUpdate):
    """IU on the matrix-factorisation base model (the reference line for SML-MF)."""

    name = "mf"


def _key(name: str) -> str:
    return name.replace(".", "__")
