"""IncCTR (Wang et al., "A practical incremental method to train deep CTR models", 2020), the paper's
knowledge-distillation baseline: the previous model is the teacher while fine-tuning on D_t,

    loss = (1 - l) * BCE(z, y) + l * BCE(z, sigmoid(z_prev)),   l = 0.2,

z the student's logits and z_prev the frozen previous model's on the same batch, so the update is
pulled towards what the model knew before (less forgetting than IU).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from asmg.batches import PeriodTensors
from asmg.config import RunConfig
from asmg.methods.base import UpdateMethod
from asmg.model import Batch, Params, logits, serving_copy
from asmg.train import train_base

DISTILL_WEIGHT = 0.2


def distillation_loss(params: Params, batch: Batch, teacher: Params, weight: float = DISTILL_WEIGHT) -> torch.Tensor:
    z = logits(params, batch)
    with torch.no_grad():
        soft = torch.sigmoid(logits(teacher, batch))
    return ((1 - weight) * F.binary_cross_entropy_with_logits(z, batch.label)
            + weight * F.binary_cross_entropy_with_logits(z, soft))


class IncCtr(UpdateMethod):
    name = "incctr"

    def __init__(self, cfg: RunConfig, device: torch.device, weight: float = DISTILL_WEIGHT) -> None:
        super().__init__(cfg, device)
        self.weight = weight

    def update(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        teacher = {n: t.detach() for n, t in self.base.items()}
        objective = partial(distillation_loss, teacher=teacher, weight=self.weight)
        self.base = train_base(self.base, data, item_cats, self.cfg.train, self.cfg.seed, device=self.device,
                               objective=objective)

    def serving(self) -> Params:
        return serving_copy(self.base)
