"""The period store: each period's samples as Parquet, one file per interactions partition.

Layout under the store URI (a local path, or any URI pyarrow's filesystems open: s3://, gs://, hdfs://)::

    period-000005/part-00000.parquet
    period-000005/part-00001.parquet

A file's name depends only on (period, partition), and its content only on that partition's samples of
that period (rows sorted by ts, user_id, item_id, label; no timestamps or pandas metadata in the file),
so rewriting it after a restart yields the same bytes. On a local disk writes go to a temporary name first
and are moved into place; on an object store (no rename) a part is one PUT, visible once complete
(asmg/objectstore.py). Either way a reader never sees half a file, and a reader trusts only the parts a
period record names, with their sha256: the record is published after every part is written.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs

from asmg import objectstore
from asmg.ragged import list_array
from streams.wire.records import PART_FILE, combined_sha256

SORT_KEYS = ["ts", "user_id", "item_id", "label"]
SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("item_id", pa.int64()), ("ts", pa.int64()), ("label", pa.float32()),
    ("history", pa.list_(pa.int64())), ("categories", pa.list_(pa.int64())), ("period", pa.int32()),
])
SCALARS = {"user_id": "int64", "item_id": "int64", "ts": "int64", "label": "float32", "period": "int32"}


class PeriodStoreError(RuntimeError):
    """A period's files are missing or do not match the checksums of its record."""


def open_uri(uri: str) -> tuple[fs.FileSystem, str]:
    """(filesystem, path) of a store URI (asmg/objectstore.py: local, s3:// with the AWS variables, ...)."""
    try:
        return objectstore.open_uri(uri)
    except objectstore.StoreConfigError as exc:
        raise PeriodStoreError(str(exc)) from None


SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_~+=,@.-]+")


def within_store(uri: str, store: str) -> bool:
    """True when ``uri`` names a place inside ``store`` (same scheme and host; a path below the store's whose
    segments are plain names: no ``.`` or ``..``, no empty segment, no query, fragment, percent escape or
    backslash): records on a topic name files, and a record must not make a role open anything else (a query
    such as ``?endpoint_override=`` would choose another host)."""
    if not isinstance(uri, str) or not uri or not isinstance(store, str) or not store:
        return False
    uri, store = uri.rstrip("/"), store.rstrip("/")
    if "://" in store or "://" in uri:
        if "://" not in store or not uri.startswith(store + "/"):
            return False
        rest = uri[len(store) + 1:]
    else:
        root = os.path.abspath(store)
        if not os.path.isabs(uri) or not uri.startswith(root.rstrip(os.sep) + os.sep):
            return False
        rest = uri[len(root.rstrip(os.sep)) + 1:]
    segments = rest.split("/")
    return all(SAFE_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments)


def ragged_samples_table(user: np.ndarray, item: np.ndarray, ts: np.ndarray, label: np.ndarray,
                         history: tuple[np.ndarray, np.ndarray], categories: tuple[np.ndarray, np.ndarray],
                         period: int, canonical: bool = True) -> pa.Table:
    """Columns with ragged (lengths, flat values) lists -> the store's schema (and canonical row order, unless
    ``canonical`` is False: :meth:`PeriodStore.write_partition` sorts what it writes)."""
    table = pa.Table.from_arrays([
        pa.array(np.asarray(user, dtype=np.int64)), pa.array(np.asarray(item, dtype=np.int64)),
        pa.array(np.asarray(ts, dtype=np.int64)), pa.array(np.asarray(label, dtype=np.float32)),
        list_array(*history), list_array(*categories), pa.array(np.full(len(user), period, dtype=np.int32)),
    ], schema=SCHEMA)
    return sort_canonical(table) if canonical else table


def sort_canonical(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in SORT_KEYS])
    return table.take(order)


