"""End-to-end streaming benchmark: replay, Kafka's own perf test, windowing, model freshness, scorer latency.

One run against one broker (a fresh local one in a temporary folder on free ports, or the cluster named by
KAFKA_BOOTSTRAP_SERVERS) measures, in this order:

1. ``replay_events_per_second``: producers/replay.py (as fast as possible) of ``--replay-events`` events
   (ml-100k, or the synthetic drifting log when absent) into a fresh 4-partition topic, with
   ``record_bytes_mean`` of the JSON values written;
2. ``perf_test_records_per_second``: org.apache.kafka.tools.ProducerPerformance on the same jars and broker,
   ``--record-size`` = our mean value size, same record count, acks=all, idempotence on;
3. ``windowing_events_per_second``: replay of the first ``--events`` events -> Kafka -> ``--windowing-workers``
   windowing worker(s), from the first event produced to the period record of the last period, with the
   offline runner's bounds (asmg.data.periods.period_bounds over those events, ``--periods`` periods);
4. ``model_live_seconds``: per post-pretrain period, from the period record's Kafka timestamp until the
   scorer's GET /model serves that version (or a newer one), polled at 10 Hz;
5. ``scorer_latency_ms_p50/p99``, ``scorer_requests_per_second``: POST /score with ``--candidates`` items for
   random known users from ``--clients`` loopback threads (keep-alive http.client), ``--requests`` at most.
6. ``*_windowing_peak_rss_mb`` (the windowing phases) and ``peak_rss_mb`` (each role of the pipeline phase,
   to its end): peak resident memory (Linux VmHWM); ``bench_process_peak_rss_mb``: this process, which runs
   the replay producer and holds the loaded log.

It drives the local-pipeline harness (asmg_cli/pipeline.py) as ``asmg demo`` does. Progress goes to stderr, ONE
JSON object to stdout. Everything started (workers, broker) is stopped on any
exit. Usage: python bench/bench_streaming.py [--replay-events 100000] [--events 30000] [--periods 8]
[--pretrain-periods 3] [--windowing-workers 1] [--pipeline-rate EV_PER_S] [--perf-records N] [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asmg.config import ProtocolConfig  # noqa: E402 - after the path
from asmg_cli.pipeline import (  # noqa: E402 - the local-pipeline harness, as `asmg demo`
    TopicWatch,
    Workers,
    load_log,
    newly_live,
    run_bench,
    scorer_json,
    stream_env,
    write_bounds,
)

console = Console(stderr=True, highlight=False)



def preset_pretrain_mode(dataset: str) -> str:
    """The pretraining the trainer runs when ``--pretrain-mode`` is not given: its dataset preset's."""
    from asmg.flags import run_config

    return run_config(dataset)[0].train.pretrain_mode

