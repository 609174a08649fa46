"""Retry: send a job's failed requests again (``groqbatch retry``).

    report = anyio.run(lambda: retry_job(spec, invalid_output=False))
    print(report.marked["total"], report.summary.requests if report.summary else None)

Failed requests are final; a plain ``run`` never sends them again, and ``--refresh`` sends
*everything* again. ``retry`` reopens only the failed ones — failed → pending, attempts from 0,
the stored error (or the answer that did not fit the schema) copied to ``result_history`` —
in one guarded update (:meth:`state.Ledger.reopen_failed`), then runs the job as ``run`` does,
so they go through a batch (and the fallback) like new requests. Succeeded and open requests
are never touched, so it is safe while other workers run the job: they pick the reopened
requests up too, and none is sent twice.

``where`` narrows the selection to rows whose columns equal the given values — input columns,
as ``[input] where`` reads them, and the export's ``groqbatch_row_key``,
``groqbatch_custom_id`` and ``groqbatch_error`` (the last one matches errors *containing* the
text). Values are compared as text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs import JobSpec, iter_job_rows
from jobs.requests import row_key_or_position
from state import Ledger, RequestStatus
from state.engine import chunked

from .errors import ConfigError
from .planning import existing_ledger
from .runner import Progress, RunSummary, run_job
from .workers import Worker

__all__ = ["LEDGER_COLUMNS", "RetryReport", "parse_where", "retry_job", "select_failed"]

LEDGER_COLUMNS = ("groqbatch_row_key", "groqbatch_custom_id", "groqbatch_error")
"""``--where`` keys that are not input columns: what the export writes beside them."""
_CHUNK_ROWS = 5_000


@dataclass(slots=True)
class RetryReport:
    """What ``retry`` reopened (and, unless it only marked, the run that sent them)."""

    job: str
    marked: dict[str, int]
    """``failed``, ``invalid_output`` and ``total``: requests reopened (would be, with dry_run)."""
    selected: dict[str, Any]
    """What was asked for: ``failed``, ``invalid_output`` (bools) and ``where`` (column → values)."""
    dry_run: bool = False
    summary: RunSummary | None = None
    """The run that sent them; None when only marked (or counted)."""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``job``, ``marked``, ``selected``, ``dry_run``, ``notes`` and ``run`` (the
        run's summary as ``groqbatch run --json`` prints it, or null)."""
        return {"job": self.job, "marked": self.marked, "selected": self.selected,
                "dry_run": self.dry_run, "notes": self.notes,
                "run": None if self.summary is None else self.summary.as_dict()}


def parse_where(pairs: Iterable[str]) -> dict[str, list[str]]:
    """``["lang=en", "lang=fr", "tier=gold"]`` → ``{"lang": ["en", "fr"], "tier": ["gold"]}``:
    one key given twice means "any of"; different keys must all hold."""
    where: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--where {pair!r}: expected KEY=VALUE (an input column, or one "
                              f"of {', '.join(LEDGER_COLUMNS)})")
        where.setdefault(key.strip(), []).append(value)
    return where


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _matches(row: Mapping[str, Any], where: Mapping[str, list[str]]) -> bool:
    return all(_as_text(row.get(column)) in wanted for column, wanted in where.items())


def select_failed(spec: JobSpec, ledger: Ledger, where: Mapping[str, list[str]]) -> Iterator[str]:
    """The custom_ids of the job's failed requests whose rows match ``where``, streamed: the
    input is read again (as export reads it) and looked up a chunk of rows at a time."""
    row_where = {k: v for k, v in where.items() if k not in LEDGER_COLUMNS}
    error_texts = where.get("groqbatch_error", [])
    seen_columns: set[str] = set()
    keyed = ((row_key_or_position(row, spec.input.id_column, index), row)
             for index, _line, row in iter_job_rows(spec.input, spec.input_path))
    for chunk in chunked(keyed, _CHUNK_ROWS):
        wanted: dict[str, dict[str, Any]] = {}
        for key, row in chunk:
            seen_columns.update(row)
            if _matches(row, row_where) and _matches({"groqbatch_row_key": key},
                                                    _only(where, "groqbatch_row_key")):
                wanted[key] = row
        outcomes = ledger.row_outcomes(spec.name, wanted)
        for outcome in outcomes.values():
            if outcome.custom_id is None or outcome.status != RequestStatus.FAILED.value:
                continue
            if not _matches({"groqbatch_custom_id": outcome.custom_id},
                            _only(where, "groqbatch_custom_id")):
                continue
            if error_texts and not any(text in (outcome.last_error or "") for text in error_texts):
                continue
            yield outcome.custom_id
    unknown = sorted(set(row_where) - seen_columns)
    if unknown:
        shown = ", ".join(sorted(seen_columns)[:12]) or "none"
        raise ConfigError(f"--where {unknown[0]}: the input has no such column (its columns: "
                          f"{shown}; or use {', '.join(LEDGER_COLUMNS)})", path=spec.input_path)


def _only(where: Mapping[str, list[str]], key: str) -> dict[str, list[str]]:
    return {key: where[key]} if key in where else {}


async def retry_job(spec: JobSpec, *, failed: bool = True, invalid_output: bool = True,
                    where: Mapping[str, list[str]] | None = None, run: bool = True,
                    dry_run: bool = False, wait: bool = True, run_name: str | None = None,
                    config_path: str | Path | None = None,
                    on_progress: Callable[[Progress], None] | None = None,
                    worker: Worker | None = None) -> RetryReport:
    """Reopen the job's failed requests (those that failed with an error, ``failed``, and/or
    whose answer did not fit the output schema, ``invalid_output``; of rows matching ``where``),
    then — unless ``run`` is False or ``dry_run`` — run the job as :func:`run_job` does.

    ``dry_run`` counts what would be reopened and changes nothing. Raises
    :class:`ConfigError` when the job has no ledger yet or ``where`` names no column.
    """
    if not (failed or invalid_output):
        raise ConfigError("nothing to retry: choose failed and/or invalid_output requests")
    where = dict(where or {})
    ledger = existing_ledger(spec)
    if ledger is None:
        raise ConfigError(f"job {spec.name!r} has no ledger yet at {spec.ledger_target}: "
                          "nothing has run, so nothing has failed", field="ledger")
    with ledger:
        if ledger.job_spec_hash(spec.name) is None:
            raise ConfigError(f"job {spec.name!r} is not in the ledger at {ledger.url}: "
                              "nothing has run, so nothing has failed", field="ledger")
        # The input is read to the end (and --where checked) before anything moves.
        custom_ids = list(select_failed(spec, ledger, where)) if where else None
        counts = ledger.reopen_failed(spec.name, failed=failed, invalid_output=invalid_output,
                                      custom_ids=custom_ids, dry_run=dry_run)
    report = RetryReport(
        job=spec.name,
        marked={"failed": counts.failed, "invalid_output": counts.invalid_output,
                "total": counts.total},
        selected={"failed": failed, "invalid_output": invalid_output, "where": where},
        dry_run=dry_run,
    )
    if dry_run:
        return report
    if not run:
        if counts.total:
            report.notes.append(f"{counts.total} requests wait for the next `groqbatch run`")
        return report
    summary = await run_job(spec, wait=wait, run_name=run_name, config_path=config_path,
                            on_progress=on_progress, worker=worker)
    report.summary = summary
    return report
