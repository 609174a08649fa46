"""Check a job without touching any ledger or API: the config, the input, every row.

    report = check_job(load_job("configs/enrich.toml"))
    print(report.ok, report.rejected, report.first_rejections)

``groqbatch validate`` calls this (after resolving an adapter job's ``ft:`` model from the job's
ledger). It reads the whole input (streaming) and renders every row, so a template that fails
on row 90,000 is found before anything is spent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.inputs import find_duplicate_ids, iter_job_rows
from jobs.plan import refuse_unpriced_budget
from jobs.requests import RequestBuilder, row_key_for, unkeyed_row_key
from jobs.spec import JobSpec
from jobs.steps import job_steps
from jobs.template import RowRejected

__all__ = ["CheckReport", "check_job"]

PLACEHOLDER_ADAPTER_MODEL = "ft:llama-3.1-8b-instant:check/adapter"
"""Stands in for an adapter's ``ft:`` id when checking rows: rendering does not depend on it."""


@dataclass(slots=True)
class CheckReport:
    config: str
    job: str
    rows: int = 0
    ok: int = 0
    rejected: int = 0
    duplicate_rows: int = 0
    """Rows left out because another row has their id (``on_duplicate_id = "first"`` or
    ``"last"``); not counted in ``rows``."""
    first_rejections: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_job(spec: JobSpec, *, config_path: str = "", keep_rejections: int = 5,
              model: str | None = None) -> CheckReport:
    """Render every input row of ``spec``; count those that make a request and those that don't.

    ``model`` is the resolved model of an adapter job (``groqbatch validate`` resolves it from
    the job's ledger first, so an unknown adapter fails there); without it a placeholder
    ``ft:`` id stands in, since rendering does not depend on it.

    Raises :class:`~pipeline.errors.InputError` for an input that cannot be read at all (a
    missing file, a broken JSONL line) or that repeats an id (``on_duplicate_id = "error"``),
    naming the file and line.
    """
    if spec.steps:
        # The first step reads the input; later steps' rows are its answers, which a check
        # cannot have (their templates were checked when the config loaded).
        first = job_steps(spec)[0]
        report = check_job(first.spec, config_path=config_path, keep_rejections=keep_rejections,
                           model=None if first.spec.model is not None else model)
        report.job = spec.name
        return report
    if model is None and spec.model is None:
        model = PLACEHOLDER_ADAPTER_MODEL
    if model != PLACEHOLDER_ADAPTER_MODEL:
        refuse_unpriced_budget(spec, model or spec.model or "", config_path=config_path or None)
    builder = RequestBuilder(spec, model=model)
    duplicates = find_duplicate_ids(spec.input, spec.input_path)
    report = CheckReport(config=config_path, job=spec.name, duplicate_rows=duplicates.left_out)
    for row_index, source_line, row in iter_job_rows(spec.input, spec.input_path, duplicates):
        report.rows += 1
        row_key = unkeyed_row_key(row_index)
        try:
            row_key = row_key_for(row, spec.input.id_column)
            builder.build(row)
        except RowRejected as rejection:
            report.rejected += 1
            if len(report.first_rejections) < keep_rejections:
                report.first_rejections.append({
                    "row_index": row_index,
                    "line": source_line,
                    "row_key": row_key,
                    "reason": rejection.reason,
                })
        else:
            report.ok += 1
    return report
