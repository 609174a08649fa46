"""Poll: every in-flight batch of a job in as few calls as the API allows.

Groq takes up to 200 ids in one ``GET /batches?id=…`` call, so a job with 1,000 shards in flight
costs five calls a round. Status and request counts are recorded as they change; a batch that
has settled (completed, expired, failed, cancelled) moves its shard to ``settled`` with its
output and error file ids, ready for reconcile.

How often to poll is :class:`PollInterval`'s business: it starts at the job's minimum, grows
while nothing changes, and drops back to the minimum when something does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from state import Ledger, ShardStep

from .client import GroqClient, RemoteBatch
from .errors import PermanentAPIError, RetryableAPIError
from .faultpoints import crash_point
from .workers import Worker

log = logging.getLogger("groqbatch.poll")


@dataclass(slots=True)
class PollReport:
    polled: int = 0
    calls: int = 0
    changed: int = 0
    settled: list[str] = field(default_factory=list)
    """Shard keys that settled in this round."""
    statuses: dict[str, int] = field(default_factory=dict)
    failed_calls: int = 0
    """Calls whose retries ran out this round (the batches are asked for again next round)."""


async def poll_batches(ledger: Ledger, client: GroqClient, job: str,
                       worker: Worker | None = None) -> PollReport:
    """Poll the job's in-flight batches that no other worker is polling, and record them.

    The shards are claimed for the round (a worker polling is enough; the others poll what it
    does not hold) and released at the end of it.
    """
    worker = worker or Worker.make()
    report = PollReport()
    claimed = await anyio.to_thread.run_sync(lambda: ledger.claim_shards(
        job, worker.id, [ShardStep.SUBMITTED], limit=MAX_POLLED, lease_s=worker.lease_s))
    if not claimed:
        return report
    try:
        await _poll(ledger, client, job, worker, {s["batch_id"]: s for s in claimed}, report)
    finally:
        with anyio.CancelScope(shield=True):
            for shard in claimed:
                await anyio.to_thread.run_sync(ledger.release_shard, shard["key"], worker.id)
    return report


MAX_POLLED = 2_000
"""Shards one worker polls in a round (ten calls of 200 ids)."""


async def _poll(ledger: Ledger, client: GroqClient, job: str, worker: Worker,
                in_flight: dict[str, dict[str, Any]], report: PollReport) -> None:
    report.calls = -(-len(in_flight) // 200)
    try:
        batches = await client.get_batches(list(in_flight))
    except RetryableAPIError as exc:
        # The client's retries ran out (an outage, not a refusal): nothing is known this round,
        # so nothing changes; the next round asks again.
        report.failed_calls = report.calls
        log.warning("polling %d batches of %s: %s; will try again", len(in_flight), job, exc)
        return
    report.polled = len(batches)
    for batch in batches:
        shard = in_flight.pop(batch.id, None)
        if shard is not None:
            _record_batch(ledger, shard, batch, report, worker)
    # A batch the list left out: ask for it alone. One the server no longer knows (404) is
    # lost — its shard settles with no files, and reconcile sends its requests to the
    # fallback as missing — rather than polled forever.
    for batch_id, shard in in_flight.items():
        try:
            _record_batch(ledger, shard, await client.get_batch(batch_id), report, worker)
        except PermanentAPIError as exc:
            if exc.status_code != 404:
                raise
            log.warning("batch %s of shard %s is unknown to the server; its requests go to "
                        "the fallback", batch_id, shard["key"])
            ledger.set_shard_step(shard["key"], ShardStep.SUBMITTED, ShardStep.SETTLED,
                                  worker=worker.id, batch_status=LOST)
            report.settled.append(shard["key"])
            report.changed += 1
        except RetryableAPIError as exc:
            log.warning("polling batch %s: %s; will try again", batch_id, exc)


LOST = "lost"
"""``batch_status`` of a shard whose batch the server no longer knows."""


def _record_batch(ledger: Ledger, shard: dict[str, Any], batch: RemoteBatch, report: PollReport,
                  worker: Worker) -> None:
    report.statuses[batch.status] = report.statuses.get(batch.status, 0) + 1
    counts = _counts(batch)
    if batch.settled:
        ledger.set_shard_step(shard["key"], ShardStep.SUBMITTED, ShardStep.SETTLED,
                              worker=worker.id, batch_status=batch.status,
                              request_counts_json=counts,
                              output_file_id=batch.output_file_id,
                              error_file_id=batch.error_file_id)
        report.settled.append(shard["key"])
        crash_point("after_settle")
        report.changed += 1
    elif batch.status != shard["batch_status"] or _stored_counts(shard) != counts:
        ledger.set_shard_step(shard["key"], ShardStep.SUBMITTED, ShardStep.SUBMITTED,
                              worker=worker.id, batch_status=batch.status,
                              request_counts_json=counts)
        report.changed += 1


def _counts(batch: RemoteBatch) -> dict[str, int]:
    c = batch.request_counts
    return {"total": c.total, "completed": c.completed, "failed": c.failed}


def _stored_counts(shard: dict[str, object]) -> dict[str, int] | None:
    raw = shard.get("request_counts_json")
    if not isinstance(raw, str):
        return None
    loaded: dict[str, int] = orjson.loads(raw)
    return loaded


@dataclass(slots=True)
class PollInterval:
    """Adaptive wait between rounds, within the job's ``[min_s, max_s]``.

    >>> interval = PollInterval(1.0, 8.0)
    >>> [interval.next(changed=False) for _ in range(5)]
    [1.0, 2.0, 4.0, 8.0, 8.0]
    >>> interval.next(changed=True)
    1.0
    """

    min_s: float
    max_s: float
    _current: float = 0.0

    def next(self, *, changed: bool) -> float:
        if changed or self._current == 0.0:
            self._current = self.min_s
        else:
            self._current = min(self._current * 2, self.max_s)
        return self._current
