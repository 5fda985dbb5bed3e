"""Live ingestion over HTTP: ``POST /events`` (one JSON event, a JSON array, or NDJSON), ``GET /healthz``,
``GET /metrics`` (Prometheus: events accepted, refused by reason, request latency; streams/metrics.py),
``GET /openapi.json`` (the OpenAPI document: streams/openapi.py).

Why answer only after Kafka's acknowledgement: a 202 is a promise that the events are durable
(acks=all). Every refused line is answered with its reason and also written to the DLQ topic, so bad
input is visible downstream too; bad input never produces a 500.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from asmg.events import Event, EventError, parse_event
from asmg.safejson import UntrustedJSONError
from asmg.safejson import loads as untrusted_loads
from producers.producer import make_producer
from streams.http_security import DEFAULT_HOST, guard, json_errors, load_token, metrics_protected
from streams.metrics import IngestMetrics, request_timer
from streams.openapi import ingest_document, serve_document
from streams.wire.kafka_config import KafkaSettings
from streams.wire.topics import TopicNames

log = logging.getLogger(__name__)
MAX_BODY = 8 * 1024 * 1024  # bytes of one request (413 above)
MAX_LINES = 10_000  # events (lines or array entries) of one request (413 above)
ACK_TIMEOUT = 10.0  # seconds Kafka may take to acknowledge a request's events
PROBE_INTERVAL = 1.0  # seconds between broker probes
MAX_RAW_IN_DLQ = 10_000
NAMES = web.AppKey("names", TopicNames)
METRICS = web.AppKey("metrics", IngestMetrics)
LIMITS = web.AppKey("limits", tuple)


class TooManyEvents(ValueError):
    """A request with more events than allowed (413)."""


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line (or array position) in the request
    raw: str
    value: Any = None
    error: str | None = None
    event: Event | None = None


def split_body(text: str, max_lines: int = MAX_LINES) -> list[Line]:
    """One JSON object, a JSON array of objects, or NDJSON (one object per non-empty line); every value read
    as untrusted JSON (asmg/safejson.py: depth, number size, lone surrogates), so a line is a value or a
    reason, never an exception. More than ``max_lines`` events raise :class:`TooManyEvents`."""
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            whole = untrusted_loads(stripped)
        except UntrustedJSONError:
            whole = None
        else:
            if isinstance(whole, list):
                if len(whole) > max_lines:
                    raise TooManyEvents(f"{len(whole)} events in one request; at most {max_lines} allowed")
                return [Line(i, json.dumps(v), value=v) for i, v in enumerate(whole, 1)]
            return [Line(1, stripped, value=whole)]
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        if len(lines) >= max_lines:
            raise TooManyEvents(f"more than {max_lines} events in one request; at most {max_lines} allowed")
        try:
            lines.append(Line(number, raw, value=untrusted_loads(raw)))
        except UntrustedJSONError as exc:
            reason = exc.reason if exc.reason.startswith("invalid JSON") else f"invalid JSON: {exc.reason}"
            lines.append(Line(number, raw, error=reason.replace(" at line 1 column ", " at column ")))
    return lines


def validate_body(body: bytes, max_lines: int = MAX_LINES) -> list[Line]:
    """The request's lines, each with its event or the reason it is refused (CPU work: run it off the loop)."""
    text = body.decode("utf-8")  # the caller checked it
    out = []
    for line in split_body(text, max_lines):
        if line.error is None:
            try:
                line = Line(line.number, line.raw, line.value, event=parse_event(line.value))
            except EventError as exc:
                line = Line(line.number, line.raw, line.value, error=exc.reason)
        out.append(line)
    return out


