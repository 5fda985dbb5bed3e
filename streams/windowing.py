"""The windowing role: interaction events in, one Parquet file per (period, partition) out.

For every record of the interactions topic, in partition order:

1. Validate it (:func:`asmg.events.parse_event`); a bad one goes to the DLQ with the reason.
2. Advance the partition's watermark: max event time seen minus the allowed lateness, or a control
   record's time (``control`` records: see streams/records.py; :func:`streams.coordinator.send_end_of_stream`).
   Every period whose end the watermark passed is closed for this partition: its samples are written to
   the period store (Parquet, one file per partition, idempotent name and content) and a watermark record
   says so (``closed_through``) on the watermarks topic, where the coordinator decides for all partitions.
3. Assign the event to a period by event time (fixed bounds or tumbling windows). Events of a period this
   partition already closed go to the DLQ as ``late`` (counted, never into a closed period); events
   outside every period go to the DLQ as ``outside periods``.
4. Record the sample. History = the user's up to ``history_len`` most recent positive items strictly
   before the event's time, ordered by (ts, item) like the offline builder (same-second events don't see
   each other). Histories are computed when the period closes, from the user's positives kept in the
   table, so an event that arrives out of order within the allowed lateness still ends up in the
   history of later events exactly as offline. Implicit mode: each positive gets one sampled negative,
   drawn uniformly from the items this partition has seen so far, never an item the user had by then.

Differences from the offline builder (asmg/data/samples.py), all documented on purpose:

- negatives are drawn from the partition's catalogue so far with a per-record RNG (seeded by seed,
  partition, offset), not from the whole log's items with one RNG: same distribution family, different
  draws; "had by then" means events of the user already processed (offline: ts <= the event's ts);
- event time is floored to whole seconds (the offline logs are in whole seconds);
- late and outside events do not enter any user's history (offline has no such events);
- a user who had (nearly) every item of the catalogue so far gets no negative after 64 draws (offline
  raises); this includes the first events of a partition, whose catalogue is still tiny.

State and restarts. Everything lives in ONE faust table (``state``, changelogged, memory store), and
every write made while processing a record of partition p goes to changelog partition p, in order (key
layout: :class:`WindowingCore`). A typical record makes exactly one write, the fact of its sample,
and that write comes last; progress records are written when a period closes and for records that
yield no sample. After a crash (faust is at-least-once: records after the last commit come again)
the core rebuilds its memory from the table: a record at or below the last applied offset is
skipped, a record whose processing was cut short is redone; each write is idempotent and every
decision depends only on state that the record's own earlier writes leave unchanged, so the redo
yields the same samples, negatives and files as an uninterrupted run (tests/test_windowing.py cuts
the processing after every n-th write and checks the files byte for byte). DLQ records are awaited
before the record counts as applied (at-least-once; key = topic:partition:offset, for de-duplication).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from asmg.events import Event, EventError, parse_event
from streams.period_store import PeriodStore, samples_table
from streams.records import (
    CONTROL_KINDS,
    dlq_key,
    dlq_record,
    dumps,
    watermark_record,
)
from streams.settings import SettingsError, StreamSettings, load_bounds, parse_duration

log = logging.getLogger(__name__)

NEGATIVE_DRAWS = 64
INF = math.inf


# --- periods ------------------------------------------------------------------------------------------------


class PeriodScheme:
    """Event time -> period number (1-based; 0 = outside every period), and period bounds.

    Fixed bounds: period p holds bounds[p-1] <= ts < bounds[p] (as asmg.data.periods.PeriodBounds).
    Tumbling: period p holds origin + (p-1)*length <= ts < origin + p*length, p <= count when given.
    """

    def __init__(self, bounds: list[float] | None = None, length: float | None = None,
                 origin: float | None = None, count: int | None = None) -> None:
        if (bounds is None) == (length is None):
            raise SettingsError("periods need either fixed bounds (ASMG_PERIOD_BOUNDS) or a length "
                                "(ASMG_PERIOD_LENGTH)")
        if length is not None and origin is None:
            raise SettingsError("tumbling periods (ASMG_PERIOD_LENGTH) need ASMG_PERIOD_ORIGIN: the unix time "
                                "where period 1 starts (period numbers must start at 1 for pretraining)")
        if count is not None and count < 1:
            raise SettingsError("ASMG_PERIOD_COUNT must be >= 1")
        self.bounds = list(bounds) if bounds is not None else None
        self.length = length
        self.origin = origin
        self.count = count

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> PeriodScheme:
        if settings.period_bounds:
            return cls(bounds=load_bounds(settings.period_bounds))
        if settings.period_length:
            return cls(length=parse_duration(settings.period_length), origin=settings.period_origin,
                       count=settings.period_count)
        raise SettingsError("set the periods: --period-bounds (ASMG_PERIOD_BOUNDS, e.g. written by "
                            "`asmg worker bounds`) or --period-length with --period-origin")

    @property
    def fixed(self) -> bool:
        return self.bounds is not None

    @property
    def n_periods(self) -> int | None:
        return len(self.bounds) - 1 if self.bounds is not None else self.count

    def period_of(self, ts: float) -> int:
        if self.bounds is not None:
            if ts < self.bounds[0] or ts >= self.bounds[-1]:
                return 0
            return bisect.bisect_right(self.bounds, ts)
        if ts < self.origin:
            return 0
        period = int((ts - self.origin) // self.length) + 1
        return 0 if self.count is not None and period > self.count else period

    def start(self, period: int) -> float:
        if self.bounds is not None:
            return self.bounds[period - 1] if period <= len(self.bounds) - 1 else INF
        if self.count is not None and period > self.count:
            return INF
        return self.origin + (period - 1) * self.length

    def end(self, period: int) -> float:
        if self.bounds is not None:
            return self.bounds[period] if period <= len(self.bounds) - 1 else INF
        return self.origin + period * self.length

    def closable_through(self, watermark: float | None) -> int:
        """The last period whose end is <= the watermark (0 when none)."""
        if watermark is None:
            return 0
        if self.bounds is not None:
            return max(0, min(bisect.bisect_right(self.bounds, watermark) - 1, len(self.bounds) - 1))
        through = max(0, int((watermark - self.origin) // self.length))
        return min(through, self.count) if self.count is not None else through

    def end_of_stream(self) -> float | None:
        """The watermark an end-of-stream marker without a time stands for (fixed bounds only)."""
        return self.bounds[-1] if self.bounds is not None else None

    def describe(self) -> dict[str, Any]:
        if self.bounds is not None:
            return {"bounds": self.bounds}
        return {"length": self.length, "origin": self.origin, "count": self.count}


# --- per-partition progress ---------------------------------------------------------------------------------


@dataclass
class Progress:
    offset: int = -1  # last record of this partition fully applied
    max_ts: int | None = None
    marker: float | None = None
    closed: int = 0  # every period <= closed has its file for this partition
    late: int = 0
    refused: int = 0  # invalid records and events outside every period
    applied: int = 0

    @classmethod
    def load(cls, value: Any) -> Progress:
        if not value:
            return cls()
        return cls(offset=value["o"], max_ts=value["m"], marker=value["k"], closed=value["c"], late=value["l"],
                   refused=value["r"], applied=value["a"])

    def dump(self) -> dict[str, Any]:
        return {"o": self.offset, "m": self.max_ts, "k": self.marker, "c": self.closed, "l": self.late,
                "r": self.refused, "a": self.applied}

    def watermark(self, lateness: float) -> float | None:
        candidates = [v for v in (None if self.max_ts is None else self.max_ts - lateness, self.marker)
                      if v is not None]
        return max(candidates) if candidates else None


@dataclass
class Memory:
    """What the core keeps in memory per partition; rebuilt from the table after a start or a rebalance."""

    progress: Progress
    pending: dict[int, list[int]] = field(default_factory=dict)  # open period -> offsets of its e: facts
    open_items: dict[int, dict[int, set[int]]] = field(default_factory=dict)  # user -> period -> items
    catalogue: list[tuple[int, list[int]]] = field(default_factory=list)  # implicit: (item, categories)
    catalogue_index: dict[int, int] = field(default_factory=dict)  # item -> position in the catalogue
    seen: dict[int, set[int]] = field(default_factory=dict)  # user -> items of closed periods (cache)


@dataclass
class Outcome:
    skipped: bool = False
    control: bool = False
    closed: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    dead_letters: int = 0
    reason: str | None = None  # why the record went to the DLQ (metrics count refusals by reason)


class Sink:
    """Where the core's side effects go: the period store and the DLQ (async: faust awaits them)."""

    def __init__(self, store: PeriodStore,
                 dead_letter: Callable[[bytes, bytes], Awaitable[None]] | None = None) -> None:
        self.store = store
        self._dead_letter = dead_letter
        self.dead: list[dict[str, Any]] = []  # kept when no DLQ sender is given (unit tests)

    async def write_period(self, period: int, partition: int, table: pa.Table) -> dict[str, Any]:
        return await asyncio.to_thread(self.store.write_partition, period, partition, table)

    async def dead_letter(self, key: bytes, record: dict[str, Any]) -> None:
        if self._dead_letter is None:
            self.dead.append(record)
        else:
            await self._dead_letter(key, dumps(record))


