"""The local-pipeline harness: everything ``asmg demo`` and ``bench/bench_streaming.py`` do around the roles.

Start (or reach) a broker, create a run's topics, write the offline runner's period bounds, start the worker
processes with one environment, check and stop them (process groups: SIGTERM, then SIGKILL), watch the periods
and models topics, and ask the scorer over HTTP. Both drivers build on these pieces, so they cannot drift apart.
Everything started is registered on the caller's :class:`~contextlib.ExitStack` and stopped on any exit.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asmg.records import parse_model_record

Say = Callable[..., None]


def run_bench(benchmark: str, workdir: Path | None, say: Say,
              measure: Callable[[ExitStack, Path, Any, Any, dict[str, Any]], None]) -> tuple[int, dict[str, Any]]:
    """The frame of a Kafka benchmark: a work folder (temporary unless ``workdir``), a fresh local Kafka (or
    ``KAFKA_BOOTSTRAP_SERVERS``) and ``measure(stack, work, kafka, config, out)`` inside one ExitStack that stops
    whatever was started; Ctrl-C and errors are reported with where the logs are, and a temporary folder is
    removed after a clean run. Returns (exit code: 0, 1 or 130; ``out`` with the header and total_seconds)."""
    began = time.monotonic()
    work = workdir or Path(tempfile.mkdtemp(prefix=f"asmg-bench-{benchmark.replace('_', '-')}-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"benchmark": benchmark, "host": platform.node(), "cpus": os.cpu_count()}
    ok = False
    try:
        with ExitStack() as stack:
            kafka, config = start_kafka(stack, say, home=work / "kafka", fresh_ports=True, die_with_parent=True)
            measure(stack, work, kafka, config, out)
        ok = True
    except KeyboardInterrupt:
        say("[yellow]interrupted: everything started was stopped[/]")
        return 130, out
    except Exception as exc:  # noqa: BLE001 - reported, with where the logs are
        say(f"[bold red]error:[/] {exc}")
        say(f"state and logs kept in {work}")
        return 1, out
    finally:
        if ok and workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    out["total_seconds"] = round(time.monotonic() - began, 1)
    return 0, out


def start_kafka(stack: ExitStack, say: Say, home: Path | None = None, fresh_ports: bool = False,
                die_with_parent: bool = False):
    """The cluster named by KAFKA_BOOTSTRAP_SERVERS, else a local broker (started unless one runs there; stopped
    on exit when started here). Returns (KafkaSettings, BrokerConfig)."""
    from streams.local.broker import BrokerConfig, BrokerError, LocalBroker, free_port
    from streams.wire.kafka_config import KafkaSettings

    kafka = KafkaSettings.from_env()
    ports = {"port": free_port(), "controller_port": free_port()} if fresh_ports else {}
    config = BrokerConfig.from_env(home=home, **ports)
    if kafka.external:
        say(f"using the cluster at {kafka.bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS)")
        return kafka, config
    broker = LocalBroker(config)
    was_running = broker.pid() is not None
    try:
        broker.start(say=say, die_with_parent=die_with_parent)
    except BrokerError as exc:
        raise RuntimeError(str(exc)) from None
    if not was_running:
        stack.callback(broker.stop, say=say)
    return config.settings(), config


def write_bounds(log, split: str, n_periods: int, run_dir: Path) -> tuple[Path, int]:
    """The offline runner's period bounds over ``log`` as ``run_dir/bounds.json``; returns (path, periods)."""
    from asmg.data.periods import period_bounds

    bounds = period_bounds(log.events["ts"].to_numpy(), split, n_periods).to_list()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "bounds.json"
    path.write_text(json.dumps({"bounds": bounds}))
    return path, len(bounds) - 1