class AckingProducer:
    """A confluent-kafka producer polled on its own thread, whose deliveries resolve futures, and which knows
    whether the cluster answers (``down_since``): a probe thread asks for metadata every second, and
    librdkafka's "all brokers down" error marks it down at once. Requests fail fast while it is down."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.down_since: float | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._thread.start()
        self._prober = threading.Thread(target=self._probe_loop, name="kafka-probe", daemon=True)

    def start_probing(self) -> None:
        self.probe()
        self._prober.start()

    def on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (runs inside poll, on the poll thread)."""
        self.last_error = error.str()
        if error.code() == KafkaError._ALL_BROKERS_DOWN and self.down_since is None:
            self.down_since = time.time()
            log.warning("Kafka unreachable: %s", error.str())

    def probe(self, timeout: float = 2.0) -> bool:
        try:
            self.producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            self.last_error = str(exc)
            if self.down_since is None:
                self.down_since = time.time()
                log.warning("Kafka unreachable: %s", exc)
            return False
        if self.down_since is not None:
            log.info("Kafka reachable again after %.0fs", time.time() - self.down_since)
        self.down_since = None
        return True

    def _probe_loop(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL):
            self.probe()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def submit(self, topic: str, value: bytes, key: bytes | None = None,
               timeout: float = ACK_TIMEOUT) -> concurrent.futures.Future[None]:
        """Queue one record (blocking while the local queue is full, at most ``timeout``); the future settles
        with Kafka's acknowledgement. Call from a worker thread."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def settle(error: KafkaError | None, _: Message) -> None:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(KafkaException(error))

        deadline = time.monotonic() + timeout
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=settle)
                return future
            except BufferError:  # local queue full: let the poll thread drain it
                if time.monotonic() > deadline:
                    future.set_exception(KafkaException(KafkaError(KafkaError._QUEUE_FULL)))
                    return future
                time.sleep(0.01)

    async def close(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self.producer.flush, 10)
        self._thread.join(timeout=5)
        if self._prober.is_alive():
            self._prober.join(timeout=5)
        # aiohttp's middleware cache may keep the app (and so this object) alive: let the client go now
        self.producer = None  # type: ignore[assignment]


SINK = web.AppKey("sink", AckingProducer)


def _dlq_record(line: Line, reason: str) -> bytes:
    return json.dumps({"reason": reason, "line": line.number, "raw": line.raw[:MAX_RAW_IN_DLQ],
                       "source": "ingest", "received_at": time.time()}).encode()


def _unavailable(sink: AckingProducer) -> web.Response:
    since = time.time() - (sink.down_since or time.time())
    return web.json_response({"accepted": 0, "refused": [],
                              "error": f"Kafka is unreachable (for {since:.0f}s: {sink.last_error}); nothing was "
                                       "written, retry later"}, status=503, headers={"Retry-After": "5"})


def _produce(sink: AckingProducer, names: TopicNames, lines: list[Line]) -> list[concurrent.futures.Future[None]]:
    futures = []
    for line in lines:
        if line.event is not None:
            futures.append(sink.submit(names.interactions, line.event.to_json(), str(line.event.user_id).encode()))
        else:
            futures.append(sink.submit(names.dlq, _dlq_record(line, line.error or "refused")))
    return futures


async def post_events(request: web.Request) -> web.Response:
    """Per line: every line is validated before anything is sent; each valid line goes to the interactions
    topic, each refused one to the DLQ and into ``refused`` with its reason. 202: every valid line is
    acknowledged (durable). 503: the lines in ``unacknowledged`` may not have been written (resend those
    only; ``event_id`` lets a consumer drop a duplicate); with Kafka known to be down nothing is sent."""
    sink, names, metrics = request.app[SINK], request.app[NAMES], request.app[METRICS]
    max_lines = request.app[LIMITS][1]
    if sink.down_since is not None:
        return _unavailable(sink)
    body = await request.read()
    if not body.strip():
        return web.json_response({"accepted": 0, "refused": [], "error": "empty body"}, status=400)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return web.json_response({"accepted": 0, "refused": [],
                                  "error": f"body is not UTF-8 ({exc.reason} at byte {exc.start})"}, status=400)
    try:
        lines = await asyncio.to_thread(validate_body, body, max_lines)  # CPU work off the event loop
    except TooManyEvents as exc:
        return web.json_response({"accepted": 0, "refused": [], "error": str(exc)}, status=413)
    if not lines:
        return web.json_response({"accepted": 0, "refused": [], "error": "no events in body"}, status=400)
    refused = [{"line": line.number, "reason": line.error} for line in lines if line.event is None]
    for line in lines:
        if line.event is None:
            metrics.refuse(line.error or "refused")
    futures = await asyncio.to_thread(_produce, sink, names, lines)
    if futures:  # what is not settled by the deadline counts as unacknowledged (nothing is cancelled)
        await asyncio.wait([asyncio.wrap_future(f) for f in futures], timeout=ACK_TIMEOUT + 5)
    valid = [(line, f) for line, f in zip(lines, futures, strict=True) if line.event is not None]
    failed = [line.number for line, f in valid if not f.done() or f.exception() is not None]
    dlq_failures = sum(1 for line, f in zip(lines, futures, strict=True)
                       if line.event is None and (not f.done() or f.exception() is not None))
    if dlq_failures:
        log.error("%d refused events could not be written to %s", dlq_failures, names.dlq)
    accepted = len(valid) - len(failed)
    metrics.accepted.inc(accepted)
    metrics.unacknowledged.inc(len(failed))
    if failed:
        first = next((f for line, f in valid if line.number == failed[0]), None)
        cause = first.exception() if first is not None and first.done() else "no answer in time"
        return web.json_response({"accepted": accepted, "refused": refused, "unacknowledged": failed,
                                  "error": f"Kafka did not acknowledge {len(failed)} events ({cause}): resend the "
                                           "lines listed in unacknowledged"}, status=503)
    return web.json_response({"accepted": accepted, "refused": refused}, status=202 if valid else 400)


async def healthz(request: web.Request) -> web.Response:
    """From the probe's last answer: never waits on Kafka."""
    sink = request.app[SINK]
    if sink.down_since is not None:
        return web.json_response({"status": "unavailable", "kafka": sink.last_error,
                                  "down_seconds": round(time.time() - sink.down_since, 1)}, status=503)
    return web.json_response({"status": "ok"})


