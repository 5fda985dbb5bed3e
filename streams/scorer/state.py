"""What a scorer holds, without Kafka or HTTP: the served model and its atomic swap (records: asmg/records.py).

Kept apart from the consumers and the web views so each piece is tested on its own: a record is parsed
defensively (a bad one is refused with a reason, never a crash), a model is loaded and verified off the
request path, and the served model changes by a single reference assignment.

What a record may make a scorer do is bounded: its ``uri`` must lie inside the configured artifact store
(same scheme and host, a path below the store's, no ``..``, query or fragment; else ``records_refused``), and a
load that takes longer than ``load_timeout`` seconds (a filesystem that never answers) is given up
(``load_timeouts``, also a load failure) while the old model keeps serving; the stuck load is left to its
own thread, and while :data:`MAX_HANGING` of them are stuck no new load starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from asmg.artifacts import ModelArtifact, load_model
from asmg.records import ModelRecord, RecordError
from asmg.serving import Scorer
from streams.wire.period_store import within_store

log = logging.getLogger(__name__)

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
                "shadow_metrics": record.shadow_metrics, "candidate": record.candidate,
                "candidates": record.candidates,
                "uri": record.uri, "sha256": record.sha256, "created": record.created,
                "loaded_at": self.loaded_at, "load_seconds": round(self.load_seconds, 4),
                "vocab_sizes": self.scorer.artifact.meta.get("vocab_sizes")}


Loader = Callable[[str, str], ModelArtifact]
MAX_HANGING = 4  # loads still stuck after their timeout; beyond this, records are refused without a new thread
OUTCOMES = ("models_loaded", "load_failures", "load_timeouts", "records_stale", "records_invalid",
            "records_forged", "records_refused")


class ModelHolder:
    """The served model. Loads happen on the caller's (feed) thread; readers only ever read one reference.

    Versions only move forward: a record not newer than the served one is skipped, and a record that fails
    to load (checksum, missing files, a manifest that disagrees with the record) is counted and skipped
    while the old model keeps serving.
    """

    def __init__(self, device: str = "cpu", model_name: str | None = None, loader: Loader = load_model,
                 artifact_store: str | None = None, load_timeout: float | None = None) -> None:
        """``artifact_store``: the only place records may point to (None: anywhere); ``load_timeout``: seconds a
        load may take (None: unbounded)."""
        self.device = device
        self.model_name = model_name
        self._loader = loader
        self.artifact_store = artifact_store
        self.load_timeout = load_timeout
        self.hanging = 0  # loads that timed out and have not returned yet
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

    def refuse(self, what: str, where: str, reason: str) -> None:
        """Count a refused record under ``what`` and keep its reason as ``last_error`` (the old model serves on)."""
        with self._lock:
            self.counts[what] += 1
            self.last_error = f"{where}: {reason}"
        log.error("refusing model record %s: %s", where, reason)

    def offer(self, records: Iterable[ModelRecord]) -> LoadedModel | None:
        """Serve the newest record of a batch that loads; returns the model now served when it changed."""
        wanted = [r for r in records if self.model_name is None or r.model == self.model_name]
        for record in sorted(wanted, key=lambda r: r.version, reverse=True):
            current = self._current
            if current is not None and record.version <= current.version:
                self.count("records_stale")
                continue
            if self.artifact_store is not None and not within_store(record.uri, self.artifact_store):
                self.refuse("records_refused", f"{record.model} v{record.version}",
                            f"uri {record.uri[:200]!r} is outside the artifact store {self.artifact_store!r}")
                continue
            loaded = self._load(record)
            if loaded is not None:
                self._current = loaded  # the swap: one reference assignment
                self.count("models_loaded")
                log.info("serving model %s v%d (period %d, %s) loaded in %.2fs", record.model, record.version,
                         record.period, record.method, loaded.load_seconds)
                return loaded
        return None

    def _build(self, record: ModelRecord) -> Scorer:
        artifact = self._loader(record.uri, record.sha256)
        if (artifact.version, artifact.period) != (record.version, record.period):
            raise RecordError(f"bundle holds v{artifact.version} period {artifact.period}, record says "
                              f"v{record.version} period {record.period}")
        return Scorer(artifact, self.device)

    def _build_bounded(self, record: ModelRecord) -> Scorer:
        """:meth:`_build` in a thread of its own, given up after ``load_timeout`` seconds (TimeoutError)."""
        with self._lock:
            if self.hanging >= MAX_HANGING:
                raise TimeoutError(f"{self.hanging} earlier loads are still stuck; not starting another")
        result: dict[str, Any] = {}
        done = threading.Event()
        gave_up = threading.Event()

        def work() -> None:
            try:
                result["scorer"] = self._build(record)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                result["error"] = exc
            finally:
                with self._lock:
                    done.set()
                    if gave_up.is_set():
                        self.hanging -= 1

        threading.Thread(target=work, name=f"scorer-load-v{record.version}", daemon=True).start()
        if not done.wait(self.load_timeout):
            with self._lock:
                if not done.is_set():
                    gave_up.set()
                    self.hanging += 1
                    self.counts["load_timeouts"] += 1
                    raise TimeoutError(f"loading took longer than {self.load_timeout:g}s; given up")
        if "error" in result:
            raise result["error"]
        return result["scorer"]

    def _load(self, record: ModelRecord) -> LoadedModel | None:
        start = time.perf_counter()
        try:
            scorer = self._build(record) if self.load_timeout is None else self._build_bounded(record)
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
            return {**{k: self.counts.get(k, 0) for k in OUTCOMES}, "last_error": self.last_error}
