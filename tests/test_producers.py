"""Producers against a real broker: dataset replay and the HTTP ingestion endpoint."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from asmg.data.movielens import load_ml100k
from asmg.events import events_from_log
from streams.wire.kafka_config import KafkaSettings
from streams.wire.topics import TopicNames, ensure_topics
from tests.helpers import require_ml100k

pytestmark = pytest.mark.kafka


def consume(settings: KafkaSettings, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    """Read ``topic`` from the beginning until ``expected`` records arrived (or the timeout)."""
    from confluent_kafka import Consumer

    consumer = Consumer(settings.confluent_config(group_id=f"test-{uuid.uuid4().hex}", auto_offset_reset="earliest",
                                                  enable_auto_commit=False))
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None:
                    records.append(message)
        extra_until = time.monotonic() + 1.0  # anything beyond `expected` would be a duplicate
        while time.monotonic() < extra_until:
            records += [m for m in consumer.consume(num_messages=1000, timeout=0.2) if m.error() is None]
    finally:
        consumer.close()
    return records


def test_replay_ml100k_slice_round_trips(kafka_settings: KafkaSettings, topic_names: TopicNames) -> None:
    from asmg_cli.main import app

    ml100k = require_ml100k()
    n = 3000
    result = CliRunner().invoke(app, [
        "replay", "--dataset", "ml-100k", "--data-dir", str(ml100k), "--limit", str(n), "--max",
        "--bootstrap-servers", kafka_settings.bootstrap_servers, "--topic-prefix", topic_names.prefix,
        "--partitions", "3",
    ])
    assert result.exit_code == 0, result.output
    assert f"{n:,} events in" in result.output and "events/s" in result.output

    records = consume(kafka_settings, topic_names.interactions, n)
    assert len(records) == n
    expected = {e["event_id"]: e for e in events_from_log(load_ml100k(ml100k), stop=n)}
    got = {}
    for record in records:
        event = json.loads(record.value())
        assert record.key() == str(event["user_id"]).encode()
        got[event["event_id"]] = event
    assert got == expected
    by_user: dict[bytes, set[int]] = {}
    for record in records:
        by_user.setdefault(record.key(), set()).add(record.partition())
    assert all(len(partitions) == 1 for partitions in by_user.values())  # a user's events share a partition
    assert len({r.partition() for r in records}) == 3


class ClockedProducer:
    """A real producer on a simulated clock: ``poll(timeout)`` advances the clock by the timeout instead of
    waiting, and every ``produce`` notes the clock. Pacing is then checked exactly, not against a wall clock."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.now = 0.0
        self.sent: list[tuple[float, bytes]] = []

    def monotonic(self) -> float:
        return self.now

    def produce(self, topic: str, value: bytes, **kwargs: Any) -> None:
        self.producer.produce(topic, value=value, **kwargs)
        self.sent.append((self.now, value))

    def poll(self, timeout: float = 0) -> int:
        self.now += max(0.0, timeout)
        return self.producer.poll(0)

    def flush(self, timeout: float) -> int:
        return self.producer.flush(timeout)


def test_replay_rate_paces_the_stream(kafka_settings: KafkaSettings, topic_names: TopicNames, monkeypatch) -> None:
    import types

    from producers import replay
    from producers.producer import make_producer
    from producers.replay import Pacing, replay_log
    from tests.helpers import tiny_log

    ensure_topics(kafka_settings, topic_names, partitions=1)
    log = tiny_log(n_events=400)
    clocked = ClockedProducer(make_producer(kafka_settings))
    monkeypatch.setattr(replay, "time", types.SimpleNamespace(monotonic=clocked.monotonic))
    rate, n = 500.0, 300
    result = replay_log(log, clocked, topic_names.interactions, Pacing(rate=rate), 0, n)
    assert result.events == n
    # event i goes out once its due time i / rate has come, and no later than one poll (50 ms) after it
    assert len(clocked.sent) == n
    for i, (at, _) in enumerate(clocked.sent):
        assert i / rate <= at <= i / rate + 0.05 + 1e-9, (i, at)
    assert result.seconds == pytest.approx((n - 1) / rate, abs=0.05)  # simulated seconds
    # and every one of them reached the topic, in order (one partition)
    records = consume(kafka_settings, topic_names.interactions, n)
    assert [r.value() for r in records] == [value for _, value in clocked.sent]
    # event-time pacing: due at (ts - ts0) / speedup
    ts = np.array([100, 100, 130, 400])
    assert Pacing(speedup=10).offsets(np.arange(4), ts, 100).tolist() == [0.0, 0.0, 3.0, 30.0]
    assert Pacing().offsets(np.arange(4), ts, 100) is None
    with pytest.raises(ValueError, match="either a rate or a speedup"):
        Pacing(rate=1, speedup=2)


