"""The windowing core alone (no Kafka) on the synthetic stream: CPU seconds of parsing, windowing, period files.

Why: on a shared 2-core machine the end-to-end bench (bench_streaming.py) varies by 2x between runs; the core's
CPU time is steadier, and ``--repo`` runs another checkout's code in the same conditions (an A/B of a change).
The records are the replay's JSON (asmg.events.encode_log), spread over ``--partitions`` partitions, processed in
batches of ``--batch`` per partition, then an end-of-stream control record closes every period. Prints ONE JSON
object (the worker's GC settings applied): CPU seconds of the replay's encoding and of the core,
events per CPU second, and a digest of the period files (equal digests: equal files).
Usage: python bench/bench_windowing_core.py [--events 1000000] [--repo PATH]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--periods", type=int, default=8)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--batch", type=int, default=2_500, help="records per partition per batch")
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose code runs (default: this one)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.repo.resolve()))
    from dataclasses import replace

    import numpy as np

    from asmg.config import ProtocolConfig
    from asmg.data.periods import PeriodScheme, period_bounds
    from asmg.data.synthetic import scaled_synthetic_log
    from asmg.events import encode_log
    from streams.windowing import worker
    from streams.windowing.core import WindowingCore
    from streams.wire.period_store import PeriodStore

    gc.set_threshold(*getattr(worker, "GC_THRESHOLDS", gc.get_threshold()))  # as the worker process runs
    log = scaled_synthetic_log(args.events)
    log = replace(log, events=log.events.sort_values("ts", kind="stable").reset_index(drop=True))
    began = time.process_time()
    chunks = list(encode_log(log))
    encode_cpu = time.process_time() - began
    keys = [k for c in chunks for k in c.keys]
    values = [v for c in chunks for v in c.values]
    part = np.array([zlib.crc32(k) % args.partitions for k in keys])
    per = {q: [values[i] for i in np.flatnonzero(part == q)] for q in range(args.partitions)}
    bounds = period_bounds(log.events["ts"].to_numpy(), ProtocolConfig().split, args.periods).to_list()
    core = WindowingCore(PeriodScheme(bounds=bounds), implicit=log.implicit)
    store = PeriodStore(tempfile.mkdtemp(prefix="bench-windowing-core-"))
    end = b'{"v":1,"control":"end_of_stream","ts":null}'
    writes = 0
    began, wall = time.process_time(), time.perf_counter()
    for lo in range(0, max(map(len, per.values())), args.batch):
        for q, rows in per.items():
            if lo < len(rows):
                hi = min(lo + args.batch, len(rows))
                writes += len(core.process(q, list(range(lo, hi)), rows[lo:hi], store, "t").writes)
    for q, rows in per.items():
        writes += len(core.process(q, [len(rows)], [end], store, "t").writes)
    cpu, wall = time.process_time() - began, time.perf_counter() - wall
    digest = hashlib.sha256()
    files = sorted(Path(store.uri).rglob("*.parquet"))
    for f in files:
        digest.update(f.read_bytes())
    try:  # which event parser served the fast path (checkouts before it have only Arrow's)
        from asmg.event_parse import library
        parser = "native" if library() is not None else "arrow"
    except ImportError:
        parser = "arrow"
    print(json.dumps({"benchmark": "windowing_core", "repo": str(args.repo), "events": len(values), "parser": parser,
                      "implicit": bool(log.implicit), "encode_cpu_seconds": round(encode_cpu, 2),
                      "core_cpu_seconds": round(cpu, 2), "core_wall_seconds": round(wall, 2),
                      "core_events_per_cpu_second": round(len(values) / cpu),
                      "periods_closed": [core.progress(q).closed for q in per], "state_writes": writes,
                      "period_files": len(files), "period_files_sha256": digest.hexdigest()[:16]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
