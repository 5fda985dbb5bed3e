"""Base-model training and prediction (shared by every update method)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from asmg.batches import BatchMaker, PeriodTensors
from asmg.config import TrainConfig, seeded
from asmg.metrics import auc, logloss
from asmg.model import Batch, Params, logits, loss, table_sizes

SHUFFLE_PURPOSE = 11
EVAL_BATCH = 8192
Objective = Callable[[Params, Batch], torch.Tensor]


def train_base(params: Params, data: PeriodTensors, item_cats: np.ndarray, cfg: TrainConfig, seed: int,
               epochs: int | None = None, device: torch.device | None = None,
               objective: Objective | None = None) -> Params:
    """Adam from ``params`` over ``data``; a fresh optimiser each call (every period starts alike).

    ``objective(params, batch)`` replaces the plain BCE loss (IncCTR's distillation uses it).
    """
    objective = objective or loss
    device = device or next(iter(params.values())).device
    leaves = {name: t.detach().clone().to(device).requires_grad_(True) for name, t in params.items()}
    optimiser = adam(leaves.values(), cfg.lr)
    maker = BatchMaker(item_cats, table_sizes(leaves), device)
    data = data.to(device)
    for epoch in range(epochs or cfg.epochs):
        gen = seeded(seed, data.period, SHUFFLE_PURPOSE + 100 * epoch)
        for batch in maker.epoch(data, cfg.batch_size, gen):
            optimiser.zero_grad(set_to_none=True)
            objective(leaves, batch).backward()
            optimiser.step()
    return {name: t.detach() for name, t in leaves.items()}


def adam(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel: one pass over each tensor instead of ~10 ops per tensor per step (the
    dense update of every embedding row was a fifth of an IU step on CPU). Same update rule."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def warm_up_optimiser() -> None:
    """The first optimiser built in a process imports torch._dynamo (~6 s on CPU): do it at start-up, so
    the first period a role trains is not 6 s late."""
    adam([torch.zeros(1, requires_grad=True)], 1e-3)


@torch.no_grad()
def predict(params: Params, data: PeriodTensors, item_cats: np.ndarray) -> np.ndarray:
    """Probabilities for every sample, in order; rows the model lacks fall back to row 0."""
    device = next(iter(params.values())).device
    maker = BatchMaker(item_cats, table_sizes(params), device)
    out = [torch.sigmoid(logits(params, b)) for b in maker.epoch(data.to(device), EVAL_BATCH, None)]
    return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)


def evaluate(params: Params, data: PeriodTensors, item_cats: np.ndarray) -> dict[str, float]:
    probs = predict(params, data, item_cats)
    labels = data.label.cpu().numpy()
    return {"auc": auc(labels, probs), "logloss": logloss(labels, probs), "samples": int(len(labels))}
