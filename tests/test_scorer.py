"""The scorer role: record parsing, atomic model swaps, histories, prequential metrics, and the HTTP contract.

Unit tests run without Kafka; the ``kafka`` tests publish real records to a real broker (tests/conftest.py)
and talk to a scorer running in this process on a free port.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asmg.artifacts import load_model, save_model
from asmg.data.periods import PeriodBounds, PeriodScheme
from asmg.data.periods import PeriodScheme as FixedPeriods
from asmg.data.samples import history_matrix
from asmg.events import Event, EventError, stable_id
from asmg.metrics import auc, logloss
from asmg.model import init_params, serving_copy
from asmg.records import ModelRecord, RecordError, parse_model_record
from asmg.serving import Scorer
from asmg.vocab import Vocabularies
from streams.scorer import evaluation as scorer_eval
from streams.scorer import service as scorer_service
from streams.scorer.command import scorer_command
from streams.scorer.evaluation import (
    Evaluator,
    Prequential,
    UserHistories,
    padded_rows,
    quality_row,
    score_rows,
)
from streams.scorer.service import ScorerOptions, ScorerService, _event, parse_score_request, running
from streams.scorer.state import ModelHolder
from streams.wire.kafka_config import KafkaSettings
from streams.wire.settings import periods_from_options
from streams.wire.topics import TopicNames, ensure_topics

USERS = np.arange(1, 11)
ITEMS = np.arange(100, 121)
MODEL = "asmg"


# --- helpers ------------------------------------------------------------------------------------------------


def tiny_vocabs() -> Vocabularies:
    vocabs = Vocabularies()
    vocabs.users.add(USERS)
    vocabs.items.add(ITEMS)
    vocabs.categories.add(np.array([7, 8, 9]))
    rows = vocabs.items.lookup(ITEMS)
    cats = vocabs.categories.lookup(np.array([7, 8, 9]))[np.arange(len(ITEMS)) % 3]
    vocabs.item_categories.assign(rows, cats, np.ones(len(ITEMS), dtype=np.int64))
    vocabs.item_categories.grow(len(vocabs.items))
    return vocabs


def make_model(root: Path, version: int, period: int = 1, seed: int | None = None) -> ModelRecord:
    """Save a tiny model bundle (random weights, served and shadow different) and return its record."""
    vocabs = tiny_vocabs()
    seed = version if seed is None else seed
    serving = {k: v * 20 if k.endswith("_emb") else v for k, v in init_params(vocabs.sizes(), seed).items()}
    shadow = init_params(vocabs.sizes(), seed + 1000)
    uri = str(root / f"v{version}")
    metrics = {"auc": 0.7, "logloss": 0.6, "samples": 100}
    sha = save_model(uri, version=version, period=period, method="asmg-gru", serving=serving_copy(serving),
                     shadow=serving_copy(shadow), vocabs=vocabs, config={"seed": seed}, metrics=metrics)
    return ModelRecord(MODEL, version, period, "asmg-gru", uri, sha, metrics, {"auc": 0.65}, time.time())


def pretrained_model(root: Path, period: int) -> ModelRecord:
    """What the trainer publishes when pretraining completes: the IU shadow is the served model, no metrics."""
    vocabs = tiny_vocabs()
    params = {k: v * 20 if k.endswith("_emb") else v for k, v in init_params(vocabs.sizes(), 5).items()}
    uri = str(root / "pretrained")
    sha = save_model(uri, version=1, period=period, method="asmg-gru", serving=serving_copy(params),
                     shadow=params, vocabs=vocabs, config={"seed": 5}, metrics=None)
    return ModelRecord(MODEL, 1, period, "asmg-gru", uri, sha, {}, {}, time.time(), pretrained=True)


def call(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode()


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def publish(settings: KafkaSettings, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> None:
    from confluent_kafka import Producer

    producer = Producer(settings.confluent_config(acks="all", enable_idempotence=True))
    for key, value in items:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def publish_records(settings: KafkaSettings, names: TopicNames, *records: ModelRecord) -> None:
    publish(settings, names.models, [(r.model.encode(), r.to_json()) for r in records])


def served_version(url: str) -> int | None:
    status, body = call(f"{url}/model")
    return body["version"] if status == 200 else None


def service_for(settings: KafkaSettings, names: TopicNames, store: Path, periods: Any = None,
                **options: Any) -> ScorerService:
    """A scorer serving artifacts from ``store`` (where make_model writes them)."""
    ensure_topics(settings, names, partitions=2)
    spec = periods or FixedPeriods((0, 1000, 2000, 3000))
    options = {"wait_models": 20, "artifact_store": str(store), **options}
    return ScorerService(settings, names, ScorerOptions(periods=spec, **options))


# --- records ------------------------------------------------------------------------------------------------


def test_record_round_trip_and_key_check(tmp_path: Path) -> None:
    record = ModelRecord(MODEL, 3, 12, "asmg-gru", str(tmp_path), "a" * 64, {"auc": 0.7}, {}, 1.5)
    assert parse_model_record(record.to_json(), b"asmg") == record
    with pytest.raises(RecordError, match="does not match"):
        parse_model_record(record.to_json(), b"other")


@pytest.mark.parametrize(("value", "reason"), [
    (None, "tombstone"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"v": 2}', "record version"),
    (b'{"model": "", "version": 1}', "model must be"),
    (b'{"model": "m", "version": true, "period": 1, "method": "iu", "uri": "/x", "sha256": "' + b"a" * 64 + b'"}',
     "version must be an integer"),
    (b'{"model": "m", "version": 0, "period": 1, "method": "iu", "uri": "/x", "sha256": "' + b"a" * 64 + b'"}',
     "version must be >= 1"),
    (b'{"model": "m", "version": 1, "period": 1, "method": "iu", "uri": "/x", "sha256": "abc"}', "64 lowercase"),
    (b'{"model": "m", "version": 1, "period": -1, "method": "iu", "uri": "/x", "sha256": "' + b"a" * 64 + b'"}',
     "period must be >= 0"),
    (b'{"model": "m", "version": 1, "period": 1, "method": "iu", "uri": "/x", "sha256": "' + b"a" * 64
     + b'", "metrics": [1]}', "metrics must be an object"),
    (b'{"model": "m", "version": 1, "period": 1, "method": "iu", "uri": "/x", "sha256": "' + b"a" * 64
     + b'", "pretrained": "yes"}', "pretrained must be true or false"),
])
def test_bad_records_are_refused_with_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        parse_model_record(value)


# --- model holder -------------------------------------------------------------------------------------------


def test_holder_swaps_forward_only_and_keeps_serving_on_bad_checksums(tmp_path: Path) -> None:
    v1, v2, v3 = (make_model(tmp_path, v) for v in (1, 2, 3))
    holder = ModelHolder()
    assert holder.offer([v1]).version == 1
    bad = replace(v3, sha256="0" * 64)
    assert holder.offer([v2, bad]).version == 2  # newest first; the bad one is counted and skipped
    assert holder.counts["load_failures"] == 1 and "sha256" in holder.last_error
    assert holder.offer([v1]) is None and holder.current.version == 2
    assert holder.counts["records_stale"] == 1
    mismatched = replace(v3, period=9)
    assert holder.offer([mismatched]) is None and holder.current.version == 2
    assert holder.offer([v3]).version == 3
    assert ModelHolder(model_name="other").offer([v3]) is None


def test_pretrained_model_is_served_and_evaluated_on_the_next_period(tmp_path: Path) -> None:
    """The trainer's first record is the pretrained model (period 3 = pretrain_periods, metrics null): the
    scorer serves it before any later model and evaluates it on period 4, where the IU shadow is the same
    model (known ids only here, so even the fallback row plays no part: the two score alike)."""
    record = pretrained_model(tmp_path, period=3)
    wire = json.loads(record.to_json()) | {"metrics": None, "shadow_metrics": None}  # as the trainer writes it
    assert parse_model_record(json.dumps(wire), MODEL.encode()) == record
    holder = ModelHolder()
    served = holder.offer([record])
    assert served.describe()["pretrained"] is True and served.describe()["metrics"] == {}
    rng = np.random.default_rng(2)
    users, items, labels = rng.choice(USERS, 400), rng.choice(ITEMS, 400), rng.integers(0, 2, 400)
    ts = np.r_[2000 + np.arange(200), 3000 + np.arange(200)]  # period 3 (trained on), then period 4
    events = [Event(int(u), int(i), int(t), int(y)) for u, i, t, y in zip(users, items, ts, labels, strict=True)]
    evaluator = Evaluator(PeriodScheme(length=1000, origin=0), UserHistories(), Prequential())
    assert evaluator.process(events, holder.current) == 200
    row = evaluator.prequential.report()[4]
    assert row["n"] == 200 and row["model_versions"] == [1] and row["auc"] is not None
    assert (row["auc"], row["logloss"], row["lift"]) == (row["shadow_auc"], row["shadow_logloss"], 0.0)
    assert holder.offer([make_model(tmp_path, 2, period=4)]).version == 2  # the first tested model follows


# --- periods ------------------------------------------------------------------------------------------------


def test_periods_follow_the_windowing_role(tmp_path: Path) -> None:
    path = tmp_path / "bounds.json"
    path.write_text(json.dumps({"bounds": [0, 10, 20.5]}))
    ts = np.array([-5, -1, 0, 9, 10, 19, 20, 21, 35, 3600, 7300, 10_000])
    cases = [(periods_from_options(str(path)), PeriodScheme(bounds=[0, 10, 20.5])),
             (periods_from_options("[0, 10, 20.5]"), PeriodScheme(bounds=[0, 10, 20.5])),
             (periods_from_options(length="1h", origin=-1), PeriodScheme(length=3600, origin=-1)),
             (periods_from_options(length="3600s", origin=0, count=2), PeriodScheme(length=3600, origin=0, count=2))]
    for ours, theirs in cases:
        assert ours.assign(ts).tolist() == [theirs.period_of(float(t)) for t in ts], ours
    assert periods_from_options() is None
    for kwargs in ({"bounds": "[1, 2]", "length": "1d"}, {"length": "1d"}, {"length": "soon", "origin": 0},
                   {"bounds": str(tmp_path / "missing.json")}, {"bounds": "[3, 2]"}):
        with pytest.raises(ValueError):
            periods_from_options(**kwargs)


def test_control_records_are_not_events() -> None:
    assert _event(b'{"v": 1, "control": "watermark", "ts": 5}') is None
    assert _event(b'{"user_id": 1, "item_id": 2, "ts": 3}') == Event(1, 2, 3)
    for bad in (None, b"{nope", b'{"user_id": 1}'):
        with pytest.raises(EventError):
            _event(bad)


def test_command_refuses_bad_period_options() -> None:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command()(scorer_command)
    result = CliRunner().invoke(app, ["--period-length", "1d"], env={"ASMG_PERIOD_BOUNDS": ""})
    assert result.exit_code == 2 and "ASMG_PERIOD_ORIGIN" in result.output


# --- histories ----------------------------------------------------------------------------------------------


def test_histories_match_the_training_samples() -> None:
    """Positives only, the 30 most recent, strictly before the event's time (same-second events unseen)."""
    rng = np.random.default_rng(3)
    n = 3000
    user = rng.integers(1, 15, n)
    item = rng.integers(100, 400, n)
    ts = rng.integers(0, 600, n)  # many same-second ties
    label = (rng.random(n) < 0.6).astype(np.float32)
    order = np.lexsort((item, user, ts))  # canonical order, as the offline builder and the windowing role
    user, item, ts, label = user[order], item[order], ts[order], label[order]
    expected, lengths = history_matrix(user, ts, label, item, 30)
    histories = UserHistories(length=30)
    events = [Event(int(u), int(i), int(t), int(lab)) for u, i, t, lab in zip(user, item, ts, label, strict=True)]
    got = histories.observe(events[:1700]) + histories.observe(events[1700:])
    for row in range(n):
        assert got[row] == expected[row, 30 - lengths[row]:].tolist(), row
    last = int(user[-1])
    positives = [int(i) for u, i, lab in zip(user, item, label, strict=True) if u == last and lab]
    assert histories.recent(last) == positives[-30:]


