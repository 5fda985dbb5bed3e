"""The scorer's users' histories and the garbage collector: what they add to a full collection, and observe()'s speed.

Why: a full (generation 2) collection walks every tracked object and holds the GIL while it does, stalling the
scorer's event loop and every request in flight. After importing what the scorer imports, this fills a
``UserHistories`` (streams/scorer/evaluation.py, public API only, so ``--repo`` runs an older checkout the same way)
with ``--users`` users of ``--positives`` positives each (one event a second per user, users interleaved; the
collector is off while filling, so the fill costs the same whatever the histories are), then measures:

- ``objects_per_user``: tracked objects (gc.get_objects()) the histories added, per user;
- ``collect_seconds_frozen``: one full gc.collect() with the start-up objects (the empty histories among them)
  frozen, as the scorer freezes them once it listens (streams/scorer/service.py), i.e. what the users' histories
  cost; ``collect_seconds``: the same with nothing frozen; ``empty_*``: both before the histories were filled
  (median of ``--repeat`` each);
- ``fill_events_per_second``: observe() while filling (all positives, users in order, collector off);
- ``observe_events_per_second``: observe() on a stream of ``--stream-events`` events (random known users, 100
  events a second, half positive, batches of ``--batch`` as the scorer's evaluator calls it), collector on and
  start-up frozen; ``full_collections_during_stream``: generation-2 collections it triggered, and
  ``tracked_objects_after_stream``: tracked objects (start-up aside) right after it, no collection forced, and
  ``young_collect_seconds_after_stream`` what a young (generation 0-1) collection then takes;
- ``rss_mb_histories``: resident memory the filled histories added (roughly: the allocator keeps freed memory).

Prints ONE JSON object on stdout (progress on stderr).
Usage: python bench/bench_scorer_gc.py [--users 1000000] [--positives 30] [--repo PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
console = Console(stderr=True, highlight=False)


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed_collect(repeat: int, generation: int = 2) -> float:
    """Median seconds of ``repeat`` collections (full ones by default)."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        gc.collect(generation)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def full_collections() -> int:
    return gc.get_stats()[2]["collections"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--positives", type=int, default=30, help="positives per user (one a second)")
    p.add_argument("--stream-events", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1_000, help="events per observe() call (the scorer's --eval-batch)")
    p.add_argument("--repeat", type=int, default=3, help="collections timed for each median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose code runs (default: this one)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.repo.resolve()))

    import aiohttp  # noqa: F401 - what the scorer process holds
    import confluent_kafka  # noqa: F401
    import numpy as np
    import torch  # noqa: F401

    import streams.scorer.service  # noqa: F401
    from asmg.events import Event
    from streams.scorer.evaluation import UserHistories

    rng = np.random.default_rng(args.seed)
    gc.collect()
    start_up = len(gc.get_objects())
    empty = timed_collect(args.repeat)
    histories = UserHistories(max_users=max(args.users, 1), length=30)  # the scorer makes it before it listens
    gc.freeze()  # as the scorer does once it listens
    empty_frozen = timed_collect(args.repeat)
    console.print(f"start-up: {start_up:,} tracked objects, full collection {empty * 1e3:.0f} ms "
                  f"({empty_frozen * 1e3:.1f} ms frozen)")

    before, rss = len(gc.get_objects()), resident_mb()
    gc.disable()
    began, fill_seconds = time.perf_counter(), 0.0
    chunk = 100_000
    for lo in range(0, args.users, chunk):
        users = range(lo, min(lo + chunk, args.users))
        items = rng.integers(1, 10_000_000, (args.positives, len(users))).tolist()
        for k in range(args.positives):  # user u's k-th positive at second 60 k + u % 60
            events = [Event(u, item, 60 * k + u % 60) for u, item in zip(users, items[k], strict=True)]
            at = time.perf_counter()
            histories.observe(events)
            fill_seconds += time.perf_counter() - at
        console.print(f"  filled {users.stop:,} users ({time.perf_counter() - began:.0f} s)")
    del events, items
    gc.enable()
    gc.collect()
    gc.collect()  # (a tuple holding tuples is untracked by the collection after the one that untracked those)
    added = len(gc.get_objects()) - before
    rss = resident_mb() - rss
    frozen = timed_collect(args.repeat)
    console.print(f"histories: {added / max(args.users, 1):.2f} tracked objects per user, full collection "
                  f"{frozen * 1e3:.0f} ms with start-up frozen")

    n = args.stream_events
    stream = [Event(int(u), int(i), 60 * args.positives + j // 100, int(y)) for j, (u, i, y) in enumerate(zip(
        rng.integers(0, max(args.users, 1), n), rng.integers(1, 10_000_000, n), rng.integers(0, 2, n), strict=True))]
    batches = [stream[lo:lo + args.batch] for lo in range(0, n, args.batch)]
    del stream
    gc.collect()
    collections = full_collections()
    began = time.perf_counter()
    for batch in batches:
        histories.observe(batch)
    observe_seconds = time.perf_counter() - began
    collections = full_collections() - collections
    del batches, batch
    live = len(gc.get_objects()) - before  # what a full collection would walk now, start-up aside
    kinds = Counter(type(o).__name__ for o in gc.get_objects()).most_common(3)
    young = timed_collect(1, generation=1)  # what the next young collection walks: what the stream left tracked
    console.print(f"observe: {n / observe_seconds:,.0f} events/s ({collections} full collections); then "
                  f"{live:,} tracked objects (most: {kinds}), a young collection {young * 1e3:.0f} ms")

    gc.unfreeze()
    unfrozen = timed_collect(args.repeat)
    console.print(f"full collection {unfrozen * 1e3:.0f} ms with nothing frozen")
    result: dict[str, Any] = {
        "benchmark": "scorer_gc", "module": sys.modules[UserHistories.__module__].__file__,
        "python": sys.version.split()[0], "users": len(histories),
        "positives_per_user": args.positives, "start_up_objects": start_up,
        "objects_per_user": round(added / max(args.users, 1), 3),
        "collect_seconds_frozen": round(frozen, 4), "collect_seconds": round(unfrozen, 4),
        "empty_collect_seconds_frozen": round(empty_frozen, 4), "empty_collect_seconds": round(empty, 4),
        "fill_events_per_second": round(args.users * args.positives / fill_seconds),
        "stream_events": n, "observe_events_per_second": round(n / observe_seconds),
        "full_collections_during_stream": collections, "tracked_objects_after_stream": live,
        "young_collect_seconds_after_stream": round(young, 4), "rss_mb_histories": round(rss)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
