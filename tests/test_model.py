"""Embedding & MLP, growing vocabularies and the GRU meta generator."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asmg import cpu_kernels, model
from asmg.batches import BatchMaker, PeriodTensors, encode_period
from asmg.config import MetaConfig, RunConfig, seeded
from asmg.generator import CoordinateGRU, GruGenerator, LinearGenerator, as_rows
from asmg.methods.meta import AsmgMethod, _compact_all, _gather_by_last_use
from asmg.model import (
    TABLE_FIELDS,
    Batch,
    compact_batch,
    grow_params,
    init_params,
    logits,
    loss,
    mlp_shapes,
    serving_copy,
    table_sizes,
    weighted_loss,
)
from asmg.train import train_base
from asmg.vocab import Vocabularies, Vocabulary
from tests.helpers import tiny_samples

torch.set_default_dtype(torch.float32)


def _encoded(n_events=600):
    samples = tiny_samples(n_events=n_events)
    vocabs = Vocabularies()
    data = encode_period(samples, vocabs, period=1, history_len=30)
    return samples, vocabs, data


def test_parameters_have_the_reference_shapes():
    params = init_params({"user": 5, "item": 7, "category": 3}, seed=0)
    assert params["user_emb"].shape == (5, 8) and params["item_emb"].shape == (7, 8)
    assert params["cat_emb"].shape == (3, 8)
    assert {n: tuple(s) for n, s in mlp_shapes().items()} == {
        "mlp.0.weight": (20, 40), "mlp.0.bias": (20,), "mlp.1.weight": (10, 20), "mlp.1.bias": (10,),
        "mlp.2.weight": (1, 10), "mlp.2.bias": (1,)}


def test_forward_equals_a_direct_computation():
    _, vocabs, data = _encoded()
    params = init_params(vocabs.sizes(), seed=1)
    maker = BatchMaker(vocabs.item_categories.table, vocabs.sizes(), torch.device("cpu"))
    rows = torch.tensor([0, 1, *torch.nonzero(data.history.gt(0).sum(1) >= 3).flatten()[-6:].tolist()])
    batch = maker.batch(data, rows)  # two events without a history, six with three items or more
    out = logits(params, batch)
    table = vocabs.item_categories.table
    for b, row in enumerate(rows.tolist()):
        def item_vec(i):
            cats = [c for c in table[i] if c > 0]
            cat = params["cat_emb"][cats].mean(0) if cats else torch.zeros(8)
            return torch.cat([params["item_emb"][i], cat])
        hist = [int(h) for h in data.history[row] if h > 0]
        hv = torch.stack([item_vec(h) for h in hist]).mean(0) if hist else torch.zeros(16)
        x = torch.cat([params["user_emb"][data.user[row]], hv, item_vec(int(data.item[row]))])
        for layer in range(3):
            x = F.linear(x, params[f"mlp.{layer}.weight"], params[f"mlp.{layer}.bias"])
            x = F.relu(x) if layer < 2 else x
        assert out[b].item() == pytest.approx(x.item(), abs=1e-6)


@pytest.mark.parametrize("kernel", [True, False], ids=["loss-kernel", "torch"])
@pytest.mark.parametrize("sizes", [(40, 40, 40), (40, 25, 40)], ids=["same-size", "one-smaller"])
def test_weighted_loss_equals_each_models_loss_summed(sizes, kernel, monkeypatch):
    """Three models whose tables differ in values and length (a trimmed window step's table is shorter): the
    window loss equals sum_i w_i * loss(model_i, batch_i) with the same gradients. On torch's ops: in one
    weighted-rows call per look-up instead of one per model (batches of different sizes take the per-model
    sum); with the C loss kernel, in none."""
    if not kernel:
        monkeypatch.setattr(cpu_kernels, "loss_usable", lambda *args: False)
    _, vocabs, data = _encoded()
    maker = BatchMaker(vocabs.item_categories.table, vocabs.sizes(), torch.device("cpu"))
    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    batches = [maker.batch(data, picks[i * 40:i * 40 + size]) for i, size in enumerate(sizes)]
    weights = [0.5, 0.2, 0.3]
    models = []
    for seed, batch in enumerate(batches):
        params = init_params(vocabs.sizes(), seed=seed + 1)
        for name, fields_of in TABLE_FIELDS.items():  # each model only as long as its batch needs, as trimmed
            used = max(int(getattr(batch, f).max()) for f in fields_of) + 1
            params[name] = params[name][:used + seed]
        models.append({n: t.clone().requires_grad_() for n, t in params.items()})
    calls = []
    monkeypatch.setattr(model, "weighted_rows", lambda *a: calls.append(1) or cpu_kernels.weighted_rows(*a))
    results = []
    for fn in (weighted_loss, lambda ms, bs, ws: sum(w * loss(m, b) for m, b, w in zip(ms, bs, ws, strict=True))):
        for m in models:
            for t in m.values():
                t.grad = None
        total = fn(models, batches, weights)
        total.backward()
        results.append((total.item(), [{n: t.grad.clone() for n, t in m.items()} for m in models], len(calls)))
        calls.clear()
    (one_pass, grads, one_pass_calls), (summed, summed_grads, summed_calls) = results
    assert summed_calls == 5 * len(models)
    assert one_pass_calls == (0 if kernel else 5 if len(set(sizes)) == 1 else summed_calls)
    assert one_pass == pytest.approx(summed, rel=1e-6)
    for got, want in zip(grads, summed_grads, strict=True):
        for name, grad in want.items():
            assert grad.abs().sum() > 0, name
            assert torch.allclose(got[name], grad, rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("cats_per_item", [1, 3])
@pytest.mark.parametrize("beyond", [0, 1], ids=["max-id-is-size", "all-known"])
def test_batches_send_ids_the_model_lacks_to_row_zero(cats_per_item, beyond):
    """Ids >= the model's table size read the fallback row 0, the rest are kept, and the masks see the ids
    before the clamp: at the boundary (the largest id equals the size) and when every id is known."""
    gen = torch.Generator().manual_seed(cats_per_item)
    n, items = 64, 30
    data = PeriodTensors(1, torch.randint(1, 20, (n,), generator=gen), torch.randint(1, items, (n,), generator=gen),
                         torch.randint(0, items, (n, 7), generator=gen), torch.rand(n, generator=gen))
    item_cats = np.random.default_rng(cats_per_item).integers(0, 12, (items, cats_per_item))
    sizes = {"user": int(data.user.max()) + beyond, "item": int(data.history.max()) + beyond,
             "category": int(item_cats.max()) + beyond}
    index = torch.randperm(n, generator=gen)[:40]
    batch = BatchMaker(item_cats, sizes, torch.device("cpu")).batch(data, index)
    raw_cats = torch.from_numpy(item_cats)
    history, item_cat_ids = data.history[index], raw_cats[data.item[index]]
    history_cat_ids = raw_cats[history]

    def clamped(ids, size):
        return torch.where(ids < size, ids, 0)

    assert torch.equal(batch.user, clamped(data.user[index], sizes["user"]))
    assert torch.equal(batch.item, clamped(data.item[index], sizes["item"]))
    assert torch.equal(batch.history, clamped(history, sizes["item"]))
    assert torch.equal(batch.history_mask, history > 0)
    assert torch.equal(batch.item_cats, clamped(item_cat_ids, sizes["category"]))
    assert torch.equal(batch.history_cats, clamped(history_cat_ids, sizes["category"]))
    assert torch.equal(batch.item_cat_mask, (item_cat_ids > 0) & (item_cat_ids < sizes["category"]))
    assert torch.equal(batch.history_cat_mask, (history_cat_ids > 0) & (history_cat_ids < sizes["category"]))
    assert batch.history_cats.shape == (40, 7, cats_per_item)
    if not beyond:  # the boundary id really was clamped
        assert int(batch.history.max()) < sizes["item"] and int(batch.user.max()) < sizes["user"]


def test_vocabulary_grows_without_moving_rows():
    vocab = Vocabulary()
    vocab.add(np.array([7, 3, 7, 9]))
    assert list(vocab.lookup(np.array([7, 3, 9, 4]))) == [1, 2, 3, 0]
    vocab.add(np.array([4, 3]))
    assert list(vocab.lookup(np.array([7, 3, 9, 4]))) == [1, 2, 3, 4]


def test_grown_tables_keep_existing_rows_and_scores():
    _, vocabs, data = _encoded()
    params = init_params(vocabs.sizes(), seed=0)
    maker = BatchMaker(vocabs.item_categories.table, vocabs.sizes(), torch.device("cpu"))
    before = logits(params, maker.batch(data, slice(0, 50)))
    sizes = {k: v + 5 for k, v in vocabs.sizes().items()}
    grown, added = grow_params(params, sizes, seeded(0, 2, 3))
    assert grown["item_emb"].shape[0] == sizes["item"] and added["item_emb"].shape == (5, 8)
    assert torch.equal(grown["item_emb"][: params["item_emb"].shape[0]], params["item_emb"])
    assert torch.allclose(logits(grown, maker.batch(data, slice(0, 50))), before)


def test_unknown_ids_fall_back_to_row_zero():
    _, vocabs, data = _encoded()
    small = {k: max(2, v // 2) for k, v in vocabs.sizes().items()}
    params = init_params(small, seed=0)
    n = 200
    batch = BatchMaker(vocabs.item_categories.table, small, torch.device("cpu")).batch(data, slice(0, n))
    user, item, history = data.user[:n], data.item[:n], data.history[:n]
    unknown_user, unknown_item = user >= small["user"], item >= small["item"]
    unknown_history = (history >= small["item"]) & (history > 0)
    assert unknown_user.any() and (~unknown_user).any() and unknown_item.any() and (~unknown_item).any()
    assert torch.equal(batch.user, torch.where(unknown_user, 0, user))
    assert torch.equal(batch.item, torch.where(unknown_item, 0, item))
    assert torch.equal(batch.history, torch.where(history >= small["item"], 0, history))
    assert torch.equal(batch.history_mask, history > 0)  # an unknown history item still counts, as row 0
    base = logits(params, batch)
    assert torch.isfinite(base).all()
    # row 0 of a table moves exactly the scores of the events that use an unknown id of it
    for name, uses_row_zero in (("user_emb", unknown_user),
                                ("item_emb", unknown_item | unknown_history.any(1))):
        moved = dict(params)
        moved[name] = params[name].clone()
        moved[name][0] += 1.0
        changed = (logits(moved, batch) - base).abs() > 1e-7
        assert torch.equal(changed, uses_row_zero), name


def test_serving_copy_sets_the_fallback_row_to_the_mean_of_the_known_rows():
    params = init_params({"user": 5, "item": 1, "category": 3}, seed=0)  # no item known yet: row 0 only
    served = serving_copy(params)
    assert torch.equal(served["user_emb"][0], params["user_emb"][1:].mean(0))
    assert torch.equal(served["user_emb"][1:], params["user_emb"][1:])
    assert torch.equal(served["item_emb"], params["item_emb"])  # nothing to average: kept, never NaN
    assert torch.equal(served["cat_emb"], params["cat_emb"])  # categories have no fallback row of their own
    assert served["user_emb"] is not params["user_emb"] and not served["user_emb"].requires_grad


def test_gru_step_equals_direct_computation():
    gen = torch.Generator().manual_seed(0)
    cell = CoordinateGRU(coords=3, hidden=4, residual=False, gen=gen)
    x, h = torch.randn(2, 3), torch.randn(2, 3, 4)
    y, h_next = cell.step(x, h)
    sig = torch.sigmoid
    for r in range(2):
        for c in range(3):
            u, w = cell.u[:, c], cell.w[:, c]
            z = sig(x[r, c] * u[0] + h[r, c] @ w[0])
            rr = sig(x[r, c] * u[1] + h[r, c] @ w[1])
            g = torch.tanh(x[r, c] * u[2] + (rr * h[r, c]) @ w[2])
            hn = (1 - z) * h[r, c] + z * g
            assert torch.allclose(h_next[r, c], hn, atol=1e-6)
            assert y[r, c].item() == pytest.approx((hn @ cell.w_hy[c] + cell.b_y[c]).item(), abs=1e-6)


def test_linear_generator_is_a_weighted_sum_of_the_window():
    generator = LinearGenerator(k=3)
    assert torch.equal(generator.alpha.detach(), torch.full((3,), 1 / 3))  # starts as the window's mean
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 8, generator=gen) for _ in range(3)]
    with torch.no_grad():
        generator.alpha.copy_(torch.tensor([0.2, -0.5, 1.5]))
    outputs, state = generator.run({"item_emb": xs, "mlp.0.bias": [x[0] for x in xs]}, {})
    assert state == {} and outputs[:2] == [{}, {}]  # only the last step has an output
    expected = 0.2 * xs[0] - 0.5 * xs[1] + 1.5 * xs[2]
    assert torch.allclose(outputs[-1]["item_emb"], expected, atol=1e-6)
    assert torch.allclose(outputs[-1]["mlp.0.bias"], expected[0], atol=1e-6)
    # a window not yet full uses the newest weights
    short, _ = generator.run({"item_emb": xs[1:]}, {})
    assert torch.allclose(short[-1]["item_emb"], -0.5 * xs[1] + 1.5 * xs[2], atol=1e-6)
    with pytest.raises(ValueError):  # more inputs than weights is an error, not a silent truncation
        generator.run({"item_emb": [*xs, xs[0]]}, {})


def test_gru_generator_layout_init_and_carried_state():
    """The coordinate layout is the canonical parameter order (checkpoints restore generators by position),
    GRU weights start within +-1/sqrt(H) and the residual output layer at 0, and the state kept for the next
    period is the one after the FIRST step of the window."""
    shapes = {"mlp.1.bias": (10,), "mlp.0.weight": (20, 40), "item_emb": (6, 8), "mlp.0.bias": (20,),
              "user_emb": (5, 8)}
    hidden = 4
    generator = GruGenerator(shapes, hidden=hidden, residual=True, gen=torch.Generator().manual_seed(0))
    assert generator.names == ["user_emb", "item_emb", "mlp.0.weight", "mlp.0.bias", "mlp.1.bias"]
    assert generator.dense == ["mlp.0.weight", "mlp.0.bias", "mlp.1.bias"]
    for cell in generator.cells.values():
        for weights in (cell.u, cell.w):
            assert weights.abs().max() <= 1 / math.sqrt(hidden) and weights.min() < 0 < weights.max()
        assert not cell.w_hy.any() and not cell.b_y.any()
    gen = torch.Generator().manual_seed(1)
    params = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    inputs = {n: [torch.randn(as_rows(n, p).shape, generator=gen) for _ in range(3)] for n, p in params.items()}
    h0 = {g: torch.randn(h.shape, generator=gen) for g, h in generator.zero_state(params).items()}
    outputs, first = generator.run(inputs, h0)
    _, after_first = generator.cells["user_emb"].step(inputs["user_emb"][0], h0["user_emb"])
    assert torch.allclose(first["user_emb"], after_first, atol=1e-6)  # the fused kernel (CPU) against torch ops
    dense_x = torch.cat([inputs[n][0] for n in generator.dense], dim=1)
    assert torch.allclose(first["dense"], generator.cells["dense"].step(dense_x, h0["dense"])[1], atol=1e-6)
    # with scales: the GRU sees x / s and its output is scaled back by s, per parameter
    scales = {n: 0.5 + i for i, n in enumerate(generator.names)}
    scaled_out, _ = generator.run(inputs, h0, scales)
    plain_out, _ = generator.run({n: [x / scales[n] for x in xs] for n, xs in inputs.items()}, h0)
    for name in generator.names:
        assert torch.allclose(scaled_out[-1][name], plain_out[-1][name] * scales[name], atol=1e-6), name


def test_residual_generator_starts_as_the_last_input():
    gen = torch.Generator().manual_seed(0)
    generator = GruGenerator({"user_emb": (4, 8)}, hidden=4, residual=True, gen=gen)
    xs = [torch.randn(4, 8) for _ in range(3)]
    outputs, _ = generator.run({"user_emb": xs}, {"user_emb": torch.zeros(4, 8, 4)})
    assert torch.equal(outputs[-1]["user_emb"], xs[-1])


def test_step_weights_of_the_variants():
    """Which window steps the generator is trained on, and how much each counts (the paper's variants)."""
    def weights(variant: str, steps: int) -> list[float]:
        return AsmgMethod(RunConfig(), torch.device("cpu"), variant).step_weights(steps)

    assert weights("multi", 3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])  # i / sum(1..k): later steps count more
    assert weights("multi", 1) == [1.0]
    assert weights("unif", 4) == pytest.approx([0.25] * 4)
    assert weights("single", 3) == weights("linear", 3) == [0.0, 0.0, 1.0]  # the last step only
    assert weights("zero", 2) == weights("full", 2) == pytest.approx([1 / 3, 2 / 3])  # as multi
    assert AsmgMethod(RunConfig(), torch.device("cpu"), "linear").name == "asmg-linear"
    assert AsmgMethod(RunConfig(), torch.device("cpu"), "unif").name == "asmg-gru-unif"


def _asmg_with_window(row_gather: bool, output="direct", normalize=False, anchor="last", correction_l2=0.0):
    # a vocabulary much larger than the batches: each batch touches a scattered few rows of every table, so
    # the gathered rows are not 0..n-1 and a wrong re-indexing reads other rows than the full-table path
    samples = tiny_samples(n_events=1000, n_users=300, n_items=400, category_mods=(37, 23))
    vocabs = Vocabularies()
    data = encode_period(samples, vocabs, period=1, history_len=30)
    cfg = RunConfig(meta=MetaConfig(row_gather=row_gather, output=output, normalize=normalize, anchor=anchor,
                                    correction_l2=correction_l2))
    method = AsmgMethod(cfg, torch.device("cpu"), "multi")
    params = init_params(vocabs.sizes(), seed=0)
    method.start(params)
    cats = vocabs.item_categories.table
    later = train_base(params, data, cats, cfg.train, seed=1)
    method.models = [params, later, train_base(later, data, cats, cfg.train, seed=2)]
    method.periods = [data, data, data]
    gen = torch.Generator().manual_seed(5)
    method.hidden = {n: torch.randn(h.shape, generator=gen) * 0.1 for n, h in method.hidden.items()}
    maker = BatchMaker(cats, vocabs.sizes(), torch.device("cpu"))
    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))
    batches = {i: maker.batch(data, picks[i * 6:(i + 1) * 6]) for i in range(3)}  # later events: long histories
    return method, batches


