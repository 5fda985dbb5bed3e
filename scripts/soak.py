#!/usr/bin/env python
"""Soak: the synthetic stream at a steady rate through the whole pipeline, with faults, RSS watched.

A local broker of its own (free ports, a temporary folder), the three roles (``asmg worker windowing``,
``trainer``, ``scorer``), and a paced producer for ``--minutes``. During the run: one broker restart (a
controlled stop, an outage longer than the roles' session, a start) and one SIGKILL of each role, each restarted
at once as a supervisor would. Every second the resident memory (VmRSS) of every role and of the broker is
sampled. At the end: every period closed once, one model per period from the last pretraining one, and the
scorer counted every event produced, once.

Writes ``soak.json`` (settings, faults, counts, checks, per-role RSS figures, the samples) and ``soak-rss.png``
(RSS against time, faults marked) under ``--out``; exits 1 when a check fails.

    .venv/bin/python scripts/soak.py --minutes 15 --rate 100 --out runs/soak
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROLES = ("windowing", "trainer", "scorer")
PERIODS, PRETRAIN = 12, 3


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (Linux /proc), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """Every ``interval`` seconds: the RSS of each named process (the current pid of each role)."""

    def __init__(self, pids: dict[str, int], interval: float = 1.0) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids = pids  # updated in place when a role is restarted
        self.interval = interval
        self.started = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            t = round(time.monotonic() - self.started, 2)
            for name, pid in list(self.pids.items()):
                value = rss_mb(pid)
                if value is not None:
                    self.samples.append({"t": t, "process": name, "pid": pid, "rss_mb": round(value, 1)})


def rss_figures(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per process name: the peak over the run, and for its last process (the one alive at the end, after any
    restart) the median of the first and of the last fifth of its life and the least-squares slope over the
    second half of its life in MiB per minute (flat memory: a slope near 0)."""
    import numpy as np

    out = {}
    for name in sorted({s["process"] for s in samples}):
        rows = [s for s in samples if s["process"] == name]
        last = [s for s in rows if s["pid"] == rows[-1]["pid"]]
        t, v = np.array([s["t"] for s in last]), np.array([s["rss_mb"] for s in last])
        figures: dict[str, Any] = {"max_mb": max(s["rss_mb"] for s in rows), "processes": len({s["pid"] for s in rows}),
                                   "last_process_seconds": round(float(t[-1] - t[0]), 1)}
        if len(t) >= 10:
            span = t[-1] - t[0]
            first, end, late = t <= t[0] + span / 5, t >= t[-1] - span / 5, t >= t[0] + span / 2
            figures.update(first_fifth_median_mb=float(np.median(v[first])),
                           last_fifth_median_mb=float(np.median(v[end])),
                           second_half_slope_mb_per_min=round(float(np.polyfit(t[late], v[late], 1)[0] * 60), 2))
        out[name] = figures
    return out


