"""The job's deadline: past it, nothing new goes to the batch path and what is still open is
finished by the fallback (when ``"deadline"`` is among ``[policy.fallback].triggers``).

A duration deadline (``deadline = "36h"``) counts from when the job was first run — its row in
the ledger — so a job driven by cron keeps one deadline across all its runs.
"""

from __future__ import annotations

import datetime as dt

from jobs import JobSpec
from state import Ledger, RequestStatus, ShardStep

from .workers import Worker

DROPPED_REASON = "deadline: the deadline passed before this request's batch was created"


def job_deadline(spec: JobSpec, ledger: Ledger) -> dt.datetime | None:
    """When the job's deadline falls, if it has one and the fallback acts on it."""
    fallback = spec.policy.fallback
    if spec.policy.deadline is None or not fallback.enabled or "deadline" not in fallback.triggers:
        return None
    created = ledger.job_created_at(spec.name)
    started = dt.datetime.fromtimestamp(created, tz=dt.UTC) if created else dt.datetime.now(dt.UTC)
    return spec.policy.deadline_at(started)


def deadline_passed(deadline: dt.datetime | None) -> bool:
    return deadline is not None and dt.datetime.now(dt.UTC) >= deadline


def drop_unsubmitted(ledger: Ledger, job: str, worker: Worker | None = None) -> int:
    """Shards with no batch yet (and none being created) are dropped; their requests go to
    the fallback. A shard caught in ``submitting`` is left for submit to resolve, since its
    batch may already exist; a shard another worker holds (mid-upload, say) is left to it and
    dropped in a later round."""
    worker = worker or Worker.make()
    dropped = 0
    steps = (ShardStep.COMPILED, ShardStep.UPLOADING, ShardStep.UPLOADED)
    for shard in ledger.claim_shards(job, worker.id, steps, limit=100_000, lease_s=worker.lease_s):
        try:
            dropped += ledger.set_shard_step(shard["key"], ShardStep(shard["step"]),
                                             ShardStep.DROPPED, worker=worker.id)
        finally:
            ledger.release_shard(shard["key"], worker.id)
    for shard in ledger.shards(job):
        if shard["step"] == ShardStep.DROPPED:
            # Every round, not only when dropping: a crash between the two writes is repaired.
            ledger.transition_shard(shard["key"], RequestStatus.QUEUED, RequestStatus.RETRYABLE,
                                    last_error=DROPPED_REASON)
    return dropped