@pytest.mark.parametrize(("output", "normalize"), [("direct", False), ("residual", False), ("residual", True)])
def test_row_gather_equals_full_table_loss_and_gradients(output, normalize):
    results = []
    for row_gather in (True, False):
        method, batches = _asmg_with_window(row_gather, output, normalize)
        if row_gather:  # the gather is not the identity: a strict, scattered subset of every table
            rows, _ = _compact_all(batches)
            for name, picked in rows.items():
                size = method.base[name].shape[0]
                assert 1 < len(picked) < size, (name, len(picked), size)
                assert not torch.equal(picked, torch.arange(len(picked))), name
        torch.manual_seed(0)
        for p in method.generator.parameters():  # non-trivial output layer in both cases
            torch.nn.init.uniform_(p, -0.3, 0.3, generator=torch.Generator().manual_seed(p.numel()))
        loss = method.meta_loss(batches, method.step_weights(3), method.initial_state())
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in method.generator.named_parameters()}))
    (loss_rows, grads_rows), (loss_full, grads_full) = results
    assert math.isfinite(loss_rows)
    assert loss_rows == pytest.approx(loss_full, abs=1e-6)
    for name, grad in grads_full.items():
        assert torch.allclose(grads_rows[name], grad, atol=1e-6), name
        assert grad.abs().sum() > 0, name  # every table's generator takes part in the loss


