"""Structured logs: ``--log-format json`` (``ASMG_LOG_FORMAT=json``) writes one JSON object per line.

Standard library logging only. Each line holds ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
the context fields that apply (``period``, ``model_version``, ``model``, ``method``, ``role``, ...), any
``extra={...}`` the call passed, and ``exc`` with the traceback when there is one.

Context comes from three places, the first that has a field wins:

1. ``log.info("...", extra={"period": 5})`` on the call;
2. :func:`log_context` (a context variable: it follows ``asyncio.to_thread`` and tasks, not plain threads)::

       with log_context(period=5):
           trainer.handle(record)

3. :func:`bind`: process-wide fields, constants or callables read at each record (a scorer binds
   ``model_version`` to its served model's version, so every line says which model served).

``text`` (the default) keeps the classic ``time level logger: message`` lines. :func:`configure` sets up
the root logger of a plain command; :func:`dict_config` is the same for ``logging.config.dictConfig``
(what faust's worker takes as ``logging_config``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("role", "model", "method", "seed", "period", "model_version", "partition")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("asmg_log_context", default=None)
_bound: dict[str, Any] = {}
_setup: tuple[Any, ...] | None = None

# attributes every LogRecord has; anything else on a record came from ``extra`` or the filter
_RESERVED = set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {"message", "asctime",
                                                                                      "taskName"}


def check_format(fmt: str | None) -> str:
    """``fmt`` lower-cased, or ValueError naming the choices (None: the default, text)."""
    value = (fmt or "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return value


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the block (this thread/task and what it awaits)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Process-wide fields (a value, or a callable returning one; None removes the field)."""
    for name, value in fields.items():
        if value is None:
            _bound.pop(name, None)
        else:
            _bound[name] = value


def context() -> dict[str, Any]:
    """The fields a record logged here and now would get (bound, then the context's)."""
    out = {}
    for name, value in _bound.items():
        if callable(value):
            try:
                value = value()
            except Exception:  # a field must never break logging
                value = None
        if value is not None:
            out[name] = value
    out.update({k: v for k, v in (_context.get() or {}).items() if v is not None})
    return out


class ContextFilter(logging.Filter):
    """Puts the context fields on each record (never overriding what ``extra`` set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in context().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in context().items():  # also when the handler was added without the filter
            out.setdefault(name, value)
        for name, value in vars(record).items():
            if name not in _RESERVED and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=_jsonable, ensure_ascii=False, allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy and torch scalars
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _clean(obj: Any) -> Any:
    """NaN/inf -> null (JSON has no NaN), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


class _SafeJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        try:
            return super().format(record)
        except ValueError:  # NaN somewhere in an extra: replace and retry
            record.__dict__.update({k: _clean(v) for k, v in vars(record).items() if k not in _RESERVED})
            return super().format(record)


def formatter(fmt: str | None = "text") -> logging.Formatter:
    return _SafeJsonFormatter() if check_format(fmt) == "json" else logging.Formatter(TEXT_FORMAT)


def level_number(level: str | int | None, default: int = logging.INFO) -> int:
    if level is None or level == "":
        return default
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error, critical)")
    return value


def configure(level: str | int | None = "info", fmt: str | None = "text", stream: IO[str] | None = None,
              **fields: Any) -> logging.Handler:
    """One stream handler in ``fmt`` on the root logger, replacing plain stream handlers (ours, basicConfig's;
    other kinds, such as a test runner's capture handlers, stay); ``fields`` are bound."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number(level))
    bind(**fields)
    global _setup
    _setup = (level, fmt, dict(fields))
    return handler


def current_setup() -> tuple[Any, ...]:
    """What :func:`configure` was last called with (empty when never): hand it to :func:`apply_setup` in a
    worker process (e.g. a ProcessPoolExecutor initializer), so spawned workers log the same way."""
    return _setup or ()


def apply_setup(*setup: Any) -> None:
    if setup:
        level, fmt, fields = setup
        configure(level, fmt, **fields)


def dict_config(level: str | int | None = "info", fmt: str | None = "text", stream: str = "ext://sys.stderr"
                ) -> dict[str, Any]:
    """The same set-up for ``logging.config.dictConfig`` (faust/mode workers take it as ``logging_config``)."""
    check_format(fmt)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"asmg": {"()": formatter, "fmt": fmt}},
        "handlers": {"default": {"class": "logging.StreamHandler", "stream": stream, "formatter": "asmg",
                                 "filters": ["context"]}},
        "root": {"level": logging.getLevelName(level_number(level)), "handlers": ["default"]},
    }




# --- native libraries' own stderr lines ----------------------------------------------------------------------

_native: dict[str, Any] = {}
_SYSLOG = {0: "critical", 1: "critical", 2: "critical", 3: "error", 4: "warning", 5: "info", 6: "info", 7: "debug"}


def native_line(line: str) -> str:
    """A line a C library (librdkafka: ``%4|1700000000.123|FAC|name| text``) printed -> one JSON object; a
    line that already is one (ours, through Python's logging) passes unchanged."""
    text = line.rstrip("\n")
    if text.startswith("{") and text.endswith("}"):
        return text
    level, logger, message = "info", "native", text
    parts = text.split("|", 4)
    if len(parts) == 5 and parts[0].startswith("%") and parts[0][1:].isdigit():
        level, logger, message = _SYSLOG.get(int(parts[0][1:]), "info"), f"librdkafka.{parts[2]}", parts[4].strip()
    record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": level, "logger": logger,
              "message": message, **{k: v for k, v in context().items() if isinstance(v, str | int | float)}}
    return json.dumps(record)


def wrap_native_stderr() -> None:
    """With JSON logs, route file descriptor 2 through a thread that turns lines native code writes there
    (librdkafka prints some straight to stderr) into JSON objects, so every line of the log is one.
    Idempotent; :func:`flush_native_stderr` drains it (called at exit and before a fail-stop)."""
    import atexit
    import os
    import threading

    if _native:
        return
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    out = os.fdopen(original, "w", buffering=1)

    def pump() -> None:
        with os.fdopen(read_end, "r", errors="replace") as lines:
            for line in lines:
                if line.strip():
                    out.write(native_line(line) + "\n")
        out.flush()

    thread = threading.Thread(target=pump, name="native-stderr", daemon=True)
    thread.start()
    _native.update(thread=thread)
    atexit.register(flush_native_stderr)


def flush_native_stderr(timeout: float = 2.0) -> None:
    """Close our end of the stderr pipe and wait until the thread has written what was in it."""
    import os

    thread = _native.get("thread")
    if thread is None:
        return
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the pipe's last writer goes: the thread sees its end
    thread.join(timeout)
    _native.clear()
