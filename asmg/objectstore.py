"""The filesystem behind a store URI: a local path, or ``s3://bucket/prefix`` on AWS or an S3-compatible server.

Why one place: every store (period samples, model artifacts, checkpoints) is written by one role and read by
others on other hosts, so they must agree on how a URI is opened, with which credentials, and how a write
becomes visible. S3 settings are the usual AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for an S3-compatible
server such as MinIO, SeaweedFS or S3Proxy; ``ASMG_S3_ENDPOINT`` wins over it), plus bounded waits:
``ASMG_S3_CONNECT_TIMEOUT`` (s, default 5), ``ASMG_S3_REQUEST_TIMEOUT`` (s, default 30) and
``ASMG_S3_RETRIES`` (attempts per request, default 3). A URI's own query (``?endpoint_override=...``) is
refused: where a store lives is configuration, never something a record can choose.

Writes: on a local disk a file is written beside and renamed into place; an object store has no rename
(S3's "move" is copy + delete) but a PUT becomes visible only once complete, so an object is written
directly under its final key. Either way a reader never sees half an object; a bundle or period becomes
valid only when its manifest / Kafka record (written last, naming the data keys and their sha256) exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import urlsplit

from pyarrow import fs

ENDPOINT_ENV = "ASMG_S3_ENDPOINT"
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
          "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", ENDPOINT_ENV, "ASMG_S3_CONNECT_TIMEOUT",
          "ASMG_S3_REQUEST_TIMEOUT", "ASMG_S3_RETRIES")


class StoreConfigError(ValueError):
    """A store URI or an S3 setting is invalid; the message names the URI or variable at fault."""


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StoreConfigError(f"{name}={raw!r}: expected a number") from None
    if not 0 < value <= 3600:
        raise StoreConfigError(f"{name}={raw!r}: expected a value in (0, 3600]")
    return value


@lru_cache(maxsize=8)
def _s3(settings: tuple[tuple[str, str], ...]) -> fs.S3FileSystem:
    env = dict(settings)
    kwargs: dict[str, object] = {
        "connect_timeout": _number(env, "ASMG_S3_CONNECT_TIMEOUT", 5.0),
        "request_timeout": _number(env, "ASMG_S3_REQUEST_TIMEOUT", 30.0),
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=int(_number(env, "ASMG_S3_RETRIES", 3))),
    }
    endpoint = env.get(ENDPOINT_ENV) or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
            raise StoreConfigError(f"S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
        # S3-compatible servers vary in their support of the newer streaming checksums (trailing CRC headers);
        # ask the SDK for checksums only where the API requires them (the SDK reads these from the process)
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    elif endpoint:
        kwargs["region"] = "us-east-1"  # a compatible server ignores it; without one the SDK would probe AWS
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = env["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
    return fs.S3FileSystem(**kwargs)  # type: ignore[arg-type]


def s3_filesystem(env: Mapping[str, str] | None = None) -> fs.S3FileSystem:
    """An S3 filesystem configured from the AWS variables and the ASMG_S3_* limits (cached per setting)."""
    env = os.environ if env is None else env
    return _s3(tuple((name, env[name].strip()) for name in S3_ENV if env.get(name, "").strip()))


def open_uri(uri: str) -> tuple[fs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an ``s3://bucket/key`` URI; other schemes go to
    pyarrow as they are (gs://, hdfs://), with their own credentials."""
    if "://" not in uri:
        return fs.LocalFileSystem(), os.path.abspath(uri)
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        raise StoreConfigError(f"store URI {uri[:200]!r}: no query or fragment allowed (configure the endpoint "
                               f"and credentials with {ENDPOINT_ENV} / the AWS variables)")
    if parts.scheme == "s3":
        if not parts.netloc or "@" in parts.netloc:
            raise StoreConfigError(f"store URI {uri[:200]!r}: expected s3://bucket/prefix")
        return s3_filesystem(), f"{parts.netloc}{parts.path}".rstrip("/")
    return fs.FileSystem.from_uri(uri)


def make_dirs(filesystem: fs.FileSystem, path: str) -> None:
    """Create a folder on a real filesystem; nothing on an object store (keys need no folders, and marker
    objects only clutter listings)."""
    if isinstance(filesystem, fs.LocalFileSystem):
        filesystem.create_dir(path, recursive=True)


def write_atomic(filesystem: fs.FileSystem, path: str, data: bytes, tmp_suffix: str | None = None) -> None:
    """Write ``data`` so a reader sees the old object, nothing, or all of the new one."""
    if not isinstance(filesystem, fs.LocalFileSystem):
        with filesystem.open_output_stream(path) as stream:  # visible only once the upload completes
            stream.write(data)
        return
    tmp = path + (tmp_suffix or f".tmp-{os.getpid()}")
    with filesystem.open_output_stream(tmp) as stream:
        stream.write(data)
    filesystem.move(tmp, path)