def _pkey(partition: int) -> str:
    return f"p:{partition}"


# fact = one accepted event of an open period, the last (and usually only) table write of its record
F_USER, F_ITEM, F_TS, F_LABEL, F_CATS, F_NEG, F_NEG_CATS, F_PERIOD = range(8)


class WindowingCore:
    """The windowing logic on a plain mutable mapping (a faust table in the worker, a dict in tests).

    Table keys (all of partition p's writes go to changelog partition p, in order):

    - ``e:<p>:<offset>`` fact of an accepted event of an open period: user, item, ts, label, categories,
      sampled negative and its categories, period. Written last, so it marks the record as applied;
      it is the only write of a typical record.
    - ``p:<p>`` progress: last applied offset, max ts, marker, closed_through, counters. Written when a
      period closes and for records that produce no fact (refused, late, control).
    - ``u:<p>:<user>`` the user's positives up to the oldest open period (the last ``history_len``, as
      [ts, item, offset]) and, implicit mode, every item the user had then; updated when a period closes
      (its facts are merged in, then deleted).
    - ``ci:<p>:<item>`` implicit mode: the item's position in the partition's catalogue and categories.

    After a restart, the last applied offset, max ts and counters are the ``p:`` record's combined with
    the facts written after it; facts of periods already closed (a crash in the middle of a close) are
    merged into ``u:`` again (idempotent) and deleted.
    """

    def __init__(self, scheme: PeriodScheme, history_len: int = 30, implicit: bool = False, seed: int = 0,
                 lateness: float = 0.0) -> None:
        self.scheme = scheme
        self.history_len = history_len
        self.implicit = implicit
        self.seed = seed
        self.lateness = lateness
        self._memory: dict[int, Memory] = {}

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> WindowingCore:
        return cls(PeriodScheme.from_settings(settings), settings.history_len, settings.implicit, settings.seed,
                   settings.allowed_lateness)

    def forget(self, partitions: set[int]) -> None:
        """Partitions moved to another worker: drop their memory (rebuilt from the table on return)."""
        for p in partitions:
            self._memory.pop(p, None)

    def progress(self, state: MutableMapping[str, Any], partition: int) -> Progress:
        memory = self._memory.get(partition)
        return memory.progress if memory is not None else Progress.load(state.get(_pkey(partition)))

    # -- one record --------------------------------------------------------------------------------------
    async def process(self, state: MutableMapping[str, Any], topic: str, partition: int, offset: int,
                      raw: bytes | None, sink: Sink) -> Outcome:
        memory = self._recall(state, partition)
        progress = memory.progress
        if offset <= progress.offset:
            return Outcome(skipped=True)
        outcome = Outcome()
        event: Event | None = None
        refusal: tuple[str, str] | None = None
        try:
            kind, payload = self._classify(raw)
        except EventError as exc:
            kind, payload = "invalid", exc.reason
        if kind == "control":
            ts = payload if payload is not None else self.scheme.end_of_stream()
            outcome.control = True
            if ts is None:
                refusal = ("invalid control record", "end_of_stream without ts needs fixed period bounds")
            else:
                progress.marker = ts if progress.marker is None else max(progress.marker, ts)
        elif kind == "event":
            event = payload
            ts = int(math.floor(event.ts))
            progress.max_ts = ts if progress.max_ts is None else max(progress.max_ts, ts)
        else:
            refusal = (str(payload), "")

        # close what the watermark passed first: this record never belongs to those periods
        target = self.scheme.closable_through(progress.watermark(self.lateness))
        while progress.closed < target:
            period = progress.closed + 1
            part = await sink.write_period(period, partition, self.period_table(state, partition, period))
            progress.closed = period
            state[_pkey(partition)] = progress.dump()  # the file exists: durable before the facts go
            self._merge_closed(state, partition, period)
            outcome.closed.append((period, part))

        if event is not None:
            period = self.scheme.period_of(ts)
            if period == 0:
                refusal = ("outside periods", f"ts {ts} is outside every period ({self._describe_range()})")
            elif period <= progress.closed:
                refusal = ("late", f"period {period} (ends {self.scheme.end(period)}) was closed by this "
                                   f"partition's watermark {progress.watermark(self.lateness)}")
                progress.late += 1
            else:
                self._apply(state, memory, partition, offset, event, ts, period)
                progress.offset = offset
                progress.applied += 1
                return outcome
        if refusal is not None:
            if refusal[0] != "late":
                progress.refused += 1
            await sink.dead_letter(dlq_key(topic, partition, offset),
                                   dlq_record(refusal[0], raw or b"", topic, partition, offset, refusal[1]))
            outcome.dead_letters += 1
            outcome.reason = refusal[0]
        progress.offset = offset
        state[_pkey(partition)] = progress.dump()  # last write: the record is applied
        return outcome

    def _describe_range(self) -> str:
        if self.scheme.fixed:
            return f"[{self.scheme.bounds[0]}, {self.scheme.bounds[-1]})"
        return f"from {self.scheme.origin}"

    @staticmethod
    def _classify(raw: bytes | None) -> tuple[str, Any]:
        if raw is None:
            raise EventError("record has no value")
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            parse_event(raw)  # raises EventError with the precise reason
            raise EventError("invalid JSON") from None  # pragma: no cover - parse_event raised already
        if isinstance(obj, dict) and "control" in obj:
            kind, ts = obj.get("control"), obj.get("ts")
            if obj.get("v", 1) != 1 or kind not in CONTROL_KINDS:
                raise EventError(f"invalid control record: kind {kind!r}, v {obj.get('v')!r}")
            if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)):
                raise EventError(f"invalid control record: ts {ts!r}")
            if kind == "watermark" and ts is None:
                raise EventError("invalid control record: a watermark needs ts")
            return "control", ts
        return "event", parse_event(obj)

    # -- applying an event ---------------------------------------------------------------------------------
    def _apply(self, state: MutableMapping[str, Any], memory: Memory, partition: int, offset: int, event: Event,
               ts: int, period: int) -> None:
        user, item, label = event.user_id, event.item_id, int(event.label)
        categories = sorted(set(event.categories))
        negative = None
        if self.implicit:
            self._catalogue_add(state, memory, partition, item, categories)
            if label == 1:
                negative = self._negative(state, memory, partition, offset, user, item)
        state[f"e:{partition}:{offset}"] = [user, item, ts, label, categories,
                                            None if negative is None else negative[0],
                                            None if negative is None else negative[1], period]
        memory.pending.setdefault(period, []).append(offset)
        if self.implicit:
            memory.open_items.setdefault(user, {}).setdefault(period, set()).add(item)

    def _catalogue_add(self, state: MutableMapping[str, Any], memory: Memory, partition: int, item: int,
                       categories: list[int]) -> None:
        if item in memory.catalogue_index:
            return
        key = f"ci:{partition}:{item}"
        entry = state.get(key)  # written before a crash that lost the record's fact: same position
        index = entry[0] if entry is not None else len(memory.catalogue)
        if entry is None:
            state[key] = [index, categories]
        else:
            categories = entry[1]
        memory.catalogue_index[item] = index
        memory.catalogue.append((item, categories))

    def _seen(self, state: MutableMapping[str, Any], memory: Memory, partition: int, user: int) -> set[int]:
        seen = memory.seen.get(user)
        if seen is None:
            record = state.get(f"u:{partition}:{user}")
            seen = memory.seen[user] = set(record["seen"]) if record else set()
        return seen

    def _negative(self, state: MutableMapping[str, Any], memory: Memory, partition: int, offset: int, user: int,
                  item: int) -> tuple[int, list[int]] | None:
        """Uniform over the partition's catalogue so far, never an item the user had by then."""
        had = self._seen(state, memory, partition, user)
        opened = memory.open_items.get(user, {})
        rng = random.Random(f"{self.seed}:{partition}:{offset}")
        for _ in range(NEGATIVE_DRAWS):
            candidate, categories = memory.catalogue[rng.randrange(len(memory.catalogue))]
            if candidate == item or candidate in had or any(candidate in s for s in opened.values()):
                continue
            return candidate, list(categories)
        return None

    # -- memory after a start --------------------------------------------------------------------------------
    def _recall(self, state: MutableMapping[str, Any], partition: int) -> Memory:
        memory = self._memory.get(partition)
        if memory is not None:
            return memory
        progress = Progress.load(state.get(_pkey(partition)))
        memory = Memory(progress)
        facts, catalogue = {}, []
        fact_prefix, item_prefix = f"e:{partition}:", f"ci:{partition}:"
        for key in list(state.keys()):
            if not isinstance(key, str):
                continue
            if key.startswith(fact_prefix):
                value = state.get(key)
                if value is not None:
                    facts[int(key[len(fact_prefix):])] = value
            elif key.startswith(item_prefix):
                value = state.get(key)
                if value is not None:
                    catalogue.append((value[0], int(key[len(item_prefix):]), value[1]))
        for index, item, categories in sorted(catalogue):
            memory.catalogue_index[item] = index
            memory.catalogue.append((item, categories))
        stale: dict[int, list[int]] = {}
        for offset in sorted(facts):
            fact = facts[offset]
            period = fact[F_PERIOD]
            if period <= progress.closed:
                stale.setdefault(period, []).append(offset)
                continue
            memory.pending.setdefault(period, []).append(offset)
            if self.implicit:
                memory.open_items.setdefault(fact[F_USER], {}).setdefault(period, set()).add(fact[F_ITEM])
            if offset > progress.offset:
                progress.offset = offset
                progress.applied += 1
            progress.max_ts = fact[F_TS] if progress.max_ts is None else max(progress.max_ts, fact[F_TS])
        self._memory[partition] = memory
        for period, offsets in sorted(stale.items()):  # a crash came in the middle of a close
            memory.pending[period] = offsets
            self._merge_closed(state, partition, period)
        return memory

    # -- closing a period ----------------------------------------------------------------------------------
    def _facts(self, state: MutableMapping[str, Any], partition: int, period: int) -> list[tuple[int, list]]:
        memory = self._memory[partition]
        out = []
        for offset in sorted(set(memory.pending.get(period, []))):
            fact = state.get(f"e:{partition}:{offset}")
            if fact is not None:
                out.append((offset, fact))
        return out

    def period_table(self, state: MutableMapping[str, Any], partition: int, period: int) -> pa.Table:
        """The partition's samples of ``period``; histories from the users' positives before the period
        (``u:``) and the period's own positive facts, strictly before each sample's time."""
        facts = self._facts(state, partition, period)
        by_user: dict[int, list[tuple[int, int, int]]] = {}
        for offset, fact in facts:
            if fact[F_LABEL] == 1:
                by_user.setdefault(fact[F_USER], []).append((fact[F_TS], fact[F_ITEM], offset))
        positives: dict[int, tuple[list[tuple], list[int]]] = {}
        cols: dict[str, list] = {"user": [], "item": [], "ts": [], "label": [], "history": [], "categories": []}
        for _, fact in facts:
            user, item, ts, label, categories, negative, negative_categories, _ = fact
            if user not in positives:
                record = state.get(f"u:{partition}:{user}")
                merged = sorted({tuple(x) for x in (record["pos"] if record else ())} | set(by_user.get(user, ())))
                positives[user] = (merged, [x[1] for x in merged])
            merged, items = positives[user]
            end = bisect.bisect_left(merged, (ts,))
            history = items[max(0, end - self.history_len):end]
            rows = [(item, float(label), categories)]
            if negative is not None:
                rows.append((negative, 0.0, negative_categories))
            for row_item, row_label, row_categories in rows:
                cols["user"].append(user)
                cols["item"].append(row_item)
                cols["ts"].append(ts)
                cols["label"].append(row_label)
                cols["history"].append(history)
                cols["categories"].append(row_categories)
        return samples_table(cols["user"], cols["item"], cols["ts"], cols["label"], cols["history"],
                             cols["categories"], period)

    def _merge_closed(self, state: MutableMapping[str, Any], partition: int, period: int) -> None:
        """Fold a closed period's facts into the users' records, then delete them (both idempotent)."""
        memory = self._memory[partition]
        facts = self._facts(state, partition, period)
        users: dict[int, list[list]] = {}
        for offset, fact in facts:
            users.setdefault(fact[F_USER], []).append([offset, fact])
        for user, rows in users.items():
            key = f"u:{partition}:{user}"
            record = state.get(key) or {"pos": [], "seen": []}
            pos = {tuple(x) for x in record["pos"]}
            pos.update((f[F_TS], f[F_ITEM], o) for o, f in rows if f[F_LABEL] == 1)
            new = {"pos": [list(x) for x in sorted(pos)[-self.history_len:]], "seen": record["seen"]}
            if self.implicit:
                new["seen"] = sorted(set(record["seen"]) | {f[F_ITEM] for _, f in rows})
            if new != record:
                state[key] = new
            memory.seen.pop(user, None)
            opened = memory.open_items.get(user)
            if opened is not None:
                opened.pop(period, None)
                if not opened:
                    del memory.open_items[user]
        for offset, _ in facts:
            del state[f"e:{partition}:{offset}"]
        memory.pending.pop(period, None)

    def watermark_of(self, topic: str, partition: int, progress: Progress) -> dict[str, Any]:
        return watermark_record(topic, partition, progress.watermark(self.lateness), progress.max_ts,
                                progress.closed, progress.late, progress.refused, progress.applied)


