"""The serving guard (champion/challenger): it serves what its record chose, never peeks, and the
offline simulation used to choose its settings is the same rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from asmg.config import GuardConfig, RunConfig
from asmg.data.synthetic import synthetic_log
from asmg.methods.guard import GuardedMethod, Record, choose_champion
from asmg.prepare import prepare_periods
from asmg.tuning import simulate_guard
from asmg.updater import PeriodUpdater

CFG = RunConfig(protocol=replace(RunConfig().protocol, n_periods=10, pretrain_periods=3, first_test_period=8))


@pytest.fixture(scope="module")
def periods():
    log = synthetic_log(n_users=120, n_items=80, n_categories=5, n_periods=10, events_per_period=250,
                        implicit=False, seed=3)
    return prepare_periods(log, CFG.protocol).periods


def walk(periods, cfg=CFG, change=None):
    """Run the guard over every period; ``change`` = (period, frame) replaces that period's samples."""
    updater = PeriodUpdater("asmg-guarded", cfg)
    results = []
    for period in sorted(periods):
        frame = periods[period] if change is None or change[0] != period else change[1]
        results.append(updater.step(period, frame, with_shadow=True))
    return updater, results


def test_served_model_is_the_one_chosen_before_the_period_arrived(periods):
    _, results = walk(periods)
    updated = [r for r in results if r.candidates is not None]
    assert len(updated) >= 5
    for before, now in zip(updated, updated[1:], strict=False):
        served = before.candidates["served"]  # chosen after period t-1
        assert now.metrics["auc"] == pytest.approx(now.candidates["candidates"][served]["auc"], abs=1e-12)


def test_choice_for_a_period_does_not_depend_on_that_period(periods):
    target = 7
    shuffled = periods[target].copy()
    shuffled["label"] = np.random.default_rng(0).permutation(shuffled["label"].to_numpy())
    _, plain = walk(periods)
    _, changed = walk(periods, change=(target, shuffled))
    served_for = {r.period + 1: r.candidates["served"] for r in plain if r.candidates}
    served_for_changed = {r.period + 1: r.candidates["served"] for r in changed if r.candidates}
    for period in served_for:
        if period <= target:
            assert served_for[period] == served_for_changed[period], period
    # and the changed period does reach the record afterwards (the test could see a difference)
    tested_plain = next(r for r in plain if r.period == target).candidates["candidates"]
    tested_changed = next(r for r in changed if r.period == target).candidates["candidates"]
    assert tested_plain["iu"]["auc"] != tested_changed["iu"]["auc"]


def test_iu_candidate_is_the_asmg_base_model(periods):
    updater, results = walk(periods)
    method = updater.method
    assert isinstance(method, GuardedMethod)
    asmg = method.members["asmg-gru-multi"]
    iu_view = method.views["iu"]()
    for name, tensor in asmg.incremental().items():
        if name not in ("user_emb", "item_emb"):  # serving copies replace row 0 with the mean row
            assert torch.equal(iu_view[name], tensor)
    shadow = [r.shadow["auc"] for r in results if r.candidates]
    tested_iu = [r.candidates["candidates"]["iu"]["auc"] for r in results if r.candidates]
    assert shadow == pytest.approx(tested_iu, abs=1e-12)


def test_simulation_equals_the_method(periods):
    """simulate_guard (used to choose decay and margin) must replay exactly what GuardedMethod does."""
    cfg = replace(CFG, guard=GuardConfig(decay=0.5, margin=0.0))
    _, results = walk(periods, cfg)
    rows = [r for r in results if r.candidates]
    aucs = {n: [r.candidates["candidates"][n]["auc"] for r in rows] for n in cfg.guard.candidates}
    simulated = simulate_guard(aucs, cfg.guard.decay, cfg.guard.margin)
    assert simulated == pytest.approx([r.metrics["auc"] for r in rows], abs=1e-12)


def test_margin_stops_flapping_and_a_clear_lead_switches():
    records = {"asmg": Record(), "iu": Record()}
    records["asmg"].add({"auc": 0.700}, 0.5)
    records["iu"].add({"auc": 0.7005}, 0.5)
    assert choose_champion(records, "asmg", margin=0.001) == "asmg"
    assert choose_champion(records, "asmg", margin=0.0) == "iu"
    records["iu"].add({"auc": 0.75}, 0.5)
    assert choose_champion(records, "asmg", margin=0.001) == "iu"


