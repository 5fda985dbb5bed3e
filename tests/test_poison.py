"""Poison records never stop a role (issue 10, item 4), against the session broker.

Each test reproduced its failure on main before the fix: the windowing worker exited on a lone surrogate
or a 5,000-digit id (and again after every restart), and looped forever on a refused value too large for
its DLQ record; the scorer dropped the whole consumed batch of model records after a deeply nested one
and said ok on /healthz with no model; the trainer exited on every start on a period record whose part
could not be read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asmg.records import RecordError, parse_model_record
from streams.scorer.service import running
from streams.wire.period_store import PeriodStore
from streams.wire.records import RecordProducer, dumps, period_record, read_topic
from streams.wire.topics import ensure_topics
from tests.test_scorer import call, make_model, publish, publish_records, served_version, service_for
from tests.test_scorer import wait_for as wait_until
from tests.test_windowing import Worker, produce, stream_settings, wait_for, wait_records


def published_periods(kafka_settings, names) -> list[int]:
    """Periods of the valid model records (the topic also holds this test's poison)."""
    out = []
    for record in read_topic(kafka_settings, names.models):
        try:
            out.append(parse_model_record(record.value, record.key).period)
        except (RecordError, RecursionError, ValueError):  # the last two: main's parser let them escape
            continue
    return out


DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_BAD_UTF8 = b"\xff" * 900_000  # its DLQ record, escaped in full, would be ~3.6 MB: over the broker's limit


def _event(user: object, item: int, ts: int) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "ts": ts}).encode()


POISON = [
    (b'{"user_id": "\\ud800", "item_id": 1, "ts": 1500}', "lone surrogate"),
    (b'{"user_id": ' + b"9" * 5000 + b', "item_id": 1, "ts": 1500}', "digits"),
    (b'{"user_id": 1, "item_id": 1, "ts": 1500, "categories": ["\\udc00"]}', "lone surrogate"),
    (DEEP, "nested deeper"),
    (b"\xc3\x28 not utf-8", "not UTF-8"),
    (b'{"user_id": [1], "item_id": {"x": 1}, "ts": "soon"}', "user_id must be"),
    (HUGE_BAD_UTF8, "not UTF-8"),
]


@pytest.mark.timeout(150)
def test_windowing_worker_survives_poison_records(kafka_settings, topic_names, tmp_path: Path) -> None:
    """Poison between good events on one partition: every poison record reaches the DLQ with its reason (the
    huge one cut, with its length), the worker keeps running, and every good event lands in its period."""
    from streams.windowing.coordinator import send_end_of_stream

    bounds = [1000, 2000, 3000]
    settings = stream_settings(topic_names, tmp_path, period_bounds=json.dumps(bounds), partitions=1)
    ensure_topics(kafka_settings, topic_names, 1)
    good = [_event(1, 10, 1100), _event(2, 11, 1200), _event(1, 12, 2100), _event(3, 13, 2500)]
    records = [good[0], *(value for value, _ in POISON[:4]), good[1], *(value for value, _ in POISON[4:]),
               good[2], good[3]]
    produce(kafka_settings, topic_names.interactions, [(b"k", value) for value in records])
    send_end_of_stream(kafka_settings, topic_names)
    worker = Worker("windowing", settings, kafka_settings, tmp_path)
    try:
        periods = wait_records(kafka_settings, topic_names.periods, 2, 100, [worker], "both periods closed")
        dead = wait_records(kafka_settings, topic_names.dlq, len(POISON), 30, [worker], "every poison in the DLQ")
        assert worker.alive(), worker.tail()
    finally:
        worker.stop()
    assert [p["period"] for p in periods] == [1, 2] and [p["samples"] for p in periods] == [2, 2]
    dead.sort(key=lambda d: d["offset"])
    assert len(dead) == len(POISON)
    for record, (_, reason) in zip(dead, POISON, strict=True):
        assert reason in record["reason"], (record["reason"], reason)
    huge = dead[-1]
    assert huge["raw_bytes"] == len(HUGE_BAD_UTF8) and len(huge["raw"]) < 100_000


