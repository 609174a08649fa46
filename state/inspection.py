"""Reading the ledger for people: one row's journey (``groqbatch inspect``) and the jobs a
ledger holds (``groqbatch jobs``).

:class:`state.Ledger` exposes these as :meth:`~state.Ledger.journey` and
:meth:`~state.Ledger.job_overviews`. Each is a read in one short transaction.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, func, or_, select

from state import schema as t
from state.engine import Database, decompress
from state.status import RequestStatus, ShardStep

__all__ = ["job_overviews", "journey"]

_OPEN = frozenset({RequestStatus.PENDING.value, RequestStatus.QUEUED.value,
                   RequestStatus.SUBMITTED.value, RequestStatus.RETRYABLE.value,
                   RequestStatus.IN_FLIGHT.value})
_FINAL_STEPS = frozenset({ShardStep.RECONCILED.value, ShardStep.DROPPED.value})
_SHARD_COLUMNS = ("key", "path", "lines", "bytes", "step", "file_id", "batch_id", "batch_status",
                  "request_counts_json", "output_file_id", "error_file_id", "created_at",
                  "updated_at", "claimed_by", "lease_until")


def _json(value: bytes | str | None) -> Any:
    """Stored JSON (bytes or text) parsed; text that is not JSON is returned as it is."""
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode(errors="replace") if isinstance(value, bytes) else value


def _result(row: Any) -> dict[str, Any]:
    return {
        "source": row.source,
        "batch_id": row.batch_id,
        "status_code": row.status_code,
        "body": _json(None if row.body is None else decompress(row.body)),
        "error": _json(row.error_json),
        "parsed": _json(row.parsed_json),
        "received_at": row.received_at,
        "run_id": row.run_id,
    }


def journey(db: Database, job: str, key: str, *, max_rows: int = 20) -> dict[str, Any] | None:
    """See :meth:`state.Ledger.journey`."""
    rw, rq = t.rows, t.requests
    with db.transaction("journey", write=False) as connection:
        found = connection.execute(
            select(rw).where(rw.c.job == job, rw.c.row_key == key)
        ).mappings().one_or_none()
        custom_id = found["custom_id"] if found is not None else key
        matched_by = "row_key" if found is not None else "custom_id"
        sharing = [dict(row) for row in connection.execute(
            select(rw.c.row_key, rw.c.row_index, rw.c.status, rw.c.reason)
            .where(rw.c.job == job, rw.c.custom_id == custom_id)
            .order_by(rw.c.row_index).limit(max_rows)
        ).mappings()] if custom_id is not None else []
        if found is None and not sharing:
            return None
        rows = sharing
        if found is not None:  # the row asked for first, then those sharing its request
            rows = [{k: found[k] for k in ("row_key", "row_index", "status", "reason")},
                    *(row for row in sharing if row["row_key"] != key)]
        request = None
        if custom_id is not None:
            request = connection.execute(
                select(rq).where(rq.c.custom_id == custom_id)
            ).mappings().one_or_none()
        current = history = []
        shards: dict[str, dict[str, Any]] = {}
        if request is not None:
            current = [_result(row) for row in connection.execute(
                select(t.results).where(t.results.c.custom_id == custom_id))]
            history = [{**_result(row), "replaced_at": row.replaced_at} for row in connection.execute(
                select(t.result_history).where(t.result_history.c.custom_id == custom_id)
                .order_by(t.result_history.c.id))]
            shards = _shards(connection, request["shard_key"],
                             {r["batch_id"] for r in [*current, *history] if r["batch_id"]})
    return {
        "job": job,
        "matched_by": matched_by,
        "rows": rows,
        "custom_id": custom_id,
        "request": None if request is None else {
            **{k: request[k] for k in ("endpoint", "status", "shard_key", "attempts", "tier",
                                       "prompt_tokens", "completion_tokens", "cost_usd",
                                       "last_error", "created_at", "updated_at", "claimed_by",
                                       "lease_until")},
            "body": _json(decompress(request["body"])),
        },
        "result": current[0] if current else None,
        "history": history,
        "shards": shards,
    }


def _shards(connection: Connection, shard_key: str | None,
            batch_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The request's current shard and the shards whose batches answered it, by key."""
    wanted: list[ColumnElement[bool]] = (
        [t.shards.c.batch_id.in_(sorted(batch_ids))] if batch_ids else [])
    if shard_key is not None:
        wanted.append(t.shards.c.key == shard_key)
    if not wanted:
        return {}
    query = (select(*(t.shards.c[c] for c in _SHARD_COLUMNS)).where(or_(*wanted))
             .order_by(t.shards.c.created_at, t.shards.c.key))
    found: dict[str, dict[str, Any]] = {}
    for row in connection.execute(query).mappings():
        shard = dict(row)
        shard["request_counts"] = _json(shard.pop("request_counts_json"))
        found[shard["key"]] = shard
    return found


def job_overviews(db: Database) -> list[dict[str, Any]]:
    """See :meth:`state.Ledger.job_overviews`."""
    now = time.time()
    rq, rw = t.requests, t.rows
    with db.transaction("job_overviews", write=False) as connection:
        jobs = [dict(row) for row in connection.execute(
            select(t.jobs.c.name, t.jobs.c.created_at, t.jobs.c.updated_at).order_by(t.jobs.c.name)
        ).mappings()]
        for job in jobs:
            name = job["name"]
            of_job = select(rw.c.custom_id).where(rw.c.job == name)
            job["requests"] = {status.value: 0 for status in RequestStatus}
            for status, count in connection.execute(
                select(rq.c.status, func.count()).where(rq.c.custom_id.in_(of_job))
                .group_by(rq.c.status)
            ):
                job["requests"][status] = count
            job["rows"] = {status: count for status, count in connection.execute(
                select(rw.c.status, func.count()).where(rw.c.job == name).group_by(rw.c.status))}
            prompt, completion, cost = connection.execute(select(
                func.coalesce(func.sum(rq.c.prompt_tokens), 0),
                func.coalesce(func.sum(rq.c.completion_tokens), 0),
                func.coalesce(func.sum(rq.c.cost_usd), 0.0),
            ).where(rq.c.custom_id.in_(of_job))).one()
            job["spend"] = {"prompt_tokens": int(prompt), "completion_tokens": int(completion),
                            "cost_usd": float(cost)}
            open_shards = connection.execute(
                select(func.count()).where(t.shards.c.job == name,
                                           t.shards.c.step.not_in(sorted(_FINAL_STEPS)))
            ).scalar_one()
            runs = connection.execute(
                select(func.count(), func.max(t.runs.c.started_at),
                       func.max(t.runs.c.finished_at)).where(t.runs.c.job == name)
            ).one()
            live = connection.execute(
                select(func.count()).where(
                    t.workers.c.job == name, t.workers.c.stopped_at.is_(None),
                    t.workers.c.seen_at + t.workers.c.lease_s >= now)
            ).scalar_one()
            job.update(open_shards=int(open_shards), runs=int(runs[0]),
                       last_started_at=runs[1], last_finished_at=runs[2], live_workers=int(live))
    return jobs
