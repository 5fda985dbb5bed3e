"""The OpenAPI 3 documents of the project's HTTP servers: ingest (producers/ingest.py) and the scorer
(streams/scorer/service.py), each served at ``GET /openapi.json``.

Why generated here rather than a checked-in YAML: the limits it states (body bytes, events per request,
candidates, history length, id rules) are read from the constants the servers enforce, so the document
cannot drift from them; one module holds both servers' paths and the parts they share (bearer auth, the
JSON error body, 401/413/415). tests/test_openapi.py validates each document against the OpenAPI schema
and runs schemathesis against the live servers (real broker) with it.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from asmg.events import MAX_CATEGORIES, MAX_EVENT_ID, MAX_ID, MAX_ID_TEXT, MAX_TS
from streams.http_security import JSON_TYPES

OPENAPI_VERSION = "3.0.3"
PROMETHEUS_TYPE = "text/plain"  # version=0.0.4 exposition format

# --- shared parts -------------------------------------------------------------------------------------------

# at least one character that Python's str.strip() keeps (asmg.events.id_value refuses blank ids)
NOT_BLANK = "[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
ID = {"description": "A non-negative integer, or a non-blank string (hashed to int64 as events' string ids are)",
      "oneOf": [{"type": "integer", "minimum": 0, "maximum": MAX_ID},
                {"type": "string", "minLength": 1, "maxLength": MAX_ID_TEXT,
                 "pattern": NOT_BLANK}]}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string",
                                                                            "description": "why, for the sender"}}}
BEARER = {"type": "http", "scheme": "bearer",
          "description": "Required when the server has a token (ASMG_AUTH_TOKEN or ASMG_AUTH_TOKEN_FILE); "
                         "compared in constant time. /metrics too with ASMG_AUTH_METRICS=1."}
# a token is optional: a server without one accepts every request (the empty requirement)
AUTH_WHEN_CONFIGURED = [{"bearerAuth": []}, {}]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": _json({"$ref": "#/components/schemas/Error"})}
    if headers:
        out["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    return out


UNAUTHORIZED = _error("No or a wrong bearer token (only when the server has one)",
                      **{"WWW-Authenticate": 'Bearer realm="asmg"'})
UNSUPPORTED = _error(f"Content-Type is not one of {', '.join(JSON_TYPES)}, or a Content-Encoding was sent "
                     "(bodies are accepted uncompressed only)")


def _too_large(limit: str) -> dict[str, Any]:
    return _error(f"Body larger than {limit}")


def _metrics(name: str) -> dict[str, Any]:
    return {"get": {"operationId": f"{name}Metrics", "summary": "Prometheus metrics (text exposition format)",
                    "security": [{}, {"bearerAuth": []}],
                    "responses": {"200": {"description": "The metrics",
                                          "content": {PROMETHEUS_TYPE: {"schema": {"type": "string"}}}},
                                  "401": UNAUTHORIZED}}}


OPENAPI_PATH = {"get": {"operationId": "openapi", "summary": "This document",
                        "responses": {"200": {"description": "The OpenAPI 3 document",
                                              "content": _json({"type": "object"})}}}}


def _document(title: str, description: str, paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    return {"openapi": OPENAPI_VERSION,
            "info": {"title": title, "version": "1", "description": description,
                     "license": {"name": "Apache-2.0"}},
            "servers": [{"url": "/"}],
            "paths": {**paths, "/openapi.json": OPENAPI_PATH},
            "components": {"securitySchemes": {"bearerAuth": BEARER},
                           "schemas": {"Error": ERROR, "Id": ID, **schemas}}}


# --- ingest -------------------------------------------------------------------------------------------------


def ingest_document(max_body: int, max_lines: int) -> dict[str, Any]:
    """The ingest server's document, for its configured limits."""
    event = {"type": "object", "required": ["user_id", "item_id", "ts"],
             "description": "One interaction (schema v1, asmg/events.py); unknown fields are ignored",
             "properties": {
                 "v": {"type": "integer", "enum": [1]},
                 "user_id": {"$ref": "#/components/schemas/Id"},
                 "item_id": {"$ref": "#/components/schemas/Id"},
                 "ts": {"type": "number", "minimum": 0, "exclusiveMaximum": True, "maximum": MAX_TS,
                        "description": "event time, unix seconds"},
                 "label": {"type": "integer", "enum": [0, 1], "default": 1, "nullable": True},
                 "categories": {"type": "array", "maxItems": MAX_CATEGORIES, "nullable": True,
                                "items": {"$ref": "#/components/schemas/Id"}},
                 "event_id": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_ID, "nullable": True,
                              "description": "for de-duplication downstream"}}}
    events = {"type": "array", "minItems": 1, "maxItems": max_lines, "items": {"$ref": "#/components/schemas/Event"}}
    refusal = {"type": "object", "required": ["line", "reason"],
               "properties": {"line": {"type": "integer", "minimum": 1,
                                       "description": "1-based line (NDJSON) or array position"},
                              "reason": {"type": "string"}}}
    result = {"type": "object", "required": ["accepted", "refused"],
              "properties": {"accepted": {"type": "integer", "minimum": 0,
                                          "description": "events acknowledged by Kafka (acks=all)"},
                             "refused": {"type": "array", "items": {"$ref": "#/components/schemas/Refusal"}},
                             "unacknowledged": {"type": "array", "items": {"type": "integer", "minimum": 1},
                                                "description": "lines Kafka did not acknowledge: resend these"},
                             "error": {"type": "string"}}}
    unavailable = copy.deepcopy(result)
    unavailable["required"] = ["accepted", "refused", "error"]
    health = {"type": "object", "required": ["status"],
              "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]},
                             "kafka": {"type": "string", "nullable": True}, "down_seconds": {"type": "number"}}}
    post_events = {
        "operationId": "postEvents", "summary": "Write interaction events to Kafka",
        "description": (
            "One JSON event, a JSON array of events, or NDJSON (one event per line). Every line is validated "
            "before anything is sent; each valid one goes to the interactions topic, each refused one to the DLQ "
            f"and into `refused` with its reason. At most {max_lines} events and {max_body} bytes per request. "
            "The answer comes after Kafka's acknowledgement, so 202 means durable."),
        "security": AUTH_WHEN_CONFIGURED,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/Event"}, events]}},
            "application/x-ndjson": {"schema": {**events, "description": "NDJSON: the array's entries, one per "
                                                                         "line (blank lines are skipped)"}}}},
        "responses": {
            "202": {"description": "Every valid event is acknowledged; refused lines are listed",
                    "content": _json({"$ref": "#/components/schemas/IngestResult"})},
            "400": {"description": "Nothing accepted: an empty or non-UTF-8 body (`error`), or every line refused "
                                   "(`refused`)",
                    "content": _json({"$ref": "#/components/schemas/IngestResult"})},
            "401": UNAUTHORIZED,
            "413": _error(f"More than {max_lines} events or {max_body} bytes in one request; nothing was written"),
            "415": UNSUPPORTED,
            "503": {"description": "Kafka is down (nothing was written; see Retry-After) or did not acknowledge "
                                   "some events (resend the lines in `unacknowledged`)",
                    "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "string"}}},
                    "content": _json({"$ref": "#/components/schemas/IngestUnavailable"})}}}
    paths = {
        "/events": {"post": post_events},
        "/healthz": {"get": {"operationId": "ingestHealth", "summary": "Whether Kafka answers (never waits on it)",
                             "responses": {"200": {"description": "ok", "content": _json(
                                 {"$ref": "#/components/schemas/IngestHealth"})},
                                           "503": {"description": "Kafka unreachable", "content": _json(
                                               {"$ref": "#/components/schemas/IngestHealth"})}}}},
        "/metrics": _metrics("ingest"),
    }
    return _document("asmg ingest", "Live ingestion of interaction events into Kafka (producers/ingest.py).", paths,
                     {"Event": event, "Refusal": refusal, "IngestResult": result, "IngestUnavailable": unavailable,
                      "IngestHealth": health})


