"""The scorer role's service: serve the newest verified model over HTTP and evaluate it online against its IU shadow.

Two background threads feed it (confluent-kafka consumers, each with its own throw-away group so every
scorer sees everything; each keeps its own bookmark, the next offset per partition after what it has
processed, and resumes there whenever the group hands it its partitions again, e.g. after a broker outage
longer than the session timeout, so no event is evaluated twice; nothing is committed, since the
histories and counts live in memory and a restarted scorer rebuilds them from the start): one reads the
compacted models topic from the start, verifies and loads each new version off the request path and swaps
it in with one reference assignment (with a signing key, only records with a valid signature; only
artifacts inside the artifact store; loads bounded in time: streams/scorer/state.py); the other reads
labelled interactions in micro-batches, scores them with the served model and its shadow before they join
the users' histories (prequential evaluation), and keeps those histories for requests that bring none.

HTTP (aiohttp): ``POST /score``, ``GET /model``, ``GET /quality``, ``GET /healthz``, ``GET /metrics``, and
``GET /openapi.json`` (the OpenAPI document of them all: streams/openapi.py).
The command (``asmg worker scorer``) is in streams/scorer/command.py, which imports this module only when it runs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from asmg.config import HISTORY_LEN
from asmg.data.periods import PeriodScheme
from asmg.events import MAX_ID, Event, EventError, id_value
from asmg.records import RecordError, SignatureError, parse_model_record
from asmg.safejson import load_object
from streams.http_security import guard, json_errors, load_token, metrics_protected
from streams.metrics import request_timer, scorer_registry
from streams.openapi import scorer_document, serve_document
from streams.scorer.evaluation import Evaluator, Prequential, UserHistories
from streams.scorer.state import ModelHolder
from streams.wire.kafka_config import KafkaSettings
from streams.wire.records import classify_record
from streams.wire.topics import TopicNames

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError

log = logging.getLogger(__name__)

MAX_ITEMS = 10_000
MAX_HISTORY = 1_000
MAX_BODY = 1024 * 1024
# up to this many candidates a request is scored on the event loop (~0.2 ms for 100 on one core: handing
# it to a thread costs more than that); larger ones go to the pool so they never hold the loop for long
INLINE_ITEMS = 1_000


@dataclass(frozen=True)
class ScorerOptions:
    """Everything the role can be told (the CLI maps flags and ASMG_* variables onto these)."""

    periods: PeriodScheme | None
    model_name: str | None = None
    device: str = "cpu"
    history_len: int = HISTORY_LEN
    max_users: int = 1_000_000
    batch_size: int = 1000
    batch_seconds: float = 0.2
    negatives: int = 0
    interactions_from: str = "earliest"
    wait_models: float = 30.0
    max_periods: int = 200
    seed: int = 0
    # where model records may point to (the trainer's ASMG_ARTIFACT_STORE); None: anywhere (tests only)
    artifact_store: str | None = "runs/stream/models"
    signing_key: bytes | None = field(default=None, repr=False)  # require signed model records
    load_timeout: float | None = 120.0  # seconds a model load may take before it is given up
    session_timeout: float = 10.0  # the consumers' group session (an outage longer than this revokes partitions)


# --- Kafka feeds --------------------------------------------------------------------------------------------


def _consumer(settings: KafkaSettings, role: str, offset_reset: str, session_timeout: float = 10.0,
              **extra: Any) -> Consumer:
    """A consumer in a group of its own: this scorer sees every partition and commits nothing."""
    from confluent_kafka import Consumer

    return Consumer(settings.confluent_config(
        group_id=f"asmg-scorer-{role}-{uuid.uuid4().hex[:12]}", auto_offset_reset=offset_reset,
        enable_auto_commit=False, session_timeout_ms=int(session_timeout * 1000),
        logger_name=f"{__name__}.kafka", **extra))


class _Feed(threading.Thread):
    """A consumer loop that survives anything but ``stop``: errors are logged and counted."""

    def __init__(self, name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.stop = stop
        self.errors = 0
        self.positions: dict[int, int] = {}  # the bookmark: partition -> next offset after what was processed
        self.assignments = 0
        self.revocations = 0

    def subscribe(self, consumer: Consumer, topic: str) -> None:
        """Subscribe so that every assignment resumes at the bookmark (the reset policy applies only to
        partitions never read)."""

        def on_assign(consumer: Consumer, partitions: list[Any]) -> None:
            for tp in partitions:
                if tp.partition in self.positions:
                    tp.offset = self.positions[tp.partition]
            self.assignments += 1
            self.assigned_partitions(partitions)
            consumer.assign(partitions)
            if self.assignments > 1:
                log.warning("%s: partitions assigned again (%s); resuming at the bookmark %s", self.name,
                            [tp.partition for tp in partitions], self.positions)

        def on_revoke(_consumer: Consumer, partitions: list[Any]) -> None:
            self.revocations += 1
            log.info("%s: partitions revoked: %s", self.name, [tp.partition for tp in partitions])

        consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)

    def assigned_partitions(self, partitions: list[Any]) -> None:
        """Hook: what a feed notes about an assignment."""

    def advance(self, messages: list[Any]) -> None:
        """Move the bookmark past ``messages`` (once they are processed)."""
        for message in messages:
            if message.error() is None:
                self.positions[message.partition()] = max(self.positions.get(message.partition(), 0),
                                                          message.offset() + 1)

    def run(self) -> None:
        consumer = None
        try:
            consumer = self.open()
            while not self.stop.is_set():
                try:
                    self.step(consumer)
                except Exception:
                    self.errors += 1
                    log.exception("%s: unexpected error; continuing", self.name)
                    self.stop.wait(1.0)
        except Exception:
            self.errors += 1
            log.exception("%s: cannot start", self.name)
        finally:
            if consumer is not None:
                consumer.close()

    def open(self) -> Consumer:
        raise NotImplementedError

    def step(self, consumer: Consumer) -> None:
        raise NotImplementedError

    def kafka_error(self, error: KafkaError) -> None:
        from confluent_kafka import KafkaError

        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            log.debug("%s: %s (waiting for the topic)", self.name, error.str())
        else:
            self.errors += 1
            log.warning("%s: %s", self.name, error.str())


class ModelFeed(_Feed):
    """Reads the models topic from the start; ``caught_up`` is set once it reached the end the first time."""

    def __init__(self, settings: KafkaSettings, topic: str, holder: ModelHolder, stop: threading.Event,
                 signing_key: bytes | None = None, session_timeout: float = 10.0) -> None:
        super().__init__("scorer-models", stop)
        self.settings, self.topic, self.holder = settings, topic, holder
        self.signing_key = signing_key  # set: a record without a valid signature is refused as forged
        self.session_timeout = session_timeout
        self.caught_up = threading.Event()
        self.assigned: set[int] = set()
        self.at_end: set[int] = set()

    def open(self) -> Consumer:
        consumer = _consumer(self.settings, "models", "earliest", self.session_timeout, enable_partition_eof=True)
        self.subscribe(consumer, self.topic)
        return consumer

    def assigned_partitions(self, partitions: list[Any]) -> None:
        self.assigned.update(p.partition for p in partitions)

    def step(self, consumer: Consumer) -> None:
        from confluent_kafka import KafkaError

        records = []
        messages = consumer.consume(num_messages=100, timeout=0.5)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self.at_end.add(message.partition())
                else:
                    self.kafka_error(error)
                continue
            try:
                records.append(parse_model_record(message.value(), message.key(), self.signing_key))
            except SignatureError as exc:
                self.holder.refuse("records_forged", f"models topic [{message.partition()}]@{message.offset()}",
                                   exc.reason)
            except Exception as exc:  # noqa: BLE001 - one poison record must not cost the batch's others
                self.holder.count("records_invalid")
                reason = exc.reason if isinstance(exc, RecordError) else f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("models topic [%d]@%d: refused record: %s", message.partition(), message.offset(), reason)
        if records:
            self.holder.offer(records)
        self.advance(messages)
        if not self.caught_up.is_set() and self.assigned and self.assigned <= self.at_end:
            self.caught_up.set()


class InteractionFeed(_Feed):
    """Labelled events in micro-batches (up to ``batch_size`` or ``batch_seconds``) into the evaluator."""

    def __init__(self, settings: KafkaSettings, topic: str, holder: ModelHolder, evaluator: Evaluator,
                 options: ScorerOptions, models_ready: threading.Event, stop: threading.Event) -> None:
        super().__init__("scorer-interactions", stop)
        self.settings, self.topic, self.holder, self.evaluator = settings, topic, holder, evaluator
        self.options, self.models_ready = options, models_ready
        self.invalid = 0
        self.control = 0

    def open(self) -> Consumer:
        # Events before the newest model are "trained on" and only build histories, so wait for it first.
        deadline = time.monotonic() + self.options.wait_models
        while not self.models_ready.is_set() and time.monotonic() < deadline and not self.stop.is_set():
            self.models_ready.wait(0.2)
        consumer = _consumer(self.settings, "interactions", self.options.interactions_from,
                             self.options.session_timeout)
        self.subscribe(consumer, self.topic)
        return consumer

    def step(self, consumer: Consumer) -> None:
        messages = consumer.consume(num_messages=self.options.batch_size, timeout=self.options.batch_seconds)
        events: list[Event] = []
        for message in messages:
            if message.error() is not None:
                self.kafka_error(message.error())
                continue
            try:
                event = _event(message.value())
            except EventError as exc:
                self.invalid += 1
                log.debug("interactions offset %d: %s", message.offset(), exc.reason)
                continue
            if event is None:
                self.control += 1
            else:
                events.append(event)
        self.evaluator.process(events, self.holder.current)
        self.advance(messages)


def _event(raw: bytes | None) -> Event | None:
    """An interaction event, or None for the windowing role's control records (watermark, end of stream)."""
    kind, payload = classify_record(raw)
    return payload if kind == "event" else None


