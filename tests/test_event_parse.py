"""The C event parser (asmg/event_parse.c) accepts a record only when the reference reads it as the same event.

Records are generated from fields whose values are valid, odd or invalid (big integers, floats such as 1e3,
negatives, null, strings, nested values, leading zeros), with duplicate, unknown, escaped and control keys,
random whitespace, then optionally truncated or with a byte changed; every batch is parsed at once (rows
share one buffer) and each accepted row is compared with :func:`streams.wire.records.classify_record`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asmg import event_parse
from asmg.event_batch import parse_events_arrow, parse_events_fast
from asmg.events import MAX_TS, EventError
from streams.wire.records import classify_record

pytestmark = pytest.mark.skipif(event_parse.library() is None, reason="no C compiler: the Arrow path serves")

BIG = 2**63 - 1
integers = st.one_of(st.integers(0, 10**6), st.integers(-10, 10), st.integers(BIG - 3, BIG + 3),
                     st.integers(10**10, 2 * 10**11), st.integers(-2**70, 2**70)).map(str)
floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr),
                   st.sampled_from(["1e3", "1E3", "1e+3", "1.5e-3", "2.0", "0.5", "1e400", "-0.0", "-0", "1e10",
                                    "99999999999.5", "1.0", "0.0"]))
odd = st.sampled_from(["null", "true", "false", '""', '" "', '"7"', '"x"', "[]", "[1]", "{}", '{"a": 1}', "01",
                       "1.", ".5", "-", "+1", "1e", "NaN", "Infinity", "-Infinity", "0x10", '"\\u0041"', '"a\\"b"',
                       '"\\ud800"', '"caf\u00e9"', "tru", "nul", '"' + "e" * 300 + '"', "9" * 120])
id_lists = st.lists(st.one_of(integers, st.just("1.0"), st.just("null"), st.just('"a"'), st.just("true")),
                    max_size=6).map(lambda xs: "[" + ", ".join(xs) + "]")
long_lists = st.lists(st.integers(0, 50).map(str), min_size=250, max_size=260).map(lambda xs: "[" + ",".join(xs) + "]")
strings = st.text(max_size=8).map(json.dumps) | st.text(max_size=8).map(lambda t: json.dumps(t, ensure_ascii=False))
values = st.one_of(integers, floats, odd, id_lists, long_lists, strings)
KEYS = ["v", "user_id", "item_id", "ts", "label", "categories", "event_id", "control", "other", "", "V",
        "user_id ", "user\\u005fid", "ts\\"]
WHITESPACE = ["", "", " ", "\n", "\t ", "\r\n"]
ODD_WHITESPACE = [*WHITESPACE, "\x0b", "\u00a0", "\x00"]  # not JSON whitespace


USUAL = {"v": ["1"], "label": ["0", "1", "true", "false", "null"],
         "categories": ["[]", "[3, 1, 3]", "null", "[1,2]", "[ 0 ]"], "event_id": ['"e-1"', "null", '" "']}
UNUSUAL = {"v": ["2", "1.0", "true", "null", '"1"', "01"], "label": ["1.0", "2", "-1", "0.0", '"1"'],
           "categories": ['["a"]', "[1.5]", "[-1]", "7", "[1,]", "[,1]", "[1 2]", '{"a": 1}'],
           "event_id": ['""', "3", '"\\u00e9"', '"\u00e9"', '"a\\"b"']}


@st.composite
def records(draw) -> bytes:
    """A JSON-ish object: mostly the usual fields with usual values, some fields odd, repeated or unknown."""
    ws = st.sampled_from(ODD_WHITESPACE if draw(st.integers(0, 7)) == 0 else WHITESPACE)
    usual = st.integers(0, 10**6).map(str)
    fields = {"user_id": draw(usual | usual | integers), "item_id": draw(usual | usual | integers),
              "ts": draw(usual | st.floats(0, 2e9).map(repr) | floats | integers)}
    for key in ("v", "label", "categories", "event_id"):
        if draw(st.booleans()):
            fields[key] = draw(st.sampled_from(USUAL[key]) | st.sampled_from(UNUSUAL[key]))
    pairs = list(fields.items())
    for _ in range(draw(st.integers(0, 3)) // 2):
        pairs.insert(draw(st.integers(0, len(pairs))), (draw(st.sampled_from(KEYS)), draw(values)))
    for i, (key, _) in enumerate(pairs):
        if draw(st.integers(0, 19)) == 0:
            pairs[i] = (key, draw(values))
    text = draw(ws) + "{" + draw(ws) + ("," + draw(ws)).join(
        f'"{key}"{draw(ws)}:{draw(ws)}{value}{draw(ws)}' for key, value in pairs) + "}" + draw(ws)
    raw = text.encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, 19))
    if cut == 0:
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif cut == 1 and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]
    return raw


def assert_agrees(values: list[bytes | None]) -> np.ndarray:
    """Each row the parser accepts is an event of the same values for the reference; returns ok."""
    columns = event_parse.parse_columns(values, MAX_TS)
    assert columns is not None
    ok, lengths = columns["ok"], columns["cat_lengths"]
    starts = np.cumsum(lengths) - lengths
    assert len(columns["cat_values"]) == lengths.sum() and not lengths[~ok].any()
    for i, raw in enumerate(values):
        if not ok[i]:
            continue
        kind, event = classify_record(raw)
        assert kind == "event", raw
        assert (int(columns["user"][i]), int(columns["item"][i]), int(columns["label"][i])) == \
            (event.user_id, event.item_id, event.label), raw
        assert float(columns["ts"][i]) == float(event.ts), raw
        assert columns["cat_values"][starts[i]:starts[i] + lengths[i]].tolist() == list(event.categories), raw
    return ok


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records() | st.binary(max_size=60) | st.none(), min_size=1, max_size=8))
@example([b'{"user_id":1,"item_id":2,"ts":3,"user_id":4}'])
@example([b'{"user_id":1,"item_id":2,"ts":3,"control":"watermark"}'])
@example([b'{"user_id":1,"item_id":2,"ts":1e3}', b'{"user_id":1,"item_id":2,"ts":1e400}'])
@example([b'{"user_id":1,"item_id":2,"ts":3,"v":1.0}', b'{"user_id":1,"item_id":2,"ts":3,"x":[1]}'])
@example([b'{"user_id":9223372036854775808,"item_id":2,"ts":3}', b'{"user_id":01,"item_id":2,"ts":3}'])
@example([b'{"user_id":1,"item_id":2,"ts":3', b'{"user_id":1,"item_id":2,"ts":3}'])
@example([b'{"user_id":1,"item_id":2,"ts":3,"categories":[' + b"1," * 256 + b"1]}"])
@example([b'{"user_id":1,"item_id":2,"ts":3,"x":' + b"9" * 120 + b"}"])
@example([b'{"user_id":1,"item_id":2,"ts":3,"categories":[1],"categories":[2]}'])
@example([b'{"user_id":1,"item_id":2,"ts":3,"event_id":""}', b'{"user_id":1,"item_id":2,"ts":3,"event_id":"\\ud800"}'])
@example([b'{"user_id":1,"item_id":2,"ts":-3}', b'{"user_id":1,"item_id":2,"ts":-0.5}',
          b'{"user_id":1.5,"item_id":2,"ts":3}'])
@example([b'{"user_id":1,"item_id":2e0,"ts":3}', b'{"user_id":1,"item_id":2,"ts":3,"label":2}'])
@example([b'{"user_id":1,"item_id":2,"ts":3,"x":[{"y":"]"}, "v":2]}', b'{"user_id":1,"item_id":2,"ts":3,"x":[1,]}'])
@example([b'{"user_id":1,"item_id":2,"ts":3,"x":"\\ud800"}', b'{"user_id":1,"item_id":2,"ts":3} {}'])
def test_accepted_rows_read_as_the_reference_reads_them(batch: list[bytes | None]) -> None:
    assert_agrees(batch)


PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"\\')


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries(
    {"user_id": st.integers(0, BIG), "item_id": st.integers(0, BIG), "ts": st.integers(0, MAX_TS - 1)},
    optional={"v": st.just(1), "label": st.sampled_from([0, 1, None, True, False]),
              "categories": st.lists(st.integers(0, BIG), max_size=256) | st.none(),
              "event_id": st.text(PRINTABLE, min_size=1, max_size=256) | st.none(),
              "extra": st.integers(-10**12, 10**12) | st.text(PRINTABLE, max_size=5) | st.none()}),
       st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")]))
def test_the_usual_records_are_accepted(event: dict, separators: tuple[str, str]) -> None:
    raw = json.dumps(event, separators=separators).encode()
    assert assert_agrees([raw]).all(), raw


def test_float_ts_is_read_as_json_reads_it() -> None:
    values = [f'{{"user_id":1,"item_id":2,"ts":{t}}}'.encode() for t in
              ("1.5", "1e3", "1412121675.123456789", "0.1", "99999999999.99999", "5e-324", "1E10", "1e11")]
    ok = assert_agrees(values)
    assert ok.tolist() == [True] * 7 + [False]  # 1e11 is MAX_TS: refused by the reference, left to it here


def test_batch_path_agrees_with_arrow_on_the_rows_both_accept() -> None:
    values = [json.dumps({"user_id": i, "item_id": 3 * i, "ts": 1000 + i, "label": i % 2,
                          "categories": [i % 5, 2, i % 3]}).encode() for i in range(50)]
    native, arrow = parse_events_fast(values), parse_events_arrow(values)
    assert native.ok.all() and arrow.ok.all()
    for name in ("user", "item", "ts", "label", "cat_lengths", "cat_values"):
        assert np.array_equal(getattr(native, name), getattr(arrow, name)), name


def test_refused_rows_are_left_to_the_reference() -> None:
    values = [b'{"user_id":1,"item_id":2,"ts":-3}', b'{"user_id":1,"item_id":2,"ts":3,"label":2}', None, b"",
              b'{"user_id":"u","item_id":2,"ts":3}', b'{"v":1,"control":"end_of_stream","ts":null}']
    assert not assert_agrees(values).any()
    for raw in values[:2]:
        with pytest.raises(EventError):
            classify_record(raw)


def test_without_the_library_batches_go_through_arrow(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [b'{"user_id":1,"item_id":2,"ts":3}', b'{"user_id":1,"item_id":2,"ts":3,"label":0}']
    event_parse.library.cache_clear()
    monkeypatch.setenv("ASMG_NATIVE_PARSER", "0")
    try:
        assert event_parse.library() is None and event_parse.parse_columns(values, MAX_TS) is None
        fast = parse_events_fast(values)
        assert fast.ok.all() and fast.label.tolist() == [1, 0]
    finally:
        event_parse.library.cache_clear()


def test_values_of_other_buffer_types_never_shift_the_rows() -> None:
    good = b'{"user_id":1,"item_id":2,"ts":3}'
    wide = memoryview(b'{"user_id":7,"item_id":8,"ts":9}' + b" " * 4).cast("i")  # len() counts 4-byte items
    values = [good, wide, bytearray(good), good]  # type: ignore[list-item]
    ok = assert_agrees(values)  # type: ignore[arg-type]
    assert ok[0] and ok[3] and not ok[1]
