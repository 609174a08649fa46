"""The ledger's reconcile operations: storing answers, reading them back, quarantining lines.

:class:`state.Ledger` exposes these as methods; they live here to keep each module readable.
Each chunk is one transaction: the answers it stores and the request moves they cause
commit together, so ``kill -9`` between chunks leaves every request either answered with its
result or still awaiting one — and reading the same file again finishes the job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, literal, or_, select, update

from state import schema as t
from state.engine import CHUNK_SIZE, BulkWrite, Database, chunked, compress, decompress
from state.records import QuarantineRecord, ResultRecord, StoredResult
from state.status import AWAITING_ANSWER, RequestStatus, ResultSource

__all__ = ["quarantine", "record_result_chunk", "record_results", "results_for"]

_STORED_COLUMNS = (
    "custom_id",
    "status_code",
    "body",
    "error_json",
    "parsed_json",
    "source",
    "batch_id",
    "received_at",
    "run_id",
)
# In the order the compiled UPDATE takes them (SET, then WHERE): no reordering per row.
_MOVE_COLUMNS = (
    "b_status",
    "b_prompt_tokens",
    "b_completion_tokens",
    "b_cost_usd",
    "b_error",
    "b_now",
    "b_custom_id",
)
_AWAITING = sorted(status.value for status in AWAITING_ANSWER)
# A dict look-up per row instead of an Enum call (``RequestStatus(x)``): the same check (a
# KeyError for a value that is not one), at a fraction of the cost.
_STATUS_VALUE: dict[str, str] = {status.value: status.value for status in RequestStatus}
_SOURCE_VALUE: dict[str, str] = {source.value: source.value for source in ResultSource}
_SUCCEEDED = RequestStatus.SUCCEEDED.value
_RETRYABLE = RequestStatus.RETRYABLE.value
_STATUS: dict[str, RequestStatus] = {status.value: status for status in RequestStatus}


def record_results(
    db: Database, results: Iterable[ResultRecord], *, worker: str | None = None,
    run_id: int | None = None,
) -> int:
    """See :meth:`state.Ledger.record_results`."""
    moved = 0
    for chunk in chunked(results, CHUNK_SIZE):
        with db.transaction("record_results") as connection:
            moved += len(_record(db, connection, chunk, worker, run_id)[1])
    return moved


def record_result_chunk(
    db: Database, results: Iterable[ResultRecord], *, worker: str | None = None,
    run_id: int | None = None,
) -> tuple[dict[str, RequestStatus], frozenset[str]]:
    """See :meth:`state.Ledger.record_result_chunk`."""
    with db.transaction("record_results") as connection:
        before, taken = _record(db, connection, list(results), worker, run_id)
    return before, frozenset(result.custom_id for result in taken)


def _record(
    db: Database, connection: Connection, chunk: Sequence[ResultRecord], worker: str | None,
    run_id: int | None,
) -> tuple[dict[str, RequestStatus], list[ResultRecord]]:
    """Store the answers of one chunk in ``connection``'s transaction.

    Returns the status each known custom_id had before, and the answers taken.
    """
    first: dict[str, ResultRecord] = {}
    for result in chunk:  # a duplicate line within the chunk: the first one counts
        first.setdefault(result.custom_id, result)
    found = _statuses(db, connection, list(first))
    before = {custom_id: status for custom_id, (status, _, _) in found.items()}
    # In custom_id order: over twice as fast as the file's order on the B-trees.
    taken = [first[key] for key in sorted(first) if _takes(first[key], found.get(key), worker)]
    if taken:
        now = time.time()
        replacing: list[tuple[Any, ...]] = []  # may replace an earlier answer
        keeping: list[tuple[Any, ...]] = []  # retryable: never replaces an earlier answer
        moves = []
        for result in taken:
            outcome = _STATUS_VALUE[result.outcome]
            body = result.body
            (keeping if outcome == _RETRYABLE else replacing).append((
                result.custom_id,
                result.status_code,
                None if body is None else compress(body),
                result.error,
                result.parsed,
                _SOURCE_VALUE[result.source],
                result.batch_id,
                now,
                run_id,
            ))
            moves.append((
                outcome,
                result.prompt_tokens,
                result.completion_tokens,
                result.cost_usd,
                None if outcome == _SUCCEEDED else result.error,
                now,
                result.custom_id,
            ))
        if replacing:
            _keep_history(db, connection, [row[0] for row in replacing], now)
            _store_statement(db).run(connection, replacing)
        _keep_statement(db).run(connection, keeping)
        _move_statement(db).run(connection, moves)
    return before, taken


def _takes(
    result: ResultRecord, found: tuple[RequestStatus, str | None, str | None] | None,
    worker: str | None,
) -> bool:
    """Whether the request (its status, shard and claim, or None if unknown) takes this answer:
    it awaits one; a batch line still belongs to the shard whose batch gave it; a flex answer
    is recorded by the worker that holds the request's claim (or by anyone, if no one does)."""
    if found is None or found[0] not in AWAITING_ANSWER:
        return False
    if result.shard_key is not None:
        # Only while its batch is what it awaits: a file read again (a reconcile taken over
        # after a crash) must not take back a request that a flex call is answering now.
        return found[0] is RequestStatus.SUBMITTED and result.shard_key == found[1]
    claimed_by = found[2]
    return worker is None or claimed_by is None or claimed_by == worker


