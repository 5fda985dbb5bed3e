"""CPU kernels in C (cpu_kernels.c), built on first use with the system's C compiler and called through
ctypes: the coordinate GRU's window (the meta generator), the weighted sums of embedding rows (every
look-up of the base model), a meta step's row ordering (:func:`last_use`) and the loss of every window
step's generated model (:func:`window_loss`). torch's ops remain the path on
CUDA, without a compiler, or with ASMG_CPU_KERNELS=0.

The GRU and look-up kernels replace many small whole-tensor torch ops whose per-element overhead dominated
a training step on CPU: a meta step's GRU was ~20 ops per window step over [rows, coords, hidden]; an IU step's
history look-up and its scatter-add backward ran per element through strided iterators. No torch headers are
needed, so the build takes about a second and is cached per source, compiler and CPU.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from asmg import native

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared")
MAX_HIDDEN, MAX_STEPS = 16, 32  # as in cpu_kernels.c
_float_p = ctypes.POINTER(ctypes.c_float)
_long_p = ctypes.POINTER(ctypes.c_long)
_int_p = ctypes.POINTER(ctypes.c_int)
_byte_p = ctypes.POINTER(ctypes.c_ubyte)
LOSS_TABLES = ("user_emb", "item_emb", "cat_emb")  # the order of the kernel's tables
MAX_LAYERS, MAX_WIDTH, CHUNKS = 4, 128, 32  # as in cpu_kernels.c


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no compiler, build failed, or ASMG_CPU_KERNELS=0): callers fall back."""
    lib = native.load(SOURCE, FLAGS, "kernels", "ASMG_CPU_KERNELS", "training runs on torch ops only (slower on CPU)")
    if lib is None:
        return None
    for name in ("asmg_gru_forward", "asmg_gru_backward", "asmg_rows_forward", "asmg_rows_backward",
                 "asmg_loss_forward", "asmg_loss_backward"):
        getattr(lib, name).restype = ctypes.c_int
    lib.asmg_last_use.restype = ctypes.c_long
    return lib


def gru_usable(xs: list[torch.Tensor], h0: torch.Tensor, hidden: int) -> bool:
    """The kernel serves float32 CPU windows whose inputs and start state need no gradient."""
    return (all(x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad for x in (*xs, h0))
            and hidden <= MAX_HIDDEN and len(xs) <= MAX_STEPS and library() is not None)


def _ptr(t: torch.Tensor, pointer: type = _float_p) -> ctypes._Pointer:
    return ctypes.cast(t.data_ptr(), pointer)


def _keep_ptr(keep: torch.Tensor | None) -> ctypes._Pointer | None:
    return None if keep is None else _ptr(keep, _int_p)


def keep_tensor(keep: list[int] | None) -> torch.Tensor | None:
    """Per-step prefix lengths as the kernel reads them (int32 on CPU)."""
    return None if keep is None else torch.tensor(keep, dtype=torch.int32)