def test_histories_are_bounded() -> None:
    histories = UserHistories(max_users=2, length=3)
    histories.observe([Event(u, 100 + u, 1) for u in (1, 2, 3)])
    assert len(histories) == 2 and histories.evicted == 1 and histories.recent(1) == []
    assert histories.recent(3) == [103]


class _PlainHistories:
    """What UserHistories keeps, written plainly (a deque and a list per user): the reference it must equal."""

    def __init__(self, max_users: int, length: int) -> None:
        self.max_users, self.length, self.evicted = max_users, length, 0
        self.users: OrderedDict[int, tuple[deque[int], list[int], list[float]]] = OrderedDict()

    def observe(self, events: list[Event], update: list[bool]) -> list[list[int]]:
        out = []
        for event, keep in zip(events, update, strict=True):
            if event.user_id in self.users:
                self.users.move_to_end(event.user_id)
            else:
                self.users[event.user_id] = (deque(maxlen=self.length), [], [-float("inf")])
                while len(self.users) > self.max_users:
                    self.users.popitem(last=False)
                    self.evicted += 1
            done, pending, pending_ts = self.users[event.user_id]
            ts = int(event.ts // 1)
            if ts > pending_ts[0] and pending:  # the pending second is now in the past
                done.extend(sorted(pending))
                pending.clear()
            out.append(list(done))
            if keep and event.label == 1:
                if ts >= pending_ts[0]:
                    pending_ts[0] = ts
                    pending.append(event.item_id)
                else:  # late: older than the pending second
                    done.append(event.item_id)
        return out

    def recent(self, user: int) -> list[int]:
        if user not in self.users or not self.length:
            return []
        done, pending, _ = self.users[user]
        return [*done, *sorted(pending)][-self.length:]


_events = st.builds(Event, st.integers(1, 4), st.integers(1, 9) | st.integers(0, 2**63 - 1), st.integers(0, 4),
                    st.sampled_from([1, 1, 0]))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.integers(0, 4),
       st.lists(st.lists(st.tuples(_events, st.sampled_from([True, True, False])), max_size=12), max_size=5))
