"""Online (prequential) evaluation and the per-user histories a scorer keeps, without Kafka or HTTP.

Each labelled event is scored by the served model and by its IU shadow before the event joins the user's
history, exactly as training samples see history (the 30 most recent positives strictly before the
event's time). Scores are accumulated per period so AUC and logloss are exact, not approximated.
"""

from __future__ import annotations

import math
import struct
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from asmg.batches import PeriodTensors
from asmg.config import HISTORY_LEN
from asmg.data.negatives import sample_for_rows
from asmg.data.periods import PeriodScheme
from asmg.events import Event
from asmg.metrics import auc, logloss
from asmg.vocab import Vocabulary
from streams.scorer.state import LoadedModel

# --- user histories -----------------------------------------------------------------------------------------


# A user's entry: int64 item ids (done, oldest first, then pending, in arrival order), then a tail: the pending
# second (float64, exact for whole seconds; -inf: none yet) and how many ids are pending.
_TAIL = struct.Struct("=dq")
_ITEM = struct.Struct("=q")
_ITEM_TAIL = struct.Struct("=qdq")  # an id, then the tail: what an in-order positive appends
_EMPTY = _TAIL.pack(-math.inf, 0)  # a user not seen yet


class UserHistories:
    """Each user's most recent positive items, for at most ``max_users`` users (least recently seen go first).

    A user's positives are ``done`` (the newest ``length`` older than the pending second) and ``pending`` (at the
    pending second, in arrival order): events at one second do not see each other in training samples, so
    positives at the newest second wait in ``pending`` until a later event of the user arrives.

    Each user's entry is one ``bytes`` (the ids as int64, then the pending second and count), rebuilt on update:
    bytes hold no references, so the cyclic garbage collector never tracks them: a full collection (which stalls
    the scorer's event loop) walks the one dict, not objects per user (~3 us a user), and not even that once the
    scorer has frozen its start-up objects. Tuples would not do: created tracked, they are untracked only by a
    collection that sees them, and replacing them frees as much as it allocates, which is all the collector's
    trigger counts, so they pile up for one long young collection (bench/bench_scorer_gc.py).
    """

    def __init__(self, max_users: int = 1_000_000, length: int = HISTORY_LEN) -> None:
        if length < 0:
            raise ValueError(f"history length must be >= 0, got {length}")
        self.max_users = max_users
        self.length = length
        self._users: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._users)

    def recent(self, user: int) -> list[int]:
        """Everything known about the user now: what a request without a history is scored with."""
        with self._lock:
            entry = self._users.get(user)
        if entry is None or not self.length:
            return []
        end = len(entry) - _TAIL.size
        pending = _TAIL.unpack_from(entry, end)[1]
        ids = memoryview(entry)[:end].cast("q").tolist()
        if pending > 1:
            ids[len(ids) - pending:] = sorted(ids[len(ids) - pending:])
        return ids[-self.length:]

    def observe(self, events: Sequence[Event], seconds: Sequence[int] | None = None,
                update: Sequence[bool] | None = None) -> list[list[int]]:
        """History before each event (in order), then the event's own update: one lock for a whole batch.

        ``seconds``: event times floored to whole seconds (the windowing role's clock; default from the
        events). ``update``: False for events that must not enter histories (outside every period).
        """
        seconds = [math.floor(e.ts) for e in events] if seconds is None else seconds
        update = [True] * len(events) if update is None else update
        out: list[list[int]] = []
        append, tail, unpack_tail, pack_tail = out.append, _TAIL.size, _TAIL.unpack_from, _TAIL.pack
        pack_item, pack_item_tail, keep_bytes = _ITEM.pack, _ITEM_TAIL.pack, 8 * self.length
        with self._lock:
            users = self._users
            for event, ts, keep in zip(events, seconds, update, strict=True):
                user = event.user_id
                entry = users.get(user)
                fresh = entry is None
                if fresh:
                    entry = _EMPTY
                else:
                    users.move_to_end(user)
                end = len(entry) - tail
                pending_ts, pending = unpack_tail(entry, end)
                cut = end - 8 * pending  # ids: done | pending
                if pending and ts > pending_ts:  # the pending second is now strictly before: commit it
                    if pending > 1:  # one second's positives in (ts, item) order, as samples are built
                        ids = entry[:cut] + b"".join(map(pack_item, sorted(memoryview(entry)[cut:end].cast("q"))))
                        ids = ids[max(0, len(ids) - keep_bytes):]
                    else:
                        ids = entry[end - keep_bytes if end > keep_bytes else 0:end]
                    cut, pending = len(ids), 0
                    append(memoryview(ids).cast("q").tolist())
                else:
                    ids = None
                    append(memoryview(entry)[:cut].cast("q").tolist())
                if keep and event.label == 1:
                    if ids is None:
                        ids = entry[:end]
                    if ts >= pending_ts:
                        users[user] = ids + pack_item_tail(event.item_id, ts, pending + 1)
                    else:  # out of order: the best we can do is to make it older than the pending second
                        done = ids[:cut] + pack_item(event.item_id)
                        users[user] = done[max(0, len(done) - keep_bytes):] + ids[cut:] + pack_tail(pending_ts, pending)
                elif ids is not None:
                    users[user] = ids + pack_tail(pending_ts, 0)
                elif fresh:
                    users[user] = entry
                if fresh:
                    while len(users) > self.max_users:
                        users.popitem(last=False)
                        self.evicted += 1
        return out