class FusedWindow(torch.autograd.Function):
    """y [S, R, C] and the hidden state after step one [R, C, H] from the window's tables xs (S tensors [N_s, C])
    and h0 [N, C, H], for the rows ``rows`` (int64 [R], each below every N_s; None: rows 0..N-1) in that
    order; gradients flow to the weights only. The rows are read in place: no gathered copies.

    With ``keep`` (int32 [S], non-increasing), only rows :keep[s] take step s: y[s, keep[s]:] is left
    unwritten and its gradient ignored (callers read only y[s, :keep[s]]), and the state after step one is
    not computed (``first`` comes back empty)."""

    @staticmethod
    def forward(ctx, xs, rows, h0, u, w, w_hy, b_y, residual: bool, anchor_mean: bool,  # noqa: ANN001, ANN205
                keep: torch.Tensor | None = None):
        xs = [x.contiguous() for x in xs]
        steps, coords = len(xs), xs[0].shape[1]
        hidden = u.shape[-1]
        h0 = h0.contiguous()
        if rows is not None:
            rows, limit = rows.to(torch.int64).contiguous(), min(x.shape[0] for x in (*xs, h0))
            if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= limit):
                raise IndexError(f"rows out of range 0..{limit - 1}")
        count = len(rows) if rows is not None else xs[0].shape[0]
        if any(x.shape[1:] != (coords,) for x in xs) or h0.shape[1:] != (coords, hidden) or (
                rows is None and any(x.shape[0] != count for x in (*xs, h0))):
            raise ValueError(f"window tables {[tuple(x.shape) for x in xs]} and state {tuple(h0.shape)} do not fit")
        u, w, w_hy, b_y = (t.detach().contiguous() for t in (u, w, w_hy, b_y))
        if keep is not None:
            keep = keep.to(torch.int32).contiguous()
            if keep.shape != (steps,):
                raise ValueError(f"keep needs one prefix length per step, got {tuple(keep.shape)}")
        y = xs[0].new_empty(steps, count, coords)
        first = y.new_empty(0 if keep is not None else count, coords, hidden)
        code = library().asmg_gru_forward(
            steps, count, coords, hidden, _table_ptrs(xs), _rows_ptr(rows), _ptr(h0), _ptr(u), _ptr(w),
            _ptr(w_hy), _ptr(b_y), int(residual), int(anchor_mean), _keep_ptr(keep), _ptr(y),
            None if keep is not None else _ptr(first), torch.get_num_threads())
        if code:
            raise RuntimeError(f"fused GRU kernel refused its arguments (code {code})")
        ctx.xs = xs  # constants of the step (no gradient), so kept as they are rather than saved
        ctx.save_for_backward(rows, h0, u, w, w_hy, keep)
        ctx.mark_non_differentiable(first)
        return y, first

    @staticmethod
    def backward(ctx, dy, _dfirst):  # noqa: ANN001, ANN205
        rows, h0, u, w, w_hy, keep = ctx.saved_tensors
        steps, count, coords = dy.shape
        hidden = u.shape[-1]
        dy = dy.contiguous()
        du, dw, dwhy = torch.empty_like(u), torch.empty_like(w), torch.empty_like(w_hy)
        dby = u.new_empty(coords)
        code = library().asmg_gru_backward(
            steps, count, coords, hidden, _table_ptrs(ctx.xs), _rows_ptr(rows), _ptr(h0), _ptr(u), _ptr(w),
            _ptr(w_hy), _keep_ptr(keep), _ptr(dy), _ptr(du), _ptr(dw), _ptr(dwhy), _ptr(dby), torch.get_num_threads())
        if code:
            raise RuntimeError(f"fused GRU kernel refused its arguments (code {code})")
        return None, None, None, du, dw, dwhy, dby, None, None, None


def _table_ptrs(tables: list[torch.Tensor]) -> ctypes.Array:
    return (_float_p * len(tables))(*(_ptr(t) for t in tables))


def _rows_ptr(rows: torch.Tensor | None) -> ctypes._Pointer | None:
    return None if rows is None else _ptr(rows, _long_p)


