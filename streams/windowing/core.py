"""The windowing role's logic: interaction records in, one Parquet file per (period, partition) out.

Records are handled a batch at a time (one Kafka transaction each, see streams/windowing/worker.py), but
the result is defined record by record, in partition order, and does not depend on how the stream was cut
into batches:

1. Validate (:func:`asmg.event_batch.parse_events_fast` for the common shape, else
   :func:`asmg.events.parse_event`); a bad record goes to the DLQ with the reason.
2. Advance the partition's watermark: max event time seen minus the allowed lateness, or a control
   record's time (``control`` records: see streams/wire/records.py;
   :func:`streams.windowing.coordinator.send_end_of_stream`).
   Every period whose end the watermark passed is closed for this partition: its samples are written to
   the period store (Parquet, one file per partition, idempotent name and content) and a watermark record
   says so (``closed_through``); the coordinator decides for all partitions.
3. Assign the event to a period by event time (fixed bounds or tumbling windows). Events of a period this
   partition already closed go to the DLQ as ``late`` (counted, never into a closed period); events
   outside every period go to the DLQ as ``outside periods``.
4. Keep the event as a fact of its open period. Histories are computed when the period closes (the user's
   up to ``history_len`` most recent positives strictly before the event's time, ordered by (ts, item)
   like the offline builder; same-second events do not see each other), so an event that arrives out of
   order within the allowed lateness still ends up in later events' histories exactly as offline.
   Implicit mode: each positive gets one sampled negative, uniform over the items this partition has
   accepted so far, never an item the user had by then.

Differences from the offline builder (asmg/data/samples.py), all on purpose:

- negatives come from the partition's catalogue so far, drawn with a counter-based hash of (seed,
  partition, offset, draw) rather than one RNG over the whole log: same distribution family, other draws,
  and the same draws whatever the batching; "had by then" means events of the user accepted earlier;
- event time is floored to whole seconds (the offline logs are in whole seconds);
- late and outside events do not enter any user's history (offline has no such events);
- a user who had (nearly) every item of the catalogue so far gets no negative after 64 draws (offline
  raises); this includes the first events of a partition, whose catalogue is still tiny.

State. :class:`WindowingCore` keeps each owned partition's state in memory and returns, per batch, the
changes to persist (``Batch.writes``): the worker writes them to the compacted state topic in the same
Kafka transaction as the batch's DLQ and watermark records and its consumer offsets, so after a crash or a
rebalance :meth:`WindowingCore.restore` rebuilds exactly the state of the last committed batch and the
records after it come again: the same files, byte for byte (tests/test_windowing.py). Keys:

- ``p:<p>`` progress: last applied offset, max ts, marker, closed_through, counters (every batch);
- ``f:<p>:<offset>`` the accepted events of a batch (Arrow IPC, :class:`streams.windowing.facts.Facts`); deleted
  once all their periods are closed;
- ``u:<p>:<user>`` the user's last ``history_len`` positives of closed periods and, implicit mode, every
  item the user had in them; written when a period closes;
- ``c:<p>:<offset>`` implicit mode: items first accepted in a batch, in order, with their categories.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from asmg.config import HISTORY_LEN
from asmg.data.negatives import counter_negative, draw_uniform
from asmg.data.periods import PeriodScheme, watermark
from asmg.event_batch import parse_events_fast
from asmg.events import EventError
from asmg.ragged import gather_rows, select_rows
from streams.windowing.facts import Facts
from streams.wire.period_store import PartitionWriter, ragged_samples_table
from streams.wire.records import classify_record, dlq_key, dlq_record, dumps, watermark_record
from streams.wire.settings import StreamSettings, period_scheme

log = logging.getLogger(__name__)

CHUNK_BYTES = 512 * 1024  # a fact record stays well below Kafka's default 1 MB message limit
INF = math.inf
EVENT, CONTROL, REFUSED = 0, 1, 2


# --- periods ------------------------------------------------------------------------------------------------


# --- per-partition state ------------------------------------------------------------------------------------


@dataclass
class Progress:
    offset: int = -1  # last record of this partition applied
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
        mark = float(watermark(-INF if self.max_ts is None else self.max_ts, -INF if self.marker is None
                               else self.marker, lateness))
        return None if mark == -INF else mark


@dataclass
class Memory:
    """One partition's state in memory (the state topic holds the same, see the module docstring)."""

    progress: Progress
    chunks: list[tuple[str, Facts]] = field(default_factory=list)  # state key -> facts of open periods
    # user -> (k, 3) int64 rows (ts, item, offset), k <= history_len: one small array per user, not k tuples of
    # Python ints (~24 bytes a positive instead of ~170: this map holds every user the partition has seen)
    positives: dict[int, np.ndarray] = field(default_factory=dict)
    seen: dict[int, set[int]] = field(default_factory=dict)  # implicit: user -> items of closed periods
    had: dict[int, set[int]] = field(default_factory=dict)  # implicit: seen + items of open periods
    catalogue: list[int] = field(default_factory=list)  # implicit: items in first-accepted order
    catalogue_categories: list[tuple[int, ...]] = field(default_factory=list)
    catalogue_index: dict[int, int] = field(default_factory=dict)

    def open_samples(self) -> int:
        return sum(len(facts) for _, facts in list(self.chunks))


