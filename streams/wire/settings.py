"""Typed settings of the stream roles (windowing, coordinator, trainer): one frozen dataclass.

Every field ``some_name`` is the CLI flag ``--some-name`` of ``asmg worker ...`` and the environment
variable ``ASMG_SOME_NAME``; a flag beats the variable, the variable beats the default. Names follow the
other commands where they mean the same thing (``ASMG_TOPIC_PREFIX``, ``ASMG_PARTITIONS``, ``ASMG_SEED``,
``ASMG_IMPLICIT``, ``ASMG_LR``, ``ASMG_PRETRAIN_PERIODS``, ...). Kafka itself is configured by the
``KAFKA_*`` variables (streams/wire/kafka_config.py), not here.

Periods come from either ``period_bounds`` (fixed boundaries: a JSON list, or a path/URI of a JSON file
holding a list or ``{"bounds": [...]}``; ``asmg worker bounds`` writes the offline runner's bounds for a
dataset) or ``period_length`` (tumbling windows such as ``1d`` or ``7d``, starting at ``period_origin``).
"""

from __future__ import annotations

import json
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asmg.config import HISTORY_LEN, SettingsError

if TYPE_CHECKING:
    from asmg.data.periods import PeriodScheme

ENV_PREFIX = "ASMG_"


def _opt(default: Any, help: str, secret: bool = False) -> Any:  # noqa: A002 - the word typer uses
    return field(default=default, metadata={"help": help, "secret": secret}, repr=not secret)


