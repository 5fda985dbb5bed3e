"""What every HTTP server of the project checks before a handler runs (ingest's /events, the scorer's /score).

- Bearer-token auth, off unless a token is configured: ``ASMG_AUTH_TOKEN`` (the token) or
  ``ASMG_AUTH_TOKEN_FILE`` (a file holding it, for container secrets). Compared in constant time
  (:func:`hmac.compare_digest`). It guards the write and scoring paths; ``/metrics`` too when
  ``ASMG_AUTH_METRICS=1``. ``/healthz`` stays open (probes carry no secrets).
- Only JSON bodies: a POST must say ``Content-Type: application/json`` or ``application/x-ndjson``, so a
  browser's cross-site form post (text/plain, form encodings: no CORS preflight) is refused with 415.
- Errors in JSON: aiohttp's own answers (413 for a body over the limit, 404, 405) come as
  ``{"error": reason}`` like the handlers' own, so one schema describes every error (streams/openapi.py).
- No ``Content-Encoding``: a compressed body (or a plain one that claims to be) is refused with 415 before
  anything is read, instead of failing inside the decoder.

Servers bind to 127.0.0.1 unless given another host (``--host``, ``ASMG_*_HOST``): see the README's
"Reliability and security" section.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from aiohttp import web

DEFAULT_HOST = "127.0.0.1"
JSON_TYPES = ("application/json", "application/x-ndjson")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuthConfigError(ValueError):
    """The token settings cannot be used (an unreadable or empty token file)."""


def load_token(env: Mapping[str, str] | None = None) -> str | None:
    """The bearer token from ``ASMG_AUTH_TOKEN`` or the file named by ``ASMG_AUTH_TOKEN_FILE`` (None: auth off)."""
    env = os.environ if env is None else env
    token = env.get("ASMG_AUTH_TOKEN", "").strip()
    path = env.get("ASMG_AUTH_TOKEN_FILE", "").strip()
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise AuthConfigError(f"ASMG_AUTH_TOKEN_FILE {path}: {exc.strerror or exc}") from None
        if not token:
            raise AuthConfigError(f"ASMG_AUTH_TOKEN_FILE {path} is empty")
    return token or None


def metrics_protected(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("ASMG_AUTH_METRICS", "").strip().lower() in ("1", "true", "yes")


def _error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """Refused before the body is read: close the connection after answering (the unread body must not be
    taken for the next request, and a body that claims an encoding would fail in the decoder)."""
    response = web.json_response({"error": reason}, status=status, headers=headers)
    response.force_close()
    return response


def guard(token: str | None, protected: Iterable[str], json_posts: Iterable[str]) -> Callable:
    """An aiohttp middleware: bearer auth on ``protected`` paths (when ``token``), JSON-only bodies without a
    content encoding on ``json_posts``."""
    protected, json_posts = frozenset(protected), frozenset(json_posts)
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if expected is not None and path in protected:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                              {"WWW-Authenticate": 'Bearer realm="asmg"'})
        if path in json_posts and request.method == "POST":
            encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                return _error(415, f"Content-Encoding {encoding[:40]!r} is not accepted: send the body uncompressed")
            if request.content_type not in JSON_TYPES:
                return _error(415, f"Content-Type must be one of {', '.join(JSON_TYPES)}, got "
                                   f"{request.content_type[:80]!r}")
        return await handler(request)

    return middleware


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's HTTP errors (a body over ``client_max_size``: 413; unknown path: 404; wrong method: 405) as
    ``{"error": reason}`` with their headers (Allow, ...), instead of aiohttp's text/plain bodies."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        reason = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
        response = web.json_response({"error": reason}, status=exc.status, headers=headers)
        if exc.status == 413:
            response.force_close()  # the rest of the body is unread
        return response