@dataclass
class Batch:
    """What one batch of one partition did, and what to persist for it."""

    writes: list[tuple[str, bytes | None]] = field(default_factory=list)  # state key -> value (None: delete)
    dead: list[tuple[bytes, bytes]] = field(default_factory=list)  # DLQ (key, value)
    closed: list[tuple[int, object]] = field(default_factory=list)  # (period, what the store's write returned)
    reasons: list[str] = field(default_factory=list)  # of the refused records, in order
    accepted: int = 0
    late: int = 0
    control: int = 0
    records: int = 0  # records applied (not counting the skipped)
    skipped: int = 0  # records at or below the last applied offset (redelivered)
    last_offset: int | None = None  # the partition's last applied offset after the batch (None: no records)


def _fact_chunks(facts: Facts, limit: int = CHUNK_BYTES) -> list[Facts]:
    """Split so that each part's bytes stay under ``limit`` (ids are 8 bytes; ~80 bytes a row besides)."""
    size = 80 + 8 * (facts.cat_lengths + facts.neg_cat_lengths)
    if len(facts) == 0 or size.sum() <= limit:
        return [facts] if len(facts) else []
    part = np.floor_divide(np.cumsum(size) - size, limit)
    return [facts.select(part == k) for k in np.unique(part)]


def user_record(positives: np.ndarray | None, seen: set[int] | None) -> bytes:
    """A ``u:`` state record: the bytes :func:`streams.wire.records.dumps` gives for ``{"pos": rows, "seen": sorted
    items}``, written by orjson straight from the array (stdlib json was ~1.2 CPU-s per 1M events here)."""
    rows = b"[]" if positives is None else orjson.dumps(np.ascontiguousarray(positives, dtype=np.int64),
                                                         option=orjson.OPT_SERIALIZE_NUMPY)
    if seen is None:
        return b'{"pos":' + rows + b"}"
    return b'{"pos":' + rows + b',"seen":' + orjson.dumps(sorted(seen)) + b"}"


def user_order(facts: Facts) -> np.ndarray:
    """Facts by user, then in canonical order (ts, item, offset): the order histories and users' lists use."""
    return np.lexsort((facts.offset, facts.item, facts.ts, facts.user))


def _rows(chunk: Facts, keep: np.ndarray) -> Facts | None:
    """The chunk's rows where ``keep``: the chunk itself when all are kept (read only), None when none are."""
    if keep.all():
        return chunk
    return chunk.select(keep) if keep.any() else None