@dataclass(frozen=True)
class StreamSettings:
    # -- topics, workers -------------------------------------------------------------------------------
    topic_prefix: str = _opt("asmg.", "Prefix of every topic name.")
    partitions: int = _opt(4, "Partitions of the interactions topic when the worker has to create it.")
    app_id: str | None = _opt(None, "App id of a role: its consumer group, state and changelog topics (default: "
                                         "<prefix><role>).")
    worker_dir: str = _opt("runs/stream/faust", "Local folder of the workers' data (faust's, windowing slot locks).")
    log_level: str = _opt("warning", "Log level of the workers (debug, info, warning, error).")
    log_format: str = _opt("text", "Log format: text, or json (one JSON object per line, asmg/logs.py).")
    metrics_port: int | None = _opt(None, "Serve Prometheus metrics on this port at /metrics (0: any free port) "
                                          "(default: off).")
    metrics_host: str = _opt("127.0.0.1", "Address the metrics server binds (0.0.0.0: every interface, as in "
                                          "docker-compose).")
    session_timeout: float = _opt(10.0, "Seconds after which the consumer group drops a worker that stopped "
                                        "heartbeating (how long a crashed worker's partitions wait).")
    # -- periods and samples (windowing, coordinator) --------------------------------------------------
    period_bounds: str | None = _opt(None, "Fixed period boundaries: a JSON list, or a path/URI of a JSON file.")
    period_length: str | None = _opt(None, "Tumbling periods of this length instead (1d, 7d, 12h, 3600s).")
    period_origin: float | None = _opt(None, "Unix seconds where tumbling period 1 starts (needed with "
                                             "--period-length).")
    period_count: int | None = _opt(None, "Tumbling mode: at most this many periods (later events are "
                                          "outside every period).")
    allowed_lateness: float = _opt(0.0, "Seconds of event-time lateness tolerated before a period closes.")
    implicit: bool = _opt(False, "Implicit feedback: every positive gets one sampled negative.")
    history_len: int = _opt(HISTORY_LEN, "Items in a sample's history (the user's most recent positives).")
    seed: int = _opt(0, "Seed of negative sampling and of training.")
    period_store: str = _opt("runs/stream/periods", "Where period samples go (local path or pyarrow URI).")
    # 50,000 rather than 10,000: a transaction's fixed costs (the broker's commit, the core's per-batch work) are
    # spread over 5x the records: per 1M events ~2 CPU-s less in the broker and ~0.7 in the core; +~50 MB RSS
    batch_max: int = _opt(50_000, "Records the windowing worker takes per batch (one Kafka transaction).")
    worker_name: str | None = _opt(None, "Windowing worker name in its transactional id (default: host name + "
                                         "the first free slot under --worker-dir; a restarted worker reuses it).")
    watermark_interval: float = _opt(1.0, "Seconds between progress watermarks of a partition (closes are "
                                          "always published at once).")
    # -- trainer ---------------------------------------------------------------------------------------
    artifact_store: str = _opt("runs/stream/models", "Where model artifacts go (local path or pyarrow URI).")
    checkpoint_store: str = _opt("runs/stream/checkpoints", "Where trainer checkpoints go.")
    model_signing_key: str | None = _opt(None, "Sign model records with HMAC-SHA256 under this key (at least 16 "
                                               "bytes; scorers given the same key refuse unsigned or forged "
                                               "records). Prefer --model-signing-key-file.", secret=True)
    model_signing_key_file: str | None = _opt(None, "A file holding the model signing key (container secrets).")
    keep_checkpoints: int = _opt(2, "Checkpoints kept per model (older ones are deleted).")
    model_name: str = _opt("asmg", "Model name: key of the model records.")
    method: str = _opt("asmg-guarded", "Update method (see `asmg experiment --help`); the default serving guard "
                                       "runs ASMG and IU side by side and serves the better recent record.")
    dataset: str = _opt("ml-100k", "Dataset whose preset is the default hyper-parameter set.")
    preset: str | None = _opt(None, "Hyper-parameter preset (default: the dataset's, else authors).")
    pretrain_periods: int | None = _opt(None, "Periods collected to pretrain the base model (default: the preset's).")
    first_test_period: int | None = _opt(None, "First reported test period, recorded in the config (default: the "
                                               "preset's).")
    periods: int | None = _opt(None, "Number of periods (recorded in the config) (default: the preset's).")
    lr: float | None = _opt(None, "Base-model learning rate (default: the preset's).")
    batch_size: int | None = _opt(None, "Base-model batch size (default: the preset's).")
    epochs: int | None = _opt(None, "Base-model epochs per period (default: the preset's).")
    pretrain_epochs: int | None = _opt(None, "Pretraining epochs (default: the preset's).")
    pretrain_mode: str | None = _opt(None, "Pretraining: union (the paper: epochs over all pretraining periods once "
                                           "the last closed) or progressive (epochs over each as it arrives, so "
                                           "the pretrained model is live soon after the last one closes); default: "
                                           "the preset's (union).")
    k: int | None = _opt(None, "Models in the generator's window (default: the preset's).")
    hidden: int | None = _opt(None, "GRU hidden size (default: the preset's).")
    meta_lr: float | None = _opt(None, "Meta generator learning rate (default: the preset's).")
    meta_epochs: int | None = _opt(None, "Meta generator epochs (default: the preset's).")
    meta_batch_size: int | None = _opt(None, "Meta generator batch size (default: the preset's).")
    output: str | None = _opt(None, "Generator output: direct or residual (default: the preset's).")
    device: str = _opt("auto", "Torch device: auto (CUDA when present), cpu, cuda.")
    torch_threads: int = _opt(1, "Torch intra-op threads. 1 (the default) repeats a run bit for bit and, on a few "
                                 "cores shared with the other roles, is also the fastest; 0 = torch's default (all "
                                 "cores), worth it only for large periods on a machine of its own.")

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise SettingsError(f"--partitions/{env_name('partitions')} must be >= 1, got {self.partitions}")
        if self.history_len < 1:
            raise SettingsError(f"--history-len/{env_name('history_len')} must be >= 1")
        if self.torch_threads < 0:
            raise SettingsError(f"--torch-threads/{env_name('torch_threads')} must be >= 0 (0 = torch's default)")
        if not math.isfinite(self.allowed_lateness) or self.allowed_lateness < 0:
            raise SettingsError(f"--allowed-lateness/{env_name('allowed_lateness')} must be >= 0 seconds")
        if self.period_bounds and self.period_length:
            raise SettingsError("give either --period-bounds (ASMG_PERIOD_BOUNDS) or --period-length "
                                "(ASMG_PERIOD_LENGTH), not both")
        if not 1.0 <= self.session_timeout <= 300.0:
            raise SettingsError(f"--session-timeout/{env_name('session_timeout')} must be in [1, 300] seconds")
        if self.batch_max < 1:
            raise SettingsError(f"--batch-max/{env_name('batch_max')} must be >= 1")
        if self.keep_checkpoints < 1:
            raise SettingsError(f"--keep-checkpoints/{env_name('keep_checkpoints')} must be >= 1")
        if self.log_format.strip().lower() not in ("text", "json"):
            raise SettingsError(f"--log-format/{env_name('log_format')} must be 'text' or 'json'")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"--metrics-port/{env_name('metrics_port')} must be a port number (0: any free one)")
        if self.output not in (None, "direct", "residual"):
            raise SettingsError(f"--output/{env_name('output')} must be 'direct' or 'residual'")
        signing_key(self.model_signing_key, self.model_signing_key_file)  # fail at start, not at the first record

    def signing_key(self) -> bytes | None:
        """The model-record signing key (None: records go out unsigned)."""
        return signing_key(self.model_signing_key, self.model_signing_key_file)

    # -- derived ---------------------------------------------------------------------------------------
    def role_app_id(self, role: str) -> str:
        return self.app_id or f"{self.topic_prefix}{role}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> StreamSettings:
        return StreamSettings(**{**asdict(self), **changes})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> StreamSettings:
        """Defaults, then ``ASMG_*`` variables, then ``overrides`` (None overrides are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name), "").strip()
            if raw:
                values[f.name] = parse_value(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The ``ASMG_*`` variables that reproduce these settings (for subprocess workers)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[env_name(f.name)] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def signing_key(key: str | None, key_file: str | None) -> bytes | None:
    """The model-record signing key from its value (``ASMG_MODEL_SIGNING_KEY``) or a file holding it
    (``ASMG_MODEL_SIGNING_KEY_FILE``; surrounding whitespace is dropped); None when neither is set. Raises
    :class:`SettingsError` for both at once, an unreadable or empty file, or a key under 16 bytes."""
    from asmg.records import MIN_KEY_BYTES

    key = (key or "").strip() or None
    key_file = (key_file or "").strip() or None
    if key and key_file:
        raise SettingsError("give either ASMG_MODEL_SIGNING_KEY or ASMG_MODEL_SIGNING_KEY_FILE, not both")
    if key_file:
        try:
            data = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise SettingsError(f"ASMG_MODEL_SIGNING_KEY_FILE {key_file}: {exc.strerror or exc}") from None
        where = f"ASMG_MODEL_SIGNING_KEY_FILE {key_file}"
    elif key:
        data, where = key.encode(), "ASMG_MODEL_SIGNING_KEY"
    else:
        return None
    if len(data) < MIN_KEY_BYTES:
        raise SettingsError(f"{where}: the key has {len(data)} bytes; at least {MIN_KEY_BYTES} are needed")
    return data


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_type(name: str) -> tuple[type, bool]:
    """(base type, optional) of a field, from its annotation."""
    hints = typing.get_type_hints(StreamSettings)
    hint = hints[name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        base = next(a for a in args if a is not type(None))
        return base, True
    return hint, False


def parse_value(name: str, raw: str) -> Any:
    base, _ = field_type(name)
    where = f"{env_name(name)}={raw!r}"
    if base is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{where}: expected true or false")
    if base is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{where}: expected an integer") from None
    if base is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{where}: expected a number") from None
    return raw


def settings_fields() -> list[tuple[str, type, bool, Any, str]]:
    """(name, base type, optional, default, help) per field: what the CLI builds its options from."""
    out = []
    for f in fields(StreamSettings):
        base, optional = field_type(f.name)
        default = None if f.default is MISSING else f.default
        out.append((f.name, base, optional, default, f.metadata.get("help", "")))
    return out


def load_bounds(spec: str) -> list[float]:
    """Period boundaries from a JSON list, or from a JSON file (local path or pyarrow URI)."""
    text = spec.strip()
    if not text.startswith(("[", "{")):
        from asmg.objectstore import open_uri

        try:
            filesystem, path = open_uri(text)  # a local path, or s3:// with the AWS variables
            with filesystem.open_input_stream(path) as stream:
                text = stream.read().decode()
        except (OSError, ValueError) as exc:
            raise SettingsError(f"ASMG_PERIOD_BOUNDS: cannot read {spec!r}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"ASMG_PERIOD_BOUNDS: not JSON ({exc.msg})") from None
    if isinstance(data, dict):
        data = data.get("bounds")
    if not isinstance(data, list) or len(data) < 2:
        raise SettingsError("ASMG_PERIOD_BOUNDS: expected a list of at least two boundaries (or {\"bounds\": [...]})")
    bounds = []
    for value in data:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SettingsError(f"ASMG_PERIOD_BOUNDS: {value!r} is not a number of unix seconds")
        bounds.append(value)
    if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise SettingsError("ASMG_PERIOD_BOUNDS: boundaries must strictly increase")
    return bounds


UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_duration(text: str) -> float:
    """'1d', '7d', '12h', '30m', '3600s', '3600', '1w' -> seconds."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or (unit and unit not in UNITS):
        raise SettingsError(f"ASMG_PERIOD_LENGTH={text!r}: not a duration such as 1d, 7d, 12h, 30m or 3600s")
    seconds = float(match.group(1)) * UNITS.get(unit or "s", 1)
    if not math.isfinite(seconds) or seconds <= 0:
        raise SettingsError(f"ASMG_PERIOD_LENGTH={text!r}: must be a positive duration")
    return seconds


