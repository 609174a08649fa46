"""Streaming readers of input datasets: JSONL, CSV, Parquet. Never a whole file in memory.

Each reader yields ``(row_index, source_line, row)``: ``row_index`` counts data rows from 0,
``source_line`` is the 1-based line of the row in the file (for Parquet, the 1-based row
number), ``row`` is a ``dict`` of column → value::

    for index, line, row in read_rows(Path("data/reviews.jsonl")):
        ...

A file that cannot be read (a broken JSONL line, bad UTF-8, no pyarrow for Parquet) raises
:class:`~pipeline.errors.InputError` naming the file and the line.

**Duplicate ids.** With an ``id_column``, a row's id is its key in the ledger, so two rows
with one id would be one row (the second given the first's answer). :func:`iter_job_rows`
therefore yields one row per id: ``[input] on_duplicate_id = "error"`` (the default) raises
an ``InputError`` naming both lines, before a row is used; ``"first"`` / ``"last"`` keep the
first / last row of each id and leave the others out (:func:`find_duplicate_ids` counts
them). Compile, validate, export and evaluate all read rows through it, so they agree on
which rows a job has. Without an ``id_column`` a row's key is a hash of its content:
identical rows are the same row, and nothing is left out.
"""

from __future__ import annotations

import csv
import itertools
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from jobs.requests import row_key_for
from jobs.spec import FORMAT_BY_SUFFIX, InputSpec
from jobs.template import RowRejected
from pipeline.errors import InputError

__all__ = [
    "DuplicateIds",
    "Row",
    "find_duplicate_ids",
    "iter_job_rows",
    "read_csv",
    "read_jsonl",
    "read_parquet",
    "read_rows",
]

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


def iter_job_rows(
    input_spec: InputSpec, path: Path, duplicates: DuplicateIds | None = None
) -> Iterator[Row]:
    """The rows a job uses: those passing ``where``, at most ``limit`` of them, one per id.

    ``duplicates`` is what :func:`find_duplicate_ids` found, for a caller that also wants its
    count; without it they are found here (so a duplicate id raises before any row is read).
    """
    if duplicates is None:
        duplicates = find_duplicate_ids(input_spec, path)
    rows = _filtered_rows(input_spec, path)
    if not duplicates.kept_lines:
        return rows
    id_column = input_spec.id_column
    return (item for item in rows if duplicates.keeps(_row_id(item[2], id_column), item[1]))


def _filtered_rows(input_spec: InputSpec, path: Path) -> Iterator[Row]:
    rows = read_rows(path, input_spec.resolved_format)
    if input_spec.where:
        rows = (item for item in rows if input_spec.keeps(item[2]))
    if input_spec.limit is not None:
        rows = itertools.islice(rows, input_spec.limit)
    return rows


@dataclass(frozen=True, slots=True)
class DuplicateIds:
    """The ids more than one row carries, with the ``source_line`` of the row kept for each."""

    kept_lines: dict[str, int] = field(default_factory=dict)
    left_out: int = 0
    """Rows left out: not the first (``"first"``) or not the last (``"last"``) of their id."""

    def keeps(self, row_id: str | None, source_line: int) -> bool:
        """Whether the row with ``row_id`` at ``source_line`` is one the job uses."""
        kept = self.kept_lines.get(row_id) if row_id is not None else None
        return kept is None or kept == source_line


def find_duplicate_ids(input_spec: InputSpec, path: Path) -> DuplicateIds:
    """The job's rows whose ``id_column`` value another row has too, by ``on_duplicate_id``.

    With ``"error"`` the first repeated id raises :class:`~pipeline.errors.InputError` naming
    its line and the line it was first seen at. Without an ``id_column``, nothing is a
    duplicate and the input is not read.

    Two streamed passes, so memory stays flat at any size and the answer is exact. A dict of
    every id → line would hold the whole id column; instead pass 1 keeps only each id's
    ``hash()`` (8 bytes a row in arrays, where a set of ints costs ~75) and finds the hashes
    seen twice. Those are suspects, not proof: pass 2, run only when there are any, compares
    the suspects' ids exactly, so a hash collision never drops a row, and keeps lines only for
    them. A pass before the rows are used (rather than checking while compiling) is what lets
    ``"last"`` know a row will be replaced, lets ``"error"`` stop before anything is recorded,
    and gives export the same answer from the input alone. It costs one extra read of the
    input, without rendering (a few % of a compile).
    """
    id_column = input_spec.id_column
    if id_column is None:
        return DuplicateIds()
    suspects = _repeated_hashes(
        hash(row_id)
        for _, _, row in _filtered_rows(input_spec, path)
        if (row_id := _row_id(row, id_column)) is not None
    )
    if not suspects:
        return DuplicateIds()
    first_lines: dict[str, int] = {}
    last_lines: dict[str, int] = {}
    left_out = 0
    for _, line, row in _filtered_rows(input_spec, path):
        row_id = _row_id(row, id_column)
        if row_id is None or hash(row_id) not in suspects:
            continue
        first = first_lines.setdefault(row_id, line)
        if first == line:
            continue
        if input_spec.on_duplicate_id == "error":
            raise InputError(
                f"duplicate id {_quoted(row_id)} (first seen at line {first})",
                path=path,
                line=line,
                hint='set [input] on_duplicate_id = "first" or "last" to keep one',
            )
        left_out += 1
        last_lines[row_id] = line
    if input_spec.on_duplicate_id == "last":
        return DuplicateIds(last_lines, left_out)
    return DuplicateIds({row_id: first_lines[row_id] for row_id in last_lines}, left_out)


_HASH_BUCKETS = 256


def _repeated_hashes(hashes: Iterator[int]) -> set[int]:
    """The values that occur more than once in ``hashes``.

    Kept in arrays of 64-bit ints split by their low byte; each array is sorted on its own,
    so no more than 1/256 of them are ever Python ints at once.
    """
    buckets = [array("q") for _ in range(_HASH_BUCKETS)]
    for value in hashes:
        buckets[value % _HASH_BUCKETS].append(value)
    repeated: set[int] = set()
    for index, bucket in enumerate(buckets):
        ordered = sorted(bucket)
        buckets[index] = array("q")  # free it before sorting the next
        repeated.update(a for a, b in itertools.pairwise(ordered) if a == b)
    return repeated


def _row_id(row: dict[str, Any], id_column: str | None) -> str | None:
    """The row's key as compile computes it; None for a row with no id (rejected, never a
    duplicate: it is recorded under its position)."""
    if id_column is None:
        return None
    try:
        return row_key_for(row, id_column)
    except RowRejected:
        return None


def _quoted(row_id: str, max_chars: int = 80) -> str:
    if len(row_id) > max_chars:
        row_id = row_id[: max_chars - 1] + "…"
    return orjson.dumps(row_id).decode()


def _open_binary(path: Path) -> Any:
    try:
        return path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=path) from None
