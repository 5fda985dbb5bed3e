"""Memory of the windowing worker over a long stream: does its RSS stay flat as events go by?

One run against a fresh local broker (temporary folder, free ports; or the cluster named by
KAFKA_BOOTSTRAP_SERVERS): the synthetic drifting stream of ``--events`` events (31 periods) is replayed into a
fresh topic first, then ONE windowing worker (``asmg worker windowing``) processes it while this script samples,
every ``--interval`` seconds, the worker's resident set size (/proc/<pid>/status VmRSS) against the events it
has processed (its group's committed offsets: the worker commits them in the transaction of each batch).

Reported (ONE JSON object on stdout; progress on stderr): RSS at start, half-way and at the end, the peak
(VmHWM), the least-squares slope of RSS over the second half of the events (MB per million events) and the
growth it implies over that half, and ``flat``: that growth is under ``--flat-fraction`` (default 10%) of the
RSS at half-way. ``--plot`` writes RSS against events as a PNG (default docs/windowing_memory.png).

Usage: python bench/bench_memory.py [--events 5000000] [--interval 1.0] [--plot docs/windowing_memory.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asmg.config import ProtocolConfig  # noqa: E402 - after the path
from asmg_cli.pipeline import (  # noqa: E402 - after the path
    Workers,
    load_log,
    proc_status_mb,
    run_bench,
    stream_env,
    write_bounds,
)

console = Console(stderr=True, highlight=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="Events of the synthetic stream.")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--periods", type=int, default=31)
    parser.add_argument("--interval", type=float, default=1.0, help="Seconds between samples.")
    parser.add_argument("--flat-fraction", type=float, default=0.10,
                        help="Flat: second-half growth below this fraction of the half-way RSS.")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "windowing_memory.png")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep state and logs here.")
    parser.add_argument("--replot", type=Path, default=None,
                        help="Only draw --plot from this saved JSON output (no run).")
    return parser.parse_args(argv)


def committed_total(consumer, partitions: list) -> int | None:
    """Events the group has committed past, summed over the partitions (-1001: nothing committed yet); None
    while the group coordinator is not known yet (NOT_COORDINATOR and the like: asked again next sample)."""
    from confluent_kafka import KafkaException

    try:
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    except KafkaException:
        return None


def summarise(samples: list[tuple[float, int, float]], events: int, flat_fraction: float) -> dict[str, Any]:
    """Start/half/end RSS and the least-squares slope of RSS over the second half of the events."""
    done = np.asarray([s[1] for s in samples], dtype=np.float64)
    rss = np.asarray([s[2] for s in samples], dtype=np.float64)
    second = done >= events / 2
    slope = float(np.polyfit(done[second] / 1e6, rss[second], 1)[0]) if second.sum() >= 3 else float("nan")
    half = float(np.interp(events / 2, done, rss))
    growth = slope * (events / 2) / 1e6
    return {"rss_mb_first_sample": round(float(rss[0]), 1), "rss_mb_half": round(half, 1),
            "rss_mb_end": round(float(rss[-1]), 1), "rss_mb_max_sampled": round(float(rss.max()), 1),
            "rss_slope_mb_per_million_events_second_half": round(slope, 2),
            "rss_growth_mb_second_half": round(growth, 1),
            "flat": bool(np.isfinite(slope) and growth < flat_fraction * half)}


def plot(samples: list[tuple[float, int, float]], out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = np.asarray([s[1] for s in samples]) / 1e6
    rss = np.asarray([s[2] for s in samples])
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.plot(done, rss, lw=1.0)
    ax.set_xlabel("events processed (millions)")
    ax.set_ylabel("windowing worker RSS (MB)")
    ax.set_ylim(0, max(rss.max() * 1.15, 1))
    ax.set_title(f"Windowing worker RSS, {out['events'] / 1e6:.1f}M synthetic events, {out['periods']} periods"
                 f"; second half: {out['rss_slope_mb_per_million_events_second_half']:+.1f} "
                 "MB per million events", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        plot([tuple(x) for x in saved["samples"]], saved, args.plot)
        return 0
    from confluent_kafka import Consumer, TopicPartition

    from producers.producer import make_producer
    from producers.replay import Pacing, replay_log
    from streams.windowing.coordinator import send_end_of_stream
    from streams.wire.records import read_topic
    from streams.wire.topics import TopicNames, ensure_topics

    def measure(stack: ExitStack, work: Path, kafka, config, out: dict[str, Any]) -> None:
        log, _ = load_log("synthetic", work / "no-data", console.print, args.events)
        names = TopicNames(f"mem-{int(time.time())}.")
        ensure_topics(kafka, names, partitions=args.partitions)
        bounds, n_periods = write_bounds(log, ProtocolConfig().split, args.periods, work / "run")
        out.update(events=len(log.events), periods=n_periods, partitions=args.partitions,
                   users=int(log.events["user_id"].nunique()), items=int(log.events["item_id"].nunique()))
        replay = replay_log(log, make_producer(kafka), names.interactions, Pacing())
        send_end_of_stream(kafka, names)
        console.print(f"replayed: {replay.summary()}")
        out["replay_events_per_second"] = round(replay.rate, 1)
        del log  # the worker's memory is measured, not this script's

        env = stream_env(kafka, names.prefix, work / "run", bounds, load_log_stub(), args.partitions,
                         worker_dir=work / "run" / "worker")
        workers = Workers(work / "logs", cwd=REPO)
        stack.callback(workers.stop)
        proc = workers.start("windowing", "windowing", env)
        consumer = Consumer(kafka.confluent_config(group_id=f"{names.prefix}windowing", enable_auto_commit=False))
        stack.callback(consumer.close)
        partitions = [TopicPartition(names.interactions, p) for p in range(args.partitions)]
        samples: list[tuple[float, int, float]] = []
        t0 = time.monotonic()
        deadline = t0 + args.timeout
        while True:
            workers.check()
            rss = proc_status_mb(proc.pid, "VmRSS")
            done = committed_total(consumer, partitions)
            if done is None:
                done = samples[-1][1] if samples else 0
            elif rss is not None and (rss > 1 or samples):  # not the instant before the interpreter runs
                samples.append((time.monotonic() - t0, done, rss))
            if len(samples) % 15 == 1:
                console.print(f"{samples[-1][0]:6.0f} s: {done:,} events, RSS {rss:.0f} MB")
            if done >= out["events"] and len(read_topic(kafka, names.periods)) >= n_periods:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{done:,}/{out['events']:,} events within {args.timeout:.0f}s; see {work}")
            time.sleep(args.interval)
        out["windowing_seconds"] = round(samples[-1][0], 1)
        out["windowing_events_per_second"] = round(out["events"] / max(samples[-1][0], 1e-9), 1)
        out["rss_mb_peak"] = round(proc_status_mb(proc.pid, "VmHWM") or float("nan"), 1)
        out.update(summarise(samples, out["events"], args.flat_fraction))
        out["samples"] = [[round(t, 1), n, round(r, 1)] for t, n, r in samples]
        if args.plot:
            plot(samples, out, args.plot)
            out["plot"] = str(args.plot.relative_to(REPO) if args.plot.is_relative_to(REPO) else args.plot)

    code, out = run_bench("windowing_memory", args.workdir, console.print, measure)
    if code:
        return code
    print(json.dumps(out, indent=2))
    return 0


def load_log_stub():
    """What stream_env reads of a log (its name and whether it is implicit), without keeping the events."""
    from types import SimpleNamespace

    return SimpleNamespace(name="synthetic", implicit=False)


if __name__ == "__main__":
    sys.exit(main())
