"""Claims: the ledger as a work queue that any number of workers share.

Every unit of work — a shard's next step, a group of flex requests, a job's compile — is
claimed before the remote call is made: a guarded ``UPDATE`` sets ``claimed_by`` (the worker
id) and ``lease_until``. A worker acts only on what the ``UPDATE … RETURNING`` gave back to it,
renews its leases while it works (:func:`renew`), and never takes another worker's live
claim. An expired lease is free again: that is how the work of a worker killed with ``kill -9``
is taken over, and the crash-exact adoption rules of :mod:`pipeline.submit` then resolve what
it left half done.

On PostgreSQL the candidates are picked with ``FOR UPDATE SKIP LOCKED`` (workers racing for
the same rows each get different ones instead of queueing on row locks); on SQLite every
writer already holds the database's write lock from ``BEGIN IMMEDIATE``, so the same
select-then-update is atomic there too.

Leases are wall-clock Unix seconds, compared on the worker's clock: workers on several
machines need clocks in step to well within a lease (NTP gives milliseconds; leases are a
minute by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, or_, select, update

from state import schema as t
from state.engine import CHUNK_SIZE, Database, chunked
from state.status import RequestStatus, ShardStep

__all__ = [
    "DEFAULT_LEASE_S",
    "claim_requests",
    "claim_shards",
    "live_claims",
    "lock",
    "reap_dead_local_workers",
    "recover_expired_requests",
    "register_worker",
    "release_shard",
    "renew",
    "unlock",
    "workers",
]

DEFAULT_LEASE_S = 60.0
"""How long a claim holds without renewal. A worker renews every third of it, so a live worker
never loses a claim; a dead one's work is free again at most this long after it died."""

_IN_FLIGHT = RequestStatus.IN_FLIGHT.value
_RETRYABLE = RequestStatus.RETRYABLE.value


def _free(table: Any, now: float, worker: str | None = None) -> Any:
    """Unclaimed or expired (or, with ``worker``, already that worker's)."""
    free = [table.c.claimed_by.is_(None), table.c.lease_until.is_(None), table.c.lease_until < now]
    if worker is not None:
        free.append(table.c.claimed_by == worker)
    return or_(*free)


def claim_shards(
    db: Database,
    job: str,
    worker: str,
    steps: Iterable[ShardStep],
    *,
    limit: int,
    lease_s: float,
) -> list[dict[str, Any]]:
    """Claim up to ``limit`` of the job's shards in ``steps`` that no worker holds live (this
    one included: a stage releases what it holds when it ends, so it never picks a shard twice).

    Returns the claimed shards (column → value, as they are now), oldest first.
    """
    now = time.time()
    wanted = [ShardStep(step).value for step in steps]
    candidates = (
        select(t.shards.c.key)
        .where(t.shards.c.job == job, t.shards.c.step.in_(wanted), _free(t.shards, now))
        .order_by(t.shards.c.created_at, t.shards.c.key)
        .limit(limit)
    )
    if db.dialect == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    statement = (
        update(t.shards)
        # The guard again on the row itself: what the sub-select saw is what is updated.
        .where(t.shards.c.key.in_(candidates.scalar_subquery()), _free(t.shards, now))
        .values(claimed_by=worker, lease_until=now + lease_s)
        .returning(*t.shards.c)
    )
    with db.transaction("claim_shards") as connection:
        rows = [dict(row) for row in connection.execute(statement).mappings()]
    rows.sort(key=lambda row: (row["created_at"], row["key"]))
    return rows


def release_shard(db: Database, key: str, worker: str) -> bool:
    """Give up a claim (the step is done); False if the shard was no longer ours."""
    statement = (
        update(t.shards)
        .where(t.shards.c.key == key, t.shards.c.claimed_by == worker)
        .values(claimed_by=None, lease_until=None)
    )
    with db.transaction("release_shard") as connection:
        return bool(connection.execute(statement).rowcount)