# --- prequential metrics ------------------------------------------------------------------------------------


@dataclass
class _PeriodScores:
    labels: list[np.ndarray] = field(default_factory=list)
    served: list[np.ndarray] = field(default_factory=list)
    shadow: list[np.ndarray] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)
    n: int = 0
    cached: dict[str, Any] | None = None


def _finite(value: float) -> float | None:
    """JSON has no NaN: a metric that is undefined (one class only) is null."""
    return None if value is None or not math.isfinite(value) else value


def quality_row(labels: np.ndarray, served: np.ndarray, shadow: np.ndarray) -> dict[str, Any]:
    """AUC/logloss of the served model and its IU shadow, and the served model's lift over the shadow.

    ``lift`` is the AUC difference; ``rel_impr`` is (AUC - 0.5) / (shadow AUC - 0.5) - 1, the usual
    relative improvement of CTR papers.
    """
    a, s = auc(labels, served), auc(labels, shadow)
    rel = (a - 0.5) / (s - 0.5) - 1 if math.isfinite(a) and math.isfinite(s) and s != 0.5 else math.nan
    return {"n": int(len(labels)), "positives": int((labels > 0.5).sum()), "auc": _finite(a),
            "logloss": _finite(logloss(labels, served)) if len(labels) else None, "shadow_auc": _finite(s),
            "shadow_logloss": _finite(logloss(labels, shadow)) if len(labels) else None,
            "lift": _finite(a - s), "rel_impr": _finite(rel)}


class Prequential:
    """Scores and labels per period, kept exactly; the oldest periods go beyond ``max_periods``."""

    def __init__(self, max_periods: int = 200) -> None:
        self.max_periods = max_periods
        self._periods: dict[int, _PeriodScores] = {}
        self._lock = threading.Lock()

    def add(self, period: np.ndarray, labels: np.ndarray, served: np.ndarray, shadow: np.ndarray,
            version: int) -> None:
        with self._lock:
            for p in np.unique(period):
                rows = period == p
                scores = self._periods.get(int(p))
                if scores is None:
                    scores = self._periods[int(p)] = _PeriodScores()
                    for old in sorted(self._periods)[:-self.max_periods]:
                        del self._periods[old]
                scores.labels.append(labels[rows])
                scores.served.append(served[rows])
                scores.shadow.append(shadow[rows])
                scores.versions.add(version)
                scores.n += int(rows.sum())
                scores.cached = None

    def report(self) -> dict[int, dict[str, Any]]:
        """Per period: n, auc, logloss, shadow_auc, shadow_logloss, lift, and the model versions that scored it."""
        with self._lock:
            todo = {p: (list(s.labels), list(s.served), list(s.shadow), sorted(s.versions), s)
                    for p, s in self._periods.items() if s.cached is None}
            done = {p: s.cached for p, s in self._periods.items() if s.cached is not None}
        for p, (labels, served, shadow, versions, scores) in todo.items():
            row = {**quality_row(np.concatenate(labels), np.concatenate(served), np.concatenate(shadow)),
                   "model_versions": versions}
            with self._lock:
                if scores.n == row["n"]:
                    scores.cached = row
            done[p] = row
        return dict(sorted(done.items()))


