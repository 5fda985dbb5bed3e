"""The project's topics, created idempotently with the partitioning and retention the design asks for.

Names share one prefix (default ``asmg.``, env ASMG_TOPIC_PREFIX) so several deployments or test runs
can share a cluster without seeing each other's data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from streams.wire.kafka_config import KafkaSettings

DEFAULT_PREFIX = "asmg."
DEFAULT_PARTITIONS = 4
DAY_MS = 24 * 3600 * 1000


def min_insync_replicas(replicas: int) -> int:
    """2 once there are 3 or more replicas (a write acknowledged with acks=all is on two brokers, and the
    cluster still takes writes with one broker down); 1 below that (a lone broker must accept writes)."""
    return 2 if replicas >= 3 else 1


class TopicError(RuntimeError):
    """A topic could not be created or has an incompatible existing layout."""


@dataclass(frozen=True)
class TopicNames:
    """Topic names derived from one prefix."""

    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_env(cls) -> TopicNames:
        return cls(prefix=os.environ.get("ASMG_TOPIC_PREFIX", DEFAULT_PREFIX))

    @property
    def interactions(self) -> str:
        return f"{self.prefix}interactions"

    @property
    def watermarks(self) -> str:
        return f"{self.prefix}watermarks"

    @property
    def periods(self) -> str:
        return f"{self.prefix}periods"

    @property
    def models(self) -> str:
        return f"{self.prefix}models"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    def all(self) -> list[str]:
        return [self.interactions, self.watermarks, self.periods, self.models, self.dlq]


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(names: TopicNames, partitions: int = DEFAULT_PARTITIONS,
                interactions_retention_ms: int = 7 * DAY_MS) -> list[TopicSpec]:
    """Layout per the design.

    - interactions: many partitions keyed by user; time retention (records carry wall-clock timestamps,
      not event time, so replaying an old dataset is not deleted on arrival).
    - watermarks: one partition so one reader sees every partition's progress in order.
    - periods: one partition, kept forever: the trainer's input, replayed from the start after a crash.
    - models: one partition, compacted: the latest version record per model name survives.
    - dlq: refused records with the reason, kept two weeks for inspection.
    """
    if partitions < 1:
        raise TopicError(f"partitions must be >= 1, got {partitions}")
    return [
        TopicSpec(names.interactions, partitions,
                  {"cleanup.policy": "delete", "retention.ms": str(interactions_retention_ms)}),
        TopicSpec(names.watermarks, 1, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(names.periods, 1, {"cleanup.policy": "delete", "retention.ms": "-1"}),
        TopicSpec(names.models, 1, {"cleanup.policy": "compact", "retention.ms": "-1",
                                    "min.compaction.lag.ms": "0"}),
        TopicSpec(names.dlq, 1, {"cleanup.policy": "delete", "retention.ms": str(14 * DAY_MS)}),
    ]


def ensure_topics(settings: KafkaSettings, names: TopicNames | None = None,
                  partitions: int = DEFAULT_PARTITIONS, timeout: float = 30.0,
                  replication_factor: int | None = None) -> dict[str, str]:
    """Create missing topics; return ``{name: "created" | "exists"}``. Safe to call any number of times.

    The replication factor defaults to min(3, brokers in the cluster): 1 on the local broker, 3 on a
    cluster of three or more, with ``min.insync.replicas`` 2 from three replicas on.
    """
    return create_missing(settings, topic_specs(names or TopicNames.from_env(), partitions), timeout,
                          replication_factor)


def ensure_state_topic(settings: KafkaSettings, name: str, partitions: int, timeout: float = 30.0) -> str:
    """The windowing state topic (compacted, one partition per interactions partition); created if missing.
    An existing one with another partition count cannot hold the state: refuse to start."""
    spec = TopicSpec(name, partitions, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
                                        "segment.ms": str(3600 * 1000), "max.message.bytes": str(8 * 1024 * 1024)})

    def check(info) -> None:
        if len(info.partitions) != partitions:
            raise TopicError(f"state topic {name} has {len(info.partitions)} partitions, the interactions topic "
                             f"{partitions}: delete it (the windowing state is rebuilt from the interactions)")

    return create_missing(settings, [spec], timeout, check_existing=check)[name]


def create_missing(settings: KafkaSettings, specs: list[TopicSpec], timeout: float = 30.0,
                   replication_factor: int | None = None, check_existing=None) -> dict[str, str]:
    """Create the topics of ``specs`` that do not exist (one metadata request); ``check_existing`` is called
    with the metadata of each that does."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.confluent_config())
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"Kafka at {settings.bootstrap_servers} did not answer within {timeout:.0f}s: "
                         f"{exc}") from exc
    replicas = replication_factor or min(3, max(1, len(metadata.brokers)))
    result = {}
    for spec in specs:
        if spec.name in metadata.topics:
            result[spec.name] = "exists"
            if check_existing is not None:
                check_existing(metadata.topics[spec.name])
    missing = [spec for spec in specs if spec.name not in metadata.topics]
    if not missing:
        return result
    isr = {"min.insync.replicas": str(min_insync_replicas(replicas))}
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replicas, config={**isr, **s.config})
         for s in missing],
        operation_timeout=timeout, request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            result[name] = "created"
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"  # another process won the race
            else:
                raise TopicError(f"cannot create topic {name}: {exc}") from exc
    return {spec.name: result[spec.name] for spec in specs}


def default_replication(kafka: KafkaSettings, timeout: float = 30.0) -> int:
    """min(3, brokers in the cluster): the replication factor of the topics the roles create (faust's own too)."""
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(kafka.confluent_config()).list_topics(timeout=timeout)
    return min(3, max(1, len(metadata.brokers)))


def interactions_partitions(kafka: KafkaSettings, names: TopicNames, timeout: float = 30.0) -> int:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(kafka.confluent_config()).list_topics(names.interactions, timeout=timeout)
    info = metadata.topics.get(names.interactions)
    if info is None or info.error is not None or not info.partitions:
        raise RuntimeError(f"topic {names.interactions} is missing at {kafka.bootstrap_servers}")
    return len(info.partitions)