def default_data_dir() -> Path:
    """As the Makefile: $ASMG_DATA_DIR, else the shared copy beside the repository, else data/ml-100k."""
    if os.environ.get("ASMG_DATA_DIR"):
        return Path(os.environ["ASMG_DATA_DIR"])
    shared = REPO.parent / "shared" / "datasets" / "ml-100k"
    return shared if shared.is_dir() else REPO / "data" / "ml-100k"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k", help="dataset to replay, or 'synthetic'")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="ML-100K folder (default: $ASMG_DATA_DIR, else ../shared/datasets/ml-100k beside the "
                        "repository, else data/ml-100k; missing data: the synthetic log)")
    p.add_argument("--synthetic-events", type=int, default=102_300,
                   help="size of the synthetic drifting log (--dataset synthetic, or ml-100k absent)")
    p.add_argument("--replay-events", type=int, default=100_000, help="events of the replay/perf-test phase")
    p.add_argument("--events", type=int, default=30_000, help="events of the windowing/model phase")
    p.add_argument("--periods", type=int, default=8, help="periods over --events (offline runner's split)")
    p.add_argument("--pretrain-periods", type=int, default=3)
    p.add_argument("--method", default="asmg-gru-multi", help="update method of the trainer")
    p.add_argument("--windowing-workers", type=int, default=1)
    p.add_argument("--pipeline-rate", type=float, default=None,
                   help="events/s of the pipeline replay (default: as fast as possible; all periods then close "
                        "within seconds and model_live_seconds includes the trainer's backlog)")
    p.add_argument("--perf-records", type=int, default=None, help="ProducerPerformance records "
                                                                  "(default: --replay-events)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the interactions topics")
    p.add_argument("--torch-threads", type=int, default=1, help="ASMG_TORCH_THREADS of trainer and scorer")
    p.add_argument("--pretrain-mode", default=None, choices=("union", "progressive"),
                   help="ASMG_PRETRAIN_MODE of the trainer (default: the preset's, union)")
    p.add_argument("--requests", type=int, default=2000, help="POST /score requests, at most")
    p.add_argument("--warmup-requests", type=int, default=1000,
                   help="POST /score requests from one client before the measured phases (reported apart: the "
                        "first seconds after the pipeline phase run slower while the roles settle)")
    p.add_argument("--score-seconds", type=float, default=60.0, help="time cap of the scorer phase")
    p.add_argument("--clients", type=int, default=4, help="client threads of the scorer phase")
    p.add_argument("--candidates", type=int, default=100, help="items per /score request")
    p.add_argument("--perf-props", default="linger.ms=20 batch.size=1000000 compression.type=lz4",
                   help="extra ProducerPerformance producer props (besides acks=all enable.idempotence=true); "
                        "the default mirrors producers/producer.py THROUGHPUT")
    p.add_argument("--skip-perf-test", action="store_true")
    p.add_argument("--skip-pipeline", action="store_true", help="only replay + perf test (+ windowing alone)")
    p.add_argument("--skip-windowing-only", action="store_true",
                   help="skip the windowing worker alone (on the replayed topic, and live behind a replay)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up the pipeline phase after this many s")
    p.add_argument("--workdir", type=Path, default=None, help="keep state and logs here (default: a temp dir, "
                                                             "removed on success)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 1 <= args.pretrain_periods < args.periods:
        p.error("--pretrain-periods must be >= 1 and < --periods")
    return args


# --- data ---------------------------------------------------------------------------------------------------


def head(log, n: int):
    """The first ``n`` events (event-time order) as a log of their own."""
    from asmg.data.log import InteractionLog

    events = log.events.sort_values("ts", kind="stable").iloc[:n].reset_index(drop=True)
    return InteractionLog(log.name, events, log.item_categories, log.implicit)


def value_bytes(log) -> tuple[float, float]:
    """Mean bytes of the JSON values and keys replay_log writes for ``log``."""
    from asmg.events import encode_log

    total_v = total_k = n = 0
    for chunk in encode_log(log):
        total_v += sum(map(len, chunk.values))
        total_k += sum(map(len, chunk.keys))
        n += len(chunk.values)
    return total_v / max(n, 1), total_k / max(n, 1)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# --- processes ----------------------------------------------------------------------------------------------


def quiet_logger():
    """A logger for librdkafka clients whose transient complaints would only clutter the progress."""
    import logging

    quiet = logging.getLogger("bench.kafka")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    return quiet


def group_members(admin, group: str) -> int:
    """Members of a consumer group in state Stable (0 otherwise or when it cannot be described)."""
    from confluent_kafka import ConsumerGroupState

    try:
        description = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
    except Exception:  # noqa: BLE001 - not there yet
        return 0
    return len(description.members) if description.state == ConsumerGroupState.STABLE else 0


# --- phases -------------------------------------------------------------------------------------------------


def bench_replay(log, kafka, topic: str, warmup_topic: str) -> dict[str, Any]:
    from producers.producer import make_producer
    from producers.replay import Pacing, replay_log

    mean_value, mean_key = value_bytes(log)
    # warm-up (not timed): a fresh broker loads its coordinators lazily, the first idempotent producer waits
    # for its producer id, and the JVM compiles its produce path during the first ~100k records; the perf
    # test that follows runs on the warm broker, so the replay gets the same
    warm = make_producer(kafka, logger=quiet_logger())
    warm_log = head(log, min(len(log.events), 200_000))
    replay_log(warm_log, warm, warmup_topic, Pacing())
    del warm
    producer = make_producer(kafka)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"replay {log.name} -> {topic}", total=len(log.events))
        result = replay_log(log, producer, topic, Pacing(), on_progress=lambda n: progress.advance(task, n))
    del producer
    console.print(f"replay: {result.summary()}; values {mean_value:.1f} B, keys {mean_key:.1f} B")
    return {"replay_events": result.events, "replay_seconds": round(result.seconds, 3),
            "replay_events_per_second": round(result.rate, 1), "record_bytes_mean": round(mean_value, 1),
            "key_bytes_mean": round(mean_key, 2)}


