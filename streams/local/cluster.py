"""A local Apache Kafka cluster of N combined broker/controller nodes (KRaft, static quorum), no Docker.

Why: a single broker cannot show what replication buys (a broker dies, nothing acknowledged is lost);
this starts N of the nodes of streams/local/broker.py from the same cached jars, on loopback ports, as one
cluster: one cluster id, every node a voter of the controller quorum, Kafka's internal topics and new
topics replicated min(3, N) times with ``min.insync.replicas`` 2 from three replicas on (so a write
acknowledged with ``acks=all`` is on two brokers, and the cluster takes writes with one broker down).

State lives under one folder: ``cluster.json`` (the cluster id and the ports) and ``node-<id>/`` per node
(the single-node layout: ``server.properties``, ``data/``, ``logs/``, ``kafka.pid``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streams.local.broker import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    BrokerConfig,
    BrokerError,
    BrokerStatus,
    LocalBroker,
    Say,
    _proc_alive,
    _quiet,
    check_reachable,
    default_home,
    random_cluster_id,
)
from streams.wire.kafka_config import KafkaSettings

LAYOUT = "cluster.json"
MAX_REPLICATION = 3


def default_cluster_home() -> Path:
    """``.kafka/cluster`` beside the single broker's ``.kafka`` state (they never share a data folder)."""
    return default_home() / "cluster"


