"""The fused C kernel of the coordinate GRU (asmg/cpu_kernels.c) against torch's ops, which it replaces on CPU."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from asmg import cpu_kernels, native
from asmg.batches import BatchMaker, encode_period
from asmg.generator import GruGenerator
from asmg.model import init_params, loss
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


def _run(generator, inputs, h0, fused: bool, monkeypatch):
    """Every step's outputs, the state after step one, and the gradients of a weighted sum of the outputs."""
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(cpu_kernels, "gru_usable", lambda *args: False)
        generator.zero_grad(set_to_none=True)
        outputs, first = generator.run(inputs, h0)
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
