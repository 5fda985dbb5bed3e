"""``asmg worker scorer``: the command of the scorer role (the service is in streams/scorer/service.py).

Light on purpose: ``asmg`` loads this module to list its commands (streams/cli.py adds it to ``asmg worker``), so
torch, aiohttp and Kafka clients are imported only when the command runs. Every flag also reads the
``ASMG_*`` variable named beside it, with the windowing role's names where they mean the same thing
(``ASMG_PERIOD_BOUNDS``, ``ASMG_PERIOD_LENGTH``, ``ASMG_PERIOD_ORIGIN``, ``ASMG_PERIOD_COUNT``,
``ASMG_IMPLICIT``, ``ASMG_HISTORY_LEN``, ``ASMG_MODEL_NAME``, ``ASMG_DEVICE``, ``ASMG_SEED``, ...); the port
and host are role-specific (``ASMG_SCORER_PORT``, ``ASMG_SCORER_HOST``) so roles can share one environment.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from asmg.config import HISTORY_LEN

log = logging.getLogger(__name__)



def scorer_command(
    port: Annotated[int, typer.Option("--port", envvar="ASMG_SCORER_PORT", help="HTTP port.")] = 8090,
    host: Annotated[str, typer.Option("--host", envvar="ASMG_SCORER_HOST",
                                      help="Address to bind (0.0.0.0: every interface).")] = "127.0.0.1",
    period_bounds: Annotated[str | None, typer.Option(
        "--period-bounds", envvar="ASMG_PERIOD_BOUNDS",
        help="Fixed period boundaries: a JSON list, or a path/URI of a JSON file (as the windowing role).")] = None,
    period_length: Annotated[str | None, typer.Option(
        "--period-length", envvar="ASMG_PERIOD_LENGTH", help="Tumbling periods of this length (1d, 7d, 3600s).")]
    = None,
    period_origin: Annotated[float | None, typer.Option(
        "--period-origin", envvar="ASMG_PERIOD_ORIGIN", help="Unix seconds where tumbling period 1 starts.")] = None,
    period_count: Annotated[int | None, typer.Option(
        "--period-count", envvar="ASMG_PERIOD_COUNT", help="Tumbling mode: at most this many periods.")] = None,
    bootstrap_servers: Annotated[str | None, typer.Option(
        "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS",
        help="Kafka cluster [default: the local broker on ASMG_KAFKA_PORT or 9092].")] = None,
    topic_prefix: Annotated[str, typer.Option("--topic-prefix", envvar="ASMG_TOPIC_PREFIX",
                                              help="Prefix of the topic names.")] = "asmg.",
    model_name: Annotated[str | None, typer.Option("--model-name", envvar="ASMG_MODEL_NAME",
                                                   help="Serve only this model (record key) [default: any].")] = None,
    device: Annotated[str, typer.Option("--device", envvar="ASMG_DEVICE",
                                        help="Torch device for scoring (cpu, cuda, auto).")] = "cpu",
    implicit: Annotated[bool, typer.Option(
        "--implicit/--explicit", envvar="ASMG_IMPLICIT",
        help="Implicit stream (positives only): evaluate each positive against one sampled negative.")] = False,
    seed: Annotated[int, typer.Option("--seed", envvar="ASMG_SEED", help="Seed of negative sampling.")] = 0,
    history_len: Annotated[int, typer.Option("--history-len", envvar="ASMG_HISTORY_LEN", min=1,
                                             help="Recent positives kept per user.")] = HISTORY_LEN,
    max_users: Annotated[int, typer.Option("--max-users", envvar="ASMG_MAX_USERS", min=1,
                                           help="Users whose history is kept (least recent go first).")] = 1_000_000,
    eval_batch: Annotated[int, typer.Option("--eval-batch", envvar="ASMG_EVAL_BATCH", min=1,
                                            help="Events per evaluation micro-batch, at most.")] = 1000,
    eval_batch_ms: Annotated[int, typer.Option("--eval-batch-ms", envvar="ASMG_EVAL_BATCH_MS", min=1,
                                               help="Milliseconds to wait filling a micro-batch.")] = 200,
    interactions_from: Annotated[str, typer.Option(
        "--interactions-from", envvar="ASMG_INTERACTIONS_FROM",
        help="Where a new scorer starts reading interactions: earliest (rebuild histories) or latest.")]
    = "earliest",
    wait_models: Annotated[float, typer.Option(
        "--wait-models", envvar="ASMG_WAIT_MODELS", min=0.0,
        help="Seconds to wait for the models topic before reading interactions.")] = 30.0,
    artifact_store: Annotated[str, typer.Option(
        "--artifact-store", envvar="ASMG_ARTIFACT_STORE",
        help="Serve only artifacts inside this store (the trainer's ASMG_ARTIFACT_STORE: local path or pyarrow URI); "
             "a record pointing elsewhere is refused.")] = "runs/stream/models",
    model_signing_key: Annotated[str | None, typer.Option(
        "--model-signing-key", envvar="ASMG_MODEL_SIGNING_KEY", show_default=False,
        help="Serve only model records signed with this HMAC key (the trainer's). Prefer the _FILE form.")] = None,
    model_signing_key_file: Annotated[str | None, typer.Option(
        "--model-signing-key-file", envvar="ASMG_MODEL_SIGNING_KEY_FILE",
        help="A file holding the model signing key.")] = None,
    load_timeout: Annotated[float, typer.Option(
        "--load-timeout", envvar="ASMG_LOAD_TIMEOUT", min=0.1,
        help="Seconds a model load may take before it is given up (the old model keeps serving).")] = 120.0,
    session_timeout: Annotated[float, typer.Option(
        "--session-timeout", envvar="ASMG_SESSION_TIMEOUT", min=1.0, max=300.0,
        help="Seconds of the consumers' group session; after a longer broker outage they rejoin and resume at "
             "their own bookmark.")] = 10.0,
    log_level: Annotated[str, typer.Option("--log-level", envvar="ASMG_LOG_LEVEL")] = "info",
    log_format: Annotated[str, typer.Option("--log-format", envvar="ASMG_LOG_FORMAT",
                                            help="text, or json: one JSON object per line.")] = "text",
) -> None:
    """Serve scores from the newest model and evaluate it online (prequential AUC/logloss vs the IU shadow)."""
    from asmg import logs
    from streams.wire.kafka_config import KafkaConfigError, KafkaSettings
    from streams.wire.settings import SettingsError, periods_from_options, signing_key

    try:
        logs.configure(log_level, log_format, role="scorer")
        if log_format == "json":
            logs.wrap_native_stderr()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format/--log-level") from None
    if interactions_from not in ("earliest", "latest"):
        raise typer.BadParameter("must be earliest or latest", param_hint="--interactions-from")
    try:
        periods = periods_from_options(period_bounds, period_length, period_origin, period_count)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--period-bounds/--period-length") from None
    try:
        key = signing_key(model_signing_key, model_signing_key_file)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--model-signing-key/--model-signing-key-file") from None
    if key is None:
        log.warning("no model signing key (ASMG_MODEL_SIGNING_KEY_FILE): model records are served unsigned")
    if periods is None:
        log.warning("no periods configured (ASMG_PERIOD_BOUNDS or ASMG_PERIOD_LENGTH): online evaluation is off")
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers} if bootstrap_servers else {}
    try:
        settings = KafkaSettings.from_env({**os.environ, **env})
    except KafkaConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--bootstrap-servers") from None
    from streams.wire.access import KafkaAccessRefused, check_access

    try:
        check_access(settings)
    except KafkaAccessRefused as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None
    from streams.scorer.service import ScorerOptions, ScorerService, serve_forever
    from streams.wire.topics import TopicNames
    from streams.worker import dump_stacks_on_sigusr1

    dump_stacks_on_sigusr1()

    options = ScorerOptions(periods=periods, model_name=model_name, device=device, history_len=history_len,
                            max_users=max_users, batch_size=eval_batch, batch_seconds=eval_batch_ms / 1000,
                            negatives=1 if implicit else 0, interactions_from=interactions_from,
                            wait_models=wait_models, seed=seed, artifact_store=artifact_store, signing_key=key,
                            load_timeout=load_timeout, session_timeout=session_timeout)
    service = ScorerService(settings, TopicNames(topic_prefix), options)
    logs.bind(model_version=lambda: service.holder.current.version if service.holder.current else None)
    serve_forever(service, host, port)
