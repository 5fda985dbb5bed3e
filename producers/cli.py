"""CLI commands of this package, registered on the top-level `asmg` app.

``asmg replay`` (a dataset), ``asmg synth`` (a synthetic drifting stream) and ``asmg ingest`` (HTTP).
Every option also reads the environment variable named beside it; Kafka is configured by the KAFKA_*
variables (see streams/wire/kafka_config.py). Kafka, pandas and aiohttp imports stay inside the commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from asmg.data.log import InteractionLog
    from streams.wire.kafka_config import KafkaSettings

BootstrapOpt = Annotated[str | None, typer.Option(
    "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS",
    help="Kafka cluster [default: the local broker on ASMG_KAFKA_PORT or 9092].")]
PrefixOpt = Annotated[str, typer.Option("--topic-prefix", envvar="ASMG_TOPIC_PREFIX",
                                        help="Prefix of the topic names.")]
PartitionsOpt = Annotated[int, typer.Option("--partitions", envvar="ASMG_PARTITIONS", min=1,
                                            help="Partitions of the interactions topic when creating it.")]
CreateOpt = Annotated[bool, typer.Option("--create-topics/--no-create-topics", envvar="ASMG_CREATE_TOPICS",
                                         help="Create missing topics first.")]
RateOpt = Annotated[float | None, typer.Option("--rate", envvar="ASMG_RATE", min=0.001,
                                               help="Pace at this many events per second.")]
SpeedupOpt = Annotated[float | None, typer.Option(
    "--speedup", envvar="ASMG_SPEEDUP", min=0.001,
    help="Pace by event time, this many times faster than it happened.")]
MaxOpt = Annotated[bool, typer.Option("--max", envvar="ASMG_MAX",
                                      help="As fast as possible (the default without --rate/--speedup).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", envvar="ASMG_LIMIT", min=0,
                                              help="Produce at most this many events.")]
OffsetOpt = Annotated[int, typer.Option("--offset", envvar="ASMG_OFFSET", min=0,
                                        help="Skip this many events (in time order) first.")]


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


def _settings(bootstrap: str | None) -> KafkaSettings:
    from streams.wire.kafka_config import KafkaConfigError, KafkaSettings

    env = dict(os.environ)
    if bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    from streams.wire.access import KafkaAccessRefused, check_access

    try:
        settings = KafkaSettings.from_env(env)
        check_access(settings)
    except (KafkaConfigError, KafkaAccessRefused) as exc:
        raise _fail(str(exc)) from None
    return settings


def _produce(log: InteractionLog, bootstrap: str | None, prefix: str, partitions: int, create: bool,
             rate: float | None, speedup: float | None, unpaced: bool, offset: int, limit: int | None) -> None:
    """Shared by replay and synth: topics, pacing, progress bar and the final throughput line."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from producers.producer import DeliveryFailed, make_producer
    from producers.replay import Pacing, replay_log
    from streams.wire.topics import TopicError, TopicNames, ensure_topics

    if unpaced and (rate is not None or speedup is not None):
        raise _fail("--max cannot be combined with --rate or --speedup")
    try:
        pacing = Pacing(rate=rate, speedup=speedup)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    settings, names = _settings(bootstrap), TopicNames(prefix)
    console = Console(highlight=False)
    try:
        if create:
            ensure_topics(settings, names, partitions)
        stop = len(log.events) if limit is None else min(len(log.events), offset + limit)
        total = max(0, stop - offset)
        console.print(f"Producing {total:,} events of {log.name} to {names.interactions} at "
                      f"{settings.bootstrap_servers} ({pacing.describe()})")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(log.name, total=total)
            result = replay_log(log, make_producer(settings), names.interactions, pacing, offset, stop,
                                on_progress=lambda n: progress.advance(task, n))
    except (TopicError, DeliveryFailed) as exc:
        raise _fail(str(exc)) from None
    console.print(f"[green]done[/] {result.summary()}")


def replay(
    dataset: Annotated[str, typer.Option("--dataset", envvar="ASMG_DATASET",
                                         help="Dataset name (see `asmg datasets`).")],
    data_dir: Annotated[Path, typer.Option("--data-dir", envvar="ASMG_DATA_DIR",
                                           help="Folder holding the dataset's files.")],
    rate: RateOpt = None,
    speedup: SpeedupOpt = None,
    unpaced: MaxOpt = False,
    offset: OffsetOpt = 0,
    limit: LimitOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    topic_prefix: PrefixOpt = "asmg.",
    partitions: PartitionsOpt = 4,
    create_topics: CreateOpt = True,
) -> None:
    """Replay a dataset into the interactions topic in event-time order (key = user id)."""
    from asmg.data.log import DataError
    from asmg.data.registry import load_dataset

    try:
        log = load_dataset(dataset, data_dir)
    except DataError as exc:
        raise _fail(str(exc)) from None
    _produce(log, bootstrap_servers, topic_prefix, partitions, create_topics, rate, speedup, unpaced, offset,
             limit)


