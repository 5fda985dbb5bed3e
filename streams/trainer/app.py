"""The faust-streaming app factory, built from :class:`StreamSettings`.

The trainer agent runs on the periods topic (streams/trainer/agent.py); run one per model name.

The windowing role is not a faust app: it processes records in batches, one Kafka transaction each
(streams/windowing/worker.py explains why).

Apps use faust's memory store: a table lives in memory and is rebuilt from its changelog topic on
start or rebalance, so a restart loses nothing. App ids default to ``<topic prefix><role>``, so two
deployments (or two tests) with different prefixes never share consumer groups or changelogs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from streams.wire.kafka_config import KafkaSettings
from streams.wire.settings import StreamSettings
from streams.wire.topics import TopicNames, default_replication, ensure_topics, interactions_partitions

log = logging.getLogger(__name__)
ROLE = "trainer"
STARTUP_WAIT = 300.0  # seconds a starting trainer waits for the broker (a restart of both at once)


def wait_for_broker(kafka: KafkaSettings, timeout: float = STARTUP_WAIT) -> None:
    """Block until the cluster answers (metadata only), so a trainer started while the broker restarts does
    not exit at once: faust gives up when it cannot bootstrap. Raises RuntimeError after ``timeout``."""
    from streams.local.broker import BrokerError, check_reachable, wait_until_ready

    try:
        check_reachable(kafka, timeout=3.0)
        return
    except BrokerError as exc:
        log.warning("waiting up to %.0fs for Kafka: %s", timeout, exc)
    try:
        wait_until_ready(kafka, timeout)
    except BrokerError as exc:
        raise RuntimeError(str(exc)) from None


def create_app(settings: StreamSettings, kafka: KafkaSettings | None = None):
    """The trainer's faust app; creates the project's topics first when they are missing."""
    import faust

    kafka = kafka or KafkaSettings.from_env()
    names = TopicNames(settings.topic_prefix)
    wait_for_broker(kafka)
    ensure_topics(kafka, names, settings.partitions)
    partitions = interactions_partitions(kafka, names)
    app_id = settings.role_app_id(ROLE)
    datadir = Path(settings.worker_dir) / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        **kafka.faust_app_kwargs(),
        store="memory://",
        topic_partitions=partitions,
        topic_replication_factor=default_replication(kafka),  # faust's own topics survive a broker's loss too
        web_enabled=False,
        datadir=str(datadir),
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        broker_max_poll_interval=3600.0,  # a trainer step may take long; heartbeats run beside it
        producer_linger=0.01,  # batch changelog writes: fewer, larger produce requests
        broker_session_timeout=settings.session_timeout,  # how long a crashed worker's partitions wait
        broker_heartbeat_interval=max(0.5, settings.session_timeout / 6),
        broker_rebalance_timeout=max(settings.session_timeout * 2, 20.0),
    )
    app.asmg_kafka = kafka
    app.asmg_metrics = _role_metrics(app, settings, kafka)  # None unless --metrics-port is set
    from streams.trainer import agent

    agent.register(app, settings, names, kafka)
    if app.asmg_metrics is not None:
        app.asmg_metrics.serve(settings.metrics_port, settings.metrics_host)
    return app


def _role_metrics(app, settings: StreamSettings, kafka: KafkaSettings):
    """Prometheus metrics of this worker (streams/metrics.py): faust's own sensors, the consumer lag of the
    role's group, and whatever the agents register on ``app.asmg_metrics``; served by ``create_app``."""
    if settings.metrics_port is None:
        return None
    from streams.metrics import RoleMetrics, faust_sensors

    metrics = RoleMetrics(ROLE)
    faust_sensors(app, metrics.registry)
    metrics.watch_lag(kafka, {settings.role_app_id(ROLE): [TopicNames(settings.topic_prefix).periods]})
    return metrics


def run_worker(app, log_level: str = "warning", log_format: str = "text") -> None:
    """Run ``app`` as a faust worker in this process until SIGTERM/SIGINT (blocks); ``log_format`` json:
    one JSON object per line (asmg/logs.py)."""
    from faust.worker import Worker

    from asmg.logs import dict_config, wrap_native_stderr

    if log_format == "json":
        wrap_native_stderr()
    wait_for_broker(app.asmg_kafka)  # again: building the app took seconds (imports), the broker may have gone

    Worker(app, loglevel=log_level, quiet=True, redirect_stdouts=False,
           logging_config=dict_config(log_level, log_format)).execute_from_commandline()
