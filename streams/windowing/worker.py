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
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from streams.windowing.core import Batch, WindowingCore
from streams.wire.kafka_config import KafkaSettings
from streams.wire.period_store import BackgroundWriter, PeriodStore
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
CALL_TIMEOUT = 10.0  # seconds given to one transactional call (init, send offsets, commit, abort)
CALL_GRACE = 5.0  # past the call's own timeout: the call is stuck in librdkafka and given up
REINIT_EXIT = 75  # EX_TEMPFAIL: the producer could not be re-created; a supervisor restarts the worker
# the cyclic collector's default (a pass every 700 allocations) walks the users' histories (millions of
# objects, none in a cycle) again and again while a period closes: ~13% of the 1M-event bench's CPU
GC_THRESHOLDS = (100_000, 50, 100)
UNASSIGNED_NOTE_EVERY = 30.0  # seconds between the "no partition assigned" lines


class TransactionStuck(RuntimeError):
    """A transactional call did not return within its timeout plus a grace: librdkafka ignored the timeout
    (issue 10: send_offsets_to_transaction sat for good after a broker restart; librdkafka #5456 and #5511,
    open: its coordinator requests never check their deadline)."""


def bounded(what: str, call: Callable[..., object], *args: object, timeout: float = CALL_TIMEOUT,
            grace: float = CALL_GRACE) -> threading.Thread | None:
    """Run ``call(*args, timeout)`` with a deadline the library cannot ignore: in a helper thread, waited for at
    most ``timeout + grace`` seconds. Re-raises what the call raised; raises :class:`TransactionStuck` (its
    ``thread`` attribute holds the thread still inside the call) when it did not return."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call(*args, timeout)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=target, name=f"kafka-{what}", daemon=True)
    thread.start()
    thread.join(timeout + grace)
    if not outcome:
        stuck = TransactionStuck(f"{what} did not return within {timeout + grace:.0f}s")
        stuck.thread = thread  # type: ignore[attr-defined]
        raise stuck
    if outcome[0] is not None:
        raise outcome[0]
    return None


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
        deadline = time.monotonic() + timeout
        # the topic's leaders first: assigned without them, librdkafka retries its offset query only after a fixed
        # 500 ms ("no current leader for partition"), most of the time a restore of empty partitions took
        consumer.list_topics(topic, timeout=timeout)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        todo = set(partitions)
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
        self.writer = BackgroundWriter(PeriodStore(settings.period_store))  # closed periods' files, off the loop
        self.app_id = settings.role_app_id("windowing")
        self.state_topic = f"{self.app_id}-state"
        self.metrics = metrics
        self.published: dict[int, tuple] = {}
        self.last_progress = 0.0
        self.batches = 0
        self._consumer = None
        self._producer = None
        self._transactional_id = ""
        self._abandoned = 0  # producers given up (stuck or fatal) and replaced
        self._stop: threading.Event | None = None
        self._unassigned_since: float | None = time.monotonic()  # None while partitions are assigned
        self._next_unassigned_note = 0.0

    # -- set-up ---------------------------------------------------------------------------------------------
    def _clients(self, worker_name: str) -> None:
        from confluent_kafka import Consumer, Producer

        ensure_state_topic(self.kafka, self.state_topic, self.partitions)
        self._transactional_id = f"{self.app_id}-{worker_name}"
        self._new_producer(Producer)
        session_ms = int(self.settings.session_timeout * 1000)
        self._consumer = Consumer(self.kafka.confluent_config(
            group_id=self.app_id, enable_auto_commit=False, logger_name=KAFKA_LOG,
            auto_offset_reset="earliest",
            isolation_level="read_committed", session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(500, session_ms // 6), max_poll_interval_ms=600_000,
            partition_assignment_strategy="range", fetch_max_bytes=64 * 1024 * 1024))
        self._consumer.subscribe([self.names.interactions], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def _new_producer(self, producer_class=None) -> None:
        """A fresh transactional producer under our id; its init fences the previous one (of this process or a
        crashed predecessor) and aborts whatever transaction that left open. Retried while the error is
        retriable (the broker is away); a fatal error exits with :data:`REINIT_EXIT` for a supervisor."""
        if producer_class is None:
            from confluent_kafka import Producer as producer_class
        from confluent_kafka import KafkaException

        self._producer = None
        while True:
            self._stopping()
            producer = producer_class(self.kafka.confluent_config(
                transactional_id=self._transactional_id, logger_name=KAFKA_LOG, enable_idempotence=True, acks="all",
                linger_ms=5, compression_type="lz4", transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                queue_buffering_max_messages=1_000_000, message_max_bytes=8 * 1024 * 1024))
            try:
                bounded("init_transactions", producer.init_transactions, timeout=60)
                self._producer = producer
                return
            except TransactionStuck as exc:
                self._abandon(producer, exc.thread)  # type: ignore[attr-defined]
                log.warning("windowing: %s; trying a new producer", exc)
            except KafkaException as exc:
                error = exc.args[0]
                self._abandon(producer)
                if error.fatal() or not error.retriable():
                    log.critical("windowing: cannot initialise the transactional producer: %s", error)
                    _exit(REINIT_EXIT)
                log.warning("windowing: initialising the transactional producer failed (%s); retrying", error)

    def _abandon(self, producer, thread: threading.Thread | None = None) -> None:
        """Let go of a producer without ever blocking on it: librdkafka's destroy waits for its threads, and a
        thread of ours may still be inside one of its calls. Its last reference goes in a daemon thread
        (after ``thread`` left the call); its unsent records are purged (the transaction is aborted anyway)."""
        self._abandoned += 1

        def drop(producer=producer) -> None:
            if thread is not None:
                thread.join()
            try:
                producer.purge()
                producer.flush(0)
            except Exception:  # a fenced or fatal producer may refuse; it goes anyway
                pass
            del producer

        threading.Thread(target=drop, name="kafka-abandoned-producer", daemon=True).start()

    def _on_assign(self, consumer, partitions) -> None:
        mine = {tp.partition for tp in partitions if tp.topic == self.names.interactions}
        self.core.forget({p for p in self.core.partitions if p not in mine})  # they went to another worker
        new = sorted(p for p in mine if not self.core.owns(p))
        started = time.monotonic()
        for partition, state in read_state(self.kafka, self.state_topic, new).items():
            self.core.restore(partition, state)
        for p in set(self.published) - mine:
            del self.published[p]
        self._unassigned_since = None if mine else time.monotonic()
        log.info("assigned partitions %s of %s (restored %s in %.2fs)", sorted(mine), self.names.interactions, new,
                 time.monotonic() - started)

    def _on_revoke(self, consumer, partitions) -> None:
        """Eager rebalancing: keep the memory until the new assignment says which partitions stay ours
        (nobody else processes a partition between its revocation and its return to us)."""
        log.info("partitions revoked: %s", sorted(tp.partition for tp in partitions))
        self._unassigned_since = time.monotonic()

    def _on_lost(self, consumer, partitions) -> None:
        log.warning("partitions lost (the group session expired): %s", sorted(tp.partition for tp in partitions))
        self.core.forget({tp.partition for tp in partitions})
        self._unassigned_since = time.monotonic()

    def _say_if_unassigned(self, now: float) -> None:
        """Every :data:`UNASSIGNED_NOTE_EVERY` seconds without partitions, one line: a worker waiting on a
        rebalance (or a broker) says so, rather than going quiet."""
        since = self._unassigned_since
        if since is not None and now - since >= UNASSIGNED_NOTE_EVERY and now >= self._next_unassigned_note:
            self._next_unassigned_note = now + UNASSIGNED_NOTE_EVERY
            log.info("windowing: no partition of %s assigned for %.0fs (a rebalance in progress, the broker away, "
                     "or more workers than partitions)", self.names.interactions, now - since)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _stopping(self) -> None:
        """Within a retry loop: leave it when the worker is told to stop."""
        if self._stop is not None and self._stop.is_set():
            raise SystemExit(0)

    def run(self, stop: threading.Event, worker_name: str) -> None:
        self._stop = stop
        self._clients(worker_name)
        log.info("windowing worker %s-%s: batches of up to %d records", self.app_id, worker_name,
                 self.settings.batch_max)
        try:
            while not stop.is_set():
                messages = self._consumer.consume(self.settings.batch_max, timeout=0.2)
                self.step(messages)
                if not messages:
                    self._say_if_unassigned(time.monotonic())
        finally:
            self.writer.close()
            self._consumer.close()
            if self._producer is not None:
                self._producer.flush(10)

    def step(self, messages: list) -> None:
        """One batch: process, then commit everything it produced with the offsets, or nothing."""
        from confluent_kafka import KafkaException

        by_partition: dict[int, list] = {}
        for message in messages:  # the one loop over single records: keep it to the bare calls
            if message.error() is not None:
                if message.error().fatal():
                    raise KafkaException(message.error())
                log.warning("windowing: consumer error %s", message.error())  # e.g. a broker away; it retries
                continue
            by_partition.setdefault(message.partition(), []).append(message)
        grouped = {p: ([m.offset() for m in ms], [m.value() for m in ms])
                   for p, ms in by_partition.items() if self.core.owns(p)}
        started = time.monotonic()
        due = started - self.last_progress >= self.settings.watermark_interval
        if not grouped and not due:
            return
        outcomes = [(partition, self._process(partition, *grouped[partition])) for partition in sorted(grouped)]
        self._files_written(outcomes)
        # the transaction spans only the sending: its timeout must not depend on how long processing took
        try:
            self._producer.begin_transaction()
            commit = self._produce(outcomes, due)
            if commit:
                self._retrying("send_offsets_to_transaction", self._producer.send_offsets_to_transaction, commit,
                               self._consumer.consumer_group_metadata())
            self._retrying("commit_transaction", self._producer.commit_transaction)
        except (KafkaException, TransactionStuck) as exc:
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
            return self.core.process(partition, offsets, values, self.writer, self.names.interactions)
        except Exception as exc:  # a bug, or the period store failing: the restarted worker redoes the batch
            fail_stop(exc, f"windowing, {self.names.interactions}[{partition}]@{offsets[0]}..{offsets[-1]}")
            raise  # not reached: fail_stop exits

    def _files_written(self, outcomes: list[tuple[int, Batch]]) -> None:
        """Wait for the batch's period files (written while the next partitions were processed): the transaction
        that says their periods are closed must not commit before they are complete."""
        try:
            self.writer.wait()
        except Exception as exc:  # the period store failing: the restarted worker redoes the batch
            closed = sorted({period for _, batch in outcomes for period, _ in batch.closed})
            fail_stop(exc, f"windowing, writing the files of periods {closed}")
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

    def _retrying(self, what: str, call: Callable[..., object], *args: object) -> None:
        """A transactional call, bounded; again while its error is retriable (e.g. a timeout while the broker
        restarts: librdkafka keeps the request going), for at most :data:`TRANSACTION_TIMEOUT_MS`."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + TRANSACTION_TIMEOUT_MS / 1000
        while True:
            try:
                bounded(what, call, *args)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if (error.fatal() or error.txn_requires_abort() or not error.retriable()
                        or time.monotonic() > deadline):
                    raise
                log.warning("windowing: %s failed (%s); retrying", what, error)

    def _recover(self, exc: Exception) -> None:
        """The transaction failed: abort it (or, when it cannot be aborted, replace the producer), forget what
        the batch changed, and go back to the last commit, so the batch is done again, once."""
        from confluent_kafka import KafkaException

        error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        fresh = True  # a fatal or fenced error, a stuck call, or a timeout that aborting does not resolve
        if error is not None and error.txn_requires_abort() and not error.fatal():
            try:
                bounded("abort_transaction", self._producer.abort_transaction)
                fresh = False
            except TransactionStuck as stuck:
                self._abandon(self._producer, stuck.thread)  # type: ignore[attr-defined]
                self._producer = None
            except KafkaException as failed:
                log.warning("windowing: abort_transaction failed (%s)", failed.args[0] if failed.args else failed)
        elif isinstance(exc, TransactionStuck):
            self._abandon(self._producer, exc.thread)  # type: ignore[attr-defined]
            self._producer = None
        log.warning("windowing transaction failed (%s); %s and going back to the last committed batch",
                    error or exc, "re-creating the producer" if fresh else "aborted")
        if fresh:
            if self._producer is not None:
                self._abandon(self._producer)
            self._new_producer()
        self._rewind()

    def _rewind(self) -> None:
        """Seek every assigned partition to its committed offset and restore the state committed with it."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        deadline = time.monotonic() + 10 * RESTORE_TIMEOUT
        while True:
            self._stopping()
            assignment = [tp for tp in self._consumer.assignment() if tp.topic == self.names.interactions]
            try:
                committed = self._consumer.committed(assignment, timeout=CALL_TIMEOUT)
                for tp in committed:
                    start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                    self._consumer.seek(TopicPartition(tp.topic, tp.partition, start))
                states = read_state(self.kafka, self.state_topic, [tp.partition for tp in assignment])
                break
            except (KafkaException, TimeoutError) as exc:  # the broker is still away: try again
                if time.monotonic() > deadline:
                    log.critical("windowing: cannot go back to the last committed batch: %s", exc)
                    _exit(REINIT_EXIT)
                time.sleep(1.0)
                log.warning("windowing: cannot read the committed offsets and state yet (%s); retrying", exc)
        self.core.forget()
        self.published.clear()
        for partition, state in states.items():
            self.core.restore(partition, state)


def _exit(code: int) -> None:
    """Exit at once with ``code`` (logs flushed): what a supervisor restarts."""
    from asmg.logs import flush_native_stderr

    logging.shutdown()
    flush_native_stderr()
    os._exit(code)


def run_windowing(settings: StreamSettings, kafka: KafkaSettings) -> None:
    """``asmg worker windowing``: the windowing loop and the coordinator, until SIGTERM/SIGINT."""
    from streams.windowing.coordinator import CoordinatorLoop
    from streams.wire.topics import ensure_topics, interactions_partitions

    gc.set_threshold(*GC_THRESHOLDS)
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