def claim_requests(
    db: Database,
    custom_ids: Sequence[str],
    worker: str,
    *,
    lease_s: float,
    tier: str,
) -> list[str]:
    """Move those of ``custom_ids`` that are retryable to in_flight, claimed by ``worker``
    (one attempt each); returns the ids this worker got. Another worker may have taken some
    meanwhile: only the returned ids may be sent."""
    now = time.time()
    candidates = select(t.requests.c.custom_id).where(
        t.requests.c.custom_id.in_(bindparam("ids", expanding=True)),
        t.requests.c.status == _RETRYABLE,
    )
    if db.dialect == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    statement = (
        update(t.requests)
        .where(
            t.requests.c.custom_id.in_(candidates.scalar_subquery()),
            t.requests.c.status == _RETRYABLE,
        )
        .values(
            status=_IN_FLIGHT,
            claimed_by=worker,
            lease_until=now + lease_s,
            tier=tier,
            attempts=t.requests.c.attempts + 1,
            updated_at=now,
        )
        .returning(t.requests.c.custom_id)
    )
    got: list[str] = []
    with db.transaction("claim_requests") as connection:
        for chunk in chunked(custom_ids, CHUNK_SIZE):
            got.extend(connection.execute(statement, {"ids": chunk}).scalars())
    return got


def release_requests(db: Database, custom_ids: Sequence[str], worker: str, reason: str) -> int:
    """``worker`` gives back in-flight requests it claimed but never sent: retryable again,
    the attempt the claim counted given back, ``reason`` kept as the last error."""
    now = time.time()
    attempts = (func.max(t.requests.c.attempts - 1, 0) if db.dialect == "sqlite"
                else func.greatest(t.requests.c.attempts - 1, 0))
    statement = (
        update(t.requests)
        .where(
            t.requests.c.custom_id.in_(bindparam("ids", expanding=True)),
            t.requests.c.status == _IN_FLIGHT,
            t.requests.c.claimed_by == worker,
        )
        .values(status=_RETRYABLE, claimed_by=None, lease_until=None, attempts=attempts,
                last_error=reason, updated_at=now)
    )
    moved = 0
    with db.transaction("release_requests") as connection:
        for chunk in chunked(custom_ids, CHUNK_SIZE):
            moved += int(connection.execute(statement, {"ids": chunk}).rowcount)
    return moved


def recover_expired_requests(db: Database, job: str, reason: str) -> int:
    """In-flight requests of ``job`` whose claim expired (their worker died mid-call) go back
    to retryable. The interrupted call is not a failed attempt — it got neither an answer nor
    an error — so the attempt it counted is given back. Live claims are never touched."""
    now = time.time()
    statement = (
        update(t.requests)
        .where(
            t.requests.c.status == _IN_FLIGHT,
            t.of_job(t.requests.c.custom_id, job),
            or_(t.requests.c.lease_until.is_(None), t.requests.c.lease_until < now),
        )
        .values(
            status=_RETRYABLE,
            claimed_by=None,
            lease_until=None,
            attempts=func.max(t.requests.c.attempts - 1, 0)
            if db.dialect == "sqlite"
            else func.greatest(t.requests.c.attempts - 1, 0),
            last_error=reason,
            updated_at=now,
        )
    )
    with db.transaction("recover_expired_requests") as connection:
        return int(connection.execute(statement).rowcount)


def lock(db: Database, name: str, job: str, worker: str, *, lease_s: float) -> tuple[bool, str | None, str | None]:
    """Take the named lock unless another worker holds it live.

    Returns (taken, holder, done): ``holder`` is the live holder when not taken, ``done``
    what the last holder recorded on :func:`unlock`.
    """
    now = time.time()
    with db.transaction("lock") as connection:
        connection.execute(
            db.insert_ignore(t.leases, ["name"]),
            {"name": name, "job": job, "claimed_by": None, "lease_until": None, "done": None,
             "updated_at": now},
        )
        taken = connection.execute(
            update(t.leases)
            .where(t.leases.c.name == name, _free(t.leases, now, worker))
            .values(claimed_by=worker, lease_until=now + lease_s, updated_at=now)
        ).rowcount
        row = connection.execute(
            select(t.leases.c.claimed_by, t.leases.c.done).where(t.leases.c.name == name)
        ).one()
    return bool(taken), (None if taken else row.claimed_by), row.done


