"""The model record: one model version as the trainer announces it (topic ``<prefix>models``, key = model name).

One type, one parser and one serialiser for everyone who reads or writes it: the trainer writes it, scorers
serve what it names, ``asmg report`` plots a file of them (``models.jsonl``), the demo and the benchmark
watch them. Schema v1 (readers ignore unknown fields and refuse other versions)::

    {"v": 1, "model": "asmg", "version": 3, "period": 6, "method": "asmg-gru-multi",
     "uri": "runs/stream/models/asmg/v000003-p0006", "sha256": "<manifest sha256>",
     "metrics": {"auc": .., "logloss": .., "samples": ..}, "shadow_metrics": {...} | null,
     "created": "2024-01-01T00:00:00+00:00", "seconds": 12.3}

``metrics``: the served model (made after period t-1) tested on period t, exactly what the offline runner
reports for t; the artifact at ``uri`` is the model made after period t (it serves t+1). Optional fields:
``seconds`` (the trainer's time for the period), ``phases`` (seconds per trainer phase) and
``pretrained: true`` on the record of the period that completed pretraining, whose ``metrics`` and
``shadow_metrics`` are null: the pretrained model serves period pretrain_periods+1 before anything was tested;
for the serving guard (method ``asmg-guarded``) ``candidate``, the candidate this artifact serves, and
``candidates``, every candidate tested on period t (``{"iu": {"auc": .., "logloss": .., "samples": ..,
"score": ..}, ...}``; ``score`` is the guard's running record that chose ``candidate``).

Signatures. When the trainer has a key (``ASMG_MODEL_SIGNING_KEY`` or ``ASMG_MODEL_SIGNING_KEY_FILE``) it adds
``signature``: the HMAC-SHA256 (lowercase hex) of the record's canonical bytes, i.e. :func:`dumps` of the JSON
object without its ``signature`` field (compact, keys sorted): :func:`sign_record`. A scorer with a key passes it
to :func:`parse_model_record`, which then refuses (:class:`SignatureError`) a record whose signature is missing
or does not match the bytes it received; every field, including ones this reader does not know, is covered.
Readers without a key ignore the field.

:data:`VERSION` and :class:`RecordError` are those of every record on the wire (streams/wire/records.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from asmg.safejson import has_surrogate, load_object

VERSION = 1
MAX_INT = 2**63 - 1  # versions and periods are int64 wherever they are stored
MAX_TEXT = 4096  # characters of a text field (a URI is the longest)
SHA256 = re.compile(r"[0-9a-f]{64}")


class RecordError(ValueError):
    """A record that does not follow its schema; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureError(RecordError):
    """A model record without a valid signature, read with a key: forged, tampered with, or signed with another
    key."""


SIGNATURE = "signature"
SIGNATURE_HEX = re.compile(r"[0-9a-f]{64}")
MIN_KEY_BYTES = 16


def dumps(record: Mapping[str, Any]) -> bytes:
    """The wire form of every JSON record: compact, keys sorted."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class ModelRecord:
    """One model version as the trainer announces it on the models topic."""

    model: str
    version: int
    period: int
    method: str
    uri: str
    sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    shadow_metrics: dict[str, Any] = field(default_factory=dict)
    created: float | str | None = None
    pretrained: bool = False  # the pretrained model: no metrics yet, it serves period pretrain_periods+1
    seconds: float | None = None
    phases: dict[str, float] | None = None
    # the serving guard: the candidate whose model this artifact serves, and every candidate tested on
    # ``period`` ({"asmg-gru-multi": {"auc": .., "logloss": .., "samples": .., "score": ..}, "iu": {...}})
    candidate: str | None = None
    candidates: dict[str, dict[str, Any]] | None = None
    signature: str | None = None  # HMAC-SHA256 of the canonical bytes (sign_record), when the trainer has a key

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON values (untested metrics are null, as the schema says)."""
        out = {"v": VERSION, "model": self.model, "version": self.version, "period": self.period,
               "method": self.method, "uri": self.uri, "sha256": self.sha256, "metrics": self.metrics or None,
               "shadow_metrics": self.shadow_metrics or None, "created": self.created, "seconds": self.seconds}
        if self.phases is not None:
            out["phases"] = self.phases
        if self.pretrained:
            out["pretrained"] = True
        if self.candidate is not None:
            out["candidate"] = self.candidate
        if self.candidates is not None:
            out["candidates"] = self.candidates
        if self.signature is not None:
            out[SIGNATURE] = self.signature
        return out

    def to_json(self) -> bytes:
        """The record's wire form (what the trainer writes); tests and tools publish with it."""
        return dumps(self.to_dict())


def canonical_bytes(raw: Mapping[str, Any]) -> bytes:
    """What a signature covers: the record's JSON object without its ``signature``, compact with sorted keys."""
    return dumps({k: v for k, v in raw.items() if k != SIGNATURE})


