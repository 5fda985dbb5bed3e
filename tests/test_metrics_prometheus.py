"""Prometheus metrics (streams/metrics.py), scraped by a real Prometheus during an end-to-end replay.

Unit tests feed each role's metrics directly. The end-to-end test runs the windowing and trainer workers
(``--metrics-port``, JSON logs), a scorer and the ingest service in this process, and Debian's ``prometheus``
scraping all four every second with deploy/prometheus/rules.yml loaded, while a slice of MovieLens-100K (the
synthetic stream where ml-100k is absent) is replayed one period at a time, each close waiting until
Prometheus has scraped it (:class:`Paced`), so the scorer evaluates every period after pretraining online
and Prometheus' stored samples show every period and model. Bad, late and malformed records go in on the
way. Then every metric name the Grafana dashboard and the alert rules read must be among the scraped ones,
every rule must evaluate, and every panel query must run on the live server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asmg.data.periods import PeriodScheme
from asmg.events import EventError, parse_event
from streams.metrics import (
    ConsumerLag,
    CoordinatorMetrics,
    IngestMetrics,
    RoleMetrics,
    ScorerCollector,
    TrainerMetrics,
    WindowingMetrics,
    faust_sensors,
    new_registry,
    reason_label,
)
from streams.windowing.core import WindowingCore
from streams.wire.period_store import PeriodStore
from tests.prom_server import (
    Prometheus,
    dashboard_expressions,
    dashboards,
    free_port,
    grafana_to_promql,
    referenced_names,
)


def exposed(registry) -> dict[str, dict]:
    """sample name -> {labels tuple: value} of a registry's exposition."""
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def event(user: int, item: int, ts: float, label: int = 1) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "ts": ts, "label": label}).encode()


# --- units --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    {"item_id": 1, "ts": 5}, {"user_id": True, "item_id": 1, "ts": 5}, {"user_id": 1, "item_id": -1, "ts": 5},
    {"user_id": 1, "item_id": 1, "ts": "x"}, {"user_id": 1, "item_id": 1, "ts": 5, "label": 3},
    {"user_id": 1, "item_id": 1, "ts": 5, "categories": 4}, {"user_id": 1, "item_id": 1, "ts": 5, "event_id": ""},
    {"user_id": 1, "item_id": 1, "ts": 5, "v": 9}, [1, 2], b"\xff\xfe", b"{nope",
])
def test_refusal_reasons_map_to_bounded_labels(raw) -> None:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    label = reason_label(info.value.reason)
    assert label != "other" and label.replace("_", "").isalnum(), (info.value.reason, label)


def test_windowing_metrics_follow_the_core(tmp_path: Path) -> None:
    now = 10_000.0
    core = WindowingCore(PeriodScheme(bounds=[0, 100, 200, 300]))
    registry = new_registry(process=False)
    metrics = WindowingMetrics(registry, core, clock=lambda: now)
    store = PeriodStore(str(tmp_path / "periods"))
    records = [event(1, 1, 10), event(2, 2, 150), b"{bad", event(3, 3, 20), event(4, 4, 999), event(5, 5, 160)]
    metrics.observe(0, core.process(0, [0, 1], records[:2], store, "t"))
    metrics.observe(0, core.process(0, [2, 3, 4, 5], records[2:], store, "t"))
    metrics.observe(0, core.process(0, [1], records[1:2], store, "t"))  # a redelivery: skipped
    got = exposed(registry)
    # ts 150 closes period 1 (so ts 20 is late); ts 999 is outside every period but closes 2 and 3 (ts 160: late)
    assert got["asmg_windowing_events_accepted_total"] == {(("partition", "0"),): 2.0}
    assert got["asmg_windowing_events_refused_total"] == {(("reason", "invalid_json"),): 1.0,
                                                          (("reason", "late"),): 2.0,
                                                          (("reason", "outside_periods"),): 1.0}
    assert got["asmg_windowing_late_events_total"] == {(("partition", "0"),): 2.0}
    assert got["asmg_windowing_watermark_timestamp_seconds"] == {(("partition", "0"),): 999.0}
    assert got["asmg_windowing_watermark_lag_seconds"] == {(("partition", "0"),): now - 999.0}
    assert got["asmg_windowing_closed_period"] == {(("partition", "0"),): 3.0}
    assert got["asmg_windowing_open_period_samples"] == {(("partition", "0"),): 0.0}
    assert got["asmg_windowing_partition_periods_closed_total"] == {(("partition", "0"),): 3.0}
    assert got["asmg_windowing_records_total"] == {(): 6.0}


