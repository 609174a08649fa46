"""The evaluation stage: score a finished run's answers against the reference column.

    report = evaluate_run(spec, ledger, run_id=7, run_name="nightly-2026-11-22")
    report.metrics        # {"exact": {"kind": "exact", "mean": 0.85, "n": 20}, ...}

**When.** The runner calls it at the end of an invocation that leaves the job *finished*:
nothing in flight and every request of the job answered or failed. A ``--no-wait`` series is
scored once, by the invocation that finishes it.

**Run identity and salting.** With ``[policy] cache = false`` every evaluation must ask
afresh, so compile salts each ``custom_id`` with the run's identity (:func:`run_identity`):
``name:<run name>`` when ``--run-name`` is given, else ``run:<run id>``. Invocations with the
same ``--run-name`` therefore share their requests — a cron entry calling
``groqbatch run --no-wait --run-name nightly-2026-11-22`` every 5 minutes keeps resuming the
same requests until they are done, and the next night's name starts afresh. Without a name
each invocation is a new evaluation, so ``--no-wait`` (which needs a later invocation to
finish) requires ``--run-name`` for such a job. With ``cache = true`` (the default) there is
no salt: unchanged requests are answered from the ledger and only new or changed ones sent.

**Which requests.** Scores are computed from the job's row → ``custom_id`` mapping, which
each invocation's compile rewrites for its own identity — so a run is scored against exactly
the requests it asked. A run scored once is not scored again: an invocation that finds an
evaluation with the same run name, the same mapping and the same scorers records nothing
(``skipped`` says so). Without ``--run-name`` every finished invocation is a new row of
metrics (with caching on, a re-run scores the cached answers again: that is how changed
scorers are tried on old answers).

**Storage.** Per row and scorer in ``scores``; per run and scorer (mean over scored rows,
``n``) in ``run_metrics``; the run's totals in ``evaluations`` (see :mod:`state.evaluations`).
A row whose request failed scores 0; a row without a reference is not scored (see
:mod:`jobs.scorers`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from jobs import JobSpec
from jobs.inputs import iter_job_rows
from jobs.requests import canonical_json, row_key_for
from jobs.scorers import Scorer, ScorerError, build_scorer
from jobs.template import RowRejected
from state import Ledger, RequestStatus
from state.engine import chunked
from state.evaluations import EvaluationRecord, MetricRecord, ScoreRecord
from state.records import StoredResult

from .errors import ConfigError

__all__ = [
    "EvaluationReport",
    "answer_text",
    "check_run_identity",
    "evaluate_run",
    "is_settled",
    "run_identity",
]

#: Input rows scored per chunk (one read of ids and results, one write of scores).
CHUNK_ROWS = 2_000
_SETTLED = frozenset({RequestStatus.SUCCEEDED.value, RequestStatus.FAILED.value})


def run_identity(*, run_id: int, run_name: str | None) -> str:
    """The identity of a run: ``name:<run name>`` when named, else ``run:<run id>``."""
    return f"name:{run_name}" if run_name else f"run:{run_id}"


def check_run_identity(spec: JobSpec, *, wait: bool, run_name: str | None,
                       config_path: str | Path | None = None) -> None:
    """Refuse ``--no-wait`` without ``--run-name`` on a ``cache = false`` job: its next
    invocation would be a new run with fresh ids, and the requests sent now never scored."""
    if not spec.policy.cache and not wait and not run_name:
        raise ConfigError(
            "a --no-wait run of a job with cache = false needs --run-name: each unnamed run "
            "asks afresh, so the next invocation could not resume this one",
            path=config_path,
            field="policy.cache",
            hint="e.g. groqbatch run --no-wait --run-name nightly-$(date +%F) CONFIG",
        )


def is_settled(request_counts: Mapping[str, int]) -> bool:
    """Every request answered or failed (none pending, in flight or retryable), given a job's
    :meth:`~state.Ledger.request_counts`."""
    return not any(n for status, n in request_counts.items() if status not in _SETTLED)


@dataclass(slots=True)
class EvaluationReport:
    """What the evaluation of one run found. ``as_dict()`` is JSON-serialisable."""

    run_id: int
    identity: str
    rows: int = 0
    answered: int = 0
    failed: int = 0
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: str | None = None
    """Why nothing was recorded (this evaluation was scored by an earlier invocation)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_text(result: StoredResult | None) -> str | None:
    """The answer's text (``choices[0].message.content``) of a 200 result, else None."""
    if result is None or result.status_code != 200 or result.body is None:
        return None
    try:
        body = orjson.loads(result.body)
        content = body["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def evaluate_run(spec: JobSpec, ledger: Ledger, *, run_id: int, run_name: str | None,
                 config_path: str | Path | None = None) -> EvaluationReport:
    """Score the job's current answers for run ``run_id`` and record them (see the module
    docstring). Raises :class:`ConfigError` when a ``callable`` scorer misbehaves."""
    assert spec.evaluate is not None, "evaluate_run needs a job with [evaluate]"
    identity = run_identity(run_id=run_id, run_name=run_name)
    report = EvaluationReport(run_id=run_id, identity=identity)
    scorers = [build_scorer(s, default_reference=spec.evaluate.reference)
               for s in spec.evaluate.scorers]
    digest = ledger.mapping_digest(spec.name, extra=_scorers_fingerprint(spec))
    if run_name:
        earlier = ledger.evaluated(spec.name, run_name, digest)
        if earlier is not None:
            report.skipped = f"run {run_name!r} was scored already (run {earlier})"
            return report
    ledger.forget_unscored(spec.name)
    totals = {scorer.name: [0.0, 0] for scorer in scorers}
    for chunk in chunked(_keyed_rows(spec), CHUNK_ROWS):
        ledger.record_scores(run_id, _score_chunk(spec, ledger, scorers, chunk, report, totals,
                                                  config_path))
    metrics = []
    for scorer in scorers:
        total, n = totals[scorer.name]
        mean = total / n if n else None
        metrics.append(MetricRecord(scorer.name, scorer.kind, mean, int(n)))
        report.metrics[scorer.name] = {"kind": scorer.kind, "mean": mean, "n": int(n)}
    ledger.record_evaluation(
        EvaluationRecord(run_id, spec.name, run_name, identity, digest, report.rows,
                         report.answered, report.failed),
        metrics,
    )
    return report


