"""Shared fixtures: a real Kafka broker for the whole session, and per-test topic names.

Where the broker comes from, first match wins:
1. KAFKA_BOOTSTRAP_SERVERS (plus the KAFKA_* security variables): an existing cluster;
2. testcontainers' KafkaContainer when a Docker engine answers (ASMG_TEST_DOCKER=0 skips this);
3. the project's own local broker (streams/local/broker.py) on free ports in a temporary folder, reusing the
   jar cache in .kafka/lib so only the first run downloads from Maven Central.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator

import pytest
import torch

from streams.wire.kafka_config import KafkaSettings
from streams.wire.topics import TopicNames

# One intra-op thread: the library's tensors here are small, and one thread makes results repeat
# bit for bit (two threads reorder float sums in embedding backward passes).
torch.set_num_threads(1)


# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`). The modules of a group run
# on one worker, in order: the fault-injection tests share (and stop, crash, pause) one broker of their own;
# the cluster, multi-host and object-store tests share the session's three-node cluster and S3 server. The
# largest groups are handed out first, so they overlap with each other and with the many short tests.
XDIST_GROUPS = {"test_fault_injection.py": "faults", "test_cluster.py": "cluster", "test_multihost.py": "cluster",
                "test_objectstore.py": "cluster"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """xdist's loadgroup scheduling, grouped by the module names above. (xdist 3.8 reads `xdist_group` marks
    by renaming test ids, which pytest 9.2 no longer allows: its own loadgroup runs every test apart.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return XDIST_GROUPS.get(nodeid.split("::", 1)[0].rsplit("/", 1)[-1], nodeid)

    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the broker are `kafka` tests even if their author forgot the mark."""
    for item in items:
        if {"kafka_bootstrap", "kafka_settings"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


def _docker_answers() -> bool:
    if os.environ.get("ASMG_TEST_DOCKER", "1") == "0":
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no SDK, no socket, no daemon: all mean "no Docker"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker, up for the whole test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        image = os.environ.get("ASMG_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
        with KafkaContainer(image).with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from streams.local.broker import BrokerConfig, BrokerError, LocalBroker, free_port

    failures = []
    for _ in range(3):  # the ports are free when picked; another process may bind one first: pick again
        broker = LocalBroker(BrokerConfig(home=tmp_path_factory.mktemp("kafka"), port=free_port(),
                                          controller_port=free_port(), heap="384m"))
        try:
            broker.start(timeout=180, die_with_parent=True)
            break
        except BrokerError as exc:
            failures.append(str(exc))
    else:
        pytest.fail("the test broker did not start:\n" + "\n".join(failures), pytrace=False)
    try:
        yield broker.config.bootstrap
    finally:
        gc.collect()  # drop clients left by tests first, so they don't log reconnect failures at exit
        broker.stop(timeout=20)


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Client settings for the session broker (the KAFKA_* security variables apply to external ones)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        return KafkaSettings.from_env()
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def topic_names() -> TopicNames:
    """A fresh topic prefix per test, so tests never read each other's records."""
    return TopicNames(prefix=f"test-{uuid.uuid4().hex[:10]}.")


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A local three-node KRaft cluster (streams/local/cluster.py) on free ports, for the tests that kill
    brokers; a test that kills a node restarts it before it ends (``cluster.start_node``)."""
    from streams.local.broker import BrokerError, free_port
    from streams.local.cluster import ClusterConfig, LocalCluster

    failures = []
    for _ in range(3):  # a picked port may be taken by another process before the node binds it: pick again
        config = ClusterConfig(home=tmp_path_factory.mktemp("cluster"), ports=tuple(free_port() for _ in range(3)),
                               controller_ports=tuple(free_port() for _ in range(3)), heap="320m")
        cluster = LocalCluster(config)
        try:
            cluster.start(timeout=240, die_with_parent=True)
            break
        except BrokerError as exc:
            failures.append(str(exc))
    else:
        pytest.fail("the test cluster did not start:\n" + "\n".join(failures), pytrace=False)
    try:
        yield cluster
    finally:
        gc.collect()
        cluster.stop(timeout=20)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3-compatible server (S3Proxy from Maven Central, streams/local/s3server.py) on a free loopback
    port with an enforced access key, and one bucket ``asmg-test``."""
    from streams.local.broker import free_port
    from streams.local.s3server import LocalS3Server, S3ServerConfig, S3ServerError

    failures = []
    for _ in range(3):
        server = LocalS3Server(S3ServerConfig(home=tmp_path_factory.mktemp("s3"), port=free_port()))
        try:
            server.start(timeout=120, die_with_parent=True)
            break
        except S3ServerError as exc:
            failures.append(str(exc))
    else:
        pytest.fail("the test S3 server did not start:\n" + "\n".join(failures), pytrace=False)
    server.create_bucket("asmg-test")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_store(s3_server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh ``s3://asmg-test/<id>`` prefix, with this process's AWS variables pointing at the test server."""
    from asmg import objectstore

    for name in objectstore.S3_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.config.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://asmg-test/{uuid.uuid4().hex[:10]}"
