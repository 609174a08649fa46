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
from jobs.outputs import OutputValidator
from state import Ledger, RequestStatus, ShardStep

from .backend import describe_backend, open_client
from .cancel import cancel_in_flight
from .deadline import deadline_passed, drop_unsubmitted, job_deadline
from .evaluate import check_run_identity, evaluate_run, is_settled, run_identity
from .flex import FlexReport, finish_leftovers
from .planning import resolve_model
from .poll import PollInterval, poll_batches
from .reconcile import ReconcileReport, reconcile_shards
from .submit import submit_shards, sweep_orphan_uploads

IN_FLIGHT_STEPS = frozenset(step.value for step in ShardStep) - {
    ShardStep.RECONCILED.value, ShardStep.DROPPED.value}


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
    output: str
    """Where ``groqbatch export`` writes the results joined to the input rows."""
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
    """Requests still retryable at the end (fallback off, a trigger off, or the budget spent)."""
    fallback: dict[str, Any] = field(default_factory=dict)
    deadline: str | None = None
    budget_exhausted: str | None = None
    notes: list[str] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    """``[evaluate]`` jobs: the scores recorded when this invocation finished the run."""

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
    check_run_identity(spec, wait=wait, run_name=run_name, config_path=config_path)
    with Ledger.open(spec.ledger_target) as ledger:
        # An unknown or deleted adapter fails here, before anything is recorded or spent.
        model = resolve_model(spec, ledger, config=config_path)
        ledger.record_job(spec.name, spec_hash(spec), spec_json(spec))
        run_id = ledger.start_run(spec.name, spec.backend, run_name)
        # cache = false: every run asks afresh, under ids salted with the run's identity.
        salt = None if spec.policy.cache else run_identity(run_id=run_id, run_name=run_name)
        compiled: CompileReport = await anyio.to_thread.run_sync(
            partial(compile_job, spec, ledger, refresh=refresh, model=model, salt=salt)
        )
        price = price_for(model, load_prices())
        outputs = OutputValidator.for_job(spec)  # one rule for batch lines and flex answers
        reconciled = ReconcileReport()
        flexed = FlexReport(tier=spec.policy.fallback.service_tier)
        deadline = job_deadline(spec, ledger)
        interval = PollInterval(spec.policy.poll_interval_min_s, spec.policy.poll_interval_max_s)
        rounds = poll_calls = swept = 0
        touched_uploads = False  # strays can only exist if this run uploaded or adopted a file
        async with open_client(spec) as client:
            while True:
                rounds += 1
                late = deadline_passed(deadline)
                created = 0
                if late:
                    # Nothing new goes to the batch path; what is in flight is cancelled, and
                    # whatever the cancelled batches did not finish goes to the fallback.
                    drop_unsubmitted(ledger, spec.name)
                    # What is left unsubmitted is a shard caught in ``submitting`` by a crash:
                    # its batch may exist. Resolve it (adopt, else create) so it can be cancelled.
                    resolved = await submit_shards(ledger, client, spec.name,
                                                   completion_window=spec.policy.completion_window)
                    created = resolved.created
                    await cancel_in_flight(ledger, client, spec.name)
                else:
                    submitted = await submit_shards(ledger, client, spec.name,
                                                    completion_window=spec.policy.completion_window)
                    created = submitted.created
                    touched_uploads |= bool(submitted.uploaded or submitted.adopted_files)
                polled = await poll_batches(ledger, client, spec.name)
                poll_calls += polled.calls
                round_reconciled = await reconcile_shards(
                    ledger, client, spec.name, spec.workdir_path / "downloads", price,
                    outputs=outputs,
                )
                reconciled.add(round_reconciled)
                round_flexed = await finish_leftovers(ledger, client, spec, price, deadline_passed=late)
                flexed.add(round_flexed)
                steps = count_steps(ledger, spec.name)
                if on_progress is not None:
                    on_progress(Progress(spec.name, rounds, time.monotonic() - started, steps,
                                         ledger.request_counts(spec.name), polled.statuses))
                in_flight = sum(steps[step] for step in IN_FLIGHT_STEPS)
                if in_flight == 0 and touched_uploads:
                    swept = await sweep_orphan_uploads(ledger, client, spec.name)
                    touched_uploads = False
                if in_flight == 0 or not wait or flexed.budget_exhausted:
                    break
                changed = bool(polled.changed or round_reconciled.shards or round_flexed.sent
                               or created)
                await anyio.sleep(interval.next(changed=changed))
        requests = ledger.request_counts(spec.name)
        summary = RunSummary(
            job=spec.name,
            run_id=run_id,
            backend=describe_backend(spec),
            model=model,
            ledger=ledger.url,
            output=str(spec.output_path),
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
            fallback=flexed.as_dict(),
            deadline=deadline.isoformat() if deadline is not None else None,
            budget_exhausted=flexed.budget_exhausted,
        )
        if swept:
            summary.notes.append(f"deleted {swept} stray uploads of this job's shards left by an interrupted run")
        if flexed.budget_exhausted:
            summary.notes.append(
                f"the budget ({flexed.budget_exhausted}) is spent: {summary.left_retryable} requests "
                "are left retryable; raise [policy.budget] and run again to finish them"
            )
        elif summary.left_retryable:
            summary.notes.append(
                f"{summary.left_retryable} requests are left retryable "
                + ("(the fallback is off)" if not spec.policy.fallback.enabled
                   else "(their trigger is not in [policy.fallback].triggers)")
            )
        if not summary.finished:
            summary.notes.append(f"{in_flight} shards still in flight: run again to continue")
        if spec.evaluate is not None and summary.finished and is_settled(requests):
            evaluation = await anyio.to_thread.run_sync(partial(
                evaluate_run, spec, ledger, run_id=run_id, run_name=run_name,
                config_path=config_path))
            summary.evaluation = evaluation.as_dict()
        ledger.finish_run(run_id, summary.as_dict())
        return summary
