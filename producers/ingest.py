"""Live ingestion over HTTP: ``POST /events`` (one JSON event, a JSON array, or NDJSON), ``GET /healthz``,
``GET /metrics`` (Prometheus: events accepted, refused by reason, request latency; streams/metrics.py).

Why answer only after Kafka's acknowledgement: a 202 is a promise that the events are durable
(acks=all). Every refused line is answered with its reason and also written to the DLQ topic, so bad
input is visible downstream too; bad input never produces a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from asmg.events import EventError, parse_event
from producers.producer import make_producer
from streams.metrics import IngestMetrics, request_timer
from streams.wire.kafka_config import KafkaSettings
from streams.wire.topics import TopicNames

log = logging.getLogger(__name__)
MAX_BODY = 32 * 1024 * 1024
ACK_TIMEOUT = 30.0
MAX_RAW_IN_DLQ = 10_000
NAMES = web.AppKey("names", TopicNames)
METRICS = web.AppKey("metrics", IngestMetrics)


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line (or array position) in the request
    raw: str
    value: Any = None
    error: str | None = None


def split_body(text: str) -> list[Line]:
    """One JSON object, a JSON array of objects, or NDJSON (one object per non-empty line)."""
    stripped = text.strip()
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        whole = None
    else:
        if isinstance(whole, list):
            return [Line(i, json.dumps(v), value=v) for i, v in enumerate(whole, 1)]
        return [Line(1, stripped, value=whole)]
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            lines.append(Line(number, raw, value=json.loads(raw)))
        except json.JSONDecodeError as exc:
            lines.append(Line(number, raw, error=f"invalid JSON: {exc.msg} at column {exc.colno}"))
    return lines


class AckingProducer:
    """A confluent-kafka producer whose deliveries resolve asyncio futures (polled on its own thread)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def settle(error: KafkaError | None, _: Message) -> None:
            loop.call_soon_threadsafe(_settle, future, error)

        for _ in range(200):
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=settle)
                return future
            except BufferError:  # local queue full: let the poll thread drain it
                await asyncio.sleep(0.01)
        future.set_exception(KafkaException(KafkaError(KafkaError._QUEUE_FULL)))
        return future

    async def close(self) -> None:
        await asyncio.to_thread(self.producer.flush, 10)
        self._stop.set()
        self._thread.join(timeout=5)
        # aiohttp's middleware cache may keep the app (and so this object) alive: let the client go now
        self.producer = None  # type: ignore[assignment]


SINK = web.AppKey("sink", AckingProducer)


def _settle(future: asyncio.Future[None], error: KafkaError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(KafkaException(error))


def _dlq_record(line: Line, reason: str) -> bytes:
    return json.dumps({"reason": reason, "line": line.number, "raw": line.raw[:MAX_RAW_IN_DLQ],
                       "source": "ingest", "received_at": time.time()}).encode()


async def post_events(request: web.Request) -> web.Response:
    sink, names, metrics = request.app[SINK], request.app[NAMES], request.app[METRICS]
    body = await request.read()
    if not body.strip():
        return web.json_response({"accepted": 0, "refused": [], "error": "empty body"}, status=400)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return web.json_response({"accepted": 0, "refused": [],
                                  "error": f"body is not UTF-8 ({exc.reason} at byte {exc.start})"}, status=400)
    lines = split_body(text)
    if not lines:
        return web.json_response({"accepted": 0, "refused": [], "error": "no events in body"}, status=400)
    refused: list[dict[str, Any]] = []
    pending: list[asyncio.Future[None]] = []
    dlq: list[asyncio.Future[None]] = []
    for line in lines:
        reason = line.error
        if reason is None:
            try:
                event = parse_event(line.value)
            except EventError as exc:
                reason = exc.reason
            else:
                pending.append(await sink.send(names.interactions, event.to_json(), str(event.user_id).encode()))
                continue
        refused.append({"line": line.number, "reason": reason})
        metrics.refuse(reason)
        dlq.append(await sink.send(names.dlq, _dlq_record(line, reason)))
    try:
        results = await asyncio.wait_for(asyncio.gather(*pending, *dlq, return_exceptions=True), ACK_TIMEOUT + 5)
    except TimeoutError:
        return web.json_response({"accepted": 0, "refused": refused,
                                  "error": f"Kafka did not acknowledge within {ACK_TIMEOUT + 5:.0f}s"}, status=503)
    failures = [r for r in results[:len(pending)] if isinstance(r, BaseException)]
    dlq_failures = [r for r in results[len(pending):] if isinstance(r, BaseException)]
    if dlq_failures:
        log.error("%d refused events could not be written to %s: %s", len(dlq_failures), names.dlq,
                  dlq_failures[0])
    metrics.accepted.inc(len(pending) - len(failures))
    metrics.unacknowledged.inc(len(failures))
    if failures:
        return web.json_response({"accepted": len(pending) - len(failures), "refused": refused,
                                  "error": f"Kafka did not acknowledge {len(failures)} events: {failures[0]}"},
                                 status=503)
    status = 202 if pending else 400
    return web.json_response({"accepted": len(pending), "refused": refused}, status=status)


async def healthz(request: web.Request) -> web.Response:
    try:
        metadata = await asyncio.to_thread(request.app[SINK].producer.list_topics, None, 3)
    except KafkaException as exc:
        return web.json_response({"status": "unavailable", "kafka": str(exc)}, status=503)
    return web.json_response({"status": "ok", "brokers": len(metadata.brokers)})


async def get_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: KafkaSettings, names: TopicNames | None = None,
             metrics: IngestMetrics | None = None) -> web.Application:
    """The aiohttp application; the producer lives as long as the app."""
    app = web.Application(client_max_size=MAX_BODY)
    app.middlewares.append(request_timer(lambda: app[METRICS].requests))
    app[NAMES] = names or TopicNames.from_env()
    app[METRICS] = metrics or IngestMetrics()

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        app[SINK] = AckingProducer(make_producer(settings, low_latency=True,
                                                 message_timeout_ms=int(ACK_TIMEOUT * 1000)))
        yield
        await app[SINK].close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/events", post_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", get_metrics)
    return app


def serve(settings: KafkaSettings, names: TopicNames, host: str = "0.0.0.0", port: int = 8081) -> None:
    web.run_app(make_app(settings, names), host=host, port=port, print=None, shutdown_timeout=5)