# --- HTTP ---------------------------------------------------------------------------------------------------


class RequestError(ValueError):
    """A /score body that cannot be scored; the message is the 400 reason."""


def _request_id(value: Any, name: str) -> int:
    """Ids as events carry them (asmg.events.id_value), refused as a 400 reason."""
    try:
        return id_value(value, name)
    except EventError as exc:
        raise RequestError(exc.reason) from None


def _id_list(body: dict[str, Any], name: str, limit: int, required: bool) -> list[int] | None:
    value = body.get(name)
    if value is None:
        if required:
            raise RequestError(f"missing field {name}")
        return None
    if not isinstance(value, list):
        raise RequestError(f"{name} must be a list of ids, got {type(value).__name__}")
    if required and not value:
        raise RequestError(f"{name} must not be empty")
    if len(value) > limit:
        raise RequestError(f"{name} has {len(value)} entries; at most {limit} allowed")
    if value and all(type(v) is int for v in value) and min(value) >= 0 and max(value) <= MAX_ID:
        return value  # the common case, plain integer ids, checked without a call per id
    return [_request_id(v, f"{name}[]") for v in value]


@dataclass(frozen=True)
class ScoreRequest:
    user_id: int
    items: list[int]
    history: list[int] | None


def parse_score_request(raw: bytes) -> ScoreRequest:
    """Validate a /score body; raise :class:`RequestError` with the reason.

    orjson reads it (strict: invalid UTF-8, lone surrogates and nesting beyond 1,024 levels are errors; the
    id checks below bound the values); a body it refuses is read again by asmg.safejson for the reason."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = load_object(raw, "body", RequestError)  # raises with the reason for the sender
    if not isinstance(body, dict):
        raise RequestError(f"body must be a JSON object, got {type(body).__name__}")
    if body.get("user_id") is None:
        raise RequestError("missing field user_id")
    items = _id_list(body, "items", MAX_ITEMS, required=True)
    assert items is not None
    return ScoreRequest(_request_id(body["user_id"], "user_id"), items,
                        _id_list(body, "history", MAX_HISTORY, required=False))


SERVICE: web.AppKey[ScorerService] = web.AppKey("scorer")


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def post_score(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        body = parse_score_request(await request.read())
    except RequestError as exc:
        return _error(400, str(exc))
    model = service.holder.current  # one read: this request uses this model throughout
    if model is None:
        return _error(503, "no model yet")
    history = body.history if body.history is not None else service.histories.recent(body.user_id)
    history = history[-service.options.history_len:]
    if len(body.items) <= INLINE_ITEMS:
        scores = model.scorer.score_user(body.user_id, body.items, history)
    else:
        scores = await asyncio.get_running_loop().run_in_executor(service.pool, model.scorer.score_user,
                                                                  body.user_id, body.items, history)
    answer = {"scores": np.asarray(scores, dtype=np.float64), "model_version": model.version,
              "period": model.period}
    return web.Response(body=orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY),
                        content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    model = request.app[SERVICE].holder.current
    if model is None:
        return _error(503, "no model yet")
    return web.json_response(model.describe())


async def get_quality(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    report = await asyncio.get_running_loop().run_in_executor(service.pool, service.prequential.report)
    return web.json_response({"periods": {str(p): row for p, row in report.items()},
                              "events": dict(service.evaluator.counts), "invalid_events": service.interactions.invalid,
                              "control_records": service.interactions.control,
                              "negatives_per_positive": service.options.negatives,
                              "periods_spec": service.describe_periods(), "guard": _guard(service)})


def _guard(service: ScorerService) -> dict[str, Any] | None:
    """The serving guard's view from the served model's record: which candidate serves, and every candidate's
    metrics on the record's period (None for a method without a guard)."""
    model = service.holder.current
    if model is None or model.record.candidate is None:
        return None
    return {"served_candidate": model.record.candidate, "period": model.record.period,
            "candidates": model.record.candidates}