def period_positives(facts: Facts, width: int, order: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Per event, the period's own positives of its user strictly before its time (at most ``width``, ordered
    by (ts, item) as offline; same-second events do not see each other), as a range of a flat item array.

    ``order``: :func:`user_order` of the facts (computed when not given). Returns (users: the distinct users,
    ascending; user_of: each event's index in them; begin, own: each event's positives are
    ``own_items[begin:begin + own]``, oldest first; own_items). The ragged form of
    :func:`asmg.data.samples.history_matrix` restricted to one period, without its [n, width] matrices.
    """
    n = len(facts)
    order = user_order(facts) if order is None else order
    u, t, positive = facts.user[order], facts.ts[order], facts.label[order] > 0
    new_user, new_group = np.ones(n, dtype=bool), np.ones(n, dtype=bool)  # (n may be 0)
    new_user[1:] = u[1:] != u[:-1]
    new_group[1:] = new_user[1:] | (t[1:] != t[:-1])
    before = np.cumsum(positive) - positive  # positives ahead of each sorted row
    index = np.arange(n)
    end = before[np.maximum.accumulate(np.where(new_group, index, 0))]  # ties do not see each other
    begin = np.maximum(before[np.maximum.accumulate(np.where(new_user, index, 0))], end - width)
    user_of = np.empty(n, dtype=np.int64)
    user_of[order] = np.cumsum(new_user) - 1
    out_begin, out_own = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    out_begin[order], out_own[order] = begin, end - begin
    return u[new_user], user_of, out_begin, out_own, facts.item[order][positive]


# --- the core -------------------------------------------------------------------------------------------------


class WindowingCore:
    """The windowing logic for the partitions a worker owns, with no Kafka in it (tests drive it directly)."""

    def __init__(self, scheme: PeriodScheme, history_len: int = HISTORY_LEN, implicit: bool = False, seed: int = 0,
                 lateness: float = 0.0) -> None:
        self.scheme = scheme
        self.history_len = history_len
        self.implicit = implicit
        self.seed = seed
        self.lateness = lateness
        self._memory: dict[int, Memory] = {}

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> WindowingCore:
        return cls(period_scheme(settings), settings.history_len, settings.implicit, settings.seed,
                   settings.allowed_lateness)

    @property
    def partitions(self) -> list[int]:
        return sorted(self._memory)

    def forget(self, partitions: set[int] | None = None) -> None:
        """Partitions moved to another worker (None: all): drop their memory."""
        for p in list(self._memory) if partitions is None else partitions:
            self._memory.pop(p, None)

    def owns(self, partition: int) -> bool:
        return partition in self._memory

    def memory(self, partition: int) -> Memory:
        """The partition's state (a partition never seen starts empty, like one restored from nothing)."""
        memory = self._memory.get(partition)
        if memory is None:
            memory = self._memory[partition] = Memory(Progress())
        return memory

    def progress(self, partition: int) -> Progress:
        return self.memory(partition).progress

    def partition_gauges(self) -> list[tuple[int, float | None, int, int]]:
        """Per owned partition (for metrics, from any thread): its watermark, the last period it closed and the
        events accepted into its open periods."""
        for _ in range(5):
            try:  # the dict may change size while the batch thread works: try again
                owned = sorted(self._memory.items())
                break
            except RuntimeError:
                continue
        else:
            return []
        return [(partition, memory.progress.watermark(self.lateness), memory.progress.closed, memory.open_samples())
                for partition, memory in owned]

    # -- restoring from the state topic ------------------------------------------------------------------------
    def restore(self, partition: int, state: Mapping[str, bytes]) -> Memory:
        """Rebuild a partition's memory from its committed state records (key -> latest value)."""
        raw = state.get(f"p:{partition}")
        memory = Memory(Progress.load(json.loads(raw) if raw else None))
        closed = memory.progress.closed
        facts, catalogue = [], []
        for key, value in state.items():
            kind, _, rest = key.partition(":")
            p, _, name = rest.partition(":")
            if value is None or p != str(partition):
                continue
            if kind == "f":
                facts.append((int(name), key, Facts.from_bytes(value)))
            elif kind == "u":
                record = json.loads(value)
                memory.positives[int(name)] = np.asarray(record["pos"], dtype=np.int64).reshape(-1, 3)
                if self.implicit:
                    memory.seen[int(name)] = set(record.get("seen", ()))
            elif kind == "c":
                catalogue.append((int(name), json.loads(value)))
        for _, record in sorted(catalogue, key=lambda x: x[0]):
            for item, categories in zip(record["items"], record["categories"], strict=True):
                memory.catalogue_index.setdefault(item, len(memory.catalogue))
                memory.catalogue.append(item)
                memory.catalogue_categories.append(tuple(categories))
        for _, key, chunk in sorted(facts, key=lambda x: x[0]):
            chunk = chunk.select(chunk.period > closed)
            if len(chunk):
                memory.chunks.append((key, chunk))
        if self.implicit:
            memory.had = {user: set(items) for user, items in memory.seen.items()}
            for _, chunk in memory.chunks:
                for user, item in zip(chunk.user.tolist(), chunk.item.tolist(), strict=True):
                    memory.had.setdefault(user, set()).add(item)
        self._memory[partition] = memory
        return memory

    # -- one batch ------------------------------------------------------------------------------------------
    def process(self, partition: int, offsets: Sequence[int], values: Sequence[bytes | None],
                store: PartitionWriter, topic: str) -> Batch:
        """Apply a partition's records (ascending offsets); write the files of the periods they close."""
        memory = self.memory(partition)
        progress = memory.progress
        batch = Batch()
        offsets = np.asarray(offsets, dtype=np.int64)
        fresh = offsets > progress.offset
        batch.skipped = int((~fresh).sum())
        if not fresh.any():
            batch.last_offset = progress.offset  # all applied before: the offset to commit stays ahead of them
            return batch
        if not fresh.all():
            offsets = offsets[fresh]
            values = [v for v, keep in zip(values, fresh.tolist(), strict=True) if keep]
        batch.records = len(offsets)
        rows = self._parse(values)
        kind, ts = rows["kind"], rows["ts"]
        is_event, is_control = kind == EVENT, kind == CONTROL
        event_ts = np.where(is_event, np.floor(np.where(is_event, ts, 0.0)), -INF)
        max_ts = np.maximum.accumulate(np.r_[-INF if progress.max_ts is None else progress.max_ts, event_ts])[1:]
        marks = np.where(is_control & np.isfinite(rows["control_ts"]), rows["control_ts"], -INF)
        marker = np.maximum.accumulate(np.r_[-INF if progress.marker is None else progress.marker, marks])[1:]
        marks = watermark(max_ts, marker, self.lateness)
        closed = np.maximum(progress.closed, self.scheme.closable_through_many(marks))
        period = np.where(is_event, self.scheme.period_of_many(event_ts), 0)
        accepted = is_event & (period > closed)
        late = is_event & (period > 0) & (period <= closed)
        outside = is_event & (period == 0)

        # the refused, in order
        refusals = rows["refusals"]
        for i in np.flatnonzero(late | outside).tolist():
            if late[i]:
                refusals[i] = ("late", f"period {int(period[i])} (ends {self.scheme.end(int(period[i]))}) was closed "
                                       f"by this partition's watermark {float(marks[i])}")
            else:
                refusals[i] = ("outside periods", f"ts {int(event_ts[i])} is outside every period "
                                                  f"({self._describe_range()})")
        for i in sorted(refusals):
            reason, detail = refusals[i]
            raw = values[i] or b""
            batch.dead.append((dlq_key(topic, partition, int(offsets[i])),
                               dumps(dlq_record(reason, raw, topic, partition, int(offsets[i]), detail))))
            batch.reasons.append(reason)

        # the accepted: facts of open periods (implicit: with their negatives)
        index = np.flatnonzero(accepted)
        cat_lengths, cat_values = select_rows(rows["cat_lengths"], rows["cat_values"], index)
        facts = Facts(offset=offsets[index], user=rows["user"][index], item=rows["item"][index],
                      ts=event_ts[index].astype(np.int64), label=rows["label"][index],
                      period=period[index].astype(np.int32), neg=np.zeros(len(index), dtype=np.int64),
                      has_neg=np.zeros(len(index), dtype=bool), cat_lengths=cat_lengths, cat_values=cat_values,
                      neg_cat_lengths=np.zeros(len(index), dtype=np.int64), neg_cat_values=np.zeros(0, np.int64))
        if self.implicit and len(facts):
            facts = self._sample_negatives(memory, partition, facts, batch)
        for part in _fact_chunks(facts):
            key = f"f:{partition}:{int(part.offset[0])}"
            memory.chunks.append((key, part))
            batch.writes.append((key, part.to_bytes()))

        # periods the watermark passed, in order
        through = int(closed[-1])
        for p in range(progress.closed + 1, through + 1):
            batch.closed.append((p, self._close(memory, partition, p, store, batch)))
        progress.offset = int(offsets[-1])
        progress.max_ts = None if max_ts[-1] == -INF else int(max_ts[-1])
        progress.marker = None if marker[-1] == -INF else float(marker[-1])
        progress.closed = max(progress.closed, through)
        progress.late += int(late.sum())
        progress.refused += len(refusals) - int(late.sum())
        progress.applied += len(index)
        batch.writes.append((f"p:{partition}", dumps(progress.dump())))
        batch.accepted, batch.late, batch.control = len(index), int(late.sum()), int(is_control.sum())
        batch.last_offset = progress.offset
        return batch

    def _describe_range(self) -> str:
        if self.scheme.fixed:
            return f"[{self.scheme.bounds[0]}, {self.scheme.bounds[-1]})"
        return f"from {self.scheme.origin}"

    # -- parsing -------------------------------------------------------------------------------------------
    def _parse(self, values: Sequence[bytes | None]) -> dict[str, Any]:
        """Columns of the records: kind, ids, ts, label, categories; control times; refusals by row."""
        fast = parse_events_fast(values)
        n = len(values)
        kind = np.full(n, EVENT, dtype=np.int8)
        control_ts = np.full(n, np.nan)
        refusals: dict[int, tuple[str, str]] = {}
        slow_categories: dict[int, tuple[int, ...]] = {}
        user, item, ts, label = fast.user, fast.item, fast.ts, fast.label
        for i in np.flatnonzero(~fast.ok).tolist():
            try:
                what, payload = classify_record(values[i])
            except EventError as exc:
                kind[i] = REFUSED
                refusals[i] = (exc.reason, "")
                continue
            except Exception as exc:  # noqa: BLE001 - a poison record must never stop the role: DLQ it
                log.warning("unreadable record at row %d of a batch: %s: %s", i, type(exc).__name__, exc)
                kind[i] = REFUSED
                refusals[i] = ("unreadable record", f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            if what == "control":
                kind[i] = CONTROL
                at = payload if payload is not None else self.scheme.end_of_stream()
                if at is None:
                    refusals[i] = ("invalid control record", "end_of_stream without ts needs fixed period bounds")
                else:
                    control_ts[i] = at
                continue
            event = payload
            user[i], item[i], ts[i], label[i] = event.user_id, event.item_id, event.ts, int(event.label)
            slow_categories[i] = tuple(sorted(set(event.categories)))
        cat_lengths, cat_values = fast.cat_lengths, fast.cat_values
        if slow_categories:
            cat_lengths = cat_lengths.copy()
            for i, categories in slow_categories.items():
                cat_lengths[i] = len(categories)
            starts = np.cumsum(cat_lengths) - cat_lengths
            merged = np.zeros(int(cat_lengths.sum()), dtype=np.int64)
            fast_rows = np.flatnonzero(fast.ok)
            merged[gather_rows(starts[fast_rows], cat_lengths[fast_rows])] = cat_values
            for i, categories in slow_categories.items():
                merged[starts[i]:starts[i] + len(categories)] = categories
            cat_values = merged
        return {"kind": kind, "user": user, "item": item, "ts": ts, "label": label, "control_ts": control_ts,
                "refusals": refusals, "cat_lengths": cat_lengths, "cat_values": cat_values}

    # -- implicit negatives -------------------------------------------------------------------------------
    def _sample_negatives(self, memory: Memory, partition: int, facts: Facts, batch: Batch) -> Facts:
        """Per accepted event in offset order: grow the catalogue, draw the positive's negative, remember
        the item as had by the user."""
        first = draw_uniform(self.seed, partition, facts.offset)
        new_items: list[int] = []
        new_categories: list[list[int]] = []
        starts = (np.cumsum(facts.cat_lengths) - facts.cat_lengths).tolist()
        lengths = facts.cat_lengths.tolist()
        cat_values = facts.cat_values
        neg, has_neg, neg_categories = facts.neg, facts.has_neg, []
        index = memory.catalogue_index
        for j, (offset, user, item, label) in enumerate(zip(facts.offset.tolist(), facts.user.tolist(),
                                                            facts.item.tolist(), facts.label.tolist(), strict=True)):
            if item not in index:
                categories = tuple(cat_values[starts[j]:starts[j] + lengths[j]].tolist())
                index[item] = len(memory.catalogue)
                memory.catalogue.append(item)
                memory.catalogue_categories.append(categories)
                new_items.append(item)
                new_categories.append(list(categories))
            had = memory.had.setdefault(user, set())
            if label == 1:
                candidate = counter_negative(memory.catalogue, item, had, float(first[j]), self.seed, partition,
                                             offset)
                if candidate is not None:
                    neg[j], has_neg[j] = memory.catalogue[candidate], True
                    neg_categories.append(memory.catalogue_categories[candidate])
            had.add(item)
        if new_items:
            batch.writes.append((f"c:{partition}:{int(facts.offset[0])}",
                                 dumps({"items": new_items, "categories": new_categories})))
        facts.neg_cat_lengths = np.zeros(len(facts), dtype=np.int64)
        facts.neg_cat_lengths[np.flatnonzero(has_neg)] = [len(c) for c in neg_categories]
        facts.neg_cat_values = np.fromiter((x for c in neg_categories for x in c), dtype=np.int64)
        return facts

    # -- closing a period ------------------------------------------------------------------------------------
    def _close(self, memory: Memory, partition: int, period: int, store: PartitionWriter, batch: Batch) -> object:
        facts = Facts.concat([part for _, chunk in memory.chunks
                              if (part := _rows(chunk, chunk.period == period)) is not None])
        order = user_order(facts)
        part = store.write_partition(period, partition, self.period_table(memory, facts, period, order))
        self._fold(memory, partition, facts, batch, order)
        kept = []
        for key, chunk in memory.chunks:
            rest = _rows(chunk, chunk.period > period)
            if rest is not None:
                kept.append((key, rest))
            else:
                batch.writes.append((key, None))
        memory.chunks = kept
        return part

    def period_table(self, memory: Memory, facts: Facts, period: int, order: np.ndarray | None = None) -> pa.Table:
        """The partition's samples of ``period``: histories from the users' positives of closed periods and
        the period's own positives strictly before each sample's time; implicit negatives share them. Rows
        in no particular order: the store writes them sorted."""
        width = self.history_len
        # every positive of a closed period is older than every event of this one, and a user's list is in
        # canonical order: a history is the tail of the user's list, then the period's own positives before
        # the event. Only the period's rows are sorted and windowed (the users' lists can be 10x as long).
        users, user_of, begin, own, own_items = period_positives(facts, width, order)
        known = [memory.positives.get(user) for user in users.tolist()]  # [n, 3] (ts, item, offset) arrays
        counts = np.fromiter((0 if rows is None else len(rows) for rows in known), dtype=np.int64, count=len(known))
        stored = [rows for rows in known if rows is not None and len(rows)]
        known_items = np.concatenate(stored)[:, 1] if stored else np.zeros(0, dtype=np.int64)
        older = np.minimum(width - own, counts[user_of])  # from the user's list: its last ``older`` entries
        lengths = older + own
        starts = np.cumsum(lengths) - lengths
        hist_values = np.empty(int(lengths.sum()), dtype=np.int64)
        hist_values[gather_rows(starts, older)] = known_items[gather_rows(np.cumsum(counts)[user_of] - older, older)]
        hist_values[gather_rows(starts + older, own)] = own_items[gather_rows(begin, own)]
        neg = np.flatnonzero(facts.has_neg)
        neg_hist_lengths, neg_hist_values = select_rows(lengths, hist_values, neg)
        neg_cat_lengths, neg_cat_values = select_rows(facts.neg_cat_lengths, facts.neg_cat_values, neg)
        return ragged_samples_table(
            user=np.concatenate([facts.user, facts.user[neg]]), item=np.concatenate([facts.item, facts.neg[neg]]),
            ts=np.concatenate([facts.ts, facts.ts[neg]]),
            label=np.concatenate([facts.label.astype(np.float32), np.zeros(len(neg), dtype=np.float32)]),
            history=(np.concatenate([lengths, neg_hist_lengths]), np.concatenate([hist_values, neg_hist_values])),
            categories=(np.concatenate([facts.cat_lengths, neg_cat_lengths]),
                        np.concatenate([facts.cat_values, neg_cat_values])),
            period=period, canonical=False)

    def _fold(self, memory: Memory, partition: int, facts: Facts, batch: Batch, order: np.ndarray) -> None:
        """A closed period's facts into the users' records (positives; implicit: items had); ``order``:
        :func:`user_order` of the facts."""
        if not len(facts):
            return
        users = facts.user[order]
        bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
        positive = facts.label[order] == 1
        # each user's new positives are a slice of one [P, 3] array (ts, item, offset): no Python work per fact
        triples = np.stack([facts.ts[order], facts.item[order], facts.offset[order]], axis=1)[positive].astype(
            np.int64, copy=False)
        before = np.r_[0, np.cumsum(positive)]  # positives ahead of each sorted row
        lows, highs = before[bounds[:-1]].tolist(), before[bounds[1:]].tolist()
        items = facts.item[order].tolist() if self.implicit else []
        user_ids, bounds = users[bounds[:-1]].tolist(), bounds.tolist()
        keep = self.history_len
        for user, start, end, low, high in zip(user_ids, bounds[:-1], bounds[1:], lows, highs, strict=True):
            positives = memory.positives.get(user)
            if high > low:  # every new positive is later than every old one (an older period's)
                fresh = triples[max(low, high - keep):high]
                positives = fresh.copy() if positives is None or high - low >= keep else \
                    np.concatenate([positives, fresh])[-keep:]
                memory.positives[user] = positives
            seen = None
            if self.implicit:
                seen = memory.seen.setdefault(user, set())
                seen.update(items[start:end])
            batch.writes.append((f"u:{partition}:{user}", user_record(positives, seen)))

    def watermark_of(self, topic: str, partition: int) -> dict[str, Any]:
        progress = self.progress(partition)
        return watermark_record(topic, partition, progress.watermark(self.lateness), progress.max_ts,
                                progress.closed, progress.late, progress.refused, progress.applied)
