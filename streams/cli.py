"""CLI commands of this package, registered on the top-level `asmg` app.

``asmg kafka start|stop|status|topics|perf``: a local single-node Kafka without Docker, or checks of
the cluster named by KAFKA_BOOTSTRAP_SERVERS. Kafka client imports stay inside the commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

kafka_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Run a local single-node Kafka (KRaft, no Docker) and create the project's topics.")

PortOpt = Annotated[int | None, typer.Option("--port", envvar="ASMG_KAFKA_PORT",
                                             help="Broker port of the local Kafka [default: 9092].")]
ControllerPortOpt = Annotated[int | None, typer.Option(
    "--controller-port", envvar="ASMG_KAFKA_CONTROLLER_PORT", help="KRaft controller port [default: 9093].")]
DirOpt = Annotated[Path | None, typer.Option(
    "--dir", envvar="ASMG_KAFKA_DIR", help="State folder (jars, data, logs, pid) [default: .kafka in the repo].")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", envvar="ASMG_KAFKA_TIMEOUT",
                                           help="Seconds to wait for the broker.")]
BootstrapOpt = Annotated[str | None, typer.Option(
    "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS",
    help="Use this existing cluster instead of the local broker.")]


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


def _settings(bootstrap: str | None, port: int | None):  # -> KafkaSettings
    from streams.kafka_config import KafkaSettings

    env = dict(os.environ)
    if bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return KafkaSettings.from_env(env, port=port)


def _broker(port: int | None, controller_port: int | None, home: Path | None, heap: str | None = None):
    from streams.broker import BrokerConfig, LocalBroker

    return LocalBroker(BrokerConfig.from_env(port=port, controller_port=controller_port, home=home, heap=heap))


@kafka_app.command()
def start(
    port: PortOpt = None,
    controller_port: ControllerPortOpt = None,
    home: DirOpt = None,
    heap: Annotated[str | None, typer.Option("--heap", envvar="ASMG_KAFKA_HEAP",
                                             help="JVM max heap [default: 512m].")] = None,
    timeout: TimeoutOpt = 90.0,
    bootstrap_servers: BootstrapOpt = None,
) -> None:
    """Start the local broker (jars fetched from Maven Central once) and wait until it answers."""
    from rich.console import Console

    from streams.broker import BrokerError, check_reachable
    from streams.kafka_config import KafkaConfigError

    console = Console(highlight=False)
    try:
        settings = _settings(bootstrap_servers, port)
        if settings.external:
            brokers = check_reachable(settings, timeout)
            console.print(f"KAFKA_BOOTSTRAP_SERVERS is set: using the existing cluster at "
                          f"{settings.bootstrap_servers} ({brokers} broker(s) answering); nothing started.")
            return
        broker = _broker(port, controller_port, home, heap)
        status = broker.start(timeout=timeout, say=console.print)
    except (BrokerError, KafkaConfigError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"[green]ok[/] bootstrap servers: {status.bootstrap}")


@kafka_app.command()
def stop(
    port: PortOpt = None,
    controller_port: ControllerPortOpt = None,
    home: DirOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Stop the local broker: SIGTERM (controlled shutdown), then SIGKILL after --timeout seconds."""
    from rich.console import Console

    from streams.broker import BrokerError

    try:
        _broker(port, controller_port, home).stop(timeout=timeout, say=Console(highlight=False).print)
    except BrokerError as exc:
        raise _fail(str(exc)) from None


@kafka_app.command()
def status(
    port: PortOpt = None,
    controller_port: ControllerPortOpt = None,
    home: DirOpt = None,
    bootstrap_servers: BootstrapOpt = None,
) -> None:
    """Say whether Kafka runs and where; exit 1 when it does not."""
    from rich.console import Console

    from streams.broker import BrokerError, BrokerStatus, check_reachable
    from streams.kafka_config import KafkaConfigError

    try:
        settings = _settings(bootstrap_servers, port)
        if settings.external:
            try:
                check_reachable(settings, timeout=10)
                answering = True
            except BrokerError:
                answering = False
            state = BrokerStatus(running=answering, bootstrap=settings.bootstrap_servers, external=True,
                                 answering=answering)
        else:
            state = _broker(port, controller_port, home).status()
    except (BrokerError, KafkaConfigError) as exc:
        raise _fail(str(exc)) from None
    Console(highlight=False).print(state.describe())
    if not state.running:
        raise typer.Exit(1)


@kafka_app.command()
def topics(
    partitions: Annotated[int, typer.Option("--partitions", envvar="ASMG_PARTITIONS", min=1,
                                            help="Partitions of the interactions topic.")] = 4,
    prefix: Annotated[str, typer.Option("--prefix", envvar="ASMG_TOPIC_PREFIX",
                                        help="Prefix of every topic name.")] = "asmg.",
    port: PortOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Create the project's topics (idempotent)."""
    from rich.console import Console

    from streams.kafka_config import KafkaConfigError
    from streams.topics import TopicError, TopicNames, ensure_topics

    try:
        result = ensure_topics(_settings(bootstrap_servers, port), TopicNames(prefix), partitions, timeout)
    except (TopicError, KafkaConfigError) as exc:
        raise _fail(str(exc)) from None
    console = Console(highlight=False)
    for name, state in result.items():
        console.print(f"{name}: {state}")


@kafka_app.command()
def perf(
    topic: Annotated[str, typer.Option("--topic", envvar="ASMG_PERF_TOPIC")] = "asmg.perf",
    records: Annotated[int, typer.Option("--records", envvar="ASMG_PERF_RECORDS", min=1)] = 200_000,
    record_size: Annotated[int, typer.Option("--record-size", envvar="ASMG_PERF_RECORD_SIZE", min=1)] = 200,
    throughput: Annotated[int, typer.Option("--throughput", envvar="ASMG_PERF_THROUGHPUT",
                                            help="Records/s cap, -1 for none.")] = -1,
    port: PortOpt = None,
    home: DirOpt = None,
    bootstrap_servers: BootstrapOpt = None,
) -> None:
    """Measure raw produce throughput with Kafka's own ProducerPerformance tool (plaintext clusters)."""
    from streams.broker import BrokerError
    from streams.kafka_config import KafkaConfigError

    try:
        settings = _settings(bootstrap_servers, port)
        if settings.security_protocol != "PLAINTEXT":
            raise _fail("perf supports PLAINTEXT clusters only")
        args = ["--topic", topic, "--num-records", str(records), "--record-size", str(record_size),
                "--throughput", str(throughput), "--producer-props",
                f"bootstrap.servers={settings.bootstrap_servers}", "acks=all", "linger.ms=5"]
        code = _broker(port, None, home).run_tool("org.apache.kafka.tools.ProducerPerformance", args)
    except (BrokerError, KafkaConfigError) as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this package's commands to the top-level app."""
    app.add_typer(kafka_app, name="kafka", help="Local Kafka broker (no Docker) and topics.")
