"""CLI commands of this package, registered on the top-level `asmg` app.

``asmg kafka start|stop|status|topics|perf``: a local single-node Kafka without Docker, or checks of
the cluster named by KAFKA_BOOTSTRAP_SERVERS. ``asmg worker windowing|trainer|scorer`` run the stream roles
(windowing: batches in Kafka transactions, streams/windowing/worker.py; trainer: a faust worker; options:
streams/wire/settings.py), ``asmg worker end-of-stream`` sends period markers after a
finite replay, ``asmg worker bounds`` writes a dataset's offline period bounds (the scorer's options are in
streams/scorer/command.py). Kafka client imports stay inside the commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from streams.scorer.command import scorer_command

kafka_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Run a local Kafka (KRaft, no Docker; one node or a cluster) and create the topics.")

PortOpt = Annotated[int | None, typer.Option("--port", envvar="ASMG_KAFKA_PORT",
                                             help="Broker port of the local Kafka [default: 9092].")]
ControllerPortOpt = Annotated[int | None, typer.Option(
    "--controller-port", envvar="ASMG_KAFKA_CONTROLLER_PORT", help="KRaft controller port [default: 9093].")]
DirOpt = Annotated[Path | None, typer.Option(
    "--dir", envvar="ASMG_KAFKA_DIR", help="State folder (jars, data, logs, pid) [default: .kafka in the repo].")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", envvar="ASMG_KAFKA_TIMEOUT",
                                           help="Seconds to wait for the broker.")]
NodesOpt = Annotated[int, typer.Option(
    "--nodes", envvar="ASMG_KAFKA_NODES", min=1, max=9,
    help="Nodes of the local cluster (combined broker+controller each; 3: replication 3, min.insync.replicas 2; "
         "state in .kafka/cluster, broker ports --port.. and controller ports after them).")]
BootstrapOpt = Annotated[str | None, typer.Option(
    "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS",
    help="Use this existing cluster instead of the local broker.")]


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


def _settings(bootstrap: str | None, port: int | None):  # -> KafkaSettings
    from streams.wire.kafka_config import KafkaSettings

    env = dict(os.environ)
    if bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return KafkaSettings.from_env(env, port=port)


def _broker(port: int | None, controller_port: int | None, home: Path | None, heap: str | None = None):
    from streams.local.broker import BrokerConfig, LocalBroker

    return LocalBroker(BrokerConfig.from_env(port=port, controller_port=controller_port, home=home, heap=heap))


def _cluster(nodes: int, port: int | None, controller_port: int | None, home: Path | None,
             heap: str | None = None):  # -> LocalCluster | None
    """The local cluster meant by the options (``--nodes`` above 1, or a --dir holding a cluster's layout), or
    None for the single broker. A cluster started before keeps its saved ports unless others are given."""
    from streams.local.broker import BrokerConfig
    from streams.local.cluster import ClusterConfig, LocalCluster, default_cluster_home, saved_layout

    if nodes <= 1 and (home is None or saved_layout(home) is None):
        return None
    where = home or default_cluster_home()
    base = BrokerConfig.from_env(heap=heap or "384m")
    if saved_layout(where) is not None and port is None and controller_port is None:
        return LocalCluster.open(where, heap=base.heap, lib_dir=base.lib_dir, kafka_home=base.kafka_home,
                                 jvm_opts=base.jvm_opts)
    return LocalCluster(ClusterConfig.from_broker(base, nodes, where, port, controller_port))


@kafka_app.command()
def start(
    port: PortOpt = None,
    controller_port: ControllerPortOpt = None,
    home: DirOpt = None,
    nodes: NodesOpt = 1,
    heap: Annotated[str | None, typer.Option("--heap", envvar="ASMG_KAFKA_HEAP",
                                             help="JVM max heap [default: 512m].")] = None,
    timeout: TimeoutOpt = 90.0,
    bootstrap_servers: BootstrapOpt = None,
    sasl_ssl_port: Annotated[int | None, typer.Option(
        "--sasl-ssl-port", envvar="ASMG_KAFKA_SASL_SSL_PORT",
        help="Also listen for SASL_SSL (SCRAM-SHA-512 over TLS) on this port (single node).")] = None,
    ssl_keystore: Annotated[Path | None, typer.Option(
        "--ssl-keystore", envvar="ASMG_KAFKA_SSL_KEYSTORE",
        help="PEM file with the broker's private key (PKCS#8, unencrypted) and certificate chain.")] = None,
    scram_user: Annotated[str | None, typer.Option(
        "--scram-user", envvar="ASMG_KAFKA_SCRAM_USER", help="Create (or update) this SCRAM-SHA-512 user.")] = None,
    scram_password_file: Annotated[Path | None, typer.Option(
        "--scram-password-file", envvar="ASMG_KAFKA_SCRAM_PASSWORD_FILE",
        help="A file holding the SCRAM user's password.")] = None,
) -> None:
    """Start the local broker (jars fetched from Maven Central once) and wait until it answers."""
    from rich.console import Console

    from streams.local.broker import BrokerError, check_reachable
    from streams.wire.kafka_config import KafkaConfigError

    console = Console(highlight=False)
    try:
        settings = _settings(bootstrap_servers, port)
        if settings.external:
            brokers = check_reachable(settings, timeout)
            console.print(f"KAFKA_BOOTSTRAP_SERVERS is set: using the existing cluster at "
                          f"{settings.bootstrap_servers} ({brokers} broker(s) answering); nothing started.")
            return
        secure = sasl_ssl_port is not None or scram_user is not None
        if nodes > 1:
            if secure:
                raise BrokerError("--sasl-ssl-port and --scram-user are for a single node (--nodes 1)")
            cluster = _cluster(nodes, port, controller_port, home, heap)
            bootstrap = cluster.start(timeout=max(timeout, 120.0), say=console.print).bootstrap_servers
        else:
            broker = _broker(port, controller_port, home, heap)
            if secure:
                from dataclasses import replace

                users = ()
                if scram_user:
                    if scram_password_file is None:
                        raise BrokerError("--scram-user needs --scram-password-file (ASMG_KAFKA_SCRAM_PASSWORD_FILE)")
                    try:
                        password = scram_password_file.read_text().strip()
                    except OSError as exc:
                        raise BrokerError(f"--scram-password-file {scram_password_file}: {exc.strerror}") from None
                    if len(password) < 8:
                        raise BrokerError("the SCRAM password must have at least 8 characters")
                    users = ((scram_user, password),)
                broker = type(broker)(replace(broker.config, sasl_ssl_port=sasl_ssl_port or broker.config.sasl_ssl_port,
                                              ssl_keystore=ssl_keystore or broker.config.ssl_keystore,
                                              scram_users=users))
            bootstrap = broker.start(timeout=timeout, say=console.print).bootstrap
    except (BrokerError, KafkaConfigError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"[green]ok[/] bootstrap servers: {bootstrap}")


@kafka_app.command()
def stop(
    port: PortOpt = None,
    controller_port: ControllerPortOpt = None,
    home: DirOpt = None,
    nodes: NodesOpt = 1,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Stop the local broker or cluster: SIGTERM (controlled shutdown), then SIGKILL after --timeout seconds."""
    from rich.console import Console

    from streams.local.broker import BrokerError

    say = Console(highlight=False).print
    try:
        if (cluster := _cluster(nodes, port, controller_port, home)) is not None:
            cluster.stop(timeout=timeout, say=say)
        else:
            _broker(port, controller_port, home).stop(timeout=timeout, say=say)
    except BrokerError as exc:
        raise _fail(str(exc)) from None


@kafka_app.command()
def status(
    port: PortOpt = None,
    controller_port: ControllerPortOpt = None,
    home: DirOpt = None,
    nodes: NodesOpt = 1,
    bootstrap_servers: BootstrapOpt = None,
) -> None:
    """Say whether Kafka runs and where; exit 1 when it does not."""
    from rich.console import Console

    from streams.local.broker import BrokerError, BrokerStatus, check_reachable
    from streams.wire.kafka_config import KafkaConfigError

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
        elif (cluster := _cluster(nodes, port, controller_port, home)) is not None:
            from streams.local.cluster import describe_status

            states = cluster.status()
            Console(highlight=False).print(describe_status(states))
            if not all(s.running for s in states):
                raise typer.Exit(1)
            return
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

    from streams.wire.kafka_config import KafkaConfigError
    from streams.wire.topics import TopicError, TopicNames, ensure_topics

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
    from streams.local.broker import BrokerError
    from streams.wire.kafka_config import KafkaConfigError

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


# --- asmg worker ... : the faust-streaming roles ----------------------------------------------------------
#
# Every role option comes from streams/wire/settings.py:StreamSettings: field ``some_name`` is the flag
# ``--some-name`` and the variable ``ASMG_SOME_NAME`` (flag > variable > default).
#
# To reuse the role settings in a command, decorate with ``settings_command``:
# ``@worker_app.command("x") @settings_command def x(settings, kafka): ...`` (settings: StreamSettings,
# kafka: KafkaSettings).

worker_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Run a stream role (windowing+coordinator, trainer, scorer), or send period "
                              "markers.")