async def get_healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    model = service.holder.current
    alive = {"models": service.models.is_alive(), "interactions": service.interactions.is_alive()}
    ok = all(alive.values()) and model is not None  # ready means: a verified model is served
    status = "feed stopped" if not all(alive.values()) else "no model yet" if model is None else "ok"
    return web.json_response({"status": status, "model_version": model and model.version,
                              "feeds": alive, "models_caught_up": service.models.caught_up.is_set(),
                              "users": len(service.histories), **service.holder.stats()},
                             status=200 if ok else 503)


async def get_metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]  # collecting computes AUCs: off the event loop
    body = await asyncio.get_running_loop().run_in_executor(service.pool, generate_latest, service.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- the service --------------------------------------------------------------------------------------------


@dataclass
class ScorerService:
    """The role's state, its two feeds and its web app; ``run`` serves until ``stop``."""

    settings: KafkaSettings
    names: TopicNames
    options: ScorerOptions
    stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        opts = self.options
        self.holder = ModelHolder(opts.device, opts.model_name, artifact_store=opts.artifact_store,
                                  load_timeout=opts.load_timeout)
        self.histories = UserHistories(opts.max_users, opts.history_len)
        self.prequential = Prequential(opts.max_periods)
        self.evaluator = Evaluator(opts.periods, self.histories, self.prequential, opts.negatives, opts.seed)
        self.models = ModelFeed(self.settings, self.names.models, self.holder, self.stopped, opts.signing_key,
                                opts.session_timeout)
        self.interactions = InteractionFeed(self.settings, self.names.interactions, self.holder, self.evaluator,
                                            opts, self.models.caught_up, self.stopped)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scorer-http")
        self.registry, self.latency = scorer_registry(self)  # streams/metrics.py: every metric is defined there
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def event_counts(self) -> dict[str, int]:
        """Interaction events by outcome (evaluated, skipped, ...; ``invalid``: refused records), for metrics."""
        return {**self.evaluator.counts, "invalid": self.interactions.invalid}

    def describe_periods(self) -> str:
        periods = self.options.periods
        return periods.describe() if periods is not None else "none configured: online evaluation is off"

    def make_app(self) -> web.Application:
        token, protected = load_token(), ["/score", *(["/metrics"] if metrics_protected() else [])]
        app = web.Application(client_max_size=MAX_BODY, middlewares=[
            json_errors, guard(token, protected, ["/score"]), request_timer(lambda: self.latency)])
        app[SERVICE] = self
        app.router.add_post("/score", post_score)
        app.router.add_get("/model", get_model)
        app.router.add_get("/quality", get_quality)
        app.router.add_get("/healthz", get_healthz)
        app.router.add_get("/metrics", get_metrics)
        serve_document(app, scorer_document(MAX_BODY, MAX_ITEMS, MAX_HISTORY))
        return app

    async def run(self, host: str, port: int, on_ready: Callable[[int], None] | None = None) -> None:
        """Start the feeds and the HTTP server; return after :meth:`stop` (any thread) or cancellation."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        if self.stopped.is_set():
            return
        self.models.start()
        self.interactions.start()
        runner = web.AppRunner(self.make_app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = site._server.sockets[0].getsockname()[1] if site._server else port  # type: ignore[union-attr]
            log.info("scorer listening on http://%s:%d (models %s, interactions %s, periods: %s)", host, bound,
                     self.names.models, self.names.interactions, self.describe_periods())
            if on_ready is not None:
                on_ready(bound)
            await self._wake.wait()
        finally:
            await runner.cleanup()
            self.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._join)

    def stop(self) -> None:
        """Ask everything to stop; safe from any thread and more than once."""
        self.stopped.set()
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def _join(self, timeout: float = 10.0) -> None:
        for feed in (self.models, self.interactions):
            if feed.is_alive():
                feed.join(timeout)
        self.pool.shutdown(wait=False)


@contextmanager
def running(service: ScorerService, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0
            ) -> Iterator[str]:
    """Run ``service`` on a background thread (tests, notebooks); yields its base URL, stops it on exit."""
    ready = threading.Event()
    bound: list[int] = []
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(service.run(host, port, lambda p: (bound.append(p), ready.set())))
        except BaseException as exc:  # surfaced to the caller below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="scorer-http-loop", daemon=True)
    thread.start()
    if not ready.wait(timeout) or failure:
        service.stop()
        raise RuntimeError(f"scorer did not start: {failure[0] if failure else 'timeout'}")
    try:
        yield f"http://{host}:{bound[0]}"
    finally:
        service.stop()
        thread.join(timeout)


# --- the command --------------------------------------------------------------------------------------------


def serve_forever(service: ScorerService, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM (a container stop), shutting the consumers down cleanly."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.stop)
        await service.run(host, port, on_ready=_freeze_start_up)

    asyncio.run(main())


def _freeze_start_up(_port: int) -> None:
    """Once listening: start-up's objects (~240k: modules, torch, aiohttp; the histories' dict) leave the
    collector's view for good."""
    # a full collection walks every tracked object (~1 us each): unfrozen, each one stalls the loop ~250 ms
    gc.collect()
    gc.freeze()