def bench_perf_test(config, kafka, topic: str, records: int, record_size: int, extra_props: str) -> dict[str, Any]:
    from streams.local.broker import java_executable, resolve_jars

    java = java_executable(17 if config.kafka_home is None else 11)
    jars = resolve_jars(config)
    props = [f"bootstrap.servers={kafka.bootstrap_servers}", "acks=all", "enable.idempotence=true",
             *extra_props.split()]
    cmd = [java, "-Xmx256m", "-XX:+UseSerialGC", "-cp", f"{jars}/*", "org.apache.kafka.tools.ProducerPerformance",
           "--topic", topic, "--num-records", str(records), "--record-size", str(record_size),
           "--throughput", "-1", "--producer-props", *props]
    console.print(f"perf test: ProducerPerformance {records:,} records of {record_size} B ({' '.join(props[1:])})")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    rates = re.findall(r"records sent, ([\d.]+) records/sec", done.stdout)
    if done.returncode != 0 or not rates:
        raise RuntimeError(f"ProducerPerformance exited {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}")
    final = [line for line in done.stdout.splitlines() if "records/sec" in line][-1]
    latency = re.search(r"([\d.]+) ms avg latency, ([\d.]+) ms max latency", final)
    console.print(f"perf test: {final.strip()}")
    return {"perf_test_records_per_second": round(float(rates[-1]), 1),
            "perf_test_record_size": record_size, "perf_test_producer_props": props[1:],
            "perf_test_avg_latency_ms": float(latency.group(1)) if latency else None}


