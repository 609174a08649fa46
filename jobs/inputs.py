"""Streaming readers of input datasets: JSONL, CSV, Parquet. Never a whole file in memory.

Each reader yields ``(row_index, source_line, row)``: ``row_index`` counts data rows from 0,
``source_line`` is the 1-based line of the row in the file (for Parquet, the 1-based row
number), ``row`` is a ``dict`` of column → value::

    for index, line, row in read_rows(Path("data/reviews.jsonl")):
        ...

A file that cannot be read (a broken JSONL line, bad UTF-8, no pyarrow for Parquet) raises
:class:`~pipeline.errors.InputError` naming the file and the line.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from jobs.spec import FORMAT_BY_SUFFIX, InputSpec
from pipeline.errors import InputError

__all__ = ["Row", "iter_job_rows", "read_csv", "read_jsonl", "read_parquet", "read_rows"]

Row = tuple[int, int, dict[str, Any]]

_PARQUET_BATCH_ROWS = 4096


def read_jsonl(path: Path) -> Iterator[Row]:
    """One JSON object per line; blank lines are skipped."""
    index = 0
    with _open_binary(path) as file:
        for line_no, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"not valid JSON: {exc}", path=path, line=line_no) from None
            if not isinstance(row, dict):
                raise InputError(
                    f"expected a JSON object per line, got {type(row).__name__}",
                    path=path,
                    line=line_no,
                )
            yield index, line_no, row
            index += 1


def read_csv(path: Path) -> Iterator[Row]:
    """A header line, then rows; UTF-8 (a BOM is tolerated). Every value is a string."""
    with _open_binary(path) as file:
        reader = csv.DictReader(_utf8_lines(file, path), strict=True)
        try:
            if reader.fieldnames is None:  # reads the header line
                return
        except csv.Error as exc:
            raise InputError(f"bad CSV header: {exc}", path=path, line=1) from None
        index = 0
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(f"bad CSV: {exc}", path=path, line=start) from None
            if None in row:
                raise InputError("more fields than the header has", path=path, line=start)
            yield index, start, row
            index += 1


def _utf8_lines(file: Any, path: Path) -> Iterator[str]:
    """Decode line by line, so a bad byte is reported on its own line."""
    for line_no, raw in enumerate(file, start=1):
        try:
            yield raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"not UTF-8: {exc.reason} at byte {exc.start}", path=path, line=line_no
            ) from None


def read_parquet(path: Path) -> Iterator[Row]:
    """Record batches of a Parquet file, row by row. Needs ``groqbatch[parquet]``."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            "reading Parquet needs pyarrow: pip install 'groqbatch[parquet]'", path=path
        ) from None
    try:
        parquet = pq.ParquetFile(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read as Parquet: {exc}", path=path) from None
    index = 0
    with parquet:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                yield index, index + 1, row
                index += 1


_READERS = {"jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet}


def read_rows(path: Path, format: str | None = None) -> Iterator[Row]:
    """Rows of ``path`` in ``format`` (by default from its suffix)."""
    fmt = format or FORMAT_BY_SUFFIX.get(path.suffix.lower())
    reader = _READERS.get(fmt or "")
    if reader is None:
        raise InputError(
            f"unknown input format {fmt or path.suffix!r}; use jsonl, csv or parquet", path=path
        )
    if not path.is_file():
        raise InputError("input file not found", path=path)
    return reader(path)


def iter_job_rows(input_spec: InputSpec, path: Path) -> Iterator[Row]:
    """The rows a job uses: those passing ``where``, at most ``limit`` of them."""
    rows = read_rows(path, input_spec.resolved_format)
    if input_spec.where:
        rows = (item for item in rows if input_spec.keeps(item[2]))
    if input_spec.limit is not None:
        rows = itertools.islice(rows, input_spec.limit)
    return rows


def _open_binary(path: Path) -> Any:
    try:
        return path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=path) from None