def cluster_ports(nodes: int, port: int | None = None, controller_port: int | None = None) -> tuple[
        tuple[int, ...], tuple[int, ...]]:
    """Broker ports ``port .. port+N-1`` and controller ports ``controller_port .. +N-1``; by default the
    controllers follow the brokers (9092-9094 and 9095-9097 for three nodes)."""
    if nodes < 1:
        raise BrokerError(f"nodes must be >= 1, got {nodes}")
    base = port or DEFAULT_PORT
    cbase = controller_port or (DEFAULT_CONTROLLER_PORT if nodes == 1 else base + nodes)
    brokers = tuple(base + i for i in range(nodes))
    controllers = tuple(cbase + i for i in range(nodes))
    if set(brokers) & set(controllers):
        raise BrokerError(f"broker ports {brokers} and controller ports {controllers} overlap; give a "
                          "--controller-port outside the broker ports")
    return brokers, controllers


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cluster keeps its state, its ports (one broker and one controller port per node)."""

    home: Path = field(default_factory=default_cluster_home)
    ports: tuple[int, ...] = (9092, 9093, 9094)
    controller_ports: tuple[int, ...] = (9095, 9096, 9097)
    host: str = "localhost"
    heap: str = "384m"
    lib_dir: Path | None = None
    kafka_home: Path | None = None
    jvm_opts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).absolute())
        if len(self.ports) != len(self.controller_ports) or not self.ports:
            raise BrokerError("a cluster needs one broker port and one controller port per node")
        if len(set(self.ports) | set(self.controller_ports)) != 2 * len(self.ports):
            raise BrokerError(f"ports must all differ: {self.ports} {self.controller_ports}")

    @classmethod
    def from_broker(cls, base: BrokerConfig, nodes: int, home: Path | None = None,
                    port: int | None = None, controller_port: int | None = None) -> ClusterConfig:
        """A cluster config taking the heap, jar cache and JVM options of a single-node config."""
        ports, controllers = cluster_ports(nodes, port, controller_port)
        return cls(home=home or default_cluster_home(), ports=ports, controller_ports=controllers,
                   host=base.host, heap=base.heap, lib_dir=base.lib_dir, kafka_home=base.kafka_home,
                   jvm_opts=base.jvm_opts)

    @property
    def nodes(self) -> int:
        return len(self.ports)

    @property
    def replication(self) -> int:
        return min(MAX_REPLICATION, self.nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{port}" for port in self.ports)

    def settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap)

    def node(self, node_id: int, cluster_id: str) -> BrokerConfig:
        """The single-node config of node ``node_id`` (1-based)."""
        i = node_id - 1
        voters = tuple((n + 1, cport) for n, cport in enumerate(self.controller_ports))
        return BrokerConfig(home=self.home / f"node-{node_id}", port=self.ports[i],
                            controller_port=self.controller_ports[i], host=self.host, heap=self.heap,
                            lib_dir=self.lib_dir, kafka_home=self.kafka_home, jvm_opts=self.jvm_opts,
                            node_id=node_id, voters=voters, cluster_id=cluster_id,
                            replication=self.replication)


def saved_layout(home: Path) -> dict | None:
    """The ``cluster.json`` of a cluster folder (its id and ports), or None when there is none."""
    try:
        data = json.loads((Path(home) / LAYOUT).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class LocalCluster:
    """Start, stop, kill and inspect the nodes of a local cluster."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        layout = saved_layout(config.home) or {}
        self.cluster_id: str = layout.get("cluster_id") or random_cluster_id()
        self.brokers = [LocalBroker(config.node(n, self.cluster_id)) for n in range(1, config.nodes + 1)]

    @classmethod
    def open(cls, home: Path, **overrides: object) -> LocalCluster | None:
        """The cluster last started in ``home`` (its saved ports), or None when ``home`` holds none."""
        layout = saved_layout(home)
        if layout is None:
            return None
        config = ClusterConfig(home=home, ports=tuple(layout["ports"]),
                               controller_ports=tuple(layout["controller_ports"]), **overrides)  # type: ignore[arg-type]
        return cls(config)

    def _save_layout(self) -> None:
        self.config.home.mkdir(parents=True, exist_ok=True)
        layout = {"cluster_id": self.cluster_id, "ports": list(self.config.ports),
                  "controller_ports": list(self.config.controller_ports)}
        (self.config.home / LAYOUT).write_text(json.dumps(layout, indent=2) + "\n")

    def broker(self, node_id: int) -> LocalBroker:
        return self.brokers[node_id - 1]

    def pids(self) -> dict[int, int | None]:
        return {b.config.node_id: b.pid() for b in self.brokers}

    def start(self, timeout: float = 120.0, say: Say = _quiet, die_with_parent: bool = False) -> KafkaSettings:
        """Launch every node that is not running, then wait until the cluster lists all of them."""
        self._save_layout()
        launched = []
        try:
            for broker in self.brokers:
                if broker.pid() is None:
                    broker.launch(say, die_with_parent)
                    launched.append(broker)
            deadline = time.monotonic() + timeout
            for broker in launched:
                broker.wait_ready(max(1.0, deadline - time.monotonic()))
            self.wait_for_brokers(self.config.nodes, max(1.0, deadline - time.monotonic()))
        except BrokerError:
            self.stop(timeout=10)
            raise
        say(f"Kafka cluster of {self.config.nodes} nodes is ready at {self.config.bootstrap}")
        return self.config.settings()

    def start_node(self, node_id: int, timeout: float = 90.0, die_with_parent: bool = False) -> None:
        """(Re)start one node and wait until the cluster lists it again."""
        broker = self.broker(node_id)
        if broker.pid() is None:
            broker.launch(_quiet, die_with_parent)
            broker.wait_ready(timeout)
        self.wait_for_brokers(self.config.nodes, timeout)

    def wait_for_brokers(self, count: int, timeout: float) -> None:
        """Poll metadata until ``count`` brokers are registered, or raise BrokerError at the deadline."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            try:
                seen = check_reachable(self.config.settings(), timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                if seen >= count:
                    return
            except BrokerError:
                pass
            time.sleep(0.3)
        raise BrokerError(f"the cluster at {self.config.bootstrap} lists {seen} of {count} brokers after "
                          f"{timeout:.0f}s; see {self.config.home}/node-*/logs")

    def kill(self, node_id: int) -> bool:
        """SIGKILL one node, as a crash; False if it was not running."""
        return self.broker(node_id).kill()

    def stop(self, timeout: float = 30.0, say: Say = _quiet) -> bool:
        """SIGTERM every node at once (one by one, the last node's controlled shutdown would wait for a quorum
        that is gone), wait up to ``timeout`` s, then SIGKILL. False if no node was running."""
        pids = {b.config.node_id: p for b in self.brokers if (p := b.pid()) is not None}
        if not pids:
            say("Kafka cluster is not running")
            return False
        say(f"Stopping Kafka nodes {sorted(pids)}")
        for pid in pids.values():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(self.broker(n)._alive(p) for n, p in pids.items()):
            time.sleep(0.2)
        for node_id, pid in pids.items():
            broker = self.broker(node_id)
            if broker._alive(pid):
                say(f"node {node_id} did not stop within {timeout:.0f}s; killing it")
                broker.kill()
            broker.config.pid_file.unlink(missing_ok=True)
            broker._process = None
        say("Kafka cluster stopped")
        return True

    def status(self, probe: bool = True) -> list[BrokerStatus]:
        return [b.status(probe=probe) for b in self.brokers]


def _signal(pid: int, sig: signal.Signals) -> None:
    if _proc_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def describe_status(states: Sequence[BrokerStatus]) -> str:
    """One line per node, as `asmg kafka status` prints them."""
    return "\n".join(f"node {i}: {state.describe()}" for i, state in enumerate(states, start=1))

