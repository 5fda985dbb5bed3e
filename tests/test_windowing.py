"""The windowing role: samples exactly as the offline builder makes them, DLQ, restarts.

The first half drives :class:`streams.windowing.core.WindowingCore` directly on a dict (fast, no broker):
sample parity with ``prepare_periods``, implicit negatives, and crash/redo idempotence at every kind of
cut. The second half runs ``asmg worker windowing`` subprocesses against the session broker: late and
malformed events land in the DLQ with their reasons, and a worker killed (SIGKILL) mid-stream and
restarted writes the same Parquet files as one that ran straight through.

The helpers at the bottom (worker subprocesses, producing, waiting for records) are shared with
tests/test_trainer.py and tests/test_streaming_e2e.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from asmg.config import ProtocolConfig
from asmg.data.log import make_log
from asmg.data.negatives import draw_uniform, draw_uniform_one
from asmg.data.periods import PeriodScheme
from asmg.events import events_from_log
from asmg.prepare import prepare_periods
from streams.windowing.core import Batch, WindowingCore, period_positives, user_record
from streams.windowing.facts import Facts
from streams.wire.period_store import SORT_KEYS, BackgroundWriter, PeriodStore
from streams.wire.records import control_record, dumps
from streams.wire.settings import SettingsError, StreamSettings, load_bounds, parse_duration
from tests.helpers import tiny_log

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = ProtocolConfig(n_periods=8, pretrain_periods=3, first_test_period=6)
TOPIC = "interactions"


# --- driving the core without Kafka ---------------------------------------------------------------------


def implicit_log(n_events: int = 2500, n_users: int = 30, n_items: int = 80, seed: int = 1):
    rng = np.random.default_rng(seed)
    events = pd.DataFrame({"user_id": rng.integers(1, n_users + 1, n_events),
                           "item_id": rng.integers(1, n_items + 1, n_events),
                           "ts": np.sort(rng.integers(1_000, 20_000, n_events)),
                           "label": np.ones(n_events, np.float32)})
    cats = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "category_id": np.arange(1, n_items + 1) % 6})
    return make_log("tiny-implicit", events, cats, implicit=True)


def partitioned_records(log, partitions: int) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) in log order, partitioned by user id, offsets per partition."""
    out, next_offset = [], [0] * partitions
    for event in events_from_log(log, event_ids=False):
        p = event["user_id"] % partitions
        out.append((p, next_offset[p], json.dumps(event).encode()))
        next_offset[p] += 1
    for p in range(partitions):  # the end-of-stream marker, on every partition
        out.append((p, next_offset[p], dumps(control_record("end_of_stream", None))))
        next_offset[p] += 1
    return out