@example(3, 3, [[(Event(1, 9, 1, 1), True), (Event(1, 3, 1, 1), True), (Event(1, 5, 2, 1), True)]])
def test_histories_equal_a_plain_reference(max_users: int, length: int, batches) -> None:
    """Ties at one second (committed in item order), late positives, negatives, updates switched off, eviction,
    ids up to 2^63 - 1."""
    histories, plain = UserHistories(max_users=max_users, length=length), _PlainHistories(max_users, length)
    for batch in batches:
        events, update = [e for e, _ in batch], [keep for _, keep in batch]
        assert histories.observe(events, update=update) == plain.observe(events, update)
        assert len(histories) == len(plain.users) and histories.evicted == plain.evicted
        assert all(histories.recent(u) == plain.recent(u) for u in range(1, 6))


def test_histories_are_not_tracked_by_the_garbage_collector() -> None:
    """Stored histories hold no object the cyclic collector tracks, so a full collection (which stalls the
    scorer's event loop) does not grow with users: up to a million of them, at ~1 us an object a pass."""
    users = 5000
    histories = UserHistories(length=30)
    gc.collect()
    before = len(gc.get_objects())
    for second in range(10):  # positives (some at one second), negatives and late positives: every update
        histories.observe([Event(u, 100 + (7 * u + second) % 97, second, int(second % 4 != 3)) for u in range(users)]
                          + [Event(u, 200 + u % 7, second) for u in range(0, users, 2)]
                          + [Event(u, 300 + second, second - 5) for u in range(0, users, 3)])
    assert len(histories) == users and len(histories.recent(0)) == 8 + 10 + 10
    assert len(gc.get_objects()) - before < users / 50  # no collection since: none tracked even for a while