def unlock(db: Database, name: str, worker: str, *, done: str | None = None) -> bool:
    """Release the named lock if ``worker`` holds it, recording ``done`` when given."""
    values: dict[str, Any] = {"claimed_by": None, "lease_until": None, "updated_at": time.time()}
    if done is not None:
        values["done"] = done
    statement = (
        update(t.leases)
        .where(t.leases.c.name == name, t.leases.c.claimed_by == worker)
        .values(values)
    )
    with db.transaction("unlock") as connection:
        return bool(connection.execute(statement).rowcount)


def lock_holder(db: Database, name: str) -> tuple[str | None, str | None]:
    """(live holder or None, done) of the named lock."""
    now = time.time()
    query = select(t.leases.c.claimed_by, t.leases.c.lease_until, t.leases.c.done).where(
        t.leases.c.name == name
    )
    with db.transaction("lock_holder", write=False) as connection:
        row = connection.execute(query).one_or_none()
    if row is None:
        return None, None
    live = row.claimed_by is not None and row.lease_until is not None and row.lease_until >= now
    return (row.claimed_by if live else None), row.done


def renew(db: Database, worker: str, *, lease_s: float) -> int:
    """Extend every claim ``worker`` holds (shards, requests, locks) and its heartbeat."""
    now = time.time()
    until = now + lease_s
    renewed = 0
    with db.transaction("renew") as connection:
        for table in (t.shards, t.requests, t.leases):
            renewed += connection.execute(
                update(table).where(table.c.claimed_by == worker).values(lease_until=until)
            ).rowcount
        connection.execute(
            update(t.workers).where(t.workers.c.worker_id == worker).values(seen_at=now)
        )
    return renewed


def register_worker(db: Database, worker: str, job: str, run_id: int | None, *, lease_s: float,
                    host: str | None = None, pid: int | None = None) -> None:
    """Record a worker starting on a job (replacing an earlier row of the same id)."""
    now = time.time()
    values = {"worker_id": worker, "job": job, "run_id": run_id, "host": host, "pid": pid,
              "started_at": now, "seen_at": now, "lease_s": lease_s, "stopped_at": None}
    statement = db.upsert(t.workers, ["worker_id"], [c for c in values if c != "worker_id"])
    with db.transaction("register_worker") as connection:
        connection.execute(statement, [values])
        # Worker ids are unique among live workers: claims already under this id belong to an
        # earlier process of the same name (a restarted systemd unit, say), which is gone. They
        # expire now, to be taken over — their in-flight calls recovered — as any dead worker's.
        for table in (t.shards, t.requests, t.leases):
            connection.execute(
                update(table).where(table.c.claimed_by == worker).values(lease_until=now - 1)
            )


def reap_dead_local_workers(
    db: Database, job: str, host: str, me: str, alive: Callable[[int], bool]
) -> list[str]:
    """Workers of ``job`` on this ``host`` whose process is gone (``alive(pid)`` is False)
    give up their claims at once, instead of after their lease: a rerun after ``kill -9`` on
    one machine resumes straight away. Only this host's processes can be checked; others'
    claims expire with their leases."""
    query = select(t.workers.c.worker_id, t.workers.c.pid).where(
        t.workers.c.job == job, t.workers.c.host == host, t.workers.c.stopped_at.is_(None),
        t.workers.c.worker_id != me, t.workers.c.pid.is_not(None),
    )
    with db.transaction("dead_local_workers", write=False) as connection:
        candidates = [(worker, pid) for worker, pid in connection.execute(query)]
    dead = [worker for worker, pid in candidates if not alive(pid)]
    if not dead:
        return []
    now = time.time()
    with db.transaction("reap_dead_local_workers") as connection:
        for table in (t.shards, t.requests, t.leases):
            connection.execute(
                update(table)
                .where(table.c.claimed_by.in_(dead))
                .values(lease_until=now - 1)  # expired: claimable, and in-flight recoverable
            )
        connection.execute(
            update(t.workers).where(t.workers.c.worker_id.in_(dead)).values(stopped_at=now)
        )
    return dead


