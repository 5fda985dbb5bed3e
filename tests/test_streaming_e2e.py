"""End to end on the session broker: replay a slice of MovieLens-100K through Kafka, window it into
periods, train as it closes them, and get exactly the offline runner's models and metrics.

``asmg replay``'s producer -> interactions (3 partitions) -> ``asmg worker windowing`` (samples, DLQ,
watermarks, period records) -> ``asmg worker trainer`` (PeriodUpdater, artifacts, model records).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asmg.data.log import make_log
from asmg.data.movielens import load_ml100k
from asmg.prepare import prepare_periods
from producers.producer import make_producer
from producers.replay import replay_log
from streams.windowing.coordinator import send_end_of_stream
from streams.wire.period_store import read_period_record
from streams.wire.topics import ensure_topics
from tests.helpers import require_ml100k
from tests.test_trainer import MODEL_PERIODS, TRAIN, assert_models_match, offline_reference
from tests.test_windowing import (
    PROTOCOL,
    Worker,
    assert_same_samples,
    read_json,
    stream_settings,
    wait_consumed,
    wait_records,
)

EVENTS = 8000


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_replayed_ml100k_gives_the_offline_models(kafka_settings, topic_names, tmp_path: Path) -> None:
    full = load_ml100k(require_ml100k())
    log = make_log("ml-100k-head", full.events.iloc[:EVENTS], full.item_categories, implicit=False)
    prepared = prepare_periods(log, PROTOCOL)
    train = {**TRAIN, "batch_size": 256, "meta_batch_size": 256}
    settings = stream_settings(topic_names, tmp_path, period_bounds=json.dumps(prepared.bounds.to_list()), **train)
    ensure_topics(kafka_settings, topic_names, settings.partitions)
    workers = [Worker("windowing", settings, kafka_settings, tmp_path),
               Worker("trainer", settings, kafka_settings, tmp_path)]
    try:
        replay_log(log, make_producer(kafka_settings), topic_names.interactions)
        send_end_of_stream(kafka_settings, topic_names)  # the replay is finite: close the last period
        expected = offline_reference(prepared, train)  # in this process, while the workers run
        periods = wait_records(kafka_settings, topic_names.periods, PROTOCOL.n_periods, 150, workers)
        wait_records(kafka_settings, topic_names.models, len(MODEL_PERIODS), 150, workers)
        # both workers handled every record they were given: whatever they would publish is on the topics
        wait_consumed(kafka_settings, settings.role_app_id("windowing"), topic_names.interactions, 60, workers)
        wait_consumed(kafka_settings, settings.role_app_id("trainer"), topic_names.periods, 60, workers)
        models = read_json(kafka_settings, topic_names.models)
        periods = read_json(kafka_settings, topic_names.periods)
        dead = read_json(kafka_settings, topic_names.dlq)
    finally:
        for worker in workers:
            worker.stop()

    # one record per closed period, holding exactly the offline samples
    assert [p["period"] for p in periods] == list(range(1, PROTOCOL.n_periods + 1))
    for record in periods:
        assert record["samples"] == len(prepared.periods[record["period"]])
        assert_same_samples(read_period_record(record), prepared.periods[record["period"]])
    # the events after the last period's end (the equal-count remainder) are refused, nothing else
    assert {d["reason"] for d in dead} <= {"outside periods"}
    assert len(dead) == EVENTS - sum(len(f) for f in prepared.periods.values())
    # one model per period after pretraining: the offline runner's metrics and shadow metrics, and the
    # offline run's tensors (served model and IU shadow) in artifacts that match the records' checksums
    assert_models_match(models, expected)
