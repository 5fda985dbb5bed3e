"""What a scorer holds, without Kafka or HTTP: model records, the served model and its atomic swap, periods.

Kept apart from the consumers and the web views so each piece is tested on its own: a record is parsed
defensively (a bad one is refused with a reason, never a crash), a model is loaded and verified off the
request path, and the served model changes by a single reference assignment.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from asmg.artifacts import ModelArtifact, load_model
from asmg.serving import Scorer

log = logging.getLogger(__name__)

RECORD_VERSION = 1
SHA256 = re.compile(r"[0-9a-f]{64}")


class RecordError(ValueError):
    """A model record that cannot be used; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- model records ------------------------------------------------------------------------------------------


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

    def to_json(self) -> bytes:
        """The record's wire form (what the trainer writes); tests and tools publish with it."""
        return json.dumps({"v": RECORD_VERSION, "model": self.model, "version": self.version, "period": self.period,
                           "method": self.method, "uri": self.uri, "sha256": self.sha256, "metrics": self.metrics,
                           "shadow_metrics": self.shadow_metrics, "created": self.created,
                           **({"pretrained": True} if self.pretrained else {})}).encode()


def _int(raw: dict[str, Any], name: str, minimum: int = 0) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise RecordError(f"{name} must be >= {minimum}, got {value}")
    return value


def _text(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _mapping(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"{name} must be an object, got {type(value).__name__}")
    return value


def _flag(raw: dict[str, Any], name: str) -> bool:
    """An optional boolean field (absent: False)."""
    value = raw.get(name, False)
    if not isinstance(value, bool):
        raise RecordError(f"{name} must be true or false, got {value!r}")
    return value


def _created(raw: dict[str, Any]) -> float | str | None:
    """Informational only: unix seconds or an ISO timestamp, as the trainer writes it."""
    value = raw.get("created")
    if value is None or (isinstance(value, int | float | str) and not isinstance(value, bool)):
        return value
    raise RecordError(f"created must be unix seconds or an ISO timestamp, got {value!r}")


def parse_model_record(value: bytes | str | None, key: bytes | None = None) -> ModelRecord:
    """Validate a models-topic record; raise :class:`RecordError` with the reason for anything unusable."""
    if value is None:
        raise RecordError("tombstone (no value)")
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"value is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise RecordError(f"value must be a JSON object, got {type(raw).__name__}")
    if raw.get("v", RECORD_VERSION) != RECORD_VERSION or isinstance(raw.get("v"), bool):
        raise RecordError(f"unsupported record version v={raw.get('v')!r}; expected {RECORD_VERSION}")
    model = _text(raw, "model")
    if key is not None and key.decode("utf-8", "replace") != model:
        raise RecordError(f"key {key!r} does not match model {model!r}")
    sha = _text(raw, "sha256")
    if not SHA256.fullmatch(sha):
        raise RecordError(f"sha256 must be 64 lowercase hex digits, got {sha[:80]!r}")
    return ModelRecord(model=model, version=_int(raw, "version", 1), period=_int(raw, "period"),
                       method=_text(raw, "method"), uri=_text(raw, "uri"), sha256=sha,
                       metrics=_mapping(raw, "metrics"), shadow_metrics=_mapping(raw, "shadow_metrics"),
                       created=_created(raw), pretrained=_flag(raw, "pretrained"))


# --- the served model ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded model with the record that announced it. Immutable: swapping it is atomic."""

    record: ModelRecord
    scorer: Scorer
    loaded_at: float
    load_seconds: float

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def period(self) -> int:
        return self.record.period

    def describe(self) -> dict[str, Any]:
        record = self.record
        return {"model": record.model, "version": record.version, "period": record.period,
                "method": record.method, "pretrained": record.pretrained, "metrics": record.metrics,
                "shadow_metrics": record.shadow_metrics,
                "uri": record.uri, "sha256": record.sha256, "created": record.created,
                "loaded_at": self.loaded_at, "load_seconds": round(self.load_seconds, 4),
                "vocab_sizes": self.scorer.artifact.meta.get("vocab_sizes")}


Loader = Callable[[str, str], ModelArtifact]


class ModelHolder:
    """The served model. Loads happen on the caller's (feed) thread; readers only ever read one reference.

    Versions only move forward: a record not newer than the served one is skipped, and a record that fails
    to load (checksum, missing files, a manifest that disagrees with the record) is counted and skipped
    while the old model keeps serving.
    """

    def __init__(self, device: str = "cpu", model_name: str | None = None, loader: Loader = load_model) -> None:
        self.device = device
        self.model_name = model_name
        self._loader = loader
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()  # counters and last_error; never held while scoring
        self.counts: Counter[str] = Counter()
        self.last_error: str | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def offer(self, records: Iterable[ModelRecord]) -> LoadedModel | None:
        """Serve the newest record of a batch that loads; returns the model now served when it changed."""
        wanted = [r for r in records if self.model_name is None or r.model == self.model_name]
        for record in sorted(wanted, key=lambda r: r.version, reverse=True):
            current = self._current
            if current is not None and record.version <= current.version:
                self.count("records_stale")
                continue
            loaded = self._load(record)
            if loaded is not None:
                self._current = loaded  # the swap: one reference assignment
                self.count("models_loaded")
                log.info("serving model %s v%d (period %d, %s) loaded in %.2fs", record.model, record.version,
                         record.period, record.method, loaded.load_seconds)
                return loaded
        return None

    def _load(self, record: ModelRecord) -> LoadedModel | None:
        start = time.perf_counter()
        try:
            artifact = self._loader(record.uri, record.sha256)
            if (artifact.version, artifact.period) != (record.version, record.period):
                raise RecordError(f"bundle holds v{artifact.version} period {artifact.period}, record says "
                                  f"v{record.version} period {record.period}")
            scorer = Scorer(artifact, self.device)
        except Exception as exc:  # any failure must leave the old model serving
            reason = exc.reason if isinstance(exc, RecordError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.counts["load_failures"] += 1
                self.last_error = f"v{record.version} ({record.uri}): {reason}"
            log.error("refusing model %s v%d from %s: %s", record.model, record.version, record.uri, reason)
            return None
        return LoadedModel(record, scorer, time.time(), time.perf_counter() - start)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**{k: self.counts.get(k, 0) for k in
                       ("models_loaded", "load_failures", "records_stale", "records_invalid")},
                    "last_error": self.last_error}
