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


def test_progressive_pretraining_trains_on_each_period_as_it_arrives_and_resumes_exactly(tmp_path):
    """pretrain_mode "progressive": the pretrained model is the chain of per-period trainings (new rows start as the
    union pretraining starts them), not the union's; a checkpoint taken mid-pretraining resumes to the same model."""
    from asmg.batches import encode_period
    from asmg.train import train_base
    from asmg.vocab import Vocabularies

    periods = _periods()
    cfg = replace(CFG, train=replace(CFG.train, pretrain_mode="progressive"))
    straight = PeriodUpdater("iu", cfg)
    for p in (1, 2, 3):
        straight.step(p, periods[p])
    # the same chain by hand: train_base over each period from the model so far, the vocabulary as it grows
    vocabs, model = Vocabularies(), {}
    for p in (1, 2, 3):
        data = encode_period(periods[p], vocabs, p, cfg.protocol.history_len)
        initial = straight.method.initial_params(vocabs.sizes(), cfg.seed)
        for name, known in model.items():
            initial[name][: known.shape[0]] = known
        model = train_base(initial, data, vocabs.item_categories.table, cfg.train, cfg.seed,
                           epochs=cfg.train.pretrain_epochs)
    served = straight.method.incremental()
    for name, tensor in model.items():
        torch.testing.assert_close(served[name], tensor, rtol=0, atol=0)
    union = PeriodUpdater("iu", CFG)
    for p in (1, 2, 3):
        union.step(p, periods[p])
    assert not torch.equal(union.method.incremental()["item_emb"], served["item_emb"])  # not the paper's model

    first = PeriodUpdater("iu", cfg)
    for p in (1, 2):
        first.step(p, periods[p])
    assert first.pretrained and not first.pretrain_data  # the model so far is kept, not the periods
    tensors, info = first.state()
    save_bundle(str(tmp_path / "ckpt"), tensors, {"info": info})
    loaded, meta = load_bundle(str(tmp_path / "ckpt"))
    resumed = PeriodUpdater.from_state(loaded, meta["info"])
    resumed.step(3, periods[3])
    for name, tensor in served.items():
        torch.testing.assert_close(resumed.method.incremental()[name], tensor, rtol=0, atol=0)
    expected = straight.step(4, periods[4]).metrics
    assert resumed.step(4, periods[4]).metrics == expected


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


def test_pretrain_mode_is_one_flag_for_the_runner_and_the_trainer():
    from dataclasses import asdict

    from asmg.experiment import settings_line
    from asmg.flags import run_config
    from streams.trainer.agent import run_config as trainer_config
    from streams.wire.settings import SettingsError, StreamSettings

    assert run_config("ml-100k", preset="authors")[0].train.pretrain_mode == "union"  # the paper's
    assert run_config("someone-elses-log")[0].train.pretrain_mode == "union"  # auto: not chosen there
    assert run_config("ml-100k")[0].train.pretrain_mode == "progressive"  # chosen on its validation periods
    cfg, _ = run_config("ml-100k", preset="authors", pretrain_mode="progressive")
    assert cfg.train.pretrain_mode == "progressive"
    assert "to pretrain (progressive)" in settings_line({"train": asdict(cfg.train), "meta": asdict(cfg.meta)})
    with pytest.raises(ValueError, match="pretrain-mode"):
        run_config("ml-100k", pretrain_mode="sometimes")
    settings = StreamSettings.from_env({"ASMG_PRETRAIN_MODE": "progressive"})
    assert trainer_config(settings).train.pretrain_mode == "progressive"
    with pytest.raises(SettingsError, match="pretrain-mode"):
        trainer_config(StreamSettings.from_env({"ASMG_PRETRAIN_MODE": "sometimes"}))