def table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()  # not a Python file: the encoding never takes the GIL back to write
    pq.write_table(table.replace_schema_metadata(None), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class PeriodStore:
    uri: str

    def __post_init__(self) -> None:
        uri = self.uri.rstrip("/")
        # absolute for a local store: period records are read by processes with other working directories
        object.__setattr__(self, "uri", uri if "://" in uri else os.path.abspath(uri))

    @property
    def _fs(self) -> tuple[fs.FileSystem, str]:
        return open_uri(self.uri)

    def period_uri(self, period: int) -> str:
        return f"{self.uri}/period-{period:06d}"

    @staticmethod
    def part_name(partition: int) -> str:
        return f"part-{partition:05d}.parquet"

    def _part_path(self, period: int, partition: int) -> tuple[fs.FileSystem, str]:
        filesystem, root = self._fs
        return filesystem, f"{root}/period-{period:06d}/{self.part_name(partition)}"

    def write_partition(self, period: int, partition: int, table: pa.Table) -> dict[str, Any]:
        """Write (or rewrite identically) one partition's samples of a period, in canonical row order; returns its
        part entry."""
        data = table_bytes(sort_canonical(table))
        filesystem, path = self._part_path(period, partition)
        objectstore.make_dirs(filesystem, path.rsplit("/", 1)[0])
        objectstore.write_atomic(filesystem, path, data)
        return {"partition": partition, "file": self.part_name(partition), "rows": table.num_rows,
                "sha256": hashlib.sha256(data).hexdigest()}

    def exists(self, period: int, partition: int) -> bool:
        filesystem, path = self._part_path(period, partition)
        return filesystem.get_file_info(path).type == fs.FileType.File

    def read_bytes(self, period: int, partition: int) -> bytes:
        filesystem, path = self._part_path(period, partition)
        try:
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
        except (FileNotFoundError, OSError) as exc:
            raise PeriodStoreError(f"cannot read {path}: {exc}") from exc

    def describe(self, period: int, partitions: int) -> list[dict[str, Any]] | None:
        """Part entries of every partition's file of ``period``, or None while any file is missing."""
        if not all(self.exists(period, p) for p in range(partitions)):
            return None
        parts = []
        for p in range(partitions):
            data = self.read_bytes(period, p)
            rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
            parts.append({"partition": p, "file": self.part_name(p), "rows": rows,
                          "sha256": hashlib.sha256(data).hexdigest()})
        return parts

    def read_period_table(self, period: int, partitions: int) -> pa.Table:
        tables = [pq.read_table(io.BytesIO(self.read_bytes(period, p))) for p in range(partitions)]
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


class PartitionWriter(Protocol):
    """Where the windowing core puts a closed period's samples: a :class:`PeriodStore` or a
    :class:`BackgroundWriter` in front of one."""

    def write_partition(self, period: int, partition: int, table: pa.Table) -> object: ...


class BackgroundWriter:
    """A store's partition files written in one background thread, while the caller goes on.

    Why: sorting, Parquet encoding, hashing and writing a closed period's file (~1.5 CPU-s per 1M events)
    release the GIL, so on a second core they overlap the windowing loop's next partitions instead of
    stopping it. A file must be complete before the transaction that says its period is closed commits:
    :meth:`wait` before committing (it re-raises a failed write).
    """

    def __init__(self, store: PeriodStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="period-writer")
        self._pending: list[Future[dict[str, Any]]] = []

    def write_partition(self, period: int, partition: int, table: pa.Table) -> Future[dict[str, Any]]:
        future = self._pool.submit(self.store.write_partition, period, partition, table)
        self._pending.append(future)
        return future

    def wait(self) -> list[dict[str, Any]]:
        """The part entries of every write since the last wait, once all are done; the first failure raised."""
        pending, self._pending = self._pending, []
        return [future.result() for future in pending]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def read_period_record(record: dict[str, Any]) -> pd.DataFrame:
    """The samples a period record points at, verified against its checksums, in canonical order
    (ts, user_id, item_id, label), so the order does not depend on how events were partitioned."""
    uri = record["uri"].rstrip("/")
    filesystem, root = open_uri(uri)
    parts = record.get("parts")
    if parts is None:
        parts = [{"partition": p, "file": PeriodStore.part_name(p)} for p in range(record["partitions"])]
    tables = []
    for part in parts:
        if not isinstance(part.get("file"), str) or not PART_FILE.fullmatch(part["file"]):
            raise PeriodStoreError(f"period {record['period']}: part file {str(part.get('file'))[:80]!r} is not a "
                                   "part-NNNNN.parquet name")
        path = f"{root}/{part['file']}"
        try:
            with filesystem.open_input_stream(path) as stream:
                data = stream.read()
        except (FileNotFoundError, OSError) as exc:
            raise PeriodStoreError(f"period {record['period']}: cannot read {path}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if "sha256" in part and digest != part["sha256"]:
            raise PeriodStoreError(f"period {record['period']}: {path} sha256 {digest} != record's {part['sha256']}")
        part.setdefault("sha256", digest)
        tables.append(pq.read_table(io.BytesIO(data)))
    if "rows" in parts[0] and combined_sha256(parts) != record["sha256"]:
        raise PeriodStoreError(f"period {record['period']}: parts do not match the record's sha256")
    table = sort_canonical(pa.concat_tables(tables)) if tables else SCHEMA.empty_table()
    if table.num_rows != record["samples"]:
        raise PeriodStoreError(f"period {record['period']}: {table.num_rows} samples, record says "
                               f"{record['samples']}")
    return table_to_frame(table)


def table_to_frame(table: pa.Table) -> pd.DataFrame:
    """As the offline cache reads its Parquet: list columns Arrow-backed, scalars as numpy dtypes."""
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    return frame.astype(SCALARS).reset_index(drop=True)
