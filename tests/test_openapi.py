"""The OpenAPI documents (streams/openapi.py) against the live servers: each server serves its document at
/openapi.json, the document is valid OpenAPI 3, and schemathesis's generated requests (valid and invalid,
a bounded number per operation) never get a 5xx and always get a status, content type, headers and body
the document describes. Both servers run on real sockets with a token, against the session broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from streams.openapi import ingest_document, scorer_document
from streams.wire.kafka_config import KafkaSettings
from streams.wire.topics import TopicNames, ensure_topics

TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# per operation and generation mode: the run stays within seconds (ASMG_OPENAPI_EXAMPLES: a longer run by hand)
EXAMPLES = {"POST": int(os.environ.get("ASMG_OPENAPI_EXAMPLES", "40")), "GET": 3}


@schemathesis.serializer("application/x-ndjson")
def _ndjson(_ctx: Any, value: Any) -> bytes:
    """An NDJSON body: the document's array of events, one per line (anything else: one JSON line)."""
    lines = value if isinstance(value, list) else [value]
    return "\n".join(json.dumps(v) for v in lines).encode()


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """An aiohttp app on a free loopback port, on a thread of its own; yields its base URL."""
    from aiohttp import web

    ready, stop, bound = threading.Event(), threading.Event(), []

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        bound.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "server did not start"
    try:
        yield f"http://127.0.0.1:{bound[0]}"
    finally:
        stop.set()
        thread.join(30)


