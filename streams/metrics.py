"""Every Prometheus metric of the system, defined here and nowhere else.

One class per role builds that role's metrics on a registry of its own (a process runs one role; tests
build several side by side), so a role exposes only what it measures:

- :class:`IngestMetrics` (``asmg ingest``, on its HTTP ``/metrics``): events accepted, refused by reason,
  request latency;
- :class:`WindowingMetrics` and :class:`CoordinatorMetrics` (``asmg worker windowing``): events accepted,
  refused by reason, late; per-partition watermark and its lag behind the wall clock, the open periods'
  samples; periods closed, the last close's time, how long closes took;
- :class:`TrainerMetrics` (``asmg worker trainer``): phase durations, the published version, the served
  model's and the IU shadow's AUC/logloss from each model record and their lift;
- :class:`ScorerCollector` (``asmg worker scorer``, on its HTTP ``/metrics``): the served version, model
  records by outcome (artifact load failures among them), online AUC/logloss per period of the served
  model and the IU shadow and their lift, request rate and latency;
- :class:`ConsumerLag` (windowing and trainer): lag per consumer group, committed offsets vs the
  partitions' high watermarks, read by a background thread;
- faust's own worker metrics (:func:`faust_sensors`), exposed as faust defines them (``faust_*``; its
  latency histograms are in milliseconds, as faust observes them).

Names follow Prometheus' conventions: ``asmg_`` prefix, base units (``_seconds``, unix
``_timestamp_seconds``), ``_total`` counters. The faust roles serve their registry on
``--metrics-port``/``ASMG_METRICS_PORT`` (:func:`serve`); the Grafana dashboard and the alert rules in
deploy/ use these names, and tests/test_metrics_prometheus.py checks a real Prometheus scrapes them all.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from streams.wire.kafka_config import KafkaSettings

log = logging.getLogger(__name__)

disable_created_metrics()  # no *_created series beside every counter: nothing here reads them

PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                 1800.0)
CLOSE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TRAINER_PHASES = ("read", "evaluate", "pretrain", "update", "base_update", "meta_training", "generation",
                  "artifact", "checkpoint", "publish")
QUALITY_GAUGE_PERIODS = 5  # the scorer exposes its online AUC/logloss for this many most recent periods

EVENT_FIELDS = ("user_id", "item_id", "ts", "label", "categories", "event_id")


def new_registry(process: bool = True) -> CollectorRegistry:
    """A role's registry; with ``process``: the process_* and python_info metrics too."""
    registry = CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> int:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread; returns the bound port."""
    server, _ = start_http_server(port, host, registry)
    bound = int(server.server_port)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, bound)
    return bound


def reason_label(reason: str) -> str:
    """A refusal's reason in words (asmg.events.EventError, the windowing role) -> a bounded label value."""
    text = reason.strip().lower()
    if text in ("late", "outside periods"):
        return text.replace(" ", "_")
    for start, label in (("invalid json", "invalid_json"), ("event is not utf-8", "not_utf8"),
                         ("body is not utf-8", "not_utf8"), ("missing field", "missing_field"),
                         ("unsupported schema version", "schema_version"), ("event must be", "not_an_object"),
                         ("record has no value", "no_value"), ("invalid control record", "invalid_control")):
        if text.startswith(start):
            return label
    for name in EVENT_FIELDS:
        if text.startswith(name):
            return f"invalid_{name}"
    return "other"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# --- ingest -------------------------------------------------------------------------------------------------