def test_open_period_samples(tmp_path: Path) -> None:
    core = WindowingCore(PeriodScheme(bounds=[0, 100, 200, 300]))
    registry = new_registry(process=False)
    WindowingMetrics(registry, core)
    core.process(3, [0, 1, 2], [event(1, 1, 10), event(2, 2, 20), event(3, 3, 150)],
                 PeriodStore(str(tmp_path / "periods")), "t")
    assert exposed(registry)["asmg_windowing_open_period_samples"] == {(("partition", "3"),): 1.0}


def test_coordinator_metrics() -> None:
    clock = iter([0.0, 10.0, 12.0, 20.0, 25.0]).__next__
    coordinator = SimpleNamespace(published=None, scheme=PeriodScheme(bounds=[0, 100, 300, 600]))
    registry = new_registry(process=False)
    metrics = CoordinatorMetrics(registry, coordinator, clock=clock)  # starts at t=0
    assert "asmg_period_last_closed" not in exposed(registry)  # not the coordinating worker (yet)
    coordinator.published = 0
    metrics.watermark({"partition": 0, "closed_through": 1})  # t=10: partition 0 closed period 1
    metrics.watermark({"partition": 1, "closed_through": 1})  # t=12
    metrics.period_closed({"period": 1, "samples": 42})  # t=20: published 10 s after the first close
    coordinator.published = 1
    got = exposed(registry)
    assert got["asmg_period_last_closed"] == {(): 1.0}
    assert got["asmg_period_last_close_timestamp_seconds"] == {(): 20.0}
    assert got["asmg_period_length_seconds"] == {(): 200.0}  # period 2 is next: [100, 300)
    assert got["asmg_periods_remaining"] == {(): 2.0}
    assert got["asmg_period_samples"] == {(): 42.0}
    assert got["asmg_periods_closed_total"] == {(): 1.0}
    assert got["asmg_period_close_duration_seconds_sum"] == {(): 10.0}
    coordinator.published = 3
    got = exposed(registry)
    assert got["asmg_periods_remaining"] == {(): 0.0} and "asmg_period_length_seconds" not in got


def test_trainer_metrics_count_periods_below_iu() -> None:
    registry = new_registry(process=False)
    metrics = TrainerMetrics(registry, "asmg")
    metrics.period(3, "published", {"pretrain": 2.0}, 2.1)  # the pretrained model: tested on nothing yet
    metrics.published({"model": "asmg", "version": 1, "period": 3, "metrics": None, "shadow_metrics": None,
                       "pretrained": True})
    got = exposed(registry)
    assert got["asmg_trainer_published_model_period"] == {(("model", "asmg"),): 3.0}
    assert not {"asmg_trainer_model_auc", "asmg_trainer_model_logloss", "asmg_trainer_model_auc_lift"} & set(got)
    for version, (served, iu) in enumerate([(0.70, 0.69), (0.68, 0.69), (0.67, 0.70), (0.66, 0.70)], 2):
        metrics.period(2 + version, "published", {"evaluate": 0.1, "update": 1.0, "meta_training": 0.5}, 1.2)
        metrics.published({"model": "asmg", "version": version, "period": 2 + version,
                           "metrics": {"auc": served, "logloss": 0.6}, "shadow_metrics": {"auc": iu, "logloss": 0.7}})
    got = exposed(registry)
    model = (("model", "asmg"),)
    assert got["asmg_trainer_auc_below_iu_periods"] == {model: 3.0}
    assert got["asmg_trainer_model_auc_lift"][model] == pytest.approx(-0.04)
    assert got["asmg_trainer_published_model_version"] == {model: 5.0}
    assert got["asmg_trainer_model_auc"][(("model", "asmg"), ("variant", "iu"))] == 0.70
    assert got["asmg_trainer_phase_seconds_count"][(("phase", "meta_training"),)] == 4.0
    assert got["asmg_trainer_periods_total"] == {(("outcome", "published"),): 5.0}
    metrics.published({"model": "asmg", "version": 6, "period": 8, "metrics": {"auc": 0.8},
                       "shadow_metrics": {"auc": 0.7}})
    assert exposed(registry)["asmg_trainer_auc_below_iu_periods"] == {model: 0.0}