async def _post(client: Any, body: bytes | str) -> tuple[int, dict[str, Any]]:
    response = await client.post("/events", data=body, headers={"Content-Type": "application/x-ndjson"})
    return response.status, await response.json()


def test_ingest_endpoint(kafka_settings: KafkaSettings, topic_names: TopicNames) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from producers.ingest import make_app

    ensure_topics(kafka_settings, topic_names, partitions=2)
    good = {"user_id": "alice", "item_id": 5, "ts": 1_700_000_000, "event_id": "ok-1"}

    async def scenario() -> dict[str, tuple[int, dict[str, Any]]]:
        async with TestClient(TestServer(make_app(kafka_settings, topic_names))) as client:
            health = await client.get("/healthz")
            return {
                "health": (health.status, await health.json()),
                "single": await _post(client, json.dumps(good)),
                "mixed": await _post(client, "\n".join([
                    json.dumps({**good, "event_id": "ok-2", "user_id": 2}),
                    "{broken",
                    "",
                    json.dumps({"user_id": 3, "ts": 1}),
                    json.dumps({**good, "event_id": "ok-3", "label": 0}),
                ])),
                "all_invalid": await _post(client, json.dumps({**good, "ts": "yesterday"})),
                "invalid_json": await _post(client, "not json at all"),
                "empty": await _post(client, b""),
                "array": await _post(client, json.dumps([{**good, "event_id": "ok-4"}, {"user_id": 1}])),
            }

    answers = asyncio.run(scenario())
    assert answers["health"][0] == 200 and answers["health"][1]["status"] == "ok"
    assert answers["single"] == (202, {"accepted": 1, "refused": []})
    assert answers["mixed"] == (202, {"accepted": 2, "refused": [
        {"line": 2, "reason": "invalid JSON: Expecting property name enclosed in double quotes at column 2"},
        {"line": 4, "reason": "missing field item_id"},
    ]})
    status, body = answers["all_invalid"]
    assert status == 400 and body["accepted"] == 0
    assert body["refused"] == [{"line": 1, "reason": "ts must be a number of unix seconds, got 'yesterday'"}]
    assert answers["invalid_json"][0] == 400
    assert answers["invalid_json"][1]["refused"][0]["reason"].startswith("invalid JSON")
    assert answers["empty"] == (400, {"accepted": 0, "refused": [], "error": "empty body"})
    assert answers["array"] == (202, {"accepted": 1, "refused": [{"line": 2, "reason": "missing field item_id"}]})

    accepted = [json.loads(r.value()) for r in consume(kafka_settings, topic_names.interactions, 4)]
    assert sorted(e["event_id"] for e in accepted) == ["ok-1", "ok-2", "ok-3", "ok-4"]
    from asmg.events import stable_id

    alice = next(e for e in accepted if e["event_id"] == "ok-1")
    assert alice["user_id"] == stable_id("alice") and alice["label"] == 1

    dead = [json.loads(r.value()) for r in consume(kafka_settings, topic_names.dlq, 5)]
    assert len(dead) == 5
    reasons = {d["reason"] for d in dead}
    assert "missing field item_id" in reasons
    assert "ts must be a number of unix seconds, got 'yesterday'" in reasons
    broken = next(d for d in dead if d["raw"] == "{broken")
    assert broken["line"] == 2 and broken["reason"].startswith("invalid JSON")
