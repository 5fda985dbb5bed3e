"""Matrix factorisation base model (SML-MF's base): score = <p_u, q_i> + b_u + b_i + b.

Stored in the same name -> tensor layout as the Embedding & MLP so everything generic works on it
unchanged (growing tables, row 0 fallback, row-gathered batches, train_base/predict through the
model-kind dispatch in :func:`asmg.model.logits`): ``user_emb`` [U, d+1] and ``item_emb`` [I, d+1]
keep each row's bias in their last column, ``mf.bias`` [1] is the global bias and marks the kind.
There is no category table: categories and histories are ignored.
"""

from __future__ import annotations

import torch

from asmg.config import EMBEDDING_DIM, seeded
from asmg.model import INIT_PURPOSE, MF_MARKER, Batch, Params, init_rows

MF_TABLES = ("user_emb", "item_emb")


def is_mf(params: Params) -> bool:
    return MF_MARKER in params


def init_mf_params(sizes: dict[str, int], seed: int, dim: int = EMBEDDING_DIM) -> Params:
    """Same uniform row init as the Embedding & MLP (so grown rows look alike), biases included; b = 0."""
    gen = seeded(seed, 0, INIT_PURPOSE)
    return {"user_emb": init_rows(sizes["user"], gen, dim + 1), "item_emb": init_rows(sizes["item"], gen, dim + 1),
            MF_MARKER: torch.zeros(1)}


def mf_logits(params: Params, batch: Batch) -> torch.Tensor:
    user, item = params["user_emb"][batch.user], params["item_emb"][batch.item]
    return (user[:, :-1] * item[:, :-1]).sum(-1) + user[:, -1] + item[:, -1] + params[MF_MARKER]
