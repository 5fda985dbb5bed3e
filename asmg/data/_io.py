"""Shared reading helpers: every failure becomes a DataError that names the file, line and expectation.

The hot paths stay vectorised (pandas column ops); only the error path scans the file to turn a record
index into the physical line a person can open in an editor.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from asmg.data.log import DataError, stable_ids

_PARSER_LINE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EPOCH = pd.Timestamp(0, tz="UTC")
TS_UNITS = ("s", "ms", "us", "ns")
# Numeric timestamps at or above this are taken as milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
MS_THRESHOLD = 10**11


def shown(value: object) -> str:
    """repr of a cell for messages: numpy scalars as plain Python values (1.5, not np.float64(1.5))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def require(path: Path, hint: str) -> Path:
    """Return ``path`` if it is a file, else a DataError with a hint on where to get it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; {hint}")
    return path


def find_file(root: Path, candidates: Sequence[str], hint: str) -> Path:
    """First existing file among ``candidates`` (relative to ``root``), so unpacked layouts both work."""
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    tried = ", ".join(str(root / c) for c in candidates)
    raise DataError(f"{root / candidates[0]}: file not found (tried {tried}); {hint}")


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Open a plain or gzip-compressed text file."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors="replace")
    return path.open(encoding=encoding, errors="replace")


def line_number(path: Path, record: int, header_lines: int = 0) -> int:
    """1-based physical line of data record ``record`` (0-based), skipping blank lines as pandas does.

    Only called on the error path. Quoted fields that span lines are not accounted for.
    """
    seen = -1
    with open_text(path) as handle:
        for number, text in enumerate(handle, start=1):
            if number <= header_lines or not text.strip():
                continue
            seen += 1
            if seen == record:
                return number
    return record + 1 + header_lines


def where(path: Path, record: int, header_lines: int) -> str:
    """'line N' for text files, 'row N' for Parquet (no lines there)."""
    if path.suffix in (".parquet", ".pq"):
        return f"row {record + 1}"
    return f"line {line_number(path, record, header_lines)}"


def parser_error(path: Path, exc: Exception, expected: str) -> DataError:
    """Reword a pandas tokenizer error ("Expected 3 fields in line 5, saw 4") to name file and line."""
    match = _PARSER_LINE.search(str(exc))
    if match:
        want, line, saw = match.groups()
        return DataError(f"{path}: line {line}: {saw} fields; expected {want} ({expected})")
    return DataError(f"{path}: cannot parse ({exc}); expected {expected}")


def read_table(path: Path, sep: str, names: list[str], **kwargs) -> pd.DataFrame:
    """Read a header-less delimited file; malformed rows become a DataError naming the file and line."""
    try:
        engine = "c" if len(sep) == 1 else "python"
        frame = pd.read_csv(path, sep=sep, names=names, header=None, engine=engine, **kwargs)
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise parser_error(path, exc, f"{len(names)} fields {names} per line") from exc
    check_numeric(frame, path, [c for c in names if c in ("user_id", "item_id", "rating", "ts")])
    return frame


def check_numeric(frame: pd.DataFrame, path: Path, columns: Iterable[str], header_lines: int = 0,
                  offset: int = 0) -> None:
    """Convert ``columns`` to numbers in place; the first bad or empty value is a DataError with its line.

    ``offset`` is the index of the frame's first record in the file (for chunked reads).
    """
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: {where(path, offset + row, header_lines)}: column '{column}' has "
                f"{shown(frame[column].iloc[row])}; expected a number"
            )
        frame[column] = values


def check_present(frame: pd.DataFrame, path: Path, columns: Iterable[str], header_lines: int = 0,
                  offset: int = 0) -> None:
    """Fail on the first empty value in ``columns`` (a short row or an empty field)."""
    for column in columns:
        bad = frame[column].isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: {where(path, offset + row, header_lines)}: column '{column}' is empty; "
                            "expected a value (is the line short of fields?)")


def match_columns(available: Sequence[str], wanted: dict[str, str], path: Path) -> dict[str, str]:
    """Map each wanted role to an actual header name: exact match first, then case-insensitive.

    ``wanted`` is role -> column name; a missing column is a DataError naming it and the header.
    """
    lower = {str(c).lower(): str(c) for c in available}
    found: dict[str, str] = {}
    for role, column in wanted.items():
        if column in available:
            found[role] = column
        elif column.lower() in lower:
            found[role] = lower[column.lower()]
        else:
            raise DataError(
                f"{path}: no column '{column}' (for {role}); available columns: {list(available)}")
    return found


def to_int_ids(values: pd.Series, path: Path, column: str, header_lines: int = 0,
               offset: int = 0) -> pd.Series:
    """Integer ids stay, floats must be whole numbers, anything else is hashed with ``stable_ids``."""
    if pd.api.types.is_integer_dtype(values):
        return values.astype("int64")
    if pd.api.types.is_float_dtype(values):
        whole = np.isfinite(values.to_numpy()) & (values.to_numpy() == np.round(values.to_numpy()))
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise DataError(f"{path}: {where(path, offset + row, header_lines)}: column '{column}' has "
                            f"{shown(values.iloc[row])}; expected a whole-number or string id")
        return values.astype("int64")
    return stable_ids(values.astype(str))


def to_unix_seconds(values: pd.Series, path: Path, column: str, ts_format: str | None = None,
                    header_lines: int = 0, offset: int = 0) -> pd.Series:
    """Timestamps to int64 unix seconds (UTC).

    Accepts datetimes, numbers (seconds, or milliseconds when >= 1e11, or the unit given as ``ts_format``
    in s/ms/us/ns) and strings (ISO 8601, or ``ts_format`` as a strftime pattern). Naive times are UTC.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values if values.dt.tz is not None else values.dt.tz_localize("UTC")
        return _seconds(parsed, values, path, column, header_lines, offset)
    textual = pd.api.types.is_string_dtype(values) or pd.api.types.is_object_dtype(values)
    if ts_format in (*TS_UNITS, "s_or_ms") or (ts_format is None and not textual):
        frame = pd.DataFrame({column: values})
        check_numeric(frame, path, [column], header_lines, offset)
        numbers = frame[column]
        unit = ts_format if ts_format in TS_UNITS else (
            "ms" if len(numbers) and float(numbers.abs().max()) >= MS_THRESHOLD else "s")
        scale = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
        return (numbers.astype("float64") // scale).astype("int64") if scale > 1 else numbers.astype("int64")
    if ts_format is None and len(values) and pd.to_numeric(values, errors="coerce").notna().mean() > 0.5:
        return to_unix_seconds(values, path, column, "s_or_ms", header_lines, offset)
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format=ts_format or "ISO8601")
    return _seconds(parsed, values, path, column, header_lines, offset, ts_format)


def _seconds(parsed: pd.Series, raw: pd.Series, path: Path, column: str, header_lines: int, offset: int,
             ts_format: str | None = None) -> pd.Series:
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        expected = (f"a time in format {ts_format!r}" if ts_format
                    else "unix seconds/ms or an ISO 8601 datetime")
        raise DataError(f"{path}: {where(path, offset + row, header_lines)}: column '{column}' has "
                        f"{shown(raw.iloc[row])}; expected {expected}")
    return ((parsed - _EPOCH) // pd.Timedelta(seconds=1)).astype("int64")


def read_csv_chunks(path: Path, expected: str, chunksize: int,
                    **kwargs) -> Iterator[tuple[int, pd.DataFrame]]:
    """Yield (index of first record, frame) per chunk; tokenizer errors become DataErrors with lines."""
    try:
        reader = pd.read_csv(path, chunksize=chunksize, **kwargs)
        start = 0
        for chunk in reader:
            yield start, chunk
            start += len(chunk)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise parser_error(path, exc, expected) from exc