worker_app.command("scorer")(scorer_command)  # its options are its own (streams/scorer/command.py)


def _check_access(kafka) -> None:
    """Exit with the reason when the cluster refuses the configured credentials (streams/wire/access.py)."""
    from streams.wire.access import KafkaAccessRefused, check_access

    try:
        check_access(kafka)
    except KafkaAccessRefused as exc:
        raise _fail(str(exc)) from None


def settings_command(fn):
    """Give ``fn(settings, kafka)`` one CLI option per StreamSettings field, plus --bootstrap-servers."""
    import functools
    import inspect

    from streams.wire.settings import env_name, flag_name, settings_fields

    params = [inspect.Parameter("bootstrap_servers", inspect.Parameter.KEYWORD_ONLY, default=None,
                                annotation=BootstrapOpt)]
    for name, base, optional, default, help_text in settings_fields():
        flag = flag_name(name) + (f"/--no-{flag_name(name)[2:]}" if base is bool else "")
        option = typer.Option(flag, envvar=env_name(name), help=help_text, show_default=default is not None)
        annotation = Annotated[base | None if optional else base, option]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))

    @functools.wraps(fn)
    def wrapper(**values):
        from streams.wire.kafka_config import KafkaConfigError
        from streams.wire.settings import SettingsError, StreamSettings

        bootstrap = values.pop("bootstrap_servers", None)
        try:
            settings = StreamSettings(**values)
            kafka = _settings(bootstrap, None)
        except (SettingsError, KafkaConfigError) as exc:
            raise _fail(str(exc)) from None
        _check_access(kafka)
        from streams.worker import dump_stacks_on_sigusr1

        dump_stacks_on_sigusr1()
        return fn(settings, kafka)

    wrapper.__signature__ = inspect.Signature(params)
    del wrapper.__wrapped__  # typer must read the signature above, not fn's
    return wrapper