def synth(
    users: Annotated[int, typer.Option("--users", envvar="ASMG_USERS", min=1)] = 1000,
    items: Annotated[int, typer.Option("--items", envvar="ASMG_ITEMS", min=1)] = 500,
    categories: Annotated[int, typer.Option("--categories", envvar="ASMG_CATEGORIES", min=1)] = 20,
    periods: Annotated[int, typer.Option("--periods", envvar="ASMG_PERIODS", min=1)] = 31,
    events_per_period: Annotated[int, typer.Option("--events-per-period", envvar="ASMG_EVENTS_PER_PERIOD",
                                                   min=0)] = 1000,
    drift: Annotated[float, typer.Option("--drift", envvar="ASMG_DRIFT", min=0.0, max=1.0,
                                         help="How far interests and popularity move each period.")] = 0.3,
    new_user_fraction: Annotated[float, typer.Option("--new-user-fraction", envvar="ASMG_NEW_USER_FRACTION",
                                                     min=0.0, max=0.99)] = 0.3,
    new_item_fraction: Annotated[float, typer.Option("--new-item-fraction", envvar="ASMG_NEW_ITEM_FRACTION",
                                                     min=0.0, max=0.99)] = 0.3,
    implicit: Annotated[bool, typer.Option("--implicit/--explicit", envvar="ASMG_IMPLICIT",
                                           help="Positives only, or 0/1 labels.")] = True,
    period_seconds: Annotated[int, typer.Option("--period-seconds", envvar="ASMG_PERIOD_SECONDS",
                                                min=1)] = 86_400,
    start_date: Annotated[str, typer.Option("--start-date", envvar="ASMG_START_DATE",
                                            help="Event time of the first period (UTC; 'now' works).")]
    = "2014-10-01",
    seed: Annotated[int, typer.Option("--seed", envvar="ASMG_SEED")] = 0,
    rate: RateOpt = None,
    speedup: SpeedupOpt = None,
    unpaced: MaxOpt = False,
    limit: LimitOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    topic_prefix: PrefixOpt = "asmg.",
    partitions: PartitionsOpt = 4,
    create_topics: CreateOpt = True,
) -> None:
    """Produce a synthetic drifting stream: interests and popularity shift, new users and items arrive."""
    from asmg.data.synthetic import synthetic_log

    try:
        log = synthetic_log(n_users=users, n_items=items, n_categories=categories, n_periods=periods,
                            events_per_period=events_per_period, seed=seed, drift=drift, implicit=implicit,
                            new_user_fraction=new_user_fraction, new_item_fraction=new_item_fraction,
                            period_seconds=period_seconds, start=start_date)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _produce(log, bootstrap_servers, topic_prefix, partitions, create_topics, rate, speedup, unpaced, 0, limit)


def ingest(
    port: Annotated[int, typer.Option("--port", envvar="ASMG_INGEST_PORT", help="HTTP port.")] = 8081,
    host: Annotated[str, typer.Option("--host", envvar="ASMG_INGEST_HOST",
                                      help="Address to bind (0.0.0.0: every interface).")] = "127.0.0.1",
    bootstrap_servers: BootstrapOpt = None,
    topic_prefix: PrefixOpt = "asmg.",
    partitions: PartitionsOpt = 4,
    create_topics: CreateOpt = True,
) -> None:
    """Serve POST /events (JSON or NDJSON; 202 once Kafka acknowledged) and GET /healthz."""
    from rich.console import Console

    from producers.ingest import serve
    from streams.wire.topics import TopicError, TopicNames, ensure_topics

    settings, names = _settings(bootstrap_servers), TopicNames(topic_prefix)
    if create_topics:
        try:
            ensure_topics(settings, names, partitions)
        except TopicError as exc:
            raise _fail(str(exc)) from None
    Console(highlight=False).print(f"Ingesting on http://{host}:{port}/events into {names.interactions} "
                                   f"(refusals to {names.dlq}) at {settings.bootstrap_servers}")
    serve(settings, names, host, port)


def register(app: typer.Typer) -> None:
    """Add this package's commands to the top-level app."""
    app.command()(replay)
    app.command()(synth)
    app.command()(ingest)
