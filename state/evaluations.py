"""The ledger's evaluation operations: per-row scores, per-run metrics, and reading them back.

:class:`state.Ledger` exposes these as methods; they live here to keep each module readable.

A run's scores are written chunk by chunk (an idempotent upsert on run, scorer and row key),
then its metrics and its ``evaluations`` row together in one transaction. That row is the
marker: reports read only runs that have one, and :func:`forget_unscored` drops the partial
scores a killed scoring pass left behind.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from state import schema as t
from state.engine import CHUNK_SIZE, Database, chunked
from state.status import RowStatus

__all__ = [
    "EvaluationRecord",
    "MetricRecord",
    "ScoreRecord",
    "evaluated",
    "evaluations",
    "forget_unscored",
    "mapping_digest",
    "record_evaluation",
    "record_scores",
]


@dataclass(frozen=True, slots=True)
class ScoreRecord:
    """One row's score from one scorer."""

    scorer: str
    row_key: str
    custom_id: str | None
    score: float


@dataclass(frozen=True, slots=True)
class MetricRecord:
    """One scorer's result over a run: the mean of ``n`` scored rows (None when ``n == 0``)."""

    scorer: str
    kind: str
    mean: float | None
    n: int


@dataclass(frozen=True, slots=True)
class EvaluationRecord:
    """A scored run: which identity its requests carried, and how many rows were answered."""

    run_id: int
    job: str
    run_name: str | None
    identity: str
    digest: str
    rows: int
    answered: int
    failed: int


def mapping_digest(db: Database, job: str, extra: str = "") -> str:
    """sha256 of the job's row → custom_id mapping (row key order) and ``extra``: equal when a
    run would score the very same requests with the same scorers."""
    digest = hashlib.sha256(extra.encode())
    query = (
        select(t.rows.c.row_key, t.rows.c.custom_id)
        .where(t.rows.c.job == job, t.rows.c.status == RowStatus.OK.value)
        .order_by(t.rows.c.row_key)
    )
    with db.transaction("mapping_digest", write=False) as connection:
        for row_key, custom_id in connection.execute(query):
            digest.update(f"{row_key}\0{custom_id}\n".encode())
    return digest.hexdigest()


def evaluated(db: Database, job: str, run_name: str, digest: str) -> int | None:
    """The run id of an earlier evaluation of ``job`` named ``run_name`` with this digest."""
    query = select(t.evaluations.c.run_id).where(
        t.evaluations.c.job == job,
        t.evaluations.c.run_name == run_name,
        t.evaluations.c.digest == digest,
    )
    with db.transaction("evaluated", write=False) as connection:
        found: int | None = connection.execute(query.limit(1)).scalar_one_or_none()
    return found


def forget_unscored(db: Database, job: str) -> int:
    """Delete the scores of the job's runs that have no evaluation (a scoring pass cut short)."""
    scored = select(t.evaluations.c.run_id)
    of_job = select(t.runs.c.id).where(t.runs.c.job == job)
    statement = delete(t.scores).where(
        t.scores.c.run_id.in_(of_job), t.scores.c.run_id.not_in(scored)
    )
    with db.transaction("forget_unscored") as connection:
        return connection.execute(statement).rowcount


def record_scores(db: Database, run_id: int, scores: Iterable[ScoreRecord]) -> int:
    """Upsert per-row scores of ``run_id``, a chunk per transaction; returns how many."""
    statement = db.upsert(t.scores, ["run_id", "scorer", "row_key"], ["custom_id", "score"])
    count = 0
    for chunk in chunked(scores, CHUNK_SIZE):
        params = [
            {"run_id": run_id, "scorer": s.scorer, "row_key": s.row_key,
             "custom_id": s.custom_id, "score": s.score}
            for s in chunk
        ]
        with db.transaction("record_scores") as connection:
            connection.execute(statement, params)
        count += len(params)
    return count


def record_evaluation(
    db: Database, evaluation: EvaluationRecord, metrics: Iterable[MetricRecord]
) -> None:
    """Write a run's metrics and its evaluation row, in one transaction."""
    metric_rows = [
        {"run_id": evaluation.run_id, "scorer": m.scorer, "kind": m.kind, "mean": m.mean, "n": m.n}
        for m in metrics
    ]
    values: dict[str, Any] = {
        "run_id": evaluation.run_id,
        "job": evaluation.job,
        "run_name": evaluation.run_name,
        "identity": evaluation.identity,
        "digest": evaluation.digest,
        "rows": evaluation.rows,
        "answered": evaluation.answered,
        "failed": evaluation.failed,
        "scored_at": time.time(),
    }
    upsert_metric = db.upsert(t.run_metrics, ["run_id", "scorer"], ["kind", "mean", "n"])
    upsert_run = db.upsert(t.evaluations, ["run_id"], [k for k in values if k != "run_id"])
    with db.transaction("record_evaluation") as connection:
        if metric_rows:
            connection.execute(upsert_metric, metric_rows)
        connection.execute(upsert_run, [values])


def evaluations(db: Database, job: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The job's scored runs, oldest first (the last ``limit``), each with its run's columns
    (``run_name``, ``started_at``, ``finished_at``), ``first_started_at`` (the earliest start of
    the runs sharing its name: when a ``--no-wait`` series began), and ``metrics``:
    scorer → {kind, mean, n}."""
    e, r = t.evaluations.c, t.runs.c
    query = (
        select(e.run_id, e.run_name, e.identity, e.rows, e.answered, e.failed, e.scored_at,
               r.started_at, r.finished_at)
        .join(t.runs, t.runs.c.id == e.run_id)
        .where(e.job == job)
        .order_by(e.run_id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    metrics = select(t.run_metrics).where(t.run_metrics.c.run_id.in_(
        select(e.run_id).where(e.job == job)
    )).order_by(t.run_metrics.c.run_id, t.run_metrics.c.scorer)
    starts = (
        select(r.run_name, r.started_at)
        .where(r.job == job, r.run_name.is_not(None))
    )
    with db.transaction("evaluations", write=False) as connection:
        found = [dict(row._mapping) for row in connection.execute(query)]
        by_run: dict[int, dict[str, dict[str, Any]]] = {}
        for row in connection.execute(metrics):
            by_run.setdefault(row.run_id, {})[row.scorer] = {
                "kind": row.kind, "mean": row.mean, "n": row.n}
        first: dict[str, float] = {}
        for name, started in connection.execute(starts):
            first[name] = min(started, first.get(name, started))
    found.reverse()
    for item in found:
        item["metrics"] = by_run.get(item["run_id"], {})
        name = item["run_name"]
        item["first_started_at"] = first.get(name, item["started_at"]) if name else item["started_at"]
    return found