def test_every_referenced_name_is_defined_in_streams_metrics(tmp_path: Path) -> None:
    """Without Kafka: exercise each role's metrics once; the names the dashboard and the rules read all show up
    (the end-to-end test below checks the same against what a real Prometheus scraped)."""
    import faust
    from faust.types import TP

    names: set[str] = set()
    ingest = IngestMetrics(new_registry(process=False))
    ingest.accepted.inc()
    ingest.refuse("missing field user_id")
    ingest.requests.labels("/events", "202").observe(0.01)
    names |= set(exposed(ingest.registry))

    role = RoleMetrics("windowing", new_registry(process=False))
    core = WindowingCore(PeriodScheme(bounds=[0, 100, 200]))
    role.windowing = WindowingMetrics(role.registry, core)
    coordinator = SimpleNamespace(published=0, scheme=core.scheme)
    role.coordinator = CoordinatorMetrics(role.registry, coordinator)
    role.windowing.observe(0, core.process(0, [0, 1, 2], [event(1, 1, 150), event(1, 2, 10), b"x"],
                                           PeriodStore(str(tmp_path / "p")), "t"))
    role.windowing.batch_seconds.observe(0.01)
    role.coordinator.period_closed({"period": 1, "samples": 3})
    lag = ConsumerLag(None, ["g"], role.registry)  # type: ignore[arg-type]
    lag.lags = {("g", "t", 0): 5}
    app = faust.App("metrics-test", broker="kafka://127.0.0.1:1", web_enabled=False, autodiscover=False)
    faust_sensors(app, role.registry)
    app.monitor.on_message_in(TP("t", 0), 0, SimpleNamespace())
    app.monitor._metrics.events_runtime_latency.observe(1.0)  # as on_stream_event_out does
    names |= set(exposed(role.registry))

    trainer = TrainerMetrics(new_registry(process=False), "asmg")
    trainer.period(4, "published", {"evaluate": 0.1}, 0.2)
    trainer.published({"model": "asmg", "version": 1, "period": 4, "metrics": {"auc": 0.7, "logloss": 0.6},
                       "shadow_metrics": {"auc": 0.69, "logloss": 0.61}, "candidate": "iu",
                       "candidates": {"iu": {"auc": 0.69, "score": 0.69}}})
    names |= set(exposed(trainer.registry))

    from streams.metrics import scorer_registry

    service = _fake_scorer()
    registry, latency = scorer_registry(service)
    latency.labels("/score", "200").observe(0.002)
    names |= set(exposed(registry))
    assert isinstance(ScorerCollector(service).describe(), list)

    missing = referenced_names() - names
    assert not missing, f"read by the dashboard or the rules but defined nowhere: {sorted(missing)}"


def _fake_scorer() -> Any:
    model = SimpleNamespace(version=3, period=5, load_seconds=0.1, loaded_at=1.0)
    holder = SimpleNamespace(current=model, stats=lambda: {"models_loaded": 3, "load_failures": 1,
                                                           "records_stale": 0, "records_invalid": 0})
    row = {"auc": 0.7, "logloss": 0.6, "shadow_auc": 0.68, "shadow_logloss": 0.62}
    return SimpleNamespace(holder=holder, event_counts=lambda: {"events": 10, "scored": 8, "invalid": 1},
                           histories=[1, 2], prequential=SimpleNamespace(report=lambda: {6: row}))


# --- end to end ---------------------------------------------------------------------------------------------


@contextmanager
def serving(app, port: int) -> Iterator[str]:
    """An aiohttp app on 127.0.0.1:port, run by a thread of this process."""
    from aiohttp import web

    ready, failure = threading.Event(), []
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            ready.set()
            await holder["stop"].wait()
        finally:
            await runner.cleanup()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="test-ingest", daemon=True)
    thread.start()
    assert ready.wait(30) and not failure, failure
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


def post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _stream_log():
    from asmg.data.log import make_log
    from tests.helpers import ml100k_dir

    ml100k = ml100k_dir()
    if ml100k is not None:
        from asmg.data.movielens import load_ml100k

        full = load_ml100k(ml100k)
        return make_log("ml-100k-head", full.events.iloc[:3200], full.item_categories, implicit=False)
    from asmg.data.synthetic import synthetic_log

    return synthetic_log(n_users=120, n_items=150, n_categories=6, n_periods=8, events_per_period=400, seed=0,
                         implicit=False, name="synthetic")


