"""Run a job: compile → submit → poll → reconcile, round after round, until nothing is left
in flight (or, with ``wait=False``, once everything that can move now has moved).

    summary = anyio.run(run_job, load_job("configs/quickstart.toml"))

Every step reads its work from the ledger and records its outcome there before the next one
starts, so running again at any time — after a finished run, a ``--no-wait`` exit or a
``kill -9`` — resumes exactly where the ledger says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson

from jobs import CompileReport, JobSpec, compile_job, load_prices, price_for, spec_hash, spec_json
from jobs.compile import shard_pending
from jobs.outputs import OutputValidator
from jobs.plan import refuse_unpriced_budget, unpriced
from state import Ledger, RequestStatus, ShardStep

from .backend import describe_backend, open_client
from .cancel import cancel_in_flight
from .deadline import deadline_passed, drop_unsubmitted, job_deadline
from .evaluate import check_run_identity, evaluate_run, is_settled, run_identity
from .failures import failure_reasons
from .flex import FlexReport, finish_leftovers
from .planning import existing_ledger, resolve_model
from .poll import PollInterval, poll_batches
from .preflight import check_model, require_input, require_requests
from .reconcile import ReconcileReport, reconcile_shards
from .submit import submit_shards, sweep_orphan_uploads
from .workers import Worker, keep_alive, reap_dead_local_workers, register

log = logging.getLogger("groqbatch.runner")

IN_FLIGHT_STEPS = frozenset(step.value for step in ShardStep) - {
    ShardStep.RECONCILED.value, ShardStep.DROPPED.value}


@dataclass(slots=True)
class Progress:
    """A snapshot of a run for the progress display: after each round, and while the flex
    fallback records its answers. What the display shows (:mod:`pipeline.progress`) is read
    from here alone."""

    job: str
    round: int
    elapsed_s: float
    shards: dict[str, int]
    """Shard step → shards of the job in it."""
    requests: dict[str, int]
    """Request status → requests of the job in it (the ledger's counts)."""
    batch_statuses: dict[str, int]
    """Remote batch status (``validating``, ``in_progress``, ``finalizing`` …) → shards whose
    batch is in it, for shards not yet reconciled."""
    batch_done: int = 0
    """Lines the running (and settled, not yet reconciled) batches report done — completed
    plus failed in their own ``request_counts`` — whose requests the ledger still has as
    submitted."""
    batch_lines: int = 0
    """Lines of those batches in all (their ``request_counts.total``)."""
    flex_sent: int = 0
    """Calls the flex fallback made so far in this run."""
    flex_pace_rps: float = 0.0
    compiling: bool = False
    """Another worker is compiling the job; this one waits."""

    @property
    def answered(self) -> int:
        """Requests settled in the ledger: succeeded or failed."""
        return self.requests.get("succeeded", 0) + self.requests.get("failed", 0)

    @property
    def done(self) -> int:
        """Requests answered, counting the lines running batches report done."""
        return self.answered + self.batch_done

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def eta_s(self) -> float | None:
        """Remaining time at the pace so far; None before anything is done."""
        if self.done == 0 or self.elapsed_s <= 0:
            return None
        return max(self.total - self.done, 0) * self.elapsed_s / self.done


@dataclass(slots=True)
class BatchSnapshot:
    """The job's shards as the ledger has them: steps, batch statuses and batch progress."""

    steps: dict[str, int]
    statuses: dict[str, int]
    done: int
    lines: int


def batch_snapshot(ledger: Ledger, job: str) -> BatchSnapshot:
    """Shard steps, the batch status of each shard not yet reconciled, and the lines those
    batches report done (from the ``request_counts`` each poll records)."""
    steps = {step.value: 0 for step in ShardStep}
    statuses: dict[str, int] = {}
    done = lines = 0
    for shard in ledger.shards(job):
        steps[shard["step"]] += 1
        if shard["step"] not in (ShardStep.SUBMITTED.value, ShardStep.SETTLED.value):
            continue
        status = shard["batch_status"] or "submitted"
        statuses[status] = statuses.get(status, 0) + 1
        raw = shard["request_counts_json"]
        counts = orjson.loads(raw) if raw else {}
        done += int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
        lines += int(counts.get("total") or 0) or int(shard["lines"])
    return BatchSnapshot(steps, statuses, done, lines)


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
    """Every request of the job settled (whichever worker settled it), every shard done, and
    no compile under way."""
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
    worker: str | None = None
    """This worker's id (``host:pid`` unless ``--worker-id`` named it)."""
    cost_known: bool = True
    """False when the model has no price in ``configs/prices.toml``: ``cost_usd`` counts nothing."""
    spent: dict[str, float] = field(default_factory=dict)
    """What this run spent: tokens and cost of the answers it recorded (batch lines it
    reconciled, flex calls it made). ``totals`` is the whole job's, over every run."""
    failures: list[tuple[str, int]] = field(default_factory=list)
    """The most common reasons the job's failed requests failed, with their counts."""
    unsent_reason: str | None = None
    """Why requests were left retryable at the end: the budget is spent, the fallback is off,
    stopped on a permanent error, or not triggered for them."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_rejection(ledger: Ledger, job: str) -> str | None:
    for key, index, reason in ledger.rejected_rows(job, limit=1):
        return f"row {key} (#{index}): {reason}"
    return None


def count_steps(ledger: Ledger, job: str) -> dict[str, int]:
    counts = {step.value: 0 for step in ShardStep}
    for shard in ledger.shards(job):
        counts[shard["step"]] += 1
    return counts


async def run_job(spec: JobSpec, *, wait: bool = True, refresh: bool = False,
                  run_name: str | None = None, config_path: str | Path | None = None,
                  on_progress: Callable[[Progress], None] | None = None,
                  worker: Worker | None = None) -> RunSummary:
    """Run (or resume, or join) a job as one worker of any number sharing its ledger.

    Every unit of work is claimed in the ledger before it is done (:mod:`state.claims`), and
    the worker's claims are renewed while it runs; so any number of ``run_job`` calls — in
    processes on any machines — can work on one job at once, each doing a share, none
    sending anything twice.
    """
    worker = worker or Worker.make()
    started = time.monotonic()
    check_run_identity(spec, wait=wait, run_name=run_name, config_path=config_path)
    # A missing input or an unknown model fails before a ledger is made or a run recorded.
    require_input(spec, config_path)
    answered_before = _answered_before(spec)
    warnings: list[str] = []
    if spec.model is not None and not answered_before:
        warnings = await check_model(spec, spec.model, config_path)
    with Ledger.open(spec.ledger_target) as ledger:
        # An unknown or deleted adapter fails here, before anything is recorded or spent.
        model = resolve_model(spec, ledger, config=config_path)
        refuse_unpriced_budget(spec, model, config_path=config_path)  # before anything is spent
        if spec.model is None and not answered_before:
            warnings = await check_model(spec, model, config_path)
        ledger.record_job(spec.name, spec_hash(spec), spec_json(spec))
        run_id = ledger.start_run(spec.name, spec.backend, run_name)
        register(ledger, worker, spec.name, run_id)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(keep_alive, ledger, worker)
                summary = await _Run(spec, ledger, worker, run_id, model, started,
                                     wait=wait, refresh=refresh, run_name=run_name,
                                     config_path=config_path, on_progress=on_progress).go()
                group.cancel_scope.cancel()
        except BaseExceptionGroup as failed:
            # The heartbeat never fails, so the group holds the run's own error: raise it as
            # it is, for the CLI's one-line message and exit code.
            error = failed.exceptions[0] if len(failed.exceptions) == 1 else failed
            _record_failed_run(ledger, run_id, error)
            if error is not failed:
                raise error  # noqa: B904 - its own cause is kept
            raise
        except Exception as error:
            _record_failed_run(ledger, run_id, error)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ledger.stop_worker, worker.id)
        summary.notes[:0] = warnings
        ledger.finish_run(run_id, summary.as_dict())
        return summary


def _answered_before(spec: JobSpec) -> bool:
    """Whether the job's ledger holds answers to this very config (model included): its model
    was served then, so a run that may have nothing to do asks the server nothing."""
    ledger = existing_ledger(spec)
    if ledger is None:
        return False
    with ledger:
        return (ledger.job_spec_hash(spec.name) == spec_hash(spec)
                and ledger.usage_averages(spec.name)[0] > 0)


def _record_failed_run(ledger: Ledger, run_id: int, error: BaseException) -> None:
    """A run stopped by an error is finished in the ledger with the reason, not left looking
    as if it were still going."""
    from .errors import exit_code_for, redact

    try:
        ledger.finish_run(run_id, {"failed": redact(str(error) or type(error).__name__),
                                   "exit_code": exit_code_for(error)})
    except Exception:
        log.warning("could not record run %d as failed", run_id, exc_info=True)


OPEN_REQUESTS = (RequestStatus.PENDING, RequestStatus.QUEUED, RequestStatus.SUBMITTED,
                 RequestStatus.IN_FLIGHT)
"""A job with a request in one of these is not finished, whichever worker holds it."""


def compile_lock(job: str) -> str:
    return f"compile:{job}"


def compile_fingerprint(spec: JobSpec, model: str, salt: str | None) -> str:
    """What a compile of this job compiled: the spec, the model, the salt and the input file
    as it was (size, modification time). A worker that waited for another's compile with the
    same fingerprint has nothing left to compile."""
    try:
        stat = spec.input_path.stat()
        source = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        source = "missing"
    return f"{spec_hash(spec)}|{model}|{salt or ''}|{source}"


class _Run:
    """One worker's run of a job: compile (or wait for another's), then rounds of submit, poll,
    reconcile and fallback until every request of the job is settled."""

    def __init__(self, spec: JobSpec, ledger: Ledger, worker: Worker, run_id: int, model: str,
                 started: float, *, wait: bool, refresh: bool, run_name: str | None,
                 config_path: str | Path | None,
                 on_progress: Callable[[Progress], None] | None) -> None:
        self.spec, self.ledger, self.worker, self.run_id = spec, ledger, worker, run_id
        self.model, self.started, self.wait, self.refresh = model, started, wait, refresh
        self.run_name, self.config_path, self.on_progress = run_name, config_path, on_progress
        # cache = false: every run asks afresh, under ids salted with the run's identity.
        self.salt = None if spec.policy.cache else run_identity(run_id=run_id, run_name=run_name)
        self.fingerprint = compile_fingerprint(spec, model, self.salt)
        self.compiled = CompileReport(job=spec.name, model=model)
        self.compile_waiting: str | None = None
        """The worker whose compile this one is waiting for, if any."""
        self.skipped: set[str] = set()
        """Optional calls the server refused, skipped (notes for the summary)."""

    async def _compile(self, *, only_shards: bool = False) -> bool:
        """Compile under the job's compile lock; False (and who holds it) if another worker is
        compiling. ``only_shards``: the rows are recorded; only shard what is pending."""
        spec, ledger, worker = self.spec, self.ledger, self.worker
        taken, holder, _done = await anyio.to_thread.run_sync(partial(
            ledger.lock, compile_lock(spec.name), spec.name, worker.id, lease_s=worker.lease_s))
        if not taken:
            self.compile_waiting = holder
            return False
        done: str | None = None  # recorded only for a whole compile that finished
        try:
            if only_shards:
                await anyio.to_thread.run_sync(partial(shard_pending, spec, ledger, self.compiled))
            else:
                self.compiled = await anyio.to_thread.run_sync(partial(
                    compile_job, spec, ledger, refresh=self.refresh, model=self.model,
                    salt=self.salt))
                done = self.fingerprint
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(partial(
                    ledger.unlock, compile_lock(spec.name), worker.id, done=done))
        self.compile_waiting = None
        return True

    async def _catch_up_compile(self) -> None:
        """While another worker compiles, wait; once it is done, compile only if what it
        compiled is not what this worker would have."""
        holder, done = self.ledger.lock_holder(compile_lock(self.spec.name))
        if holder is not None:
            self.compile_waiting = holder
        elif done == self.fingerprint and not self.refresh:
            self.compile_waiting = None
        else:
            await self._compile()

    def _flex_progress(self, before: dict[str, int],
                       run_flexed: FlexReport) -> Callable[[FlexReport], None] | None:
        """While the fallback runs, a Progress per recorded chunk: the round's counts moved on
        by what the stage has recorded so far (no ledger query per chunk)."""
        on_progress = self.on_progress
        if on_progress is None:
            return None
        shards = count_steps(self.ledger, self.spec.name)

        def report(stage: FlexReport) -> None:
            requests = dict(before)
            settled = stage.succeeded + stage.failed + stage.gave_up
            requests["succeeded"] = requests.get("succeeded", 0) + stage.succeeded
            requests["failed"] = requests.get("failed", 0) + stage.failed + stage.gave_up
            requests["retryable"] = max(requests.get("retryable", 0) - settled, 0)
            elapsed = run_flexed.elapsed_s + stage.elapsed_s
            sent = run_flexed.sent + stage.sent
            on_progress(Progress(self.spec.name, 0, time.monotonic() - self.started, shards,
                                 requests, {}, flex_sent=sent,
                                 flex_pace_rps=sent / elapsed if elapsed > 0 else 0.0))

        return report

    async def go(self) -> RunSummary:
        spec, ledger, worker = self.spec, self.ledger, self.worker
        await anyio.to_thread.run_sync(reap_dead_local_workers, ledger, worker, spec.name)
        if await self._compile():
            report = self.compiled
            require_requests(spec, self.config_path, rows=report.rows, ok=report.ok,
                             rejected=report.rejected, example=_first_rejection(ledger, spec.name))
        if self.on_progress is not None:  # compiled: shown before the first batch is sent
            batches = batch_snapshot(ledger, spec.name)
            self.on_progress(Progress(spec.name, 0, time.monotonic() - self.started,
                                      batches.steps, ledger.request_counts(spec.name), {},
                                      compiling=self.compile_waiting is not None))
        price = price_for(self.model, load_prices())
        outputs = OutputValidator.for_job(spec)  # one rule for batch lines and flex answers
        reconciled = ReconcileReport()
        flexed = FlexReport(tier=spec.policy.fallback.service_tier)
        deadline = job_deadline(spec, ledger)
        interval = PollInterval(spec.policy.poll_interval_min_s, spec.policy.poll_interval_max_s)
        rounds = poll_calls = swept = 0
        touched_uploads = False  # strays can only exist if this run uploaded or adopted a file
        shard_dir = spec.workdir_path / "shards"
        async with open_client(spec) as client:
            while True:
                rounds += 1
                await anyio.to_thread.run_sync(reap_dead_local_workers, ledger, worker, spec.name)
                if self.compile_waiting is not None:
                    await self._catch_up_compile()
                late = deadline_passed(deadline)
                created = 0
                if late:
                    # Nothing new goes to the batch path; what is in flight is cancelled, and
                    # whatever the cancelled batches did not finish goes to the fallback.
                    drop_unsubmitted(ledger, spec.name, worker)
                    # What is left unsubmitted is a shard caught in ``submitting`` by a crash:
                    # its batch may exist. Resolve it (adopt, else create) so it can be cancelled.
                    resolved = await submit_shards(ledger, client, spec.name,
                                                   completion_window=spec.policy.completion_window,
                                                   worker=worker, shard_dir=shard_dir)
                    created = resolved.created
                    await cancel_in_flight(ledger, client, spec.name)
                else:
                    submitted = await submit_shards(ledger, client, spec.name,
                                                    completion_window=spec.policy.completion_window,
                                                    worker=worker, shard_dir=shard_dir)
                    created = submitted.created
                    touched_uploads |= bool(submitted.uploaded or submitted.adopted_files)
                    self.skipped.update(submitted.notes)
                polled = await poll_batches(ledger, client, spec.name, worker)
                poll_calls += polled.calls
                round_reconciled = await reconcile_shards(
                    ledger, client, spec.name, spec.workdir_path / "downloads", price,
                    outputs=outputs, worker=worker,
                )
                reconciled.add(round_reconciled)
                if flexed.halted is None:  # once halted, this run sends nothing more
                    before = ledger.request_counts(spec.name) if self.on_progress else {}
                    round_flexed = await finish_leftovers(
                        ledger, client, spec, price, deadline_passed=late, worker=worker,
                        on_record=self._flex_progress(before, flexed))
                else:
                    round_flexed = FlexReport(tier=flexed.tier)
                flexed.add(round_flexed)
                batches = batch_snapshot(ledger, spec.name)
                steps = batches.steps
                requests = ledger.request_counts(spec.name)
                if on_progress := self.on_progress:
                    on_progress(Progress(spec.name, rounds, time.monotonic() - self.started,
                                         steps, requests, batches.statuses,
                                         batch_done=batches.done, batch_lines=batches.lines,
                                         flex_sent=flexed.sent, flex_pace_rps=flexed.pace_rps,
                                         compiling=self.compile_waiting is not None))
                in_flight = sum(steps[step] for step in IN_FLIGHT_STEPS)
                open_requests = sum(requests[status.value] for status in OPEN_REQUESTS)
                if (in_flight == 0 and requests[RequestStatus.PENDING.value]
                        and self.compile_waiting is None):
                    # Rows recorded but not sharded: a compile cut short (or another job's,
                    # for requests both share). Shard them now, under the lock; the next round
                    # submits them.
                    await self._compile(only_shards=True)
                finished = in_flight == 0 and open_requests == 0 and self.compile_waiting is None
                if finished and touched_uploads:
                    swept = await sweep_orphan_uploads(ledger, client, spec.name, self.skipped)
                    touched_uploads = False
                if finished or not self.wait or flexed.budget_exhausted:
                    break
                changed = bool(polled.changed or round_reconciled.shards or round_flexed.sent
                               or created)
                await anyio.sleep(interval.next(changed=changed))
        summary = RunSummary(
            job=spec.name,
            run_id=self.run_id,
            backend=describe_backend(spec),
            model=self.model,
            ledger=ledger.url,
            output=str(spec.output_path),
            finished=finished,
            elapsed_s=round(time.monotonic() - self.started, 3),
            compile=self.compiled.as_dict(),
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
            worker=worker.id,
            cost_known=price is not None,
            spent={"prompt_tokens": reconciled.prompt_tokens + flexed.prompt_tokens,
                   "completion_tokens": reconciled.completion_tokens + flexed.completion_tokens,
                   "cost_usd": reconciled.cost_usd + flexed.cost_usd},
            failures=failure_reasons(ledger, spec.name),
        )
        self._notes(summary, swept, flexed, in_flight, open_requests)
        if spec.evaluate is not None and summary.finished and is_settled(requests):
            evaluation = await anyio.to_thread.run_sync(partial(
                evaluate_run, spec, ledger, run_id=self.run_id, run_name=self.run_name,
                config_path=self.config_path))
            summary.evaluation = evaluation.as_dict()
        return summary

    def _notes(self, summary: RunSummary, swept: int, flexed: FlexReport, in_flight: int,
               open_requests: int) -> None:
        spec = self.spec
        notes = summary.notes
        if not summary.cost_known:
            notes.append(unpriced(self.model))
        notes.extend(sorted(self.skipped))
        if swept:
            notes.append(f"deleted {swept} stray uploads of this job's shards left by an interrupted run")
        if flexed.recovered_in_flight:
            notes.append(f"{flexed.recovered_in_flight} flex calls cut short by a stopped worker "
                         "were taken back (not counted as attempts)")
        if flexed.halted:
            summary.unsent_reason = "the fallback stopped: the same permanent error on every call"
            notes.append(
                f"the fallback stopped sending after {flexed.failed} calls got the same "
                f"permanent error and none was answered ({flexed.halted}): "
                f"{summary.left_retryable} requests are left retryable, unsent; fix the cause "
                "and run again")
        elif flexed.budget_exhausted:
            summary.unsent_reason = f"the budget ({flexed.budget_exhausted}) is spent"
            notes.append(
                f"the budget ({flexed.budget_exhausted}) is spent: {summary.left_retryable} requests "
                "are left retryable; raise [policy.budget] and run again to finish them"
            )
        elif summary.left_retryable:
            summary.unsent_reason = ("the fallback is off" if not spec.policy.fallback.enabled
                                     else "their trigger is not in [policy.fallback].triggers")
            notes.append(
                f"{summary.left_retryable} requests are left retryable "
                + ("(the fallback is off)" if not spec.policy.fallback.enabled
                   else "(their trigger is not in [policy.fallback].triggers)")
            )
        if not summary.finished:
            if in_flight:
                notes.append(f"{in_flight} shards still in flight: run again to continue")
            elif open_requests:
                notes.append(f"{open_requests} requests still open: run again to continue")
            if self.compile_waiting is not None:
                notes.append(f"worker {self.compile_waiting} is compiling the job")
            others = {who: held for who, held in self.ledger.live_claims(spec.name).items()
                      if who != self.worker.id}
            for who, held in sorted(others.items()):
                what = ", ".join(f"{n} {kind}" for kind, n in sorted(held.items()))
                notes.append(f"worker {who} holds {what}")
