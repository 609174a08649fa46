"""What ``groqbatch gc`` may delete, and the record of what it deleted.

:class:`state.Ledger` exposes these as :meth:`~state.Ledger.gc_shards`,
:meth:`~state.Ledger.files_in_use`, :meth:`~state.Ledger.record_deleted_files` and
:meth:`~state.Ledger.deleted_files`. The rules themselves — never a file a live batch or a live
claim uses, never a shard file whose requests are not all settled — are applied by
:mod:`pipeline.cleanup` on what these reads return.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select

from state import schema as t
from state.engine import CHUNK_SIZE, Database, chunked
from state.status import RequestStatus, ShardStep

__all__ = ["DeletedFile", "deleted_files", "files_in_use", "gc_shards", "record_deleted_files"]

FINAL_STEPS = (ShardStep.RECONCILED.value, ShardStep.DROPPED.value)
"""A shard in one of these has no batch that may still run and no file left to read."""
_SETTLED = (RequestStatus.SUCCEEDED.value, RequestStatus.FAILED.value)


@dataclass(frozen=True, slots=True)
class DeletedFile:
    """One file gc deleted: a remote file id or a local path, with the bytes it freed."""

    job: str
    place: str
    """``remote`` or ``local``."""
    name: str
    """The file id (remote) or the absolute path (local)."""
    kind: str
    """``input``, ``output``, ``error`` (remote); ``shard``, ``download`` (local)."""
    shard_key: str | None = None
    bytes: int | None = None


def _live(table: Any, now: float) -> Any:
    return and_(table.c.claimed_by.is_not(None), table.c.lease_until >= now)


def gc_shards(db: Database, job: str) -> list[dict[str, Any]]:
    """See :meth:`state.Ledger.gc_shards`."""
    now = time.time()
    sh, rq = t.shards, t.requests
    open_requests = (
        select(func.count()).where(rq.c.shard_key == sh.c.key, rq.c.status.not_in(_SETTLED))
        .scalar_subquery()
    )
    query = (
        select(sh.c.key, sh.c.path, sh.c.sha256, sh.c.bytes, sh.c.step, sh.c.file_id,
               sh.c.batch_id, sh.c.batch_status, sh.c.output_file_id, sh.c.error_file_id,
               sh.c.updated_at, _live(sh, now).label("claimed"),
               open_requests.label("open_requests"))
        .where(sh.c.job == job)
        .order_by(sh.c.created_at, sh.c.key)
    )
    with db.transaction("gc_shards", write=False) as connection:
        rows = [dict(row) for row in connection.execute(query).mappings()]
    for row in rows:
        row["claimed"] = bool(row["claimed"])
        row["final"] = row["step"] in FINAL_STEPS
    return rows


def files_in_use(db: Database, *, sha256s: Iterable[str] = (),
                 file_ids: Iterable[str] = ()) -> tuple[set[str], set[str]]:
    """See :meth:`state.Ledger.files_in_use`."""
    now = time.time()
    sh, rq = t.shards, t.requests
    unsettled = (
        select(rq.c.custom_id)
        .where(rq.c.shard_key == sh.c.key, rq.c.status.not_in(_SETTLED)).exists()
    )
    busy = or_(sh.c.step.not_in(FINAL_STEPS), _live(sh, now), unsettled)
    used_sha: set[str] = set()
    used_ids: set[str] = set()
    with db.transaction("files_in_use", write=False) as connection:
        for chunk in chunked(sha256s, CHUNK_SIZE):
            used_sha.update(connection.execute(
                select(sh.c.sha256).where(sh.c.sha256.in_(chunk), busy)).scalars())
        for chunk in chunked(file_ids, CHUNK_SIZE):
            for column in (sh.c.file_id, sh.c.output_file_id, sh.c.error_file_id):
                used_ids.update(connection.execute(
                    select(column).where(column.in_(chunk), busy)).scalars())
    return used_sha, used_ids


def record_deleted_files(db: Database, files: Iterable[DeletedFile]) -> int:
    """See :meth:`state.Ledger.record_deleted_files`."""
    recorded = 0
    for chunk in chunked(files, CHUNK_SIZE):
        now = time.time()
        params = [{"job": f.job, "place": f.place, "name": f.name, "kind": f.kind,
                   "shard_key": f.shard_key, "bytes": f.bytes, "deleted_at": now} for f in chunk]
        with db.transaction("record_deleted_files") as connection:
            connection.execute(t.deleted_files.insert(), params)
        recorded += len(params)
    return recorded


def deleted_files(db: Database, job: str, place: str | None = None) -> list[DeletedFile]:
    """See :meth:`state.Ledger.deleted_files`."""
    d = t.deleted_files
    query = select(d.c.job, d.c.place, d.c.name, d.c.kind, d.c.shard_key, d.c.bytes).where(
        d.c.job == job)
    if place is not None:
        query = query.where(d.c.place == place)
    with db.transaction("deleted_files", write=False) as connection:
        return [DeletedFile(*row) for row in connection.execute(query.order_by(d.c.id))]
