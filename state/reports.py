"""What the ledger says: answered ids, statuses, counts, rejected rows, shards.

:class:`state.Ledger` exposes these as methods; they live here to keep each module readable.
Each is a read in one short transaction; ``IN`` lists are chunked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from state import schema as t
from state.engine import CHUNK_SIZE, Database, chunked, decompress
from state.records import OpenRequest
from state.status import RequestStatus, RowStatus

__all__ = [
    "SAMPLE_KEY_MARK",
    "answered_ids",
    "iter_requests",
    "kept_answers",
    "rejected_rows",
    "request_counts",
    "request_totals",
    "result_history",
    "row_counts",
    "runs",
    "shard",
    "shard_generation",
    "shards",
    "statuses",
]

_REJECTED = RowStatus.REJECTED.value


def answered_ids(db: Database, custom_ids: Iterable[str]) -> set[str]:
    """See :meth:`state.Ledger.answered_ids`."""
    answered: set[str] = set()
    query = select(t.requests.c.custom_id).where(
        t.requests.c.status == RequestStatus.SUCCEEDED.value,
        t.requests.c.custom_id.in_(bindparam("ids", expanding=True)),
    )
    with db.transaction("answered_ids", write=False) as connection:
        for chunk in chunked(custom_ids, CHUNK_SIZE):
            answered.update(connection.execute(query, {"ids": chunk}).scalars())
    return answered


def statuses(db: Database, custom_ids: Iterable[str]) -> dict[str, RequestStatus]:
    """See :meth:`state.Ledger.statuses`."""
    found: dict[str, RequestStatus] = {}
    query = select(t.requests.c.custom_id, t.requests.c.status).where(
        t.requests.c.custom_id.in_(bindparam("ids", expanding=True))
    )
    with db.transaction("statuses", write=False) as connection:
        for chunk in chunked(custom_ids, CHUNK_SIZE):
            for custom_id, status in connection.execute(query, {"ids": chunk}):
                found[custom_id] = RequestStatus(status)
    return found


def request_counts(db: Database, job: str | None = None) -> dict[str, int]:
    """See :meth:`state.Ledger.request_counts`."""
    query = select(t.requests.c.status, func.count()).group_by(t.requests.c.status)
    if job is not None:
        ids = select(t.rows.c.custom_id).where(t.rows.c.job == job)
        query = query.where(t.requests.c.custom_id.in_(ids))
    counts = dict.fromkeys(RequestStatus, 0)
    with db.transaction("request_counts", write=False) as connection:
        for status, count in connection.execute(query):
            counts[RequestStatus(status)] = count
    return {str(status): count for status, count in counts.items()}


_OPEN = [RequestStatus.PENDING.value, RequestStatus.QUEUED.value, RequestStatus.SUBMITTED.value,
         RequestStatus.RETRYABLE.value, RequestStatus.IN_FLIGHT.value]


def open_request_counts(db: Database, job: str) -> dict[str, int]:
    """See :meth:`state.Ledger.open_request_counts`."""
    query = (
        select(t.requests.c.status, func.count())
        .where(t.requests.c.status.in_(_OPEN), t.of_job(t.requests.c.custom_id, job))
        .group_by(t.requests.c.status)
    )
    counts = dict.fromkeys(_OPEN, 0)
    with db.transaction("open_request_counts", write=False) as connection:
        for status, count in connection.execute(query):
            counts[status] = count
    return counts
SAMPLE_KEY_MARK = "#sample-"
"""Rows recorded under ``<key>#sample-<i>`` are further samples of the input row ``<key>``
(``[prompt] samples``): not counted again as input rows."""
_FIRST_SAMPLES = t.rows.c.row_key.not_like(f"%{SAMPLE_KEY_MARK}%")


def row_counts(db: Database, job: str) -> dict[str, int]:
    """See :meth:`state.Ledger.row_counts`."""
    query = (
        select(t.rows.c.status, func.count()).where(t.rows.c.job == job, _FIRST_SAMPLES)
        .group_by(t.rows.c.status)
    )
    counts = {str(status): 0 for status in RowStatus}
    with db.transaction("row_counts", write=False) as connection:
        for status, count in connection.execute(query):
            counts[status] = count
    return counts


def error_counts(db: Database, job: str, statuses: Iterable[RequestStatus],
                 limit: int = 50) -> list[tuple[str | None, int]]:
    """See :meth:`state.Ledger.error_counts`."""
    columns = t.requests.c
    count = func.count().label("n")
    query = (
        select(columns.last_error, count)
        .where(columns.status.in_([RequestStatus(s).value for s in statuses]),
               columns.custom_id.in_(select(t.rows.c.custom_id).where(t.rows.c.job == job)))
        .group_by(columns.last_error)
        .order_by(count.desc())
        .limit(limit)
    )
    with db.transaction("error_counts", write=False) as connection:
        return [(error, int(n)) for error, n in connection.execute(query)]


def usage_averages(db: Database, job: str) -> tuple[int, float, float]:
    """See :meth:`state.Ledger.usage_averages`."""
    columns = t.requests.c
    query = select(
        func.count(), func.coalesce(func.avg(columns.prompt_tokens), 0.0),
        func.coalesce(func.avg(columns.completion_tokens), 0.0),
    ).where(columns.status == RequestStatus.SUCCEEDED.value, columns.prompt_tokens > 0,
            columns.custom_id.in_(select(t.rows.c.custom_id).where(t.rows.c.job == job)))
    with db.transaction("usage_averages", write=False) as connection:
        answered, prompt, completion = connection.execute(query).one()
    return int(answered), float(prompt), float(completion)


def rejected_rows(db: Database, job: str, limit: int = 20) -> list[tuple[str, int, str]]:
    """See :meth:`state.Ledger.rejected_rows`."""
    query = (
        select(t.rows.c.row_key, t.rows.c.row_index, t.rows.c.reason)
        .where(t.rows.c.job == job, t.rows.c.status == _REJECTED, _FIRST_SAMPLES)
        .order_by(t.rows.c.row_index)
        .limit(limit)
    )
    with db.transaction("rejected_rows", write=False) as connection:
        return [(key, index, reason or "") for key, index, reason in connection.execute(query)]


def shards(db: Database, job: str) -> list[dict[str, Any]]:
    """See :meth:`state.Ledger.shards`."""
    query = (
        select(t.shards)
        .where(t.shards.c.job == job)
        .order_by(t.shards.c.created_at, t.shards.c.key)
    )
    with db.transaction("shards", write=False) as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def shard(db: Database, key: str) -> dict[str, Any] | None:
    """See :meth:`state.Ledger.shard`."""
    with db.transaction("shard", write=False) as connection:
        row = connection.execute(select(t.shards).where(t.shards.c.key == key)).one_or_none()
    return None if row is None else dict(row._mapping)


def request_totals(db: Database, job: str) -> dict[str, float]:
    """See :meth:`state.Ledger.request_totals`."""
    with db.transaction("request_totals", write=False) as connection:
        return request_totals_in(connection, job)


def request_totals_in(connection: Connection, job: str) -> dict[str, float]:
    """:func:`request_totals` inside the caller's transaction (the budget reads it with its
    write lock held, :mod:`state.spend`)."""
    columns = t.requests.c
    query = select(
        func.coalesce(func.sum(columns.prompt_tokens), 0),
        func.coalesce(func.sum(columns.completion_tokens), 0),
        func.coalesce(func.sum(columns.cost_usd), 0.0),
        func.coalesce(func.sum(columns.attempts), 0),
    ).where(columns.custom_id.in_(select(t.rows.c.custom_id).where(t.rows.c.job == job)))
    prompt, completion, cost, attempts = connection.execute(query).one()
    return {"prompt_tokens": int(prompt), "completion_tokens": int(completion),
            "cost_usd": float(cost), "attempts": int(attempts)}


def runs(db: Database, job: str, limit: int = 20) -> list[dict[str, Any]]:
    """See :meth:`state.Ledger.runs`."""
    query = (
        select(t.runs).where(t.runs.c.job == job).order_by(t.runs.c.id.desc()).limit(limit)
    )
    with db.transaction("runs", write=False) as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def iter_requests(
    db: Database, job: str, status: RequestStatus, page_size: int
) -> Iterator[OpenRequest]:
    """See :meth:`state.Ledger.iter_requests`."""
    columns = t.requests.c
    base = (
        select(columns.custom_id, columns.body, columns.attempts, columns.last_error,
               columns.shard_key)
        .where(columns.status == status.value, t.of_job(columns.custom_id, job))
        .order_by(columns.custom_id)
        .limit(page_size)
    )
    after: str | None = None
    while True:
        query = base if after is None else base.where(columns.custom_id > after)
        with db.transaction("iter_requests", write=False) as connection:
            page = connection.execute(query).all()
        for custom_id, body, attempts, last_error, shard_key in page:
            yield OpenRequest(custom_id, decompress(body), attempts, last_error, shard_key)
        if len(page) < page_size:
            return
        after = page[-1][0]


def kept_answers(db: Database, job: str) -> int:
    """See :meth:`state.Ledger.kept_answers`."""
    rq, rs = t.requests, t.results
    query = (
        select(func.count())
        .select_from(rq.join(rs, rs.c.custom_id == rq.c.custom_id))
        .where(
            rq.c.status.in_(_OPEN),
            rs.c.status_code == 200,
            rs.c.error_json.is_(None),
            t.of_job(rq.c.custom_id, job),
        )
    )
    with db.transaction("kept_answers", write=False) as connection:
        return int(connection.execute(query).scalar_one())


def result_history(db: Database, custom_id: str) -> list[dict[str, Any]]:
    """See :meth:`state.Ledger.result_history`."""
    query = (
        select(t.result_history)
        .where(t.result_history.c.custom_id == custom_id)
        .order_by(t.result_history.c.id)
    )
    with db.transaction("result_history", write=False) as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    for row in rows:
        row["body"] = None if row["body"] is None else decompress(row["body"])
    return rows


def shard_generation(db: Database, job: str, sha256: str) -> int:
    """See :meth:`state.Ledger.shard_generation`."""
    query = select(func.count()).where(t.shards.c.job == job, t.shards.c.sha256 == sha256)
    with db.transaction("shard_generation", write=False) as connection:
        return int(connection.execute(query).scalar_one())
