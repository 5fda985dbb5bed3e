"""JSON records the stream roles exchange on Kafka, plus the small Kafka helpers they share.

Schemas (v1; readers ignore unknown fields, refuse other versions):

- period closed (topic ``<prefix>periods``, key = period id as text)::

    {"v": 1, "period": 5, "start": 878000000, "end": 879000000, "samples": 3120,
     "uri": "runs/stream/periods/period-000005", "sha256": "<hex>", "partitions": 4,
     "parts": [{"partition": 0, "file": "part-00000.parquet", "rows": 800, "sha256": "<hex>"}, ...]}

  ``sha256`` covers the parts (:func:`combined_sha256`); every part's own sha256 covers its file's bytes.
- model version (topic ``<prefix>models``, key = model name): :mod:`asmg.records` (the library's, since
  ``asmg report`` reads it too).
- watermark (topic ``<prefix>watermarks``, key = partition)::

    {"v": 1, "topic": "asmg.interactions", "partition": 2, "watermark": 878000000, "max_ts": 878000000,
     "closed_through": 4, "late": 0, "refused": 1, "applied": 9000}

  ``closed_through``: every period <= it has its samples file written for this partition.
- dead letter (topic ``<prefix>dlq``, key = ``topic:partition:offset``, so a consumer can drop the
  duplicates a crash may cause)::

    {"v": 1, "reason": "late", "detail": "...", "raw": "<the record's value as text>",
     "topic": "asmg.interactions", "partition": 2, "offset": 1234}

- control (topic ``<prefix>interactions``, sent to EVERY partition, see :func:`control_record`)::

    {"v": 1, "control": "watermark", "ts": 878000000}     # no event with ts < 878000000 will follow
    {"v": 1, "control": "end_of_stream", "ts": null}      # fixed bounds: close every period
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from asmg.events import Event, EventError, parse_event
from asmg.records import VERSION, RecordError, dumps
from asmg.safejson import UntrustedJSONError, load_object
from asmg.safejson import loads as untrusted_loads
from streams.wire.kafka_config import KafkaSettings

log = logging.getLogger(__name__)

__all__ = ["VERSION", "RecordError", "dumps"]  # shared with the model record (asmg/records.py)

CONTROL_KEY = b"__asmg_control__"
CONTROL_KINDS = ("watermark", "end_of_stream")


def loads(raw: bytes | str | None, kind: str) -> dict[str, Any]:
    """A record from a topic: untrusted JSON, refused with :class:`RecordError` (and nothing else)."""
    if raw is None:
        raise RecordError(f"{kind} record has no value")
    record = load_object(raw, f"{kind} record", RecordError)
    if record.get("v") != VERSION:
        raise RecordError(f"{kind} record has version {record.get('v')!r}; expected {VERSION}")
    return record


def _need(record: dict[str, Any], kind: str, names: Iterable[str]) -> None:
    missing = [n for n in names if n not in record]
    if missing:
        raise RecordError(f"{kind} record lacks {missing}")


# --- period closed -----------------------------------------------------------------------------------------

PERIOD_FIELDS = ("period", "start", "end", "samples", "uri", "sha256", "partitions")


def combined_sha256(parts: Sequence[dict[str, Any]]) -> str:
    text = "\n".join(f"{p['partition']}:{p['file']}:{p['rows']}:{p['sha256']}"
                     for p in sorted(parts, key=lambda p: p["partition"]))
    return hashlib.sha256(text.encode()).hexdigest()


def period_record(period: int, start: float, end: float, uri: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"v": VERSION, "period": int(period), "start": start, "end": end,
            "samples": int(sum(p["rows"] for p in parts)), "uri": uri, "sha256": combined_sha256(parts),
            "partitions": len(parts), "parts": parts}


PART_FILE = re.compile(r"part-\d{5}\.parquet")  # PeriodStore.part_name: never a path, never ".."
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_PARTS = 4096


def _count(record: dict[str, Any], name: str, kind: str, minimum: int = 0) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= 2**63 - 1:
        raise RecordError(f"{kind} record: {name} must be an integer between {minimum} and 2^63-1, "
                          f"got {str(value)[:40]!r}")
    return value


def parse_period(raw: bytes | str | None) -> dict[str, Any]:
    """A period-closed record, checked field by field (types, ranges, part file names that cannot leave the
    period's folder); raises :class:`RecordError` with the reason, and nothing else, whatever the bytes."""
    record = loads(raw, "period")
    _need(record, "period", PERIOD_FIELDS)
    _count(record, "period", "period", 1)
    _count(record, "samples", "period")
    _count(record, "partitions", "period")
    for name in ("start", "end"):
        value = record[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            raise RecordError(f"period record: {name} must be a number, got {str(value)[:40]!r}")
    if not isinstance(record["uri"], str) or not record["uri"].strip():
        raise RecordError("period record: uri must be a non-empty string")
    if not isinstance(record["sha256"], str) or not SHA256_HEX.fullmatch(record["sha256"]):
        raise RecordError("period record: sha256 must be 64 lowercase hex digits")
    parts = record.get("parts")
    if parts is not None:
        if not isinstance(parts, list) or len(parts) > MAX_PARTS:
            raise RecordError(f"period record: parts must be a list of at most {MAX_PARTS} entries")
        for part in parts:
            if not isinstance(part, dict):
                raise RecordError("period record: every part must be an object")
            file = part.get("file")
            if not isinstance(file, str) or not PART_FILE.fullmatch(file):
                raise RecordError(f"period record: part file {str(file)[:80]!r} is not a part-NNNNN.parquet name")
            _count(part, "partition", "period")
            if "rows" in part:
                _count(part, "rows", "period")
            if "sha256" in part and (not isinstance(part["sha256"], str) or not SHA256_HEX.fullmatch(part["sha256"])):
                raise RecordError("period record: a part's sha256 must be 64 lowercase hex digits")
    return record


# --- watermarks, DLQ, control ------------------------------------------------------------------------------


def watermark_record(topic: str, partition: int, watermark: float | None, max_ts: float | None,
                     closed_through: int, late: int, refused: int, applied: int) -> dict[str, Any]:
    return {"v": VERSION, "topic": topic, "partition": partition, "watermark": watermark, "max_ts": max_ts,
            "closed_through": closed_through, "late": late, "refused": refused, "applied": applied}


def parse_watermark(raw: bytes | str) -> dict[str, Any]:
    record = loads(raw, "watermark")
    _need(record, "watermark", ("topic", "partition", "watermark", "closed_through"))
    return record


MAX_DLQ_RAW = 16 * 1024  # bytes of the refused value kept in its DLQ record (the record must fit Kafka's limit)


def dlq_record(reason: str, raw: bytes, topic: str, partition: int, offset: int, detail: str = "") -> dict[str, Any]:
    """``raw`` is cut to :data:`MAX_DLQ_RAW` bytes (``raw_bytes`` says how long it was): a refused value near the
    broker's message size limit would otherwise give a DLQ record over it, and a batch that never commits."""
    record = {"v": VERSION, "reason": reason, "detail": detail[:1000],
              "raw": raw[:MAX_DLQ_RAW].decode("utf-8", errors="backslashreplace"),
              "topic": topic, "partition": partition, "offset": offset}
    if len(raw) > MAX_DLQ_RAW:
        record["raw_bytes"] = len(raw)
    return record


def dlq_key(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}:{partition}:{offset}".encode()


def control_record(kind: str, ts: float | None) -> dict[str, Any]:
    if kind not in CONTROL_KINDS:
        raise RecordError(f"control kind {kind!r}; expected one of {CONTROL_KINDS}")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)):
        raise RecordError(f"control ts must be a finite number of unix seconds or null, got {ts!r}")
    return {"v": VERSION, "control": kind, "ts": ts}