def _run_trainer(settings, kafka) -> None:
    import logging

    from asmg.logs import bind
    from streams.trainer.app import create_app, run_worker
    from streams.wire.settings import SettingsError
    from streams.wire.topics import TopicError

    logging.getLogger("faust").setLevel(settings.log_level.upper())
    bind(role="trainer")  # a field of every JSON log line (--log-format json)
    try:
        app = create_app(settings, kafka)
    except (SettingsError, TopicError, RuntimeError, OSError) as exc:  # OSError: the metrics port is taken
        raise _fail(str(exc)) from None
    run_worker(app, settings.log_level, settings.log_format)


@worker_app.command("windowing")
@settings_command
def windowing_worker(settings, kafka) -> None:
    """Windowing (events -> per-period Parquet samples, DLQ, watermarks) and the period coordinator."""
    import logging

    from asmg.logs import bind, configure, wrap_native_stderr
    from streams.windowing.worker import run_windowing
    from streams.wire.settings import SettingsError
    from streams.wire.topics import TopicError

    configure(settings.log_level, settings.log_format)
    if settings.log_format == "json":
        wrap_native_stderr()
    logging.getLogger("streams").setLevel(settings.log_level.upper())
    bind(role="windowing")
    try:
        run_windowing(settings, kafka)
    except (SettingsError, TopicError, RuntimeError, OSError) as exc:  # OSError: the metrics port is taken
        raise _fail(str(exc)) from None