def _meta_loss_and_grads(method: AsmgMethod, batches) -> tuple[float, dict[str, torch.Tensor]]:
    for p in method.generator.parameters():  # non-trivial output layer
        torch.nn.init.uniform_(p, -0.3, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    method.generator.zero_grad(set_to_none=True)
    loss = method.meta_loss(batches, method.step_weights(3), method.initial_state())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in method.generator.named_parameters()}


def test_gather_by_last_use_orders_rows_so_each_step_reads_a_prefix():
    method, batches = _asmg_with_window(True)
    sizes = {n: method.base[n].shape[0] for n in TABLE_FIELDS}
    rows, local, keep = _gather_by_last_use(batches, 3, sizes)
    for name, fields in TABLE_FIELDS.items():
        used = torch.cat([getattr(b, f).reshape(-1) for b in batches.values() for f in fields]).unique()
        assert torch.equal(rows[name].sort().values, used), name  # each used row once, no other
        assert not torch.equal(rows[name], used), name  # reordered: the re-indexing is not the sorted one
        assert keep[name][0] == len(rows[name]) and keep[name] == sorted(keep[name], reverse=True), name
        for i, batch in batches.items():
            for field in fields:
                ids = getattr(local[i], field)
                assert torch.equal(rows[name][ids], getattr(batch, field)), (name, field)
                assert int(ids.max()) < keep[name][i], (name, i)  # step i reads only its prefix
            if i < 2:  # the prefix is tight: its last row is used at step i or later
                later = torch.cat([getattr(local[j], f).reshape(-1) for j in range(i, 3) for f in fields])
                assert int(later.max()) == keep[name][i] - 1, (name, i)
    assert keep["item_emb"][2] < keep["item_emb"][0] and keep["user_emb"][2] < keep["user_emb"][0]