class IngestMetrics:
    """``asmg ingest`` (producers/ingest.py)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.accepted = Counter("asmg_ingest_events_accepted", "Events validated and acknowledged by Kafka.",
                                registry=self.registry)
        self.refused = Counter("asmg_ingest_events_refused", "Events refused (and sent to the DLQ), by reason.",
                               ["reason"], registry=self.registry)
        self.unacknowledged = Counter("asmg_ingest_events_unacknowledged",
                                      "Valid events Kafka did not acknowledge (the request got a 503).",
                                      registry=self.registry)
        self.requests = Histogram("asmg_ingest_request_seconds", "HTTP request latency of the ingest service.",
                                  ["path", "status"], buckets=REQUEST_BUCKETS, registry=self.registry)

    def refuse(self, reason: str) -> None:
        self.refused.labels(reason_label(reason)).inc()


# --- windowing and the coordinator -------------------------------------------------------------------------


class WindowingMetrics:
    """The windowing worker (streams/windowing/worker.py): counters fed per committed batch, gauges read from
    the core at scrape time (the core's per-partition memory holds only the partitions this worker owns)."""

    def __init__(self, registry: CollectorRegistry, core: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.core = core
        self.clock = clock
        self.accepted = Counter("asmg_windowing_events_accepted", "Events accepted into an open period.",
                                ["partition"], registry=registry)
        self.refused = Counter("asmg_windowing_events_refused",
                               "Records sent to the DLQ, by reason (late, outside_periods, invalid_*).",
                               ["reason"], registry=registry)
        self.late = Counter("asmg_windowing_late_events", "Events of a period their partition had already closed.",
                            ["partition"], registry=registry)
        self.control = Counter("asmg_windowing_control_records", "Watermark and end-of-stream markers applied.",
                               registry=registry)
        self.records = Counter("asmg_windowing_records", "Records of the interactions topic processed (committed).",
                               registry=registry)
        self.batch_seconds = Histogram("asmg_windowing_batch_seconds", "Time to process and commit one batch.",
                                       buckets=REQUEST_BUCKETS, registry=registry)
        self.partition_closes = Counter("asmg_windowing_partition_periods_closed",
                                        "Periods whose samples file a partition wrote.", ["partition"],
                                        registry=registry)
        if core is not None:
            registry.register(_Callback(self._collect))

    def observe(self, partition: int, batch: Any) -> None:
        """After a committed batch: its :class:`~streams.windowing.core.Batch`."""
        label = str(partition)
        for reason in batch.reasons:
            self.refused.labels(reason_label(reason)).inc()
        if batch.late:
            self.late.labels(label).inc(batch.late)
        if batch.control:
            self.control.inc(batch.control)
        self.accepted.labels(label).inc(batch.accepted)
        self.records.inc(batch.records)
        if batch.closed:
            self.partition_closes.labels(label).inc(len(batch.closed))

    def _collect(self) -> Iterator[Any]:
        watermark = GaugeMetricFamily("asmg_windowing_watermark_timestamp_seconds",
                                      "Event-time watermark of a partition (max event time - allowed lateness, "
                                      "or a marker's time).", labels=["partition"])
        lag = GaugeMetricFamily("asmg_windowing_watermark_lag_seconds",
                                "Wall clock minus a partition's watermark.", labels=["partition"])
        closed = GaugeMetricFamily("asmg_windowing_closed_period",
                                   "Last period a partition closed (wrote its samples file).", labels=["partition"])
        samples = GaugeMetricFamily("asmg_windowing_open_period_samples",
                                    "Events accepted into a partition's open periods, not yet written (implicit "
                                    "mode adds one sampled negative per positive when the period is written).",
                                    labels=["partition"])
        now = self.clock()
        for partition, mark, closed_through, open_samples in self.core.partition_gauges():
            label = str(partition)
            if mark is not None and math.isfinite(mark):
                watermark.add_metric([label], mark)
                lag.add_metric([label], now - mark)
            closed.add_metric([label], closed_through)
            samples.add_metric([label], open_samples)
        yield from (watermark, lag, closed, samples)


class CoordinatorMetrics:
    """The period coordinator (streams/windowing/coordinator.py). Only the worker that owns the watermarks partition
    coordinates; the gauges read from it are exposed by that worker alone."""

    def __init__(self, registry: CollectorRegistry, coordinator: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.coordinator = coordinator
        self.clock = clock
        self.last_close = clock()  # until this worker closes one: when it started
        self._first_seen: dict[int, float] = {}
        self._seen_through = 0
        self.closed = Counter("asmg_periods_closed", "Periods the coordinator closed (published).",
                              registry=registry)
        self.close_duration = Histogram("asmg_period_close_duration_seconds",
                                        "From the first partition closing a period to its publication (how long "
                                        "the slowest partition kept it open).", buckets=CLOSE_BUCKETS,
                                        registry=registry)
        self.samples = Gauge("asmg_period_samples", "Samples of the last closed period.", registry=registry)
        if coordinator is not None:
            registry.register(_Callback(self._collect))

    def watermark(self, record: Mapping[str, Any]) -> None:
        """A partition's watermark record: remember when a period was first closed by some partition."""
        through = int(record.get("closed_through") or 0)
        now = self.clock()
        for period in range(self._seen_through + 1, through + 1):
            self._first_seen.setdefault(period, now)
        self._seen_through = max(self._seen_through, through)

    def period_closed(self, record: Mapping[str, Any]) -> None:
        now = self.clock()
        period = int(record["period"])
        self.closed.inc()
        self.close_duration.observe(max(0.0, now - self._first_seen.get(period, now)))
        for p in [p for p in self._first_seen if p <= period]:
            del self._first_seen[p]
        self.samples.set(int(record.get("samples", 0)))
        self.last_close = now

    def _collect(self) -> Iterator[Any]:
        coordinator = self.coordinator
        published = getattr(coordinator, "published", None)
        if published is None:  # not the coordinating worker (or not started): nothing to say
            return
        scheme = coordinator.scheme
        yield GaugeMetricFamily("asmg_period_last_closed", "Last period published as closed.", value=published)
        yield GaugeMetricFamily("asmg_period_last_close_timestamp_seconds",
                                "Unix time the coordinator last closed a period (its start until it closed one).",
                                value=self.last_close)
        total = scheme.n_periods
        remaining = math.inf if total is None else max(0, total - published)
        yield GaugeMetricFamily("asmg_periods_remaining", "Periods still to close (+Inf: unbounded tumbling).",
                                value=remaining)
        if remaining > 0:
            nxt = published + 1
            length = scheme.end(nxt) - scheme.start(nxt)
            if math.isfinite(length):
                yield GaugeMetricFamily("asmg_period_length_seconds",
                                        "Event-time length of the next period to close.", value=length)


# --- trainer ------------------------------------------------------------------------------------------------


class TrainerMetrics:
    """The trainer (streams/trainer/agent.py): one observation per period record, one per published model."""

    def __init__(self, registry: CollectorRegistry, model: str) -> None:
        self.registry = registry
        self.model = model
        self.phase = Histogram("asmg_trainer_phase_seconds",
                               "Seconds per phase of a period: read, evaluate, pretrain, update (base_update + "
                               "meta_training + generation for ASMG), artifact, checkpoint, publish.",
                               ["phase"], buckets=PHASE_BUCKETS, registry=registry)
        self.period_seconds = Histogram("asmg_trainer_period_seconds", "Seconds to process one period record.",
                                        buckets=PHASE_BUCKETS, registry=registry)
        self.periods = Counter("asmg_trainer_periods", "Period records by outcome (published, pretrain, skipped, "
                                                       "empty).", ["outcome"], registry=registry)
        self.last_period = Gauge("asmg_trainer_last_period", "Last period the trainer processed.", registry=registry)
        self.version = Gauge("asmg_trainer_published_model_version", "Newest published model version.", ["model"],
                             registry=registry)
        self.model_period = Gauge("asmg_trainer_published_model_period",
                                  "Period of the newest published model (tested on it, trained through it).",
                                  ["model"], registry=registry)
        self.published_total = Counter("asmg_trainer_models_published", "Model records published.", ["model"],
                                       registry=registry)
        self.auc = Gauge("asmg_trainer_model_auc",
                         "AUC on the newest period of the served model (variant=served) and of the IU shadow "
                         "(variant=iu), from the model record.", ["model", "variant"], registry=registry)
        self.logloss = Gauge("asmg_trainer_model_logloss", "Logloss on the newest period, as asmg_trainer_model_auc.",
                             ["model", "variant"], registry=registry)
        self.lift = Gauge("asmg_trainer_model_auc_lift", "Served AUC minus IU shadow AUC on the newest period.",
                          ["model"], registry=registry)
        self.below = Gauge("asmg_trainer_auc_below_iu_periods",
                           "Consecutive newest periods whose served AUC was below the IU shadow's.", ["model"],
                           registry=registry)
        self.candidate_auc = Gauge("asmg_trainer_candidate_auc",
                                   "Serving guard: AUC of each candidate's model on the newest period.",
                                   ["model", "candidate"], registry=registry)
        self.candidate_score = Gauge("asmg_trainer_candidate_score",
                                     "Serving guard: each candidate's running record (exponentially weighted AUC) "
                                     "that chooses the served one.", ["model", "candidate"], registry=registry)
        self.served_candidate = Gauge("asmg_trainer_served_candidate",
                                      "Serving guard: 1 for the candidate whose model is served next, else 0.",
                                      ["model", "candidate"], registry=registry)
        self._streak = 0

    def period(self, period: int, outcome: str, phases: Mapping[str, float], total: float | None = None) -> None:
        for phase, seconds in phases.items():
            if _finite(seconds) is not None:
                self.phase.labels(phase).observe(seconds)
        if total is not None:
            self.period_seconds.observe(total)
        self.periods.labels(outcome).inc()
        self.last_period.set(period)

    def published(self, record: Mapping[str, Any], new: bool = True) -> None:
        """A model record (``new``: this trainer just published it; else read back at start)."""
        model = str(record.get("model") or self.model)
        self.version.labels(model).set(int(record["version"]))
        self.model_period.labels(model).set(int(record["period"]))
        if new:
            self.published_total.labels(model).inc()
        metrics, shadow = record.get("metrics") or {}, record.get("shadow_metrics") or {}
        for variant, values in (("served", metrics), ("iu", shadow)):
            for gauge, key in ((self.auc, "auc"), (self.logloss, "logloss")):
                value = _finite(values.get(key))
                if value is not None:
                    gauge.labels(model, variant).set(value)
        served, iu = _finite(metrics.get("auc")), _finite(shadow.get("auc"))
        if served is not None and iu is not None:
            self.lift.labels(model).set(served - iu)
            self._streak = self._streak + 1 if served < iu else 0
        self.below.labels(model).set(self._streak)
        candidates = record.get("candidates") or {}
        for name, values in candidates.items():
            for gauge, key in ((self.candidate_auc, "auc"), (self.candidate_score, "score")):
                value = _finite(values.get(key))
                if value is not None:
                    gauge.labels(model, name).set(value)
            self.served_candidate.labels(model, name).set(1.0 if name == record.get("candidate") else 0.0)


# --- scorer -------------------------------------------------------------------------------------------------


class ScorerCollector:
    """Prometheus view of a :class:`streams.scorer.service.ScorerService`'s own counters, read at scrape time."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        service, model = self.service, self.service.holder.current
        stats = service.holder.stats()
        yield GaugeMetricFamily("asmg_scorer_model_version", "Version of the served model (0: none yet).",
                                value=model.version if model else 0)
        yield GaugeMetricFamily("asmg_scorer_model_period", "Last period the served model was trained on.",
                                value=model.period if model else 0)
        if model is not None:
            yield GaugeMetricFamily("asmg_scorer_model_load_seconds", "Seconds the served model took to verify and "
                                    "load.", value=model.load_seconds)
            yield GaugeMetricFamily("asmg_scorer_model_loaded_timestamp_seconds", "Unix time the served model "
                                    "went live.", value=model.loaded_at)
        loads = CounterMetricFamily("asmg_scorer_model_records", "Model records by outcome (load_failures: the "
                                    "artifact failed to verify or load, load_timeouts among them; records_forged: "
                                    "no valid signature; records_refused: uri outside the artifact store).",
                                    labels=["outcome"])
        for outcome in ("models_loaded", "load_failures", "load_timeouts", "records_stale", "records_invalid",
                        "records_forged", "records_refused"):  # streams/scorer/state.py OUTCOMES
            loads.add_metric([outcome], stats.get(outcome, 0))
        yield loads
        events = CounterMetricFamily("asmg_scorer_events", "Interaction events by outcome.", labels=["outcome"])
        for outcome, n in service.event_counts().items():
            events.add_metric([outcome], n)
        yield events
        yield GaugeMetricFamily("asmg_scorer_users", "Users whose recent history is held.",
                                value=len(service.histories))
        yield from self._quality()

    def _quality(self) -> Iterator[Any]:
        report = self.service.prequential.report()
        auc = GaugeMetricFamily("asmg_scorer_prequential_auc", "Online AUC per period of the served model "
                                "(model=served) and its IU shadow (model=shadow).", labels=["period", "model"])
        loss = GaugeMetricFamily("asmg_scorer_prequential_logloss", "Online logloss per period, as the AUC.",
                                 labels=["period", "model"])
        lift = GaugeMetricFamily("asmg_scorer_prequential_auc_lift", "Online AUC of the served model minus its IU "
                                 "shadow's, per period.", labels=["period"])
        for period, row in list(report.items())[-QUALITY_GAUGE_PERIODS:]:
            for name, prefix in (("served", ""), ("shadow", "shadow_")):
                if row[f"{prefix}auc"] is not None:
                    auc.add_metric([str(period), name], row[f"{prefix}auc"])
                if row[f"{prefix}logloss"] is not None:
                    loss.add_metric([str(period), name], row[f"{prefix}logloss"])
            if row["auc"] is not None and row["shadow_auc"] is not None:
                lift.add_metric([str(period)], row["auc"] - row["shadow_auc"])
        yield from (auc, loss, lift)


def scorer_registry(service: Any) -> tuple[CollectorRegistry, Histogram]:
    """The scorer's registry (its collector, the process metrics) and its request latency histogram."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScorerCollector(service))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    latency = Histogram("asmg_scorer_request_seconds", "HTTP request latency of the scorer.", ["path", "status"],
                        buckets=REQUEST_BUCKETS, registry=registry)
    return registry, latency


# --- consumer lag -------------------------------------------------------------------------------------------


class ConsumerLag:
    """Lag per consumer group: each partition's high watermark minus the group's committed offset.

    A daemon thread refreshes the numbers every ``interval`` seconds (never in the scrape path); a scrape
    reports the last refresh. Partitions the group never committed are left out. ``groups``: group -> the
    topics it reads.

    Why a plain consumer per group (never subscribed, so it never joins the group) and not the AdminClient:
    librdkafka's group admin requests (``list_consumer_group_offsets``) go through its coordinator-request
    machinery, which crashed whole workers here: a segfault when a worker started on a fresh broker, and
    ``rd_kafka_enq_once_del_source_return: Assertion 'eonce->refcnt > 0'`` (a native abort) in the trainer
    during a broker restart (librdkafka issue #4605, open). ``committed()`` and ``get_watermark_offsets()``
    take the consumer's ordinary paths, and both honour their timeouts.
    """

    def __init__(self, kafka: KafkaSettings, groups: Mapping[str, Sequence[str]] | Sequence[str],
                 registry: CollectorRegistry | None = None, interval: float = 5.0, timeout: float = 10.0) -> None:
        self.kafka = kafka
        self.groups = {g: list(t) for g, t in groups.items()} if isinstance(groups, Mapping) else \
            {g: [] for g in groups}
        self.interval = interval
        self.timeout = timeout
        self.lags: dict[tuple[str, str, int], int] = {}
        self.refreshed: float | None = None
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumers: dict[str, Any] = {}  # group -> its long-lived consumer (one client for the role's life)
        if registry is not None:
            registry.register(_Callback(self._collect))

    def start(self) -> ConsumerLag:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="asmg-consumer-lag", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # a broker away for a moment: keep the old numbers, count, retry
                self.errors += 1
                log.debug("consumer lag refresh failed: %s", exc)
            self._stop.wait(self.interval)

    def _consumer(self, group: str) -> Any:
        from confluent_kafka import Consumer

        if group not in self._consumers:
            self._consumers[group] = Consumer(self.kafka.confluent_config(
                group_id=group, enable_auto_commit=False, logger_name=f"{__name__}.kafka"))
        return self._consumers[group]

    def refresh(self) -> dict[tuple[str, str, int], int]:
        from confluent_kafka import KafkaException, TopicPartition

        lags: dict[tuple[str, str, int], int] = {}
        for group, topics in self.groups.items():
            consumer = self._consumer(group)
            partitions = []
            for topic in topics:
                info = consumer.list_topics(topic, timeout=self.timeout).topics.get(topic)
                if info is not None and info.error is None:
                    partitions += [TopicPartition(topic, p) for p in sorted(info.partitions)]
            if not partitions:
                continue
            for tp in consumer.committed(partitions, timeout=self.timeout):
                if tp.offset < 0 or tp.error is not None:
                    continue
                try:
                    _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                             timeout=self.timeout, cached=False)
                except KafkaException:
                    continue
                if high >= 0:
                    lags[(group, tp.topic, tp.partition)] = max(0, high - tp.offset)
        self.lags = lags
        self.refreshed = time.time()
        return lags

    def _collect(self) -> Iterator[Any]:
        lag = GaugeMetricFamily("asmg_consumer_group_lag_records",
                                "Records between a consumer group's committed offset and the partition's end.",
                                labels=["group", "topic", "partition"])
        for (group, topic, partition), value in sorted(self.lags.items()):
            lag.add_metric([group, topic, str(partition)], value)
        yield lag
        if self.refreshed is not None:
            yield GaugeMetricFamily("asmg_consumer_group_lag_refreshed_timestamp_seconds",
                                    "Unix time of the last successful lag refresh.", value=self.refreshed)
        yield CounterMetricFamily("asmg_consumer_group_lag_errors", "Lag refreshes that failed.", value=self.errors)


# --- faust --------------------------------------------------------------------------------------------------


def faust_sensors(app: Any, registry: CollectorRegistry) -> None:
    """faust's own Prometheus monitor (messages, events, table operations, commits, sends, rebalances, ...)
    on ``registry``, with names ``faust_*`` whatever the app id."""
    from faust.sensors.prometheus import setup_prometheus_sensors

    # also registers a /metrics page on faust's web server, which our workers keep off; we serve the registry
    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")


# --- a role's metrics, assembled ----------------------------------------------------------------------------


class RoleMetrics:
    """What ``streams.trainer.app.create_app`` attaches to a faust app as ``app.asmg_metrics``."""

    def __init__(self, role: str, registry: CollectorRegistry | None = None) -> None:
        self.role = role
        self.registry = registry if registry is not None else new_registry()
        self.windowing: WindowingMetrics | None = None
        self.coordinator: CoordinatorMetrics | None = None
        self.trainer: TrainerMetrics | None = None
        self.lag: ConsumerLag | None = None
        self.port: int | None = None

    def watch_lag(self, kafka: KafkaSettings, groups: Mapping[str, Sequence[str]],
                  interval: float = 5.0) -> ConsumerLag:
        """Lag of each group (-> the topics it reads), refreshed in the background."""
        self.lag = ConsumerLag(kafka, groups, self.registry, interval).start()
        return self.lag

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        self.port = serve(self.registry, port, host)
        return self.port


class _Callback:
    """A collector from a generator function (custom collectors without a class each)."""

    def __init__(self, collect: Callable[[], Iterator[Any]]) -> None:
        self._collect = collect

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        return self._collect()


def request_timer(histogram: Callable[[], Histogram]) -> Callable[..., Any]:
    """aiohttp middleware observing each request's seconds by route and status into ``histogram()``
    (a callable, so an app can resolve its own registry's histogram at request time)."""
    from aiohttp import web

    @web.middleware
    async def timed(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else "other"
            histogram().labels(path, str(status)).observe(time.perf_counter() - start)

    return timed