# --- scorer -------------------------------------------------------------------------------------------------


def scorer_document(max_body: int, max_items: int, max_history: int) -> dict[str, Any]:
    """The scorer's document, for its limits."""
    number_or_null = {"type": "number", "nullable": True}
    score_request = {
        "type": "object", "required": ["user_id", "items"],
        "properties": {"user_id": {"$ref": "#/components/schemas/Id"},
                       "items": {"type": "array", "minItems": 1, "maxItems": max_items,
                                 "items": {"$ref": "#/components/schemas/Id"}, "description": "candidates to score"},
                       "history": {"type": "array", "maxItems": max_history, "nullable": True,
                                   "items": {"$ref": "#/components/schemas/Id"},
                                   "description": "the user's recent positive items, oldest first (default: what "
                                                  "this scorer has seen of the user)"}}}
    score_response = {
        "type": "object", "required": ["scores", "model_version", "period"],
        "properties": {"scores": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                                  "description": "one click probability per candidate, in request order"},
                       "model_version": {"type": "integer"}, "period": {"type": "integer"}}}
    model = {"type": "object",
             "required": ["model", "version", "period", "method", "uri", "sha256", "loaded_at", "load_seconds"],
             "properties": {"model": {"type": "string"}, "version": {"type": "integer"},
                            "period": {"type": "integer"}, "method": {"type": "string"},
                            "pretrained": {"type": "boolean"},
                            "metrics": {"type": "object", "nullable": True},
                            "shadow_metrics": {"type": "object", "nullable": True},
                            "candidate": {"type": "string", "nullable": True},
                            "candidates": {"type": "object", "nullable": True,
                                           "additionalProperties": {"type": "object"}},
                            "uri": {"type": "string"}, "sha256": {"type": "string"},
                            "created": {"description": "when the trainer made it (unix seconds, text or null)"},
                            "loaded_at": {"type": "number"}, "load_seconds": {"type": "number"},
                            "vocab_sizes": {"type": "object", "nullable": True}}}
    quality_row = {"type": "object", "required": ["n"],
                   "properties": {"n": {"type": "integer", "minimum": 0}, "positives": {"type": "integer"},
                                  "auc": number_or_null, "logloss": number_or_null, "shadow_auc": number_or_null,
                                  "shadow_logloss": number_or_null, "lift": number_or_null,
                                  "rel_impr": number_or_null,
                                  "model_versions": {"type": "array", "items": {"type": "integer"}}}}
    quality = {"type": "object", "required": ["periods", "events", "invalid_events", "control_records"],
               "properties": {"periods": {"type": "object", "description": "per test period (its number as key)",
                                          "additionalProperties": {"$ref": "#/components/schemas/QualityRow"}},
                              "events": {"type": "object", "additionalProperties": {"type": "integer"},
                                         "description": "interaction events by outcome"},
                              "invalid_events": {"type": "integer"}, "control_records": {"type": "integer"},
                              "negatives_per_positive": {"type": "integer"}, "periods_spec": {"type": "string"},
                              "guard": {"type": "object", "nullable": True,
                                        "properties": {"served_candidate": {"type": "string"},
                                                       "period": {"type": "integer"},
                                                       "candidates": {"type": "object", "nullable": True}}}}}
    health = {"type": "object", "required": ["status", "feeds"],
              "properties": {"status": {"type": "string", "enum": ["ok", "no model yet", "feed stopped"]},
                             "model_version": {"type": "integer", "nullable": True},
                             "feeds": {"type": "object", "additionalProperties": {"type": "boolean"}},
                             "models_caught_up": {"type": "boolean"}, "users": {"type": "integer"},
                             "last_error": {"type": "string", "nullable": True}},
              "additionalProperties": {"description": "model record counters by outcome (integers)"}}
    no_model = _error("No verified model is served yet")
    paths = {
        "/score": {"post": {
            "operationId": "score", "summary": "Score candidate items for a user with the served model",
            "description": f"At most {max_items} candidates and {max_history} history items; body at most "
                           f"{max_body} bytes. Unknown users and items score with the model's fallback rows.",
            "security": AUTH_WHEN_CONFIGURED,
            "requestBody": {"required": True, "content": {
                t: {"schema": {"$ref": "#/components/schemas/ScoreRequest"}} for t in JSON_TYPES}},
            "responses": {"200": {"description": "Scores", "content": _json({"$ref": "#/components/schemas/Scores"})},
                          "400": _error("A body that cannot be scored (not JSON, wrong types, bad ids, limits)"),
                          "401": UNAUTHORIZED, "413": _too_large(f"{max_body} bytes"), "415": UNSUPPORTED,
                          "503": no_model}}},
        "/model": {"get": {"operationId": "model", "summary": "The served model and its record",
                           "responses": {"200": {"description": "The served model", "content": _json(
                               {"$ref": "#/components/schemas/Model"})}, "503": no_model}}},
        "/quality": {"get": {"operationId": "quality",
                             "summary": "Online (prequential) quality per period, served model vs its IU shadow",
                             "responses": {"200": {"description": "Quality", "content": _json(
                                 {"$ref": "#/components/schemas/Quality"})}}}},
        "/healthz": {"get": {"operationId": "scorerHealth",
                             "summary": "Ready means: both feeds run and a verified model is served",
                             "responses": {"200": {"description": "ready", "content": _json(
                                 {"$ref": "#/components/schemas/ScorerHealth"})},
                                           "503": {"description": "not ready (status says why)", "content": _json(
                                               {"$ref": "#/components/schemas/ScorerHealth"})}}}},
        "/metrics": _metrics("scorer"),
    }
    return _document("asmg scorer", "Scores with the newest verified model (streams/scorer/service.py).", paths,
                     {"ScoreRequest": score_request, "Scores": score_response, "Model": model,
                      "Quality": quality, "QualityRow": quality_row, "ScorerHealth": health})


def serve_document(app: web.Application, document: dict[str, Any]) -> None:
    """Add ``GET /openapi.json`` (open, like /healthz: it holds no secrets) answering ``document``."""
    body = web.json_response(document).body

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
