"""The trainer role against the session broker: period records in, one model record per period out.

Period records are published directly here (samples from the offline ``prepare_periods`` written to a
period store), so these tests exercise the trainer alone. Every crash is a real death of an
``asmg worker trainer`` process (the faust agent, redelivery by Kafka from the last committed offset): at
each stage of a period (``ASMG_TRAINER_FAULT``), and half way through writing an artifact or a checkpoint
file (``ASMG_WRITE_FAULT``, a SIGKILL). After the last restart the models topic holds exactly one record per
period, each pointing at an artifact that matches its checksum and holds the tensors of the offline run.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from asmg.artifacts import WRITE_FAULT_ENV, load_model
from asmg.config import RunConfig
from asmg.experiment import ExperimentSpec, run_method
from asmg.model import Params, serving_copy
from asmg.prepare import PreparedPeriods, prepare_periods
from asmg.presets import preset
from asmg.updater import PeriodUpdater
from streams.trainer.agent import FAULT_ENV, FAULT_EXIT
from streams.wire.period_store import PeriodStore
from streams.wire.records import RecordProducer, dumps, period_record
from streams.wire.topics import ensure_topics
from tests.helpers import samples_table, tiny_log
from tests.test_windowing import (
    PROTOCOL,
    Worker,
    read_json,
    stream_settings,
    wait_consumed,
    wait_for,
    wait_records,
)

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


# --- the offline side ---------------------------------------------------------------------------------------


def offline_config(train: dict[str, Any]) -> RunConfig:
    """The run's configuration built here from the preset and ``train`` (the trainer's settings), not through
    the trainer's own ``run_config``: a setting the trainer drops or misreads shows up as another model."""
    cfg, _ = preset(train["preset"])
    return replace(cfg, seed=train["seed"], device=train["device"],
                   train=replace(cfg.train, batch_size=train["batch_size"], pretrain_epochs=train["pretrain_epochs"]),
                   meta=replace(cfg.meta, batch_size=train["meta_batch_size"]),
                   protocol=replace(cfg.protocol, n_periods=train["periods"],
                                    pretrain_periods=train["pretrain_periods"],
                                    first_test_period=train["first_test_period"]))


@dataclass
class OfflineModel:
    metrics: dict[str, Any] | None  # the offline runner's (``asmg experiment``) for this period
    shadow_metrics: dict[str, float] | None
    serving: Params
    shadow: Params


def offline_reference(prepared: PreparedPeriods, train: dict[str, Any] = TRAIN) -> dict[int, OfflineModel]:
    """Per period from the last pretraining one: the offline runner's metrics, and the models (served and IU
    shadow) of the same updates stepped here, every period trained as the trainer does."""
    cfg = offline_config(train)
    method, seed = train["method"], train["seed"]
    run = run_method(method, seed, prepared, ExperimentSpec("tiny", [method], [seed], cfg))
    metrics = {e["period"]: e for e in run["validation_periods"] + run["periods"]}
    updater = PeriodUpdater(method, cfg)
    out = {}
    for period in sorted(prepared.periods):
        result = updater.step(period, prepared.periods[period], train=True, with_shadow=True)
        if period >= train["pretrain_periods"]:
            if result.metrics is not None:  # the runner and this stepping agree before anything is compared
                assert result.metrics["auc"] == pytest.approx(metrics[period]["auc"], abs=1e-12)
            out[period] = OfflineModel(metrics.get(period), result.shadow,
                                       {k: v.detach().clone() for k, v in updater.serving().items()},
                                       {k: v.detach().clone() for k, v in updater.method.incremental().items()})
    return out


def assert_same_tensors(got: Params, want: Params, what: str) -> None:
    assert got.keys() == want.keys(), what
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), f"{what}: {name} differs from the offline run " \
                                               f"(max abs diff {(got[name] - tensor).abs().max():.3g})"


def assert_models_match(models: list[dict], expected: dict[int, OfflineModel]) -> None:
    """The pretrained model (untested: no metrics), then one record per later period with the offline
    metrics and shadow metrics; every record's artifact matches its checksum and holds the offline tensors."""
    assert [m["period"] for m in models] == MODEL_PERIODS, "one record per period from the last pretraining one"
    assert [m["version"] for m in models] == list(range(1, len(MODEL_PERIODS) + 1))
    pretrained = models[0]
    assert pretrained["period"] == PROTOCOL.pretrain_periods and pretrained["pretrained"] is True
    assert pretrained["metrics"] is None and pretrained["shadow_metrics"] is None
    assert not any(m.get("pretrained") for m in models[1:])
    for model in models:
        want = expected[model["period"]]
        artifact = load_model(model["uri"], model["sha256"])  # the record's checksum covers the artifact
        assert (artifact.period, artifact.version) == (model["period"], model["version"])
        assert model["uri"].endswith(f"/asmg/v{model['version']:06d}-p{model['period']:04d}")
        assert_same_tensors(artifact.serving, want.serving, f"served model of period {model['period']}")
        assert_same_tensors(artifact.shadow, want.shadow, f"IU shadow of period {model['period']}")
        if model is pretrained:
            assert artifact.meta["metrics"] is None
            shadow = serving_copy(artifact.shadow)  # the IU shadow is the same pretrained model
            assert all(torch.equal(artifact.serving[name], shadow[name]) for name in artifact.serving)
            continue
        assert model["method"] == "asmg-gru-multi"
        for key in ("auc", "logloss"):
            assert model["metrics"][key] == pytest.approx(want.metrics[key], abs=1e-6), (model["period"], key)
            assert model["shadow_metrics"][key] == pytest.approx(want.shadow_metrics[key], abs=1e-6), \
                (model["period"], key)
        assert model["metrics"]["samples"] == want.metrics["samples"]
        assert artifact.meta["metrics"] == model["metrics"]