def _score_chunk(spec: JobSpec, ledger: Ledger, scorers: list[Scorer],
                 chunk: list[tuple[str, Mapping[str, Any]]], report: EvaluationReport,
                 totals: dict[str, list[Any]], config_path: str | Path | None) -> list[ScoreRecord]:
    ids = ledger.row_ids(spec.name, (key for key, _ in chunk))
    results = {r.custom_id: r for r in ledger.results_for({i for i in ids.values() if i})}
    records: list[ScoreRecord] = []
    for key, row in chunk:
        custom_id = ids.get(key)
        if custom_id is None:
            continue  # rejected, or not compiled by this run
        report.rows += 1
        answer = answer_text(results.get(custom_id))
        if answer is None:
            report.failed += 1
        else:
            report.answered += 1
        for index, scorer in enumerate(scorers):
            try:
                score = scorer.score(answer, scorer.reference_of(row), row)
            except ScorerError as exc:
                raise ConfigError(
                    f"scorer {scorer.name!r} on row {key!r}: {exc}",
                    path=config_path,
                    field=f"evaluate.scorers[{index}].function",
                ) from exc
            if score is None:
                continue
            totals[scorer.name][0] += score
            totals[scorer.name][1] += 1
            records.append(ScoreRecord(scorer.name, key, custom_id, score))
    return records


def _keyed_rows(spec: JobSpec) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for _index, _line, row in iter_job_rows(spec.input, spec.input_path):
        try:
            yield row_key_for(row, spec.input.id_column), row
        except RowRejected:
            continue


def _scorers_fingerprint(spec: JobSpec) -> str:
    assert spec.evaluate is not None
    return canonical_json(spec.evaluate.model_dump(mode="json")).decode()
