"""The ledger's operations for multi-step jobs: the rows a step has to feed to the next one,
their feed markers, and removing rows that no longer reach a step (see :mod:`jobs.steps`).

:class:`state.Ledger` exposes these as methods; they live here to keep each module readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import and_, bindparam, delete, literal, or_, select, update

from state import schema as t
from state.engine import CHUNK_SIZE, PAGE_SIZE, Database, chunked, decompress
from state.records import FeedRow
from state.status import RequestStatus

__all__ = ["drop_rows", "mark_fed", "reset_fed", "rows_to_feed"]

_SETTLED = [RequestStatus.SUCCEEDED.value, RequestStatus.FAILED.value]


def rows_to_feed(db: Database, job: str, *, after: str = "", limit: int = PAGE_SIZE,
                 fed_too: bool = False) -> list[FeedRow]:
    """See :meth:`state.Ledger.rows_to_feed`."""
    rw, rq, rs = t.rows, t.requests, t.results
    unfed = or_(rw.c.fed.is_(None), rw.c.fed != rw.c.custom_id, literal(fed_too))
    query = (
        select(rw.c.row_key, rw.c.row_index, rw.c.custom_id, rw.c.data, rq.c.status,
               rs.c.body, rs.c.parsed_json)
        .select_from(rw.outerjoin(rq, rq.c.custom_id == rw.c.custom_id)
                     .outerjoin(rs, rs.c.custom_id == rw.c.custom_id))
        .where(
            rw.c.job == job,
            rw.c.row_key > after,
            or_(and_(rw.c.custom_id.is_(None), or_(rw.c.fed.is_(None), literal(fed_too))),
                and_(rw.c.custom_id.is_not(None), unfed, rq.c.status.in_(_SETTLED))),
        )
        .order_by(rw.c.row_key)
        .limit(limit)
    )
    with db.transaction("rows_to_feed", write=False) as connection:
        page = connection.execute(query).all()
    return [
        FeedRow(row.row_key, row.row_index, row.custom_id,
                None if row.data is None else decompress(row.data),
                None if row.status is None else RequestStatus(row.status),
                None if row.body is None else decompress(row.body), row.parsed_json)
        for row in page
    ]


def mark_fed(db: Database, job: str, marks: Sequence[tuple[str, str]]) -> int:
    """See :meth:`state.Ledger.mark_fed`."""
    statement = (
        update(t.rows)
        .where(t.rows.c.job == bindparam("b_job"), t.rows.c.row_key == bindparam("b_key"))
        .values(fed=bindparam("b_fed"))
    )
    moved = 0
    for chunk in chunked(marks, CHUNK_SIZE):
        params = [{"b_job": job, "b_key": key, "b_fed": fed} for key, fed in chunk]
        with db.transaction("mark_fed") as connection:
            moved += connection.execute(statement, params).rowcount
    return moved


def reset_fed(db: Database, job: str) -> int:
    """See :meth:`state.Ledger.reset_fed`."""
    statement = update(t.rows).where(t.rows.c.job == job, t.rows.c.fed.is_not(None)).values(fed=None)
    with db.transaction("reset_fed") as connection:
        return int(connection.execute(statement).rowcount)


def drop_rows(db: Database, jobs: Sequence[str], row_keys: Iterable[str]) -> int:
    """See :meth:`state.Ledger.drop_rows`."""
    statement = delete(t.rows).where(
        t.rows.c.job.in_(list(jobs)), t.rows.c.row_key.in_(bindparam("keys", expanding=True))
    )
    dropped = 0
    with db.transaction("drop_rows") as connection:
        for chunk in chunked(row_keys, CHUNK_SIZE):
            dropped += connection.execute(statement, {"keys": chunk}).rowcount
    return dropped
