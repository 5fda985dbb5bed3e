"""Roles as separate hosts: every role its own process in its own working directory, sharing nothing but a
three-node Kafka cluster and an S3 store (S3Proxy, real access keys). Two windowing workers, the trainer and
two scorers; mid-replay one broker and one windowing worker are killed with SIGKILL (the broker comes back
later, the worker never does). Afterwards every period is closed once, one model per period with the offline
runner's metrics, both scorers serve the newest model and counted every produced event once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from asmg.prepare import prepare_periods
from streams.local.broker import free_port
from streams.windowing.coordinator import send_end_of_stream
from streams.wire.period_store import read_period_record
from streams.wire.topics import TopicNames, ensure_topics
from tests.helpers import tiny_log
from tests.test_scorer import call, served_version
from tests.test_trainer import MODEL_PERIODS, TRAIN, assert_models_match, offline_reference
from tests.test_windowing import PROTOCOL, assert_same_samples, event_records, produce, read_json

REPO = Path(__file__).resolve().parents[1]
EVENTS = 4000
FIGURES_ENV = "ASMG_MULTIHOST_FIGURES"  # where the test writes its measured figures (JSON), when set


class Host:
    """One role on its own 'host': a process with its own working directory and only the shared settings."""

    def __init__(self, name: str, role: str, root: Path, env: dict[str, str]) -> None:
        self.name, self.role = name, role
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.log = self.dir / "role.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ASMG_", "KAFKA_", "AWS_"))}
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        base.update(PYTHONPYCACHEPREFIX=str(Path(tempfile.gettempdir()) / "asmg-test-pycache"),
                    PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", ASMG_WORKER_DIR=str(self.dir / "state"))
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "asmg_cli.main", "worker", role], env={**base, **env},
                                     cwd=self.dir, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def wait_for(predicate, timeout: float, hosts: list[Host], what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for host in hosts:
            if not host.alive():
                pytest.fail(f"{host.name} exited {host.proc.returncode} while waiting for {what}:\n{host.tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {h.name}\n{h.tail()}" for h in hosts)
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
        time.sleep(0.5)


def quality(url: str) -> dict[str, Any] | None:
    try:
        status, body = call(f"{url}/quality")
    except OSError:
        return None
    return body if status == 200 else None


def version(url: str) -> int | None:
    try:
        return served_version(url)
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_roles_on_separate_hosts_survive_a_broker_and_a_worker_kill(kafka_cluster, s3_server, s3_store: str,
                                                                   tmp_path: Path) -> None:
    started = time.monotonic()
    cluster = kafka_cluster
    kafka = cluster.config.settings()
    names = TopicNames(prefix=f"mh-{uuid.uuid4().hex[:8]}.")
    store = s3_store  # this process reads the store too (the checks below), with the same variables
    log = tiny_log(n_events=EVENTS)
    prepared = prepare_periods(log, PROTOCOL)
    partitions = 4
    ensure_topics(kafka, names, partitions)
    shared = {  # all that the hosts share: where Kafka and the store are, and the run's settings
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, **s3_server.config.env(),
        "ASMG_TOPIC_PREFIX": names.prefix, "ASMG_PARTITIONS": str(partitions),
        "ASMG_PERIOD_BOUNDS": json.dumps(prepared.bounds.to_list()), "ASMG_PERIOD_STORE": f"{store}/periods",
        "ASMG_ARTIFACT_STORE": f"{store}/models", "ASMG_CHECKPOINT_STORE": f"{store}/checkpoints",
        "ASMG_SESSION_TIMEOUT": "6", "ASMG_WATERMARK_INTERVAL": "0.5", "ASMG_TORCH_THREADS": "1",
        **{f"ASMG_{k.upper()}": str(v) for k, v in TRAIN.items()},
    }
    ports = [free_port(), free_port()]
    hosts = [Host("windowing-1", "windowing", tmp_path, {**shared, "ASMG_WORKER_NAME": "w1"}),
             Host("windowing-2", "windowing", tmp_path, {**shared, "ASMG_WORKER_NAME": "w2"}),
             Host("trainer", "trainer", tmp_path, {**shared, "ASMG_LOG_LEVEL": "info"})]  # it logs Ready
    hosts += [Host(f"scorer-{i}", "scorer", tmp_path, {**shared, "ASMG_SCORER_PORT": str(port),
                                                       "ASMG_LOG_LEVEL": "warning"})
              for i, port in enumerate(ports, start=1)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    records = event_records(log)
    half = len(records) // 2
    victim_broker = None
    try:
        expected = offline_reference(prepared, TRAIN)  # here, while the roles start
        produced = produce(kafka, names.interactions, records[:half])
        wait_for(lambda: len(read_json(kafka, names.periods)) >= 2, 240, hosts, "the first periods")
        # the kills below hit roles at work: the trainer's faust start-up creates its leader topic through the
        # controller and does not retry it, and the windowing may close two periods before the trainer is up
        wait_for(lambda: "[^Worker]: Ready" in hosts[2].log.read_text(errors="replace"), 240, hosts,
                 "the trainer to start")
        # mid-replay: a broker and a windowing worker crash
        leaders = AdminClient(kafka.confluent_config()).list_topics(names.interactions, timeout=10)
        victim_broker = leaders.topics[names.interactions].partitions[0].leader
        cluster.kill(victim_broker)
        hosts[0].kill()
        survivors = hosts[1:]
        produced += produce(kafka, names.interactions, records[half:])
        cluster.start_node(victim_broker, timeout=120, die_with_parent=True)
        victim_broker = None
        send_end_of_stream(kafka, names)
        periods = wait_for(lambda: (r := read_json(kafka, names.periods)) and len(r) >= PROTOCOL.n_periods and r,
                           300, survivors, "every period closed")
        models = wait_for(lambda: (r := read_json(kafka, names.models)) and len(r) >= len(MODEL_PERIODS) and r,
                          300, survivors, "one model per period")
        newest = models[-1]["version"]
        wait_for(lambda: all(version(url) == newest for url in urls), 120, survivors, "both scorers on the newest")
        wait_for(lambda: all((q := quality(url)) and q["events"].get("events", 0) >= produced for url in urls),
                 120, survivors, "both scorers evaluated every event")
        qualities = [quality(url) for url in urls]
        periods, models = read_json(kafka, names.periods), read_json(kafka, names.models)
        seconds = time.monotonic() - started
    finally:
        if victim_broker is not None:
            cluster.start_node(victim_broker, timeout=120, die_with_parent=True)
        for host in hosts:
            host.stop()

    # every topic of the run, the roles' own included (windowing state, faust's), has three replicas
    topics = AdminClient(kafka.confluent_config()).list_topics(timeout=10).topics
    ours = {name: info for name, info in topics.items() if name.startswith(names.prefix)}
    assert len(ours) > len(names.all())
    assert {name: {len(p.replicas) for p in info.partitions.values()} for name, info in ours.items()} == {
        name: {3} for name in ours}
    assert [p["period"] for p in periods] == list(range(1, PROTOCOL.n_periods + 1)), "every period closed once"
    for record in periods:
        assert_same_samples(read_period_record(record), prepared.periods[record["period"]])
    assert_models_match(models, expected)  # one model per period; the offline runner's metrics (1e-6), tensors
    for q in qualities:
        assert q["events"]["events"] == produced == EVENTS  # every produced event once, none twice
        assert q["invalid_events"] == 0
    if os.environ.get(FIGURES_ENV):
        Path(os.environ[FIGURES_ENV]).write_text(json.dumps(
            {"events": produced, "periods": len(periods), "models": len(models), "seconds": round(seconds, 1),
             "brokers": cluster.config.nodes, "windowing_workers": 2, "scorers": 2}, indent=2) + "\n")