@pytest.mark.timeout(120)
def test_scorer_quarantines_bad_model_records_and_keeps_the_batch(kafka_settings, topic_names,
                                                                  tmp_path: Path) -> None:
    """A deeply nested and a 5,000-digit model record ahead of two valid versions in one consumed batch: both
    refused and counted, v2 served; /healthz is 503 until a model is served."""
    service = service_for(kafka_settings, topic_names, tmp_path, wait_models=0.5)
    v1, v2 = make_model(tmp_path, 1), make_model(tmp_path, 2)
    with running(service) as url:
        status, health = call(f"{url}/healthz")
        assert (status, health["status"]) == (503, "no model yet")
        publish(kafka_settings, topic_names.models, [
            (b"asmg", DEEP), (b"asmg", b'{"v": 1, "model": "asmg", "version": ' + b"7" * 5000 + b"}"),
            (b"asmg", b'{"v": 1, "model": "\\ud800"}'), (b"asmg", v1.to_json()), (b"asmg", v2.to_json())])
        wait_until(lambda: served_version(url) == 2, 60, "v2 served after the poison records")
        status, health = call(f"{url}/healthz")
        assert status == 200 and health["status"] == "ok"
        assert health["records_invalid"] == 3 and health["models_loaded"] >= 1
        publish_records(kafka_settings, topic_names, make_model(tmp_path, 3))
        wait_until(lambda: served_version(url) == 3, 60, "v3 served: the feed is still alive")


@pytest.mark.timeout(240)
def test_trainer_quarantines_an_unreadable_period_and_goes_on(kafka_settings, topic_names, tmp_path: Path) -> None:
    """Poison on the models topic when the trainer starts, a period whose part file was tampered with, and one
    whose part name points outside the store: the trainer stays up, writes both periods to the DLQ with the
    reason, and trains and publishes the periods after them."""
    from asmg.prepare import prepare_periods
    from tests.helpers import samples_table, tiny_log
    from tests.test_trainer import PROTOCOL, TRAIN

    settings = stream_settings(topic_names, tmp_path, **TRAIN)
    ensure_topics(kafka_settings, topic_names, 1)
    publish(kafka_settings, topic_names.models, [(b"asmg", DEEP), (b"asmg", b'{"version": ' + b"9" * 5000 + b"}")])
    prepared = prepare_periods(tiny_log(n_events=4000), PROTOCOL)
    store = PeriodStore(settings.period_store)
    producer = RecordProducer(kafka_settings)
    bounds = prepared.bounds.to_list()
    for period, frame in sorted(prepared.periods.items()):
        table = samples_table(frame.user_id.tolist(), frame.item_id.tolist(), frame.ts.tolist(), frame.label.tolist(),
                              [list(h) for h in frame.history], [list(c) for c in frame.categories], period)
        part = store.write_partition(period, 0, table)
        if period == 6:  # tampered after the record was made: the checksum no longer matches
            path = Path(store.uri, f"period-{period:06d}", part["file"])
            path.write_bytes(path.read_bytes()[:-8] + b"tampered")
        record = period_record(period, bounds[period - 1], bounds[period], store.period_uri(period), [part])
        if period == 7:  # a record naming a file outside the store: refused by the parser
            record["parts"][0]["file"] = "../../../../etc/passwd"
        producer.send(topic_names.periods, str(period).encode(), dumps(record))
    producer.close()
    worker = Worker("trainer", settings, kafka_settings, tmp_path)
    try:
        dead = wait_records(kafka_settings, topic_names.dlq, 2, 150, [worker], "periods 6 and 7 quarantined")
        wait_for(lambda: PROTOCOL.n_periods in published_periods(kafka_settings, topic_names), 150, [worker],
                 "the last period's model")
        assert worker.alive(), worker.tail()
    finally:
        worker.stop()
    reasons = {json.loads(d["raw"])["period"]: (d["reason"], d["detail"]) for d in dead}
    assert reasons[6][0] == "unreadable period" and "sha256" in reasons[6][1]
    assert reasons[7][0] == "invalid period record" and "part-NNNNN.parquet" in reasons[7][1]
    published = published_periods(kafka_settings, topic_names)
    assert 6 not in published and 7 not in published and PROTOCOL.n_periods in published
