"""The project's confluent-kafka producer: idempotent, acks=all, keyed by user id, tuned for throughput.

Why one place: every path into Kafka (replay, synthetic stream, HTTP ingestion) must give the same
guarantees: no duplicates from retries (idempotence), nothing acknowledged before all in-sync replicas
have it (acks=all), and a user's events in one partition in order (key = user id, murmur2 like the Java
and aiokafka clients, so faust agents see the same partitioning).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streams.wire.kafka_config import KafkaSettings

THROUGHPUT = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    "partitioner": "murmur2_random",
    "delivery.report.only.error": True,  # a Python callback per acknowledged record costs ~1 us: failures only
}
LOW_LATENCY = {**THROUGHPUT, "linger.ms": 2, "delivery.report.only.error": False}  # ingest answers per record


def make_producer(settings: KafkaSettings, low_latency: bool = False, **overrides: Any) -> Producer:
    """A producer for ``settings``; ``low_latency`` for request/response paths (HTTP ingestion)."""
    conf = settings.confluent_config()
    conf.update(LOW_LATENCY if low_latency else THROUGHPUT)
    conf.update({key if key.endswith("_cb") else key.replace("_", "."): value  # error_cb etc. keep their names
                 for key, value in overrides.items()})
    return Producer(conf)


@dataclass
class DeliveryTracker:
    """Counts failed deliveries and keeps the first few errors (delivery callbacks run inside poll/flush;
    THROUGHPUT producers report failures only, so ``delivered`` counts nothing there)."""

    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.delivered += 1
            return
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(f"{message.topic()}: {error.str()}")


class DeliveryFailed(RuntimeError):
    """Kafka did not acknowledge some records."""


def produce_all(producer: Producer, topic: str, keys: Sequence[bytes | None], values: Sequence[bytes],
                on_delivery: DeliveryTracker) -> None:
    """Queue records, waiting on the local queue (not failing) when it is full."""
    produce = producer.produce
    for key, value in zip(keys, values, strict=True):
        while True:
            try:
                produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
    producer.poll(0)


def flush_or_raise(producer: Producer, tracker: DeliveryTracker, timeout: float = 60.0) -> None:
    """Wait until every queued record is acknowledged; raise if any failed or the wait timed out."""
    deadline = time.monotonic() + timeout
    remaining = producer.flush(timeout)
    while remaining and time.monotonic() < deadline:
        remaining = producer.flush(max(0.1, deadline - time.monotonic()))
    if remaining:
        raise DeliveryFailed(f"{remaining} records still unacknowledged after {timeout:.0f}s "
                             "(is Kafka reachable?)")
    if tracker.failed:
        raise DeliveryFailed(f"{tracker.failed} records were not delivered: {'; '.join(tracker.errors)}")