@pytest.fixture(scope="module")
def prepared() -> PreparedPeriods:
    return prepare_periods(tiny_log(n_events=4000), PROTOCOL)


@pytest.fixture(scope="module")
def reference(prepared) -> dict[int, OfflineModel]:
    return offline_reference(prepared)


def models_now(kafka_settings, names) -> list[int]:
    return [r["period"] for r in read_json(kafka_settings, names.models)]


def run_crashing_trainers(kafka_settings, names, settings, tmp_path: Path, faults: list[tuple[dict, int, list[int],
                          Any]]) -> list[dict]:
    """One real trainer process per fault (env, expected exit code, the model periods published by then, a
    check of the files it left); then a clean one. Returns the models topic once that one is done."""
    workers: list[Worker] = []
    try:
        for env, exit_code, published, check in faults:
            worker = Worker("trainer", settings, kafka_settings, tmp_path, **env)
            workers.append(worker)
            wait_for(lambda w=worker: not w.alive(), 150, (), f"the trainer to die at {env}")
            assert worker.proc.returncode == exit_code, (env, worker.tail())
            assert models_now(kafka_settings, names) == published, (env, worker.tail())
            if check is not None:
                check()
        workers.append(Worker("trainer", settings, kafka_settings, tmp_path))
        wait_records(kafka_settings, names.models, len(MODEL_PERIODS), 150, workers[-1:])
        wait_consumed(kafka_settings, settings.role_app_id("trainer"), names.periods, 120, workers[-1:])
        return read_json(kafka_settings, names.models)
    finally:
        for worker in workers:
            worker.stop()


@pytest.mark.timeout(480)
def test_trainer_killed_at_every_stage(kafka_settings, topic_names, tmp_path: Path, prepared, reference) -> None:
    """``asmg worker trainer`` exits at each stage of a period in turn (os._exit: nothing flushed, nothing
    cleaned up); each restart resumes from the models topic and the newest checkpoint, and the last one
    leaves one record per period with the offline models and metrics."""
    settings = stream_settings(topic_names, tmp_path, **TRAIN)
    ensure_topics(kafka_settings, topic_names, 1)
    publish_periods(kafka_settings, topic_names, PeriodStore(settings.period_store), prepared)
    checkpoint = Path(settings.checkpoint_store, "asmg")
    faults = [
        ({FAULT_ENV: "after-step@3"}, FAULT_EXIT, [], None),
        ({FAULT_ENV: "after-artifact@3"}, FAULT_EXIT, [], lambda: is_missing(checkpoint / "p000003")),
        ({FAULT_ENV: "after-checkpoint@4"}, FAULT_EXIT, [3],
         lambda: is_present(checkpoint / "p000004" / "manifest.json")),
        ({FAULT_ENV: "before-step@6"}, FAULT_EXIT, [3, 4, 5], None),  # 4 published from its checkpoint
        ({FAULT_ENV: "after-publish@7"}, FAULT_EXIT, [3, 4, 5, 6, 7], None),
    ]
    models = run_crashing_trainers(kafka_settings, topic_names, settings, tmp_path, faults)
    assert_models_match(models, reference)
    assert len(list(checkpoint.iterdir())) == settings.keep_checkpoints


def is_missing(path: Path) -> None:
    assert not path.exists(), f"{path} was written before the crash"


def is_present(path: Path) -> None:
    assert path.is_file(), f"{path} is missing after the crash"


def half_written(folder: Path, name: str) -> None:
    """``folder`` holds a partial ``name``.tmp and no ``name``: the process died while writing it."""
    partial = folder / f"{name}.tmp"
    assert partial.is_file() and partial.stat().st_size > 0, f"no partial {partial}"
    assert not (folder / name).exists(), f"{folder / name} exists although its writer was killed"


@pytest.mark.timeout(480)
def test_trainer_killed_while_writing_artifacts_and_checkpoints(kafka_settings, topic_names, tmp_path: Path,
                                                                prepared, reference) -> None:
    """SIGKILL half way through writing an artifact's tensors, a checkpoint's manifest, a checkpoint's
    tensors and an artifact's manifest: no half-written file is ever read (every record's artifact matches
    its checksum and holds the offline tensors) and every period is published exactly once."""
    settings = stream_settings(topic_names, tmp_path, **TRAIN)
    ensure_topics(kafka_settings, topic_names, 1)
    publish_periods(kafka_settings, topic_names, PeriodStore(settings.period_store), prepared)
    models, checkpoints = Path(settings.artifact_store, "asmg"), Path(settings.checkpoint_store, "asmg")
    killed = -signal.SIGKILL
    faults = [
        ({WRITE_FAULT_ENV: "v000001-p0003/tensors.safetensors"}, killed, [],
         lambda: half_written(models / "v000001-p0003", "tensors.safetensors")),
        ({WRITE_FAULT_ENV: "p000003/manifest.json"}, killed, [],
         lambda: half_written(checkpoints / "p000003", "manifest.json")),
        ({WRITE_FAULT_ENV: "p000005/tensors.safetensors"}, killed, [3, 4],
         lambda: half_written(checkpoints / "p000005", "tensors.safetensors")),
        ({WRITE_FAULT_ENV: "v000005-p0007/manifest.json"}, killed, [3, 4, 5, 6],
         lambda: half_written(models / "v000005-p0007", "manifest.json")),
    ]
    records = run_crashing_trainers(kafka_settings, topic_names, settings, tmp_path, faults)
    assert_models_match(records, reference)
    assert len(list(checkpoints.glob("p*/manifest.json"))) == settings.keep_checkpoints