def fetch_document(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as response:  # open: no token needed
        assert response.headers.get_content_type() == "application/json"
        return json.loads(response.read())


def _checker(url: str, statuses: Counter[int]) -> Callable[[Any], None]:
    def check(case: Any) -> None:
        response = case.call_and_validate(base_url=url, headers=AUTH, checks=CHECKS, timeout=30)
        statuses[response.status_code] += 1

    return check


def run_schemathesis(url: str, document: dict[str, Any]) -> dict[str, Counter[int]]:
    """Every operation, positive and negative cases; returns the statuses each operation answered."""
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # the OpenAPI 3 meta-schema
    calls: dict[str, Counter[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        # negative cases need something to break: a body (the GETs here take no parameters)
        modes = [GenerationMode.POSITIVE, *([GenerationMode.NEGATIVE] if operation.method.upper() == "POST" else [])]
        statuses = calls.setdefault(operation.label, Counter())
        for mode in modes:
            run = settings(max_examples=EXAMPLES[operation.method.upper()], deadline=None, database=None,
                           derandomize=True, suppress_health_check=list(HealthCheck),
                           phases=[Phase.explicit, Phase.generate, Phase.shrink])(
                given(case=operation.as_strategy(generation_mode=mode))(_checker(url, statuses)))
            run()
    return calls


def test_ingest_document_holds_against_the_live_server(kafka_settings: KafkaSettings,
                                                      topic_names: TopicNames) -> None:
    from producers.ingest import MAX_BODY, MAX_LINES, make_app

    ensure_topics(kafka_settings, topic_names, partitions=1)
    with serving(make_app(kafka_settings, topic_names, token=TOKEN)) as url:
        document = fetch_document(url)
        assert document == json.loads(json.dumps(ingest_document(MAX_BODY, MAX_LINES)))
        calls = run_schemathesis(url, document)
    assert set(calls) == {"POST /events", "GET /healthz", "GET /metrics", "GET /openapi.json"}
    assert calls["POST /events"][202] >= 10 and calls["POST /events"][400] >= 10  # valid events went in, bad ones not


def test_scorer_document_holds_against_the_live_server(kafka_settings: KafkaSettings, topic_names: TopicNames,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.scorer.service import MAX_BODY, MAX_HISTORY, MAX_ITEMS, running
    from tests.test_scorer import make_model, publish_records, served_version, service_for, wait_for

    monkeypatch.setenv("ASMG_AUTH_TOKEN", TOKEN)
    service = service_for(kafka_settings, topic_names, tmp_path, wait_models=0.5)
    publish_records(kafka_settings, topic_names, make_model(tmp_path, 1))
    with running(service) as url:
        wait_for(lambda: served_version(url) == 1, 60, "v1 served")
        document = fetch_document(url)
        assert document == json.loads(json.dumps(scorer_document(MAX_BODY, MAX_ITEMS, MAX_HISTORY)))
        calls = run_schemathesis(url, document)
    assert set(calls) == {"POST /score", "GET /model", "GET /quality", "GET /healthz", "GET /metrics",
                          "GET /openapi.json"}
    assert calls["POST /score"][200] >= 10 and calls["POST /score"][400] >= 10


def test_documents_state_the_servers_limits() -> None:
    """The limits in the documents are the enforced ones (read from the same constants)."""
    from producers.ingest import MAX_BODY, MAX_LINES
    from streams.scorer import service

    ingest = ingest_document(MAX_BODY, MAX_LINES)
    body = ingest["paths"]["/events"]["post"]["requestBody"]["content"]["application/x-ndjson"]["schema"]
    assert body["maxItems"] == MAX_LINES and str(MAX_BODY) in ingest["paths"]["/events"]["post"]["description"]
    scorer = scorer_document(service.MAX_BODY, service.MAX_ITEMS, service.MAX_HISTORY)
    request = scorer["components"]["schemas"]["ScoreRequest"]["properties"]
    assert (request["items"]["maxItems"], request["history"]["maxItems"]) == (service.MAX_ITEMS, service.MAX_HISTORY)
    for document in (ingest, scorer):
        schemathesis.openapi.from_dict(document).validate()
        for path, methods in document["paths"].items():
            for method, operation in methods.items():
                assert operation["responses"], (path, method)
                if method == "post":  # every refusal the guard and the handlers give is documented
                    assert {"400", "401", "413", "415", "503"} <= set(operation["responses"]), path


def test_framework_errors_answer_json_as_documented(kafka_settings: KafkaSettings, topic_names: TopicNames) -> None:
    """aiohttp's own refusals (a body over the limit, an unknown path, a wrong method) came as text/plain,
    which no document response allows (schemathesis's content-type check failed on the 413 of a large
    generated body): they answer ``{"error": ...}`` now, the 413 as each document describes it."""
    from aiohttp.test_utils import TestClient, TestServer

    from producers.ingest import make_app as ingest_app
    from streams.scorer.service import MAX_BODY, MAX_HISTORY, MAX_ITEMS, ScorerOptions, ScorerService

    scorer = ScorerService(kafka_settings, topic_names, ScorerOptions(periods=None)).make_app()  # feeds not started
    ingest = ingest_app(kafka_settings, topic_names, max_body=4096)
    documents = {"/score": scorer_document(MAX_BODY, MAX_ITEMS, MAX_HISTORY), "/events": ingest_document(4096, 10)}

    async def scenario(app: Any, path: str, size: int) -> list[tuple[int, str, Any, str | None]]:
        async with TestClient(TestServer(app)) as client:
            out = []
            for method, url, body in [("POST", path, b" " * size + b"{}"), ("GET", "/nope", None),
                                      ("GET", path, None)]:
                response = await client.request(method, url, data=body, headers={"Content-Type": "application/json"})
                out.append((response.status, response.content_type, await response.json(content_type=None),
                            response.headers.get("Allow")))
            return out

    for app, path, size in [(scorer, "/score", MAX_BODY), (ingest, "/events", 4096)]:
        (big, big_type, big_body, _), (missing, missing_type, missing_body, _), (wrong, _, wrong_body, allow) = \
            asyncio.run(scenario(app, path, size))
        assert (big, big_type) == (413, "application/json") and "body size" in big_body["error"], big_body
        assert "application/json" in documents[path]["paths"][path]["post"]["responses"]["413"]["content"]
        assert (missing, missing_type) == (404, "application/json") and missing_body["error"]
        assert wrong == 405 and "POST" in (allow or "") and wrong_body["error"]