@pytest.mark.parametrize("active", [(0, 1, 2), (2,), (0, 2)], ids=["every-step", "last-only", "a-gap"])
def test_gather_by_last_use_in_c_equals_torch(active, monkeypatch):
    """The C pass gives the rows, re-indexed batches and prefixes of the torch ops exactly, also when some
    window steps have no batch (``single``: the last step only); an id outside the table is refused."""
    method, batches = _asmg_with_window(True)
    batches = {i: batches[i] for i in active}
    sizes = {n: method.base[n].shape[0] for n in TABLE_FIELDS}
    results = []
    for usable in (True, False):
        monkeypatch.setattr(cpu_kernels, "last_use_usable", lambda ids, on=usable: on)
        results.append(_gather_by_last_use(batches, 3, sizes))
    (rows_c, local_c, keep_c), (rows_t, local_t, keep_t) = results
    assert keep_c == keep_t
    for name in rows_t:
        assert torch.equal(rows_c[name], rows_t[name]), name
    for i in batches:
        for field in Batch.__dataclass_fields__:
            assert torch.equal(getattr(local_c[i], field), getattr(local_t[i], field)), (i, field)
    with pytest.raises(IndexError, match="out of range"):
        cpu_kernels.last_use(torch.tensor([1, sizes["user_emb"]]), [1, 0, 1], sizes["user_emb"])