def periods_from_options(bounds: str | None = None, length: str | None = None, origin: float | None = None,
                         count: int | None = None) -> PeriodScheme | None:
    """The period options every role reads (ASMG_PERIOD_BOUNDS, or _LENGTH + _ORIGIN [+ _COUNT]); None: unset.

    Bounds are a JSON list or a path/URI of a JSON file (a list or ``{"bounds": [...]}``). Raises
    :class:`SettingsError` naming the variable at fault.
    """
    from asmg.data.periods import PeriodScheme

    if bounds and length:
        raise SettingsError("give either ASMG_PERIOD_BOUNDS or ASMG_PERIOD_LENGTH, not both")
    if bounds:
        return PeriodScheme(bounds=load_bounds(bounds))
    if length:
        return PeriodScheme(length=parse_duration(length), origin=origin, count=count)
    return None


def period_scheme(settings: StreamSettings) -> PeriodScheme:
    """The periods of a role that cannot work without them (windowing, coordinator)."""
    scheme = periods_from_options(settings.period_bounds, settings.period_length, settings.period_origin,
                                  settings.period_count)
    if scheme is None:
        raise SettingsError("set the periods: --period-bounds (ASMG_PERIOD_BOUNDS, e.g. written by "
                            "`asmg worker bounds`) or --period-length with --period-origin")
    return scheme