def bench_pipeline(args, log, kafka, prefix: str, run_dir: Path, stack: ExitStack) -> dict[str, Any]:
    from producers.producer import make_producer
    from producers.replay import Pacing, replay_log
    from streams.local.broker import free_port
    from streams.windowing.coordinator import send_end_of_stream
    from streams.wire.topics import TopicNames, ensure_topics

    names = TopicNames(prefix)
    ensure_topics(kafka, names, partitions=args.partitions)
    bounds, n_periods = write_bounds(log, ProtocolConfig().split, args.periods, run_dir)
    port = free_port()
    env = stream_env(kafka, prefix, run_dir, bounds, log, args.partitions, method=args.method, scorer_port=port,
                     scorer_host="127.0.0.1", periods=n_periods, pretrain_periods=args.pretrain_periods,
                     first_test_period=args.pretrain_periods + 1, device="cpu", torch_threads=args.torch_threads,
                     seed=args.seed, pretrain_mode=args.pretrain_mode)
    workers = Workers(run_dir / "logs", cwd=REPO)
    logs = workers.logs
    stack.callback(workers.stop)
    for i in range(args.windowing_workers):
        # one folder for all: each worker takes its own slot there, so its own transactional id (separate
        # folders gave them all slot 0, and they fenced each other)
        workers.start(f"windowing-{i}", "windowing", env, worker_dir=run_dir / "faust-windowing")
    for role in ("trainer", "scorer"):
        workers.start(role, role, env, worker_dir=run_dir / f"faust-{role}")
    console.print(f"workers: {args.windowing_workers} windowing, trainer, scorer on :{port} "
                  f"(topics {prefix}*, logs {logs}); {n_periods} periods, {args.pretrain_periods} pretrain")

    # wait until every role listens, so the windowing clock measures processing, not process start-up
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka.confluent_config(logger=quiet_logger()))
    started = time.monotonic()
    deadline = started + args.timeout
    with console.status("waiting for the workers to join their groups and the scorer to answer") as status:
        while True:
            workers.check()
            windowing = group_members(admin, f"{prefix}windowing")
            trainer = group_members(admin, f"{prefix}trainer")
            code, _ = scorer_json(port, "/healthz")
            status.update(f"waiting for workers: windowing {windowing}/{args.windowing_workers}, trainer "
                          f"{trainer}/1, scorer {'up' if code else 'down'}")
            if windowing >= args.windowing_workers and trainer >= 1 and code:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready within {args.timeout:.0f}s; see {logs}")
            time.sleep(1.0)
    startup_seconds = time.monotonic() - started
    console.print(f"workers ready after {startup_seconds:.1f} s")

    watch = TopicWatch(kafka, names, f"{prefix}bench", stack)

    t0 = time.time()
    replayed: dict[str, Any] = {}

    def replay_then_end() -> None:
        """In a thread: a paced replay lasts minutes, and the models must be watched while it runs."""
        try:
            replayed["result"] = replay_log(log, make_producer(kafka), names.interactions,
                                            Pacing(rate=args.pipeline_rate))
            send_end_of_stream(kafka, names)
            console.print(f"pipeline replay: {replayed['result'].summary()}; end-of-stream sent")
        except Exception as exc:  # noqa: BLE001 - reported by the main loop
            replayed["error"] = exc

    replay_thread = threading.Thread(target=replay_then_end, name="replay", daemon=True)
    replay_thread.start()

    expected_models = n_periods - args.pretrain_periods + 1  # the pretrained model is published too
    live: dict[int, float] = {}
    served_version = -1
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        closed_task = progress.add_task("periods closed", total=n_periods)
        live_task = progress.add_task("models live", total=expected_models)
        next_poll = time.monotonic()
        while len(live) < expected_models:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(watch.closed)}/{n_periods} periods closed, {len(live)}/{expected_models} "
                                   f"models live within {args.timeout:.0f}s; see {logs}")
            workers.check()
            if "error" in replayed:
                raise RuntimeError(f"the pipeline replay failed: {replayed['error']}")
            closed, _ = watch.poll(0.02)
            progress.advance(closed_task, len(closed))
            if time.monotonic() >= next_poll:  # GET /model at 10 Hz
                next_poll += 0.1
                code, body = scorer_json(port, "/model", timeout=1.0)
                if code == 200 and body is not None:
                    served_version = max(served_version, int(body["version"]))
                    watch.models.setdefault(int(body["period"]), {"version": body["version"], "period": body["period"]})
                for period in newly_live(watch, served_version, live, time.time()):
                    progress.advance(live_task)
                    progress.console.print(f"period {period}: model v{watch.models[period]['version']} live "
                                           f"{live[period]:.2f} s after the period closed")
            else:
                time.sleep(min(0.05, max(0.0, next_poll - time.monotonic())))
    replay_thread.join()
    while len(watch.closed) < n_periods and time.monotonic() < deadline:  # the last periods close after the replay
        watch.poll(0.2)
    period_ts, models = watch.closed, watch.models
    if len(period_ts) < n_periods:
        raise RuntimeError(f"only {len(period_ts)} of {n_periods} period records seen")
    windowing_seconds = max(period_ts.values()) - t0
    live_list = [{"period": p, "version": int(models[p]["version"]), "seconds": round(live[p], 3)}
                 for p in sorted(live)]
    live_values = [live[p] for p in sorted(live)]
    console.print(f"windowing: {len(log.events):,} events, last period closed {windowing_seconds:.2f} s after "
                  f"the first event was produced")
    result = {"events": len(log.events), "periods": n_periods, "pretrain_periods": args.pretrain_periods,
              "method": args.method, "pretrain_mode": args.pretrain_mode or preset_pretrain_mode(log.name),
              "windowing_workers": args.windowing_workers,
              "worker_startup_seconds": round(startup_seconds, 1),
              "pipeline_replay_events_per_second": round(replayed["result"].rate, 1),
              "pipeline_rate": args.pipeline_rate,
              "windowing_seconds": round(windowing_seconds, 3),
              "period_closed_seconds": {str(p): round(period_ts[p] - t0, 3) for p in sorted(period_ts)},
              "windowing_events_per_second": round(len(log.events) / windowing_seconds, 1),
              "model_live_seconds": live_list,
              "model_live_seconds_p50": round(pct(live_values, 50), 3),
              "model_live_seconds_max": round(max(live_values), 3)}
    result.update(bench_scorer(args, log, port))
    result["peak_rss_mb"] = workers.peak_rss_mb()  # each role's peak resident memory over the whole phase
    return result