def _statuses(
    db: Database, connection: Connection, custom_ids: list[str]
) -> dict[str, tuple[RequestStatus, str | None, str | None]]:
    """The status, shard and claim owner of each of ``custom_ids`` the ledger knows, read in
    the write transaction (on PostgreSQL locking the rows, so nothing moves them between this
    read and the write)."""
    query = select(
        t.requests.c.custom_id, t.requests.c.status, t.requests.c.shard_key,
        t.requests.c.claimed_by,
    ).where(db.in_list(t.requests.c.custom_id))
    if db.dialect == "postgresql":
        query = query.with_for_update()
    found: dict[str, tuple[RequestStatus, str | None, str | None]] = {}
    for chunk in chunked(custom_ids, CHUNK_SIZE):
        rows = connection.execute(query, {"ids": db.list_param(chunk)}).all()
        for custom_id, status, shard_key, claimed_by in rows:
            found[custom_id] = (_STATUS[status], shard_key, claimed_by)
    return found


def _clean_answer(table: Any) -> Any:
    """A stored result that is an answer (a 200 with nothing wrong with it)."""
    return and_(table.c.status_code == 200, table.c.error_json.is_(None))


_HISTORY_COLUMNS = ("custom_id", "status_code", "body", "error_json", "parsed_json", "source",
                    "batch_id", "received_at", "run_id")


def _keep_history(db: Database, connection: Connection, custom_ids: list[str],
                  now: float) -> None:
    """Copy the earlier answers that the new results of ``custom_ids`` are about to replace
    (a refreshed request answered again) into ``result_history``: nothing paid for is lost."""
    source = select(
        *(t.results.c[name] for name in _HISTORY_COLUMNS), literal(now).label("replaced_at")
    ).where(
        db.in_list(t.results.c.custom_id), _clean_answer(t.results)
    )
    statement = insert(t.result_history).from_select([*_HISTORY_COLUMNS, "replaced_at"], source)
    for chunk in chunked(custom_ids, CHUNK_SIZE):
        connection.execute(statement, {"ids": db.list_param(chunk)})


def _store_statement(db: Database) -> BulkWrite:
    """Upsert a result on custom_id (a request moved back to awaiting may be answered again)."""
    return db.bulk(
        "results.store",
        lambda: db.upsert(t.results, ["custom_id"], _STORED_COLUMNS[1:]),
        _STORED_COLUMNS,
    )


def _keep_statement(db: Database) -> BulkWrite:
    """Upsert a retryable result, except over an earlier answer: a refreshed request whose new
    try failed for now keeps the answer it had (export and status still show it)."""
    return db.bulk(
        "results.keep",
        lambda: db.upsert(
            t.results, ["custom_id"], _STORED_COLUMNS[1:],
            where=~_clean_answer(t.results),
        ),
        _STORED_COLUMNS,
    )


def _move_statement(db: Database) -> BulkWrite:
    """A request awaiting an answer takes its outcome, adding the tokens and cost."""

    def build() -> Any:
        return (
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
                completion_tokens=t.requests.c.completion_tokens
                + bindparam("b_completion_tokens"),
                cost_usd=t.requests.c.cost_usd + bindparam("b_cost_usd"),
                updated_at=bindparam("b_now"),
                claimed_by=None,
                lease_until=None,
            )
        )

    return db.bulk("results.move", build, _MOVE_COLUMNS)


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
