"""The coordinator: the ONE place that declares a period closed for all partitions.

It runs in every windowing worker as a thread consuming the watermarks topic, which has one partition,
in a consumer group of its own (``<app id>-coordinator``), so exactly one worker (the owner of that
partition) coordinates. It never commits offsets: whoever gets the partition reads every partition's
progress from the start of the topic (records are small and few) and continues from there.

Rule: period P is published (one record on the periods topic, key = P) when every partition of the
interactions topic has reported ``closed_through >= P`` and a watermark >= end(P), AND every
partition's samples file of P exists in the period store; periods are published in order, P after
P-1. Before its first publication after a (re)start or a rebalance, the coordinator reads the periods
topic to the end and continues after the highest period found there, so a crash between publishing
and remembering it never yields a second record for a period.

Partitions without events: a watermark only moves when something arrives on that partition, so a
partition that gets no events (a key space smaller than the partition count, the end of a finite
replay, a quiet night) would hold every period open forever. We do NOT guess from wall-clock idleness
(a replay runs at arbitrary speed, so idle time says nothing about event time). Instead producers send
an explicit in-band marker to EVERY partition: :func:`send_watermark` ("no event with ts < T will
follow", a heartbeat for live sources with idle partitions) or :func:`send_end_of_stream` (after a
finite replay; without a time it closes every fixed period). Markers travel in partition order after
the events, so they are sound: a partition can only pass a period after all its events before the
marker were processed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import MutableMapping
from typing import Any

from asmg.data.periods import PeriodScheme
from streams.wire.kafka_config import KafkaSettings
from streams.wire.period_store import PeriodStore
from streams.wire.records import (
    CONTROL_KEY,
    RecordError,
    RecordProducer,
    control_record,
    dumps,
    parse_period,
    parse_watermark,
    period_record,
    read_topic,
)
from streams.wire.settings import StreamSettings, period_scheme
from streams.wire.topics import TopicNames

log = logging.getLogger(__name__)


def published_through(kafka: KafkaSettings, topic: str) -> int:
    """The highest period already on the periods topic (0 when none)."""
    highest = 0
    for record in read_topic(kafka, topic):
        try:
            highest = max(highest, int(parse_period(record.value)["period"]))
        except (RecordError, TypeError, ValueError):
            continue
    return highest


class Coordinator:
    def __init__(self, scheme: PeriodScheme, store: PeriodStore, kafka: KafkaSettings, names: TopicNames,
                 partitions: int) -> None:
        self.scheme = scheme
        self.store = store
        self.kafka = kafka
        self.names = names
        self.partitions = partitions
        self.published: int | None = None  # None: not read from the periods topic yet
        self._producer: RecordProducer | None = None
        self.metrics = None  # streams/metrics.py CoordinatorMetrics, when the worker serves metrics

    def reset(self) -> None:
        """Ownership of the watermarks partition moved: forget what we knew."""
        self.published = None

    @staticmethod
    def merge(table: MutableMapping[str, Any], record: dict[str, Any]) -> None:
        """Keep each partition's furthest progress (watermark records may arrive twice or out of order)."""
        key = str(int(record["partition"]))
        old = table.get(key) or {"w": None, "c": 0}
        watermark = record.get("watermark")
        new = {"w": old["w"] if watermark is None else (watermark if old["w"] is None else max(old["w"], watermark)),
               "c": max(old["c"], int(record["closed_through"]))}
        if new != old:
            table[key] = new

    def passed(self, table: MutableMapping[str, Any], period: int) -> bool:
        end = self.scheme.end(period)
        for p in range(self.partitions):
            progress = table.get(str(p))
            if not progress or progress["c"] < period or progress["w"] is None or progress["w"] < end:
                return False
        return True

    def try_publish(self, table: MutableMapping[str, Any]) -> list[int]:
        """Publish every period, in order, that all partitions passed and whose files all exist."""
        if self.published is None:
            self.published = published_through(self.kafka, self.names.periods)
        done = []
        while True:
            period = self.published + 1
            if self.scheme.n_periods is not None and period > self.scheme.n_periods:
                break
            if not self.passed(table, period):
                break
            parts = self.store.describe(period, self.partitions)
            if parts is None:
                log.warning("period %d passed every partition's watermark but a samples file is missing "
                            "in %s; waiting", period, self.store.period_uri(period))
                break
            record = period_record(period, self.scheme.start(period), self.scheme.end(period),
                                   self.store.period_uri(period), parts)
            self._send(record)
            self.published = period
            done.append(period)
            log.info("period %d closed: %d samples", period, record["samples"], extra={"period": period})
            if self.metrics is not None:
                self.metrics.period_closed(record)
        return done

    def _send(self, record: dict[str, Any]) -> None:
        if self._producer is None:
            self._producer = RecordProducer(self.kafka)
        self._producer.send(self.names.periods, str(record["period"]).encode(), dumps(record))