# --- evaluation ---------------------------------------------------------------------------------------------


def test_quality_row_and_lift() -> None:
    labels = np.array([1, 0, 1, 0, 1], dtype=np.float64)
    served = np.array([0.9, 0.2, 0.8, 0.3, 0.4])
    shadow = np.array([0.6, 0.5, 0.4, 0.7, 0.5])
    row = quality_row(labels, served, shadow)
    assert row["auc"] == pytest.approx(auc(labels, served)) and row["shadow_auc"] == pytest.approx(auc(labels, shadow))
    assert row["lift"] == pytest.approx(row["auc"] - row["shadow_auc"])
    assert row["logloss"] == pytest.approx(logloss(labels, served))
    assert quality_row(np.ones(3), served[:3], shadow[:3])["auc"] is None  # one class: undefined, JSON null


def test_padded_rows_never_look_up_padding() -> None:
    vocabs = tiny_vocabs()
    vocabs.items.add(np.array([0]))  # raw item id 0 is a real item here
    rows = padded_rows(vocabs.items, [[], [100, 0]], 4).numpy()
    assert rows[0].tolist() == [0, 0, 0, 0]
    assert rows[1].tolist() == [0, 0, *vocabs.items.lookup(np.array([100, 0])).tolist()]


def test_sampled_negatives_for_implicit_streams(tmp_path: Path, monkeypatch) -> None:
    holder = ModelHolder()
    model = holder.offer([make_model(tmp_path, 1, period=5)])
    evaluator = Evaluator(PeriodScheme(length=1000, origin=0), UserHistories(), Prequential(), negatives=2, seed=1)
    events = [Event(int(u), int(100 + (u + k) % 5), 5000 + k) for k in range(20) for u in USERS]
    scored: list[tuple[np.ndarray, np.ndarray, list]] = []

    def recording(model, users, items, histories, *args):  # what the evaluator scores, then the real scoring
        scored.append((users.copy(), items.copy(), [list(h) for h in histories]))
        return score_rows(model, users, items, histories, *args)

    monkeypatch.setattr(scorer_eval, "score_rows", recording)
    assert evaluator.process(events, model) == 3 * len(events)
    row = evaluator.prequential.report()[6]
    assert row["n"] == 3 * len(events) and row["positives"] == len(events)
    assert evaluator.counts["negatives"] == 2 * len(events)
    [(users, items, histories)] = scored
    n = len(events)
    assert users[:n].tolist() == [e.user_id for e in events] and items[:n].tolist() == [e.item_id for e in events]
    # each positive's two negatives: the positive's user and history, an item of the model's catalogue that is
    # neither the positive's item nor one in the user's history (the users here had 5 items of 21, so a
    # sampler that ignored them would hit one of them within these 200 draws)
    catalogue = set(model.scorer.artifact.items.tolist())
    assert len(items) == 3 * n
    for row_index in range(n, 3 * n):
        owner = (row_index - n) // 2  # negatives follow the positives, two per positive in order
        assert users[row_index] == users[owner] and histories[row_index] == histories[owner]
        assert items[row_index] in catalogue
        assert items[row_index] not in {int(items[owner]), *histories[owner]}, (row_index, owner)
    assert any(histories[i] for i in range(n)), "no history to avoid"