class Paced:
    """Replays the log one period at a time, each time waiting until Prometheus has scraped what followed.

    Prometheus keeps what a scrape saw, and gauges such as ``asmg_period_last_closed`` or
    ``asmg_trainer_published_model_period`` say "the newest one": a period that closes, or a model that is
    published and replaced, between two scrapes leaves no trace. In production periods last hours or days
    against a 15 s scrape, so that never happens; a test replay closes periods within milliseconds. Rather
    than giving every period a series of its own (a ``period`` label: one more series per period, for
    ever), the replay runs at the pace the gauges are designed for: a period's events, its close, then wait,
    by polling Prometheus' query API, until the close, the trainer's model of that period and the scorer
    serving it have been scraped. (The scorer's online AUC/logloss does carry a bounded ``period`` label,
    QUALITY_GAUGE_PERIODS of them, because it keeps changing while a period is scored.)
    """

    def __init__(self, prometheus: Prometheus, scorer_url: str, workers: list, protocol: Any,
                 timeout: float = 60.0) -> None:
        self.prometheus, self.scorer_url, self.workers, self.protocol = prometheus, scorer_url, workers, protocol
        self.timeout = timeout
        self.events = 0  # valid events sent so far: the scorer has consumed them all before a period closes

    def scorer_consumed(self) -> bool:
        return ((get_json(f"{self.scorer_url}/quality") or {}).get("events") or {}).get("events", 0) >= self.events

    def scraped(self, period: int) -> bool:
        """Prometheus' newest samples show ``period`` closed, trained and (from pretraining on) served."""
        value = self.prometheus.value
        done = (value("max(asmg_period_last_closed)") == period and value("max(asmg_trainer_last_period)") == period)
        if period >= self.protocol.pretrain_periods:
            done = done and value("max(asmg_trainer_published_model_period)") == period \
                and value("max(asmg_scorer_model_period)") == period
        return done

    def close(self, period: int, close: Callable[[], Any]) -> None:
        """Let the scorer read the period's events (scored by the model of the period before), close the period
        and wait for the scrapes."""
        from tests.test_windowing import wait_for

        if period > self.protocol.pretrain_periods:
            wait_for(self.scorer_consumed, self.timeout, self.workers, f"the scorer reading period {period}")
        close()
        wait_for(lambda: self.scraped(period), self.timeout, self.workers,
                 f"Prometheus scraping period {period} closed, trained and served")