def signature_of(raw: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 (lowercase hex) of :func:`canonical_bytes`."""
    return hmac.new(key, canonical_bytes(raw), hashlib.sha256).hexdigest()


def sign_record(record: ModelRecord, key: bytes) -> ModelRecord:
    """The record with its ``signature`` for ``key`` (replacing any old one)."""
    unsigned = replace(record, signature=None)
    return replace(unsigned, signature=signature_of(unsigned.to_dict(), key))


def verify_signature(raw: Mapping[str, Any], key: bytes) -> None:
    """Raise :class:`SignatureError` unless ``raw`` (the JSON object as received) carries a valid signature for
    ``key`` (compared in constant time)."""
    given = raw.get(SIGNATURE)
    if given is None:
        raise SignatureError("record is not signed (no signature field) and this reader requires signed records")
    if not isinstance(given, str) or not SIGNATURE_HEX.fullmatch(given):
        raise SignatureError(f"signature must be 64 lowercase hex digits, got {str(given)[:80]!r}")
    try:
        expected = signature_of(raw, key)
    except (TypeError, ValueError) as exc:  # cannot happen for parsed JSON; never crash a reader
        raise SignatureError(f"cannot compute the record's canonical bytes: {exc}") from None
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise SignatureError("signature does not match the record (tampered with, forged, or another key)")


def _int(raw: Mapping[str, Any], name: str, minimum: int = 0) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise RecordError(f"{name} must be >= {minimum}, got {str(value)[:40]}")
    if value > MAX_INT:
        raise RecordError(f"{name} must be <= 2^63-1, got {str(value)[:40]}")
    return value


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{name} must be a non-empty string, got {str(value)[:80]!r}")
    if len(value) > MAX_TEXT or has_surrogate(value):
        raise RecordError(f"{name} must be at most {MAX_TEXT} characters of valid Unicode")
    return value


def _mapping(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"{name} must be an object, got {type(value).__name__}")
    return value


def _flag(raw: Mapping[str, Any], name: str) -> bool:
    """An optional boolean field (absent: False)."""
    value = raw.get(name, False)
    if not isinstance(value, bool):
        raise RecordError(f"{name} must be true or false, got {value!r}")
    return value


def _number(raw: Mapping[str, Any], name: str) -> float | None:
    value = raw.get(name)
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise RecordError(f"{name} must be a number, got {value!r}")


def _created(raw: Mapping[str, Any]) -> float | str | None:
    """Informational only: unix seconds or an ISO timestamp, as the trainer writes it."""
    value = raw.get("created")
    if value is None or (isinstance(value, int | float | str) and not isinstance(value, bool)):
        return value
    raise RecordError(f"created must be unix seconds or an ISO timestamp, got {value!r}")


def parse_model_record(value: bytes | str | Mapping[str, Any] | None, key: bytes | None = None,
                       signing_key: bytes | None = None) -> ModelRecord:
    """Validate a model record (wire bytes, or a JSON object already read); raise :class:`RecordError` with the
    reason for anything unusable (and nothing else, whatever the bytes). ``key``: the Kafka key, which must
    name the record's model. ``signing_key``: require a valid signature (:class:`SignatureError` otherwise),
    checked after the schema."""
    if value is None:
        raise RecordError("tombstone (no value)")
    raw = value if isinstance(value, Mapping) else load_object(value, "value", RecordError)
    if raw.get("v", VERSION) != VERSION or isinstance(raw.get("v"), bool):
        raise RecordError(f"unsupported record version v={raw.get('v')!r}; expected {VERSION}")
    model = _text(raw, "model")
    if key is not None and key.decode("utf-8", "replace") != model:
        raise RecordError(f"key {key!r} does not match model {model!r}")
    sha = _text(raw, "sha256")
    if not SHA256.fullmatch(sha):
        raise RecordError(f"sha256 must be 64 lowercase hex digits, got {sha[:80]!r}")
    phases = raw.get("phases")
    if phases is not None and not isinstance(phases, dict):
        raise RecordError(f"phases must be an object, got {type(phases).__name__}")
    candidate = raw.get("candidate")
    if candidate is not None:
        candidate = _text(raw, "candidate")
    candidates = _candidates(raw.get("candidates"))
    if signing_key is not None:
        verify_signature(raw, signing_key)
    signature = raw.get(SIGNATURE)
    if not isinstance(signature, str) or not SIGNATURE_HEX.fullmatch(signature):
        signature = None  # a reader without a key ignores the field
    return ModelRecord(model=model, version=_int(raw, "version", 1), period=_int(raw, "period"),
                       method=_text(raw, "method"), uri=_text(raw, "uri"), sha256=sha,
                       metrics=_mapping(raw, "metrics"), shadow_metrics=_mapping(raw, "shadow_metrics"),
                       created=_created(raw), pretrained=_flag(raw, "pretrained"), seconds=_number(raw, "seconds"),
                       phases=phases, candidate=candidate, candidates=candidates,
                       signature=signature)


def _candidates(value: Any) -> dict[str, dict[str, Any]] | None:
    """The guard's per-candidate metrics: names to objects of numbers (or null)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RecordError(f"candidates must be an object, got {type(value).__name__}")
    out = {}
    for name, metrics in value.items():
        if not isinstance(metrics, dict):
            raise RecordError(f"candidates.{name} must be an object, got {type(metrics).__name__}")
        for field_name in metrics:
            try:
                _number(metrics, field_name)
            except RecordError as exc:
                raise RecordError(f"candidates.{name}: {exc.reason}") from None
        out[name] = dict(metrics)
    return out