def bench_windowing(args, log, kafka, names, run_dir: Path, stack: ExitStack, live: bool) -> dict[str, Any]:
    """The windowing worker alone (no trainer, no scorer), until the last period record:

    - ``live``: the worker joins its group first, then the log is replayed as fast as possible: end-to-end
      ingest, producer and windowing sharing the machine; timed from the first record produced;
    - otherwise: on the topic the replay phase already filled, timed from the worker joining its group
      (polled every 0.1 s)."""
    from confluent_kafka.admin import AdminClient

    from producers.producer import make_producer
    from producers.replay import Pacing, replay_log
    from streams.windowing.coordinator import send_end_of_stream
    from streams.wire.records import read_topic
    from streams.wire.topics import ensure_topics

    ensure_topics(kafka, names, partitions=args.partitions)
    bounds, n_periods = write_bounds(log, ProtocolConfig().split, args.periods, run_dir)
    env = stream_env(kafka, names.prefix, run_dir, bounds, log, args.partitions, worker_dir=run_dir / "worker",
                     log_level="info")
    if not live:
        send_end_of_stream(kafka, names)
    workers = Workers(run_dir / "logs", cwd=REPO)
    logs = workers.logs
    count = args.windowing_workers
    for i in range(count):
        workers.start(f"windowing-{i}", "windowing", env)  # one worker dir: each takes its own slot (transactional id)
    stack.callback(workers.stop)
    admin = AdminClient(kafka.confluent_config(logger=quiet_logger()))
    deadline = time.monotonic() + args.timeout
    while group_members(admin, f"{names.prefix}windowing") < count:
        workers.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} windowing worker(s) did not join within {args.timeout:.0f}s; see {logs}")
        time.sleep(0.1)
    t0 = time.time()
    what = "replay -> windowing" if live else "windowing a filled topic"
    if live:
        replay = replay_log(log, make_producer(kafka), names.interactions, Pacing())
        send_end_of_stream(kafka, names)
        console.print(f"ingest replay: {replay.summary()}")
    with console.status(f"{what}: {len(log.events):,} events"):
        while True:
            workers.check()
            records = read_topic(kafka, names.periods)
            if len(records) >= n_periods:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(records)}/{n_periods} periods within {args.timeout:.0f}s; see {logs}")
            time.sleep(0.2)
    seconds = max(r.timestamp for r in records) / 1000.0 - t0
    peaks = [mb for name, mb in workers.peak_rss_mb().items() if name.startswith("windowing")]
    workers.stop()
    rate = len(log.events) / seconds
    console.print(f"{what}: {len(log.events):,} events, last of {n_periods} periods closed after {seconds:.2f} s "
                  f"({rate:,.0f} events/s)")
    key = "ingest" if live else "windowing_prefilled"
    return {f"{key}_events": len(log.events), f"{key}_seconds": round(seconds, 3),
            f"{key}_events_per_second": round(rate, 1), f"{key}_windowing_workers": count,
            f"{key}_windowing_peak_rss_mb": max(peaks, default=None),
            f"{key}_windowing_peak_rss_mb_sum": round(sum(peaks), 1)}


def bench_scorer(args, log, port: int) -> dict[str, Any]:
    """Latency with one client (a request at a time: the service time a caller sees) and throughput with
    ``--clients`` closed-loop clients (saturation: there latency is mostly queueing, reported too)."""
    users = log.events["user_id"].unique().tolist()
    items = np.asarray(log.events["item_id"].unique())
    k = min(args.candidates, len(items))
    rng = random.Random(args.seed)
    bodies = [json.dumps({"user_id": int(rng.choice(users)),
                          "items": [int(i) for i in rng.sample(list(items), k)]}).encode()
              for _ in range(min(args.requests, 500))]
    out: dict[str, Any] = {"scorer_candidates": k}
    if args.warmup_requests > 0:
        ms, errors, _ = score_load(port, bodies, 1, args.warmup_requests, args.score_seconds)
        out.update({"scorer_warmup_requests": len(ms), "scorer_warmup_errors": len(errors),
                    "scorer_warmup_latency_ms_p99": round(pct(ms, 99), 2) if ms else None})
    for name, clients in (("single", 1), ("saturated", args.clients)):
        before = server_score_buckets(port)
        ms, errors, seconds = score_load(port, bodies, clients, args.requests, args.score_seconds)
        out.update(server_shares(before, server_score_buckets(port), name))
        console.print(f"scorer ({clients} client{'s' if clients > 1 else ''}): {len(ms):,} ok, {len(errors)} "
                      f"errors in {seconds:.2f} s" + (f"; first error {errors[0]}" if errors else ""))
        prefix = "scorer_latency" if name == "single" else "scorer_saturated_latency"
        out.update({f"{prefix}_ms_p50": round(pct(ms, 50), 2) if ms else None,
                    f"{prefix}_ms_p99": round(pct(ms, 99), 2) if ms else None,
                    f"scorer_{name}_requests": len(ms), f"scorer_{name}_errors": len(errors)})
        if name == "saturated":
            out["scorer_clients"] = clients
            out["scorer_requests_per_second"] = round(len(ms) / seconds, 1) if seconds > 0 else None
    return out


