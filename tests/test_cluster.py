"""The local three-node cluster: replicated topics, and acks=all writes that survive a broker's SIGKILL."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from streams.local.broker import BrokerConfig
from streams.local.cluster import ClusterConfig, cluster_ports
from streams.wire.topics import TopicNames, ensure_topics

pytestmark = pytest.mark.kafka


def test_cluster_ports_and_node_configs_form_one_quorum() -> None:
    brokers, controllers = cluster_ports(3)
    assert brokers == (9092, 9093, 9094) and controllers == (9095, 9096, 9097)
    config = ClusterConfig.from_broker(BrokerConfig(), 3)
    nodes = [config.node(n, "cid") for n in (1, 2, 3)]
    assert {n.voters for n in nodes} == {((1, 9095), (2, 9096), (3, 9097))}
    assert [n.node_id for n in nodes] == [1, 2, 3] and {n.cluster_id for n in nodes} == {"cid"}
    assert len({n.home for n in nodes}) == 3 and config.bootstrap == "localhost:9092,localhost:9093,localhost:9094"


def _produce(settings, topic: str, values: list[str]) -> int:
    """Send with acks=all (idempotent); return how many the cluster acknowledged (delivery reports)."""
    acked: list[str] = []
    producer = Producer(settings.confluent_config(**{"acks": "all", "enable.idempotence": True,
                                                     "message.timeout.ms": 60_000}))
    for i, value in enumerate(values):
        producer.produce(topic, key=str(i % 7).encode(), value=value.encode(),
                         on_delivery=lambda err, msg: acked.append(msg.value().decode()) if err is None else None)
        producer.poll(0)
    assert producer.flush(90) == 0
    return len(acked)


def _consume_all(settings, topic: str, expected: int, timeout: float = 90.0) -> list[str]:
    consumer = Consumer(settings.confluent_config(**{"group.id": f"g-{uuid.uuid4().hex[:8]}",
                                                     "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    consumer.subscribe([topic])
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error() is None:
                    seen.append(msg.value().decode())
    finally:
        consumer.close()
    return seen


def _leader(settings, topic: str) -> int:
    metadata = AdminClient(settings.confluent_config()).list_topics(topic, timeout=10)
    return metadata.topics[topic].partitions[0].leader


@pytest.mark.timeout(420)
def test_acked_writes_survive_sigkill_of_a_broker(kafka_cluster) -> None:
    cluster = kafka_cluster
    settings = cluster.config.settings()
    names = TopicNames(prefix=f"cl-{uuid.uuid4().hex[:8]}.")
    assert ensure_topics(settings, names, partitions=2)[names.interactions] == "created"
    admin = AdminClient(settings.confluent_config())
    deadline = time.monotonic() + 30  # the new topics reach every broker's metadata cache shortly after creation
    while not set(names.all()) <= set((meta := admin.list_topics(timeout=10)).topics) and time.monotonic() < deadline:
        time.sleep(0.2)
    for topic in names.all():
        assert all(len(p.replicas) == 3 for p in meta.topics[topic].partitions.values()), topic
    resources = admin.describe_configs([ConfigResource("topic", t) for t in names.all()])
    for resource, future in resources.items():
        assert future.result(timeout=10)["min.insync.replicas"].value == "2", resource.name

    topic = names.interactions
    before = [f"before-{i}" for i in range(2000)]
    assert _produce(settings, topic, before) == len(before)
    victim = _leader(settings, topic)
    assert cluster.kill(victim)
    after = [f"after-{i}" for i in range(2000)]
    try:
        assert _produce(settings, topic, after) == len(after)  # two of three replicas left: acks=all still works
        seen = _consume_all(settings, topic, len(before) + len(after))
        assert sorted(seen) == sorted(before + after)  # nothing acknowledged lost, nothing twice
        assert _leader(settings, topic) != victim
    finally:
        cluster.start_node(victim, timeout=120, die_with_parent=True)
    assert cluster.pids()[victim] is not None


def test_cli_finds_the_cluster_by_its_options_or_its_folder(tmp_path) -> None:
    from streams.cli import _cluster
    from streams.local.cluster import LocalCluster

    assert _cluster(1, None, None, tmp_path) is None  # no cluster there: the single broker
    cluster = _cluster(3, 19092, None, tmp_path)
    assert cluster.config.ports == (19092, 19093, 19094) and cluster.config.controller_ports == (19095, 19096, 19097)
    assert cluster.config.home == tmp_path.absolute()
    cluster._save_layout()  # what start() writes first
    again = _cluster(1, None, None, tmp_path)  # stop/status with --dir only: the saved ports and cluster id
    assert isinstance(again, LocalCluster) and again.config.ports == (19092, 19093, 19094)
    assert again.cluster_id == cluster.cluster_id
    assert _cluster(3, 29092, 29192, tmp_path).config.controller_ports == (29192, 29193, 29194)