def stream_env(kafka, prefix: str, run_dir: Path, bounds: Path, log, partitions: int, **extra: Any) -> dict[str, str]:
    """The workers' environment for a run over ``log``: the cluster, topics, periods and stores under run_dir;
    ``extra``: more ``ASMG_*`` values by lower-case name (``method="iu"`` sets ASMG_METHOD)."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "ASMG_TOPIC_PREFIX": prefix,
           "ASMG_PERIOD_BOUNDS": str(bounds), "ASMG_PERIOD_STORE": str(run_dir / "periods"),
           "ASMG_ARTIFACT_STORE": str(run_dir / "models"), "ASMG_CHECKPOINT_STORE": str(run_dir / "checkpoints"),
           "ASMG_WORKER_DIR": str(run_dir / "faust"), "ASMG_DATASET": log.name,
           "ASMG_IMPLICIT": "1" if log.implicit else "0", "ASMG_PARTITIONS": str(partitions)}
    env.pop("ASMG_METRICS_PORT", None)
    env.update({f"ASMG_{name.upper()}": str(value) for name, value in extra.items() if value is not None})
    return env


@dataclass
class Workers:
    """Worker processes (``asmg worker <role>``), each in its own process group, logging to ``logs/<name>.log``."""

    logs: Path
    cwd: Path | None = None  # where the workers run (a source checkout that is not installed: its root)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, role: str, env: dict[str, str], **extra: Any) -> subprocess.Popen:
        """Start ``asmg worker role`` as ``name``; ``extra``: ASMG_* values of this worker only (None: unset)."""
        env = dict(env)
        for key, value in extra.items():
            env.pop(f"ASMG_{key.upper()}", None)
            if value is not None:
                env[f"ASMG_{key.upper()}"] = str(value)
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it; closed with the process
        try:
            proc = subprocess.Popen([sys.executable, "-m", "asmg_cli", "worker", role], env=env, cwd=self.cwd,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            log.close()
        self.processes[name] = proc
        return proc

    def check(self) -> None:
        """Raise RuntimeError with the end of its log when a worker has exited."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"the {name} worker exited with code {proc.returncode}; its log "
                                   f"({self.logs / (name + '.log')}) ends with:\n" + "\n".join(tail))

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to every worker's process group, SIGKILL to those still running after ``timeout``."""
        import time

        for proc in self.processes.values():
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


    def peak_rss_mb(self) -> dict[str, float]:
        """Each running worker's peak resident set size so far (VmHWM) in MB; read before ``stop``."""
        peaks = {name: proc_status_mb(proc.pid, "VmHWM") for name, proc in self.processes.items()
                 if proc.poll() is None}
        return {name: round(mb, 1) for name, mb in peaks.items() if mb is not None}


def proc_status_mb(pid: int, field: str) -> float | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of a live process from Linux's /proc, in MB; None
    when it is gone or there is no /proc."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return None


class TopicWatch:
    """The run's periods and models topics, read from the start: when each period closed (its record's Kafka
    timestamp, unix seconds) and each period's model record (as JSON values, the newest version)."""

    def __init__(self, kafka, names, group: str, stack: ExitStack) -> None:
        from confluent_kafka import Consumer

        self.names = names
        self.closed: dict[int, float] = {}
        self.models: dict[int, dict[str, Any]] = {}
        self._consumer = Consumer(kafka.confluent_config(group_id=group, auto_offset_reset="earliest",
                                                         enable_auto_commit=False))
        stack.callback(self._consumer.close)
        self._consumer.subscribe([names.periods, names.models])

    def poll(self, timeout: float) -> tuple[list[int], list[dict[str, Any]]]:
        """Read what arrived within ``timeout`` (then without waiting): newly closed periods, new model records."""
        from streams.wire.records import parse_period

        closed, models = [], []
        while (message := self._consumer.poll(timeout)) is not None:
            timeout = 0.0
            if message.error() is not None:
                continue
            if message.topic() == self.names.periods:
                period = int(parse_period(message.value())["period"])
                if period not in self.closed:
                    self.closed[period] = message.timestamp()[1] / 1000.0
                    closed.append(period)
            else:
                record = parse_model_record(message.value()).to_dict()
                self.models[record["period"]] = record
                models.append(record)
        return closed, models


def scorer_json(port: int, path: str, timeout: float = 2.0) -> tuple[int, dict[str, Any] | None]:
    """GET the scorer's ``path`` on loopback: (HTTP status, JSON body); (0, None) when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def newly_live(watch: TopicWatch, served_version: int, live: dict[int, float], now: float) -> list[int]:
    """Periods whose model (or a newer one) the scorer serves now and that were not live before; records in
    ``live`` the seconds from the period's close (its record's timestamp) until now."""
    new = []
    for period, record in sorted(watch.models.items()):
        if period not in live and int(record["version"]) <= served_version and period in watch.closed:
            live[period] = now - watch.closed[period]
            new.append(period)
    return new


def load_log(dataset: str, data_dir: Path, say: Say, synthetic_events: int = 77_500):
    """The dataset, or the synthetic drifting stream when it is 'synthetic' or its files are missing; returns
    (log, synthetic?)."""
    from asmg.data.log import DataError
    from asmg.data.registry import load_dataset
    from asmg.data.synthetic import scaled_synthetic_log

    if dataset != "synthetic":
        try:
            return load_dataset(dataset, data_dir), False
        except DataError as exc:
            say(f"[yellow]No {dataset} data found ({exc}); replaying the synthetic drifting stream instead.[/]")
    return scaled_synthetic_log(synthetic_events), True
