"""Fault injection against the real broker: the whole pipeline (windowing, trainer, scorer, each ``asmg worker``
in its own process) over a small explicit stream while the broker is stopped and started, paused past the
clients' session timeout, or a role is killed with SIGKILL and restarted.

Afterwards, whatever happened: every period closed exactly once, one model per period from the last
pretraining one, period files byte for byte those of an undisturbed windowing core (run in this process over
the same partitioned records) holding the offline samples, and the scorer counted every event once.

These tests run a broker of their own (streams/local/broker.py on free ports), so stopping it does not disturb
the session broker. Roles run with metrics on, so their lag watchers (AdminClient) live through the faults too.
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asmg.prepare import PreparedPeriods, prepare_periods
from asmg_cli.pipeline import scorer_json
from streams.local.broker import BrokerConfig, LocalBroker, free_port
from streams.windowing.coordinator import send_end_of_stream
from streams.windowing.core import WindowingCore
from streams.wire.period_store import read_period_record
from streams.wire.settings import StreamSettings
from streams.wire.topics import TopicNames, ensure_topics
from tests.helpers import tiny_log
from tests.test_trainer import MODEL_PERIODS, TRAIN
from tests.test_windowing import (
    PROTOCOL,
    Worker,
    assert_same_samples,
    file_bytes,
    partitioned_records,
    read_json,
    run_core,
    stream_settings,
    wait_consumed,
)

PARTITIONS = 3
SESSION = 6.0  # the roles' consumer-group session (seconds): outages below last longer
OUTAGE = SESSION + 3.0  # a stopped or paused broker stays away this long, so every group session expires
ROLES = ("windowing", "trainer", "scorer")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A broker of this module's own (the tests stop, pause and restart it)."""
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    broker = LocalBroker(BrokerConfig(home=tmp_path_factory.mktemp("kafka-faults"), port=port,
                                      controller_port=controller_port, heap="384m"))
    broker.start(timeout=180, die_with_parent=True)
    try:
        yield broker
    finally:
        pid = broker.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)  # a test that failed while the broker was paused
        gc.collect()
        broker.stop(timeout=30)


@dataclass
class Stream:
    prepared: PreparedPeriods
    records: list[tuple[int, int, bytes]]  # (partition, offset, value): events, then end-of-stream markers
    events: int


@pytest.fixture(scope="module")
def stream() -> Stream:
    log = tiny_log(n_events=2400)
    records = partitioned_records(log, PARTITIONS)
    return Stream(prepare_periods(log, PROTOCOL), records, len(log.events))


@dataclass
class Pipeline:
    """The three roles as ``asmg worker`` processes; ``restart`` replaces one (a supervisor's job)."""

    settings: StreamSettings
    kafka: Any
    logs: Path
    scorer_port: int
    workers: dict[str, Worker] = field(default_factory=dict)
    retired: list[Worker] = field(default_factory=list)

    def start(self, role: str) -> None:
        extra = {"ASMG_SCORER_PORT": str(self.scorer_port), "ASMG_WAIT_MODELS": "0"} if role == "scorer" else \
            {"ASMG_METRICS_PORT": "0"}
        self.workers[role] = Worker(role, self.settings, self.kafka, self.logs, **extra)

    def kill(self, role: str) -> None:
        worker = self.workers.pop(role)
        worker.kill()
        self.retired.append(worker)

    def check(self) -> None:
        """Fail at once when a role died by itself (a native abort, a fail-stop exit)."""
        for role, worker in self.workers.items():
            if not worker.alive():
                pytest.fail(f"the {role} worker exited with {worker.proc.returncode}:\n{worker.tail(6000)}")

    def stop(self) -> None:
        for worker in [*self.workers.values(), *self.retired]:
            worker.stop()

    def tails(self) -> str:
        """Each role's log end, after a stack dump (SIGUSR1): where a role that made no progress waits."""
        for worker in self.workers.values():
            worker.dump_stacks()
        return "\n".join(f"--- {role}\n{w.tail(8000)}" for role, w in self.workers.items())