def server_score_buckets(port: int) -> dict[float, float]:
    """The scorer's own POST /score latency histogram (upper bound in s -> cumulative count of 200s), from its
    /metrics; {} when it cannot be read. Tells time in the server from time outside it (client, scheduling)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("asmg_scorer_request_seconds_bucket{") and 'path="/score"' in line and \
                'status="200"' in line:
            out[float(line.split('le="')[1].split('"')[0])] = float(line.rsplit(" ", 1)[1])
    return out


def server_shares(before: dict[float, float], after: dict[float, float], name: str) -> dict[str, float]:
    """Shares of a phase's requests that the server itself handled within 1 and 2.5 ms."""
    total = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    if total <= 0:
        return {}
    return {f"scorer_{name}_server_share_within_{label}ms": round((after[le] - before.get(le, 0.0)) / total, 4)
            for le, label in ((0.001, "1"), (0.0025, "2_5")) if le in after}


def score_load(port: int, bodies: list[bytes], clients: int, requests: int,
               max_seconds: float) -> tuple[list[float], list[str], float]:
    """``requests`` POST /score from ``clients`` keep-alive threads: (latencies in ms, errors, seconds)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + max_seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        try:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                began = time.perf_counter()
                try:
                    conn.request("POST", "/score", body=bodies[i % len(bodies)],
                                 headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    with lock:
                        errors.append(repr(exc))
                    continue
                elapsed = time.perf_counter() - began
                if response.status == 200:
                    mine.append(elapsed * 1000)
                else:
                    with lock:
                        errors.append(f"{response.status}: {payload[:200]!r}")
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    began = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - began


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from streams.wire.topics import TopicNames, ensure_topics

    def measure(stack: ExitStack, work: Path, kafka, config, out: dict[str, Any]) -> None:
        out["kafka"] = "external" if kafka.external else f"local {config.kafka_version} (fresh, {work / 'kafka'})"
        if not kafka.external:  # the broker's JIT changed between passes of issue 12: say which one ran
            from streams.local.broker import BROKER_JIT
            out["kafka_jvm_flags"] = " ".join((*BROKER_JIT, *config.jvm_opts))
        full, _ = load_log(args.dataset, args.data_dir, console.print, args.synthetic_events)
        out["dataset"] = full.name
        prefix = f"bench-{int(time.time())}."
        replay_log_ = head(full, args.replay_events)
        replay_names, perf_names = TopicNames(prefix + "replay."), TopicNames(prefix + "perf.")
        warm_names = TopicNames(prefix + "warmup.")
        for names in (replay_names, perf_names, warm_names):
            ensure_topics(kafka, names, partitions=args.partitions)
        out.update(bench_replay(replay_log_, kafka, replay_names.interactions, warm_names.interactions))
        if not args.skip_perf_test:
            out.update(bench_perf_test(config, kafka, perf_names.interactions,
                                       args.perf_records or out["replay_events"],
                                       max(1, round(out["record_bytes_mean"])), args.perf_props))
            out["replay_vs_perf_test_ratio"] = round(out["replay_events_per_second"]
                                                     / out["perf_test_records_per_second"], 3)
        if not args.skip_windowing_only:
            out.update(bench_windowing(args, replay_log_, kafka, replay_names, work / "prefilled", stack,
                                       live=False))
            out.update(bench_windowing(args, replay_log_, kafka, TopicNames(prefix + "ingest."),
                                       work / "ingest", stack, live=True))
        if not args.skip_pipeline:
            out.update(bench_pipeline(args, head(full, args.events), kafka, prefix + "run.", work / "run", stack))

    code, out = run_bench("streaming", args.workdir, console.print, measure)
    if code:
        return code
    # this process: the replay producer, plus the loaded log and the scorer's load clients
    out["bench_process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