@pytest.mark.parametrize(("output", "normalize", "anchor", "fused"), [
    ("direct", False, "last", True), ("residual", True, "last", True), ("residual", False, "mean", True),
    ("residual", True, "mean", False)])
def test_trimmed_meta_loss_equals_the_whole_window(output, normalize, anchor, fused, monkeypatch):
    """Rows stop at their last used window step: the same loss and generator gradients (1e-6 relative) as
    running every gathered row through the whole window, with the C kernel and with torch's ops."""
    if not fused:
        monkeypatch.setattr(cpu_kernels, "gru_usable", lambda *args: False)
    results = []
    for trim in (True, False):
        method, batches = _asmg_with_window(True, output, normalize, anchor)
        method.trim_rows = trim
        results.append(_meta_loss_and_grads(method, batches))
    (loss_trim, grads_trim), (loss_whole, grads_whole) = results
    assert math.isfinite(loss_whole)
    assert loss_trim == pytest.approx(loss_whole, rel=1e-6)
    for name, grad in grads_whole.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grads_trim[name], grad, rtol=1e-6, atol=1e-6 * grad.abs().max().item()), name


def test_shrinkage_keeps_the_whole_window(monkeypatch):
    """correction_l2 averages over every gathered row at every step: no trimming then."""
    method, batches = _asmg_with_window(True, "residual", correction_l2=0.5)
    run, extra = method.generator.run, []
    monkeypatch.setattr(method.generator, "run", lambda *args: extra.append(args[3]) or run(*args))
    loss, grads = _meta_loss_and_grads(method, batches)
    assert extra == [None]  # inputs, state, scales, no prefix lengths, rows
    assert math.isfinite(loss) and all(g.abs().sum() > 0 for g in grads.values())


