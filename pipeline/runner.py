"""Run a job: compile → submit → poll → reconcile, round after round, until nothing is left
in flight (or, with ``wait=False``, once everything that can move now has moved).

    summary = anyio.run(run_job, load_job("configs/quickstart.toml"))

Every step reads its work from the ledger and records its outcome there before the next one
starts, so running again at any time — after a finished run, a ``--no-wait`` exit or a
``kill -9`` — resumes exactly where the ledger says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from jobs import CompileReport, JobSpec, compile_job, load_prices, price_for, spec_hash, spec_json
from state import Ledger, RequestStatus, ShardStep

from .backend import describe_backend, open_client
from .planning import resolve_model
from .poll import PollInterval, poll_batches
from .reconcile import ReconcileReport, reconcile_shards
from .submit import submit_shards

IN_FLIGHT_STEPS = frozenset(step.value for step in ShardStep) - {ShardStep.RECONCILED.value}


@dataclass(slots=True)
class Progress:
    """A snapshot after one round, for the progress display."""

    job: str
    round: int
    elapsed_s: float
    shards: dict[str, int]
    requests: dict[str, int]
    batch_statuses: dict[str, int]

    @property
    def done(self) -> int:
        return self.requests.get("succeeded", 0) + self.requests.get("failed", 0)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def eta_s(self) -> float | None:
        """Remaining time at the pace so far; None before anything is done."""
        if self.done == 0 or self.elapsed_s <= 0:
            return None
        return (self.total - self.done) * self.elapsed_s / self.done


@dataclass(slots=True)
class RunSummary:
    job: str
    run_id: int
    backend: str
    model: str
    ledger: str
    finished: bool
    """Nothing left in flight: every shard reconciled."""
    elapsed_s: float
    compile: dict[str, Any]
    requests: dict[str, int]
    shards: dict[str, int]
    rows: dict[str, int]
    reconciled: dict[str, int]
    totals: dict[str, float]
    rounds: int
    poll_calls: int
    left_retryable: int
    """Requests the batch path left undone (expired, missing, retryable errors)."""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_steps(ledger: Ledger, job: str) -> dict[str, int]:
    counts = {step.value: 0 for step in ShardStep}
    for shard in ledger.shards(job):
        counts[shard["step"]] += 1
    return counts


async def run_job(spec: JobSpec, *, wait: bool = True, refresh: bool = False,
                  run_name: str | None = None, config_path: str | Path | None = None,
                  on_progress: Callable[[Progress], None] | None = None) -> RunSummary:
    started = time.monotonic()
    with Ledger.open(spec.ledger_target) as ledger:
        ledger.record_job(spec.name, spec_hash(spec), spec_json(spec))
        run_id = ledger.start_run(spec.name, spec.backend, run_name)
        model = resolve_model(spec, ledger, config=config_path)
        compiled: CompileReport = await anyio.to_thread.run_sync(
            partial(compile_job, spec, ledger, refresh=refresh, model=model)
        )
        price = price_for(model, load_prices())
        reconciled = ReconcileReport()
        interval = PollInterval(spec.policy.poll_interval_min_s, spec.policy.poll_interval_max_s)
        rounds = poll_calls = 0
        async with open_client(spec) as client:
            while True:
                rounds += 1
                submitted = await submit_shards(ledger, client, spec.name,
                                                completion_window=spec.policy.completion_window)
                polled = await poll_batches(ledger, client, spec.name)
                poll_calls += polled.calls
                round_reconciled = await reconcile_shards(
                    ledger, client, spec.name, spec.workdir_path / "downloads", price
                )
                reconciled.add(round_reconciled)
                steps = count_steps(ledger, spec.name)
                if on_progress is not None:
                    on_progress(Progress(spec.name, rounds, time.monotonic() - started, steps,
                                         ledger.request_counts(spec.name), polled.statuses))
                in_flight = sum(steps[step] for step in IN_FLIGHT_STEPS)
                if in_flight == 0 or not wait:
                    break
                changed = bool(polled.changed or submitted.created or round_reconciled.shards)
                await anyio.sleep(interval.next(changed=changed))
        requests = ledger.request_counts(spec.name)
        summary = RunSummary(
            job=spec.name,
            run_id=run_id,
            backend=describe_backend(spec),
            model=model,
            ledger=ledger.url,
            finished=in_flight == 0,
            elapsed_s=round(time.monotonic() - started, 3),
            compile=compiled.as_dict(),
            requests=requests,
            shards=steps,
            rows=ledger.row_counts(spec.name),
            reconciled=asdict(reconciled),
            totals=ledger.request_totals(spec.name),
            rounds=rounds,
            poll_calls=poll_calls,
            left_retryable=requests[RequestStatus.RETRYABLE.value],
        )
        if summary.left_retryable:
            summary.notes.append(
                f"{summary.left_retryable} requests were left undone by their batches "
                "(expired, missing or retryable errors)"
            )
        if not summary.finished:
            summary.notes.append(f"{in_flight} shards still in flight: run again to continue")
        ledger.finish_run(run_id, summary.as_dict())
        return summary
