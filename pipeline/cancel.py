"""Cancel a job's in-flight batches, then reconcile what they finished.

Groq keeps a cancelled batch ``cancelling`` for up to 10 minutes before it settles with partial
output; ``wait=True`` polls until then and reconciles, ``wait=False`` only sends the cancels
(a later ``groqbatch run`` reconciles them).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import anyio

from jobs import JobSpec, load_prices, price_for
from jobs.outputs import OutputValidator
from jobs.steps import job_steps
from state import Ledger, ShardStep

from .backend import open_client
from .client import GroqClient
from .errors import APIError
from .planning import resolve_model
from .poll import PollInterval, poll_batches
from .reconcile import ReconcileReport, reconcile_shards


@dataclass(slots=True)
class CancelReport:
    cancelled: int = 0
    already_settled: int = 0
    still_cancelling: int = 0
    reconciled_shards: int = 0
    succeeded: int = 0
    retryable: int = 0


CANCELLING_OR_SETTLED = frozenset({"cancelling", "cancelled", "completed", "expired", "failed"})


async def cancel_in_flight(ledger: Ledger, client: GroqClient, job: str) -> tuple[int, int]:
    """Ask for every in-flight batch of ``job`` to be cancelled (once: a batch already
    cancelling is left alone). Returns (cancelled, already settled)."""
    cancelled = settled = 0
    # The client's retries, but not on 409: for a cancel it means "already settled".
    no_conflict_retry = replace(client.retry, not_retried=frozenset({409}))
    for shard in ledger.shards(job):
        if shard["step"] != ShardStep.SUBMITTED or shard["batch_status"] in CANCELLING_OR_SETTLED:
            continue
        try:
            batch = await client.cancel_batch(shard["batch_id"], retry=no_conflict_retry)
        except APIError as exc:
            if exc.status_code not in REFUSED_AS_SETTLED:
                raise
            # "Cannot cancel batch … with status 'completed'" (a 409 on some servers, a 400 on
            # others): it settled meanwhile. Ask what it is now; poll and reconcile take it
            # from here, as for any settled batch.
            batch = await client.get_batch(shard["batch_id"])
            if not (batch.settled or batch.status == "cancelling"):
                raise
            settled += 1
        else:
            cancelled += 1
        ledger.set_shard_step(shard["key"], ShardStep.SUBMITTED, ShardStep.SUBMITTED,
                              batch_status=batch.status)
    return cancelled, settled


REFUSED_AS_SETTLED = frozenset({400, 404, 409})
"""How servers refuse to cancel a batch that already settled (or is no longer there)."""


async def cancel_job(spec: JobSpec, *, wait: bool = True, timeout_s: float = 900.0) -> CancelReport:
    if spec.steps:  # every step's batches, each step a job of its own
        total = CancelReport()
        for step in job_steps(spec):
            part = await cancel_job(step.spec, wait=wait, timeout_s=timeout_s)
            for name in fields(total):
                setattr(total, name.name, getattr(total, name.name) + getattr(part, name.name))
        return total
    report = CancelReport()
    with Ledger.open(spec.ledger_target) as ledger:
        price = price_for(resolve_model(spec, ledger), load_prices())
        async with open_client(spec) as client:
            report.cancelled, report.already_settled = await cancel_in_flight(ledger, client, spec.name)
            reconciled = ReconcileReport()
            interval = PollInterval(spec.policy.poll_interval_min_s, spec.policy.poll_interval_max_s)
            with anyio.move_on_after(timeout_s if wait else 0):
                while True:
                    polled = await poll_batches(ledger, client, spec.name)
                    reconciled.add(await reconcile_shards(ledger, client, spec.name,
                                                          spec.workdir_path / "downloads", price,
                                                          outputs=OutputValidator.for_job(spec)))
                    left = [s for s in ledger.shards(spec.name) if s["step"] == ShardStep.SUBMITTED]
                    if not left or not wait:
                        break
                    await anyio.sleep(interval.next(changed=bool(polled.changed)))
            report.still_cancelling = sum(
                1 for s in ledger.shards(spec.name) if s["step"] == ShardStep.SUBMITTED
            )
            report.reconciled_shards = reconciled.shards
            report.succeeded = reconciled.succeeded
            report.retryable = reconciled.retryable + reconciled.missing
    return report