def test_parse_score_request() -> None:
    request = parse_score_request(b'{"user_id": "alice", "items": [1, "sku-2"], "history": [3]}')
    assert request.user_id == stable_id("alice") and request.items == [1, stable_id("sku-2")]
    assert request.history == [3]
    assert parse_score_request(b'{"user_id": 1, "items": [2], "history": null}').history is None


@pytest.mark.parametrize("projected", [True, False])
@pytest.mark.parametrize("grown", [False, True])
def test_one_user_path_matches_the_batched_forward(tmp_path: Path, grown: bool, projected: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Scorer.score_user (one user's vector and history mean computed once, NumPy) against the batched forward
    (a row per candidate): known, unknown and string ids, empty and unknown histories, and (``grown``) a
    vocabulary with more items and users than the weights have rows (clamped to the fallback row); with the
    items' first-layer projections made at load (``projected``) and without (a catalogue too large for them)."""
    from asmg import serving

    if not projected:
        monkeypatch.setattr(serving, "PROJECT_MAX_ROWS", 0)
    vocabs = tiny_vocabs()
    params = init_params(vocabs.sizes(), 3)
    params = {k: v * 20 if k.endswith("_emb") else v for k, v in params.items()}
    if grown:  # ids the vocabulary has but the tables do not (rows past the end fall back to row 0)
        vocabs.items.add(np.arange(500, 505))
        vocabs.users.add(np.arange(50, 53))
        vocabs.item_categories.grow(len(vocabs.items))
    sha = save_model(str(tmp_path / "m"), version=1, period=1, method="asmg-gru", serving=serving_copy(params),
                     shadow=params, vocabs=vocabs, config={}, metrics=None)
    scorer = Scorer(load_model(str(tmp_path / "m"), sha))
    assert scorer.dense is not None and (scorer.projected is not None) == projected
    rng = np.random.default_rng(0)
    candidates = [*ITEMS.tolist(), 7, 999, stable_id("sku-x"), 500, 504]
    cases = [(1, candidates, []), (99_999, candidates, [100, 101]), (51, [100], [500, 999, 103] * 20),
             (2, [104, 104], [999])]
    cases += [(int(rng.choice([*USERS, 0, 51])), rng.choice(candidates, int(rng.integers(1, 30))).tolist(),
               rng.choice(candidates, int(rng.integers(0, 40))).tolist()) for _ in range(30)]
    for user, items, history in cases:
        fast, batched = scorer.score_user(user, items, history), scorer.score_user_batched(user, items, history)
        assert fast.dtype == np.float64 and fast.shape == (len(items),)
        np.testing.assert_allclose(fast, batched, rtol=0, atol=1e-6, err_msg=str((user, items, history)))
    # the path sees the user and the history: scores move with them
    assert not np.allclose(scorer.score_user(1, candidates), scorer.score_user(2, candidates))
    assert not np.allclose(scorer.score_user(1, candidates), scorer.score_user(1, candidates, [100, 101]))


def test_sorted_ids_look_up_as_the_vocabulary() -> None:
    from asmg.serving import SortedIds
    from asmg.vocab import Vocabulary

    rng = np.random.default_rng(1)
    ids = rng.choice(10**12, 500, replace=False) - 10**6  # unsorted, negatives too
    vocabulary = Vocabulary(ids)
    raw = np.concatenate([rng.choice(ids, 200), rng.integers(-(10**12), 10**12, 200), [ids.max() + 1, ids.min() - 1]])
    assert np.array_equal(SortedIds(vocabulary).lookup(raw), vocabulary.lookup(raw))
    assert SortedIds(Vocabulary()).lookup(np.array([1, 2])).tolist() == [0, 0]


def test_parse_score_request_reads_with_orjson_and_explains_with_safejson() -> None:
    """The fast reader accepts what the defensive one accepts; what it refuses gets the defensive reason."""
    body = b'{"user_id": 7, "items": [1, "sku-2", 3.0], "history": [4], "extra": {"x": [1, 2]}}'
    request = parse_score_request(body)
    assert (request.user_id, request.items, request.history) == (7, [1, stable_id("sku-2"), 3], [4])
    for raw, reason in [(b"\xff{}", "not UTF-8"), (b'{"user_id": "\\ud800", "items": [1]}', "surrogate"),
                        (b"[" * 2000 + b"]" * 2000, "nested deeper"), (b"[1]", "JSON object"),
                        (b'{"user_id": 1, "items": [NaN]}', "items[]"),
                        (b'{"user_id": ' + b"9" * 5000 + b', "items": [1]}', "digits"),
                        (b'{"user_id": 1e30, "items": [1]}', "user_id")]:
        with pytest.raises(scorer_service.RequestError, match=None) as info:
            parse_score_request(raw)
        assert reason in str(info.value), (raw[:40], str(info.value))


# --- against the broker -------------------------------------------------------------------------------------


def test_serves_newest_swaps_atomically_and_refuses_bad_checksums(kafka_settings: KafkaSettings,
                                                                    topic_names: TopicNames,
                                                                    tmp_path: Path) -> None:
    v1, v2, v3, v4 = (make_model(tmp_path, v) for v in (1, 2, 3, 4))
    service = service_for(kafka_settings, topic_names, tmp_path)
    publish_records(kafka_settings, topic_names, v1, v2)
    publish(kafka_settings, topic_names.models, [(b"asmg", b"{garbage"), (b"asmg", None)])
    with running(service) as url:
        wait_for(lambda: served_version(url) == 2, what="v2 served")
        wait_for(lambda: call(f"{url}/healthz")[1]["models_caught_up"], what="the models topic read to its end")
        status, health = call(f"{url}/healthz")
        assert status == 200 and health["records_invalid"] == 2 and health["models_caught_up"]

        results: list[list[tuple[int, int | None]]] = [[] for _ in range(4)]
        stop = threading.Event()

        def hammer(worker: int) -> None:
            while not stop.is_set():
                status, body = call(f"{url}/score", {"user_id": 3, "items": [100, 101, 102]})
                results[worker].append((status, body.get("model_version") if isinstance(body, dict) else None))

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(hammer, w) for w in range(4)]
            wait_for(lambda: all(any(v == 2 for _, v in r) for r in results), what="every client served by v2")
            publish_records(kafka_settings, topic_names, v3)
            wait_for(lambda: served_version(url) == 3, what="v3 served")
            wait_for(lambda: all(any(v == 3 for _, v in r) for r in results), what="every client served by v3")
            stop.set()
            for future in futures:
                future.result()
        flat = [r for worker in results for r in worker]
        assert flat and all(status == 200 for status, _ in flat)
        assert {version for _, version in flat} <= {2, 3} and (200, 3) in flat
        for worker in results:  # each client only ever sees versions move forward
            versions = [v for _, v in worker]
            assert versions == sorted(versions)

        publish_records(kafka_settings, topic_names, replace(v4, sha256="f" * 64))
        wait_for(lambda: call(f"{url}/healthz")[1]["load_failures"] == 1, what="the bad record refused")
        assert served_version(url) == 3
        assert "sha256" in call(f"{url}/healthz")[1]["last_error"]

        publish_records(kafka_settings, topic_names, v2)  # an old version again: never go backwards
        wait_for(lambda: call(f"{url}/healthz")[1]["records_stale"] >= 1, what="the stale record skipped")
        assert served_version(url) == 3

        publish_records(kafka_settings, topic_names, v4)  # the good v4 after the bad one
        wait_for(lambda: served_version(url) == 4, what="v4 served")
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        assert "asmg_scorer_model_version 4.0" in metrics
        assert 'asmg_scorer_model_records_total{outcome="load_failures"} 1.0' in metrics


def test_http_contract(kafka_settings: KafkaSettings, topic_names: TopicNames, tmp_path: Path) -> None:
    v1 = make_model(tmp_path, 1)
    service = service_for(kafka_settings, topic_names, tmp_path, wait_models=0.5)
    with running(service) as url:
        assert call(f"{url}/score", {"user_id": 1, "items": [100]}) == (503, {"error": "no model yet"})
        assert call(f"{url}/model")[0] == 503
        assert call(f"{url}/healthz")[0] == 503 and call(f"{url}/healthz")[1]["status"] == "no model yet"
        publish_records(kafka_settings, topic_names, v1)
        wait_for(lambda: served_version(url) == 1, what="v1 served")

        status, model = call(f"{url}/model")
        assert status == 200
        assert (model["version"], model["period"], model["method"]) == (1, 1, "asmg-gru")
        assert model["metrics"] == v1.metrics

        direct = Scorer(load_model(v1.uri, v1.sha256))
        status, body = call(f"{url}/score", {"user_id": 99_999, "items": [100, 55_555, "sku-x"]})
        assert status == 200 and (body["model_version"], body["period"]) == (1, 1)
        expected = direct.score_user(99_999, [100, 55_555, stable_id("sku-x")], [])
        assert body["scores"] == pytest.approx(expected.tolist(), abs=1e-6)
        assert body["scores"][1] == pytest.approx(body["scores"][2])  # both unknown: the fallback item row

        status, body = call(f"{url}/score", {"user_id": 2, "items": [101, 102], "history": [103, 104, 999]})
        assert status == 200
        assert body["scores"] == pytest.approx(direct.score_user(2, [101, 102], [103, 104, 999]).tolist(), abs=1e-6)

        for raw, reason in [
            (b"not json", "not JSON"),
            (b"[1]", "JSON object"),
            (b'{"items": [1]}', "user_id"),
            (b'{"user_id": 1}', "items"),
            (b'{"user_id": 1, "items": []}', "must not be empty"),
            (b'{"user_id": 1, "items": 5}', "list of ids"),
            (b'{"user_id": true, "items": [1]}', "boolean"),
            (b'{"user_id": -1, "items": [1]}', "between 0"),
            (b'{"user_id": 1, "items": [1.5]}', "items[]"),
            (b'{"user_id": 1, "items": [1], "history": "x"}', "history"),
            (json.dumps({"user_id": 1, "items": list(range(10_001))}).encode(), "at most"),
        ]:
            status, body = call(f"{url}/score", raw=raw)
            assert status == 400, raw
            assert reason in body["error"], (raw, body)


def test_prequential_metrics_equal_a_direct_computation(kafka_settings: KafkaSettings, topic_names: TopicNames,
                                                        tmp_path: Path) -> None:
    v1 = make_model(tmp_path, 1, period=1)
    bounds = tmp_path / "bounds.json"
    bounds.write_text(json.dumps([0, 1000, 2000, 3000]))
    service = service_for(kafka_settings, topic_names, tmp_path, periods=periods_from_options(str(bounds)),
                          batch_size=64)
    rng = np.random.default_rng(7)
    n = 900
    user = rng.integers(1, 13, n)  # 11 and 12 are unknown to the model
    item = rng.integers(98, 124, n)  # some unknown items too
    ts = rng.integers(600, 3300, n)  # period 1 (trained on), 2, 3, and after the last period
    label = (rng.random(n) < 0.5).astype(np.int64)
    order = np.lexsort((item, user, ts))
    user, item, ts, label = user[order], item[order], ts[order], label[order]
    values = [json.dumps({"user_id": int(u), "item_id": int(i), "ts": int(t), "label": int(lab)}).encode()
              for u, i, t, lab in zip(user, item, ts, label, strict=True)]
    publish_records(kafka_settings, topic_names, v1)
    with running(service) as url:
        wait_for(lambda: served_version(url) == 1, what="v1 served")
        publish(kafka_settings, topic_names.interactions,
                [(str(u).encode(), v) for u, v in zip(user, values, strict=True)] + [(b"1", b"{bad event")])
        wait_for(lambda: call(f"{url}/quality")[1]["events"].get("events") == n, what="all events evaluated")
        status, quality = call(f"{url}/quality")
    assert status == 200 and quality["invalid_events"] == 1

    hist, lengths = history_matrix(user, ts, label.astype(np.float32), item, 30)
    direct = Scorer(load_model(v1.uri, v1.sha256))
    period = PeriodBounds(np.array([0, 1000, 2000, 3000])).assign(ts)
    assert quality["events"]["skipped_trained_on"] == int((period == 1).sum())
    assert quality["events"]["skipped_outside_periods"] == int((period == 0).sum())
    assert set(quality["periods"]) == {"2", "3"}
    for p in (2, 3):
        rows = np.flatnonzero(period == p)
        data = direct.encode(user[rows], item[rows], [hist[r, 30 - lengths[r]:] for r in rows])
        served, shadow = direct.score(data), direct.score(data, shadow=True)
        one_by_one = [direct.score_user(int(user[r]), [int(item[r])], hist[r, 30 - lengths[r]:])[0] for r in rows]
        assert served == pytest.approx(one_by_one, abs=1e-6)  # batching only moves float32 rounding
        got = quality["periods"][str(p)]
        assert got["n"] == len(rows) and got["model_versions"] == [1]
        assert got["auc"] == pytest.approx(auc(label[rows], served), abs=1e-9)
        assert got["logloss"] == pytest.approx(logloss(label[rows], served), abs=1e-6)
        assert got["shadow_auc"] == pytest.approx(auc(label[rows], shadow), abs=1e-9)
        assert got["shadow_logloss"] == pytest.approx(logloss(label[rows], shadow), abs=1e-6)
        assert got["lift"] == pytest.approx(got["auc"] - got["shadow_auc"])


def test_command_serves_and_stops_on_sigterm(kafka_settings: KafkaSettings, topic_names: TopicNames,
                                              tmp_path: Path) -> None:
    """`asmg worker scorer` as a process, configured by environment variables only, as in docker-compose."""
    from streams.local.broker import free_port

    ensure_topics(kafka_settings, topic_names, partitions=2)
    v1 = make_model(tmp_path, 1)
    publish_records(kafka_settings, topic_names, v1)
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
           "ASMG_TOPIC_PREFIX": topic_names.prefix, "ASMG_SCORER_PORT": str(port), "ASMG_SCORER_HOST": "127.0.0.1",
           "ASMG_PERIOD_BOUNDS": "[0, 1000, 2000]", "ASMG_MODEL_NAME": MODEL,
           "ASMG_ARTIFACT_STORE": str(tmp_path), "ASMG_LOG_LEVEL": "warning"}
    code = "from asmg_cli.main import main; main()"
    process = subprocess.Popen([sys.executable, "-c", code, "worker", "scorer"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def serving() -> bool:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                return served_version(url) == 1
            except OSError:
                return False

        wait_for(serving, what="the scorer process serving v1")
        assert call(f"{url}/quality")[1]["periods_spec"].startswith("2 fixed periods")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("n_items", [3, scorer_service.INLINE_ITEMS + 500])
def test_score_answers_on_the_loop_and_from_the_pool(tmp_path: Path, n_items: int) -> None:
    """Small requests are scored on the event loop, large ones in the pool: both answer the batched forward's
    scores as JSON (orjson), in request order, without a broker (the feeds are not started)."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    record = make_model(tmp_path, 1)
    service = ScorerService(KafkaSettings(bootstrap_servers="127.0.0.1:1"), TopicNames("unused."),
                            ScorerOptions(periods=None, artifact_store=str(tmp_path)))
    assert service.holder.offer([record]) is not None
    items = [int(i) for i in np.resize(np.concatenate([ITEMS, [5, 999]]), n_items)]

    async def scenario() -> tuple[int, str, Any]:
        async with TestClient(TestServer(service.make_app())) as client:
            response = await client.post("/score", json={"user_id": 3, "items": items, "history": [100, 7]})
            return response.status, response.content_type, json.loads(await response.read())

    try:
        status, content_type, body = asyncio.run(scenario())
    finally:
        service.pool.shutdown(wait=False)
    assert (status, content_type) == (200, "application/json")
    assert (body["model_version"], body["period"], len(body["scores"])) == (1, 1, n_items)
    expected = service.holder.current.scorer.score_user_batched(3, items, [100, 7])
    assert body["scores"] == pytest.approx(expected.tolist(), abs=1e-6)
