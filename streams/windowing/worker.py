"""The windowing worker: Kafka around :class:`streams.windowing.core.WindowingCore`, one transaction per batch.

Loop: take up to ``batch_max`` records of the interactions topic (confluent-kafka, consumer group = the
app id, ``read_committed``), let the core process each partition's share, then in ONE Kafka transaction
produce the state changes (compacted topic ``<app id>-state``, partition = the interactions partition),
the DLQ records, the watermark records, and the consumer offsets (``send_offsets_to_transaction`` with
the group metadata, so a worker the group has moved on from cannot commit: KIP-447). A crash at any point
loses the batch in flight and nothing else: the next owner restores the partition's state from the state
topic (:meth:`WindowingCore.restore`) and the records after the committed offset come again. Period files
are written before the commit; their names and contents depend only on the records, so a rewrite after a
crash yields the same bytes.

Why not a faust agent: faust hands records to agents one at a time, and its per-record path alone costs
~180 µs here (a trivial agent tops out at ~5.6k records/s on this machine; bench/README.md), far below
the 50k events/s the role must sustain on 2 cores. Batching around librdkafka and Arrow removes that
ceiling, and Kafka transactions give exactly-once state where faust's changelog is at-least-once.

The transactional id is ``<app id>-<worker name>``; the default name is the host name plus the first free
slot number under ``worker_dir`` (a lock file), so a worker restarted on the same host takes its
predecessor's id and aborts whatever transaction that one left open, while two workers on one host get
different ids.
"""

from __future__ import annotations

import fcntl
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from streams.windowing.core import Batch, WindowingCore
from streams.wire.kafka_config import KafkaSettings
from streams.wire.period_store import PeriodStore
from streams.wire.records import dumps
from streams.wire.settings import StreamSettings
from streams.wire.topics import TopicNames, ensure_state_topic
from streams.worker import fail_stop

if TYPE_CHECKING:
    from streams.metrics import WindowingMetrics

log = logging.getLogger(__name__)
KAFKA_LOG = f"{__name__}.kafka"  # librdkafka's own lines go through logging (JSON logs too)

TRANSACTION_TIMEOUT_MS = 30_000
RESTORE_TIMEOUT = 120.0


