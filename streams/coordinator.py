"""The coordinator: the ONE place that declares a period closed for all partitions.

It runs inside the windowing app as an agent on the watermarks topic, which has one partition, so in
a group of windowing workers exactly one (the owner of that partition) coordinates; if it dies, the
next owner takes over from the changelogged table of partition progress.

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

import asyncio
import logging
from collections.abc import MutableMapping
from typing import Any

from streams.kafka_config import KafkaSettings
from streams.period_store import PeriodStore
from streams.records import (
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
from streams.settings import StreamSettings
from streams.topics import TopicNames
from streams.windowing import PeriodScheme

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
        self.generation = 0
        self._lock = asyncio.Lock()
        self._producer: RecordProducer | None = None
        self.metrics = None  # streams/metrics.py CoordinatorMetrics, when the worker serves metrics

    def reset(self) -> None:
        """Ownership of the watermarks partition moved: forget what we knew, stop publishing."""
        self.published = None
        self.generation += 1

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

    async def try_publish(self, table: MutableMapping[str, Any]) -> list[int]:
        async with self._lock:
            generation = self.generation
            if self.published is None:
                published = await asyncio.to_thread(published_through, self.kafka, self.names.periods)
                if generation != self.generation:
                    return []
                self.published = published
            done = []
            while generation == self.generation:
                period = self.published + 1
                if self.scheme.n_periods is not None and period > self.scheme.n_periods:
                    break
                if not self.passed(table, period):
                    break
                parts = await asyncio.to_thread(self.store.describe, period, self.partitions)
                if parts is None:
                    log.warning("period %d passed every partition's watermark but a samples file is missing "
                                "in %s; waiting", period, self.store.period_uri(period))
                    break
                record = period_record(period, self.scheme.start(period), self.scheme.end(period),
                                       self.store.period_uri(period), parts)
                if generation != self.generation:  # revoked while reading the files: the new owner does it
                    break
                await asyncio.to_thread(self._send, record)
                if generation != self.generation:
                    break
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


def register(app, settings: StreamSettings, names: TopicNames, kafka: KafkaSettings, partitions: int) -> Coordinator:
    """Add the coordinator agent, its table and its retry timer to the windowing app."""
    from faust.types import TP

    from streams.app import fail_stop

    coordinator = Coordinator(PeriodScheme.from_settings(settings), PeriodStore(settings.period_store), kafka,
                              names, partitions)
    table = app.Table("coordinator", partitions=1)  # json keys and values
    topic = app.topic(names.watermarks, key_serializer="raw", value_serializer="raw")
    owned = TP(names.watermarks, 0)
    if getattr(app, "asmg_metrics", None) is not None:
        from streams.metrics import CoordinatorMetrics

        coordinator.metrics = app.asmg_metrics.coordinator = CoordinatorMetrics(app.asmg_metrics.registry, coordinator)

    @app.agent(topic, name=f"{settings.role_app_id('windowing')}-coordinator", concurrency=1)
    async def coordinate(stream):
        async for event in stream.events():
            try:
                record = parse_watermark(event.value)
            except RecordError as exc:
                log.warning("ignoring a watermark record: %s", exc)
                continue
            if record["topic"] != names.interactions or not 0 <= int(record["partition"]) < partitions:
                continue
            coordinator.merge(table, record)
            if coordinator.metrics is not None:
                coordinator.metrics.watermark(record)
            try:
                await coordinator.try_publish(table)
            except Exception as exc:  # fail-stop: the restarted coordinator reads the periods topic again
                fail_stop(exc, "coordinator")

    @app.timer(max(settings.watermark_interval, 2.0), name=f"{settings.role_app_id('windowing')}-coordinate")
    async def retry():
        """Publish what became publishable without a new watermark (files appearing late, a restart)."""
        if app.rebalancing or getattr(app, "in_recovery", False) or owned not in app.consumer.assignment():
            return
        try:
            await coordinator.try_publish(table)
        except Exception as exc:
            fail_stop(exc, "coordinator")

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked: set[TP], **kwargs) -> None:
        if owned in revoked:
            coordinator.reset()

    app.asmg_coordinator = (coordinate, retry, on_revoked)
    return coordinator


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