# --- the faust agent ----------------------------------------------------------------------------------------


def register(app, settings: StreamSettings, names, partitions: int) -> WindowingCore:
    """Add the windowing agent, its table and its watermark timer to a faust app."""
    from faust.types import TP

    from streams.app import fail_stop

    core = WindowingCore.from_settings(settings)
    store = PeriodStore(settings.period_store)
    state = app.Table("state", partitions=partitions)  # json keys and values
    interactions = app.topic(names.interactions, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(names.dlq, key_serializer="raw", value_serializer="raw")
    watermarks = app.topic(names.watermarks, key_serializer="raw", value_serializer="raw")
    published: dict[int, tuple] = {}
    observe = None  # metrics hook (streams/metrics.py), when the worker serves metrics
    if getattr(app, "asmg_metrics", None) is not None:
        from streams.metrics import WindowingMetrics

        app.asmg_metrics.windowing = WindowingMetrics(app.asmg_metrics.registry, core)
        observe = app.asmg_metrics.windowing.observe

    async def dead_letter(key: bytes, value: bytes) -> None:
        future = await dlq.send(key=key, value=value, force=True)
        await future  # delivered before the record counts as applied

    sink = Sink(store, dead_letter)

    def publish_watermark(partition: int, progress: Progress) -> None:
        record = core.watermark_of(names.interactions, partition, progress)
        watermarks.send_soon(key=str(partition).encode(), value=dumps(record))
        published[partition] = (progress.closed, record["watermark"], progress.late, progress.refused)

    @app.agent(interactions, name=f"{settings.role_app_id('windowing')}-windowing", concurrency=1)
    async def windowing(stream):
        async for event in stream.events():
            message = event.message
            try:
                outcome = await core.process(state, message.topic, message.partition, message.offset,
                                             event.value, sink)
            except Exception as exc:  # fail-stop: a restart redoes the record (see the module docstring)
                fail_stop(exc, f"windowing, {message.topic}[{message.partition}]@{message.offset}")
            if observe is not None:
                observe(message.partition, outcome)
            if outcome.closed or outcome.control:
                publish_watermark(message.partition, core.progress(state, message.partition))

    @app.timer(settings.watermark_interval, name=f"{settings.role_app_id('windowing')}-watermarks")
    async def publish_progress():
        """Progress of every owned partition when it changed (also re-announces closes after a restart)."""
        if app.rebalancing or getattr(app, "in_recovery", False):
            return
        for tp in app.consumer.assignment():
            if tp.topic != names.interactions:
                continue
            progress = core.progress(state, tp.partition)
            if progress.offset < 0 and progress.marker is None:
                continue
            key = (progress.closed, progress.watermark(core.lateness), progress.late, progress.refused)
            if published.get(tp.partition) != key:
                publish_watermark(tp.partition, progress)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked: set[TP], **kwargs) -> None:
        lost = {tp.partition for tp in revoked if tp.topic == names.interactions}
        core.forget(lost)
        for p in lost:
            published.pop(p, None)

    app.asmg_windowing = (windowing, publish_progress, on_revoked)  # keep references
    return core
