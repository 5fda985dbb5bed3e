"""JSON from outside the process (HTTP bodies, Kafka records), read defensively.

``json.loads`` lets through, or fails with exceptions nobody catches, on input a hostile or broken sender
can write: a lone surrogate escape (``"\\ud800"``) becomes a ``str`` that cannot be encoded again
(UnicodeEncodeError far from the parser), a 5,000-digit integer raises a bare ValueError (Python's
int-string limit), and deep nesting raises RecursionError. :func:`loads` turns every one of them, and
invalid UTF-8 or JSON, into :class:`UntrustedJSONError` with a reason meant for the sender, and also
bounds the size and the nesting depth. Callers map it onto their own error type (EventError, RecordError,
an HTTP 400).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np

MAX_DEPTH = 32  # events and records nest 2-3 levels; nothing legitimate comes near
MAX_INT_DIGITS = 100  # ids are int64 (19 digits); anything longer is refused before int() is called
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONG_INT = re.compile(r"\d{" + str(MAX_INT_DIGITS + 1) + "}")


class UntrustedJSONError(ValueError):
    """Untrusted JSON that cannot be accepted; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def nesting_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings, without parsing (vectorised: cheap on megabytes).
    Checked BEFORE ``json.loads``: a RecursionError inside the C decoder leaves CPython 3.11's recursion
    bookkeeping skewed (``ast.parse`` then fails with "AST constructor recursion depth mismatch")."""
    skeleton = np.frombuffer(_STRING.sub("", text).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    steps = ((skeleton == 91) | (skeleton == 123)).astype(np.int64) - ((skeleton == 93) | (skeleton == 125))
    return int(np.cumsum(steps).max()) if len(steps) else 0


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise UntrustedJSONError(f"an integer has {len(text.lstrip('-'))} digits; at most {MAX_INT_DIGITS} allowed")
    return int(text)


def has_surrogate(text: str) -> bool:
    """True when ``text`` holds a lone surrogate code point (not encodable as UTF-8)."""
    return _SURROGATE.search(text) is not None


def _depth_and_strings(value: Any, max_depth: int, check_strings: bool) -> None:
    """Iteratively: refuse nesting deeper than ``max_depth`` and (optionally) strings with lone surrogates."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise UntrustedJSONError(f"nested deeper than {max_depth} levels")
            for key, child in item.items():
                if check_strings and has_surrogate(key):
                    raise UntrustedJSONError("a key holds a lone surrogate (\\ud800-\\udfff): not valid Unicode")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise UntrustedJSONError(f"nested deeper than {max_depth} levels")
            stack.extend((child, depth + 1) for child in item)
        elif check_strings and isinstance(item, str) and has_surrogate(item):
            raise UntrustedJSONError("a string holds a lone surrogate (\\ud800-\\udfff): not valid Unicode")


def loads(raw: bytes | bytearray | memoryview | str, *, max_bytes: int | None = None,
          max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON; raise :class:`UntrustedJSONError` (and nothing else) for anything unusable."""
    if isinstance(raw, bytes | bytearray | memoryview):
        raw = bytes(raw)
        if max_bytes is not None and len(raw) > max_bytes:
            raise UntrustedJSONError(f"{len(raw)} bytes; at most {max_bytes} allowed")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UntrustedJSONError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        real_surrogates = False  # strict UTF-8 decoding never yields one
    elif isinstance(raw, str):
        if max_bytes is not None and len(raw) > max_bytes:
            raise UntrustedJSONError(f"{len(raw)} characters; at most {max_bytes} allowed")
        text = raw
        real_surrogates = has_surrogate(text)
        if real_surrogates:
            raise UntrustedJSONError("text holds a lone surrogate (\\ud800-\\udfff): not valid Unicode")
    else:
        raise UntrustedJSONError(f"expected bytes or text, got {type(raw).__name__}")
    # the cheap pre-checks decide whether the walk after parsing is needed at all
    brackets = text.count("[") + text.count("{")
    escapes = "\\u" in text
    if brackets > max_depth and nesting_depth(text) > max_depth:
        raise UntrustedJSONError(f"nested deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_int=_parse_int if _LONG_INT.search(text) else None)
    except UntrustedJSONError:
        raise
    except RecursionError:
        raise UntrustedJSONError(f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise UntrustedJSONError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, OverflowError, MemoryError) as exc:  # e.g. Python's int-string conversion limit
        raise UntrustedJSONError(f"unreadable JSON: {exc}") from None
    if escapes:
        _depth_and_strings(value, max_depth, escapes)
    return value


def load_object(raw: bytes | bytearray | memoryview | str, what: str,
                error: Callable[[str], Exception]) -> dict[str, Any]:
    """Untrusted JSON that must be an object; anything else raises ``error(reason)``, where the reason names
    ``what`` ("value", "body", "period record"), so each reader keeps its own error type."""
    try:
        value = loads(raw)
    except UntrustedJSONError as exc:
        raise error(f"{what} is not JSON: {exc.reason}") from None
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