class CoordinatorLoop:
    """The coordinator's thread in a windowing worker: watermark records in, period records out."""

    def __init__(self, settings: StreamSettings, kafka: KafkaSettings, names: TopicNames, partitions: int) -> None:
        self.settings = settings
        self.kafka = kafka
        self.names = names
        self.coordinator = Coordinator(period_scheme(settings), PeriodStore(settings.period_store),
                                       kafka, names, partitions)
        self.table: dict[str, Any] = {}
        self.owned = False
        self.retry_every = max(settings.watermark_interval, 2.0)

    def _on_assign(self, consumer, partitions) -> None:
        self.table.clear()  # read again from the start: offsets are never committed
        self.coordinator.reset()
        self.owned = any(tp.topic == self.names.watermarks for tp in partitions)
        log.info("coordinator: %s", "coordinating" if self.owned else "standing by")

    def _on_revoke(self, consumer, partitions) -> None:
        self.owned = False
        self.coordinator.reset()

    def run(self, stop: threading.Event) -> None:
        from confluent_kafka import Consumer, KafkaException

        app_id = self.settings.role_app_id("windowing")
        session_ms = int(self.settings.session_timeout * 1000)
        consumer = Consumer(self.kafka.confluent_config(
            group_id=f"{app_id}-coordinator", enable_auto_commit=False, logger_name=f"{__name__}.kafka",
            auto_offset_reset="earliest",
            isolation_level="read_committed", session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(500, session_ms // 6)))
        consumer.subscribe([self.names.watermarks], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        last_try = 0.0
        try:
            while not stop.is_set():
                changed = False
                first = consumer.poll(0.5)  # returns at the first record; the rest is taken without waiting
                for message in ([first] + consumer.consume(10_000, timeout=0)) if first is not None else []:
                    if message.error() is not None:
                        if message.error().fatal():
                            raise KafkaException(message.error())
                        log.warning("coordinator: consumer error %s", message.error())  # librdkafka retries
                        continue
                    changed |= self._merge(message.value())
                if self.owned and (changed or time.monotonic() - last_try >= self.retry_every):
                    last_try = time.monotonic()
                    try:
                        self.coordinator.try_publish(self.table)
                    except (KafkaException, RuntimeError, TimeoutError) as exc:
                        # the broker away (a restart, an outage): the record may or may not be written, so
                        # forget what was published and read the periods topic again before the next try
                        log.warning("coordinator: publishing failed (%s); trying again", exc)
                        self.coordinator.reset()
        finally:
            consumer.close()

    def _merge(self, raw: bytes | None) -> bool:
        try:
            record = parse_watermark(raw or b"")
        except RecordError as exc:
            log.warning("ignoring a watermark record: %s", exc)
            return False
        partition = int(record["partition"])
        if record["topic"] != self.names.interactions or not 0 <= partition < self.coordinator.partitions:
            return False
        self.coordinator.merge(self.table, record)
        if self.coordinator.metrics is not None:
            self.coordinator.metrics.watermark(record)
        return True


# --- markers (called by producers, tests and demos after a replay) ----------------------------------------


def _send_control(kafka: KafkaSettings, names: TopicNames, kind: str, ts: float | None, timeout: float) -> int:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(kafka.confluent_config()).list_topics(names.interactions, timeout=timeout)
    info = metadata.topics.get(names.interactions)
    if info is None or info.error is not None or not info.partitions:
        raise RuntimeError(f"topic {names.interactions} does not exist")
    producer = RecordProducer(kafka)
    value = dumps(control_record(kind, ts))
    for partition in sorted(info.partitions):
        producer.send(names.interactions, CONTROL_KEY, value, partition=partition, timeout=timeout)
    producer.close()
    return len(info.partitions)


def send_watermark(kafka: KafkaSettings, names: TopicNames, ts: float, timeout: float = 30.0) -> int:
    """Promise on every partition that no event with event time < ``ts`` will follow (idle partitions)."""
    return _send_control(kafka, names, "watermark", ts, timeout)


def send_end_of_stream(kafka: KafkaSettings, names: TopicNames, ts: float | None = None,
                       timeout: float = 30.0) -> int:
    """After a finite replay: close every period ending at or before ``ts`` (None: every fixed period)."""
    return _send_control(kafka, names, "end_of_stream", ts, timeout)