def test_record_weights_recent_periods_by_decay():
    record = Record()
    for auc in (0.6, 0.8):
        record.add({"auc": auc}, 0.25)
    assert record.score == pytest.approx(0.25 * 0.6 + 0.75 * 0.8)
    record.add({"auc": float("nan")}, 0.25)  # a period with one class only leaves the score alone
    assert record.score == pytest.approx(0.25 * 0.6 + 0.75 * 0.8)


def test_guard_checkpoint_round_trip_continues_identically(periods):
    order = sorted(periods)
    updater = PeriodUpdater("asmg-guarded", CFG)
    for period in order[:6]:
        updater.step(period, periods[period])
    tensors, info = updater.state()
    restored = PeriodUpdater.from_state(tensors, info)
    for period in order[6:]:
        a, b = updater.step(period, periods[period]), restored.step(period, periods[period])
        assert a.metrics == b.metrics and a.candidates == b.candidates


def test_model_record_carries_the_guard_fields_and_refuses_bad_ones():
    from asmg.records import ModelRecord, RecordError, parse_model_record

    record = ModelRecord(model="asmg", version=3, period=12, method="asmg-guarded", uri="runs/x", sha256="a" * 64,
                         metrics={"auc": 0.7}, candidate="iu",
                         candidates={"asmg-gru-multi": {"auc": 0.69, "score": 0.695},
                                     "iu": {"auc": 0.71, "score": 0.7}})
    parsed = parse_model_record(record.to_json())
    assert parsed.candidate == "iu" and parsed.candidates == record.candidates
    assert "candidate" not in ModelRecord(model="asmg", version=1, period=1, method="iu", uri="u",
                                          sha256="a" * 64).to_dict()
    for bad in ({"candidates": []}, {"candidates": {"iu": 0.7}}, {"candidates": {"iu": {"auc": "high"}}},
                {"candidate": ""}):
        with pytest.raises(RecordError, match="candidate"):
            parse_model_record({**record.to_dict(), **bad})


def test_trainer_metrics_show_every_candidate_and_the_served_one():
    from prometheus_client import CollectorRegistry

    from streams.metrics import TrainerMetrics

    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry, "asmg")
    metrics.published({"model": "asmg", "version": 2, "period": 11, "metrics": {"auc": 0.7},
                       "shadow_metrics": {"auc": 0.71}, "candidate": "iu",
                       "candidates": {"asmg-gru-multi": {"auc": 0.70, "score": 0.70},
                                      "iu": {"auc": 0.71, "score": 0.705}}})

    def value(name: str, candidate: str) -> float | None:
        return registry.get_sample_value(name, {"model": "asmg", "candidate": candidate})

    assert value("asmg_trainer_candidate_auc", "asmg-gru-multi") == 0.70
    assert value("asmg_trainer_candidate_score", "iu") == 0.705
    assert value("asmg_trainer_served_candidate", "iu") == 1.0
    assert value("asmg_trainer_served_candidate", "asmg-gru-multi") == 0.0


def test_experiment_table_shows_the_guards_candidates_as_rows(tmp_path):
    from asmg.experiment import ExperimentSpec, markdown_table, run_experiment

    log = synthetic_log(n_users=120, n_items=80, n_categories=5, n_periods=10, events_per_period=250,
                        implicit=False, seed=3)
    data = prepare_periods(log, CFG.protocol)
    results = run_experiment(data, ExperimentSpec("tiny", ["iu", "asmg-gru-multi", "asmg-guarded"], [0], CFG),
                             out=tmp_path, show_progress=False)
    summary = results["summary"]
    # the guard's candidates are the very models the separate runs train: same test AUCs
    assert summary["asmg-guarded/iu"]["auc_mean"] == pytest.approx(summary["iu"]["auc_mean"], abs=1e-12)
    assert summary["asmg-guarded/asmg-gru-multi"]["auc_mean"] == pytest.approx(
        summary["asmg-gru-multi"]["auc_mean"], abs=1e-12)
    assert "| asmg-guarded/iu |" in markdown_table(results)
    assert (tmp_path / "auc_by_period.png").is_file()