def classify_record(raw: bytes | None) -> tuple[str, Any]:
    """THE reading of a raw interactions-topic value: ``("control", ts)`` for a control record (ts may be None:
    end of stream without a time) or ``("event", Event)``; raises :class:`EventError` with the reason."""
    if raw is None:
        raise EventError("record has no value")
    try:
        obj = untrusted_loads(raw)
    except UntrustedJSONError:
        parse_event(raw)  # raises EventError with the precise reason
        raise EventError("invalid JSON") from None  # pragma: no cover - parse_event raised already
    if isinstance(obj, dict) and "control" in obj:
        kind, ts = obj.get("control"), obj.get("ts")
        if obj.get("v", 1) != 1 or kind not in CONTROL_KINDS:
            raise EventError(f"invalid control record: kind {kind!r}, v {obj.get('v')!r}")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)):
            raise EventError(f"invalid control record: ts {ts!r}")
        if kind == "watermark" and ts is None:
            raise EventError("invalid control record: a watermark needs ts")
        return "control", ts
    event: Event = parse_event(obj)
    return "event", event


# --- Kafka helpers (confluent-kafka, blocking: call from a thread inside async code) ----------------------


@dataclass(frozen=True)
class TopicRecord:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp: int | None = None  # ms, as Kafka stored it


OUTAGE_TIMEOUT = 120.0  # how long a read waits out a broker away (a restart, a leader moving) before it fails