def rows_usable(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> bool:
    return (table.device.type == "cpu" and table.dtype == weight.dtype == torch.float32
            and index.dtype == torch.int64 and not weight.requires_grad and library() is not None)


def weighted_rows(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_l weight[b, l] * table[index[b, l]] -> [B, D] (index, weight [B, L]); gradients to ``table``."""
    if rows_usable(table, index, weight):
        return WeightedRows.apply(table, index, weight)
    picked = table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[-1])
    return (picked * weight.unsqueeze(-1)).sum(1)


class WeightedRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, index, weight):  # noqa: ANN001, ANN205
        table, index, weight = table.detach().contiguous(), index.contiguous(), weight.contiguous()
        (batch, width), dim = index.shape, table.shape[1]
        out = table.new_empty(batch, dim)
        code = library().asmg_rows_forward(
            ctypes.c_long(batch), width, dim, _ptr(table), ctypes.c_long(table.shape[0]),
            _ptr(index, _long_p), _ptr(weight), _ptr(out), torch.get_num_threads())
        if code:
            raise IndexError(f"embedding row out of range 0..{table.shape[0] - 1}")
        ctx.save_for_backward(index, weight)
        ctx.rows = table.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        index, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        (batch, width), dim = index.shape, grad_out.shape[1]
        grad = grad_out.new_zeros(ctx.rows, dim)
        code = library().asmg_rows_backward(
            ctypes.c_long(batch), width, dim, _ptr(grad_out), ctypes.c_long(ctx.rows),
            _ptr(index, _long_p), _ptr(weight), _ptr(grad), torch.get_num_threads())
        if code:
            raise IndexError(f"embedding row out of range 0..{ctx.rows - 1}")
        return grad, None, None


def last_use_usable(ids: torch.Tensor) -> bool:
    return ids.device.type == "cpu" and ids.dtype == torch.int64 and library() is not None


def last_use(ids: torch.Tensor, per_step: list[int], size: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The rows of a ``size``-row table that ``ids`` use (ids[:per_step[0]] by window step 0, the next
    per_step[1] by step 1, ...), latest last use first, then by id; each id's position in them; and per step
    the prefix of rows used at that step or later. See asmg_last_use in cpu_kernels.c."""
    ids = ids.contiguous()
    if len(ids) != sum(per_step):
        raise ValueError(f"{len(ids)} ids, but the steps' counts add up to {sum(per_step)}")
    seg = torch.tensor(per_step, dtype=torch.int64)
    scratch = torch.empty(2 * size, dtype=torch.int32)
    rows, local, keep = torch.empty(size, dtype=torch.int64), torch.empty_like(ids), torch.empty_like(seg)
    used = library().asmg_last_use(ctypes.c_long(size), len(per_step), _ptr(seg, _long_p), _ptr(ids, _long_p),
                                   _ptr(scratch, _int_p), _ptr(rows, _long_p), _ptr(local, _long_p),
                                   _ptr(keep, _long_p))
    if used == -1:
        raise IndexError(f"embedding row out of range 0..{size - 1}")
    if used < 0:
        raise ValueError(f"last_use refused a table of {size} rows over {len(per_step)} steps")
    return rows[:used], local, keep.tolist()


class _LossBatch(ctypes.Structure):
    """cpu_kernels.c's LossBatch: one batch's ids and masks and one model's tables."""

    _fields_ = [("B", ctypes.c_long), ("D", ctypes.c_int), ("L", ctypes.c_int), ("C", ctypes.c_int),
                ("layers", ctypes.c_int), ("sizes", _int_p), ("tables", _float_p * 3), ("n", ctypes.c_long * 3),
                ("user", _long_p), ("item", _long_p), ("item_cats", _long_p), ("history", _long_p),
                ("history_cats", _long_p), ("item_cat_mask", _byte_p), ("history_mask", _byte_p),
                ("history_cat_mask", _byte_p)]


def _layers(model: dict[str, torch.Tensor]) -> int:
    layers = 0
    while f"mlp.{layers}.weight" in model:
        layers += 1
    return layers


def loss_usable(models: list[dict[str, torch.Tensor]], batches: list) -> bool:
    """The kernel serves float32 CPU Embedding & MLP models of up to MAX_LAYERS layers MAX_WIDTH wide."""
    if not models or library() is None:
        return False
    layers = _layers(models[0])
    for model in models:
        if any(n not in model for n in LOSS_TABLES) or not 0 < _layers(model) == layers <= MAX_LAYERS:
            return False
        tensors = [model[n] for n in LOSS_TABLES] + [model[f"mlp.{i}.{k}"] for i in range(layers)
                                                     for k in ("weight", "bias")]
        if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
            return False
        dim = model["user_emb"].shape[1]
        sizes = [model[f"mlp.{i}.weight"].shape[1] for i in range(layers)]
        sizes.append(model[f"mlp.{layers - 1}.weight"].shape[0])
        if any(model[n].dim() != 2 or model[n].shape[1] != dim for n in LOSS_TABLES) or sizes[0] != 5 * dim or \
                sizes[-1] != 1 or max(sizes) > MAX_WIDTH:
            return False
    return all(b.user.device.type == "cpu" and b.user.dtype == torch.int64 and b.label.dtype == torch.float32
               for b in batches)


def window_loss(models: list[dict[str, torch.Tensor]], batches: list, weights: list[float]) -> torch.Tensor:
    """sum_s weights[s] * mean logistic loss of models[s] on batches[s] (model.py's loss), in one C kernel per
    window step each way; gradients to every model's three tables and MLP. See :func:`loss_usable`."""
    layers = _layers(models[0])
    names = [*LOSS_TABLES, *(f"mlp.{i}.{k}" for i in range(layers) for k in ("weight", "bias"))]
    params = [model[n] for model in models for n in names]
    return WindowLoss.apply(batches, weights, layers, *params)


ID_FIELDS = ("user", "item", "item_cats", "history", "history_cats")  # int64 ids, as LossBatch names them
MASK_FIELDS = ("item_cat_mask", "history_mask", "history_cat_mask")  # bool, read as bytes


@dataclass
class _LossStep:
    """One window step's kernel inputs (kept alive while C holds pointers to them) and forward outputs."""

    spec: _LossBatch
    inputs: list[torch.Tensor]
    mlp: list[torch.Tensor]  # weight, bias of each layer
    label: torch.Tensor
    scale: float  # the step's weight over its batch size, rounded to float32 as torch's loss weight is
    act: torch.Tensor
    wts: torch.Tensor


class WindowLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, batches, weights, layers: int, *params):  # noqa: ANN001, ANN205
        per = 3 + 2 * layers
        steps, total = [], 0.0
        for s, (batch, weight) in enumerate(zip(batches, weights, strict=True)):
            own = [t.detach().contiguous() for t in params[s * per:(s + 1) * per]]
            tables, mlp = own[:3], own[3:]
            sizes = torch.tensor([mlp[0].shape[1], *(w.shape[0] for w in mlp[0::2])], dtype=torch.int32)
            ids = {f: getattr(batch, f).contiguous() for f in ID_FIELDS}
            masks = {f: getattr(batch, f).contiguous().view(torch.uint8) for f in MASK_FIELDS}
            label = batch.label.contiguous()
            spec = _loss_batch(sizes, tables, ids, masks, label, layers)
            size = len(batch)
            step = _LossStep(spec, [sizes, *tables, *ids.values(), *masks.values()], mlp, label,
                             float(torch.tensor(weight, dtype=torch.float32).div(max(size, 1))),
                             tables[0].new_empty(size, int(sizes.sum())),
                             tables[0].new_empty(size, 2 + spec.L + spec.L * spec.C + spec.C))
            loss = ctypes.c_double()
            code = library().asmg_loss_forward(
                ctypes.byref(spec), _table_ptrs(mlp[0::2]), _table_ptrs(mlp[1::2]), _ptr(label),
                ctypes.c_float(step.scale), _ptr(step.act), _ptr(step.wts), ctypes.byref(loss),
                torch.get_num_threads())
            if code:
                raise _loss_error(code, spec)
            total += loss.value
            steps.append(step)
        ctx.steps = steps  # constants of the step (no gradient), so kept as they are rather than saved
        return params[0].new_tensor(total)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        g = float(grad)
        out: list[torch.Tensor] = []
        for step in ctx.steps:
            spec, mlp = step.spec, step.mlp
            dtables = [torch.zeros(spec.n[t], spec.D) for t in range(3)]
            dmlp = [torch.empty_like(t) for t in mlp]
            scratch = torch.empty(min(max(spec.B, 1), CHUNKS) * sum(t.numel() for t in mlp))
            dfeat = torch.empty(spec.B, 5 * spec.D)
            code = library().asmg_loss_backward(
                ctypes.byref(spec), _table_ptrs(mlp[0::2]), _ptr(step.label), ctypes.c_float(g * step.scale),
                _ptr(step.act), _ptr(step.wts), _table_ptrs(dtables), _table_ptrs(dmlp[0::2]),
                _table_ptrs(dmlp[1::2]), _ptr(scratch), _ptr(dfeat), torch.get_num_threads())
            if code:
                raise _loss_error(code, spec)
            out += [*dtables, *dmlp]
        return None, None, None, *out


def _loss_batch(sizes: torch.Tensor, tables: list[torch.Tensor], ids: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor], label: torch.Tensor, layers: int) -> _LossBatch:
    """The kernel's view of one step; a batch whose fields do not fit each other is refused here, not read."""
    batch, width = ids["history"].shape
    cats = ids["item_cats"].shape[1] if ids["item_cats"].dim() == 2 else -1
    shapes = {"user": (batch,), "item": (batch,), "item_cats": (batch, cats), "history": (batch, width),
              "history_cats": (batch, width, cats), "item_cat_mask": (batch, cats),
              "history_mask": (batch, width), "history_cat_mask": (batch, width, cats)}
    fields = {**ids, **masks}
    if tuple(label.shape) != (batch,) or any(tuple(fields[f].shape) != shape for f, shape in shapes.items()):
        raise ValueError(f"a batch of {batch} x {width} history slots whose fields do not fit")
    spec = _LossBatch(batch, tables[0].shape[1], width, cats, layers, _ptr(sizes, _int_p))
    for t, table in enumerate(tables):
        spec.tables[t], spec.n[t] = _ptr(table), table.shape[0]
    for name, tensor in ids.items():
        setattr(spec, name, _ptr(tensor, _long_p))
    for name, tensor in masks.items():
        setattr(spec, name, _ptr(tensor, _byte_p))
    return spec


def _loss_error(code: int, spec: _LossBatch) -> Exception:
    if code == 3:
        return IndexError(f"an embedding row out of range (tables of {list(spec.n)} rows)")
    return RuntimeError(f"loss kernel refused its arguments (code {code})")
