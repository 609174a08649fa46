"""Reopening failed requests (``groqbatch retry``): failed → pending, so the next run sends them.

:class:`state.Ledger` exposes this as :meth:`~state.Ledger.reopen_failed`. Like
:meth:`~state.Ledger.refresh` for succeeded requests, it is the one way out of a final state,
and it is not in :data:`state.status.REQUEST_MOVES`: nothing else may move a failed request.

The move is guarded in SQL (``UPDATE … WHERE status = 'failed' … RETURNING custom_id``), so it
is safe while workers run: a failed request holds no claim, a succeeded or open one is never
touched, and two ``retry`` calls at once reopen each request once. What was stored for a
reopened request — its error, or the answer that did not fit the output schema — is copied to
``result_history`` in the same transaction: nothing paid for is lost. The stored result itself
stays until a new one replaces it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, bindparam, insert, literal, not_, select, update

from state import schema as t
from state.engine import CHUNK_SIZE, Database, chunked
from state.status import RequestStatus

__all__ = ["INVALID_OUTPUT_PREFIX", "ReopenCounts", "reopen_failed"]

INVALID_OUTPUT_PREFIX = "invalid_output: "
"""How ``last_error`` starts for an answer that did not parse or fit the output schema (the
same text as :data:`jobs.outputs.INVALID_OUTPUT_PREFIX`; ``state`` cannot import ``jobs``)."""

_FAILED = RequestStatus.FAILED.value
_HISTORY_COLUMNS = ("custom_id", "status_code", "body", "error_json", "parsed_json", "source",
                    "batch_id", "received_at", "run_id")


@dataclass(frozen=True, slots=True)
class ReopenCounts:
    """How many failed requests were reopened, by kind."""

    failed: int = 0
    """Failed with an error (a 4xx, or their attempts spent)."""
    invalid_output: int = 0
    """Failed because the answer did not parse or fit the output schema."""

    @property
    def total(self) -> int:
        return self.failed + self.invalid_output


def _kind(invalid_output: bool) -> ColumnElement[bool]:
    is_invalid = t.requests.c.last_error.like(INVALID_OUTPUT_PREFIX + "%")
    return is_invalid if invalid_output else not_(is_invalid) | t.requests.c.last_error.is_(None)


def reopen_failed(
    db: Database,
    job: str,
    *,
    failed: bool = True,
    invalid_output: bool = True,
    custom_ids: Iterable[str] | None = None,
    dry_run: bool = False,
) -> ReopenCounts:
    """See :meth:`state.Ledger.reopen_failed`."""
    of_job = select(t.rows.c.custom_id).where(t.rows.c.job == job)
    now = time.time()
    counts = {True: 0, False: 0}  # invalid_output? → reopened
    kinds = [kind for kind, wanted in ((False, failed), (True, invalid_output)) if wanted]
    id_chunks: Iterable[list[str] | None] = (
        [None] if custom_ids is None else chunked(custom_ids, CHUNK_SIZE)
    )
    history = insert(t.result_history).from_select(
        [*_HISTORY_COLUMNS, "replaced_at"],
        select(*(t.results.c[name] for name in _HISTORY_COLUMNS), literal(now)).where(
            t.results.c.custom_id.in_(bindparam("ids", expanding=True))
        ),
    )
    with db.transaction("reopen_failed", write=not dry_run) as connection:
        for chunk in id_chunks:
            for kind in kinds:
                where = [t.requests.c.status == _FAILED, t.requests.c.custom_id.in_(of_job),
                         _kind(kind)]
                if chunk is not None:
                    where.append(t.requests.c.custom_id.in_(chunk))
                if dry_run:
                    counts[kind] += len(connection.execute(
                        select(t.requests.c.custom_id).where(*where)).all())
                    continue
                moved = list(connection.execute(
                    update(t.requests)
                    .where(*where)
                    .values(status=RequestStatus.PENDING.value, shard_key=None, attempts=0,
                            last_error=None, claimed_by=None, lease_until=None, updated_at=now)
                    .returning(t.requests.c.custom_id)
                ).scalars())
                for ids in chunked(moved, CHUNK_SIZE):
                    connection.execute(history, {"ids": ids})
                counts[kind] += len(moved)
    return ReopenCounts(failed=counts[False], invalid_output=counts[True])
