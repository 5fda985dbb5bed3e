"""The base models as pure functions of a name -> tensor dict: the Embedding & MLP, and matrix factorisation.

Parameters are addressable by name so a generator can supply any of them, whole or as the few rows
a batch touches (see :func:`compact_batch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from itertools import accumulate

import torch
import torch.nn.functional as F

from asmg import cpu_kernels
from asmg.config import EMBEDDING_DIM, HIDDEN_LAYERS, seeded
from asmg.cpu_kernels import weighted_rows

Params = dict[str, torch.Tensor]
EMBEDDINGS = {"user_emb": "user", "item_emb": "item", "cat_emb": "category"}
# the Batch fields that hold each table's row ids
TABLE_FIELDS = {"user_emb": ("user",), "item_emb": ("item", "history"), "cat_emb": ("item_cats", "history_cats")}
EMBED_INIT = 0.05
INIT_PURPOSE = 7
MF_MARKER = "mf.bias"  # the global bias only a matrix-factorisation model has (see the end of this module)


def param_order(name: str) -> tuple:
    """One fixed order of parameter names (embeddings, then layers), whatever order a dict arrived in:
    generators map coordinates by position, so a checkpoint must restore the same order."""
    if name in EMBEDDINGS:
        return (0, list(EMBEDDINGS).index(name), "")
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "mlp" and parts[1].isdigit():
        return (1, int(parts[1]), parts[2] != "weight")
    return (2, 0, name)


def canonical(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: params[n] for n in sorted(params, key=param_order)}


def mlp_shapes(dim: int = EMBEDDING_DIM) -> dict[str, tuple[int, ...]]:
    """[user ; history (item+cats) ; target (item+cats)] = 5*dim -> 20 -> 10 -> 1."""
    sizes = (5 * dim, *HIDDEN_LAYERS, 1)
    shapes: dict[str, tuple[int, ...]] = {}
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes[f"mlp.{layer}.weight"] = (fan_out, fan_in)
        shapes[f"mlp.{layer}.bias"] = (fan_out,)
    return shapes


def init_rows(n: int, gen: torch.Generator, dim: int = EMBEDDING_DIM) -> torch.Tensor:
    return (torch.rand(n, dim, generator=gen) * 2 - 1) * EMBED_INIT


def init_params(sizes: dict[str, int], seed: int, dim: int = EMBEDDING_DIM) -> Params:
    """Uniform embeddings (size-independent, so grown rows look like old ones), Glorot MLP, zero bias."""
    gen = seeded(seed, 0, INIT_PURPOSE)
    params: Params = {name: init_rows(sizes[kind], gen, dim) for name, kind in EMBEDDINGS.items()}
    for name, shape in mlp_shapes(dim).items():
        if name.endswith("bias"):
            params[name] = torch.zeros(shape)
        else:
            limit = math.sqrt(6.0 / sum(shape))
            params[name] = (torch.rand(shape, generator=gen) * 2 - 1) * limit
    return params


def grow_params(params: Params, sizes: dict[str, int], gen: torch.Generator) -> tuple[Params, Params]:
    """Append fresh rows for new ids. Returns (grown params, the appended rows per table)."""
    grown, added = dict(params), {}
    for name, kind in EMBEDDINGS.items():
        if name not in params:  # a model kind without this table (matrix factorisation: no categories)
            continue
        extra = sizes[kind] - params[name].shape[0]
        if extra > 0:
            rows = init_rows(extra, gen, params[name].shape[1]).to(params[name].device)
            added[name] = rows
            grown[name] = torch.cat([params[name], rows])
    return grown, added


def table_sizes(params: Params) -> dict[str, int]:
    """Rows per table; a table the model kind lacks counts as the fallback row only (every id clamps to 0)."""
    return {kind: params[name].shape[0] if name in params else 1 for name, kind in EMBEDDINGS.items()}


@dataclass(frozen=True)
class Batch:
    """Row indices of one batch. Masks are computed before unknown ids are clamped to row 0."""

    user: torch.Tensor  # [B]
    item: torch.Tensor  # [B]
    history: torch.Tensor  # [B, L]
    history_mask: torch.Tensor  # [B, L] bool
    item_cats: torch.Tensor  # [B, C]
    item_cat_mask: torch.Tensor  # [B, C] bool
    history_cats: torch.Tensor  # [B, L, C]
    history_cat_mask: torch.Tensor  # [B, L, C] bool
    label: torch.Tensor  # [B] float

    def __len__(self) -> int:
        return self.user.shape[0]

    def slice(self, start: int, stop: int) -> Batch:
        """Rows start:stop of every field, as views."""
        return Batch(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})

    def to(self, device: torch.device) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _mean_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weights of a mean over the set entries of the last dim (all zero when none is set)."""
    weights = mask.to(dtype)
    return weights / weights.sum(-1, keepdim=True).clamp(min=1.0)


def logits(params: Params, batch: Batch) -> torch.Tensor:
    """MLP([user ; mean over the history of [item ; mean of its categories] ; [item ; mean of its categories]])."""
    if is_mf(params):  # model-kind dispatch: matrix factorisation (below) has the same interface
        return mf_logits(params, batch)
    return _mlp(_features(params, batch), [(params[f"mlp.{i}.weight"], params[f"mlp.{i}.bias"])
                                           for i in range(len(HIDDEN_LAYERS) + 1)])


