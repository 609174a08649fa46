"""What a job has spent and committed, for its budget; the budgeted start of a shard's upload;
and what each path cost.

:class:`state.Ledger` exposes these as methods. :func:`begin_upload_within` weighs a shard
against the budget and records the intent to upload it in one write transaction, with the
job's row locked (PostgreSQL) or the database's write lock held (SQLite): two workers sharing
a ledger can never both start a shard that only one of them could afford.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, func, select, update

from state import schema as t
from state.engine import Database
from state.reports import request_totals_in
from state.status import RequestStatus, ShardStep, Tier

__all__ = ["Committed", "ExtraSpend", "begin_upload_within", "committed_shards", "cost_by_path",
           "extra_spend", "record_extra_spend", "spend_totals", "spend_totals_in"]

_UNSENT = (ShardStep.UPLOADING.value, ShardStep.UPLOADED.value, ShardStep.SUBMITTING.value)
_RESERVED = (*_UNSENT, ShardStep.SUBMITTED.value, ShardStep.SETTLED.value)


@dataclass(frozen=True, slots=True)
class Committed:
    """Shards on their way that the ledger's totals do not count yet."""

    lines_unsent: int = 0
    """Lines of shards between the intent to upload and the batch's creation: not yet
    counted as attempts (their requests are still queued)."""
    lines_reserved: int = 0
    """Lines of shards from the intent to upload until they are reconciled: their tokens and
    cost are not recorded yet."""
    bytes_reserved: int = 0
    lines_compiled: int = 0
    """Lines of shards compiled whose upload has not started (they may yet be held back)."""
    bytes_compiled: int = 0


def _committed(connection: Connection, job: str) -> Committed:
    shards = t.shards.c
    compiled = shards.step == ShardStep.COMPILED.value
    reserved = shards.step.in_(_RESERVED)

    def total(column: Any, where: Any) -> Any:
        return func.coalesce(func.sum(case((where, column), else_=0)), 0)

    query = select(
        total(shards.lines, shards.step.in_(_UNSENT)),
        total(shards.lines, reserved),
        total(shards.bytes, reserved),
        total(shards.lines, compiled),
        total(shards.bytes, compiled),
    ).where(shards.job == job)
    return Committed(*(int(value) for value in connection.execute(query).one()))


def committed_shards(db: Database, job: str) -> Committed:
    """See :meth:`state.Ledger.committed_shards`."""
    with db.transaction("committed_shards", write=False) as connection:
        return _committed(connection, job)


@dataclass(frozen=True, slots=True)
class ExtraSpend:
    """An answer paid for that no request took (see :data:`state.schema.extra_spend`)."""

    job: str
    custom_id: str
    source: str
    origin: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def record_extra_spend(db: Database, items: Iterable[ExtraSpend]) -> int:
    """See :meth:`state.Ledger.record_extra_spend`."""
    rows = [{"job": i.job, "custom_id": i.custom_id, "source": i.source, "origin": i.origin,
             "prompt_tokens": i.prompt_tokens, "completion_tokens": i.completion_tokens,
             "cost_usd": i.cost_usd, "received_at": time.time()} for i in items]
    if not rows:
        return 0
    statement = db.insert_ignore(t.extra_spend, ["origin"])
    with db.transaction("record_extra_spend") as connection:
        return db.insert_new(connection, statement, rows)


def _extra_in(connection: Connection, job: str) -> dict[str, float]:
    columns = t.extra_spend.c
    query = select(
        func.count(),
        func.coalesce(func.sum(columns.prompt_tokens), 0),
        func.coalesce(func.sum(columns.completion_tokens), 0),
        func.coalesce(func.sum(columns.cost_usd), 0.0),
    ).where(columns.job == job)
    calls, prompt, completion, cost = connection.execute(query).one()
    return {"calls": int(calls), "prompt_tokens": int(prompt),
            "completion_tokens": int(completion), "cost_usd": float(cost)}


def extra_spend(db: Database, job: str) -> dict[str, float]:
    """See :meth:`state.Ledger.extra_spend`."""
    with db.transaction("extra_spend", write=False) as connection:
        return _extra_in(connection, job)


def spend_totals_in(connection: Connection, job: str) -> dict[str, float]:
    """The job's recorded tokens, cost and attempts (see :meth:`state.Ledger.request_totals`),
    plus the answers paid for twice (each one call)."""
    totals = request_totals_in(connection, job)
    extra = _extra_in(connection, job)
    return {"prompt_tokens": totals["prompt_tokens"] + extra["prompt_tokens"],
            "completion_tokens": totals["completion_tokens"] + extra["completion_tokens"],
            "cost_usd": totals["cost_usd"] + extra["cost_usd"],
            "attempts": totals["attempts"] + extra["calls"]}


def spend_totals(db: Database, job: str) -> dict[str, float]:
    """See :meth:`state.Ledger.spend_totals`."""
    with db.transaction("spend_totals", write=False) as connection:
        return spend_totals_in(connection, job)


def begin_upload_within(
    db: Database, key: str, job: str, worker: str,
    fits: Callable[[dict[str, float], Committed], bool],
) -> bool:
    """See :meth:`state.Ledger.begin_upload_within`."""
    with db.transaction("begin_upload_within") as connection:
        if db.dialect == "postgresql":  # one budget decision of this job at a time
            connection.execute(select(t.jobs.c.name).where(t.jobs.c.name == job).with_for_update())
        if not fits(spend_totals_in(connection, job), _committed(connection, job)):
            return False
        statement = (
            update(t.shards)
            .where(t.shards.c.key == key, t.shards.c.step == ShardStep.COMPILED.value,
                   t.shards.c.claimed_by == worker)
            .values(step=ShardStep.UPLOADING.value, updated_at=time.time())
        )
        return bool(connection.execute(statement).rowcount)


def cost_by_path(db: Database, job: str) -> dict[str, dict[str, Any]]:
    """See :meth:`state.Ledger.cost_by_path`."""
    columns = t.requests.c
    # Answered in a batch after an earlier batch left it undone: attempts counts batches only
    # for a request whose last tier is batch (a fallback call would have made it flex).
    rebatched = (columns.tier == Tier.BATCH.value) & (columns.attempts >= 2)
    path = case((rebatched, "rebatched"), else_=func.coalesce(columns.tier, "unsent"))
    query = (
        select(
            path.label("path"),
            func.count(),
            func.coalesce(func.sum(case((columns.status == RequestStatus.SUCCEEDED.value, 1),
                                        else_=0)), 0),
            func.coalesce(func.sum(columns.prompt_tokens), 0),
            func.coalesce(func.sum(columns.completion_tokens), 0),
            func.coalesce(func.sum(columns.cost_usd), 0.0),
        )
        .where(columns.custom_id.in_(select(t.rows.c.custom_id).where(t.rows.c.job == job)))
        .group_by(path)
    )
    with db.transaction("cost_by_path", write=False) as connection:
        rows = connection.execute(query).all()
    return {
        name: {"requests": int(n), "succeeded": int(ok), "prompt_tokens": int(p),
               "completion_tokens": int(c), "cost_usd": float(usd)}
        for name, n, ok, p, c, usd in rows
    }
