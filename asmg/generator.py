"""Meta generators: map the sequence of recent base models to the model served next.

Every scalar coordinate of the base model is a time series. A parameter is viewed as a matrix
[rows, coords]: an embedding table [N, d] has N rows that share the GRU weights of their dimension d;
an MLP tensor is one row whose every coordinate has its own GRU weights. Generators only ever see the
rows handed to them, so training can work on the rows a batch touches.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from asmg import cpu_kernels
from asmg.model import EMBEDDINGS, Params, param_order

GATES = 3  # update z, reset r, candidate g
DENSE = "dense"  # the group of all MLP coordinates


def as_rows(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """[rows, coords] view of a parameter."""
    return tensor if name in EMBEDDINGS else tensor.reshape(1, -1)


def from_rows(name: str, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return rows if name in EMBEDDINGS else rows.reshape(shape)


def coords_of(name: str, shape: tuple[int, ...]) -> int:
    return shape[1] if name in EMBEDDINGS else math.prod(shape)


class CoordinateGRU(nn.Module):
    """z = s(x u_z + h W_z), r = s(x u_r + h W_r), g = tanh(x u_g + (r h) W_g), h' = (1-z) h + z g,
    y = h' w_hy + b_y (+ x when residual). Weights per coordinate: u [c, H], W [c, H, H], w_hy [c, H]."""

    def __init__(self, coords: int, hidden: int, residual: bool, gen: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(hidden)

        def uniform(*shape: int) -> nn.Parameter:
            return nn.Parameter((torch.rand(*shape, generator=gen) * 2 - 1) * bound)

        self.hidden = hidden
        self.residual = residual
        self.u = uniform(GATES, coords, hidden)
        self.w = uniform(GATES, coords, hidden, hidden)
        self.w_hy = nn.Parameter(torch.zeros(coords, hidden)) if residual else uniform(coords, hidden)
        self.b_y = nn.Parameter(torch.zeros(coords))

    def step(self, x: torch.Tensor, h: torch.Tensor, anchor: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [R, c], h [R, c, H] -> (y [R, c], h' [R, c, H]); a residual output adds ``anchor`` (default x)."""
        y, h_next = self.step_by_coordinate(x.t(), h.permute(1, 0, 2).contiguous(), self.fused_weights(),
                                            None if anchor is None else anchor.t())
        return y.t(), h_next.permute(1, 0, 2)

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """u as [c, 3H] (z, r, g blocks) and W_z|W_r as [c, H, 2H]: the gates that read h share one matmul."""
        coords, hidden = self.u.shape[1], self.hidden
        return self.u.permute(1, 0, 2).reshape(coords, 3 * hidden), torch.cat([self.w[0], self.w[1]], dim=-1)

    def step_by_coordinate(self, xt: torch.Tensor, h: torch.Tensor, fused: tuple[torch.Tensor, torch.Tensor],
                           anchor_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The same step on coordinate-major tensors (xt [c, R], h [c, R, H]): every per-coordinate matmul is
        one batched matmul with no layout copies, and the adds ride on it (baddbmm); ~1.5x faster on CPU."""
        u_cat, w_zr = fused
        hidden = self.hidden
        xu = xt.unsqueeze(-1) * u_cat.unsqueeze(1)  # [c, R, 3H]
        zr = torch.sigmoid(torch.baddbmm(xu[..., :2 * hidden], h, w_zr))
        z, r = zr[..., :hidden], zr[..., hidden:]
        g = torch.tanh(torch.baddbmm(xu[..., 2 * hidden:], r * h, self.w[2]))
        h_next = torch.lerp(h, g, z)  # (1 - z) h + z g
        y = torch.baddbmm(self.b_y.view(-1, 1, 1), h_next, self.w_hy.unsqueeze(-1)).squeeze(-1)
        if not self.residual:
            return y, h_next
        return y + (xt if anchor_t is None else anchor_t), h_next


class GruGenerator(nn.Module):
    """One CoordinateGRU per embedding table, and one over all MLP coordinates together.

    MLP coordinates each have their own GRU weights anyway, so running them as one flat vector is the
    same computation as one GRU per tensor, in a third of the kernel launches.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], hidden: int, residual: bool,
                 gen: torch.Generator, anchor: str = "last") -> None:
        """``anchor`` (residual output only): what the correction is added to at step i, the newest input
        ("last") or the mean of the window's inputs so far ("mean": an untrained generator then serves the
        average of the window, a smoothing start instead of IU)."""
        super().__init__()
        self.hidden = hidden
        self.anchor = anchor
        self.names = sorted(shapes, key=param_order)
        self.dense = [n for n in self.names if n not in EMBEDDINGS]
        self.dense_sizes = [math.prod(shapes[n]) for n in self.dense]
        cells = {_key(n): CoordinateGRU(coords_of(n, s), hidden, residual, gen)
                 for n, s in shapes.items() if n in EMBEDDINGS}
        if self.dense:
            cells[DENSE] = CoordinateGRU(sum(self.dense_sizes), hidden, residual, gen)
        self.cells = nn.ModuleDict(cells)

    def zero_state(self, params: Params) -> dict[str, torch.Tensor]:
        state = {n: params[n].new_zeros(*params[n].shape, self.hidden) for n in self.names if n in EMBEDDINGS}
        if self.dense:
            state[DENSE] = params[self.dense[0]].new_zeros(1, sum(self.dense_sizes), self.hidden)
        return state

    def run(self, inputs: dict[str, list[torch.Tensor]], h0: dict[str, torch.Tensor],
            scales: dict[str, float] | None = None, keep: dict[str, list[int]] | None = None,
            rows: dict[str, torch.Tensor] | None = None
            ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """inputs[name] = one [R, c] tensor per step. Returns every step's outputs and h after step one.

        With ``scales``, a parameter is divided by its scale on the way in and multiplied on the way out,
        so one GRU sees embeddings (~0.05) and MLP weights (~0.3) in the same range.

        ``rows[name]`` (embedding tables only): inputs[name] and h0[name] are whole tables, and only these
        rows (in this order) are run, as if they had been gathered first; the CPU kernel reads them in place.

        ``keep[name]`` (embedding tables only; non-increasing, one per step): only rows :keep[name][i] take
        step i, so step i's output for that table has keep[name][i] rows, and no state after step one comes
        back for it. A meta step reads only the rows its batches use, ordered so those a later step still
        needs come first; the others skip the GRU steps whose outputs nobody reads.
        """
        keep, scales, rows = keep or {}, scales or {}, rows or {}
        steps = len(next(iter(inputs.values())))
        groups = {n: xs for n, xs in inputs.items() if n in EMBEDDINGS}
        if self.dense:
            groups[DENSE] = [torch.cat([self._scaled(n, inputs[n][i], scales) for n in self.dense], dim=1)
                             for i in range(steps)]
        outputs: list[dict[str, torch.Tensor]] = [{} for _ in range(steps)]
        first: dict[str, torch.Tensor] = {}
        for group, xs in groups.items():
            cell, pick, h = self.cells[_key(group)], rows.get(group), h0[group]
            fused = cpu_kernels.gru_usable(xs, h, self.hidden)
            if pick is not None and (not fused or group in scales):  # gathered copies where the kernel cannot
                xs, h, pick = [x.index_select(0, pick) for x in xs], h.index_select(0, pick), None
            if group in scales:
                xs = [self._scaled(group, x, scales) for x in xs]
            count = len(pick) if pick is not None else xs[0].shape[0]
            kept = keep.get(group)
            if kept is not None and (len(kept) != steps or any(
                    b > a for a, b in zip([count, *kept], kept, strict=False))):
                raise ValueError(f"keep[{group!r}] must give each step a prefix no longer than the last: {kept}")
            if fused:
                ys, h_first = cpu_kernels.FusedWindow.apply(
                    xs, pick, h, cell.u, cell.w, cell.w_hy, cell.b_y, cell.residual, self.anchor == "mean",
                    cpu_kernels.keep_tensor(kept))
                for i, y in enumerate(ys.unbind(0)):
                    self._collect(outputs[i], group, y if kept is None else y[:kept[i]])
                if kept is None:
                    first[group] = h_first
                continue
            fused_weights = cell.fused_weights()
            h = h.permute(1, 0, 2).contiguous()  # coordinate-major for the whole window
            total = None
            for i, x in enumerate(xs):
                if kept is not None:  # the dropped rows are the tail: a slice of the state and the inputs
                    x, h = x[:kept[i]], h[:, :kept[i]]
                    total = None if total is None else total[:, :kept[i]]
                xt = x.t()
                anchor = None
                if self.anchor == "mean":
                    total = xt if total is None else total + xt
                    anchor = total / (i + 1)
                y, h = cell.step_by_coordinate(xt, h, fused_weights, anchor)
                self._collect(outputs[i], group, y.t())
                if i == 0 and kept is None:
                    first[group] = h.permute(1, 0, 2).contiguous()
        if scales:
            outputs = [{n: y * scales.get(n, 1.0) for n, y in out.items()} for out in outputs]
        return outputs, first

    @staticmethod
    def _scaled(name: str, x: torch.Tensor, scales: dict[str, float]) -> torch.Tensor:
        return x / scales[name] if name in scales else x

    def _collect(self, out: dict[str, torch.Tensor], group: str, y: torch.Tensor) -> None:
        """A group's [R, c] output into the step's name -> rows dict (the dense group splits per tensor)."""
        if group == DENSE:
            out.update(zip(self.dense, torch.split(y, self.dense_sizes, dim=1), strict=True))
        else:
            out[group] = y


class LinearGenerator(nn.Module):
    """ASMG-Linear: theta* = sum_i alpha_i theta_i over the window (alphas start uniform)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((k,), 1.0 / k))

    def zero_state(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def run(self, inputs: dict[str, list[torch.Tensor]], h0: dict[str, torch.Tensor],
            scales: dict[str, float] | None = None) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        steps = len(next(iter(inputs.values())))
        alpha = self.alpha[-steps:]
        last = {name: sum(a * x for a, x in zip(alpha, xs, strict=True)) for name, xs in inputs.items()}
        return [{} for _ in range(steps - 1)] + [last], {}


def _key(name: str) -> str:
    return name.replace(".", "__")
