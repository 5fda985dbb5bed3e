"""The trainer role: period-closed records in, model versions out.

For each period record, in order (the periods topic has one partition): read the period's samples
(checksums verified; rows in canonical order ts, user_id, item_id, label, independent of how events
were partitioned), run :meth:`asmg.updater.PeriodUpdater.step` with the IU shadow in a worker thread
(never on the event loop; torch picks CUDA when present), then

1. write the model artifact (``save_model``) to ``{artifact_store}/{model}/v{version:06d}-p{period:04d}``,
2. write a checkpoint bundle of ``updater.state()`` (plus the version counter and the model record's
   content) to ``{checkpoint_store}/{model}/p{period:06d}``,
3. publish ONE model record (asmg/records.py) to the models topic, key = model name; signed (HMAC-SHA256, its
   ``signature`` field) when a key is configured (``ASMG_MODEL_SIGNING_KEY`` or ``_FILE``).

Pretraining (periods 1..pretrain_periods) collects periods; the periods before the last one publish
nothing (no model exists yet), but every period is checkpointed. The period that completes pretraining
(normally period == pretrain_periods) publishes the pretrained model, so scorers serve it, and evaluate it
online, while period pretrain_periods+1 is open: its record has ``"pretrained": true`` and ``metrics`` and
``shadow_metrics`` null, since nothing was tested on a period yet (its IU shadow is the same model); it
goes through steps 1-3 and the crash rules below like any other record. Every later record's ``metrics``
are what the offline runner reports for that period (the served model made after t-1, tested on t).

Crash idempotence. On its first record after a start or a rebalance, the trainer reads the models topic
(the newest record of its model name: the topic is compacted, and records are published in period
order) and the newest loadable checkpoint. It resumes from that checkpoint; a checkpoint whose model was
never published (a crash between 2 and 3) is published from the checkpoint's content, without retraining;
periods at or below the checkpoint are skipped; a crash before 2 redoes the period from the previous
checkpoint (training is seeded by (seed, period), so the redo yields the same model; the artifact is
rewritten at the same URI). A period is published only when it is above the newest published one, so
there are never two records for one period. One trainer per model name at a time (the periods
topic's single partition gives that within a consumer group).

``ASMG_TRAINER_FAULT=<stage>@<period>`` (tests only) kills the process at a stage of a period:
before-step, after-step, after-artifact, after-checkpoint, after-publish; ``ASMG_WRITE_FAULT=<path suffix>``
(asmg/artifacts.py) kills it with SIGKILL half way through writing an artifact or checkpoint file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from datetime import UTC, datetime
from typing import Any

from asmg.artifacts import ArtifactError, bundle_exists, load_bundle, save_bundle, save_model
from asmg.config import RunConfig
from asmg.logs import bind, log_context
from asmg.records import ModelRecord, RecordError, parse_model_record, sign_record
from asmg.train import warm_up_optimiser
from asmg.updater import PeriodUpdater
from streams.wire.kafka_config import KafkaSettings
from streams.wire.period_store import PeriodStoreError, open_uri, read_period_record, within_store
from streams.wire.records import RecordProducer, dlq_key, dlq_record, dumps, parse_period, read_topic
from streams.wire.settings import SettingsError, StreamSettings
from streams.wire.topics import TopicNames

log = logging.getLogger(__name__)

FAULT_ENV = "ASMG_TRAINER_FAULT"
FAULT_EXIT = 75
CHECKPOINT = re.compile(r"^p(\d{6})$")


def run_config(settings: StreamSettings) -> RunConfig:
    """The preset for the dataset (or the one named), with the settings' overrides (asmg/flags.py)."""
    from asmg.flags import pick, run_config

    try:
        return run_config(settings.dataset, settings.preset, **pick(settings.to_dict()))[0]
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _quality(model: ModelRecord) -> str:
    """A model record's quality in a log line; the pretrained model has none (it was not tested yet)."""
    if model.pretrained or not model.metrics:
        return "pretrained, not tested yet"
    return f"auc {model.metrics.get('auc', float('nan')):.4f}"


