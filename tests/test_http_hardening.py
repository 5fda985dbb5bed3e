"""The HTTP servers under hostile but fair use (issue 10, items 5-7), against the session broker.

Each reproduced its failure on main: 500s for lone surrogates, deep nesting, 5,000-digit integers and a
``Content-Encoding: gzip`` header over a plain body; no limit on lines per request; parsing on the event
loop (so /healthz waited behind a big request); a 30 s hold before the 503 with the broker down; no auth, any
Content-Type accepted; servers bound to every interface by default.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from streams.local.broker import free_port
from streams.wire.kafka_config import KafkaSettings
from streams.wire.topics import TopicNames, ensure_topics
from tests.test_producers import consume

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
GOOD = {"user_id": 7, "item_id": 5, "ts": 1_700_000_000}
HOSTILE_LINES = [
    (b'{"user_id": "\\ud800", "item_id": 1, "ts": 5}', "lone surrogate"),
    (b'{"user_id": 1, "item_id": 1, "ts": 5, "categories": ["\\udbff"]}', "lone surrogate"),
    (b"[" * 10_000 + b"]" * 10_000, "nested deeper"),
    (b'{"user_id": ' + b"9" * 5000 + b', "item_id": 1, "ts": 5}', "digits"),
]


def _ndjson(*values: Any) -> bytes:
    return b"\n".join(v if isinstance(v, bytes) else json.dumps(v).encode() for v in values)


async def _post(client: Any, body: bytes, headers: dict[str, str] | None = None, path: str = "/events"
                ) -> tuple[int, Any]:
    response = await client.post(path, data=body, headers=AUTH if headers is None else headers)
    try:
        return response.status, await response.json(content_type=None)
    except ValueError:
        return response.status, await response.text()


def test_ingest_refuses_hostile_requests_without_500(kafka_settings: KafkaSettings, topic_names: TopicNames) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from producers.ingest import make_app

    ensure_topics(kafka_settings, topic_names, partitions=1)

    async def scenario() -> dict[str, tuple[int, Any]]:
        app = make_app(kafka_settings, topic_names, token=TOKEN, max_lines=50, max_body=256 * 1024)
        async with TestClient(TestServer(app)) as client:
            ok = _ndjson({**GOOD, "event_id": "a"})
            out = {
                "no_token": await _post(client, ok, {"Content-Type": "application/json"}),
                "wrong_token": await _post(client, ok, {"Authorization": "Bearer nope",
                                                        "Content-Type": "application/json"}),
                "form": await _post(client, b"user_id=1",
                                    {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}),
                "text_plain": await _post(client, ok, {**AUTH, "Content-Type": "text/plain"}),
                "gzip_plain": await _post(client, ok, {**AUTH, "Content-Encoding": "gzip"}),
                "too_many": await _post(client, _ndjson(*({**GOOD, "event_id": f"n{i}"} for i in range(51)))),
                "too_big": await _post(client, b" " * (300 * 1024) + ok),
                # good and hostile lines in one body: each hostile line refused with its reason, the good
                # ones written once
                "mixed": await _post(client, _ndjson({**GOOD, "event_id": "m1"}, *(v for v, _ in HOSTILE_LINES),
                                                     {**GOOD, "event_id": "m2"})),
                "healthz": ((r := await client.get("/healthz")).status, await r.json()),
            }
            for i, (value, _) in enumerate(HOSTILE_LINES):
                out[f"alone-{i}"] = await _post(client, value)
            return out

    answers = asyncio.run(scenario())
    assert answers["no_token"][0] == 401 and answers["wrong_token"][0] == 401
    assert answers["form"][0] == 415 and "Content-Type" in answers["form"][1]["error"]
    assert answers["text_plain"][0] == 415
    assert answers["gzip_plain"][0] == 415 and "Content-Encoding" in answers["gzip_plain"][1]["error"]
    assert answers["too_many"][0] == 413 and "at most 50" in answers["too_many"][1]["error"]
    assert answers["too_big"][0] == 413
    status, body = answers["mixed"]
    assert status == 202 and body["accepted"] == 2
    assert [r["line"] for r in body["refused"]] == [2, 3, 4, 5]
    for refusal, (_, reason) in zip(body["refused"], HOSTILE_LINES, strict=True):
        assert reason in refusal["reason"], refusal
    for i, (_, reason) in enumerate(HOSTILE_LINES):
        status, body = answers[f"alone-{i}"]
        assert status == 400 and reason in body["refused"][0]["reason"], (i, body)
    assert answers["healthz"][0] == 200
    written = [json.loads(r.value()) for r in consume(kafka_settings, topic_names.interactions, 2)]
    assert sorted(e["event_id"] for e in written) == ["m1", "m2"]  # nothing from the refused requests


def test_ingest_healthz_answers_during_the_largest_request(kafka_settings: KafkaSettings,
                                                           topic_names: TopicNames) -> None:
    """Validation and producing run off the event loop: /healthz answers while the largest allowed request
    (MAX_LINES events) is still being handled; every one of its events is accepted once."""
    from aiohttp.test_utils import TestClient, TestServer

    from producers.ingest import MAX_LINES, make_app

    ensure_topics(kafka_settings, topic_names, partitions=1)
    body = _ndjson(*({**GOOD, "user_id": i, "categories": list(range(20)), "event_id": f"big-{i}"}
                     for i in range(MAX_LINES)))

    async def scenario() -> tuple[int, bool, tuple[int, Any]]:
        async with TestClient(TestServer(make_app(kafka_settings, topic_names))) as client:
            big = asyncio.create_task(_post(client, body, {"Content-Type": "application/x-ndjson"}))
            while not big.done():  # wait until the server holds the request (its body fully sent)
                await asyncio.sleep(0.01)
                response = await client.get("/healthz")
                if response.status == 200 and not big.done():
                    return response.status, big.done(), await big
            return 0, True, await big

    status, big_done, (big_status, big_body) = asyncio.run(scenario())
    assert status == 200 and not big_done
    assert big_status == 202 and big_body["accepted"] == MAX_LINES


def test_ingest_fails_fast_when_the_broker_is_down(topic_names: TopicNames) -> None:
    """No broker at the address: the probe marks Kafka down, /events answers 503 with the reason at once
    (nothing queued), and /healthz says so."""
    from aiohttp import ClientTimeout
    from aiohttp.test_utils import TestClient, TestServer

    from producers.ingest import ACK_TIMEOUT, make_app

    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")

    async def scenario() -> tuple[tuple[int, Any], tuple[int, Any]]:
        # the client gives up well before the ack timeout: only a fail-fast answer gets through
        async with TestClient(TestServer(make_app(dead, topic_names)),
                              timeout=ClientTimeout(total=ACK_TIMEOUT / 2)) as client:
            events = await _post(client, _ndjson(GOOD), {"Content-Type": "application/json"})
            health = await client.get("/healthz")
            return events, (health.status, await health.json())

    (status, body), (health_status, health) = asyncio.run(scenario())
    assert status == 503 and "unreachable" in body["error"] and "nothing was written" in body["error"]
    assert health_status == 503 and health["status"] == "unavailable"


def test_scorer_refuses_hostile_bodies_and_checks_the_token(kafka_settings: KafkaSettings, topic_names: TopicNames,
                                                           tmp_path: Path, monkeypatch) -> None:
    from streams.scorer.service import running
    from tests.test_scorer import make_model, publish_records, served_version, service_for
    from tests.test_scorer import wait_for as wait_until

    monkeypatch.setenv("ASMG_AUTH_TOKEN", TOKEN)
    service = service_for(kafka_settings, topic_names, tmp_path, wait_models=0.5)
    publish_records(kafka_settings, topic_names, make_model(tmp_path, 1))
    import urllib.error
    import urllib.request

    def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    with running(service) as url:
        wait_until(lambda: served_version(url) == 1, 60, "v1 served")
        score = f"{url}/score"
        good = json.dumps({"user_id": 1, "items": [100, 101]}).encode()
        assert post(score, good, headers)[0] == 200
        assert post(score, good, {"Content-Type": "application/json"})[0] == 401
        assert post(score, good, {**headers, "Authorization": "Bearer x"})[0] == 401
        assert post(score, good, {**headers, "Content-Type": "text/plain"})[0] == 415
        assert post(score, good, {**headers, "Content-Encoding": "gzip"})[0] == 415
        for body, reason in [(b'{"user_id": "\\ud800", "items": [1]}', "surrogate"),
                             (b'{"user_id": 1, "items": ["\\udc00"]}', "surrogate"),
                             (b"[" * 10_000 + b"]" * 10_000, "nested deeper"),
                             (b'{"user_id": ' + b"9" * 5000 + b', "items": [1]}', "digits")]:
            status, answer = post(score, body, headers)
            assert status == 400 and reason in answer["error"], (body[:40], answer)
        healthz = urllib.request.urlopen(f"{url}/healthz", timeout=10)  # open: probes carry no token
        assert healthz.status == 200


def test_servers_bind_to_loopback_by_default() -> None:
    from producers.cli import ingest
    from streams.scorer.command import scorer_command
    from streams.wire.settings import StreamSettings

    for command in (ingest, scorer_command):
        assert inspect.signature(command).parameters["host"].default == "127.0.0.1", command.__name__
    assert StreamSettings().metrics_host == "127.0.0.1"


@pytest.mark.parametrize("env,expected", [({}, None), ({"ASMG_AUTH_TOKEN": " t1 "}, "t1")])
def test_token_settings(env: dict[str, str], expected: str | None, tmp_path: Path) -> None:
    from streams.http_security import AuthConfigError, load_token

    assert load_token(env) == expected
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    assert load_token({"ASMG_AUTH_TOKEN_FILE": str(secret)}) == "from-file"
    secret.write_text("")
    with pytest.raises(AuthConfigError, match="empty"):
        load_token({"ASMG_AUTH_TOKEN_FILE": str(secret)})