def transient(error: Any) -> bool:
    """A Kafka error that a broker restart or a leader change causes and that goes away by itself.

    librdkafka marks few errors retriable (a watermark query's ``_DESTROY_BROKER`` when the broker it asked
    is killed is not), so the usual ones of an outage are named here too."""
    from confluent_kafka import KafkaError

    codes = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
             KafkaError._DESTROY_BROKER, KafkaError._WAIT_COORD, KafkaError._NODE_UPDATE,
             KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
             KafkaError.REQUEST_TIMED_OUT, KafkaError.BROKER_NOT_AVAILABLE, KafkaError.NETWORK_EXCEPTION,
             KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
             KafkaError.COORDINATOR_LOAD_IN_PROGRESS}
    return not error.fatal() and (error.retriable() or error.code() in codes)


def read_topic(settings: KafkaSettings, topic: str, timeout: float = 30.0,
               outage: float = OUTAGE_TIMEOUT) -> list[TopicRecord]:
    """Every record now in ``topic`` (all partitions, from the beginning to the current end); no group.

    A transient error (a broker killed or restarting under the read) starts the read again, for up to
    ``outage`` seconds: the records are the same either way, and the roles calling this at start-up
    would otherwise exit for their supervisor over an outage the cluster rides out."""
    import time

    from confluent_kafka import Consumer, KafkaException

    consumer = Consumer(settings.confluent_config(**{
        "group_id": f"asmg-reader-{time.monotonic_ns()}", "enable_auto_commit": False,
        "logger_name": f"{__name__}.kafka",
        "enable_partition_eof": True, "auto_offset_reset": "earliest"}))
    give_up = time.monotonic() + outage
    try:
        while True:
            try:
                return _read_to_end(consumer, topic, timeout)
            except (KafkaException, TimeoutError) as exc:
                error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
                if isinstance(exc, KafkaException) and (error is None or not transient(error)):
                    raise
                if time.monotonic() > give_up:
                    raise
                log.warning("reading %s: %s; reading it again", topic, error.str() if error is not None else exc)
                time.sleep(0.5)
    finally:
        consumer.close()


def _read_to_end(consumer: Any, topic: str, timeout: float) -> list[TopicRecord]:
    import time

    from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

    metadata = consumer.list_topics(topic, timeout=timeout)
    info = metadata.topics.get(topic)
    if info is not None and info.error is not None and info.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise KafkaException(info.error)  # e.g. no leader yet: transient, read again
    if info is None or info.error is not None or not info.partitions:
        return []
    todo: dict[int, int] = {}
    assign = []
    for partition in info.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        if high > low:
            todo[partition] = high
            assign.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
    if not todo:
        return []
    consumer.assign(assign)
    out: list[TopicRecord] = []
    deadline = time.monotonic() + timeout
    while todo:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic}: partitions {sorted(todo)} not read to the end in "
                               f"{timeout:.0f}s")
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error() is not None:
            if message.error().code() == KafkaError._PARTITION_EOF:
                if message.offset() >= todo.get(message.partition(), 0):
                    todo.pop(message.partition(), None)
                continue
            raise KafkaException(message.error())
        out.append(TopicRecord(message.key(), message.value(), message.partition(), message.offset(),
                               message.timestamp()[1]))
        if message.offset() + 1 >= todo.get(message.partition(), 0):
            todo.pop(message.partition(), None)
    return out


SEND_TIMEOUT = 120.0


class RecordProducer:
    """A blocking idempotent producer (acks=all) for the few records whose delivery must be confirmed
    before the caller goes on (period and model records, control markers).

    One per role for its whole life (never one per record: clients destroyed while reconnecting are where
    librdkafka's rarer crashes live). ``send`` waits up to :data:`SEND_TIMEOUT`, longer than a broker
    restart takes: librdkafka keeps retrying the one record meanwhile, idempotently, so a record sent across
    an outage is written once; a role gives up (and exits for its supervisor) only after that.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(settings.confluent_config(enable_idempotence=True, acks="all", linger_ms=0,
                                                            logger_name=f"{__name__}.kafka"))

    def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None,
             timeout: float = SEND_TIMEOUT) -> None:
        errors: list[str] = []

        def done(error, message) -> None:
            if error is not None:
                errors.append(error.str())

        kwargs = {} if partition is None else {"partition": partition}
        self._producer.produce(topic, value=value, key=key, on_delivery=done, **kwargs)
        remaining = self._producer.flush(timeout)
        if remaining or errors:
            raise RuntimeError(f"record to {topic} not acknowledged: {errors or f'{remaining} pending'}")

    def close(self) -> None:
        self._producer.flush(10)
