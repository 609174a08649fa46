"""The ledger's export operations: input rows looked up with their request and answer, and the
record of each export (for ``--since-last``).

:class:`state.Ledger` exposes these as methods; they live here to keep each module readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import bindparam, insert, select

from state import schema as t
from state.engine import CHUNK_SIZE, Database, chunked, decompress

__all__ = ["ExportRecord", "RowOutcome", "last_export", "record_export", "row_outcomes"]

_OPEN = frozenset({"pending", "queued", "submitted", "retryable", "in_flight"})


@dataclass(frozen=True, slots=True)
class RowOutcome:
    """One input row of a job as the ledger has it: its request (if it became one), where that
    request stands, and its stored answer (if any). Rows sharing a request share all but the key.
    """

    row_key: str
    row_index: int
    custom_id: str | None
    reason: str | None
    """Why the row was rejected; None for a row that became a request."""
    status: str | None
    """The request's status; None for a rejected row."""
    last_error: str | None
    tier: str | None
    prompt_tokens: int
    completion_tokens: int
    status_code: int | None
    body: bytes | None
    """The stored answer (response body JSON, uncompressed), if any."""
    parsed: str | None
    received_at: float | None
    result_error: str | None = None
    """What was wrong with the stored result (None for a clean answer)."""
    data: bytes | None = None
    """The row as its step read it (JSON), for a later step of a multi-step job."""

    @property
    def kept_answer(self) -> bool:
        """The request is open again (``--refresh``) and its earlier answer is still the one
        stored: export gives that answer until a new one replaces it."""
        return (
            self.status in _OPEN and self.status_code == 200 and self.body is not None
            and self.result_error is None
        )


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """One recorded export of a job."""

    job: str
    exported_at: float
    path: str
    format: str
    rows: int


def row_outcomes(db: Database, job: str, row_keys: Iterable[str]) -> dict[str, RowOutcome]:
    """See :meth:`state.Ledger.row_outcomes`."""
    rq, rs, rw = t.requests, t.results, t.rows
    query = (
        select(
            rw.c.row_key, rw.c.row_index, rw.c.custom_id, rw.c.reason,
            rq.c.status, rq.c.last_error, rq.c.tier, rq.c.prompt_tokens, rq.c.completion_tokens,
            rs.c.status_code, rs.c.body, rs.c.parsed_json, rs.c.received_at, rs.c.error_json,
            rw.c.data,
        )
        .select_from(
            rw.outerjoin(rq, rq.c.custom_id == rw.c.custom_id)
            .outerjoin(rs, rs.c.custom_id == rw.c.custom_id)
        )
        .where(rw.c.job == job, rw.c.row_key.in_(bindparam("keys", expanding=True)))
    )
    found: dict[str, RowOutcome] = {}
    for chunk in chunked(row_keys, CHUNK_SIZE):
        with db.transaction("row_outcomes", write=False) as connection:
            page = connection.execute(query, {"keys": chunk}).all()
        for row in page:
            found[row.row_key] = RowOutcome(
                row_key=row.row_key,
                row_index=row.row_index,
                custom_id=row.custom_id,
                reason=row.reason,
                status=row.status,
                last_error=row.last_error,
                tier=row.tier,
                prompt_tokens=row.prompt_tokens or 0,
                completion_tokens=row.completion_tokens or 0,
                status_code=row.status_code,
                body=None if row.body is None else decompress(row.body),
                parsed=row.parsed_json,
                received_at=row.received_at,
                result_error=row.error_json,
                data=None if row.data is None else decompress(row.data),
            )
    return found


def record_export(db: Database, record: ExportRecord) -> None:
    """See :meth:`state.Ledger.record_export`."""
    values = {
        "job": record.job,
        "exported_at": record.exported_at,
        "path": record.path,
        "format": record.format,
        "rows": record.rows,
    }
    with db.transaction("record_export") as connection:
        connection.execute(insert(t.exports).values(values))


def last_export(db: Database, job: str) -> ExportRecord | None:
    """See :meth:`state.Ledger.last_export`."""
    query = (
        select(t.exports.c.job, t.exports.c.exported_at, t.exports.c.path, t.exports.c.format,
               t.exports.c.rows)
        .where(t.exports.c.job == job)
        .order_by(t.exports.c.exported_at.desc(), t.exports.c.id.desc())
        .limit(1)
    )
    with db.transaction("last_export", write=False) as connection:
        row = connection.execute(query).one_or_none()
    return None if row is None else ExportRecord(*row)
