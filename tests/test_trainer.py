"""The trainer role against the session broker: period records in, one model record per period out.

Period records are published directly here (samples from the offline ``prepare_periods`` written to a
period store), so these tests exercise the trainer alone: the same metrics as the offline runner,
resumption after crashes at every stage of a period, and never two records for one period.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from asmg.artifacts import load_model
from asmg.experiment import ExperimentSpec, run_method
from asmg.model import serving_copy
from asmg.prepare import PreparedPeriods, prepare_periods
from streams.trainer.agent import FAULT_ENV, FAULT_EXIT, run_config
from streams.wire.period_store import PeriodStore
from streams.wire.records import RecordProducer, dumps, period_record
from streams.wire.topics import ensure_topics
from tests.helpers import samples_table, tiny_log
from tests.test_windowing import PROTOCOL, Worker, read_json, stream_settings, wait_for, wait_records

TRAIN = dict(preset="authors", method="asmg-gru-multi", pretrain_periods=PROTOCOL.pretrain_periods,
             periods=PROTOCOL.n_periods, first_test_period=PROTOCOL.first_test_period, batch_size=128,
             pretrain_epochs=1, meta_batch_size=128, seed=0, device="cpu")
MODEL_PERIODS = list(range(PROTOCOL.pretrain_periods, PROTOCOL.n_periods + 1))  # the pretrained model first


def publish_periods(kafka_settings, names, store: PeriodStore, prepared: PreparedPeriods) -> None:
    producer = RecordProducer(kafka_settings)
    bounds = prepared.bounds.to_list()
    for period, frame in sorted(prepared.periods.items()):
        table = samples_table(frame.user_id.tolist(), frame.item_id.tolist(), frame.ts.tolist(), frame.label.tolist(),
                              [list(h) for h in frame.history], [list(c) for c in frame.categories], period)
        part = store.write_partition(period, 0, table)
        record = period_record(period, bounds[period - 1], bounds[period], store.period_uri(period), [part])
        producer.send(names.periods, str(period).encode(), dumps(record))
    producer.close()


def offline_metrics(settings, prepared: PreparedPeriods) -> dict[int, dict]:
    cfg = run_config(settings)
    spec = ExperimentSpec("tiny", [settings.method], [settings.seed], cfg)
    run = run_method(settings.method, settings.seed, prepared, spec)
    return {e["period"]: e for e in run["validation_periods"] + run["periods"]}


def assert_models_match(models: list[dict], expected: dict[int, dict]) -> None:
    """The pretrained model (untested: no metrics), then one record per later period with the offline metrics."""
    assert [m["period"] for m in models] == MODEL_PERIODS, "one record per period from the last pretraining one"
    assert [m["version"] for m in models] == list(range(1, len(MODEL_PERIODS) + 1))
    pretrained, *models = models
    assert pretrained["period"] == PROTOCOL.pretrain_periods and pretrained["pretrained"] is True
    assert pretrained["metrics"] is None and pretrained["shadow_metrics"] is None
    artifact = load_model(pretrained["uri"], pretrained["sha256"])
    assert (artifact.period, artifact.meta["metrics"]) == (PROTOCOL.pretrain_periods, None)
    shadow = serving_copy(artifact.shadow)  # the IU shadow is the same pretrained model
    assert all(torch.equal(artifact.serving[name], shadow[name]) for name in artifact.serving)
    assert not any(m.get("pretrained") for m in models)
    for model in models:
        want = expected[model["period"]]
        assert model["metrics"]["auc"] == pytest.approx(want["auc"], abs=1e-6), model["period"]
        assert model["metrics"]["logloss"] == pytest.approx(want["logloss"], abs=1e-6), model["period"]
        assert model["metrics"]["samples"] == want["samples"]
        assert model["shadow_metrics"] is not None and model["method"] == "asmg-gru-multi"


@pytest.fixture(scope="module")
def prepared() -> PreparedPeriods:
    return prepare_periods(tiny_log(n_events=4000), PROTOCOL)


@pytest.mark.timeout(180)
def test_trainer_worker_survives_a_crash(kafka_settings, topic_names, tmp_path: Path, prepared) -> None:
    """``asmg worker trainer`` dies right after checkpointing period 5 (before publishing its record);
    the restarted worker publishes period 5 from the checkpoint and goes on: the pretrained model, then one
    record per period, with the offline runner's metrics."""
    settings = stream_settings(topic_names, tmp_path, **TRAIN)
    ensure_topics(kafka_settings, topic_names, 1)
    publish_periods(kafka_settings, topic_names, PeriodStore(settings.period_store), prepared)
    workers = [Worker("trainer", settings, kafka_settings, tmp_path, **{FAULT_ENV: "after-checkpoint@5"})]
    try:
        expected = offline_metrics(settings, prepared)  # while the trainer works
        wait_for(lambda: not workers[0].alive(), 120, (), "the trainer to crash after checkpoint 5")
        assert workers[0].proc.returncode == FAULT_EXIT, workers[0].tail()
        assert [r["period"] for r in read_json(kafka_settings, topic_names.models)] == [PROTOCOL.pretrain_periods, 4]
        assert Path(settings.checkpoint_store, "asmg", "p000005", "manifest.json").exists()
        workers.append(Worker("trainer", settings, kafka_settings, tmp_path))
        wait_records(kafka_settings, topic_names.models, len(MODEL_PERIODS), 120, workers[1:])
        time.sleep(1.5)  # a duplicate would show up now
        models = read_json(kafka_settings, topic_names.models)
    finally:
        for worker in workers:
            worker.stop()
    assert_models_match(models, expected)
    last = models[-1]
    artifact = load_model(last["uri"], last["sha256"])  # the record's checksum covers the artifact
    assert artifact.period == PROTOCOL.n_periods and artifact.version == last["version"]
    assert last["uri"].endswith(f"/asmg/v{last['version']:06d}-p{last['period']:04d}")
    assert len(list(Path(settings.checkpoint_store, "asmg").iterdir())) == settings.keep_checkpoints


