"""The interaction event schema: validation reasons, id mapping, and logs to events."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from asmg.data.log import make_log, stable_ids
from asmg.events import Event, EventError, encode_log, events_from_log, parse_event, stable_id

VALID = {"v": 1, "user_id": 7, "item_id": 9, "ts": 1_700_000_000}


def test_minimal_event_defaults_to_an_implicit_positive() -> None:
    event = parse_event(json.dumps(VALID).encode())
    assert event == Event(user_id=7, item_id=9, ts=1_700_000_000, label=1, categories=(), event_id=None)
    assert event.to_dict() == {**VALID, "label": 1, "categories": []}


def test_full_event_round_trips() -> None:
    raw = {**VALID, "ts": 1_700_000_000.25, "label": 0, "categories": [3, "shoes"], "event_id": "e-1"}
    event = parse_event(raw)
    assert event.ts == 1_700_000_000.25 and event.label == 0 and event.event_id == "e-1"
    assert event.categories == (3, stable_id("shoes"))
    assert parse_event(event.to_json()) == event


def test_string_ids_match_stable_ids() -> None:
    raw = pd.Series(["u-1", "alice", "42", "ü"])
    expected = stable_ids(raw).tolist()
    assert [stable_id(v) for v in raw] == expected
    assert [parse_event({**VALID, "user_id": v}).user_id for v in raw] == expected
    assert stable_id(42) == 42 and stable_id("42") != 42
    assert all(0 <= v < 2**63 for v in expected)


@pytest.mark.parametrize(("raw", "reason"), [
    ({"item_id": 1, "ts": 1}, "missing field user_id"),
    ({"user_id": 1, "ts": 1}, "missing field item_id"),
    ({"user_id": 1, "item_id": 1}, "missing field ts"),
    ({"user_id": None, "item_id": 1, "ts": 1}, "missing field user_id"),
    ({**VALID, "ts": "2020-01-01"}, "ts must be a number of unix seconds"),
    ({**VALID, "ts": True}, "ts must be a number of unix seconds"),
    ({**VALID, "ts": -5}, "ts must be a number of unix seconds >= 0"),
    ({**VALID, "ts": 1_700_000_000_000}, "ts must be a number of unix seconds; 1700000000000 looks like ms"),
    ({**VALID, "user_id": True}, "user_id must be an integer or a string, got a boolean"),
    ({**VALID, "user_id": -1}, "user_id must be between 0 and 2^63-1"),
    ({**VALID, "item_id": ""}, "item_id must not be an empty string"),
    ({**VALID, "item_id": [1]}, "item_id must be an integer or a string, got list"),
    ({**VALID, "label": 2}, "label must be 0 or 1, got 2"),
    ({**VALID, "label": "yes"}, "label must be 0 or 1"),
    ({**VALID, "categories": 5}, "categories must be a list of ids, got int"),
    ({**VALID, "categories": [1.5]}, "categories[] must be an integer or a string, got float"),
    ({**VALID, "event_id": 5}, "event_id must be a non-empty string"),
    ({**VALID, "v": 2}, "unsupported schema version v=2; expected v=1"),
    ([VALID], "event must be a JSON object, got list"),
    (b"{not json", "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    (b"\xff", "event is not UTF-8 text"),
])
def test_refusals_say_why(raw: object, reason: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw)  # type: ignore[arg-type]
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_lenient_on_what_is_unambiguous() -> None:
    assert parse_event({"user_id": 1.0, "item_id": 2, "ts": 3, "label": True, "extra": "ignored"}) == \
        Event(user_id=1, item_id=2, ts=3, label=1)


def _log():  # type: ignore[no-untyped-def]
    events = pd.DataFrame({"user_id": [3, 1, 2], "item_id": [10, 11, 12], "ts": [300, 100, 200],
                           "label": np.array([1.0, 0.0, 1.0], np.float32)})
    categories = pd.DataFrame({"item_id": [10, 10, 11], "category_id": [5, 4, 6]})
    return make_log("toy", events, categories, implicit=False)


def test_events_from_log_in_time_order_with_categories() -> None:
    events = list(events_from_log(_log(), chunk_size=2))
    assert events == [
        {"v": 1, "user_id": 1, "item_id": 11, "ts": 100, "label": 0, "categories": [6], "event_id": "toy:0"},
        {"v": 1, "user_id": 2, "item_id": 12, "ts": 200, "label": 1, "categories": [], "event_id": "toy:1"},
        {"v": 1, "user_id": 3, "item_id": 10, "ts": 300, "label": 1, "categories": [4, 5], "event_id": "toy:2"},
    ]
    assert list(events_from_log(_log(), start=1, stop=2, event_ids=False)) == [
        {"v": 1, "user_id": 2, "item_id": 12, "ts": 200, "label": 1, "categories": []}]
    for event in events:
        assert parse_event(event).to_dict() == event


def test_encoded_log_is_the_same_json_keyed_by_user() -> None:
    log = _log()
    chunks = list(encode_log(log, chunk_size=2))
    values = [json.loads(v) for c in chunks for v in c.values]
    assert values == list(events_from_log(log))
    for ids in (True, False):  # the very bytes of compact json.dumps, event ids or not
        assert [v for c in encode_log(log, start=1, chunk_size=2, event_ids=ids) for v in c.values] == [
            json.dumps(e, separators=(",", ":")).encode() for e in events_from_log(log, start=1, event_ids=ids)]
    assert [k for c in chunks for k in c.keys] == [b"1", b"2", b"3"]
    assert np.concatenate([c.ts for c in chunks]).tolist() == [100, 200, 300]
