"""Export: a job's results joined back to its input rows, as JSONL, CSV or Parquet.

    with Ledger.open(spec.ledger_target) as ledger:
        report = export_job(spec, ledger, only_succeeded=True)
    print(report.path, report.rows)

The input is streamed again (with the job's ``where`` and ``limit``), each row's key computed
as compile computes it, and the rows looked up in the ledger a chunk at a time (their request's
status, its answer and parsed output): memory stays flat whatever the job's size. Rows that
share one request all get its answer. The file is written to ``<path>.tmp-…`` and renamed into
place once complete, so a reader never sees half an export, and a failed one leaves the last
good file as it was.

**Columns.** Every input column, as read; then

- ``groqbatch_row_key`` — the row's key (its ``id_column``, else a hash of its content);
- ``groqbatch_status`` — ``succeeded``, ``failed``, ``rejected`` (never became a request),
  ``not_run`` (not in the ledger: the input changed since the last run), or a state still open
  (``pending``, ``queued``, ``submitted``, ``retryable``, ``in_flight``);
- ``groqbatch_answer`` — the message content (for an invalid output, the raw answer; for Groq's
  ``json_validate_failed``, its ``failed_generation``);
- ``groqbatch_error`` — a rejected row's reason, or the request's last error
  (``invalid_output: …`` for an answer that did not parse or fit the output schema);
- ``groqbatch_custom_id``, ``groqbatch_tier`` (``batch``/``flex``/…), ``groqbatch_prompt_tokens``,
  ``groqbatch_completion_tokens`` — the request's, shared by the rows that share it;
- ``groqbatch_tool_calls`` — only for a job with ``[prompt] tools``: the answer's
  ``tool_calls`` (JSON; null when it answered in text);
- the parsed output: with a JSON schema that declares ``properties`` (inline or a pydantic
  model), one column per property, in the schema's order (``parsed_<name>`` when an input
  column has that name); otherwise (``json_object``) one ``groqbatch_parsed`` column holding
  the parsed object. Keys beyond the declared properties are in ``groqbatch_answer``. With
  ``[output] kind = "moderation"``: ``safe``, ``categories`` and ``category_names``;
- ``groqbatch_sample`` — with ``[prompt] samples = N`` (N > 1) only: each input row is written N
  times, once per sample (0 … N-1), each with its own request and answer;
- ``groqbatch_reasoning`` — when the job asks for reasoning (``reasoning_format = "parsed"``,
  ``include_reasoning = true`` or a ``reasoning_effort``) only: the answer's
  ``message.reasoning``.

JSONL keeps values as JSON; CSV writes strings as they are, ``true``/``false``, numbers, and
lists/objects as JSON text, and an empty cell for null; Parquet types the columns (the input
columns from a first pass over the input, the parsed fields from their schema: string,
integer, number, boolean, arrays of those; anything else as JSON text). CSV and Parquet need
their header up front, so for them the input is read twice.

**Filters.** ``only_succeeded`` writes only succeeded rows. ``since_last`` writes only rows
whose answer was received after the job's last export started (every export is recorded in
the ledger); a row whose request was answered before that — a cached answer shared with an
earlier row — is not written again.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from jobs import JobSpec, iter_job_rows
from jobs.outputs import OutputValidator, answer_content
from jobs.requests import row_key_or_position, sample_row_key
from jobs.spec import FORMAT_BY_SUFFIX
from jobs.steps import find_step
from jobs.tools import tool_calls_of
from state import Ledger
from state.engine import chunked
from state.exports import ExportRecord, RowOutcome

from .errors import ConfigError, NoLedgerError, os_error_reason
from .planning import existing_ledger

__all__ = ["CHUNK_ROWS", "FIXED_COLUMNS", "ExportReport", "export_config", "export_job"]

CHUNK_ROWS = 5_000
"""Input rows looked up in the ledger (and written) per chunk."""
FIXED_COLUMNS = (
    "groqbatch_row_key",
    "groqbatch_status",
    "groqbatch_answer",
    "groqbatch_error",
    "groqbatch_custom_id",
    "groqbatch_tier",
    "groqbatch_prompt_tokens",
    "groqbatch_completion_tokens",
)
PARSED_COLUMN = "groqbatch_parsed"
SAMPLE_COLUMN = "groqbatch_sample"
REASONING_COLUMN = "groqbatch_reasoning"
TOOL_CALLS_COLUMN = "groqbatch_tool_calls"
"""A job with ``[prompt] tools``: the answer's ``tool_calls`` (JSON), after the fixed columns."""
NOT_RUN = "not_run"
REJECTED = "rejected"
SUCCEEDED = "succeeded"
FORMATS = ("jsonl", "csv", "parquet")
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