def claim_worker_name(folder: Path) -> tuple[str, IO[str]]:
    """The host name plus the lowest slot number no live process on this host holds (the lock dies with
    the process, so a restarted worker gets its predecessor's slot back)."""
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for slot in range(1024):
        handle = open(folder / f"{host}-{slot}.lock", "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return f"{host}-{slot}", handle
    raise RuntimeError(f"no free worker slot under {folder}")


def read_state(kafka: KafkaSettings, topic: str, partitions: list[int],
               timeout: float = RESTORE_TIMEOUT) -> dict[int, dict[str, bytes]]:
    """The committed state records of ``partitions`` (key -> latest value; deletions applied)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    out: dict[int, dict[str, bytes]] = {p: {} for p in partitions}
    if not partitions:
        return out
    consumer = Consumer(kafka.confluent_config(
        group_id=f"{topic}-restore", enable_auto_commit=False, logger_name=KAFKA_LOG,
        enable_partition_eof=True, fetch_wait_max_ms=10,  # an empty partition's EOF comes without the 0.5 s wait
        isolation_level="read_committed", auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024))
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        todo = set(partitions)
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {topic} partitions {sorted(todo)} took over {timeout:.0f}s")
            first = consumer.poll(0.5)  # consume() would wait its whole timeout for a full batch
            for message in [first, *consumer.consume(10_000, timeout=0)] if first is not None else []:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        todo.discard(message.partition())
                        continue
                    raise KafkaException(error)
                state = out[message.partition()]
                key = message.key().decode()
                if message.value() is None:
                    state.pop(key, None)
                else:
                    state[key] = message.value()
    finally:
        consumer.close()
    return out


class WindowingWorker:
    def __init__(self, settings: StreamSettings, kafka: KafkaSettings, names: TopicNames, partitions: int,
                 metrics: WindowingMetrics | None = None) -> None:
        self.settings = settings
        self.kafka = kafka
        self.names = names
        self.partitions = partitions
        self.core = WindowingCore.from_settings(settings)
        self.store = PeriodStore(settings.period_store)
        self.app_id = settings.role_app_id("windowing")
        self.state_topic = f"{self.app_id}-state"
        self.metrics = metrics
        self.published: dict[int, tuple] = {}
        self.last_progress = 0.0
        self.batches = 0
        self._consumer = None
        self._producer = None

    # -- set-up ---------------------------------------------------------------------------------------------
    def _clients(self, worker_name: str) -> None:
        from confluent_kafka import Consumer, Producer

        ensure_state_topic(self.kafka, self.state_topic, self.partitions)
        self._producer = Producer(self.kafka.confluent_config(
            transactional_id=f"{self.app_id}-{worker_name}", logger_name=KAFKA_LOG, enable_idempotence=True, acks="all",
            linger_ms=5,
            compression_type="lz4", transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            queue_buffering_max_messages=1_000_000, message_max_bytes=8 * 1024 * 1024))
        self._producer.init_transactions(60)
        session_ms = int(self.settings.session_timeout * 1000)
        self._consumer = Consumer(self.kafka.confluent_config(
            group_id=self.app_id, enable_auto_commit=False, logger_name=KAFKA_LOG,
            auto_offset_reset="earliest",
            isolation_level="read_committed", session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(500, session_ms // 6), max_poll_interval_ms=600_000,
            partition_assignment_strategy="range", fetch_max_bytes=64 * 1024 * 1024))
        self._consumer.subscribe([self.names.interactions], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def _on_assign(self, consumer, partitions) -> None:
        mine = {tp.partition for tp in partitions if tp.topic == self.names.interactions}
        self.core.forget({p for p in self.core.partitions if p not in mine})  # they went to another worker
        new = sorted(p for p in mine if not self.core.owns(p))
        started = time.monotonic()
        for partition, state in read_state(self.kafka, self.state_topic, new).items():
            self.core.restore(partition, state)
        for p in set(self.published) - mine:
            del self.published[p]
        log.info("assigned partitions %s of %s (restored %s in %.2fs)", sorted(mine), self.names.interactions, new,
                 time.monotonic() - started)

    def _on_revoke(self, consumer, partitions) -> None:
        """Eager rebalancing: keep the memory until the new assignment says which partitions stay ours
        (nobody else processes a partition between its revocation and its return to us)."""
        log.info("partitions revoked: %s", sorted(tp.partition for tp in partitions))

    def _on_lost(self, consumer, partitions) -> None:
        self.core.forget({tp.partition for tp in partitions})

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, worker_name: str) -> None:
        self._clients(worker_name)
        log.info("windowing worker %s-%s: batches of up to %d records", self.app_id, worker_name,
                 self.settings.batch_max)
        try:
            while not stop.is_set():
                messages = self._consumer.consume(self.settings.batch_max, timeout=0.2)
                self.step(messages)
        finally:
            self._consumer.close()
            self._producer.flush(10)

    def step(self, messages: list) -> None:
        """One batch: process, then commit everything it produced with the offsets, or nothing."""
        from confluent_kafka import KafkaException

        by_partition: dict[int, list] = {}
        for message in messages:  # the one loop over single records: keep it to the bare calls
            if message.error() is not None:
                raise KafkaException(message.error())
            by_partition.setdefault(message.partition(), []).append(message)
        grouped = {p: ([m.offset() for m in ms], [m.value() for m in ms])
                   for p, ms in by_partition.items() if self.core.owns(p)}
        started = time.monotonic()
        due = started - self.last_progress >= self.settings.watermark_interval
        if not grouped and not due:
            return
        outcomes = [(partition, self._process(partition, *grouped[partition])) for partition in sorted(grouped)]
        # the transaction spans only the sending: its timeout must not depend on how long processing took
        self._producer.begin_transaction()
        try:
            commit = self._produce(outcomes, due)
            if commit:
                self._producer.send_offsets_to_transaction(commit, self._consumer.consumer_group_metadata(), 60)
            self._producer.commit_transaction(60)
        except KafkaException as exc:
            self._recover(exc)
            return
        self.batches += 1
        if self.metrics is not None:
            for partition, batch in outcomes:
                self.metrics.observe(partition, batch)
            if grouped:
                self.metrics.batch_seconds.observe(time.monotonic() - started)

    def _process(self, partition: int, offsets: list[int], values: list[bytes | None]) -> Batch:
        try:
            return self.core.process(partition, offsets, values, self.store, self.names.interactions)
        except Exception as exc:  # a bug, or the period store failing: the restarted worker redoes the batch
            fail_stop(exc, f"windowing, {self.names.interactions}[{partition}]@{offsets[0]}..{offsets[-1]}")
            raise  # not reached: fail_stop exits

    def _produce(self, outcomes: list[tuple[int, Batch]], due: bool) -> list:
        """Send a processed batch's records (inside the open transaction); the offsets to commit with them."""
        from confluent_kafka import TopicPartition

        commit = []
        for partition, batch in outcomes:
            for key, value in batch.writes:
                self._send(self.state_topic, key.encode(), value, partition)
            for key, value in batch.dead:
                self._send(self.names.dlq, key, value)
            if batch.closed or batch.control:
                self._watermark(partition)
            if batch.last_offset is not None:
                commit.append(TopicPartition(self.names.interactions, partition, batch.last_offset + 1))
        if due:
            self.last_progress = time.monotonic()
            for partition in self.core.partitions:
                progress = self.core.progress(partition)
                if progress.offset < 0 and progress.marker is None:
                    continue
                if self.published.get(partition) != self._progress_key(partition):
                    self._watermark(partition)
        return commit

    def _progress_key(self, partition: int) -> tuple:
        progress = self.core.progress(partition)
        return progress.closed, progress.watermark(self.core.lateness), progress.late, progress.refused

    def _watermark(self, partition: int) -> None:
        record = self.core.watermark_of(self.names.interactions, partition)
        self._send(self.names.watermarks, str(partition).encode(), dumps(record))
        self.published[partition] = self._progress_key(partition)

    def _send(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> None:
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, **kwargs)
                return
            except BufferError:  # the local queue is full: let librdkafka send some
                self._producer.poll(0.05)

    def _recover(self, exc: Exception) -> None:
        """The transaction failed: abort it, forget what the batch changed, and go back to the last commit."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        error = exc.args[0] if exc.args else None
        if error is None or not error.txn_requires_abort():
            fail_stop(exc, "windowing transaction")  # fenced or fatal: a newer instance owns our id
        log.warning("windowing transaction aborted (%s); going back to the last committed batch", error)
        self._producer.abort_transaction(60)
        assignment = [tp for tp in self._consumer.assignment() if tp.topic == self.names.interactions]
        committed = self._consumer.committed(assignment, timeout=60)
        for tp in committed:
            start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, start))
        self.core.forget()
        self.published.clear()
        for partition, state in read_state(self.kafka, self.state_topic, [tp.partition for tp in assignment]).items():
            self.core.restore(partition, state)


def run_windowing(settings: StreamSettings, kafka: KafkaSettings) -> None:
    """``asmg worker windowing``: the windowing loop and the coordinator, until SIGTERM/SIGINT."""
    from streams.windowing.coordinator import CoordinatorLoop
    from streams.wire.topics import ensure_topics, interactions_partitions

    names = TopicNames(settings.topic_prefix)
    ensure_topics(kafka, names, settings.partitions)
    partitions = interactions_partitions(kafka, names)
    worker = WindowingWorker(settings, kafka, names, partitions)
    coordinator = CoordinatorLoop(settings, kafka, names, partitions)
    if settings.metrics_port is not None:
        from streams.metrics import CoordinatorMetrics, RoleMetrics, WindowingMetrics

        metrics = RoleMetrics("windowing")
        metrics.windowing = WindowingMetrics(metrics.registry, worker.core)
        metrics.coordinator = CoordinatorMetrics(metrics.registry, coordinator.coordinator)
        coordinator.coordinator.metrics = metrics.coordinator
        metrics.watch_lag(kafka, {worker.app_id: [names.interactions]})
        worker.metrics = metrics.windowing
        metrics.serve(settings.metrics_port, settings.metrics_host)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    folder = Path(settings.worker_dir) / worker.app_id / "slots"
    name, lock = (settings.worker_name, None) if settings.worker_name else claim_worker_name(folder)
    thread = threading.Thread(target=_guarded, args=(coordinator.run, stop, "coordinator"), name="coordinator",
                              daemon=True)
    thread.start()
    try:
        worker.run(stop, name)
    finally:
        stop.set()
        thread.join(15)
        if lock is not None:
            lock.close()
    log.info("windowing worker stopped after %d batches", worker.batches)


def _guarded(target: Callable[[threading.Event], None], stop: threading.Event, where: str) -> None:
    try:
        target(stop)
    except Exception as exc:
        fail_stop(exc, where)