def _features(tables: Params, batch: Batch) -> torch.Tensor:
    """The MLP's input [B, 5 * dim]. Every look-up is one weighted sum of embedding rows
    (asmg.cpu_kernels.weighted_rows: a C kernel on CPU), the history's nested means folded into one weight
    per (history slot, category)."""
    n, (width, cats) = len(batch), batch.history_cats.shape[1:]
    dtype = tables["cat_emb"].dtype
    one = torch.ones(n, 1, dtype=dtype, device=batch.user.device)
    user = weighted_rows(tables["user_emb"], batch.user.view(n, 1), one)
    target = torch.cat([weighted_rows(tables["item_emb"], batch.item.view(n, 1), one),
                        weighted_rows(tables["cat_emb"], batch.item_cats, _mean_weights(batch.item_cat_mask, dtype))],
                       dim=-1)
    slots = _mean_weights(batch.history_mask, dtype)  # [B, L]
    slot_cats = _mean_weights(batch.history_cat_mask, dtype) * slots.unsqueeze(-1)  # [B, L, C]
    history = torch.cat([weighted_rows(tables["item_emb"], batch.history, slots),
                         weighted_rows(tables["cat_emb"], batch.history_cats.reshape(n, width * cats),
                                       slot_cats.reshape(n, width * cats))], dim=-1)
    return torch.cat([user, history, target], dim=-1)


def _mlp(hidden: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """ReLU between layers. hidden [B, in] with weights [out, in], or [S, B, in] with [S, out, in]: S models."""
    for layer, (weight, bias) in enumerate(layers):
        if weight.dim() == 2:
            hidden = F.linear(hidden, weight, bias)
        else:
            hidden = torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
        if layer < len(layers) - 1:
            hidden = F.relu(hidden)
    return hidden.squeeze(-1)


def loss(params: Params, batch: Batch) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits(params, batch), batch.label)


def weighted_loss(models: list[Params], batches: list[Batch], weights: list[float]) -> torch.Tensor:
    """sum_i weights[i] * loss(models[i], batches[i]), in one pass when the batches are the same size: model
    i's tables stacked into one table each, batch i's ids shifted onto its block, and the MLPs as one batched
    matmul. A generator's training step scores each window step's model this way: a third of the ops. On CPU
    one C kernel per step each way does it all (asmg.cpu_kernels.window_loss)."""
    if cpu_kernels.loss_usable(models, batches):
        return cpu_kernels.window_loss(models, batches, weights)
    if is_mf(models[0]) or len({len(b) for b in batches}) != 1:
        return sum((w * loss(p, b) for p, w, b in zip(models, weights, batches, strict=True)),
                   torch.zeros((), device=batches[0].label.device))
    tables = {name: torch.cat([p[name] for p in models]) for name in TABLE_FIELDS}
    starts = {name: [0, *accumulate(p[name].shape[0] for p in models[:-1])] for name in TABLE_FIELDS}
    shifted = {field: torch.cat([getattr(b, field) + start for b, start in zip(batches, starts[name], strict=True)])
               for name, names in TABLE_FIELDS.items() for field in names}
    joined = Batch(**{f.name: shifted[f.name] if f.name in shifted else torch.cat([getattr(b, f.name) for b in batches])
                      for f in fields(Batch)})
    steps, size = len(models), len(batches[0])
    layers = [(torch.stack([p[f"mlp.{i}.weight"] for p in models]), torch.stack([p[f"mlp.{i}.bias"] for p in models]))
              for i in range(len(HIDDEN_LAYERS) + 1)]
    out = _mlp(_features(tables, joined).view(steps, size, -1), layers)
    per_sample = torch.tensor(weights, dtype=out.dtype, device=out.device).div(size).unsqueeze(1).expand_as(out)
    return F.binary_cross_entropy_with_logits(out, joined.label.view_as(out), weight=per_sample, reduction="sum")


def compact_batch(batch: Batch) -> tuple[dict[str, torch.Tensor], Batch]:
    """The rows each table needs for this batch (row 0 always first) and the batch re-indexed onto them."""

    def rows_and_local(*parts: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        zero = torch.zeros(1, dtype=parts[0].dtype, device=parts[0].device)
        flat = torch.cat([zero, *(p.reshape(-1) for p in parts)])
        rows, inverse = _unique_rows(flat)
        out, start = [], 1
        for p in parts:
            out.append(inverse[start:start + p.numel()].reshape(p.shape))
            start += p.numel()
        return rows, out

    rows, changes = {}, {}
    for name, names in TABLE_FIELDS.items():
        rows[name], parts = rows_and_local(*(getattr(batch, f) for f in names))
        changes.update(zip(names, parts, strict=True))
    return rows, replace(batch, **changes)


def _unique_rows(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(flat, sorted=True, return_inverse=True) for small non-negative ids, by marking a table
    instead of sorting: O(ids + table) and ~10x faster on CPU for a meta step's ~100k history ids."""
    used = torch.zeros(int(flat.max()) + 1, dtype=torch.bool, device=flat.device)
    used[flat] = True
    rows = used.nonzero().squeeze(1)
    position = torch.cumsum(used, 0) - 1
    return rows, position[flat]


def serving_copy(params: Params) -> Params:
    """Detached copy whose fallback row 0 of users and items is the mean of the known rows."""
    out = {name: t.detach().clone() for name, t in params.items()}
    for name in ("user_emb", "item_emb"):
        if out[name].shape[0] > 1:
            out[name][0] = out[name][1:].mean(0)
    return out


# --- matrix factorisation (SML-MF's base): score = <p_u, q_i> + b_u + b_i + b -----------------------------------
#
# Stored in the same name -> tensor layout as the Embedding & MLP so everything generic works on it unchanged
# (growing tables, row 0 fallback, row-gathered batches, train_base/predict through the model-kind dispatch in
# :func:`logits`): ``user_emb`` [U, d+1] and ``item_emb`` [I, d+1] keep each row's bias in their last column,
# ``mf.bias`` [1] is the global bias and marks the kind. There is no category table: categories and histories
# are ignored.

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