@dataclass(slots=True)
class ExportReport:
    """What an export wrote. ``as_dict()`` is JSON-serialisable."""

    job: str
    path: str
    format: str
    rows: int = 0
    """Rows written."""
    statuses: dict[str, int] = field(default_factory=dict)
    """``groqbatch_status`` → rows written."""
    left_out: int = 0
    """Input rows not written (``only_succeeded`` / ``since_last``)."""
    since: str | None = None
    """With ``since_last``: the start of the last export (UTC), or None if there was none."""
    exported_at: str = ""
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the columns ------------------------------------------------------------------------------


def _merge_kind(old: str | None, value: Any) -> str | None:
    """The Parquet kind of a column after seeing ``value``: bool, int, float, str, or text."""
    if value is None:
        return old
    if isinstance(value, bool):
        new = "bool"
    elif isinstance(value, int):
        new = "int"
    elif isinstance(value, float):
        new = "float"
    elif isinstance(value, str):
        new = "str"
    else:
        new = "text"
    if old is None or old == new:
        return new
    if {old, new} == {"int", "float"}:
        return "float"
    return "text"


def _field_kind(schema: Any) -> Any:
    """The Parquet kind of a parsed field, from its JSON schema: a scalar kind, ("list", kind),
    or "text" (JSON text) for anything else."""
    if not isinstance(schema, Mapping):
        return "text"
    for key in ("anyOf", "oneOf"):  # Optional[X] in a pydantic schema
        branches = [b for b in schema.get(key) or [] if not (isinstance(b, Mapping) and b.get("type") == "null")]
        if key in schema:
            return _field_kind(branches[0]) if len(branches) == 1 else "text"
    kind = schema.get("type")
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        kind = rest[0] if len(rest) == 1 else None
    scalar = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}
    if kind in scalar:
        return scalar[kind]
    if kind == "array":
        item = _field_kind(schema.get("items"))
        if item in ("str", "int", "float", "bool"):
            return ("list", item)
    return "text"


@dataclass(slots=True)
class _Layout:
    """Which columns a file has (known up front for CSV and Parquet), and their kinds."""

    fields: tuple[str, ...]
    """Parsed fields declared by the schema; empty → one ``groqbatch_parsed`` column."""
    field_kinds: dict[str, Any]
    inputs: dict[str, str | None] = field(default_factory=dict)
    """Input column → kind, in order of first appearance (CSV and Parquet only)."""
    samples: int = 1
    """``[prompt] samples``: records per input row, numbered in ``groqbatch_sample`` if > 1."""
    reasoning: bool = False
    """Whether the job asks for reasoning: a ``groqbatch_reasoning`` column."""

    extra: tuple[str, ...] = ()
    """Columns after the fixed ones that only some jobs have (``groqbatch_tool_calls``)."""

    def extra_columns(self) -> list[tuple[str, Any]]:
        """The columns some jobs add, after all others."""
        out: list[tuple[str, Any]] = [(SAMPLE_COLUMN, "int")] if self.samples > 1 else []
        return out + ([(REASONING_COLUMN, "str")] if self.reasoning else [])

    def field_column(self, name: str, input_columns: Any) -> str:
        taken = (name in input_columns or name in FIXED_COLUMNS or name == PARSED_COLUMN
                 or name in self.extra)
        return f"parsed_{name}" if taken else name

    def columns(self) -> list[tuple[str, Any]]:
        """(column, kind) of every column, in order."""
        out: list[tuple[str, Any]] = [(name, kind or "str") for name, kind in self.inputs.items()]
        out += [(name, "int" if name.endswith("_tokens") else "str") for name in FIXED_COLUMNS]
        out += [(name, "text") for name in self.extra]
        if not self.fields:
            return [*out, (PARSED_COLUMN, "text"), *self.extra_columns()]
        out += [(self.field_column(n, self.inputs), self.field_kinds[n]) for n in self.fields]
        return out + self.extra_columns()


def _layout_for(spec: JobSpec, validator: OutputValidator | None) -> _Layout:
    prompt = spec.prompt
    return _Layout(
        validator.fields if validator else (),
        {n: _field_kind(s) for n, s in validator.field_schemas.items()} if validator else {},
        extra=(TOOL_CALLS_COLUMN,) if prompt is not None and prompt.tools else (),
        samples=prompt.samples if prompt is not None else 1,
        reasoning=_wants_reasoning(spec),
    )


