"""The C kernels (asmg/cpu_kernels.c: the coordinate GRU, the look-ups, the window loss) against torch's ops, which
they replace on CPU."""

from __future__ import annotations

import os
import stat
from dataclasses import replace

import pytest
import torch

from asmg import cpu_kernels, native
from asmg.batches import BatchMaker, encode_period
from asmg.generator import GruGenerator
from asmg.model import init_params, loss, weighted_loss
from asmg.vocab import Vocabularies
from tests.helpers import tiny_samples

SHAPES = {"user_emb": (37, 8), "item_emb": (53, 8), "mlp.0.weight": (20, 40), "mlp.0.bias": (20,),
          "mlp.1.weight": (1, 20), "mlp.1.bias": (1,)}  # dense group: 861 coordinates, not a multiple of 8


@pytest.fixture(autouse=True)
def _built():
    assert cpu_kernels.library() is not None, "this machine has a C compiler: the kernel must build"


def _window(hidden: int, residual: bool, anchor: str, steps: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    generator = GruGenerator(SHAPES, hidden, residual, gen, anchor)
    with torch.no_grad():  # a trained-looking generator: output layer and biases away from their zero start
        for p in generator.parameters():
            p.uniform_(-0.6, 0.6, generator=gen)
    params = {n: torch.randn(s, generator=gen) * 0.3 for n, s in SHAPES.items()}
    inputs = {n: [p + 0.05 * i * torch.randn(p.shape, generator=gen) for i in range(steps)] for n, p in params.items()}
    inputs = {n: [x if n.endswith("_emb") else x.reshape(1, -1) for x in xs] for n, xs in inputs.items()}
    h0 = {g: torch.randn(h.shape, generator=gen) * 0.5 for g, h in generator.zero_state(params).items()}
    return generator, inputs, h0


def _run(generator, inputs, h0, fused: bool, monkeypatch, **options):
    """Every step's outputs, the state after step one, and the gradients of a weighted sum of the outputs
    (``options``: GruGenerator.run's keep and rows)."""
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(cpu_kernels, "gru_usable", lambda *args: False)
        generator.zero_grad(set_to_none=True)
        outputs, first = generator.run(inputs, h0, **options)
        total = sum((i + 1) * (out[n] * torch.linspace(-1, 1, out[n].numel()).reshape(out[n].shape)).sum()
                    for i, out in enumerate(outputs) for n in out)
        total.backward()
    grads = {n: p.grad.clone() for n, p in generator.named_parameters()}
    return outputs, first, grads


@pytest.mark.parametrize(("hidden", "residual", "anchor"), [(4, True, "last"), (4, False, "last"),
                                                            (8, True, "mean"), (5, True, "last")])
def test_fused_window_equals_torch_ops_outputs_state_and_gradients(hidden, residual, anchor, monkeypatch):
    """Hidden 4 and 8 have their own compiled copies, 5 takes the generic one; the dense group's 861
    coordinates end in a partial tile of lanes."""
    generator, inputs, h0 = _window(hidden, residual, anchor)
    fused = _run(generator, inputs, h0, True, monkeypatch)
    eager = _run(generator, inputs, h0, False, monkeypatch)
    for step_fused, step_eager in zip(fused[0], eager[0], strict=True):
        assert step_fused.keys() == step_eager.keys()
        for name in step_eager:
            assert torch.allclose(step_fused[name], step_eager[name], rtol=1e-5, atol=1e-5), name
    for group in eager[1]:
        assert torch.allclose(fused[1][group], eager[1][group], rtol=1e-5, atol=1e-5), group
    for name, grad in eager[2].items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(fused[2][name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item()), name


def test_fused_window_does_not_depend_on_the_thread_count(monkeypatch):
    generator, inputs, h0 = _window(4, True, "last")
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append(_run(generator, inputs, h0, True, monkeypatch))
    finally:
        torch.set_num_threads(threads)
    (out_a, _, grads_a), (out_b, _, grads_b) = results
    assert all(torch.equal(a[n], b[n]) for a, b in zip(out_a, out_b, strict=True) for n in a)
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


def test_inputs_that_need_gradients_take_torch_ops():
    """The kernel gives gradients to the weights only; an input that needs one must not get a silent zero."""
    x = [torch.randn(4, 8, requires_grad=True)]
    assert not cpu_kernels.gru_usable(x, torch.zeros(4, 8, 4), 4)
    assert not cpu_kernels.gru_usable([torch.randn(4, 8)], torch.zeros(4, 8, 4, requires_grad=True), 4)
    assert not cpu_kernels.gru_usable([torch.randn(4, 8, dtype=torch.float64)], torch.zeros(4, 8, 4), 4)
    assert not cpu_kernels.gru_usable([torch.randn(4, 8)], torch.zeros(4, 8, 32), 32)  # above the compiled maximum
    assert cpu_kernels.gru_usable([torch.randn(4, 8)], torch.zeros(4, 8, 4), 4)


def test_the_kernels_can_be_switched_off_and_a_shared_cache_folder_is_refused(tmp_path, monkeypatch):
    cpu_kernels.library.cache_clear()
    monkeypatch.setenv("ASMG_CPU_KERNELS", "0")
    try:
        assert cpu_kernels.library() is None
        assert not cpu_kernels.gru_usable([torch.randn(4, 8)], torch.zeros(4, 8, 4), 4)
    finally:
        cpu_kernels.library.cache_clear()
    shared = tmp_path / "kernels"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could swap the library another process then loads
    with pytest.raises(OSError, match="not private"):
        native.private_dir(shared)
    monkeypatch.delenv("ASMG_CPU_KERNELS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:  # a fresh cache folder: built there, private to this user
        assert cpu_kernels.library() is not None
        folder = native.cache_dir()
        assert [p.suffix for p in folder.iterdir()] == [".so"]
        assert not folder.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)
        assert folder.stat().st_uid == os.getuid()
    finally:
        cpu_kernels.library.cache_clear()


def _model_batch():
    samples = tiny_samples(n_events=800, n_users=120, n_items=150, category_mods=(37, 23))  # items in 1-2 cats
    vocabs = Vocabularies()
    data = encode_period(samples, vocabs, period=1, history_len=30)
    sizes = vocabs.sizes()
    maker = BatchMaker(vocabs.item_categories.table, {**sizes, "item": sizes["item"] - 5}, torch.device("cpu"))
    batch = maker.batch(data, torch.arange(len(data)))  # some rows clamped to 0, empty and full histories
    assert batch.history_mask.any(1).sum() < len(batch) and batch.item_cat_mask.sum(1).max() == 2
    return init_params(sizes, seed=3), batch


def test_model_look_ups_equal_torch_ops_forward_and_gradients(monkeypatch):
    params, batch = _model_batch()
    results = []
    for kernel in (True, False):
        with monkeypatch.context() as patch:
            if not kernel:
                patch.setattr(cpu_kernels, "rows_usable", lambda *args: False)
            leaves = {n: t.clone().requires_grad_(True) for n, t in params.items()}
            value = loss(leaves, batch)
            value.backward()
            results.append((value.item(), {n: t.grad for n, t in leaves.items()}))
    (fused, fused_grads), (eager, eager_grads) = results
    assert fused == pytest.approx(eager, abs=1e-6)
    for name, grad in eager_grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(fused_grads[name], grad, atol=1e-7), name


def test_weighted_rows_refuses_rows_outside_the_table_and_ignores_the_thread_count():
    table = torch.randn(50, 8, requires_grad=True)
    index = torch.randint(0, 50, (64, 7))
    weight = torch.rand(64, 7)
    weight[:, -1] = 0.0  # padding: no contribution, no gradient
    out = cpu_kernels.weighted_rows(table, index, weight)
    assert torch.allclose(out, (table[index] * weight.unsqueeze(-1)).sum(1), atol=1e-6)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            table.grad = None
            (cpu_kernels.weighted_rows(table, index, weight) * torch.linspace(-1, 1, 8)).sum().backward()
            grads.append(table.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[index[:, :-1].reshape(-1)] = False
    assert not grads[0][untouched].any()
    with pytest.raises(IndexError, match="out of range"):
        cpu_kernels.weighted_rows(table, torch.full((2, 1), 50), torch.ones(2, 1))


def _window_models(sizes: str):
    """Three window steps' models (tables of different lengths, as the generated rows are) and batches."""
    params, batch = _model_batch()
    gen = torch.Generator().manual_seed(4)
    models = [{n: t + 0.05 * torch.randn(t.shape, generator=gen) for n, t in params.items()} for _ in range(3)]
    for i, model in enumerate(models):
        model["user_emb"] = model["user_emb"][:len(model["user_emb"]) - 7 * i]  # ids below: modulo its length
    n = len(batch)
    cut = [batch.slice(0, n), batch.slice(0, n), batch.slice(0, n)] if sizes == "same" else \
        [batch.slice(0, n), batch.slice(5, n), batch.slice(0, n // 3)]
    users = [len(m["user_emb"]) for m in models]
    cut = [replace(b, user=b.user % u) for b, u in zip(cut, users, strict=True)]
    return models, cut


def _window_loss(models, batches, kernel: bool, monkeypatch, threads: int | None = None):
    weights = [0.5, 0.0, 1.25]  # a step whose weight is zero still runs, with zero gradients
    before = torch.get_num_threads()
    with monkeypatch.context() as patch:
        if not kernel:
            patch.setattr(cpu_kernels, "loss_usable", lambda *args: False)
        try:
            torch.set_num_threads(threads or before)
            leaves = [{n: t.clone().requires_grad_(True) for n, t in m.items()} for m in models]
            value = weighted_loss(leaves, batches, weights)
            value.backward()
        finally:
            torch.set_num_threads(before)
    return value.item(), [{n: t.grad for n, t in m.items()} for m in leaves]


@pytest.mark.parametrize("sizes", ["same", "different"])
def test_window_loss_equals_torch_ops_loss_and_gradients(sizes, monkeypatch):
    """The loss kernel against model.py's torch path (features, MLP, logistic loss) for a window of models:
    the loss and the gradients of every model's tables and MLP."""
    models, batches = _window_models(sizes)
    fused, fused_grads = _window_loss(models, batches, True, monkeypatch)
    eager, eager_grads = _window_loss(models, batches, False, monkeypatch)
    assert fused == pytest.approx(eager, rel=1e-6)
    for step, (mine, theirs) in enumerate(zip(fused_grads, eager_grads, strict=True)):
        for name, grad in theirs.items():
            assert (grad.abs().sum() > 0) == (step != 1), (step, name)
            assert torch.allclose(mine[name], grad, rtol=1e-5, atol=1e-8), (step, name)


def test_window_loss_does_not_depend_on_the_thread_count_and_refuses_bad_batches(monkeypatch):
    models, batches = _window_models("different")
    one = _window_loss(models, batches, True, monkeypatch, threads=1)
    three = _window_loss(models, batches, True, monkeypatch, threads=3)
    assert one[0] == three[0]
    for mine, theirs in zip(one[1], three[1], strict=True):
        assert all(torch.equal(mine[n], theirs[n]) for n in theirs)
    outside = [replace(batches[0], item=batches[0].item.clone().fill_(len(models[0]["item_emb"]))), *batches[1:]]
    with pytest.raises(IndexError, match="out of range"):
        _window_loss(models, outside, True, monkeypatch)
    short = [replace(batches[0], label=batches[0].label[1:]), *batches[1:]]
    with pytest.raises(ValueError, match="do not fit"):
        _window_loss(models, short, True, monkeypatch)


def _kernel_args(steps: int, rows: int, coords: int, hidden: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, rows, coords, generator=gen) * 0.5
    h0 = torch.randn(rows, coords, hidden, generator=gen) * 0.5
    weights = [(torch.rand(*shape, generator=gen) * 1.2 - 0.6).requires_grad_(True)
               for shape in ((3, coords, hidden), (3, coords, hidden, hidden), (coords, hidden), (coords,))]
    return x, h0, weights


def _prefixes(steps: int, rows: int, gen: torch.Generator) -> list[int]:
    """Random non-increasing prefix lengths, the first below the row count (a row no step uses)."""
    cuts = sorted(torch.randint(0, rows, (steps,), generator=gen).tolist(), reverse=True)
    return [max(cuts[0], 1), *cuts[1:]]


@pytest.mark.parametrize(("hidden", "residual", "anchor_mean"), [(4, True, False), (4, False, False),
                                                                 (8, True, True), (5, True, False)])
def test_trimmed_window_equals_the_whole_window_on_the_kept_rows(hidden, residual, anchor_mean):
    """Rows :keep[s] at step s: their outputs and the weight gradients equal the whole window's when the
    dropped outputs get no gradient; the dropped outputs' gradients (non-zero here) must be ignored."""
    steps, rows, coords = 4, 203, 13  # 13 coordinates: one full tile of lanes and a partial one
    gen = torch.Generator().manual_seed(hidden)
    for seed in range(4):
        keep = _prefixes(steps, rows, gen)
        x, h0, weights = _kernel_args(steps, rows, coords, hidden, seed)
        dy = torch.randn(x.shape, generator=gen)
        dropped = torch.arange(rows).view(1, rows, 1) >= torch.tensor(keep).view(steps, 1, 1)
        assert dropped.any() and not dropped.all()
        y_all, first = cpu_kernels.FusedWindow.apply(list(x), None, h0, *weights, residual, anchor_mean)
        grads_all = torch.autograd.grad(y_all, weights, dy.masked_fill(dropped, 0.0))
        y_kept, no_first = cpu_kernels.FusedWindow.apply(list(x), None, h0, *weights, residual, anchor_mean,
                                                         cpu_kernels.keep_tensor(keep))
        grads_kept = torch.autograd.grad(y_kept, weights, dy)
        assert first.shape == h0.shape and no_first.numel() == 0
        for s, n in enumerate(keep):
            assert torch.equal(y_kept[s, :n], y_all[s, :n]), (seed, s, n)
        for kept, whole in zip(grads_kept, grads_all, strict=True):
            assert whole.abs().sum() > 0
            assert torch.allclose(kept, whole, rtol=1e-6, atol=1e-6 * whole.abs().max().item()), (seed, keep)


@pytest.mark.parametrize("hidden", [4, 5])
def test_rows_stepped_in_groups_equal_rows_stepped_alone(hidden):
    """The kernel steps a few rows' tiles together (ROWS in cpu_kernels.c): each row's outputs must be bitwise
    those of the row run alone, and the weight gradients the sum of the rows' own, whatever the row's group
    holds: an odd row count, a neighbour with fewer steps or none, chunk ends (75 rows: chunks of 2 and 3).
    Inputs at steps a row does not take, and the start state of a row that takes none, are NaN here: a group
    may run such lanes on other rows' inputs, but must never read these."""
    steps, rows, coords = 4, 75, 13
    keep = [73, 50, 31, 4]  # odd and even cuts; rows 73 and 74 take no step
    x, h0, weights = _kernel_args(steps, rows, coords, hidden, seed=11)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    dropped = torch.arange(rows).view(1, rows, 1) >= torch.tensor(keep).view(steps, 1, 1)
    x, dy = x.masked_fill(dropped, float("nan")), dy.masked_fill(dropped, float("nan"))
    h0[keep[0]:] = float("nan")
    y, _ = cpu_kernels.FusedWindow.apply(list(x), None, h0, *weights, True, True, cpu_kernels.keep_tensor(keep))
    grads = torch.autograd.grad(y, weights, dy)
    summed = [torch.zeros_like(w) for w in weights]
    for row in range(rows):
        alone = [int(row < n) for n in keep]
        y_row, _ = cpu_kernels.FusedWindow.apply(list(x[:, row:row + 1]), None, h0[row:row + 1], *weights, True, True,
                                                 cpu_kernels.keep_tensor(alone))
        for s in range(sum(alone)):  # the steps the row takes
            assert torch.equal(y[s, row], y_row[s, 0]), (row, s)
        for total, grad in zip(summed, torch.autograd.grad(y_row, weights, dy[:, row:row + 1]), strict=True):
            total += grad
    for grouped, alone in zip(grads, summed, strict=True):
        assert grouped.isfinite().all() and alone.abs().sum() > 0
        assert torch.allclose(grouped, alone, rtol=1e-5, atol=1e-6 * alone.abs().max().item())


def test_trimmed_window_does_not_depend_on_the_thread_count():
    x, h0, weights = _kernel_args(3, 150, 16, 4, seed=7)
    keep = cpu_kernels.keep_tensor([140, 90, 20])
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            y, _ = cpu_kernels.FusedWindow.apply(list(x), None, h0, *weights, True, False, keep)
            results.append((y, torch.autograd.grad(y, weights, dy)))
    finally:
        torch.set_num_threads(threads)
    (y_a, grads_a), (y_b, grads_b) = results
    assert all(torch.equal(y_a[s, :n], y_b[s, :n]) for s, n in enumerate([140, 90, 20]))
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_trimmed_window_refuses_prefixes_that_grow_or_exceed_the_rows():
    x, h0, weights = _kernel_args(3, 10, 8, 4, seed=0)
    for keep in ([10, 11, 3], [11, 5, 3], [5, 3, -1]):
        with pytest.raises(RuntimeError, match="code 4"):
            cpu_kernels.FusedWindow.apply(list(x), None, h0, *weights, True, False, cpu_kernels.keep_tensor(keep))
    generator, inputs, h0 = _window(4, True, "last")
    with pytest.raises(ValueError, match="prefix"):
        generator.run(inputs, h0, keep={"item_emb": [53, 60, 10]})


@pytest.mark.parametrize("fused", [True, False])
def test_generator_trims_to_the_kept_rows_on_both_paths(fused, monkeypatch):
    """GruGenerator.run with ``keep``: step i of a trimmed table has keep[i] rows, equal to the whole window's
    first rows, and so are the gradients of a loss that reads only those (the C kernel and torch's ops)."""
    generator, inputs, h0 = _window(8, True, "mean", steps=4)
    keep = {"user_emb": [37, 30, 12, 0], "item_emb": [50, 50, 41, 7]}

    def kept_sum(outputs: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        total = torch.zeros(())
        for i, out in enumerate(outputs):
            for name, y in out.items():
                y = y[:keep[name][i]] if name in keep else y
                total = total + (i + 1) * (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum()
        return total

    results = []
    for trim in (False, True):
        with monkeypatch.context() as patch:
            if not fused:
                patch.setattr(cpu_kernels, "gru_usable", lambda *args: False)
            generator.zero_grad(set_to_none=True)
            outputs, first = generator.run(inputs, h0, keep=keep if trim else None)
            kept_sum(outputs).backward()
        results.append((outputs, first, {n: p.grad.clone() for n, p in generator.named_parameters()}))
    (whole, first_whole, grads_whole), (trimmed, first_trimmed, grads_trimmed) = results
    assert first_trimmed.keys() == first_whole.keys() - keep.keys()
    for i, (out_whole, out_trimmed) in enumerate(zip(whole, trimmed, strict=True)):
        for name, y in out_whole.items():
            rows = keep[name][i] if name in keep else y.shape[0]
            assert out_trimmed[name].shape == (rows, *y.shape[1:]), (name, i)
            assert torch.allclose(out_trimmed[name], y[:rows], rtol=1e-6, atol=1e-7), (name, i)
    for name, grad in grads_whole.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grads_trimmed[name], grad, rtol=1e-6, atol=1e-6 * grad.abs().max().item()), name


@pytest.mark.parametrize("fused", [True, False])
def test_generator_reads_the_given_rows_as_if_gathered_first(fused, monkeypatch):
    """GruGenerator.run with ``rows``: whole tables in, only the given rows (in their order, repeats allowed) run,
    equal to running the gathered copies; trimmed too, and the C kernel reads them in place."""
    generator, inputs, h0 = _window(4, True, "last", steps=3)
    pick = {"user_emb": torch.tensor([36, 0, 5, 5, 17, 2, 30, 11, 8]), "item_emb": torch.randperm(
        53, generator=torch.Generator().manual_seed(3))[:40]}
    gathered = {n: [x.index_select(0, pick[n]) if n in pick else x for x in xs] for n, xs in inputs.items()}
    state = {g: h.index_select(0, pick[g]) if g in pick else h for g, h in h0.items()}
    for keep in (None, {"user_emb": [9, 6, 2], "item_emb": [40, 33, 0]}):
        outs, first, grads = _run(generator, inputs, h0, fused, monkeypatch, keep=keep, rows=pick)
        outs_gathered, first_gathered, grads_gathered = _run(generator, gathered, state, fused, monkeypatch, keep=keep)
        assert first.keys() == first_gathered.keys()
        assert all(torch.equal(first[g], first_gathered[g]) for g in first)
        for out, out_gathered in zip(outs, outs_gathered, strict=True):
            assert out.keys() == out_gathered.keys()
            assert all(torch.equal(out[n], out_gathered[n]) for n in out)
        assert outs[-1]["user_emb"].shape[0] == (9 if keep is None else 2)
        for name, grad in grads_gathered.items():
            assert grad.abs().sum() > 0, name
            assert torch.equal(grads[name], grad), name


def test_fused_window_refuses_rows_outside_a_table():
    x, h0, weights = _kernel_args(3, 10, 8, 4, seed=0)
    tables = [x[0], x[1], x[2, :6]]  # the last step's table is shorter
    assert cpu_kernels.FusedWindow.apply(tables, torch.tensor([5, 0, 3]), h0, *weights, True, False)[0].shape \
        == (3, 3, 8)
    for rows in ([6, 0], [-1, 2]):
        with pytest.raises(IndexError, match="out of range"):
            cpu_kernels.FusedWindow.apply(tables, torch.tensor(rows), h0, *weights, True, False)
