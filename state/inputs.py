"""What compile writes into the ledger, and the stream of pending requests it reads back.

:class:`state.Ledger` exposes these as methods; they live here to keep each module readable.
Bulk writes commit once per chunk of :data:`CHUNK_SIZE`: each chunk is an idempotent upsert or
insert-if-absent, so a crash between chunks is repaired by running the operation again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from sqlalchemy import exists, select

from state import schema as t
from state.engine import CHUNK_SIZE, PAGE_SIZE, Database, chunked, compress, decompress
from state.records import RequestRecord, RowRecord
from state.status import RequestStatus, RowStatus

__all__ = ["iter_pending", "record_requests", "record_rows"]

_OK, _REJECTED = RowStatus.OK.value, RowStatus.REJECTED.value


def record_rows(db: Database, job: str, rows: Iterable[RowRecord]) -> int:
    """See :meth:`state.Ledger.record_rows`."""
    columns = ["row_index", "custom_id", "status", "reason"]
    statement = db.upsert(t.rows, ["job", "row_key"], columns)
    count = 0
    for chunk in chunked(rows, CHUNK_SIZE):
        params = [
            {
                "job": job,
                "row_key": row.row_key,
                "row_index": row.row_index,
                "custom_id": row.custom_id,
                "status": _OK if row.reason is None else _REJECTED,
                "reason": row.reason,
            }
            for row in chunk
        ]
        with db.transaction("record_rows") as connection:
            connection.execute(statement, params)
        count += len(params)
    return count


def record_requests(db: Database, requests: Iterable[RequestRecord]) -> int:
    """See :meth:`state.Ledger.record_requests`."""
    statement = db.insert_ignore(t.requests, ["custom_id"])
    new = 0
    for chunk in chunked(requests, CHUNK_SIZE):
        now = time.time()
        params = [
            {
                "custom_id": request.custom_id,
                "endpoint": request.endpoint,
                "body": compress(request.body),
                "status": RequestStatus.PENDING.value,
                "attempts": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost_usd": 0.0,
                "created_at": now,
                "updated_at": now,
            }
            for request in chunk
        ]
        with db.transaction("record_requests") as connection:
            new += db.insert_new(connection, statement, params)
    return new


def iter_pending(db: Database, job: str) -> Iterator[tuple[str, bytes]]:
    """See :meth:`state.Ledger.iter_pending`."""
    wanted = exists().where(t.rows.c.custom_id == t.requests.c.custom_id, t.rows.c.job == job)
    base = (
        select(t.requests.c.custom_id, t.requests.c.body)
        .where(t.requests.c.status == RequestStatus.PENDING.value, wanted)
        .order_by(t.requests.c.custom_id)
        .limit(PAGE_SIZE)
    )
    after: str | None = None
    while True:
        query = base if after is None else base.where(t.requests.c.custom_id > after)
        with db.transaction("iter_pending", write=False) as connection:
            page = connection.execute(query).all()
        for custom_id, body in page:
            yield custom_id, decompress(body)
        if len(page) < PAGE_SIZE:
            return
        after = page[-1][0]