def guard_fields(report: dict[str, Any] | None) -> dict[str, Any]:
    """The serving guard's choice and every candidate's metrics, for the model record (absent otherwise)."""
    if not report:
        return {}
    return {"candidate": report["served"], "candidates": report["candidates"]}


def _fault(stage: str, period: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec and spec == f"{stage}@{period}":
        log.warning("fault injection: exiting at %s of period %d", stage, period)
        os._exit(FAULT_EXIT)


class Trainer:
    def __init__(self, settings: StreamSettings, names: TopicNames, kafka: KafkaSettings) -> None:
        self.settings = settings
        self.names = names
        self.kafka = kafka
        self.cfg = run_config(settings)
        self.model = settings.model_name
        self.ready = False
        self.generation = 0  # bumped when the periods partition is revoked (another trainer may take over)
        self.updater: PeriodUpdater | None = None
        self.version = 0  # versions handed out so far
        self.published = 0  # newest period with a model record
        self._producer: RecordProducer | None = None
        self.signing_key = settings.signing_key()  # None: records go out unsigned
        self.metrics = None  # streams/metrics.py TrainerMetrics, when the worker serves metrics
        if settings.torch_threads > 0:
            import torch

            torch.set_num_threads(settings.torch_threads)
        warm_up_optimiser()

    # -- locations -----------------------------------------------------------------------------------------
    def artifact_uri(self, version: int, period: int) -> str:
        """Absolute for a local store: records are read by processes with other working directories."""
        store = self.settings.artifact_store.rstrip("/")
        store = store if "://" in store else os.path.abspath(store)
        return f"{store}/{self.model}/v{version:06d}-p{period:04d}"

    def checkpoint_root(self) -> str:
        return f"{self.settings.checkpoint_store.rstrip('/')}/{self.model}"

    def checkpoint_uri(self, period: int) -> str:
        return f"{self.checkpoint_root()}/p{period:06d}"

    def checkpoints(self) -> list[int]:
        """Periods with a complete checkpoint bundle, oldest first."""
        from pyarrow import fs

        filesystem, root = open_uri(self.checkpoint_root())
        infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
        periods = sorted(int(m.group(1)) for info in infos if info.type == fs.FileType.Directory
                         and (m := CHECKPOINT.match(info.base_name)))
        return [p for p in periods if bundle_exists(self.checkpoint_uri(p))]

    # -- start / resume ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Read what was published and the newest checkpoint; publish a checkpointed, unpublished model."""
        latest = None
        for record in read_topic(self.kafka, self.names.models):
            if record.key != self.model.encode():
                continue
            try:
                model = parse_model_record(record.value, record.key)
            except RecordError as exc:
                log.warning("ignoring a model record: %s", exc)
                continue
            if latest is None or model.period > latest.period:
                latest = model
        self.published = latest.period if latest else 0
        if self.metrics is not None and latest is not None:
            self.metrics.published(latest.to_dict(), new=False)
        published_version = latest.version if latest else 0
        self.updater, meta = None, {}
        for period in reversed(self.checkpoints()):
            try:
                tensors, meta = load_bundle(self.checkpoint_uri(period))
            except ArtifactError as exc:
                log.warning("skipping checkpoint of period %d: %s", period, exc)
                continue
            # safetensors hands tensors back sorted by its own rules; the methods' load_state is sensitive
            # to the order (parameter iteration order changes float sums), so restore the saved one
            if meta["info"]["method"] != self.settings.method:
                raise SettingsError(f"the checkpoints in {self.checkpoint_root()} are of method "
                                    f"{meta['info']['method']!r}, not {self.settings.method!r}: use another "
                                    "--model-name or --checkpoint-store for another method")
            order = meta.get("tensor_order") or list(tensors)
            self.updater = PeriodUpdater.from_state({k: tensors[k] for k in order}, meta["info"])
            break
        if self.updater is None:
            self.updater = PeriodUpdater(self.settings.method, self.cfg)
            self.version = published_version
        else:
            self.version = max(int(meta["version"]), published_version)
            pending = parse_model_record(meta["model"]) if meta.get("model") is not None else None
            if pending is not None and pending.period > self.published:
                log.info("publishing the checkpointed model of period %d (crash before its record)",
                         pending.period)
                self._publish(pending)
        if self.published > self.updater.last_period:
            log.warning("models up to period %d are published but the newest checkpoint is of period %d: "
                        "retraining without publishing until period %d", self.published,
                        self.updater.last_period, self.published)
        self.ready = True

    # -- one period ----------------------------------------------------------------------------------------
    def handle(self, record: dict[str, Any]) -> ModelRecord | None:
        """Process one period record (blocking: call from a worker thread). Returns the published record."""
        if not self.ready:
            self.start()
        generation = self.generation
        period = int(record["period"])
        updater = self.updater
        if period <= updater.last_period:
            log.info("period %d: already trained (checkpoint at %d), skipped", period, updater.last_period)
            self._observe(period, "skipped", {})
            return None
        if int(record["samples"]) == 0:  # as offline: a period without samples is no step at all
            log.warning("period %d has no samples: nothing to test or learn, skipped", period)
            self._observe(period, "empty", {})
            return None
        if period != updater.last_period + 1:
            log.warning("period %d follows period %d: periods in between were never closed", period,
                        updater.last_period)
        started = time.perf_counter()
        if not within_store(record["uri"], self.settings.period_store):
            raise PeriodStoreError(f"period {period}: uri {record['uri'][:200]!r} is outside the configured period "
                                   f"store {self.settings.period_store!r}")
        samples = read_period_record(record)
        phases = {"read": time.perf_counter() - started}  # seconds per phase (metrics, the record's "phases")
        _fault("before-step", period)
        result = updater.step(period, samples, train=True, with_shadow=True)
        phases.update(result.seconds)
        _fault("after-step", period)
        model = None
        pretrained = result.metrics is None and updater.started  # this step completed pretraining
        if (result.metrics is not None or pretrained) and period > self.published:
            clock = time.perf_counter()
            version = self.version + 1
            uri = self.artifact_uri(version, period)
            sha = save_model(uri, version=version, period=period, method=updater.method.name,
                             serving=updater.serving(), shadow=updater.method.incremental(), vocabs=updater.vocabs,
                             config=self.cfg.to_dict(), metrics=result.metrics)
            self.version = version
            seconds = round(time.perf_counter() - started, 3)
            phases["artifact"] = time.perf_counter() - clock
            model = ModelRecord(model=self.model, version=version, period=period, method=updater.method.name,
                                uri=uri, sha256=sha, metrics=result.metrics or {}, shadow_metrics=result.shadow or {},
                                created=datetime.now(UTC).isoformat(timespec="seconds"), seconds=seconds,
                                phases={name: round(s, 4) for name, s in phases.items()},
                                pretrained=pretrained,  # pretrained: metrics are null, nothing was tested yet
                                **guard_fields(result.candidates))
        _fault("after-artifact", period)
        clock = time.perf_counter()
        tensors, info = updater.state()
        save_bundle(self.checkpoint_uri(period), tensors,
                    {"kind": "checkpoint", "model_name": self.model, "period": period, "version": self.version,
                     "info": info, "model": model.to_dict() if model else None, "result": result.to_dict(),
                     "tensor_order": list(tensors)})
        _fault("after-checkpoint", period)
        phases["checkpoint"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if model is not None and generation == self.generation:
            self._publish(model)
            phases["publish"] = time.perf_counter() - clock
        elif model is not None:  # revoked meanwhile: the next owner publishes it from the checkpoint
            log.warning("period %d: partition revoked while training; leaving its record to the next owner", period)
            self.ready = False
        _fault("after-publish", period)
        self._prune()
        outcome = ("published" if model is not None else "pretrain" if result.metrics is None and not pretrained
                   else "retrained")
        self._observe(period, outcome, phases, time.perf_counter() - started)
        return model

    def quarantine(self, raw: bytes | None, reason: str, detail: str, partition: int, offset: int) -> None:
        """A period record the trainer cannot use (unreadable, or its files missing, tampered or outside the
        store): log it, count it and write it to the DLQ with the reason, then go on with the next period
        (exiting would only meet the same record again after every restart)."""
        log.error("quarantined the period record at %s[%d]@%d: %s: %s", self.names.periods, partition, offset,
                  reason, detail)
        if self.metrics is not None:
            self.metrics.periods.labels("quarantined").inc()
        if self._producer is None:
            self._producer = RecordProducer(self.kafka)
        self._producer.send(self.names.dlq, dlq_key(self.names.periods, partition, offset),
                            dumps(dlq_record(reason, raw or b"", self.names.periods, partition, offset, detail)))

    def _observe(self, period: int, outcome: str, phases: dict[str, float], total: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.period(period, outcome, phases, total)

    def _publish(self, model: ModelRecord) -> None:
        if model.period <= self.published:
            return
        if self._producer is None:
            self._producer = RecordProducer(self.kafka)
        if self.signing_key is not None:  # signed as it goes out: a checkpoint holds the record's content only
            model = sign_record(model, self.signing_key)
        self._producer.send(self.names.models, self.model.encode(), model.to_json())
        self.published = model.period
        if self.metrics is not None:
            self.metrics.published(model.to_dict())
        log.info("published %s v%d for period %d (%s)", self.model, model.version, model.period,
                 _quality(model), extra={"period": model.period, "model_version": model.version})

    def _prune(self) -> None:
        periods = self.checkpoints()
        filesystem, root = open_uri(self.checkpoint_root())
        for period in periods[:-self.settings.keep_checkpoints]:
            try:
                filesystem.delete_dir(f"{root}/p{period:06d}")
            except OSError as exc:  # another cleaner, a read-only store: not worth failing a period for
                log.warning("cannot delete checkpoint %d: %s", period, exc)


def register(app, settings: StreamSettings, names: TopicNames, kafka: KafkaSettings) -> Trainer:
    """Add the trainer agent to a faust app."""
    from faust.types import TP

    from streams.worker import fail_stop

    trainer = Trainer(settings, names, kafka)
    topic = app.topic(names.periods, key_serializer="raw", value_serializer="raw")
    if getattr(app, "asmg_metrics", None) is not None:
        from streams.metrics import TrainerMetrics

        trainer.metrics = app.asmg_metrics.trainer = TrainerMetrics(app.asmg_metrics.registry, settings.model_name)
    bind(model=settings.model_name, model_version=lambda: trainer.version or None)  # JSON log fields

    @app.agent(topic, name=f"{settings.role_app_id('trainer')}-trainer", concurrency=1)
    async def train(stream):
        async for event in stream.events():
            where = (event.message.partition, event.message.offset)
            try:
                record = parse_period(event.value)
            except RecordError as exc:
                await asyncio.to_thread(trainer.quarantine, event.value, "invalid period record", exc.reason, *where)
                continue
            try:
                with log_context(period=record.get("period")):  # follows the call into the thread
                    await asyncio.to_thread(trainer.handle, record)
            except (PeriodStoreError, RecordError) as exc:  # this record's files: skipped loudly, never silently
                await asyncio.to_thread(trainer.quarantine, event.value, "unreadable period", str(exc), *where)
            except Exception as exc:  # fail-stop: a bug or a failing store; the restarted worker redoes the period
                fail_stop(exc, f"trainer, period {record.get('period')}")

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked: set[TP], **kwargs) -> None:
        if any(tp.topic == names.periods for tp in revoked):
            trainer.ready = False
            trainer.generation += 1

    return trainer