def test_asmg_grow_extends_every_window_model_with_the_same_seeded_rows():
    """New ids: every model of the window gets the same fresh rows (drawn from the period's seeded generator,
    so a stream replay and the offline run grow alike), the window keeps its length, new hidden rows are 0."""
    method, _ = _asmg_with_window(True)
    method.base = method.models[-1]
    before, hidden = [dict(m) for m in method.models], dict(method.hidden)
    sizes = {kind: n + 4 for kind, n in table_sizes(method.base).items()}
    added = method.grow(sizes, seeded(0, 9, 3))
    _, expected = grow_params(before[-1], sizes, seeded(0, 9, 3))
    assert added.keys() == expected.keys() == {"user_emb", "item_emb", "cat_emb"}
    assert all(torch.equal(added[n], expected[n]) for n in expected)
    assert len(method.models) == len(before) and method.models[-1] is method.base
    for old, new in zip(before, method.models, strict=True):
        for name, rows in expected.items():
            assert torch.equal(new[name], torch.cat([old[name], rows])), name
    for name, rows in expected.items():
        assert torch.equal(method.hidden[name][: hidden[name].shape[0]], hidden[name])
        assert method.hidden[name].shape[0] == hidden[name].shape[0] + rows.shape[0]
        assert not method.hidden[name][hidden[name].shape[0]:].any()


def test_compact_batch_keeps_row_zero_first():
    samples = tiny_samples(n_events=600, n_users=300, n_items=400, category_mods=(37, 23))
    vocabs = Vocabularies()
    data = encode_period(samples, vocabs, period=1, history_len=30)
    batch = BatchMaker(vocabs.item_categories.table, vocabs.sizes(), torch.device("cpu")).batch(data, slice(300, 310))
    rows, local = compact_batch(batch)
    for name, kind in (("user_emb", "user"), ("item_emb", "item"), ("cat_emb", "category")):
        assert rows[name][0] == 0
        assert torch.equal(rows[name], torch.unique(rows[name]))  # sorted, each row once
        assert len(rows[name]) < vocabs.sizes()[kind]  # a real subset: the re-indexing is not the identity
    assert torch.equal(rows["user_emb"][local.user], batch.user)
    assert torch.equal(rows["item_emb"][local.item], batch.item)
    assert torch.equal(rows["item_emb"][local.history], batch.history)
    assert torch.equal(rows["cat_emb"][local.item_cats], batch.item_cats)
    assert torch.equal(rows["cat_emb"][local.history_cats], batch.history_cats)
    assert not torch.equal(local.item, batch.item)
