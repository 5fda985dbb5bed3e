"""Scoring with a loaded model: ids -> rows (unknown ids use the fallback row 0), one batched forward."""

from __future__ import annotations

import numpy as np
import torch

from asmg.artifacts import ModelArtifact
from asmg.batches import BatchMaker, PeriodTensors
from asmg.config import HISTORY_LEN, resolve_device
from asmg.model import Params, logits, table_sizes
from asmg.vocab import Vocabulary


class Scorer:
    """Immutable once built, so swapping the reference to a new Scorer is an atomic model swap."""

    def __init__(self, artifact: ModelArtifact, device: str = "cpu") -> None:
        self.artifact = artifact
        self.device = resolve_device(device)
        self.users = Vocabulary(artifact.users)
        self.items = Vocabulary(artifact.items)
        self.serving = {k: v.to(self.device) for k, v in artifact.serving.items()}
        self.shadow = {k: v.to(self.device) for k, v in artifact.shadow.items()}
        self.maker = BatchMaker(artifact.item_categories, table_sizes(self.serving), self.device)

    @property
    def version(self) -> int:
        return self.artifact.version

    def encode(self, users: np.ndarray, items: np.ndarray, histories: list[np.ndarray] | np.ndarray,
               history_len: int = HISTORY_LEN) -> PeriodTensors:
        """Rows for (user, item, history) triples; history is each user's recent positive item ids."""
        n = len(users)
        hist = np.zeros((n, history_len), dtype=np.int64)
        if isinstance(histories, np.ndarray) and histories.ndim == 2:
            hist[:, history_len - histories.shape[1]:] = self.items.lookup(histories.reshape(-1)).reshape(
                histories.shape)
        else:
            for row, h in enumerate(histories):  # requests carry a few histories; not a data-sized loop
                h = np.asarray(h, dtype=np.int64)[-history_len:]
                if len(h):
                    hist[row, history_len - len(h):] = self.items.lookup(h)
        return PeriodTensors(0, torch.from_numpy(self.users.lookup(users)), torch.from_numpy(self.items.lookup(items)),
                             torch.from_numpy(hist), torch.zeros(n))

    @torch.no_grad()
    def score(self, data: PeriodTensors, shadow: bool = False) -> np.ndarray:
        params: Params = self.shadow if shadow else self.serving
        batch = self.maker.batch(data.to(self.device), slice(None))
        return torch.sigmoid(logits(params, batch)).double().cpu().numpy()

    def score_user(self, user_id: int, item_ids: list[int] | np.ndarray, history: list[int] | np.ndarray = ()
                   ) -> np.ndarray:
        items = np.asarray(item_ids, dtype=np.int64)
        users = np.full(len(items), user_id, dtype=np.int64)
        hist = np.tile(np.asarray(history, dtype=np.int64)[-HISTORY_LEN:], (len(items), 1)) if len(history) else \
            np.zeros((len(items), 0), dtype=np.int64)
        return self.score(self.encode(users, items, hist))

    def known(self, user_ids: np.ndarray) -> np.ndarray:
        return self.users.lookup(np.asarray(user_ids, dtype=np.int64)) > 0