def values_at(history: list[tuple[dict[str, str], list[tuple[float, float]]]]) -> dict[float, float]:
    """Scrape time -> value of a selector that matches one series."""
    assert len(history) <= 1, history
    return dict(history[0][1]) if history else {}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_prometheus_scrapes_every_referenced_metric(kafka_settings, topic_names, tmp_path: Path) -> None:
    """Besides every referenced name: Prometheus' stored samples show every closed period, every published
    model's period, version and AUCs (none for the pretrained model), and the scorer serving the pretrained
    model first and evaluating every period after pretraining online (see :class:`Paced`)."""
    from asmg.data.periods import PeriodScheme as FixedPeriods
    from asmg.prepare import prepare_periods
    from producers.ingest import make_app
    from producers.producer import make_producer
    from producers.replay import replay_log
    from streams.scorer.service import ScorerOptions, ScorerService, running
    from streams.windowing.coordinator import send_end_of_stream, send_watermark
    from streams.wire.records import read_topic
    from streams.wire.topics import ensure_topics
    from tests.test_trainer import TRAIN
    from tests.test_windowing import PROTOCOL, Worker, produce, stream_settings

    log = _stream_log()
    prepared = prepare_periods(log, PROTOCOL)
    bounds = prepared.bounds.to_list()
    settings = stream_settings(topic_names, tmp_path, period_bounds=json.dumps(bounds), log_level="info",
                               log_format="json", **{**TRAIN, "method": "asmg-guarded", "batch_size": 256,
                                                     "meta_batch_size": 256})
    ensure_topics(kafka_settings, topic_names, settings.partitions)
    ports = {"windowing": free_port(), "trainer": free_port(), "scorer": free_port(), "ingest": free_port()}
    bad_input_after = 5  # bad, late and malformed records once periods 1..5 are closed
    edges = np.searchsorted(log.events["ts"].to_numpy(), bounds[:-1], side="left").tolist() + [len(log.events)]
    expected_models = PROTOCOL.n_periods - PROTOCOL.pretrain_periods + 1  # the pretrained model, then one a period
    model_periods = list(range(PROTOCOL.pretrain_periods, PROTOCOL.n_periods + 1))

    workers = [Worker(role, settings, kafka_settings, tmp_path, ASMG_METRICS_PORT=str(ports[role]))
               for role in ("windowing", "trainer")]
    prometheus = Prometheus(tmp_path / "prometheus", {f"asmg-{role}": [f"127.0.0.1:{port}"]
                                                      for role, port in ports.items()})
    scorer = ScorerService(kafka_settings, topic_names, ScorerOptions(
        periods=FixedPeriods(tuple(bounds)), model_name="asmg", wait_models=1.0, batch_seconds=0.1,
        artifact_store=settings.artifact_store))
    try:
        with prometheus, running(scorer, port=ports["scorer"]) as scorer_url, \
                serving(make_app(kafka_settings, topic_names), ports["ingest"]) as ingest_url:
            run_started = time.time()
            paced = Paced(prometheus, scorer_url, workers, PROTOCOL)
            producer = make_producer(kafka_settings)
            for period in range(1, PROTOCOL.n_periods + 1):
                last = period == PROTOCOL.n_periods  # with the remainder after the last period (refused)
                replay_log(log, producer, topic_names.interactions, start=edges[period - 1],
                           stop=None if last else edges[period])
                paced.events = edges[period] + (3 if period > bad_input_after else 0)
                paced.close(period, (lambda: send_end_of_stream(kafka_settings, topic_names)) if last else
                            (lambda p=period: send_watermark(kafka_settings, topic_names, bounds[p])))
                if period != bad_input_after:
                    continue
                # bad input: refused by ingest (two reasons), late at the windowing role, malformed on the topic
                late, fresh = (bounds[0] + bounds[1]) / 2, bounds[period] + 1
                status, answer = post(f"{ingest_url}/events", b"\n".join([
                    event(1, 1, fresh), event(2, 2, fresh), b'{"item_id": 3, "ts": 5}', b"{oops",
                    event(1, 7, late)]))
                assert status == 202 and answer["accepted"] == 3 and len(answer["refused"]) == 2, answer
                produce(kafka_settings, topic_names.interactions, [(b"7", b"not json at all")])
                for user in (1, 2, 3):  # requests too, while later periods' scrapes are still to come
                    assert post(f"{scorer_url}/score", json.dumps({"user_id": user, "items": [1, 2, 3]}).encode()
                                )[0] == 200
                assert post(f"{scorer_url}/score", b'{"items": []}')[0] == 400
            producer.flush(30)
            del producer  # its client threads must not outlive the session's broker
            models = [json.loads(r.value) for r in read_topic(kafka_settings, topic_names.models)]

            required = referenced_names()
            missing: set[str] = set()

            def scraped_all() -> bool:
                missing.clear()
                missing.update(required - prometheus.names())
                return not missing

            deadline = time.monotonic() + 90  # a wait on a condition; the assertion below says what is missing
            while not scraped_all() and time.monotonic() < deadline:
                time.sleep(1)
            targets = {t["labels"]["job"]: t["health"] for t in prometheus.targets()}
            rules = [(r["name"], r.get("health"), r.get("lastError", ""))
                     for g in prometheus.api("rules")["data"]["groups"] for r in g["rules"]]
            values = {expr: prometheus.query(expr)["data"]["result"] for expr in (
                "max(asmg_trainer_published_model_version)", "max(asmg_scorer_model_version)",
                "max(asmg_period_last_closed)", "sum(asmg_windowing_late_events_total)",
                'sum(asmg_windowing_events_refused_total{reason="invalid_json"})',
                "sum(asmg_ingest_events_refused_total)", "sum(asmg_ingest_events_accepted_total)",
                'sum(asmg_scorer_request_seconds_count{path="/score"})', "count(asmg_scorer_prequential_auc)",
                "count(faust_messages_received_total)", "count(asmg_consumer_group_lag_records)",
                "sum(asmg_windowing_records_total)")}
            panel_errors = [f"{where}: {answer.get('error')}" for path in dashboards()
                            for where, expr in dashboard_expressions(path)
                            if (answer := prometheus.query(grafana_to_promql(expr))).get("status") != "success"]
            span = time.time() - run_started + 5
            history = {name: prometheus.history(selector, span) for name, selector in {
                "closed": "asmg_period_last_closed", "version": 'asmg_trainer_published_model_version{model="asmg"}',
                "period": 'asmg_trainer_published_model_period{model="asmg"}',
                "served_auc": 'asmg_trainer_model_auc{model="asmg",variant="served"}',
                "iu_auc": 'asmg_trainer_model_auc{model="asmg",variant="iu"}',
                "scorer_version": "asmg_scorer_model_version", "scorer_period": "asmg_scorer_model_period",
                "online_auc": "asmg_scorer_prequential_auc"}.items()}
    finally:
        for worker in workers:
            worker.stop()
    assert targets == {f"asmg-{role}": "up" for role in ports}, targets
    assert not missing, (f"named by the dashboard or the rules, never scraped: {sorted(missing)}\n"
                         f"prometheus log:\n{prometheus.tail()}")
    assert rules and all(health == "ok" for _, health, _ in rules), rules
    assert not panel_errors, panel_errors

    def number(expr: str) -> float:
        result = values[expr]
        assert result, f"{expr}: no data"
        return float(result[0]["value"][1])

    assert number("max(asmg_trainer_published_model_version)") == expected_models
    assert number("max(asmg_period_last_closed)") == PROTOCOL.n_periods
    assert number("sum(asmg_windowing_late_events_total)") >= 1
    assert number('sum(asmg_windowing_events_refused_total{reason="invalid_json"})') >= 1
    assert number("sum(asmg_ingest_events_refused_total)") == 2
    assert number("sum(asmg_ingest_events_accepted_total)") == 3
    assert number('sum(asmg_scorer_request_seconds_count{path="/score"})') >= 4
    assert number("count(asmg_scorer_prequential_auc)") >= 2  # served and shadow of a period at least
    assert number("count(faust_messages_received_total)") == 1  # the trainer (windowing is not a faust app)
    assert number("sum(asmg_windowing_records_total)") >= 1
    assert number("count(asmg_consumer_group_lag_records)") >= 1

    # every closed period, every published model and the scorer's swaps are among Prometheus' stored samples
    closed = {value for _, samples in history["closed"] for _, value in samples}
    assert set(range(1, PROTOCOL.n_periods + 1)) <= closed, sorted(closed)
    assert [m["period"] for m in models] == model_periods and models[0]["pretrained"] is True
    version, period = values_at(history["version"]), values_at(history["period"])
    served_auc, iu_auc = values_at(history["served_auc"]), values_at(history["iu_auc"])
    for model in models:
        stamps = [t for t, p in period.items() if p == model["period"]]
        assert stamps, f"no scrape showed the model of period {model['period']}"
        assert {version[t] for t in stamps} == {model["version"]}
        if model["metrics"] is None:  # the pretrained model: tested on nothing yet, no AUC gauges
            assert not any(t in served_auc or t in iu_auc for t in stamps), "AUC gauges for the pretrained model"
            continue
        assert any(served_auc.get(t) == pytest.approx(model["metrics"]["auc"], abs=1e-9)
                   and iu_auc.get(t) == pytest.approx(model["shadow_metrics"]["auc"], abs=1e-9) for t in stamps), \
            f"no scrape showed the AUCs of the model of period {model['period']}"
    scorer_version, scorer_period = values_at(history["scorer_version"]), values_at(history["scorer_period"])
    swaps = [(v, scorer_period[t]) for t, v in sorted(scorer_version.items()) if v > 0]
    assert swaps and swaps[0] == (1, PROTOCOL.pretrain_periods), "the scorer serves the pretrained model first"
    assert list(dict.fromkeys(v for v, _ in swaps)) == list(range(1, expected_models + 1)), swaps
    online = {(labels["period"], labels["model"]) for labels, _ in history["online_auc"]}
    evaluated = range(PROTOCOL.pretrain_periods + 1, PROTOCOL.n_periods + 1)  # period 4 by the pretrained model
    assert {(str(p), m) for p in evaluated for m in ("served", "shadow")} <= online, sorted(online)

    # the workers' logs: one JSON object per line, with the period and the model version where they apply
    lines = []
    for worker in workers:
        for line in worker.log.read_text(errors="replace").splitlines():
            if line.strip():
                lines.append((worker.role, json.loads(line)))  # raises on a line that is not JSON
    published = [obj for role, obj in lines if role == "trainer" and obj["message"].startswith("published")]
    assert len(published) == expected_models
    assert all({"period", "model_version", "model", "role", "ts", "level"} <= set(obj) for obj in published)
    closes = [obj for role, obj in lines if role == "windowing" and "closed:" in obj["message"]]
    assert len(closes) == PROTOCOL.n_periods and all("period" in obj for obj in closes)