@worker_app.command("trainer")
@settings_command
def trainer_worker(settings, kafka) -> None:
    """Trainer (period records -> PeriodUpdater.step -> artifacts, checkpoints, model records)."""
    _run_trainer(settings, kafka)


@worker_app.command("end-of-stream")
def end_of_stream(
    ts: Annotated[float | None, typer.Option("--ts", help="Close every period ending at or before this event "
                                             "time (default: every fixed period).")] = None,
    watermark: Annotated[bool, typer.Option("--watermark", help="Send a watermark heartbeat (needs --ts): no "
                                            "event older than --ts will follow, more may.")] = False,
    topic_prefix: Annotated[str, typer.Option("--topic-prefix", envvar="ASMG_TOPIC_PREFIX")] = "asmg.",
    bootstrap_servers: BootstrapOpt = None,
) -> None:
    """Send a marker to every interactions partition (after a finite replay, or for idle partitions)."""
    from streams.windowing.coordinator import send_end_of_stream, send_watermark
    from streams.wire.topics import TopicNames

    names = TopicNames(topic_prefix)
    kafka = _settings(bootstrap_servers, None)
    if watermark:
        if ts is None:
            raise _fail("--watermark needs --ts")
        n = send_watermark(kafka, names, ts)
    else:
        n = send_end_of_stream(kafka, names, ts)
    typer.echo(f"marker sent to {n} partitions of {names.interactions}")


@worker_app.command("bounds")
def bounds(
    dataset: Annotated[str, typer.Option("--dataset", envvar="ASMG_DATASET")] = "ml-100k",
    data_dir: Annotated[Path, typer.Option("--data-dir", envvar="ASMG_DATA_DIR")] = Path("data/ml-100k"),
    periods: Annotated[int, typer.Option("--periods", envvar="ASMG_PERIODS")] = 31,
    split: Annotated[str, typer.Option("--split", envvar="ASMG_SPLIT")] = "equal",
    out: Annotated[Path, typer.Option("--out", help="JSON file to write (ASMG_PERIOD_BOUNDS can point at it).")]
    = Path("runs/stream/bounds.json"),
) -> None:
    """Write the period bounds the offline runner uses for a dataset (for --period-bounds)."""
    import json

    from asmg.config import ProtocolConfig
    from asmg.data.log import DataError
    from asmg.data.registry import load_dataset
    from asmg.prepare import prepare_periods

    try:
        prepared = prepare_periods(load_dataset(dataset, data_dir), ProtocolConfig(n_periods=periods, split=split))
    except DataError as exc:
        raise _fail(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": dataset, "periods": periods, "split": split,
                               "bounds": prepared.bounds.to_list()}))
    typer.echo(f"wrote {out}: {periods} periods, {prepared.bounds.to_list()[0]} .. {prepared.bounds.to_list()[-1]}")


def register(app: typer.Typer) -> None:
    """Add this package's commands to the top-level app."""
    app.add_typer(kafka_app, name="kafka", help="Local Kafka broker (no Docker) and topics.")
    app.add_typer(worker_app, name="worker", help="Stream roles: windowing, trainer, scorer; period markers.")
