"""The per-period update path: protocol order, checkpoints that resume exactly, method interface."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from asmg.artifacts import load_bundle, save_bundle
from asmg.config import MetaConfig, ProtocolConfig, RunConfig, TrainConfig
from asmg.data.periods import equal_count_bounds
from asmg.methods import make_method, parse_methods
from asmg.updater import PeriodUpdater
from tests.helpers import tiny_samples

CFG = RunConfig(train=TrainConfig(batch_size=128, pretrain_epochs=2), meta=MetaConfig(batch_size=128),
                protocol=ProtocolConfig(n_periods=8, pretrain_periods=3, first_test_period=6))


def _periods():
    samples = tiny_samples(n_events=4000)
    samples["period"] = equal_count_bounds(samples["ts"].to_numpy(), 8).assign(samples["ts"].to_numpy())
    return {int(p): f.reset_index(drop=True) for p, f in samples[samples.period > 0].groupby("period")}


@pytest.mark.parametrize("method", ["iu", "bu-2", "asmg-linear", "asmg-gru-multi", "asmg-gru-full"])
def test_checkpoint_resumes_exactly(method, tmp_path):
    periods = _periods()
    straight = PeriodUpdater(method, CFG)
    expected = [straight.step(p, periods[p]).metrics for p in range(1, 9)]
    first = PeriodUpdater(method, CFG)
    got = [first.step(p, periods[p]).metrics for p in range(1, 6)]
    tensors, info = first.state()
    save_bundle(str(tmp_path / "ckpt"), tensors, {"info": info})  # safetensors hands keys back re-ordered
    loaded, meta = load_bundle(str(tmp_path / "ckpt"))
    resumed = PeriodUpdater.from_state(loaded, meta["info"])
    got += [resumed.step(p, periods[p]).metrics for p in range(6, 9)]
    assert got[:3] == [None, None, None]  # pretraining periods have no served model yet
    for a, b in zip(got[3:], expected[3:], strict=True):
        assert a["auc"] == pytest.approx(b["auc"], abs=1e-6)
        assert a["logloss"] == pytest.approx(b["logloss"], abs=1e-6)


def test_periods_must_arrive_in_order():
    periods = _periods()
    updater = PeriodUpdater("iu", CFG)
    updater.step(1, periods[1])
    with pytest.raises(ValueError, match="must increase"):
        updater.step(1, periods[1])


def test_residual_generator_serves_iu_until_it_learns():
    periods = _periods()
    cfg = replace(CFG, meta=replace(CFG.meta, output="residual", lr=0.0))
    asmg, iu = PeriodUpdater("asmg-gru-multi", cfg), PeriodUpdater("iu", cfg)
    for p in range(1, 8):
        a, b = asmg.step(p, periods[p]), iu.step(p, periods[p])
    assert a.metrics["auc"] == pytest.approx(b.metrics["auc"], abs=1e-6)


def test_meta_training_changes_the_served_model():
    periods = _periods()
    asmg = PeriodUpdater("asmg-gru-multi", CFG)
    for p in range(1, 7):
        asmg.step(p, periods[p])
    served, base = asmg.serving(), asmg.method.incremental()
    assert not torch.allclose(served["mlp.0.weight"], base["mlp.0.weight"])
    # one Adam step per meta batch of the newest period, every epoch, for each period after pretraining
    meta = CFG.meta
    expected = sum(math.ceil(len(periods[p]) / meta.batch_size) * meta.epochs for p in range(4, 7))
    assert asmg.method.meta_steps == expected
    assert set(asmg.method.seconds) == {"meta_training", "base_update", "generation"}  # a record's phases


def test_new_ids_mid_stream_grow_every_model_in_the_window():
    periods = _periods()
    updater = PeriodUpdater("asmg-gru-multi", CFG)
    for p in range(1, 6):
        updater.step(p, periods[p])
    fresh = periods[6].copy()
    fresh.loc[:10, "user_id"] = 10_000 + np.arange(11)
    updater.step(6, fresh)
    n_users = len(updater.vocabs.users)
    assert all(m["user_emb"].shape[0] == n_users for m in updater.method.models)
    assert updater.method.hidden["user_emb"].shape[0] == n_users


def test_method_names_are_checked():
    assert parse_methods("iu, bu-3,asmg-gru-multi") == ["iu", "bu-3", "asmg-gru-multi"]
    with pytest.raises(ValueError, match="unknown method 'asmg-gru-fast'"):
        parse_methods("iu,asmg-gru-fast")
    assert make_method("asmg-gru-zero", CFG, torch.device("cpu")).name == "asmg-gru-zero"
