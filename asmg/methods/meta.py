"""ASMG: a meta generator turns the last k incrementally updated models into the served model.

Per period t (D_t just arrived; the window holds theta_{t-k}..theta_{t-1} and the hidden state the
generator had just before theta_{t-k}):
1. train the generator: the output at window step i is trained on the period that followed model i
   (``multi``: every step, weights i / sum(1..k); ``unif``: equal weights; ``single``: last step only);
2. IU: theta_t = train(theta_{t-1}, D_t);
3. one full pass over [theta_{t-k}, .., theta_t] from the saved hidden state: the hidden state after
   the first step is kept for the next period (truncation with memory), the last output is served.
``zero`` starts every window from a zero state; ``full`` never truncates (whole sequence, zero start).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch

from asmg import cpu_kernels
from asmg.batches import BatchMaker, PeriodTensors
from asmg.config import RunConfig, seeded
from asmg.generator import GruGenerator, LinearGenerator, as_rows, from_rows
from asmg.methods.base import State, UpdateMethod, pack, pack_periods, unpack, unpack_periods
from asmg.model import (
    EMBEDDINGS,
    TABLE_FIELDS,
    Batch,
    Params,
    compact_batch,
    serving_copy,
    table_sizes,
    weighted_loss,
)
from asmg.train import adam, train_base

Variant = Literal["multi", "single", "unif", "zero", "full", "linear"]
GENERATOR_INIT_PURPOSE = 23
META_SHUFFLE_PURPOSE = 29


class AsmgMethod(UpdateMethod):
    # meta steps skip the GRU steps after a row's last used one (row_gather, no shrinkage); False: every
    # gathered row runs the whole window, the reference the trimmed path is tested against
    trim_rows: bool = True

    def __init__(self, cfg: RunConfig, device: torch.device, variant: Variant) -> None:
        super().__init__(cfg, device)
        self.variant = variant
        self.name = "asmg-linear" if variant == "linear" else f"asmg-gru-{variant}"
        self.models: list[Params] = []  # the window; models[j] is followed by periods[j]
        self.periods: list[PeriodTensors] = []
        self.hidden: dict[str, torch.Tensor] = {}
        self.generated: Params = {}
        self.generator: GruGenerator | LinearGenerator | None = None
        self.meta_steps = 0
        self.seconds: dict[str, float] = {}  # phases of the last update (meta_training, base_update, generation)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, pretrained: Params) -> None:
        super().start(pretrained)
        meta = self.cfg.meta
        gen = seeded(self.cfg.seed, 0, GENERATOR_INIT_PURPOSE)
        if self.variant == "linear":
            self.generator = LinearGenerator(meta.k).to(self.device)
        else:
            shapes = {n: tuple(t.shape) for n, t in self.base.items()}
            self.generator = GruGenerator(shapes, meta.hidden, meta.output == "residual", gen,
                                          meta.anchor).to(self.device)
        self.models = [self.base]
        self.periods = []
        self.hidden = self.generator.zero_state(self.base)
        self.generated = self.base

    def grow(self, sizes: dict[str, int], gen: torch.Generator) -> Params:
        """New rows: every stored model gets the same initial values; their hidden state starts at zero."""
        added = super().grow(sizes, gen)
        if not added:
            return added
        older = [{**m, **{n: torch.cat([m[n], rows]) for n, rows in added.items()}} for m in self.models[:-1]]
        self.models = [*older, self.base]
        for name, rows in added.items():
            if name in self.hidden:
                h = self.hidden[name]
                self.hidden[name] = torch.cat([h, h.new_zeros(rows.shape[0], *h.shape[1:])])
        return added

    def update(self, data: PeriodTensors, item_cats: np.ndarray) -> None:
        data = data.to(self.device)
        self.periods.append(data)
        clock = time.perf_counter()
        self.train_generator(item_cats)
        self.seconds = {"meta_training": time.perf_counter() - clock}  # PeriodResult.seconds gets these
        clock = time.perf_counter()
        self.base = train_base(self.base, data, item_cats, self.cfg.train, self.cfg.seed, device=self.device)
        self.seconds["base_update"] = time.perf_counter() - clock
        clock = time.perf_counter()
        self.models.append(self.base)
        self.generated = self.generate()
        self.seconds["generation"] = time.perf_counter() - clock

    def serving(self) -> Params:
        return serving_copy(self.generated)

    # -- the generator -------------------------------------------------------------------------------
    def step_weights(self, steps: int) -> list[float]:
        if self.variant in ("single", "linear"):
            return [0.0] * (steps - 1) + [1.0]
        if self.variant == "unif":
            return [1.0 / steps] * steps
        total = steps * (steps + 1) / 2
        return [(i + 1) / total for i in range(steps)]

    def scales(self) -> dict[str, float] | None:
        """Per-parameter RMS of the newest model in the window (whole tensors, so every path agrees)."""
        if not self.cfg.meta.normalize:
            return None
        newest = self.models[-1]
        return {n: float(newest[n].pow(2).mean().sqrt().clamp(min=1e-8)) for n in self.base}

    def initial_state(self) -> dict[str, torch.Tensor]:
        if self.variant in ("zero", "full"):
            return self.generator.zero_state(self.base)
        return self.hidden

    def train_generator(self, item_cats: np.ndarray) -> None:
        """Adam on the generator; each step sees one batch of every period its window step is trained on."""
        meta, steps = self.cfg.meta, len(self.models)
        weights = self.step_weights(steps)
        active = [i for i, w in enumerate(weights) if w > 0]
        optimiser = adam(self.generator.parameters(), meta.lr)
        maker = BatchMaker(item_cats, table_sizes(self.base), self.device)
        newest = self.periods[-1]
        iterations = math.ceil(len(newest) / meta.batch_size)
        h0 = self.initial_state()
        for epoch in range(meta.epochs):
            orders = {i: torch.randperm(len(self.periods[i]), generator=seeded(
                self.cfg.seed, newest.period, META_SHUFFLE_PURPOSE + 100 * epoch + i)) for i in active}
            for it in range(iterations):
                batches = {i: maker.batch(self.periods[i], _cycle(orders[i], it, meta.batch_size).to(self.device))
                           for i in active}
                optimiser.zero_grad(set_to_none=True)
                self.meta_loss(batches, weights, h0).backward()
                optimiser.step()
                self.meta_steps += 1

    def meta_loss(self, batches: dict[int, Batch], weights: list[float], h0: dict[str, torch.Tensor]
                  ) -> torch.Tensor:
        """sum_i w_i * loss(generated model at step i, batch i), generating only the rows the batches use
        (or every row when ``row_gather`` is off, as the authors' code did).

        Trimmed (``trim_rows``): a row only the older steps' batches use stops at the last of them; the
        shrinkage term averages over every gathered row at every step, so it keeps the whole window."""
        shrink = self.cfg.meta.correction_l2
        keep = None
        if self.cfg.meta.row_gather and self.trim_rows and not shrink and isinstance(self.generator, GruGenerator):
            sizes = {n: self.base[n].shape[0] for n in EMBEDDINGS if n in self.base}
            rows, local, keep = _gather_by_last_use(batches, len(self.models), sizes)
        elif self.cfg.meta.row_gather:
            rows, local = _compact_all(batches)
        else:
            rows, local = None, batches
        tables = {n: [as_rows(n, m[n]) for m in self.models] for n in self.base}
        if isinstance(self.generator, GruGenerator):  # it takes the rows and reads them where they are
            outputs, _ = self.generator.run(tables, h0, self.scales(), keep, rows)
        else:
            outputs, _ = self.generator.run(_picked(tables, rows), {})
        steps = sorted(local)
        models = [{n: from_rows(n, outputs[i][n], self.base[n].shape) for n in self.base} for i in steps]
        total = weighted_loss(models, [local[i] for i in steps], [weights[i] for i in steps])
        if shrink:
            inputs = _picked(tables, rows)
            for i in steps:
                total = total + weights[i] * shrink * sum(
                    (outputs[i][n] - inputs[n][i]).pow(2).mean() / inputs[n][i].pow(2).mean().clamp(min=1e-12)
                    for n in self.base)
        return total

    @torch.no_grad()
    def generate(self) -> Params:
        """Full pass over every row: the served model and, when the window slides, the next hidden state."""
        slide = self.variant != "full" and len(self.models) > self.cfg.meta.k
        if self.variant == "linear":
            self._slide(slide)
            outputs, _ = self.generator.run({n: [as_rows(n, m[n]) for m in self.models] for n in self.base}, {})
        else:
            inputs = {n: [as_rows(n, m[n]) for m in self.models] for n in self.base}
            outputs, first = self.generator.run(inputs, self.initial_state(), self.scales())
            if slide and self.variant != "zero":
                self.hidden = first
            self._slide(slide)
        return {n: from_rows(n, outputs[-1][n], self.base[n].shape).detach() for n in self.base}

    def _slide(self, slide: bool) -> None:
        if slide:
            self.models = self.models[1:]
            self.periods = self.periods[1:]

    # -- checkpoints ----------------------------------------------------------------------------------
    def state(self) -> tuple[State, dict[str, Any]]:
        tensors: State = {**pack("base", self.base), **pack("generated", self.generated),
                          **pack("hidden", self.hidden), **pack_periods("periods", self.periods),
                          **pack("generator", dict(self.generator.state_dict()))}
        for j, m in enumerate(self.models):
            tensors.update(pack(f"models/{j}", m))
        return tensors, {"models": len(self.models), "periods": len(self.periods), "meta_steps": self.meta_steps}

    def load_state(self, tensors: State, meta: dict[str, Any]) -> None:
        base = unpack("base", tensors, self.device)
        self.start(base)
        self.generator.load_state_dict(unpack("generator", tensors, self.device))
        self.generated = unpack("generated", tensors, self.device)
        self.hidden = unpack("hidden", tensors, self.device)
        self.models = [unpack(f"models/{j}", tensors, self.device) for j in range(meta["models"])]
        self.periods = unpack_periods("periods", tensors, meta["periods"], self.device)
        self.meta_steps = meta["meta_steps"]


def _cycle(order: torch.Tensor, iteration: int, size: int) -> torch.Tensor:
    """The iteration-th batch of a shuffled order, wrapping around shorter periods."""
    idx = (torch.arange(size) + iteration * size) % len(order)
    return order[idx[: min(size, len(order))]]


def _picked(tables: dict[str, list[torch.Tensor]], rows: dict[str, torch.Tensor] | None
            ) -> dict[str, list[torch.Tensor]]:
    """The window's tables cut to the rows a step uses (gathered copies)."""
    return {n: [x.index_select(0, rows[n]) for x in xs] if rows is not None and n in rows else xs
            for n, xs in tables.items()}


def _compact_all(batches: dict[int, Batch]) -> tuple[dict[str, torch.Tensor], dict[int, Batch]]:
    """One shared set of rows for all batches, and each batch re-indexed onto it."""
    keys = list(batches)
    fields = Batch.__dataclass_fields__
    joined = Batch(**{f: torch.cat([getattr(batches[i], f) for i in keys]) for f in fields})
    rows, local = compact_batch(joined)
    out, start = {}, 0
    for i in keys:
        n = len(batches[i])
        out[i] = Batch(**{f: getattr(local, f)[start:start + n] for f in fields})
        start += n
    return rows, out


def _gather_by_last_use(batches: dict[int, Batch], steps: int, sizes: dict[str, int]
                        ) -> tuple[dict[str, torch.Tensor], dict[int, Batch], dict[str, list[int]]]:
    """The rows the batches use, per table ordered by the last window step whose batch uses them (latest
    first, then by id), each batch re-indexed onto them, and per step how many leading rows are still used
    at that step or later: the prefix lengths :meth:`GruGenerator.run` trims the window to.

    A row counts as used by every id a batch holds for it, padding included, so the loss at step i reads
    only rows :keep[i] of its step's output."""
    order = sorted(batches)
    rows: dict[str, torch.Tensor] = {}
    keep: dict[str, list[int]] = {}
    changes: dict[int, dict[str, torch.Tensor]] = {i: {} for i in order}
    device = batches[order[0]].user.device
    for name, names in TABLE_FIELDS.items():
        if name not in sizes:  # a table the model kind lacks: its ids stay as they are
            continue
        pairs = [(i, field) for i in order for field in names]
        parts = [getattr(batches[i], field) for i, field in pairs]
        if cpu_kernels.last_use_usable(parts[0]):  # the same in one C pass (3.5 -> 1.7 ms a step)
            per_step = [0] * steps
            for (i, _), part in zip(pairs, parts, strict=True):
                per_step[i] += part.numel()
            ids = torch.cat([part.reshape(-1) for part in parts])
            rows[name], flat, keep[name] = cpu_kernels.last_use(ids, per_step, sizes[name])
            for (i, field), part, local in zip(pairs, parts, flat.split([p.numel() for p in parts]), strict=True):
                changes[i][field] = local.view(part.shape)
            continue
        last = torch.full((sizes[name],), -1, dtype=torch.long, device=device)
        for i in order:  # later steps overwrite: each row ends with its last
            for field in names:
                last[getattr(batches[i], field).reshape(-1)] = i
        by_step = {i: (last == i).nonzero().squeeze(1) for i in reversed(order)}
        rows[name] = torch.cat(list(by_step.values()))
        position = torch.empty_like(last)
        position[rows[name]] = torch.arange(len(rows[name]), device=device)
        keep[name] = [sum(len(picked) for i, picked in by_step.items() if i >= s) for s in range(steps)]
        for i in order:
            changes[i].update({field: position[getattr(batches[i], field)] for field in names})
    return rows, {i: replace(batches[i], **changes[i]) for i in order}, keep


__all__ = ["EMBEDDINGS", "AsmgMethod"]