def until(pipeline: Pipeline, predicate, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it is truthy; fail with the roles' logs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pipeline.check()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{pipeline.tails()}")
        time.sleep(0.5)


def produce(kafka, topic: str, records: list[tuple[int, int, bytes]]) -> None:
    """Each record to its partition, in order (keys as the replay producer sets them: the user id)."""
    from confluent_kafka import Producer

    producer = Producer(kafka.confluent_config(enable_idempotence=True, acks="all", linger_ms=5))
    for partition, _, value in records:
        producer.produce(topic, value=value, partition=partition)
        producer.poll(0)
    assert producer.flush(60) == 0


def closed_periods(kafka, names: TopicNames) -> list[int]:
    return [r["period"] for r in read_json(kafka, names.periods)]


def scorer_events(port: int) -> int:
    status, body = scorer_json(port, "/quality")
    return int(body["events"].get("events", 0)) if status == 200 and body else -1


@pytest.fixture
def run(broker: LocalBroker, stream: Stream, tmp_path: Path) -> Iterator[tuple[Pipeline, TopicNames]]:
    broker.start(timeout=180, die_with_parent=True)  # a no-op when it runs
    kafka = broker.config.settings()
    names = TopicNames(f"faults-{tmp_path.name[-12:]}.")
    ensure_topics(kafka, names, PARTITIONS)
    settings = stream_settings(names, tmp_path, period_bounds=json.dumps(stream.prepared.bounds.to_list()),
                               session_timeout=SESSION, log_level="info", **TRAIN)
    pipeline = Pipeline(settings, kafka, tmp_path / "logs", free_port())
    pipeline.logs.mkdir()
    try:
        for role in ROLES:
            pipeline.start(role)
        wait_ready(pipeline, *ROLES)
        yield pipeline, names
    finally:
        pipeline.stop()


def feed(pipeline: Pipeline, names: TopicNames, stream: Stream, part: int, parts: int) -> None:
    """Produce the ``part``-th of ``parts`` slices of the events (the last slice also ends the stream)."""
    events = [r for r in stream.records if b"end_of_stream" not in r[2]]
    size = -(-len(events) // parts)
    produce(pipeline.kafka, names.interactions, events[part * size:(part + 1) * size])
    if part == parts - 1:
        send_end_of_stream(pipeline.kafka, names)


READY = {"windowing": "assigned partitions", "trainer": "[^Worker]: Ready"}  # what each logs once at work


def wait_ready(pipeline: Pipeline, *roles: str) -> None:
    """Until each role is at work (its log says so; the scorer answers HTTP): a fault before a role's start
    is another test."""
    def up(role: str) -> bool:
        if role == "scorer":
            return scorer_json(pipeline.scorer_port, "/healthz")[0] != 0
        return READY[role] in pipeline.workers[role].log.read_text(errors="replace")

    def ready() -> bool:
        return all(up(role) for role in roles)

    until(pipeline, ready, 180, f"{', '.join(roles)} to start")


def some_progress(pipeline: Pipeline, names: TopicNames, periods: int, what: str) -> None:
    until(pipeline, lambda: len(closed_periods(pipeline.kafka, names)) >= periods, 150, what)


def assert_everything_once(pipeline: Pipeline, names: TopicNames, stream: Stream, tmp_path: Path) -> None:
    """The stream's end: every period and model once, the undisturbed bytes, every event counted once."""
    kafka, settings = pipeline.kafka, pipeline.settings
    until(pipeline, lambda: len(closed_periods(kafka, names)) >= PROTOCOL.n_periods, 150, "every period closed")
    until(pipeline, lambda: len(read_json(kafka, names.models)) >= len(MODEL_PERIODS), 240, "every model")
    until(pipeline, lambda: scorer_events(pipeline.scorer_port) >= stream.events, 120,
          "the scorer to count every event")
    # each role handled everything it was given (and published what it publishes for it): nothing more comes
    wait_consumed(kafka, settings.role_app_id("windowing"), names.interactions, 60)
    wait_consumed(kafka, settings.role_app_id("trainer"), names.periods, 60)
    periods, models = read_json(kafka, names.periods), read_json(kafka, names.models)
    assert [p["period"] for p in periods] == list(range(1, PROTOCOL.n_periods + 1)), "each period closed once"
    assert [m["period"] for m in models] == MODEL_PERIODS, "one model per period"
    assert [m["version"] for m in models] == list(range(1, len(MODEL_PERIODS) + 1))
    # the period files: byte for byte what an undisturbed windowing core writes, holding the offline samples
    reference = tmp_path / "undisturbed"
    run_core(WindowingCore.from_settings(settings), stream.records, reference, batch_size=97)
    got = file_bytes(Path(settings.period_store))
    assert got.keys() == file_bytes(reference).keys() and len(got) == PROTOCOL.n_periods * PARTITIONS
    assert got == file_bytes(reference)
    for record in periods:
        assert_same_samples(read_period_record(record), stream.prepared.periods[record["period"]])
    assert scorer_events(pipeline.scorer_port) == stream.events, "the scorer counted an event twice"


# --- the faults ---------------------------------------------------------------------------------------------


def outage(pipeline: Pipeline) -> None:
    """The outage itself: longer than every role's session, and no role may die meanwhile."""
    deadline = time.monotonic() + OUTAGE
    while time.monotonic() < deadline:
        pipeline.check()
        time.sleep(0.5)


@pytest.mark.kafka
@pytest.mark.timeout(480)
def test_broker_stopped_crashed_and_paused_mid_stream(broker: LocalBroker, stream: Stream, run,
                                                      tmp_path: Path) -> None:
    """Three outages past every session with events between, in one run of the pipeline:
    1. ``asmg kafka stop`` then ``asmg kafka start``; 2. a SIGKILL crash, then a start: no role hangs or dies
    (issue 10: the windowing worker sat in send_offsets_to_transaction for good);
    3. SIGSTOP to the broker (connections stay open, nothing answers) for longer than the roles' session, then
    SIGCONT: the broker expires the sessions itself when it wakes, and the roles rejoin."""
    pipeline, names = run
    parts = 4
    for part in range(parts):
        feed(pipeline, names, stream, part, parts)
        if part == parts - 1:
            break
        some_progress(pipeline, names, 2 * part + 1, f"periods closing before outage {part + 1}")
        if part < 2:
            broker.stop(timeout=30) if part == 0 else broker.kill()  # a controlled shutdown, then a crash
            outage(pipeline)
            broker.start(timeout=180, die_with_parent=True)
        else:
            pid = broker.pid()
            os.kill(pid, signal.SIGSTOP)
            try:
                outage(pipeline)
            finally:
                os.kill(pid, signal.SIGCONT)
    assert_everything_once(pipeline, names, stream, tmp_path)


@pytest.mark.kafka
@pytest.mark.timeout(420)
def test_each_role_killed_at_a_random_point(broker: LocalBroker, stream: Stream, run, tmp_path: Path) -> None:
    """SIGKILL to each role in a random order at random moments (the seed is printed), each restarted at once
    as a supervisor would."""
    pipeline, names = run
    seed = int(os.environ.get("ASMG_FAULT_SEED", random.randrange(1 << 30)))
    print(f"ASMG_FAULT_SEED={seed}")
    rng = random.Random(seed)
    order = rng.sample(ROLES, len(ROLES))
    for part, role in enumerate(order):
        feed(pipeline, names, stream, part, len(order))
        some_progress(pipeline, names, part + 1, f"periods closing before killing the {role}")
        deadline = time.monotonic() + rng.uniform(0.0, 3.0)  # a random point of the role's work
        while time.monotonic() < deadline:
            pipeline.check()
            time.sleep(0.1)
        pipeline.kill(role)
        pipeline.start(role)
        wait_ready(pipeline, role)
    assert_everything_once(pipeline, names, stream, tmp_path)


# --- the pieces that keep roles alive -----------------------------------------------------------------------


def test_bounded_gives_up_on_a_call_that_ignores_its_timeout() -> None:
    """What the windowing worker does around librdkafka's transactional calls: a call that never returns
    (librdkafka #5456) is given up after its timeout plus the grace; a call's own error reaches the caller."""
    import threading

    from streams.windowing.worker import TransactionStuck, bounded

    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TransactionStuck, match="send_offsets_to_transaction did not return") as stuck:
        bounded("send_offsets_to_transaction", lambda timeout: release.wait(), timeout=0.2, grace=0.3)
    assert time.monotonic() - started < 5.0
    assert stuck.value.thread.is_alive()  # still inside the call: the worker parks the producer, never destroys it
    release.set()
    stuck.value.thread.join(5)
    seen = []
    bounded("commit_transaction", seen.append, timeout=0.5)
    assert seen == [0.5]  # the timeout is handed to the call
    with pytest.raises(ValueError, match="refused"):
        bounded("abort_transaction", lambda timeout: (_ for _ in ()).throw(ValueError("refused")), timeout=0.5)


@pytest.mark.kafka
def test_consumer_lag_reads_committed_offsets(broker: LocalBroker) -> None:
    """The lag watcher (now a plain consumer, see streams/metrics.py) reports high watermark minus the
    group's committed offset, and leaves out partitions the group never committed."""
    from confluent_kafka import Consumer, TopicPartition

    from streams.metrics import ConsumerLag

    broker.start(timeout=180, die_with_parent=True)
    kafka = broker.config.settings()
    names = TopicNames(f"lag-{os.getpid()}-{random.randrange(1 << 20)}.")
    ensure_topics(kafka, names, 2)
    produce(kafka, names.interactions, [(0, i, b"{}") for i in range(10)] + [(1, i, b"{}") for i in range(3)])
    group = f"{names.prefix}group"
    committer = Consumer(kafka.confluent_config(group_id=group, enable_auto_commit=False))
    committer.commit(offsets=[TopicPartition(names.interactions, 0, 4)], asynchronous=False)
    committer.close()
    lag = ConsumerLag(kafka, {group: [names.interactions]})
    assert lag.refresh() == {(group, names.interactions, 0): 6}
    assert lag.refreshed is not None


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_trainer_started_while_the_broker_is_down(broker: LocalBroker, stream: Stream, tmp_path: Path) -> None:
    """A supervisor restarting the trainer during a broker restart: it waits for the broker instead of exiting
    (faust gives up at once when it cannot bootstrap; found by the soak)."""
    broker.start(timeout=180, die_with_parent=True)
    kafka = broker.config.settings()
    names = TopicNames(f"faults-{tmp_path.name[-12:]}.")
    ensure_topics(kafka, names, PARTITIONS)
    settings = stream_settings(names, tmp_path, period_bounds=json.dumps(stream.prepared.bounds.to_list()),
                               session_timeout=SESSION, log_level="info", **TRAIN)
    broker.stop(timeout=30)
    pipeline = Pipeline(settings, kafka, tmp_path, free_port())
    try:
        pipeline.start("trainer")
        trainer = pipeline.workers["trainer"]
        until(pipeline, lambda: "waiting up to" in trainer.log.read_text(errors="replace"), 120,
              "the trainer to wait for the broker")
        broker.start(timeout=180, die_with_parent=True)
        wait_ready(pipeline, "trainer")
    finally:
        pipeline.stop()


@pytest.mark.kafka
@pytest.mark.timeout(420)
def test_soak_short(broker: LocalBroker, tmp_path: Path) -> None:
    """scripts/soak.py for 20 seconds of stream (its faults then follow each other closely): the checks hold,
    and the RSS of every role and of the broker was sampled throughout and plotted."""
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("soak", REPO / "scripts" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    broker.start(timeout=180, die_with_parent=True)
    report = soak.soak(minutes=1 / 3, rate=60, out=tmp_path / "soak", broker=broker, say=lambda *_: None)
    assert report["checks"] and all(report["checks"].values()), {k: v for k, v in report.items() if k != "samples"}
    assert [f["what"] for f in report["faults"]][:2] == ["broker stop", "broker started"]
    assert set(report["rss"]) == {"windowing", "trainer", "scorer", "broker"}
    # each role killed once and started again, the broker restarted once: two processes each, both sampled
    assert {name: figures["processes"] for name, figures in report["rss"].items()} == \
        {"windowing": 2, "trainer": 2, "scorer": 2, "broker": 2}
    assert (tmp_path / "soak" / "soak-rss.png").stat().st_size > 10_000