def _wants_reasoning(spec: JobSpec) -> bool:
    """Whether answers carry ``message.reasoning``, as asked: ``reasoning_format = "parsed"``,
    ``include_reasoning = true``, or a ``reasoning_effort`` other than ``none`` (GPT-OSS returns
    its reasoning unless told not to) — and not turned off by ``include_reasoning = false``."""
    prompt = spec.prompt
    if prompt is None:
        return False
    if (prompt.include_reasoning is False or prompt.reasoning_format in ("raw", "hidden")
            or prompt.reasoning_effort == "none"):
        return False
    return (prompt.reasoning_format == "parsed" or prompt.include_reasoning is True
            or prompt.reasoning_effort is not None)


def _survey(spec: JobSpec, ledger: Ledger | None = None) -> dict[str, str | None]:
    """A first pass over the input: its columns in order of first appearance, each with a kind.
    With ``ledger``, over the rows of a later step as the ledger keeps them."""
    kinds: dict[str, str | None] = {}
    rows = ((row for _, row in _stored_rows(spec, ledger)) if ledger is not None
            else (row for _index, _line, row in iter_job_rows(spec.input, spec.input_path)))
    for row in rows:
        for name, value in row.items():
            kinds[name] = _merge_kind(kinds.get(name), value)
    return kinds


def _stored_rows(spec: JobSpec, ledger: Ledger) -> Iterator[tuple[str, dict[str, Any]]]:
    """A later step's rows, in the input's order, as the ledger keeps them (the rows that
    reached the step)."""
    for chunk in _keyed_chunks(spec):
        outcomes = ledger.row_outcomes(spec.name, {key for key, _ in chunk})
        for key, _row in chunk:
            outcome = outcomes.get(key)
            if outcome is not None and outcome.data is not None:
                yield key, orjson.loads(outcome.data)


# -- the writers ------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A value as CSV (and Parquet string columns) write it."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | dict):
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return str(value)


