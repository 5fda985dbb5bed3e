"""The batch parser is a fast path of asmg.events.parse_event: never accepts more, never reads otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asmg.event_batch import canonical_categories, parse_events_arrow, parse_events_fast
from asmg.events import EventError, parse_event

GOOD = {"v": 1, "user_id": 7, "item_id": 3, "ts": 1000.5, "label": 1, "categories": [4, 2, 4], "event_id": "e"}
VARIANTS = [
    {}, {"v": None}, {"v": 2}, {"user_id": -1}, {"user_id": "u-7"}, {"user_id": 2**63 - 1}, {"item_id": None},
    {"ts": -1}, {"ts": 10**11}, {"ts": 5}, {"ts": "5"}, {"label": 0}, {"label": 0.0}, {"label": True},
    {"label": 3}, {"label": None}, {"categories": []}, {"categories": None}, {"categories": [-1]},
    {"categories": list(range(300))}, {"event_id": ""}, {"event_id": "x" * 300}, {"event_id": None},
    {"unknown": {"nested": [1]}}, {"control": "end_of_stream"},
]


def rows() -> list[bytes | None]:
    out: list[bytes | None] = []
    for change in VARIANTS:
        event = {**GOOD, **change}
        out.append(json.dumps({k: v for k, v in event.items()}).encode())
    out += [b"{broken", b"[1, 2]", None, b"", b'{"user_id": 1,\n "item_id": 2, "ts": 3}', b"\xff"]
    return out


def check_agrees(values: list[bytes | None], parse=parse_events_fast) -> np.ndarray:
    fast = parse(values)
    starts = np.cumsum(fast.cat_lengths) - fast.cat_lengths
    for i, raw in enumerate(values):
        if not fast.ok[i]:
            assert fast.cat_lengths[i] == 0
            continue
        event = parse_event(raw)  # the fast path only accepts what the reference accepts
        assert (int(fast.user[i]), int(fast.item[i]), float(fast.ts[i]), int(fast.label[i])) == \
            (event.user_id, event.item_id, float(event.ts), event.label)
        got = fast.cat_values[starts[i]:starts[i] + fast.cat_lengths[i]].tolist()
        assert got == sorted(set(event.categories))
    return fast.ok


def test_fast_rows_equal_the_reference_and_bad_batches_fall_back() -> None:
    # one bad record makes Arrow refuse the whole batch: nothing is fast, and that is still correct
    assert not check_agrees(rows(), parse_events_arrow).any()
    # the native parser reads each row on its own: the well-formed ones are fast among bad neighbours
    assert check_agrees(rows()).sum() >= 10
    # each variant among well-formed rows: whatever goes the fast way reads as the reference reads it,
    # and a row the reference refuses never does
    fast_variants = 0
    for raw in rows()[:len(VARIANTS)]:
        values = [json.dumps({**GOOD, "user_id": i}).encode() for i in range(3)] + [raw]
        ok = check_agrees(values)
        check_agrees(values, parse_events_arrow)
        try:
            parse_event(raw)
        except EventError:
            assert not ok[-1], raw
        fast_variants += int(ok[-1])
    assert fast_variants >= 9  # the native parser leaves 0.0 and True labels to the reference


@pytest.mark.parametrize("change", [{"user_id": "u-7"}, {"ts": "5"}, {"categories": ["a"]}, {"v": "1"}])
def test_unusual_column_types_take_the_slow_path(change) -> None:
    values = [json.dumps({**GOOD, "user_id": i}).encode() for i in range(5)]
    values.append(json.dumps({**GOOD, **change}).encode())
    fast = parse_events_fast(values)
    assert not fast.ok[-1]
    check_agrees(values)


def test_null_and_empty_values_are_left_out() -> None:
    values = [json.dumps({**GOOD, "user_id": i}).encode() for i in range(4)]
    values[1], values[2] = None, b""
    assert parse_events_fast(values).ok.tolist() == [True, False, False, True]


def test_canonical_categories() -> None:
    lengths, values = canonical_categories(np.array([3, 0, 2]), np.array([5, 1, 5, 9, 9]))
    assert lengths.tolist() == [2, 0, 1] and values.tolist() == [1, 5, 9]
