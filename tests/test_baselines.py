"""The paper's baselines: SPMF's reservoir and replay rule, IncCTR's distillation, SML's transfer, the MF model."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asmg.batches import BatchMaker, PeriodTensors, encode_period
from asmg.config import RunConfig, seeded
from asmg.methods import parse_methods
from asmg.methods import sml as sml_module
from asmg.methods.incctr import distillation_loss
from asmg.methods.registry import ALL_METHODS
from asmg.methods.sml import Sml, SmlMf, Transfer
from asmg.methods.spmf import Reservoir, replay_weights, reservoir_slots
from asmg.model import compact_batch, init_mf_params, init_params, logits, loss, mf_logits
from asmg.train import predict, train_base
from asmg.updater import PeriodUpdater
from asmg.vocab import Vocabularies
from tests.helpers import tiny_samples
from tests.test_updater import CFG, _periods


def _encoded(n_events=600):
    vocabs = Vocabularies()
    data = encode_period(tiny_samples(n_events=n_events), vocabs, period=1, history_len=30)
    return vocabs, data


def _stream(n: int, period: int) -> PeriodTensors:
    """Samples whose user field is their position in the stream."""
    ids = torch.arange(n)
    return PeriodTensors(period, ids, ids, torch.zeros(n, 2, dtype=torch.long), torch.ones(n))


# -- SPMF ------------------------------------------------------------------------------------------------
def test_reservoir_slots_match_the_sequential_algorithm():
    capacity, seen, arriving = 7, 5, 40
    slots, items = reservoir_slots(seen, arriving, capacity, seeded(0, 1, 2))
    draws = torch.rand(arriving, generator=seeded(0, 1, 2), dtype=torch.float64).numpy()
    expected = {}
    for j in range(arriving):  # Algorithm R, one item at a time
        i = seen + j
        slot = i if i < capacity else int(math.floor(draws[j] * (i + 1)))
        if slot < capacity:
            expected[slot] = j
    assert dict(zip(slots.tolist(), items.tolist(), strict=True)) == expected


def test_reservoir_keeps_every_past_sample_with_equal_probability():
    periods, per_period, capacity, trials = 5, 20, 10, 1500
    n = periods * per_period
    counts = np.zeros(n)
    for trial in range(trials):
        reservoir = Reservoir(capacity)
        for p in range(periods):
            part = _stream(per_period, p)
            part = PeriodTensors(p, part.user + p * per_period, part.item, part.history, part.label)
            reservoir.add(part, seeded(trial, p, 31))
        kept = reservoir.data.user.numpy()
        assert len(kept) == capacity and len(set(kept.tolist())) == capacity
        counts[kept] += 1
    expected = trials * capacity / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square with n - 1 = 99 degrees of freedom: mean 99, sd 14; 99 + 4 sd bounds a fair sampler
    assert chi2 < 99 + 4 * math.sqrt(2 * 99), chi2
    # the oldest and the newest halves are kept equally often
    assert abs(counts[: n // 2].sum() - counts[n // 2:].sum()) < 4 * math.sqrt(trials * capacity / 2)


def test_reservoir_fills_before_it_samples():
    reservoir = Reservoir(30)
    reservoir.add(_stream(12, 1), seeded(0, 1, 31))
    assert len(reservoir) == 12 and reservoir.data.user.tolist() == list(range(12))


def test_replay_weights_follow_the_rank_rule():
    scores = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.1])
    ranks = torch.tensor([4.0, 1.0, 3.0, 2.0, 5.0])  # 1 = highest score
    assert torch.allclose(replay_weights(scores), torch.exp(ranks / 5).double())
    # low-scored positives are replayed most, up to e times as often as the best-scored one
    draws = torch.multinomial(replay_weights(scores), 20_000, replacement=True, generator=torch.Generator()
                              .manual_seed(0))
    freq = torch.bincount(draws, minlength=5).double() / 20_000
    assert torch.allclose(freq, torch.exp(ranks / 5).double() / torch.exp(ranks / 5).sum(), atol=0.01)


def test_spmf_replays_a_label_balanced_sample_of_the_past():
    periods = _periods()
    updater = PeriodUpdater("spmf", CFG)
    for p in range(1, 7):
        updater.step(p, periods[p])
    spmf = updater.method
    first_update = len(periods[CFG.protocol.pretrain_periods + 1])
    assert spmf.reservoir.capacity == round(0.1 * CFG.protocol.pretrain_periods * first_update)
    data = encode_period(periods[7], updater.vocabs, 7, 30)
    replay = spmf.replay_sample(data, updater.vocabs.item_categories.table)
    past = spmf.reservoir.data
    assert len(replay) == min(len(past), math.ceil(0.5 * len(data)))
    share = float(past.label.mean())
    assert float(replay.label.mean()) == pytest.approx(share, abs=1.5 / len(replay) + 1e-9)


# -- IncCTR ----------------------------------------------------------------------------------------------
def test_distillation_loss_equals_its_formula():
    vocabs, data = _encoded()
    batch = BatchMaker(vocabs.item_categories.table, vocabs.sizes(), torch.device("cpu")).batch(data, slice(0, 64))
    student, teacher = init_params(vocabs.sizes(), seed=1), init_params(vocabs.sizes(), seed=2)
    p, q, y = torch.sigmoid(logits(student, batch)), torch.sigmoid(logits(teacher, batch)), batch.label
    hard = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    soft = -(q * torch.log(p) + (1 - q) * torch.log(1 - p)).mean()
    got = distillation_loss(student, batch, teacher, weight=0.2)
    assert got.item() == pytest.approx((0.8 * hard + 0.2 * soft).item(), abs=1e-6)
    assert distillation_loss(student, batch, teacher, weight=0.0).item() == pytest.approx(loss(student, batch).item())


def test_distillation_pulls_towards_the_teacher():
    vocabs, data = _encoded()
    cats, cfg = vocabs.item_categories.table, RunConfig().train
    start = init_params(vocabs.sizes(), seed=0)
    plain = train_base(start, data, cats, cfg, seed=0, epochs=3)
    again = train_base(start, data, cats, cfg, seed=0, epochs=3, objective=lambda pr, b: loss(pr, b))
    assert all(torch.equal(plain[n], again[n]) for n in plain)  # the objective hook changes nothing by itself
    taught = train_base(start, data, cats, cfg, seed=0, epochs=3,
                        objective=lambda pr, b: distillation_loss(pr, b, start, weight=0.9))
    gap = {name: float(np.abs(predict(m, data, cats) - predict(start, data, cats)).mean())
           for name, m in (("plain", plain), ("taught", taught))}
    assert gap["taught"] < gap["plain"]


# -- SML -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "mf"])
def test_sml_transfer_shapes_and_gradient_flow(kind):
    vocabs, data = _encoded()
    cats = vocabs.item_categories.table
    previous = (init_mf_params if kind == "mf" else init_params)(vocabs.sizes(), seed=0)
    trained = train_base(previous, data, cats, RunConfig().train, seed=0, epochs=2)  # every tensor non-zero
    transfer = Transfer(previous, gen=torch.Generator().manual_seed(0))
    fused = transfer.fuse(previous, trained)
    assert {n: t.shape for n, t in fused.items()} == {n: t.shape for n, t in previous.items()}
    assert all(torch.allclose(t, trained[n], rtol=1e-6, atol=1e-9) for n, t in fused.items())  # starts as IU
    batch = BatchMaker(cats, vocabs.sizes(), torch.device("cpu")).batch(data, slice(0, 128))
    rows, local = compact_batch(batch)
    optimiser = torch.optim.Adam(transfer.parameters(), lr=1e-3)
    for _ in range(2):  # after one step every filter reaches the output
        optimiser.zero_grad()
        gathered = transfer.fuse(previous, trained, rows)
        loss_rows = loss(gathered, local)
        loss_rows.backward()
        if _ == 0:
            optimiser.step()
    assert gathered["user_emb"].shape == (len(rows["user_emb"]), previous["user_emb"].shape[1])
    full = transfer.fuse(previous, trained)
    torch.testing.assert_close(gathered["item_emb"], full["item_emb"][rows["item_emb"]])
    assert loss_rows.item() == pytest.approx(loss(full, batch).item(), abs=1e-6)
    for name, param in transfer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_sml_with_a_frozen_transfer_is_iu(monkeypatch):
    periods = _periods()
    monkeypatch.setattr(sml_module, "TRANSFER_LR", 0.0)
    sml, iu = PeriodUpdater("sml", CFG), PeriodUpdater("iu", CFG)
    for p in range(1, 8):
        a, b = sml.step(p, periods[p]), iu.step(p, periods[p])
    assert a.metrics["auc"] == pytest.approx(b.metrics["auc"], abs=1e-6)
    assert sml.method.meta_steps > 0


def test_sml_trains_the_transfer_then_fuses_the_new_pair():
    periods = _periods()
    updater = PeriodUpdater("sml", CFG)
    for p in range(1, 6):
        updater.step(p, periods[p])
    method: Sml = updater.method
    served_before = {n: t.clone() for n, t in method.base.items()}
    transfer_before = {n: t.clone() for n, t in method.transfer.state_dict().items()}
    updater.step(6, periods[6])
    assert any(not torch.equal(transfer_before[n], t) for n, t in method.transfer.state_dict().items())
    # the new pair is (the model served before, that model fine-tuned on D_6), fused by the updated transfer
    for name, old in served_before.items():
        assert torch.equal(method.previous[name][: old.shape[0]], old)
    assert not torch.equal(method.previous["mlp.0.weight"], method.trained["mlp.0.weight"])
    with torch.no_grad():
        fused = method.transfer.fuse(method.previous, method.trained)
    assert all(torch.equal(fused[n], method.base[n]) for n in fused)


# -- matrix factorisation --------------------------------------------------------------------------------
def test_mf_scores_equal_the_dot_product_plus_biases():
    vocabs, data = _encoded()
    params = init_mf_params(vocabs.sizes(), seed=0)
    params["mf.bias"] = torch.tensor([0.3])
    batch = BatchMaker(vocabs.item_categories.table, vocabs.sizes(), torch.device("cpu")).batch(data, slice(0, 20))
    got = logits(params, batch)  # the model-kind dispatch
    assert torch.equal(got, mf_logits(params, batch))
    for b in range(20):
        u, i = params["user_emb"][data.user[b]], params["item_emb"][data.item[b]]
        assert got[b].item() == pytest.approx(float(u[:8] @ i[:8] + u[8] + i[8] + 0.3), abs=1e-6)


def test_mf_trains_and_predicts_through_the_generic_path():
    vocabs, data = _encoded()
    cats = vocabs.item_categories.table
    params = init_mf_params(vocabs.sizes(), seed=0)
    trained = train_base(params, data, cats, RunConfig().train, seed=0, epochs=5)
    assert set(trained) == {"user_emb", "item_emb", "mf.bias"}
    probs = predict(trained, data, cats)
    labels = data.label.numpy()
    before = F.binary_cross_entropy(torch.from_numpy(predict(params, data, cats)), torch.from_numpy(labels).double())
    after = F.binary_cross_entropy(torch.from_numpy(probs), torch.from_numpy(labels).double())
    assert after < before


# -- checkpoints and names -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["spmf", "incctr", "sml", "sml-mf", "mf"])
def test_checkpoint_resumes_exactly(method):
    periods = _periods()
    straight = PeriodUpdater(method, CFG)
    expected = [straight.step(p, periods[p]).metrics for p in range(1, 9)]
    first = PeriodUpdater(method, CFG)
    got = [first.step(p, periods[p]).metrics for p in range(1, 6)]
    tensors, info = first.state()
    resumed = PeriodUpdater.from_state({k: v.clone() for k, v in tensors.items()}, info)
    got += [resumed.step(p, periods[p]).metrics for p in range(6, 9)]
    for a, b in zip(got[3:], expected[3:], strict=True):
        assert a["auc"] == pytest.approx(b["auc"], abs=1e-6)
        assert a["logloss"] == pytest.approx(b["logloss"], abs=1e-6)


def test_all_expands_to_the_papers_table():
    assert parse_methods("all") == list(ALL_METHODS)
    assert ALL_METHODS == ("iu", "bu-3", "bu-5", "bu-7", "spmf", "incctr", "sml", "sml-mf", "asmg-linear",
                           "asmg-gru-single", "asmg-gru-multi")
    assert parse_methods("iu,all,mf")[-1] == "mf" and parse_methods("iu,all,mf").count("iu") == 1


def test_mf_methods_build_and_insist_on_an_mf_model():
    method = SmlMf(RunConfig(), torch.device("cpu"))
    sizes = {"user": 3, "item": 4, "category": 2}
    assert {n: tuple(t.shape) for n, t in method.initial_params(sizes, seed=0).items()} == {
        "user_emb": (3, 9), "item_emb": (4, 9), "mf.bias": (1,)}
    with pytest.raises(RuntimeError, match="initial_params"):
        method.start(init_params(sizes, seed=0))