# --- scoring a micro-batch of events -------------------------------------------------------------------------


def padded_rows(vocab: Vocabulary, histories: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """Ragged item-id histories -> [n, width] rows, left-padded with 0 (padding is never looked up as an id)."""
    lengths = np.fromiter((min(len(h), width) for h in histories), dtype=np.int64, count=len(histories))
    flat = np.fromiter((i for h in histories for i in h[len(h) - min(len(h), width):]), dtype=np.int64,
                       count=int(lengths.sum()))
    rows = np.zeros((len(histories), width), dtype=np.int64)
    keep = np.arange(width)[None, :] >= (width - lengths)[:, None]
    rows[keep] = vocab.lookup(flat)
    return torch.from_numpy(rows)


class Evaluator:
    """Turns micro-batches of events into history updates and prequential scores: two forwards per batch.

    Without periods (none configured) it only keeps histories. Events outside every period neither count
    nor enter histories (the windowing role refuses them); events of periods the served model was trained
    on build histories but are not scored.
    """

    def __init__(self, periods: PeriodScheme | None, histories: UserHistories, prequential: Prequential,
                 negatives: int = 0, seed: int = 0) -> None:
        self.periods = periods
        self.histories = histories
        self.prequential = prequential
        self.negatives = negatives
        self.rng = np.random.default_rng(seed)
        self.counts: Counter[str] = Counter()

    def process(self, events: Sequence[Event], model: LoadedModel | None) -> int:
        """Score what can be scored, then advance the histories; returns how many rows were scored."""
        if not events:
            return 0
        seconds = np.floor(np.asarray([e.ts for e in events], dtype=np.float64)).astype(np.int64)
        if self.periods is None:
            period = np.zeros(len(events), dtype=np.int64)
            outside = np.zeros(len(events), dtype=bool)
        else:
            period = self.periods.assign(seconds)
            outside = period == 0
        histories = self.histories.observe(events, seconds.tolist(), (~outside).tolist())
        self.counts["events"] += len(events)
        if self.periods is None or model is None:
            self.counts["skipped_no_periods" if self.periods is None else "skipped_no_model"] += len(events)
            return 0
        trained_on = ~outside & (period <= model.period)
        keep = ~outside & ~trained_on
        self.counts["skipped_outside_periods"] += int(outside.sum())
        self.counts["skipped_trained_on"] += int(trained_on.sum())
        if not keep.any():
            return 0
        rows = np.flatnonzero(keep)
        users = np.asarray([events[i].user_id for i in rows], dtype=np.int64)
        items = np.asarray([events[i].item_id for i in rows], dtype=np.int64)
        labels = np.asarray([events[i].label for i in rows], dtype=np.float64)
        hist = [histories[i] for i in rows]
        period = period[rows]
        if self.negatives > 0:
            users, items, labels, hist, period = self._with_negatives(model, users, items, labels, hist, period)
        served, shadow = score_rows(model, users, items, hist)
        self.prequential.add(period, labels, served, shadow, model.version)
        self.counts["scored"] += len(labels)
        return len(labels)

    def _with_negatives(self, model: LoadedModel, users: np.ndarray, items: np.ndarray, labels: np.ndarray,
                        hist: list[list[int]], period: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]], np.ndarray]:
        """Append sampled negatives (label 0, the positive's user, history and period)."""
        pos = np.flatnonzero(labels > 0.5)
        owner, neg_items = sample_for_rows(model.scorer.artifact.items, items[pos], [hist[i] for i in pos],
                                            self.negatives, self.rng)
        owner = pos[owner]
        self.counts["negatives"] += len(owner)
        return (np.r_[users, users[owner]], np.r_[items, neg_items], np.r_[labels, np.zeros(len(owner))],
                hist + [hist[i] for i in owner.tolist()], np.r_[period, period[owner]])


@torch.no_grad()
def score_rows(model: LoadedModel, users: np.ndarray, items: np.ndarray, histories: Sequence[Sequence[int]],
               width: int = HISTORY_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Served and shadow probabilities for (user, item, history) rows in one batch each."""
    scorer = model.scorer
    data = PeriodTensors(0, torch.from_numpy(scorer.users.lookup(users)), torch.from_numpy(scorer.items.lookup(items)),
                         padded_rows(scorer.items, histories, width), torch.zeros(len(users)))
    return scorer.score(data), scorer.score(data, shadow=True)
