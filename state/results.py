"""The ledger's reconcile operations: storing answers, reading them back, quarantining lines.

:class:`state.Ledger` exposes these as methods; they live here to keep each module readable.
Each chunk is one transaction: the answers it stores and the request moves they cause
commit together, so ``kill -9`` between chunks leaves every request either answered with its
result or still awaiting one — and reading the same file again finishes the job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import bindparam, or_, select, update

from state import schema as t
from state.engine import CHUNK_SIZE, Database, chunked, compress, decompress
from state.records import QuarantineRecord, ResultRecord, StoredResult
from state.status import AWAITING_ANSWER, RequestStatus, ResultSource

__all__ = ["quarantine", "record_results", "results_for"]

_STORED_COLUMNS = (
    "status_code",
    "body",
    "error_json",
    "parsed_json",
    "source",
    "batch_id",
    "received_at",
)
_AWAITING = sorted(status.value for status in AWAITING_ANSWER)


def record_results(db: Database, results: Iterable[ResultRecord]) -> int:
    """See :meth:`state.Ledger.record_results`."""
    store = db.upsert(t.results, ["custom_id"], _STORED_COLUMNS)
    move = (
        update(t.requests)
        .where(
            t.requests.c.custom_id == bindparam("b_custom_id"),
            # or_ of literals, not IN: an expanding IN cannot be used with executemany.
            or_(*(t.requests.c.status == status for status in _AWAITING)),
        )
        .values(
            status=bindparam("b_status"),
            last_error=bindparam("b_error"),
            prompt_tokens=t.requests.c.prompt_tokens + bindparam("b_prompt_tokens"),
            completion_tokens=t.requests.c.completion_tokens + bindparam("b_completion_tokens"),
            cost_usd=t.requests.c.cost_usd + bindparam("b_cost_usd"),
            updated_at=bindparam("b_now"),
        )
    )
    awaiting = select(t.requests.c.custom_id).where(
        t.requests.c.custom_id.in_(bindparam("ids", expanding=True)),
        t.requests.c.status.in_(_AWAITING),
    )
    if db.dialect == "postgresql":  # hold the rows between the check and the write
        awaiting = awaiting.with_for_update()
    moved = 0
    for chunk in chunked(results, CHUNK_SIZE):
        first: dict[str, ResultRecord] = {}
        for result in chunk:  # a duplicate line within the chunk: the first one counts
            first.setdefault(result.custom_id, result)
        ordered = [first[key] for key in sorted(first)]
        with db.transaction("record_results") as connection:
            open_ids = set(connection.execute(awaiting, {"ids": list(first)}).scalars())
            taken = [result for result in ordered if result.custom_id in open_ids]
            if taken:
                now = time.time()
                connection.execute(store, [_stored_row(result, now) for result in taken])
                connection.execute(move, [_move_row(result, now) for result in taken])
        moved += len(taken)
    return moved


def results_for(db: Database, custom_ids: Iterable[str]) -> Iterator[StoredResult]:
    """See :meth:`state.Ledger.results_for`."""
    query = select(t.results).where(t.results.c.custom_id.in_(bindparam("ids", expanding=True)))
    for chunk in chunked(custom_ids, CHUNK_SIZE):
        with db.transaction("results_for", write=False) as connection:
            page = connection.execute(query, {"ids": chunk}).all()
        for row in page:
            yield StoredResult(
                custom_id=row.custom_id,
                status_code=row.status_code,
                body=None if row.body is None else decompress(row.body),
                error=row.error_json,
                parsed=row.parsed_json,
                source=ResultSource(row.source),
                batch_id=row.batch_id,
                received_at=row.received_at,
            )


def quarantine(db: Database, lines: Iterable[QuarantineRecord]) -> int:
    """See :meth:`state.Ledger.quarantine`."""
    statement = db.insert_ignore(t.quarantine, ["source_file_id", "line_no"])
    new = 0
    for chunk in chunked(lines, CHUNK_SIZE):
        now = time.time()
        params = [
            {
                "shard_key": line.shard_key,
                "batch_id": line.batch_id,
                "source_file_id": line.source_file_id,
                "line_no": line.line_no,
                "raw": line.raw,
                "reason": line.reason,
                "received_at": now,
            }
            for line in chunk
        ]
        with db.transaction("quarantine") as connection:
            new += db.insert_new(connection, statement, params)
    return new


def _stored_row(result: ResultRecord, now: float) -> dict[str, Any]:
    return {
        "custom_id": result.custom_id,
        "status_code": result.status_code,
        "body": None if result.body is None else compress(result.body),
        "error_json": result.error,
        "parsed_json": result.parsed,
        "source": ResultSource(result.source).value,
        "batch_id": result.batch_id,
        "received_at": now,
    }


def _move_row(result: ResultRecord, now: float) -> dict[str, Any]:
    outcome = RequestStatus(result.outcome)
    return {
        "b_custom_id": result.custom_id,
        "b_status": outcome.value,
        "b_error": None if outcome is RequestStatus.SUCCEEDED else result.error,
        "b_prompt_tokens": result.prompt_tokens,
        "b_completion_tokens": result.completion_tokens,
        "b_cost_usd": result.cost_usd,
        "b_now": now,
    }