def plot(samples: list[dict[str, Any]], faults: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for index, name in enumerate(sorted({s["process"] for s in samples})):
        rows = [s for s in samples if s["process"] == name]
        for n, pid in enumerate(dict.fromkeys(s["pid"] for s in rows)):  # one line per process: restarts show as gaps
            mine = [s for s in rows if s["pid"] == pid]
            ax.plot([s["t"] / 60 for s in mine], [s["rss_mb"] for s in mine], color=f"C{index}", lw=1,
                    label=name if n == 0 else None)
    for fault in faults:
        ax.axvline(fault["t"] / 60, color="grey", ls=":", lw=1)
        ax.text(fault["t"] / 60, ax.get_ylim()[1], fault["what"], rotation=90, va="top", ha="right", fontsize=7)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("soak: resident memory of each process")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def soak(minutes: float, rate: float, out: Path, session_timeout: float = 6.0, partitions: int = 3,
         say=print, broker=None) -> dict[str, Any]:
    """Run the soak; returns the report (also written to ``out/soak.json``). ``broker``: a running
    :class:`~streams.local.broker.LocalBroker` to use (and restart) instead of one of its own (the tests')."""
    import shutil

    from asmg.data.synthetic import synthetic_log
    from asmg.presets import default_preset, preset
    from asmg_cli import pipeline
    from producers.producer import make_producer
    from producers.replay import Pacing, replay_log
    from streams.local.broker import BrokerConfig, LocalBroker, free_port
    from streams.wire.records import read_topic
    from streams.wire.topics import TopicNames, ensure_topics

    for folder in ("periods", "models", "checkpoints", "faust", "logs"):  # a previous run's: the trainer would resume
        shutil.rmtree(out / folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    events = int(minutes * 60 * rate)
    log = synthetic_log(n_users=max(200, events // 40), n_items=max(150, events // 50), n_categories=12,
                        n_periods=PERIODS, events_per_period=max(1, events // PERIODS), seed=0, implicit=False)
    produced_events = len(log.events)
    protocol = preset(default_preset(log.name))[0].protocol
    report: dict[str, Any] = {"minutes": minutes, "rate": rate, "events": produced_events, "periods": PERIODS,
                              "session_timeout": session_timeout, "faults": []}
    with ExitStack() as stack:
        if broker is None:
            home = Path(tempfile.mkdtemp(prefix="asmg-soak-"))
            port, controller = free_port(), free_port()
            while controller == port:
                controller = free_port()
            broker = LocalBroker(BrokerConfig(home=home / "kafka", port=port, controller_port=controller,
                                              heap="512m"))
            broker.start(timeout=180, die_with_parent=True)
            stack.callback(broker.stop, timeout=30)
        kafka = broker.config.settings()
        names = TopicNames(f"soak-{os.getpid()}-{time.time_ns() % 10**9}.")
        ensure_topics(kafka, names, partitions)
        bounds, n_periods = pipeline.write_bounds(log, protocol.split, PERIODS, out)
        scorer_port = free_port()
        env = pipeline.stream_env(kafka, names.prefix, out, bounds, log, partitions, method="asmg-gru-multi",
                                  preset="authors", periods=n_periods, pretrain_periods=PRETRAIN,
                                  first_test_period=PRETRAIN + 1, pretrain_epochs=1, batch_size=256,
                                  meta_batch_size=256, torch_threads=1, device="cpu", session_timeout=session_timeout,
                                  scorer_port=scorer_port, wait_models=0, log_level="info")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        workers = pipeline.Workers(out / "logs")
        stack.callback(workers.stop)
        for role in ROLES:
            workers.start(role, role, env, metrics_port=0 if role != "scorer" else None)
        pids = {role: workers.processes[role].pid for role in ROLES} | {"broker": broker.pid()}
        sampler = Sampler(pids)
        sampler.start()
        unplanned: list[dict[str, Any]] = []

        def supervise() -> None:
            """A supervisor's job: a role that exited by itself is noted (a failed check) and started again."""
            for role in ROLES:
                proc = workers.processes[role]
                if proc.poll() is not None:
                    unplanned.append({"t": round(time.monotonic() - sampler.started, 1), "role": role,
                                      "code": proc.returncode})
                    say(f"  {role} exited by itself with {proc.returncode}; restarting it")
                    workers.start(role, role, env, metrics_port=0 if role != "scorer" else None)
                    pids[role] = workers.processes[role].pid

        ready = {"windowing": "assigned partitions", "trainer": "[^Worker]: Ready"}
        deadline = time.monotonic() + 300
        while not all(text in (workers.logs / f"{role}.log").read_text(errors="replace") for role, text in
                      ready.items()) or pipeline.scorer_json(scorer_port, "/healthz")[0] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the roles did not start within 300 s; see {workers.logs}")
            supervise()
            time.sleep(0.5)
        say(f"soak: roles up after {time.monotonic() - sampler.started:.0f}s; {produced_events} events at "
            f"{rate:g}/s over {minutes:g} min; logs in {workers.logs}")
        stream_started = time.monotonic()

        replayed: dict[str, Any] = {}

        def produce() -> None:
            try:
                producer = make_producer(kafka, logger=logging.getLogger("soak.kafka"))
                result = replay_log(log, producer, names.interactions, Pacing(rate=rate))
                replayed["events"], replayed["seconds"] = result.events, result.seconds
                producer.flush(60)
            except Exception as exc:  # noqa: BLE001 - the soak fails with it below instead of waiting for events
                replayed["error"] = f"{type(exc).__name__}: {exc}"

        producer = threading.Thread(target=produce, name="soak-producer", daemon=True)
        producer.start()

        def at(fraction: float) -> None:
            while time.monotonic() - stream_started < fraction * minutes * 60:
                supervise()
                time.sleep(0.5)

        def fault(what: str) -> None:
            t = round(time.monotonic() - sampler.started, 1)
            report["faults"].append({"t": t, "what": what})
            say(f"  {t:7.1f}s  {what}")

        at(0.25)
        fault("broker stop")
        broker.stop(timeout=30)
        time.sleep(session_timeout + 3)  # the outage itself: longer than every role's session
        broker.start(timeout=180, die_with_parent=True)
        pids["broker"] = broker.pid()
        fault("broker started")
        for fraction, role in ((0.45, "windowing"), (0.6, "trainer"), (0.75, "scorer")):
            at(fraction)
            fault(f"kill -9 {role}")
            proc = workers.processes[role]
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            workers.start(role, role, env, metrics_port=0 if role != "scorer" else None)
            pids[role] = workers.processes[role].pid
        producer.join()
        if "error" in replayed:  # events never delivered cannot be counted: waiting for them would only time out
            raise RuntimeError(f"the soak's producer failed: {replayed['error']}")
        from streams.windowing.coordinator import send_end_of_stream

        send_end_of_stream(kafka, names)
        fault("end of stream")
        expected_models = n_periods - PRETRAIN + 1
        deadline = time.monotonic() + 600
        counted = -1
        while time.monotonic() < deadline:
            supervise()
            periods = [json.loads(r.value)["period"] for r in read_topic(kafka, names.periods)]
            models = [json.loads(r.value)["period"] for r in read_topic(kafka, names.models)]
            status, quality = pipeline.scorer_json(scorer_port, "/quality")
            counted = int(quality["events"].get("events", 0)) if status == 200 and quality else -1
            if len(set(periods)) >= n_periods and len(set(models)) >= expected_models and counted >= produced_events:
                break
            time.sleep(2)
        fault("drained")
        sampler.halt.set()
        sampler.join()
        seconds = time.monotonic() - sampler.started
        report.update(
            replayed=replayed, seconds=round(seconds, 1), periods_closed=periods, models=models,
            scorer_events=counted, unplanned_exits=unplanned,
            checks={"no role exited by itself": not unplanned,
                    "every period closed once": sorted(periods) == list(range(1, n_periods + 1)),
                    "one model per period": sorted(models) == list(range(PRETRAIN, n_periods + 1)),
                    "scorer counted every event once": counted == produced_events,
                    "producer delivered every event": replayed.get("events") == produced_events},
            rss=rss_figures(sampler.samples), samples=sampler.samples)
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    plot(report["samples"], report["faults"], out / "soak-rss.png")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="how long the stream lasts")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"), help="where soak.json and the plot go")
    parser.add_argument("--session-timeout", type=float, default=6.0, help="the roles' consumer-group session (s)")
    args = parser.parse_args()
    report = soak(args.minutes, args.rate, args.out, args.session_timeout)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