class Crash(Exception):
    pass


@pytest.mark.timeout(120)
def test_trainer_resumes_after_a_crash_at_every_stage(kafka_settings, topic_names, tmp_path: Path, prepared,
                                                      monkeypatch) -> None:
    """In-process trainers on the real topics: each one 'crashes' (an exception at a fault point) and a
    fresh one (nothing in memory) takes over from the models topic and the checkpoint store."""
    from streams.trainer import agent as trainer_module
    from streams.wire.records import parse_period, read_topic

    settings = stream_settings(topic_names, tmp_path, **TRAIN)
    ensure_topics(kafka_settings, topic_names, 1)
    publish_periods(kafka_settings, topic_names, PeriodStore(settings.period_store), prepared)
    records = [parse_period(r.value) for r in read_topic(kafka_settings, topic_names.periods)]
    fault = {"at": None}

    def crash(stage: str, period: int) -> None:
        if fault["at"] == f"{stage}@{period}":
            raise Crash(fault["at"])

    monkeypatch.setattr(trainer_module, "_fault", crash)
    # what Kafka redelivers after a crash: the records after the last committed offset; here the whole
    # topic each time (the worst case: the trainer must skip what it already did)
    for at in ("after-step@3", "after-checkpoint@3", "after-checkpoint@5", "after-step@6", "after-artifact@7",
               "before-step@8", "after-publish@8", None):
        fault["at"] = at
        trainer = trainer_module.Trainer(settings, topic_names, kafka_settings)
        try:
            for record in records:
                trainer.handle(record)
        except Crash:
            continue
        assert at is None, f"no crash at {at}"
    models = read_json(kafka_settings, topic_names.models)
    assert_models_match(models, offline_metrics(settings, prepared))
    artifacts = sorted(p.name for p in Path(settings.artifact_store, "asmg").iterdir())
    assert artifacts == [f"v{v:06d}-p{p:04d}" for v, p in enumerate(MODEL_PERIODS, start=1)]
