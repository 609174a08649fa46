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

from jobs import (
    CompileReport,
    JobSpec,
    Price,
    compile_job,
    load_prices,
    price_for,
    spec_hash,
    spec_json,
)
from jobs.budget import BatchBudget
from jobs.compile import estimate_completion_tokens, shard_pending
from jobs.outputs import OutputValidator
from jobs.plan import refuse_unpriced_budget, unpriced
from state import Ledger, RequestStatus, ShardStep

from .backend import describe_backend, open_client
from .cancel import cancel_in_flight
from .deadline import deadline_passed, drop_unsubmitted, job_deadline
from .evaluate import check_run_identity, evaluate_run, is_settled, run_identity
from .flex import FlexReport, finish_leftovers
from .leftovers import LeftoverReport, job_deadline_at, rebatch_leftovers
from .pacing import daily_limit_note
from .planning import resolve_model
from .poll import PollInterval, poll_batches
from .reconcile import ReconcileReport, reconcile_shards
from .submit import submit_shards, sweep_orphan_uploads
from .workers import Worker, keep_alive, reap_dead_local_workers, register

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
    budget_held: int = 0
    """Requests not sent (left pending, or in compiled shards not uploaded) because the next
    shard would have passed ``[policy.budget]``; a run with a larger budget sends them."""
    leftovers: dict[str, Any] = field(default_factory=dict)
    """Where batches' leftovers went: ``rebatched`` (into new batches) and ``to_flex``."""
    paths: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The job's requests, tokens and cost by the path that answered them: ``batch``,
    ``rebatched`` (with ``flex_equivalent_usd`` and ``saved_usd``: what the same tokens would
    have cost on flex, and the difference), ``flex``, …, and ``answered_twice`` (answers paid
    for that no request took; counted by the budget)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    with Ledger.open(spec.ledger_target) as ledger:
        # An unknown or deleted adapter fails here, before anything is recorded or spent.
        model = resolve_model(spec, ledger, config=config_path)
        refuse_unpriced_budget(spec, model, config_path=config_path)  # before anything is spent
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
            if len(failed.exceptions) == 1:
                raise failed.exceptions[0]  # noqa: B904 - its own cause is kept
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ledger.stop_worker, worker.id)
        ledger.finish_run(run_id, summary.as_dict())
        return summary


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
        self.price: Price | None = price_for(model, load_prices())
        self.budget = BatchBudget.of(spec.policy.budget, estimate_completion_tokens(spec),
                                     self.price)
        """The budget as the batch path applies it (None: nothing capped)."""
        self.leftover_route = "flex"
        """Where the last round sent batches' leftovers (:mod:`pipeline.leftovers`)."""

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
                await anyio.to_thread.run_sync(partial(shard_pending, spec, ledger, self.compiled,
                                                       budget=self.budget))
            else:
                self.compiled = await anyio.to_thread.run_sync(partial(
                    compile_job, spec, ledger, refresh=self.refresh, model=self.model,
                    salt=self.salt, budget=self.budget))
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

    async def go(self) -> RunSummary:
        spec, ledger, worker = self.spec, self.ledger, self.worker
        await anyio.to_thread.run_sync(reap_dead_local_workers, ledger, worker, spec.name)
        await self._compile()
        price = self.price
        outputs = OutputValidator.for_job(spec)  # one rule for batch lines and flex answers
        reconciled = ReconcileReport()
        flexed = FlexReport(tier=spec.policy.fallback.service_tier)
        deadline = job_deadline(spec, ledger)
        deadline_at = job_deadline_at(spec, ledger)  # whether a new batch window still fits
        leftovers = LeftoverReport()
        held = 0
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
                held_shards = 0
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
                                                    worker=worker, shard_dir=shard_dir,
                                                    budget=self.budget)
                    created = submitted.created
                    held_shards = submitted.held_by_budget
                    touched_uploads |= bool(submitted.uploaded or submitted.adopted_files)
                    self.skipped.update(submitted.notes)
                polled = await poll_batches(ledger, client, spec.name, worker)
                poll_calls += polled.calls
                round_reconciled = await reconcile_shards(
                    ledger, client, spec.name, spec.workdir_path / "downloads", price,
                    outputs=outputs, worker=worker,
                )
                reconciled.add(round_reconciled)
                round_left = LeftoverReport()
                if not late:
                    round_left = await anyio.to_thread.run_sync(partial(
                        rebatch_leftovers, ledger, spec, deadline_at, worker,
                        batches_running=partial(self._batches_running, held_shards)))
                    leftovers.add(round_left)
                    self.leftover_route = round_left.route
                    if round_left.rebatched and self.compile_waiting is None:
                        await self._compile(only_shards=True)  # submitted next round
                round_flexed = FlexReport(tier=flexed.tier)
                if not flexed.daily_limit:  # stopped for today: the batches go on, flex waits
                    round_flexed = await finish_leftovers(ledger, client, spec, price,
                                                          deadline_passed=late, worker=worker,
                                                          keep=round_left.keep_for_batch(spec))
                flexed.add(round_flexed)
                steps = count_steps(ledger, spec.name)
                if on_progress := self.on_progress:
                    on_progress(Progress(spec.name, rounds, time.monotonic() - self.started,
                                         steps, ledger.request_counts(spec.name),
                                         polled.statuses))
                in_flight = sum(steps[step] for step in IN_FLIGHT_STEPS)
                # Shards the budget keeps compiled are not in flight: nothing moves them.
                active = in_flight - steps[ShardStep.COMPILED.value]
                # What is left is asked of the open requests only (the status index), and only
                # once no shard is moving: a round costs what is still to do, not what the job
                # holds (issue 12: O(work), not O(job)). While shards move, it is not needed.
                still_open = ledger.open_request_counts(spec.name) if active == 0 else None
                open_requests = (sum(still_open[status.value] for status in OPEN_REQUESTS)
                                 if still_open is not None else -1)
                pending = still_open[RequestStatus.PENDING.value] if still_open is not None else 0
                sharded = len(self.compiled.shards)
                if ((in_flight == 0 or (active == 0 and held_shards == steps[ShardStep.COMPILED.value]))
                        and pending and self.compile_waiting is None):
                    # Rows recorded but not sharded: a compile cut short (or another job's,
                    # for requests both share), leftovers to re-batch, or requests the budget
                    # held back. Shard them now, under the lock; the next round submits them.
                    await self._compile(only_shards=True)
                unsent = pending + (still_open[RequestStatus.QUEUED.value]
                                    if still_open is not None else 0)
                held = unsent if (
                    self.budget is not None and active == 0 and unsent and open_requests == unsent
                    and held_shards == steps[ShardStep.COMPILED.value]
                    and len(self.compiled.shards) == sharded
                    and (pending == 0 or self.compiled.budget_reached is not None)) else 0
                finished = in_flight == 0 and open_requests == 0 and self.compile_waiting is None
                if finished and touched_uploads:
                    swept = await sweep_orphan_uploads(ledger, client, spec.name, self.skipped)
                    touched_uploads = False
                if (finished or not self.wait or flexed.budget_exhausted or held
                        or (flexed.daily_limit and in_flight == 0)):
                    break
                changed = bool(polled.changed or round_reconciled.shards or round_flexed.sent
                               or created)
                await anyio.sleep(interval.next(changed=changed))
        requests = ledger.request_counts(spec.name)
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
            budget_exhausted=flexed.budget_exhausted or (self._held_cap() if held else None),
            worker=worker.id,
            cost_known=price is not None,
            budget_held=held,
            leftovers={"rebatched": leftovers.rebatched, "to_flex": leftovers.to_flex,
                       "mode": spec.policy.fallback.leftovers},
            paths=cost_by_path(ledger, spec.name, price),
        )
        self._notes(summary, swept, flexed, in_flight, open_requests)
        if spec.evaluate is not None and summary.finished and is_settled(requests):
            evaluation = await anyio.to_thread.run_sync(partial(
                evaluate_run, spec, ledger, run_id=self.run_id, run_name=self.run_name,
                config_path=self.config_path))
            summary.evaluation = evaluation.as_dict()
        return summary

    def _held_cap(self) -> str | None:
        """The cap that holds requests back: the one the shard pass stopped at, else the one
        the first compiled shard would pass."""
        if self.compiled.budget_reached is not None or self.budget is None:
            return self.compiled.budget_reached
        shard = next((s for s in self.ledger.shards(self.spec.name)
                      if s["step"] == ShardStep.COMPILED.value), None)
        if shard is None:
            return None
        return self.budget.refusal(self.ledger, self.spec.name, shard["lines"], shard["bytes"])

    def _batches_running(self, held_shards: int) -> int:
        """Shards on their way, and requests waiting to be sharded (leftovers moved by a run
        that died before sharding them): the batch path is still busy. What the budget holds
        back is not running, so leftovers do not wait for it."""
        steps = count_steps(self.ledger, self.spec.name)
        running = sum(steps[step] for step in IN_FLIGHT_STEPS)
        if held_shards or self.compiled.budget_reached:
            return running - steps[ShardStep.COMPILED.value]
        return running + self.ledger.request_counts(self.spec.name)[RequestStatus.PENDING.value]

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
        if summary.budget_held:
            caps = ", ".join(f"{name} = {value}" for name, value in
                             spec.policy.budget.model_dump(exclude={"expected_completion_tokens"}).items()
                             if value is not None)
            notes.append(
                f"budget reached: {summary.budget_held} requests not sent; raise [policy.budget] "
                f"({caps}) and run again to send them"
            )
        if flexed.daily_limit:
            notes.append(daily_limit_note(flexed.daily_limit, summary.left_retryable))
        elif flexed.budget_exhausted:
            notes.append(
                f"the budget ({flexed.budget_exhausted}) is spent: {summary.left_retryable} requests "
                "are left retryable; raise [policy.budget] and run again to finish them"
            )
        elif summary.left_retryable:
            why = ("(the fallback is off)" if not spec.policy.fallback.enabled
                   else "(their trigger is not in [policy.fallback].triggers)")
            if self.leftover_route == "wait":
                why = ("(leftovers waiting for the job's running batches, to be re-batched or "
                       "sent to flex with theirs)")
            notes.append(f"{summary.left_retryable} requests are left retryable {why}")
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


def cost_by_path(ledger: Ledger, job: str, price: Price | None) -> dict[str, dict[str, Any]]:
    """:meth:`state.Ledger.cost_by_path`, with what the re-batched requests would have cost on
    flex and what re-batching them saved."""
    paths = ledger.cost_by_path(job)
    twice = ledger.extra_spend(job)
    if twice["calls"]:  # paid for, taken by no request (a duplicate line, a late flex answer)
        paths["answered_twice"] = {"requests": int(twice["calls"]), "succeeded": 0,
                                   **{k: twice[k] for k in ("prompt_tokens", "completion_tokens",
                                                            "cost_usd")}}
    rebatched = paths.get("rebatched")
    if rebatched is not None and price is not None:
        flex = price.cost(rebatched["prompt_tokens"], rebatched["completion_tokens"], "flex")
        rebatched["flex_equivalent_usd"] = flex
        rebatched["saved_usd"] = flex - rebatched["cost_usd"]
    return paths