async def get_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: KafkaSettings, names: TopicNames | None = None, metrics: IngestMetrics | None = None,
             token: str | None = None, protect_metrics: bool = False, max_body: int = MAX_BODY,
             max_lines: int = MAX_LINES) -> web.Application:
    """The aiohttp application; the producer lives as long as the app. ``token``: bearer token required on
    /events (and /metrics with ``protect_metrics``); streams/http_security.py."""
    app = web.Application(client_max_size=max_body)
    app.middlewares.append(json_errors)
    app.middlewares.append(guard(token, ["/events", *(["/metrics"] if protect_metrics else [])], ["/events"]))
    app.middlewares.append(request_timer(lambda: app[METRICS].requests))
    app[NAMES] = names or TopicNames.from_env()
    app[METRICS] = metrics or IngestMetrics()
    app[LIMITS] = (max_body, max_lines)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        holder: list[AckingProducer] = []
        producer = make_producer(settings, low_latency=True, message_timeout_ms=int(ACK_TIMEOUT * 1000),
                                 error_cb=lambda error: holder[0].on_error(error) if holder else None)
        holder.append(AckingProducer(producer))
        app[SINK] = holder[0]
        await asyncio.to_thread(holder[0].start_probing)
        yield
        await app[SINK].close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/events", post_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", get_metrics)
    serve_document(app, ingest_document(max_body, max_lines))
    return app


def serve(settings: KafkaSettings, names: TopicNames, host: str = DEFAULT_HOST, port: int = 8081) -> None:
    web.run_app(make_app(settings, names, token=load_token(), protect_metrics=metrics_protected()), host=host,
                port=port, print=None, shutdown_timeout=5)
