"""Parsers of untrusted input: whatever the bytes, a parsed value or the module's own error, nothing else.

Property tests (hypothesis) over the event parser (and the windowing role's record classifier and batch
path), the period-record parser and the model-record parser, with the inputs that escaped before (issue
10, item 4: lone surrogates, 5,000-digit integers, deep nesting, bad UTF-8, wrong types) as explicit
examples; and a short coverage-guided fuzz run (atheris) of the event parser in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asmg.events import EventError, parse_event
from asmg.records import RecordError, parse_model_record
from asmg.safejson import UntrustedJSONError
from asmg.safejson import loads as untrusted_loads
from streams.wire.records import classify_record, parse_period

REPO = Path(__file__).resolve().parents[1]
SHA = "a" * 64

# the inputs that escaped the parsers on main (issue 10, item 4), and their neighbours
POISON = [
    b'{"user_id": "\\ud800", "item_id": 1, "ts": 5}',
    b'{"user_id": 1, "item_id": 1, "ts": 5, "categories": ["\\udc00"]}',
    b'{"user_id": 1, "item_id": 1, "ts": 5, "event_id": "\\udfff"}',
    b'{"user_id": ' + b"9" * 5000 + b', "item_id": 1, "ts": 5}',
    b'{"user_id": 1, "item_id": 1, "ts": ' + b"9" * 5000 + b"}",
    b'{"model": "asmg", "version": ' + b"7" * 5000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"\xff\xfe\x00",
    b'{"user_id": [1], "item_id": {"x": 1}, "ts": "soon"}',
    b'{"v": 1, "period": "\\ud800", "parts": [{"file": "../../../../etc/passwd"}]}',
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
EVENT_KEYS = ["v", "user_id", "item_id", "ts", "label", "categories", "event_id", "control"]
event_like = st.dictionaries(st.sampled_from(EVENT_KEYS), json_values, max_size=8)


def _texts(value: object) -> bytes:
    return json.dumps(value).encode()


# --- the event parser --------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | event_like.map(_texts) | st.text().map(str.encode))
@example(POISON[0])
@example(POISON[3])
@example(POISON[6])
@example(POISON[8])
def test_event_parser_total(raw: bytes) -> None:
    for parse in (parse_event, lambda r: classify_record(r)):
        try:
            parse(raw)
        except EventError as exc:
            assert exc.reason
    # accepted ids can be encoded again (no lone surrogates reach the hashing or the Kafka key)
    try:
        event = parse_event(raw)
    except EventError:
        return
    assert event.to_json() and 0 <= event.user_id < 2**63 and 0 <= event.item_id < 2**63


@pytest.mark.parametrize("raw", POISON[:6], ids=lambda r: r[:24].decode("latin-1"))
def test_poison_events_are_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(EventError) as info:
        classify_record(raw)
    assert info.value.reason


def test_surrogate_pairs_are_still_text() -> None:
    """A valid escaped pair (an emoji) is a string id like any other; only lone halves are refused."""
    event = parse_event(b'{"user_id": "\\ud83d\\ude00", "item_id": 1, "ts": 5}')
    assert event.user_id == parse_event('{"user_id": "\U0001F600", "item_id": 1, "ts": 5}'.encode()).user_id


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=80) | event_like.map(_texts), min_size=1, max_size=12))
def test_windowing_batch_path_never_raises(values: list[bytes]) -> None:
    """The windowing core's parse of a whole batch (Arrow fast path + reference path): every row is an
    event, a control record or a refusal with a reason, whatever the bytes."""
    from asmg.data.periods import PeriodScheme
    from streams.windowing.core import REFUSED, WindowingCore

    core = WindowingCore(PeriodScheme(bounds=[0, 1000, 2000]))
    rows = core._parse(values)
    assert len(rows["kind"]) == len(values)
    for i in range(len(values)):
        if rows["kind"][i] == REFUSED:
            assert rows["refusals"][i][0]


# --- the period and model records ----------------------------------------------------------------------------


def _period(**changes: object) -> dict:
    record = {"v": 1, "period": 3, "start": 0, "end": 10, "samples": 4, "uri": "/store/period-000003",
              "sha256": SHA, "partitions": 1, "parts": [{"partition": 0, "file": "part-00000.parquet", "rows": 4,
                                                          "sha256": SHA}]}
    record.update(changes)
    return record


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300) | st.dictionaries(st.sampled_from(list(_period())), json_values).map(
    lambda d: _texts({**_period(), **d})))
@example(POISON[5])
@example(POISON[6])
@example(POISON[10])
def test_period_parser_total(raw: bytes) -> None:
    try:
        record = parse_period(raw)
    except RecordError as exc:
        assert exc.reason
        return
    assert isinstance(record["period"], int) and record["period"] >= 1
    for part in record.get("parts") or []:
        assert "/" not in part["file"] and ".." not in part["file"]


@pytest.mark.parametrize("file", ["../../../../etc/passwd", "/etc/passwd", "part-00000.parquet/../x", "..",
                                  "part-0.parquet", 7])
def test_period_part_names_cannot_leave_the_store(file: object) -> None:
    parts = [{"partition": 0, "file": file, "rows": 4, "sha256": SHA}]
    with pytest.raises(RecordError, match="part"):
        parse_period(_texts(_period(parts=parts)))


def _model(**changes: object) -> dict:
    record = {"v": 1, "model": "asmg", "version": 2, "period": 5, "method": "iu", "uri": "/models/v2",
              "sha256": SHA, "metrics": {"auc": 0.5}}
    record.update(changes)
    return record


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300) | st.dictionaries(st.sampled_from(list(_model()) + ["phases", "pretrained"]),
                                                 json_values).map(lambda d: _texts({**_model(), **d})))
@example(POISON[5])
@example(POISON[6])
@example(POISON[7])
def test_model_record_parser_total(raw: bytes) -> None:
    try:
        record = parse_model_record(raw, b"asmg")
    except RecordError as exc:
        assert exc.reason
        return
    assert 1 <= record.version < 2**63 and record.to_json()


def test_untrusted_json_limits() -> None:
    assert untrusted_loads(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    for raw, reason in [(b"[" * 40 + b"]" * 40, "nested deeper"), (b"[" * 5000 + b"]" * 5000, "nested deeper"),
                        (b"1" * 200, "digits"), (b'"\\ud800"', "surrogate"), (b"\xc3", "UTF-8"), (b"{", "invalid")]:
        with pytest.raises(UntrustedJSONError, match=reason):
            untrusted_loads(raw)
    with pytest.raises(UntrustedJSONError, match="at most"):
        untrusted_loads(b"[1]" * 10, max_bytes=8)


# --- coverage-guided fuzzing (atheris), CI-sized ---------------------------------------------------------------

FUZZ = """
import sys
import atheris
import numpy, pandas, pyarrow, pyarrow.json  # noqa: E401,F401 - imported first: not instrumented (slow)
import asmg.data.log, streams.wire.kafka_config  # noqa: E401,F401
with atheris.instrument_imports():
    import asmg.safejson  # noqa: F401
    from asmg.events import EventError, parse_event
    from streams.wire.records import classify_record

def one(data):
    for parse in (parse_event, classify_record):
        try:
            parse(data)
        except EventError:
            pass

atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""


@pytest.mark.timeout(240)
def test_event_parser_fuzz(tmp_path: Path) -> None:
    """A bounded atheris run over the event parser and the record classifier (seeded with the poison inputs):
    any exception other than EventError is a crash, and atheris exits non-zero with the input."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, raw in enumerate(POISON[:6] + [b'{"user_id": 1, "item_id": "sku", "ts": 5, "categories": [1, "x"]}']):
        (corpus / f"seed-{i}").write_bytes(raw)
    script = tmp_path / "fuzz_events.py"
    script.write_text(FUZZ)
    runs = int(os.environ.get("ASMG_FUZZ_RUNS", "4000"))
    result = subprocess.run([sys.executable, str(script), f"-runs={runs}", "-max_len=4096", "-seed=1",
                             f"-artifact_prefix={tmp_path}/", str(corpus)], cwd=REPO, capture_output=True,
                            text=True, timeout=220, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {runs} runs" in result.stderr