class Committed:
    """The state topic and the DLQ as the worker leaves them: each batch's writes applied, in order."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.dead: list[dict[str, Any]] = []
        self.lost: Batch | None = None
        self.kinds: list[tuple[bool, bool]] = []  # per applied batch: (closed a period, refused a record)

    def apply(self, batch: Batch) -> None:
        for key, value in batch.writes:
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = value
        self.dead.extend(json.loads(value) for _, value in batch.dead)
        self.kinds.append((bool(batch.closed), bool(batch.dead)))

    def copy(self) -> Committed:
        other = Committed()
        other.state, other.dead = dict(self.state), list(self.dead)
        return other


def run_core(core: WindowingCore, records: Iterable[tuple[int, int, bytes]], root: Path,
             committed: Committed | None = None, batch_size: int = 100, stop_after: int | None = None,
             in_flight: bool = False, background: bool = False) -> Committed:
    """Feed each partition's records in batches of ``batch_size``, partitions taking turns (as a consumer
    interleaves them); ``stop_after`` batches: stop there (a crash after that commit). With ``in_flight`` the
    crash comes one batch later, after the core applied that batch (its memory changed, the period files it
    closed are in the store) but before its transaction committed: its state writes, DLQ records and offsets
    are lost (``committed.lost`` keeps the lost batch). ``background``: files written as the worker writes them,
    by a :class:`BackgroundWriter` waited for before each commit."""
    committed = committed if committed is not None else Committed()
    store = PeriodStore(str(root))
    writer = BackgroundWriter(store) if background else store
    queues: dict[int, list[tuple[int, bytes]]] = {}
    for partition, offset, value in records:
        queues.setdefault(partition, []).append((offset, value))
    done = 0
    while any(queues.values()):
        for partition, queue in queues.items():
            if not queue:
                continue
            chunk, queue[:] = queue[:batch_size], queue[batch_size:]
            batch = core.process(partition, [o for o, _ in chunk], [v for _, v in chunk], writer, TOPIC)
            if isinstance(writer, BackgroundWriter):
                writer.wait()
            if in_flight and stop_after is not None and done >= stop_after:
                committed.lost = batch  # the process dies before the transaction commits
                return committed
            committed.apply(batch)
            done += 1
            if not in_flight and stop_after is not None and done >= stop_after:
                return committed
    return committed


def read_store(root: Path, periods: int, partitions: int) -> dict[int, pd.DataFrame]:
    store = PeriodStore(str(root))
    out = {}
    for period in range(1, periods + 1):
        table = store.read_period_table(period, partitions)
        frame = table.to_pandas()
        out[period] = frame.sort_values(["ts", "user_id", "item_id", "label"], kind="stable").reset_index(drop=True)
    return out


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def assert_same_samples(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    expected = expected.sort_values(["ts", "user_id", "item_id", "label"], kind="stable").reset_index(drop=True)
    assert len(got) == len(expected)
    for column in ("user_id", "item_id", "ts"):
        np.testing.assert_array_equal(got[column].to_numpy(np.int64), expected[column].to_numpy(np.int64))
    np.testing.assert_array_equal(got["label"].to_numpy(np.float32), expected["label"].to_numpy(np.float32))
    for column in ("history", "categories"):
        assert [list(x) for x in got[column]] == [list(x) for x in expected[column]], column


@pytest.mark.parametrize("batch_size", [1, 7, 5000])
def test_core_builds_the_offline_samples(tmp_path: Path, batch_size: int) -> None:
    log = tiny_log(n_events=3000)  # explicit labels, many same-second events
    prepared = prepare_periods(log, PROTOCOL)
    core = WindowingCore(PeriodScheme(bounds=prepared.bounds.to_list()), history_len=30)
    committed = run_core(core, partitioned_records(log, 3), tmp_path, batch_size=batch_size)
    got = read_store(tmp_path, PROTOCOL.n_periods, 3)
    for period, expected in prepared.periods.items():
        assert_same_samples(got[period], expected)
    # remainder events after the last bound are refused as outside every period, nothing else
    assert {d["reason"] for d in committed.dead} <= {"outside periods"}
    assert len(committed.dead) == len(log.events) - sum(len(f) for f in prepared.periods.values())
    assert not [k for k in committed.state if k.startswith("f:")]  # facts deleted once written


def test_files_written_in_the_background_are_the_direct_writes(tmp_path: Path) -> None:
    """The worker's BackgroundWriter: the same bytes in the same places, each file in canonical row order (the
    core hands the store unsorted tables), and the same committed state."""
    log = implicit_log()
    records = partitioned_records(log, 2)
    prepared = prepare_periods(log, PROTOCOL)
    runs = {}
    for background in (False, True):
        core = WindowingCore(PeriodScheme(bounds=prepared.bounds.to_list()), implicit=True, seed=3)
        root = tmp_path / str(background)
        runs[background] = run_core(core, records, root, batch_size=64, background=background)
    direct, behind = tmp_path / "False", tmp_path / "True"
    files = sorted(path.relative_to(direct) for path in direct.rglob("*.parquet"))
    assert len(files) == 2 * PROTOCOL.n_periods
    assert files == sorted(path.relative_to(behind) for path in behind.rglob("*.parquet"))
    for name in files:
        assert (behind / name).read_bytes() == (direct / name).read_bytes(), name
        frame = pq.read_table(behind / name).to_pandas()
        assert frame.equals(frame.sort_values(SORT_KEYS, kind="stable")), f"{name} is not in canonical order"
    assert runs[True].state == runs[False].state and runs[True].dead == runs[False].dead


def test_a_failed_background_write_is_raised_by_wait(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    writer = BackgroundWriter(PeriodStore(str(tmp_path / "file" / "periods")))  # a folder under a file
    core = WindowingCore(PeriodScheme(bounds=[0, 10, 20]), history_len=30)
    values = [json.dumps({"v": 1, "user_id": 1, "item_id": 2, "ts": ts, "label": 1}).encode() for ts in (1, 12)]
    batch = core.process(0, [0, 1], values, writer, TOPIC)  # closes period 1: its file cannot be written
    assert [period for period, _ in batch.closed] == [1]
    with pytest.raises(OSError):
        writer.wait()
    assert writer.wait() == []  # the failure was handed over once; nothing else was pending
    writer.close()


def test_core_implicit_negatives(tmp_path: Path) -> None:
    log = implicit_log()
    prepared = prepare_periods(log, PROTOCOL)
    core = WindowingCore(PeriodScheme(bounds=prepared.bounds.to_list()), implicit=True, seed=3)
    run_core(core, partitioned_records(log, 2), tmp_path, batch_size=64)
    got = read_store(tmp_path, PROTOCOL.n_periods, 2)
    events = log.events
    for period, expected in prepared.periods.items():
        frame = got[period]
        positives, negatives = frame[frame.label == 1], frame[frame.label == 0]
        # the positives (and their histories) are the offline ones; one negative per positive
        assert_same_samples(positives.reset_index(drop=True),
                            expected[expected.label == 1].reset_index(drop=True))
        # one negative per positive, except where the partition's catalogue so far held nothing the user
        # had not had (the stream's first events): no negative can be drawn there
        missing = len(positives) - len(negatives)
        assert 0 <= missing <= (3 if period == 1 else 0)
        for row in negatives.itertuples():
            had = events[(events.user_id == row.user_id) & (events.ts <= row.ts)].item_id
            assert row.item_id not in set(had.tolist()), "negative is an item the user had"
            # the negative's history is its positive's
            twin = positives[(positives.user_id == row.user_id) & (positives.ts == row.ts)]
            assert any(list(h) == list(row.history) for h in twin.history)
        cats = log.item_categories.groupby("item_id").category_id.agg(sorted)
        assert all(list(c) == cats[i] for i, c in zip(negatives.item_id, negatives.categories, strict=True))
    # negatives spread over the catalogue: many distinct items, none dominating
    counts = pd.concat(got.values()).query("label == 0").item_id.value_counts()
    assert len(counts) > 50 and counts.iloc[0] < 0.1 * counts.sum()


def test_negative_draws_do_not_depend_on_batching() -> None:
    offsets = np.arange(0, 10_000, 37)
    many = draw_uniform(11, 2, offsets, draw=5)
    assert [draw_uniform_one(11, 2, int(o), 5) for o in offsets] == many.tolist()
    assert many.min() >= 0 and many.max() < 1 and abs(many.mean() - 0.5) < 0.05
    assert not np.array_equal(many, draw_uniform(11, 3, offsets, draw=5))  # partitions differ
    assert not np.array_equal(many, draw_uniform(12, 2, offsets, draw=5))  # seeds differ


def file_state(committed: Committed) -> dict[str, Any]:
    """The committed state, independent of batch boundaries (which name the fact and catalogue records)."""
    out: dict[str, Any] = {}
    for key, value in sorted(committed.state.items(), key=lambda kv: (kv[0][:1], int(kv[0].split(":")[-1]))):
        kind, partition = key.split(":")[:2]
        if kind == "c":
            out.setdefault(f"c:{partition}", []).append(json.loads(value))
        elif kind == "f":
            out.setdefault(f"f:{partition}", []).extend(Facts.from_bytes(value).offset.tolist())
        else:
            out[key] = json.loads(value)
    for key in [k for k in out if k.startswith("c:")]:
        out[key] = [(i, c) for chunk in out[key] for i, c in zip(chunk["items"], chunk["categories"], strict=True)]
    return out


@pytest.mark.parametrize("in_flight", [False, True], ids=["after-commit", "batch-in-flight-lost"])
def test_core_restored_after_any_commit_writes_the_same_files(tmp_path: Path, in_flight: bool) -> None:
    """A crash right after a commit (a new process restores), or a batch in flight whose transaction aborts:
    the core had applied it (memory, period files it closed) but its state writes, DLQ records and offsets are
    lost, and the same core forgets and restores the last commit (the worker's abort path). The records after
    the commit come again, cut into other batches: the files, the DLQ and the state equal an uninterrupted
    run's, byte for byte."""
    log = implicit_log(n_events=1200)
    bounds = prepare_periods(log, PROTOCOL).bounds.to_list()
    records = partitioned_records(log, 2)
    records.insert(300, (records[300][0], -1, b"{broken"))  # offsets fixed below: a refused record mid-stream
    next_offset: dict[int, int] = {}
    records = [(p, next_offset.setdefault(p, 0) + (next_offset.__setitem__(p, next_offset[p] + 1) or 0), v)
               for p, _, v in records]
    core = lambda: WindowingCore(PeriodScheme(bounds=bounds), implicit=True, lateness=40)  # noqa: E731
    straight = run_core(core(), records, tmp_path / "straight", batch_size=40)
    expected = file_bytes(tmp_path / "straight")
    assert len(expected) == PROTOCOL.n_periods * 2 and straight.dead
    total_batches = len(straight.kinds)
    closing = [i for i, (closed, _) in enumerate(straight.kinds) if closed]  # batches that closed a period
    refusing = [i for i, (_, dead) in enumerate(straight.kinds) if dead]
    lost_files = lost_dead = 0
    cuts = {0, 1, 5, 17, total_batches // 2, total_batches - 2, closing[0], closing[len(closing) // 2], refusing[0]}
    for stop_after in sorted(cuts):
        root = tmp_path / f"crashed-{stop_after}"
        crashed = core()
        committed = run_core(crashed, records, root, batch_size=40, stop_after=stop_after, in_flight=in_flight)
        if in_flight:  # the lost batch did change the core's state: losing it is a real loss
            assert committed.lost is not None and committed.lost.writes, f"nothing in flight at {stop_after}"
            lost_files += bool(committed.lost.closed)  # its period files are in the store, uncommitted
            lost_dead += len(committed.lost.dead)
        if in_flight:  # the worker's abort path: the same core forgets and restores the last commit
            restarted = crashed
            restarted.forget()
        else:  # a new process
            restarted = core()
        for partition in (0, 1):
            restarted.restore(partition, committed.state)
        # Kafka redelivers from the committed offsets; an older one too, to show replays are skipped
        resume = [r for r in records if r[1] > restarted.progress(r[0]).offset - 5]
        run_core(restarted, resume, root, committed, batch_size=23)
        assert file_bytes(root) == expected, f"crash after {stop_after} batches"
        assert file_state(committed) == file_state(straight)
        assert committed.dead == straight.dead
    if in_flight:
        assert lost_files and lost_dead, "no lost batch had closed a period or refused a record"


def test_core_refuses_late_malformed_and_outside_events(tmp_path: Path) -> None:
    ev = lambda u, i, t, **kw: json.dumps({"user_id": u, "item_id": i, "ts": t, **kw}).encode()  # noqa: E731
    values = [ev(1, 1, 150), b"{not json", ev(1, 2, 160, label=7), ev(2, 3, 250), ev(1, 4, 190),
              ev(1, 5, 50), ev(1, 6, 300), b"\xff\xfe", ev(3, 7, 260), b'{"v":1,"control":"bogus"}', None]
    for batch_size in (1, len(values)):
        root = tmp_path / str(batch_size)
        core = WindowingCore(PeriodScheme(bounds=[100, 200, 300]))
        committed = run_core(core, [(0, o, v) for o, v in enumerate(values)], root, batch_size=batch_size)
        reasons = {d["offset"]: d["reason"] for d in committed.dead}
        assert reasons[1].startswith("invalid JSON")
        assert reasons[2] == "label must be 0 or 1, got 7"
        assert reasons[4] == "late"  # period 1 closed when ts 250 arrived (lateness 0)
        assert reasons[5] == reasons[6] == "outside periods"
        assert reasons[7].startswith("event is not UTF-8")
        assert reasons[9].startswith("invalid control record")
        assert reasons[8] == "late"  # ts 300 was outside every period, but moved the watermark past period 2
        assert reasons[10] == "record has no value"
        assert set(reasons) == {1, 2, 4, 5, 6, 7, 8, 9, 10}
        assert committed.dead[0]["raw"] == "{not json" and committed.dead[0]["topic"] == TOPIC
        progress = core.progress(0)
        assert (progress.closed, progress.late, progress.refused, progress.applied) == (2, 2, 7, 2)
        files = read_store(root, 2, 1)
        assert files[1].item_id.tolist() == [1] and files[2].item_id.tolist() == [3]


def test_control_records_are_checked(tmp_path: Path) -> None:
    ctl = lambda **kw: json.dumps({"v": 1, **kw}).encode()  # noqa: E731
    values = [ctl(control="watermark", ts=True), ctl(control="watermark", ts="soon"),
              b'{"v": 1, "control": "watermark", "ts": NaN}', ctl(control="watermark"), ctl(control="end_of_stream"),
              ctl(control="watermark", ts=150), ctl(control="watermark", ts=120.5)]
    core = WindowingCore(PeriodScheme(length=100, origin=100))  # tumbling: an end of stream needs its time
    committed = run_core(core, [(0, o, v) for o, v in enumerate(values)], tmp_path)
    dead = {d["offset"]: d for d in committed.dead}
    assert dead[0]["reason"] == "invalid control record: ts True"
    assert dead[1]["reason"] == "invalid control record: ts 'soon'"
    assert dead[2]["reason"] == "invalid control record: ts nan"
    assert dead[3]["reason"] == "invalid control record: a watermark needs ts"
    assert dead[4]["reason"] == "invalid control record" and "fixed period bounds" in dead[4]["detail"]
    assert set(dead) == {0, 1, 2, 3, 4}
    assert core.progress(0).marker == 150 and core.progress(0).closed == 0  # markers only move forward


def test_watermark_never_goes_back(tmp_path: Path) -> None:
    """An event older than the partition's newest (still within the lateness) leaves the watermark where it
    was, in this batch, in the next one and after a restore: the coordinator closes periods on it."""
    ev = lambda i, t: json.dumps({"user_id": 1, "item_id": i, "ts": t}).encode()  # noqa: E731
    core = WindowingCore(PeriodScheme(bounds=[100, 200, 300]), lateness=30)
    committed = run_core(core, [(0, 0, ev(1, 150)), (0, 1, ev(2, 190)), (0, 2, ev(3, 170))], tmp_path, batch_size=2)
    assert core.progress(0).max_ts == 190 and core.watermark_of(TOPIC, 0)["watermark"] == 160
    restored = WindowingCore(PeriodScheme(bounds=[100, 200, 300]), lateness=30)
    restored.restore(0, committed.state)
    run_core(restored, [(0, 3, ev(4, 180))], tmp_path, committed)
    assert restored.progress(0).max_ts == 190 and restored.watermark_of(TOPIC, 0)["watermark"] == 160
    assert not committed.dead  # all four within the lateness: period 1 holds them
    assert restored.progress(0).closed == 0


def test_lateness_keeps_a_period_open(tmp_path: Path) -> None:
    ev = lambda u, i, t: json.dumps({"user_id": u, "item_id": i, "ts": t}).encode()  # noqa: E731
    # ts 220 leaves the watermark at 190: the event at 195 still counts; 240 closes period 1
    values = [ev(1, 1, 150), ev(1, 2, 220), ev(1, 3, 195), ev(1, 4, 240), ev(1, 5, 199),
              dumps(control_record("end_of_stream", None))]
    for batch_size in (1, 2, len(values)):
        root = tmp_path / str(batch_size)
        core = WindowingCore(PeriodScheme(bounds=[100, 200, 300]), lateness=30)
        committed = run_core(core, [(0, o, v) for o, v in enumerate(values)], root, batch_size=batch_size)
        assert [(d["offset"], d["reason"]) for d in committed.dead] == [(4, "late")]
        files = read_store(root, 2, 1)
        assert files[1].item_id.tolist() == [1, 3]
        # the out-of-order positive at 195 is in the history of the events at 220 and 240, as offline
        assert [list(h) for h in files[2].history] == [[1, 3], [1, 3, 2]]


def test_period_starts_and_ends() -> None:
    """What period records and the coordinator say a period spans (mutation testing found these unchecked)."""
    fixed = PeriodScheme(bounds=[10, 20, 35])
    assert [(fixed.start(p), fixed.end(p)) for p in (1, 2)] == [(10, 20), (20, 35)]
    assert fixed.start(3) == fixed.end(3) == math.inf  # past the last period: never starts, never ends
    assert fixed.end_of_stream() == 35 and fixed.n_periods == 2
    tumbling = PeriodScheme(length=60, origin=1_000, count=3)
    assert [(tumbling.start(p), tumbling.end(p)) for p in (1, 3)] == [(1_000, 1_060), (1_120, 1_180)]
    assert tumbling.start(4) == math.inf and tumbling.end_of_stream() is None and tumbling.n_periods == 3
    for scheme in (fixed, tumbling):  # a period holds [start, end): its own first second, not its end
        for p in (1, 2):
            assert scheme.period_of(scheme.start(p)) == p and scheme.period_of(scheme.end(p) - 1) == p
            assert scheme.closable_through(scheme.end(p)) == p and scheme.closable_through(scheme.end(p) - 1) == p - 1


def test_progress_round_trips_through_its_state_record() -> None:
    from streams.windowing.core import Progress

    progress = Progress(offset=41, max_ts=1_234, marker=1_300.5, closed=2, late=3, refused=4, applied=37)
    assert Progress.load(json.loads(json.dumps(progress.dump()))) == progress
    assert Progress.load(None) == Progress()


def test_forget_drops_only_the_partitions_named(tmp_path: Path) -> None:
    """A rebalance that takes partition 0 away keeps partition 1's memory (and forget() drops them all)."""
    log = implicit_log(n_events=300)
    core = WindowingCore(PeriodScheme(bounds=prepare_periods(log, PROTOCOL).bounds.to_list()), implicit=True)
    run_core(core, partitioned_records(log, 2)[:200], tmp_path, batch_size=50)
    kept = core.progress(1)
    assert core.partitions == [0, 1] and kept.offset > 0
    core.forget({0})
    assert core.partitions == [1] and core.progress(1) is kept and not core.owns(0)
    assert core.progress(0).offset == -1  # a partition not owned starts from nothing
    core.forget()
    assert core.partitions == []


def test_a_worker_without_partitions_says_so_every_30_seconds(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A worker waiting on a rebalance or a broker logs why it is idle, once per interval, and stops once it has
    partitions again (no broker needed: the clients are only made in ``run``)."""
    from streams.windowing.worker import UNASSIGNED_NOTE_EVERY, WindowingWorker
    from streams.wire.kafka_config import KafkaSettings
    from streams.wire.topics import TopicNames

    names = TopicNames("quiet.")
    worker = WindowingWorker(stream_settings(names, tmp_path, period_bounds="[1, 2, 3]"), KafkaSettings.local(9),
                             names, 2)
    worker._on_lost(None, [])  # the session expired: nothing assigned from now on
    since = worker._unassigned_since
    caplog.set_level("INFO", logger="streams.windowing.worker")
    for offset in (1.0, UNASSIGNED_NOTE_EVERY, UNASSIGNED_NOTE_EVERY + 5, 2 * UNASSIGNED_NOTE_EVERY + 1):
        worker._say_if_unassigned(since + offset)
    notes = [r.getMessage() for r in caplog.records if "no partition of quiet.interactions" in r.getMessage()]
    assert len(notes) == 2 and "assigned for 30s" in notes[0] and "assigned for 61s" in notes[1]
    worker._unassigned_since = None  # what _on_assign sets when partitions come back
    worker._say_if_unassigned(since + 10 * UNASSIGNED_NOTE_EVERY)
    assert sum("no partition of" in r.getMessage() for r in caplog.records) == 2


def test_period_schemes_and_settings(tmp_path: Path) -> None:
    tumbling = PeriodScheme(length=parse_duration("1d"), origin=86_400 * 10, count=5)
    assert tumbling.period_of(86_400 * 10) == 1 and tumbling.period_of(86_400 * 11 - 1) == 1
    assert tumbling.period_of(86_400 * 9) == 0 and tumbling.period_of(86_400 * 16) == 0
    assert tumbling.closable_through(86_400 * 12) == 2 and tumbling.closable_through(None) == 0
    assert parse_duration("7d") == 7 * 86_400 and parse_duration("3600") == 3600
    with pytest.raises(SettingsError):
        parse_duration("soon")
    with pytest.raises(SettingsError, match="ORIGIN"):
        PeriodScheme(length=60)
    fixed = PeriodScheme(bounds=[10, 20, 30])
    assert [fixed.period_of(t) for t in (9, 10, 19, 20, 29, 30)] == [0, 1, 1, 2, 2, 0]
    assert [fixed.closable_through(w) for w in (5, 19, 20, 29, 30, 99)] == [0, 0, 1, 1, 2, 2]
    rng = np.random.default_rng(0)
    probe = np.r_[rng.uniform(-10, 40, 200), rng.uniform(86_400 * 9, 86_400 * 17, 200), -np.inf, 10, 20, 30]
    for scheme in (tumbling, fixed):
        assert scheme.period_of_many(probe[np.isfinite(probe)]).tolist() == \
            [scheme.period_of(t) for t in probe[np.isfinite(probe)]]
        assert scheme.closable_through_many(probe).tolist() == \
            [scheme.closable_through(None if t == -np.inf else t) for t in probe]
    path = tmp_path / "bounds.json"
    path.write_text(json.dumps({"bounds": [1, 2, 3]}))
    assert load_bounds(str(path)) == [1, 2, 3] and load_bounds("[4, 5]") == [4, 5]
    with pytest.raises(SettingsError, match="increase"):
        load_bounds("[3, 2]")
    env = {"ASMG_IMPLICIT": "true", "ASMG_ALLOWED_LATENESS": "2.5", "ASMG_PERIOD_BOUNDS": "[1,2]",
           "ASMG_PRETRAIN_PERIODS": "3"}
    settings = StreamSettings.from_env(env, seed=4)
    assert settings.implicit and settings.allowed_lateness == 2.5 and settings.pretrain_periods == 3
    assert settings.seed == 4 and StreamSettings.from_env(settings.to_env()) == settings
    with pytest.raises(SettingsError, match="ASMG_ALLOWED_LATENESS"):
        StreamSettings.from_env({"ASMG_ALLOWED_LATENESS": "x"})
    assert StreamSettings().torch_threads == 1  # bit-for-bit repeatable runs by default
    with pytest.raises(SettingsError, match="ASMG_TORCH_THREADS"):
        StreamSettings.from_env({"ASMG_TORCH_THREADS": "-1"})


# --- helpers shared by the broker tests -------------------------------------------------------------------


def worker_env(settings: StreamSettings, kafka_settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASMG_", "KAFKA_"))}
    env.update(settings.to_env())
    # this machine sets PYTHONDONTWRITEBYTECODE: every worker would compile torch & co from source
    # (seconds per start); cache bytecode outside the tree instead
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "asmg-test-pycache")
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_settings.bootstrap_servers
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Worker:
    """``asmg worker <role>`` in a subprocess; output to a log file; always stopped by the test."""

    def __init__(self, role: str, settings: StreamSettings, kafka_settings, log_dir: Path, **env: str) -> None:
        self.role = role
        self.log = log_dir / f"{role}-{uuid.uuid4().hex[:6]}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "asmg_cli.main", "worker", role],
                                     env=worker_env(settings, kafka_settings, **env), cwd=REPO,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()
        return self.proc.returncode

    def assigned(self) -> str:
        """This windowing worker's last assignment, as it logs it (log level info): 'assigned partitions
        [0, 2] of <topic> (restored [2] in ...)'."""
        text = self.log.read_text(errors="replace")
        start = text.rfind("assigned partitions")
        return text[start:text.find("\n", start)] if start >= 0 else ""

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def dump_stacks(self, timeout: float = 10.0) -> bool:
        """SIGUSR1: a live windowing worker or scorer writes every thread's stack to its log (faulthandler; the
        trainer, a faust worker, its asyncio tasks). True once a new dump is in the log. For a test that
        timed out: the log then says where the worker waits."""
        if not self.alive():
            return False
        before = self.log.read_text(errors="replace").count(STACK_DUMP)
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count(STACK_DUMP) > before:
                return True
            time.sleep(0.2)
        return False


STACK_DUMP = "(most recent call first)"  # how faulthandler heads each thread's stack


def produce(kafka_settings, topic: str, records: Iterable[tuple[bytes | None, bytes]],
            partition_of: Callable[[bytes | None], int] | None = None) -> int:
    from confluent_kafka import Producer

    producer = Producer(kafka_settings.confluent_config(enable_idempotence=True, acks="all", linger_ms=5))
    n = 0
    for key, value in records:
        kwargs = {} if partition_of is None else {"partition": partition_of(key)}
        producer.produce(topic, key=key, value=value, **kwargs)
        producer.poll(0)
        n += 1
    assert producer.flush(30) == 0
    return n


def read_json(kafka_settings, topic: str) -> list[dict[str, Any]]:
    from streams.wire.records import read_topic

    return [json.loads(r.value) for r in read_topic(kafka_settings, topic)]


def wait_for(predicate: Callable[[], Any], timeout: float, workers: Iterable[Worker] = (), what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for worker in workers:
            if not worker.alive() and worker.proc.returncode not in (None,):
                pytest.fail(f"{worker.role} worker exited {worker.proc.returncode} while waiting for {what}:\n"
                            f"{worker.tail()}")
        if time.monotonic() > deadline:
            for worker in workers:
                worker.dump_stacks()
            logs = "\n".join(f"--- {w.role}\n{w.tail(8000)}" for w in workers)
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
        time.sleep(0.5)


def wait_records(kafka_settings, topic: str, count: int, timeout: float, workers: Iterable[Worker] = (),
                 what: str = "") -> list[dict[str, Any]]:
    """Wait until ``topic`` holds at least ``count`` records; return them all (JSON-decoded)."""
    def enough() -> list[dict[str, Any]] | None:
        records = read_json(kafka_settings, topic)
        return records if len(records) >= count else None

    return wait_for(enough, timeout, workers, what or f"{count} records on {topic}")


def assigned_partitions(worker: Worker) -> set[int]:
    """The partitions of a windowing worker's last assignment (from its info log line)."""
    match = re.search(r"assigned partitions \[([\d, ]*)\]", worker.assigned())
    return {int(p) for p in match.group(1).split(",") if p.strip()} if match else set()


def wait_consumed(kafka_settings, group: str, topic: str, timeout: float, workers: Iterable[Worker] = ()) -> None:
    """Wait until ``group`` committed offsets past the last record of every partition of ``topic``: its worker
    has handled every record (and published whatever it publishes for them), so nothing more comes."""
    from confluent_kafka import Consumer, TopicPartition

    from streams.wire.records import read_topic

    last: dict[int, int] = {}
    for record in read_topic(kafka_settings, topic):
        last[record.partition] = max(last.get(record.partition, -1), record.offset)

    def caught_up() -> bool:
        consumer = Consumer(kafka_settings.confluent_config(group_id=group, enable_auto_commit=False))
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in last], timeout=10)
        finally:
            consumer.close()
        return all(tp.offset > last[tp.partition] for tp in committed)

    wait_for(caught_up, timeout, workers, f"{group} to commit its offsets on {topic}")


def stream_settings(topic_names, tmp_path: Path, **changes: Any) -> StreamSettings:
    base = dict(topic_prefix=topic_names.prefix, partitions=3, worker_dir=str(tmp_path / "faust"),
                period_store=str(tmp_path / "periods"), artifact_store=str(tmp_path / "models"),
                checkpoint_store=str(tmp_path / "checkpoints"), watermark_interval=0.5, torch_threads=1,
                session_timeout=6.0)
    base.update(changes)
    return StreamSettings(**base)


def event_records(log) -> list[tuple[bytes, bytes]]:
    return [(str(e["user_id"]).encode(), json.dumps(e).encode()) for e in events_from_log(log, event_ids=False)]


# --- against the broker -----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_worker_sends_late_and_malformed_events_to_the_dlq(kafka_settings, topic_names, tmp_path: Path) -> None:
    from streams.windowing.coordinator import send_end_of_stream
    from streams.wire.topics import ensure_topics

    bounds = [1000, 2000, 3000, 4000]
    settings = stream_settings(topic_names, tmp_path, period_bounds=json.dumps(bounds), partitions=2)
    ensure_topics(kafka_settings, topic_names, 2)
    ev = lambda u, i, t: (str(u).encode(), json.dumps({"user_id": u, "item_id": i, "ts": t}).encode())  # noqa: E731
    # user 1 and user 2 land on the partitions the producer's hash picks; the late one follows a jump
    good = [ev(1, 10, 1100), ev(2, 11, 1200), ev(1, 12, 1500), ev(2, 13, 2100), ev(1, 14, 2500), ev(2, 15, 3500),
            ev(1, 16, 3600)]
    bad = [(b"1", b"{oops"), (b"2", json.dumps({"user_id": 2, "ts": 2200}).encode()), ev(2, 17, 1900),
           ev(1, 18, 99)]
    produce(kafka_settings, topic_names.interactions, good[:4] + bad + good[4:])
    send_end_of_stream(kafka_settings, topic_names)
    worker = Worker("windowing", settings, kafka_settings, tmp_path)
    try:
        wait_records(kafka_settings, topic_names.periods, 3, 90, [worker])
        wait_records(kafka_settings, topic_names.dlq, 4, 30, [worker])
        # every record handled and committed (with its outputs, one transaction): nothing more can come
        wait_consumed(kafka_settings, settings.role_app_id("windowing"), topic_names.interactions, 60, [worker])
        periods = read_json(kafka_settings, topic_names.periods)
        dead = read_json(kafka_settings, topic_names.dlq)
        assert len(periods) == 3 and len(dead) == 4
    finally:
        worker.stop()
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == sorted(["invalid JSON: Expecting property name enclosed in double quotes at line 1 "
                              "column 2", "missing field item_id", "late", "outside periods"])
    late = next(d for d in dead if d["reason"] == "late")
    assert json.loads(late["raw"])["item_id"] == 17 and "partition" in late and "offset" in late
    assert [p["period"] for p in periods] == [1, 2, 3]
    assert [p["samples"] for p in periods] == [3, 2, 2]  # every valid event is used
    assert all(p["partitions"] == 2 and len(p["sha256"]) == 64 for p in periods)
    store = PeriodStore(settings.period_store)
    items = sorted(store.read_period_table(2, 2).column("item_id").to_pylist())
    assert items == [13, 14]


@pytest.mark.timeout(180)
def test_killed_windowing_worker_writes_the_same_samples(kafka_settings, topic_names, tmp_path: Path) -> None:
    """SIGKILL mid-stream, restart: the period files equal those of an uninterrupted worker (implicit log,
    so sampled negatives are compared too), and the records carry the same checksums."""
    from streams.windowing.coordinator import send_end_of_stream
    from streams.wire.topics import TopicNames, ensure_topics

    log = implicit_log(n_events=3000, n_users=60, n_items=150)
    bounds = prepare_periods(log, PROTOCOL).bounds.to_list()
    records = event_records(log)
    half = len(records) // 2
    runs = {}
    for name in ("straight", "killed"):
        names = TopicNames(f"{topic_names.prefix}{name}.")
        ensure_topics(kafka_settings, names, 3)
        # the killed worker gets the first half only until it is killed: the kill is mid-stream for sure
        produce(kafka_settings, names.interactions, records if name == "straight" else records[:half])
        if name == "straight":
            send_end_of_stream(kafka_settings, names)
        # small batches, so that the kill lands between commits in the middle of the stream
        runs[name] = (names, stream_settings(names, tmp_path / name, period_bounds=json.dumps(bounds),
                                             implicit=True, seed=5, batch_max=40))
    straight = Worker("windowing", runs["straight"][1], kafka_settings, tmp_path)
    killed = Worker("windowing", runs["killed"][1], kafka_settings, tmp_path)
    workers = [straight, killed]
    try:
        killed_store = Path(runs["killed"][1].period_store)
        # kill once the first files appear (mid-stream: the second half was not even produced yet)
        wait_for(lambda: list(killed_store.rglob("*.parquet")), 90, [killed], "the first period files")
        killed.kill()
        written_before = len(list(killed_store.rglob("*.parquet")))
        produce(kafka_settings, runs["killed"][0].interactions, records[half:])
        send_end_of_stream(kafka_settings, runs["killed"][0])
        restarted = Worker("windowing", runs["killed"][1], kafka_settings, tmp_path)
        workers.append(restarted)
        done = {}
        for name, worker in (("straight", straight), ("killed", restarted)):
            names = runs[name][0]
            done[name] = wait_records(kafka_settings, names.periods, PROTOCOL.n_periods, 120, [worker])
    finally:
        for worker in workers:
            worker.stop()
    assert written_before < PROTOCOL.n_periods * 3, "the kill came after the whole stream was processed"
    a, b = (file_bytes(Path(runs[n][1].period_store)) for n in ("straight", "killed"))
    assert a.keys() == b.keys() and len(a) == PROTOCOL.n_periods * 3
    assert a == b
    assert [r["sha256"] for r in done["straight"]] == [r["sha256"] for r in done["killed"]]
    assert [r["period"] for r in done["killed"]] == list(range(1, PROTOCOL.n_periods + 1))
    total = sum(pq.read_metadata(Path(runs["killed"][1].period_store) / f).num_rows for f in b)
    positives = sum(len(f[f.label == 1]) for f in prepare_periods(log, PROTOCOL).periods.values())
    assert 2 * positives - 3 * 3 <= total <= 2 * positives  # a negative each, but for a partition's first events


@pytest.mark.timeout(120)
def test_windowing_worker_dumps_every_threads_stack_on_sigusr1(kafka_settings, topic_names, tmp_path: Path) -> None:
    """What an operator (and a timed-out test) does to see where a worker that makes no progress waits."""
    from streams.wire.topics import ensure_topics

    settings = stream_settings(topic_names, tmp_path, period_bounds=json.dumps([1000, 2000, 3000]), partitions=2,
                               log_level="info")
    ensure_topics(kafka_settings, topic_names, 2)
    worker = Worker("windowing", settings, kafka_settings, tmp_path)
    try:
        wait_for(lambda: assigned_partitions(worker) == {0, 1}, 90, [worker], "the worker's assignment")
        assert worker.dump_stacks(timeout=20), f"no stack dump after SIGUSR1:\n{worker.tail()}"

        def whole_dump() -> str | None:  # faulthandler writes a thread at a time: the first header can come early
            dump = worker.log.read_text(errors="replace")
            return dump if "in run_windowing" in dump and re.search(r"coordinator\.py.*in run", dump) else None

        dump = wait_for(whole_dump, 20, [worker], "the main thread's and the coordinator's stacks in the dump")
        assert "in run_windowing" in dump  # the main thread, in the worker's loop
        assert re.search(r"coordinator\.py.*in run", dump)  # the coordinator's thread
        assert worker.alive(), "SIGUSR1 must not stop the worker"
    finally:
        assert worker.stop() == 0


@pytest.mark.timeout(180)
def test_windowing_workers_share_partitions(kafka_settings, topic_names, tmp_path: Path) -> None:
    """One worker takes the first half of the stream, a second joins the group (partitions move, the
    newcomer restores their state from the changelog), then the rest arrives: the periods hold exactly
    the offline samples, published once each."""
    from streams.windowing.coordinator import send_end_of_stream
    from streams.wire.topics import ensure_topics

    log = tiny_log(n_events=3000)
    prepared = prepare_periods(log, PROTOCOL)
    settings = stream_settings(topic_names, tmp_path, period_bounds=json.dumps(prepared.bounds.to_list()),
                               log_level="info")
    ensure_topics(kafka_settings, topic_names, settings.partitions)
    records = event_records(log)
    half = len(records) // 2
    produce(kafka_settings, topic_names.interactions, records[:half])
    workers = [Worker("windowing", settings, kafka_settings, tmp_path)]
    try:
        wait_records(kafka_settings, topic_names.periods, 2, 90, workers, "the first worker's first periods")
        workers.append(Worker("windowing", settings, kafka_settings, tmp_path))

        def shared() -> bool:  # the group rebalanced: each worker holds some partitions, together all of them
            first, second = (assigned_partitions(w) for w in workers)
            return bool(first) and bool(second) and not first & second and first | second == {0, 1, 2}

        wait_for(shared, 90, workers, "the two workers to share the partitions")
        produce(kafka_settings, topic_names.interactions, records[half:])
        send_end_of_stream(kafka_settings, topic_names)
        wait_records(kafka_settings, topic_names.periods, PROTOCOL.n_periods, 120, workers)
        wait_consumed(kafka_settings, settings.role_app_id("windowing"), topic_names.interactions, 60, workers)
        periods = read_json(kafka_settings, topic_names.periods)
    finally:
        for worker in workers:
            worker.stop()
    assert [p["period"] for p in periods] == list(range(1, PROTOCOL.n_periods + 1))
    from streams.wire.period_store import read_period_record

    for record in periods:
        assert_same_samples(read_period_record(record), prepared.periods[record["period"]])
    # the newcomer did take over interactions partitions (and so restored their state)
    assert "assigned partitions [" in workers[1].assigned() and "restored []" not in workers[1].assigned(), \
        workers[1].tail()


@pytest.mark.parametrize("seen", [None, set(), {5, 2**63 - 1, 0}])
@pytest.mark.parametrize("positives", [None, np.zeros((0, 3), dtype=np.int64),
                                       np.array([[1, 2, 3], [4, 2**62, 6], [7, 8, 9]], dtype=np.int64)[::2]])
def test_user_record_is_the_wire_form_of_the_record(positives: np.ndarray | None, seen: set[int] | None) -> None:
    record: dict = {"pos": [] if positives is None else positives.tolist()}
    if seen is not None:
        record["seen"] = sorted(seen)
    assert user_record(positives, seen) == dumps(record)


@pytest.mark.parametrize(("seed", "n"), [(0, 0), (1, 1), (2, 400), (3, 400), (4, 400)])
def test_period_positives_are_the_history_matrix_as_ranges(seed: int, n: int) -> None:
    from asmg.data.samples import history_matrix  # the offline builder's, the reference

    rng = np.random.default_rng(seed)
    width = 4
    facts = Facts.empty()
    facts.offset = rng.permutation(n).astype(np.int64)
    facts.user, facts.item = rng.integers(0, 20, n), rng.integers(0, 30, n)
    facts.ts, facts.label = rng.integers(0, 40, n), rng.integers(0, 2, n).astype(np.int8)  # ties in ts too
    users, user_of, begin, own, items = period_positives(facts, width)
    assert users.tolist() == sorted(set(facts.user.tolist())) and (users[user_of] == facts.user).all()
    order = np.lexsort((facts.offset, facts.item, facts.user, facts.ts))
    hist, lengths = history_matrix(facts.user[order], facts.ts[order], facts.label[order], facts.item[order], width)
    for row, i in enumerate(order.tolist()):
        assert items[begin[i]:begin[i] + own[i]].tolist() == hist[row, width - lengths[row]:].tolist()