class _Writer(Protocol):
    def write(self, records: Sequence[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


class _JsonlWriter:
    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self.file.write(b"".join(orjson.dumps(r, default=str, option=_JSON_OPTIONS) for r in records))

    def close(self) -> None:
        pass


class _CsvWriter:
    def __init__(self, file: IO[bytes], columns: list[str]) -> None:
        self.text = io.TextIOWrapper(file, encoding="utf-8", newline="")
        self.columns = columns
        self.csv = csv.writer(self.text)
        self.csv.writerow(columns)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self.csv.writerows([_text(record.get(c)) for c in self.columns] for record in records)

    def close(self) -> None:
        self.text.flush()
        self.text.detach()  # the binary file is the caller's to close


class _ParquetWriter:
    def __init__(self, file: IO[bytes], columns: list[tuple[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.columns = columns
        self.schema = pa.schema([(name, self._type(kind)) for name, kind in columns])
        self.writer = pq.ParquetWriter(file, self.schema)

    def _type(self, kind: Any) -> Any:
        pa = self.pa
        types = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64()}
        if isinstance(kind, tuple):
            return pa.list_(types.get(kind[1], pa.string()))
        return types.get(kind, pa.string())

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        arrays = [
            self.pa.array([_typed(record.get(name), kind) for record in records], type=typ)
            for (name, kind), typ in zip(self.columns, self.schema.types, strict=True)
        ]
        self.writer.write_batch(self.pa.record_batch(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def _typed(value: Any, kind: Any) -> Any:
    """``value`` as a Parquet column of ``kind`` holds it; None if it does not fit (a parsed
    output stored under an earlier schema, say)."""
    if value is None:
        return None
    if isinstance(kind, tuple):
        if not isinstance(value, list):
            return None
        return [_typed(item, kind[1]) for item in value]
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind == "float":
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    return _text(value)


def _open_writer(fmt: str, file: IO[bytes], layout: _Layout) -> _Writer:
    if fmt == "jsonl":
        return _JsonlWriter(file)
    if fmt == "csv":
        return _CsvWriter(file, [name for name, _ in layout.columns()])
    return _ParquetWriter(file, layout.columns())


# -- the rows ---------------------------------------------------------------------------------


def _answer(body: Any) -> str | None:
    content = answer_content(body)
    if content is None and isinstance(body, Mapping):
        error = body.get("error")
        generated = error.get("failed_generation") if isinstance(error, Mapping) else None
        return generated if isinstance(generated, str) else None
    return content


def _status(outcome: RowOutcome | None) -> str:
    if outcome is None:
        return NOT_RUN
    if outcome.reason is not None or outcome.custom_id is None:
        return REJECTED
    if outcome.kept_answer:  # asked again by --refresh: the earlier answer stands until replaced
        return SUCCEEDED
    return outcome.status or NOT_RUN


def _record(row: Mapping[str, Any], key: str, outcome: RowOutcome | None, status: str,
            layout: _Layout, validator: OutputValidator | None) -> dict[str, Any]:
    record = dict(row)
    body = orjson.loads(outcome.body) if outcome is not None and outcome.body else None
    answer = _answer(body)
    parsed: Any = None
    if outcome is not None and status == SUCCEEDED:
        if outcome.parsed is not None:
            parsed = orjson.loads(outcome.parsed)
        elif validator is not None:  # answered before the job had its output schema
            parsed = validator.parsed_of(body)
    error = None
    if outcome is not None and status != SUCCEEDED:
        error = outcome.reason if status == REJECTED else outcome.last_error
    record.update(
        groqbatch_row_key=key,
        groqbatch_status=status,
        groqbatch_answer=answer,
        groqbatch_error=error,
        groqbatch_custom_id=outcome.custom_id if outcome is not None else None,
        groqbatch_tier=outcome.tier if outcome is not None else None,
        groqbatch_prompt_tokens=outcome.prompt_tokens if outcome is not None else None,
        groqbatch_completion_tokens=outcome.completion_tokens if outcome is not None else None,
    )
    if TOOL_CALLS_COLUMN in layout.extra:
        record[TOOL_CALLS_COLUMN] = tool_calls_of(body)
    if not layout.fields:
        record[PARSED_COLUMN] = parsed
    else:
        inputs = layout.inputs or row
        values = parsed if isinstance(parsed, Mapping) else {}
        for name in layout.fields:
            record[layout.field_column(name, inputs)] = values.get(name)
    if layout.reasoning:
        record[REASONING_COLUMN] = _reasoning(body)
    return record


def _reasoning(body: Any) -> str | None:
    """The ``message.reasoning`` of a chat completion's first choice, if it has one."""
    choices = body.get("choices") if isinstance(body, Mapping) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, Mapping) else None
    reasoning = message.get("reasoning") if isinstance(message, Mapping) else None
    return reasoning if isinstance(reasoning, str) else None


def _keyed_chunks(spec: JobSpec) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The job's input rows, each with its key as compile computes it, a chunk at a time."""
    id_column = spec.input.id_column
    keyed = ((row_key_or_position(row, id_column, index), row)
             for index, _line, row in iter_job_rows(spec.input, spec.input_path))
    return chunked(keyed, CHUNK_ROWS)


def _joined_chunks(spec: JobSpec, ledger: Ledger, layout: _Layout, validator: OutputValidator | None,
                   report: ExportReport, *, only_succeeded: bool,
                   since: float | None, stored: bool = False) -> Iterator[list[dict[str, Any]]]:
    """The job's input rows joined to their outcomes, a chunk at a time, filtered. ``stored``
    (a later step of a multi-step job): the rows that reached the step, as it read them."""
    samples = range(layout.samples)
    for chunk in _keyed_chunks(spec):
        outcomes = ledger.row_outcomes(
            spec.name, {sample_row_key(key, i) for key, _ in chunk for i in samples})
        records = []
        for key, row in chunk:
            for sample in samples:
                outcome = outcomes.get(sample_row_key(key, sample))
                source = row
                if stored:
                    if outcome is None or outcome.data is None:
                        continue  # never reached this step (left out upstream, or not yet)
                    source = orjson.loads(outcome.data)
                status = _status(outcome)
                if (only_succeeded and status != SUCCEEDED) or (since is not None and not (
                        outcome is not None and outcome.received_at is not None
                        and outcome.received_at > since)):
                    report.left_out += 1
                    continue
                record = _record(source, key, outcome, status, layout, validator)
                if layout.samples > 1:
                    record[SAMPLE_COLUMN] = sample
                records.append(record)
                report.statuses[status] = report.statuses.get(status, 0) + 1
        yield records


def iter_results(spec: JobSpec, ledger: Ledger, *, only_succeeded: bool = False,
                 stored_rows: bool = False) -> Iterator[dict[str, Any]]:
    """Each input row as a dict joined to its answer — the records :func:`export_job` writes
    to JSONL — streamed, without writing a file or recording an export. ``stored_rows``: see
    :func:`export_job`."""
    validator = OutputValidator.for_job(spec)
    layout = _layout_for(spec, validator)
    report = ExportReport(job=spec.name, path="", format="jsonl", since=None, exported_at="")
    for records in _joined_chunks(spec, ledger, layout, validator, report,
                                  only_succeeded=only_succeeded, since=None, stored=stored_rows):
        yield from records


# -- the entry points -------------------------------------------------------------------------


def _destination(spec: JobSpec, path: str | Path | None, fmt: str | None) -> tuple[Path, str]:
    """Where to write and in which format: the given path (relative to the working directory)
    or ``[output].path``; the given format, else the path's suffix's, else ``[output].format``."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use jsonl, csv or parquet",
                          field="output.format")
    if path is not None:
        target = Path(path).expanduser()
        chosen = fmt or FORMAT_BY_SUFFIX.get(target.suffix.lower())
        if chosen is None:
            raise ConfigError(f"cannot tell the export format from {str(target)!r}; "
                              "give --format jsonl, csv or parquet", field="output.path")
        return target, chosen
    target = spec.output_path
    if fmt is not None and fmt != spec.output_format:
        target = target.with_suffix(f".{fmt}")
    return target, fmt or spec.output_format


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Make the folder, temp file, writes or rename of the export fail as a :class:`ConfigError`
    naming ``target`` (an unwritable or misnamed place is the config's or the ``-o``'s)."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write the export to {target}: {os_error_reason(exc, target)}",
                          field="output.path") from exc


def _utc(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, tz=UTC).isoformat(timespec="milliseconds")


def export_job(spec: JobSpec, ledger: Ledger, *, only_succeeded: bool = False,
               since_last: bool = False, path: str | Path | None = None,
               format: str | None = None, stored_rows: bool = False) -> ExportReport:
    """Write ``spec``'s results joined to its input rows (see the module docstring).

    ``path`` and ``format`` override ``[output]``. Raises :class:`ConfigError` for an unknown
    format, Parquet without pyarrow, an input that cannot be read, or a place that cannot be
    written (field ``output.path``, naming it); nothing is left behind. ``stored_rows``: ``spec``
    is a later step of a multi-step job, whose rows are read from the ledger
    (:func:`export_config` with ``step``).
    """
    started = time.monotonic()
    target, fmt = _destination(spec, path, format)
    target = Path(os.path.abspath(target))  # "configs/../out/x.jsonl" → "out/x.jsonl", absolute
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ConfigError("writing Parquet needs pyarrow: pip install 'groqbatch[parquet]'",
                              field="output.format") from None
    validator = OutputValidator.for_job(spec)
    previous = ledger.last_export(spec.name) if since_last else None
    since = previous.exported_at if previous is not None else None
    exported_at = time.time()  # before reading: an answer arriving meanwhile is not missed
    report = ExportReport(job=spec.name, path=str(target), format=fmt,
                          since=_utc(since) if since is not None else None,
                          exported_at=_utc(exported_at))
    layout = _layout_for(spec, validator)
    if fmt != "jsonl":
        layout.inputs = _survey(spec, ledger if stored_rows else None)
    temporary = target.with_name(f"{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    with _writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        file = temporary.open("wb")
    try:
        with file:
            with _writing(target):
                writer = _open_writer(fmt, file, layout)
            for records in _joined_chunks(spec, ledger, layout, validator, report,
                                          only_succeeded=only_succeeded, since=since,
                                          stored=stored_rows):
                if records:
                    with _writing(target):  # not around the reads: their errors are their own
                        writer.write(records)
                report.rows += len(records)
            with _writing(target):
                writer.close()
                file.flush()
                os.fsync(file.fileno())
        with _writing(target):
            os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    ledger.record_export(ExportRecord(spec.name, exported_at, str(target), fmt, report.rows))
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


def export_config(spec: JobSpec, *, step: str | None = None, **options: Any) -> ExportReport:
    """:func:`export_job` on the job's own ledger, which must exist (the job has run).

    A job with ``[[steps]]`` exports one step: ``step`` by name, else the last; its rows are
    those that reached it, each as the step read it (see :mod:`jobs.steps`)."""
    chosen = find_step(spec, step) if spec.steps or step is not None else None
    ledger = existing_ledger(spec)
    if ledger is None:
        raise NoLedgerError(spec.name, spec.ledger_target, what="there is nothing to export")
    with ledger:
        if chosen is not None:
            return export_job(chosen.spec, ledger, stored_rows=chosen.index > 0, **options)
        return export_job(spec, ledger, **options)
