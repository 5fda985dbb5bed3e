"""Scoring with a loaded model: ids -> rows (unknown ids use the fallback row 0), one batched forward.

One user's candidates (``Scorer.score_user``, what ``POST /score`` asks) take a shorter path on CPU:
the user's vector and history mean are computed once instead of once per candidate, the first MLP layer
is split by input block (for catalogues up to :data:`PROJECT_MAX_ROWS` items every item's target and
history blocks are applied once at load, so a request gathers rows of them), and the arithmetic runs in
NumPy on views of the weights (for a hundred candidates torch's per-op dispatch cost more than the
arithmetic). It computes what ``score(encode(...))`` computes, to float32 rounding
(tests/test_scorer.py checks both paths agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asmg.artifacts import ModelArtifact
from asmg.batches import BatchMaker, PeriodTensors
from asmg.config import HISTORY_LEN, resolve_device
from asmg.model import HIDDEN_LAYERS, Params, is_mf, logits, table_sizes
from asmg.vocab import Vocabulary

PROJECT_MAX_ROWS = 500_000  # items whose first-layer projections a scorer keeps (2 x 80 bytes each)


class SortedIds:
    """A vocabulary's id -> row look-up for a few ids at a time: binary search over a sorted copy, a few
    microseconds where a pandas index look-up costs tens (the rows are the vocabulary's, unknown ids 0)."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        ids = vocabulary.ids
        order = np.argsort(ids, kind="stable")
        self.sorted = ids[order]
        self.rows = order.astype(np.int64) + 1

    def lookup(self, raw: np.ndarray) -> np.ndarray:
        if not len(self.sorted):
            return np.zeros(len(raw), dtype=np.int64)
        at = np.minimum(np.searchsorted(self.sorted, raw), len(self.sorted) - 1)
        return np.where(self.sorted[at] == raw, self.rows[at], 0)


@dataclass(frozen=True)
class _DenseParams:
    """One parameter set as float32 NumPy views, the first MLP layer split into its user, history and
    target-item blocks (its input is ``[user ; history mean ; target]``)."""

    user_emb: np.ndarray
    item_emb: np.ndarray
    cat_emb: np.ndarray
    w_user: np.ndarray
    w_history: np.ndarray
    w_target: np.ndarray  # transposed: [2 * dim, hidden]
    bias: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # the later layers, weights transposed

    @classmethod
    def of(cls, params: Params) -> _DenseParams:
        def array(name: str) -> np.ndarray:
            return np.ascontiguousarray(params[name].detach().cpu().numpy(), dtype=np.float32)

        dim = params["user_emb"].shape[1]
        first = array("mlp.0.weight")
        rest = tuple((np.ascontiguousarray(array(f"mlp.{i}.weight").T), array(f"mlp.{i}.bias"))
                     for i in range(1, len(HIDDEN_LAYERS) + 1))
        return cls(array("user_emb"), array("item_emb"), array("cat_emb"), first[:, :dim],
                   first[:, dim:3 * dim], np.ascontiguousarray(first[:, 3 * dim:].T), array("mlp.0.bias"), rest)


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
        self.item_cats = np.asarray(artifact.item_categories, dtype=np.int64)
        # the one-user path: CPU and the ASMG base model (an MF model or a GPU takes the batched path)
        self.dense = _DenseParams.of(self.serving) if self.device.type == "cpu" and not is_mf(self.serving) \
            else None
        self.user_rows, self.item_rows = SortedIds(self.users), SortedIds(self.items)
        self.projected = self._project(self.dense) if self.dense is not None else None

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
        """Scores of ``item_ids`` for one user with ``history`` (recent positive item ids, oldest first)."""
        if self.dense is None:
            return self.score_user_batched(user_id, item_ids, history)
        params = self.dense
        items = np.asarray(item_ids, dtype=np.int64)
        n = len(items)
        past = np.asarray(history, dtype=np.int64)[-HISTORY_LEN:] if len(history) else np.zeros(0, dtype=np.int64)
        rows = self.item_rows.lookup(np.concatenate([items, past]))  # one look-up for candidates and history
        mask = rows[n:] > 0  # unknown history items (row 0) are left out of the mean, as in the batched path
        count = max(float(mask.sum()), 1.0)
        user = int(self.user_rows.lookup(np.array([user_id], dtype=np.int64))[0])
        user = user if user < len(params.user_emb) else 0
        base = params.w_user @ params.user_emb[user] + params.bias
        if self.projected is not None:  # the first layer's item blocks, applied to every item at load
            target_part, history_part = self.projected
            hidden = target_part[rows[:n]]
            base += history_part[rows[n:][mask]].sum(0) / count
        else:
            vectors = self._item_vectors(params, rows)
            hidden = vectors[:n] @ params.w_target
            base += params.w_history @ (vectors[n:][mask].sum(0) / count)
        hidden += base
        np.maximum(hidden, 0, out=hidden)
        for i, (weight, bias) in enumerate(params.layers):
            hidden = hidden @ weight
            hidden += bias
            if i < len(params.layers) - 1:
                np.maximum(hidden, 0, out=hidden)
        logit = hidden[:, 0]
        return (1.0 / (1.0 + np.exp(-logit))).astype(np.float64)

    def _project(self, params: _DenseParams, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray] | None:
        """Every item row through the first layer's target and history blocks ([rows, hidden] each), so a
        request only gathers rows; None above :data:`PROJECT_MAX_ROWS` (the tables would cost too much memory)."""
        n_rows = len(self.item_cats)
        if n_rows > PROJECT_MAX_ROWS:
            return None
        target = np.empty((n_rows, params.w_target.shape[1]), dtype=np.float32)
        history = np.empty_like(target)
        for start in range(0, n_rows, chunk):
            vectors = self._item_vectors(params, np.arange(start, min(start + chunk, n_rows)))
            target[start:start + chunk] = vectors @ params.w_target
            history[start:start + chunk] = vectors @ params.w_history.T
        return target, history

    def _item_vectors(self, params: _DenseParams, rows: np.ndarray) -> np.ndarray:
        """[item emb ; mean of its category embs] per row (as asmg.model.logits, with BatchMaker's clamps)."""
        cats = self.item_cats[rows]
        n_cat = len(params.cat_emb)
        known = (cats > 0) & (cats < n_cat)
        cat_rows = np.where(known, cats, 0)
        weights = known.astype(np.float32)
        cat_mean = np.einsum("rc,rcd->rd", weights, params.cat_emb[cat_rows])
        cat_mean /= np.maximum(weights.sum(-1, keepdims=True), 1.0)
        item_rows = np.where(rows < len(params.item_emb), rows, 0)
        return np.concatenate([params.item_emb[item_rows], cat_mean], axis=1)

    def score_user_batched(self, user_id: int, item_ids: list[int] | np.ndarray,
                           history: list[int] | np.ndarray = ()) -> np.ndarray:
        """:meth:`score_user` through the batched forward (one row per candidate, history repeated)."""
        items = np.asarray(item_ids, dtype=np.int64)
        users = np.full(len(items), user_id, dtype=np.int64)
        hist = np.tile(np.asarray(history, dtype=np.int64)[-HISTORY_LEN:], (len(items), 1)) if len(history) else \
            np.zeros((len(items), 0), dtype=np.int64)
        return self.score(self.encode(users, items, hist))

    def known(self, user_ids: np.ndarray) -> np.ndarray:
        return self.users.lookup(np.asarray(user_ids, dtype=np.int64)) > 0

