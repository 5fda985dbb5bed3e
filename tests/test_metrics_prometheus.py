"""Prometheus metrics (streams/metrics.py), scraped by a real Prometheus during an end-to-end replay.

Unit tests feed each role's metrics directly. The end-to-end test runs the windowing and trainer workers
(``--metrics-port``, JSON logs), a scorer and the ingest service in this process, and Debian's ``prometheus``
scraping all four every second with deploy/prometheus/rules.yml loaded, while a slice of MovieLens-100K (the
synthetic stream where ml-100k is absent) is replayed in two halves: the second half arrives once models
are live, so the scorer evaluates it online. Bad, late and malformed records go in on the way. Then every
metric name the Grafana dashboard and the alert rules read must be among the scraped ones, every rule must
evaluate, and every panel query must run on the live server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

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
from streams.period_store import PeriodStore
from streams.windowing import PeriodScheme, Sink, WindowingCore
from tests.prom_server import (
    Prometheus,
    dashboard_expressions,
    dashboards,
    free_port,
    grafana_to_promql,
    referenced_names,
)

ML100K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"


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
    sink, state = Sink(PeriodStore(str(tmp_path / "periods"))), {}
    records = [event(1, 1, 10), event(2, 2, 150), b"{bad", event(3, 3, 20), event(4, 4, 999), event(5, 5, 160)]

    async def feed() -> None:
        for offset, raw in enumerate(records):
            metrics.observe(0, await core.process(state, "t", 0, offset, raw, sink))
        metrics.observe(0, await core.process(state, "t", 0, 1, records[1], sink))  # a redelivery: skipped

    asyncio.run(feed())
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


def test_open_period_samples(tmp_path: Path) -> None:
    core = WindowingCore(PeriodScheme(bounds=[0, 100, 200, 300]))
    registry = new_registry(process=False)
    WindowingMetrics(registry, core)
    sink, state = Sink(PeriodStore(str(tmp_path / "periods"))), {}

    async def feed() -> None:
        for offset, raw in enumerate([event(1, 1, 10), event(2, 2, 20), event(3, 3, 150)]):
            await core.process(state, "t", 3, offset, raw, sink)

    asyncio.run(feed())
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
    for version, (served, iu) in enumerate([(0.70, 0.69), (0.68, 0.69), (0.67, 0.70), (0.66, 0.70)], 1):
        metrics.period(3 + version, "published", {"evaluate": 0.1, "update": 1.0, "meta_training": 0.5}, 1.2)
        metrics.published({"model": "asmg", "version": version, "period": 3 + version,
                           "metrics": {"auc": served, "logloss": 0.6}, "shadow_metrics": {"auc": iu, "logloss": 0.7}})
    got = exposed(registry)
    model = (("model", "asmg"),)
    assert got["asmg_trainer_auc_below_iu_periods"] == {model: 3.0}
    assert got["asmg_trainer_model_auc_lift"][model] == pytest.approx(-0.04)
    assert got["asmg_trainer_published_model_version"] == {model: 4.0}
    assert got["asmg_trainer_model_auc"][(("model", "asmg"), ("variant", "iu"))] == 0.70
    assert got["asmg_trainer_phase_seconds_count"][(("phase", "meta_training"),)] == 4.0
    assert got["asmg_trainer_periods_total"] == {(("outcome", "published"),): 4.0}
    metrics.published({"model": "asmg", "version": 5, "period": 8, "metrics": {"auc": 0.8},
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
    sink, state = Sink(PeriodStore(str(tmp_path / "p"))), {}

    async def feed() -> None:
        for offset, raw in enumerate([event(1, 1, 150), event(1, 2, 10), b"x"]):
            role.windowing.observe(0, await core.process(state, "t", 0, offset, raw, sink))

    asyncio.run(feed())
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
                       "shadow_metrics": {"auc": 0.69, "logloss": 0.61}})
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
    return SimpleNamespace(holder=holder, evaluator=SimpleNamespace(counts={"events": 10, "scored": 8}),
                           interactions=SimpleNamespace(invalid=1), histories=[1, 2],
                           prequential=SimpleNamespace(report=lambda: {6: row}))


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

    if (ML100K / "u.data").is_file():
        from asmg.data.movielens import load_ml100k

        full = load_ml100k(ML100K)
        return make_log("ml-100k-head", full.events.iloc[:3200], full.item_categories, implicit=False)
    from asmg.data.synthetic import synthetic_log

    return synthetic_log(n_users=120, n_items=150, n_categories=6, n_periods=8, events_per_period=400, seed=0,
                         implicit=False, name="synthetic")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_prometheus_scrapes_every_referenced_metric(kafka_settings, topic_names, tmp_path: Path) -> None:
    from asmg.prepare import prepare_periods
    from producers.ingest import make_app
    from producers.producer import make_producer
    from producers.replay import replay_log
    from streams.coordinator import send_end_of_stream, send_watermark
    from streams.scorer_service import ScorerOptions, ScorerService, running
    from streams.scorer_state import FixedPeriods
    from streams.topics import ensure_topics
    from tests.test_trainer import TRAIN
    from tests.test_windowing import PROTOCOL, Worker, produce, stream_settings, wait_for, wait_records

    started = time.monotonic()
    log = _stream_log()
    prepared = prepare_periods(log, PROTOCOL)
    bounds = prepared.bounds.to_list()
    settings = stream_settings(topic_names, tmp_path, period_bounds=json.dumps(bounds), log_level="info",
                               log_format="json", **{**TRAIN, "batch_size": 256, "meta_batch_size": 256})
    ensure_topics(kafka_settings, topic_names, settings.partitions)
    ports = {"windowing": free_port(), "trainer": free_port(), "scorer": free_port(), "ingest": free_port()}
    split_period = 5  # periods 1..5 first; 6..8 once models are live
    split = int(np.searchsorted(log.events["ts"].to_numpy(), bounds[split_period], side="left"))
    expected_models = PROTOCOL.n_periods - PROTOCOL.pretrain_periods

    workers = [Worker(role, settings, kafka_settings, tmp_path, ASMG_METRICS_PORT=str(ports[role]))
               for role in ("windowing", "trainer")]
    prometheus = Prometheus(tmp_path / "prometheus", {f"asmg-{role}": [f"127.0.0.1:{port}"]
                                                      for role, port in ports.items()})
    scorer = ScorerService(kafka_settings, topic_names, ScorerOptions(
        periods=FixedPeriods(tuple(bounds)), model_name="asmg", wait_models=1.0, batch_seconds=0.1))
    try:
        with prometheus, running(scorer, port=ports["scorer"]) as scorer_url, \
                serving(make_app(kafka_settings, topic_names), ports["ingest"]) as ingest_url:
            producer = make_producer(kafka_settings)
            replay_log(log, producer, topic_names.interactions, stop=split)
            send_watermark(kafka_settings, topic_names, bounds[split_period])  # periods 1..5 close everywhere
            # bad input: refused by ingest (two reasons), late at the windowing role, malformed on the topic
            late, fresh = (bounds[0] + bounds[1]) / 2, bounds[split_period] + 1
            status, answer = post(f"{ingest_url}/events", b"\n".join([
                event(1, 1, fresh), event(2, 2, fresh), b'{"item_id": 3, "ts": 5}', b"{oops", event(1, 7, late)]))
            assert status == 202 and answer["accepted"] == 3 and len(answer["refused"]) == 2, answer
            produce(kafka_settings, topic_names.interactions, [(b"7", b"not json at all")])
            wait_records(kafka_settings, topic_names.models, split_period - PROTOCOL.pretrain_periods, 120, workers,
                         "the models of the first half")
            wait_for(lambda: (get_json(f"{scorer_url}/model") or {}).get("period") == split_period, 60, workers,
                     "the scorer serving the newest model")
            replay_log(log, producer, topic_names.interactions, start=split)
            producer.flush(30)
            del producer  # its client threads must not outlive the session's broker
            send_end_of_stream(kafka_settings, topic_names)
            for user in (1, 2, 3):
                assert post(f"{scorer_url}/score", json.dumps({"user_id": user, "items": [1, 2, 3]}).encode())[0] == 200
            assert post(f"{scorer_url}/score", b'{"items": []}')[0] == 400
            wait_records(kafka_settings, topic_names.models, expected_models, 120, workers, "every model")
            wait_for(lambda: (get_json(f"{scorer_url}/quality") or {}).get("periods"), 60, workers,
                     "online evaluation on the scorer")
            wait_for(lambda: (get_json(f"{scorer_url}/model") or {}).get("version") == expected_models, 60,
                     workers, "the scorer serving the last model")

            required = referenced_names()
            missing: set[str] = set()

            def scraped_all() -> bool:
                missing.clear()
                missing.update(required - prometheus.names())
                return not missing

            deadline = time.monotonic() + 30
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
                "count(faust_messages_received_total)", "count(asmg_consumer_group_lag_records)")}
            panel_errors = [f"{where}: {answer.get('error')}" for path in dashboards()
                            for where, expr in dashboard_expressions(path)
                            if (answer := prometheus.query(grafana_to_promql(expr))).get("status") != "success"]
    finally:
        for worker in workers:
            worker.stop()
    elapsed = time.monotonic() - started

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
    assert number("count(faust_messages_received_total)") == 2  # both faust workers
    assert number("count(asmg_consumer_group_lag_records)") >= 1

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
    assert elapsed < 120, f"took {elapsed:.0f}s"