def stop_worker(db: Database, worker: str) -> None:
    """A worker is done: it gives up whatever it still holds and is marked stopped.

    An in-flight request it still holds (a run cut short by an error) keeps its owner but its
    lease ends now: the call's outcome will never be recorded by this worker, so the next one
    recovers it at once — its attempt given back — instead of after the lease.
    """
    now = time.time()
    with db.transaction("stop_worker") as connection:
        for table in (t.shards, t.leases):
            connection.execute(
                update(table).where(table.c.claimed_by == worker)
                .values(claimed_by=None, lease_until=None)
            )
        connection.execute(
            update(t.requests).where(t.requests.c.claimed_by == worker)
            .values(lease_until=now - 1)
        )
        connection.execute(
            update(t.workers).where(t.workers.c.worker_id == worker).values(stopped_at=now,
                                                                           seen_at=now)
        )


def workers(db: Database, job: str) -> list[dict[str, Any]]:
    """The job's workers, newest first, each with ``live`` (heartbeat within its lease, not
    stopped) and what it holds now: shards by step, in-flight requests, locks."""
    now = time.time()
    with db.transaction("workers", write=False) as connection:
        rows = [
            dict(row)
            for row in connection.execute(
                select(t.workers)
                .where(t.workers.c.job == job)
                .order_by(t.workers.c.started_at.desc())
                .limit(50)
            ).mappings()
        ]
        held = _held(connection, job, now)
    for row in rows:
        row["live"] = row["stopped_at"] is None and row["seen_at"] + row["lease_s"] >= now
        row["holds"] = held.get(row["worker_id"], {})
    return rows


def live_claims(db: Database, job: str) -> dict[str, dict[str, int]]:
    """worker id → what it holds live on ``job``: ``shards:<step>``, ``requests``, ``lock:<name>``."""
    with db.transaction("live_claims", write=False) as connection:
        return _held(connection, job, time.time())


def _held(connection: Connection, job: str, now: float) -> dict[str, dict[str, int]]:
    held: dict[str, dict[str, int]] = {}

    def add(worker: str, what: str, count: int) -> None:
        held.setdefault(worker, {})[what] = held.get(worker, {}).get(what, 0) + count

    shard_query = (
        select(t.shards.c.claimed_by, t.shards.c.step, func.count())
        .where(t.shards.c.job == job, t.shards.c.claimed_by.is_not(None),
               t.shards.c.lease_until >= now)
        .group_by(t.shards.c.claimed_by, t.shards.c.step)
    )
    for worker, step, count in connection.execute(shard_query):
        add(worker, f"shards:{step}", count)
    request_query = (
        select(t.requests.c.claimed_by, func.count())
        .where(t.requests.c.status == _IN_FLIGHT, t.requests.c.claimed_by.is_not(None),
               t.requests.c.lease_until >= now, t.of_job(t.requests.c.custom_id, job))
        .group_by(t.requests.c.claimed_by)
    )
    for worker, count in connection.execute(request_query):
        add(worker, "requests", count)
    lock_query = select(t.leases.c.claimed_by, t.leases.c.name).where(
        t.leases.c.job == job, t.leases.c.claimed_by.is_not(None), t.leases.c.lease_until >= now
    )
    for worker, name in connection.execute(lock_query):
        add(worker, f"lock:{name}", 1)
    return held


def forget_workers(db: Database, job: str, older_than_s: float) -> int:
    """Drop stopped or dead workers' rows older than ``older_than_s`` (keeps status short)."""
    cutoff = time.time() - older_than_s
    statement = delete(t.workers).where(t.workers.c.job == job, t.workers.c.seen_at < cutoff)
    with db.transaction("forget_workers") as connection:
        return int(connection.execute(statement).rowcount)
