"""Run a job: compile → submit → poll → reconcile, round after round, until nothing is left
in flight (or, with ``wait=False``, once everything that can move now has moved).

    summary = anyio.run(run_job, load_job("configs/quickstart.toml"))

Every step reads its work from the ledger and records its outcome there before the next one
starts, so running again at any time — after a finished run, a ``--no-wait`` exit or a
``kill -9`` — resumes exactly where the ledger says.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson

from jobs import (
    CompileReport,
    JobSpec,
    Price,
    RequestBuilder,
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
from jobs.steps import Step, feed_step, job_steps
from jobs.window import WindowChoice, choose_window, flex_pace
from state import Ledger, RequestStatus, ShardStep

from .backend import describe_backend, open_client
from .cancel import cancel_in_flight
from .deadline import deadline_passed, drop_unsubmitted
from .evaluate import check_run_identity, evaluate_run, is_settled, run_identity
from .failures import failure_reasons
from .flex import FlexReport, finish_leftovers
from .leftovers import LeftoverReport, job_deadline_at, rebatch_leftovers
from .pacing import daily_limit_note
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
    completion_window: str | None = None
    """The window the last batches were created with (``auto``: as chosen, see the notes)."""
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    """A job with ``[[steps]]``: per step, its rows and its requests by status (the other
    counts are the steps' sums)."""
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
        models = {step.job: resolve_model(step.spec, ledger, config=config_path)
                  for step in job_steps(spec)}
        for step in job_steps(spec):  # before anything is spent
            refuse_unpriced_budget(step.spec, models[step.job], config_path=config_path)
        if not answered_before:
            for step in job_steps(spec):
                if spec.model is not None and step.spec.model == spec.model:
                    continue  # asked above, before the ledger was opened
                warnings += await check_model(step.spec, models[step.job], config_path)
        ledger.record_job(spec.name, spec_hash(spec), spec_json(spec))
        for step in job_steps(spec) if spec.steps else ():
            ledger.record_job(step.job, spec_hash(step.spec), spec_json(step.spec))
        run_id = ledger.start_run(spec.name, spec.backend, run_name)
        register(ledger, worker, spec.name, run_id)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(keep_alive, ledger, worker)
                summary = await _Run(spec, ledger, worker, run_id, model, started, models,
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
OPEN_STATUSES = (*(status.value for status in OPEN_REQUESTS), RequestStatus.RETRYABLE.value)
"""Requests the fallback may yet have to finish (what ``completion_window = "auto"`` counts)."""


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return total


def _summed_totals(totals: list[dict[str, float]]) -> dict[str, float]:
    """Tokens, cost and attempts over the steps (ints stay ints)."""
    total: dict[str, float] = {}
    for each in totals:
        for key, value in each.items():
            total[key] = total.get(key, 0) + value
    return total


def _summed_snapshots(snapshots: list[BatchSnapshot]) -> BatchSnapshot:
    """:func:`batch_snapshot` over the steps."""
    return BatchSnapshot(_summed([s.steps for s in snapshots]),
                         _summed([s.statuses for s in snapshots]),
                         sum(s.done for s in snapshots), sum(s.lines for s in snapshots))


def _summed_failures(per_step: list[list[tuple[str, int]]]) -> list[tuple[str, int]]:
    """The most common failure reasons over the steps (as :func:`failure_reasons` gives)."""
    counts: dict[str, int] = {}
    for reasons in per_step:
        for reason, n in reasons:
            counts[reason] = counts.get(reason, 0) + n
    return sorted(counts.items(), key=lambda item: -item[1])[:3]


def _summed_paths(per_step: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """:func:`cost_by_path` over the steps: each path's figures added up."""
    total: dict[str, dict[str, Any]] = {}
    for paths in per_step:
        for path, figures in paths.items():
            into = total.setdefault(path, {})
            for key, value in figures.items():
                into[key] = into.get(key, 0) + value
    return total


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
                 started: float, models: dict[str, str], *, wait: bool, refresh: bool,
                 run_name: str | None, config_path: str | Path | None,
                 on_progress: Callable[[Progress], None] | None) -> None:
        self.spec, self.ledger, self.worker, self.run_id = spec, ledger, worker, run_id
        self.model, self.started, self.wait, self.refresh = model, started, wait, refresh
        self.run_name, self.config_path, self.on_progress = run_name, config_path, on_progress
        self.steps: list[Step] = job_steps(spec)
        """The job's steps (a job without ``[[steps]]`` is one: itself)."""
        self.models = models
        """Each step's job → the model its requests go to."""
        # cache = false: every run asks afresh, under ids salted with the run's identity.
        self.salt = None if spec.policy.cache else run_identity(run_id=run_id, run_name=run_name)
        self.salts = {step.job: None if step.spec.policy.cache
                      else run_identity(run_id=run_id, run_name=run_name) for step in self.steps}
        self.fingerprint = compile_fingerprint(spec, "|".join(models.values()), self.salt)
        self.builders: dict[str, RequestBuilder] = {}
        """Later steps' request builders (templates compiled once a run)."""
        created = ledger.job_created_at(spec.name)
        self.first_run_at = (dt.datetime.fromtimestamp(created, tz=dt.UTC) if created
                             else dt.datetime.now(dt.UTC))
        self.window: WindowChoice | None = None
        """The last completion window chosen (``auto``)."""
        self.compiled = CompileReport(job=spec.name, model=model)
        self.compile_waiting: str | None = None
        """The worker whose compile this one is waiting for, if any."""
        self.skipped: set[str] = set()
        """Optional calls the server refused, skipped (notes for the summary)."""
        prices = load_prices()
        self.price: Price | None = price_for(model, prices)
        self.budgets = {step.job: BatchBudget.of(step.spec.policy.budget,
                                                 estimate_completion_tokens(step.spec),
                                                 price_for(models[step.job], prices))
                        for step in self.steps}
        """Each step's budget as the batch path applies it (None: nothing capped). A job
        without ``[[steps]]`` is its one step; with steps, each step counts its own."""
        self.budget = self.budgets[self.steps[0].job]
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
                for step in self.steps:
                    await anyio.to_thread.run_sync(partial(shard_pending, step.spec, ledger,
                                                           self.compiled,
                                                           budget=self.budgets[step.job]))
            else:
                first = self.steps[0]
                self.compiled = await anyio.to_thread.run_sync(partial(
                    compile_job, first.spec, ledger, refresh=self.refresh,
                    model=self.models[first.job], salt=self.salts[first.job],
                    keep_data=len(self.steps) > 1, budget=self.budgets[first.job]))
                # Later steps: every answered row passed on again (the config or the input
                # may have changed since the last run), each step sharded as it is fed.
                for step in self.steps[1:]:
                    await anyio.to_thread.run_sync(partial(self._feed, step, reset=True))
                done = self.fingerprint
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(partial(
                    ledger.unlock, compile_lock(spec.name), worker.id, done=done))
        self.compile_waiting = None
        return True

    def _feed(self, step: Step, *, reset: bool = False) -> None:
        """Pass the previous step's newly answered rows on into ``step`` and shard them."""
        builder = self.builders.get(step.job)
        if builder is None:
            builder = self.builders[step.job] = RequestBuilder(
                step.spec, model=self.models[step.job], salt=self.salts[step.job])
        feed_step(step, self.ledger, builder, reset=reset)
        shard_pending(step.spec, self.ledger, CompileReport(job=step.job, model=builder.model),
                      budget=self.budgets[step.job])

    async def _advance_steps(self) -> None:
        """Feed every later step what its previous step answered so far, under the job's
        compile lock (another worker holding it is feeding or compiling: it is waited for)."""
        if len(self.steps) == 1 or self.compile_waiting is not None:
            return
        spec, ledger, worker = self.spec, self.ledger, self.worker
        taken, holder, _done = await anyio.to_thread.run_sync(partial(
            ledger.lock, compile_lock(spec.name), spec.name, worker.id, lease_s=worker.lease_s))
        if not taken:
            self.compile_waiting = holder
            return
        try:
            for step in self.steps[1:]:
                await anyio.to_thread.run_sync(self._feed, step)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(partial(ledger.unlock, compile_lock(spec.name),
                                                       worker.id))

    def _deadline(self, step: Step) -> dt.datetime | None:
        """When ``step``'s deadline falls (counted from the job's first run), if it has one and
        its fallback acts on it."""
        policy = step.spec.policy
        if (policy.deadline is None or not policy.fallback.enabled
                or "deadline" not in policy.fallback.triggers):
            return None
        return policy.deadline_at(self.first_run_at)

    def _completion_window(self, step: Step, flexed: FlexReport) -> str:
        """The window for ``step``'s batches created now: as configured, or (``auto``) the
        longest that leaves the fallback time for its open requests (:mod:`jobs.window`)."""
        policy = step.spec.policy
        if policy.completion_window != "auto":
            return policy.completion_window
        counts = self.ledger.open_request_counts(step.job)  # what is open, not the whole job
        open_requests = sum(counts[status] for status in OPEN_STATUSES)
        summaries = [orjson.loads(run["summary_json"]) for run in self.ledger.runs(self.spec.name)
                     if run["summary_json"]]
        summaries.append({"fallback": {"sent": flexed.sent, "elapsed_s": flexed.elapsed_s}})
        self.window = choose_window(policy, now=dt.datetime.now(dt.UTC),
                                    deadline=policy.deadline_at(self.first_run_at),
                                    requests=open_requests, pace_rps=flex_pace(summaries))
        return self.window.window

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

    def _flex_progress(self, job: str, before: dict[str, int],
                       run_flexed: FlexReport) -> Callable[[FlexReport], None] | None:
        """While the fallback runs, a Progress per recorded chunk: the round's counts moved on
        by what the stage has recorded so far (no ledger query per chunk)."""
        on_progress = self.on_progress
        if on_progress is None:
            return None
        shards = count_steps(self.ledger, job)

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
            first_job = self.steps[0].job
            require_requests(self.steps[0].spec, self.config_path, rows=report.rows,
                             ok=report.ok, rejected=report.rejected,
                             example=_first_rejection(ledger, first_job))
        if self.on_progress is not None:  # compiled: shown before the first batch is sent
            batches = _summed_snapshots([batch_snapshot(ledger, step.job) for step in self.steps])
            self.on_progress(Progress(spec.name, 0, time.monotonic() - self.started,
                                      batches.steps,
                                      _summed([ledger.request_counts(step.job)
                                               for step in self.steps]), {},
                                      compiling=self.compile_waiting is not None))
        prices = load_prices()
        step_prices = {step.job: price_for(self.models[step.job], prices) for step in self.steps}
        # One rule for batch lines and flex answers, per step.
        outputs = {step.job: OutputValidator.for_job(step.spec) for step in self.steps}
        reconciled = ReconcileReport()
        flexed = FlexReport(tier=spec.policy.fallback.service_tier)
        deadlines = {step.job: self._deadline(step) for step in self.steps}
        deadline = deadlines[self.steps[0].job]
        # Whether a new batch window still fits before each step's deadline (leftovers).
        deadline_ats = {step.job: job_deadline_at(step.spec, ledger) for step in self.steps}
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
                created = held_shards = 0
                changed = False
                for step in self.steps:
                    job = step.job
                    late = deadline_passed(deadlines[job])
                    window = self._completion_window(step, flexed)
                    if late:
                        # Nothing new goes to the batch path; what is in flight is cancelled,
                        # and whatever the cancelled batches did not finish goes to the fallback.
                        drop_unsubmitted(ledger, job, worker)
                        # What is left unsubmitted is a shard caught in ``submitting`` by a
                        # crash: its batch may exist. Resolve it (adopt, else create) so it can
                        # be cancelled.
                        resolved = await submit_shards(ledger, client, job,
                                                       completion_window=window,
                                                       worker=worker, shard_dir=shard_dir)
                        created += resolved.created
                        await cancel_in_flight(ledger, client, job)
                    else:
                        submitted = await submit_shards(ledger, client, job,
                                                        completion_window=window,
                                                        worker=worker, shard_dir=shard_dir,
                                                        budget=self.budgets[job])
                        created += submitted.created
                        held_shards += submitted.held_by_budget
                        touched_uploads |= bool(submitted.uploaded or submitted.adopted_files)
                        self.skipped.update(submitted.notes)
                    polled = await poll_batches(ledger, client, job, worker)
                    poll_calls += polled.calls
                    round_reconciled = await reconcile_shards(
                        ledger, client, job, spec.workdir_path / "downloads", step_prices[job],
                        outputs=outputs[job], worker=worker,
                    )
                    reconciled.add(round_reconciled)
                    round_left = LeftoverReport()
                    if not late:
                        round_left = await anyio.to_thread.run_sync(partial(
                            rebatch_leftovers, ledger, step.spec, deadline_ats[job], worker,
                            batches_running=partial(self._batches_running, job, held_shards)))
                        leftovers.add(round_left)
                        self.leftover_route = round_left.route
                        if round_left.rebatched and self.compile_waiting is None:
                            await self._compile(only_shards=True)  # submitted next round
                    round_flexed = FlexReport(tier=flexed.tier)
                    # Stopped for today (the batches go on, flex waits), or halted on a
                    # permanent error: this run sends nothing more through the fallback.
                    if not flexed.daily_limit and flexed.halted is None:
                        before = ledger.request_counts(job) if self.on_progress else {}
                        round_flexed = await finish_leftovers(
                            ledger, client, step.spec, step_prices[job], deadline_passed=late,
                            worker=worker, keep=round_left.keep_for_batch(step.spec),
                            on_record=self._flex_progress(job, before, flexed))
                    flexed.add(round_flexed)
                    changed |= bool(polled.changed or round_reconciled.shards
                                    or round_flexed.sent)
                # Later steps take what their previous steps answered this round.
                await self._advance_steps()
                batches = _summed_snapshots([batch_snapshot(ledger, step.job)
                                             for step in self.steps])
                steps = batches.steps
                if on_progress := self.on_progress:
                    requests = _summed([ledger.request_counts(step.job) for step in self.steps])
                    on_progress(Progress(spec.name, rounds, time.monotonic() - self.started,
                                         steps, requests, batches.statuses,
                                         batch_done=batches.done, batch_lines=batches.lines,
                                         flex_sent=flexed.sent, flex_pace_rps=flexed.pace_rps,
                                         compiling=self.compile_waiting is not None))
                in_flight = sum(steps[step] for step in IN_FLIGHT_STEPS)
                # Shards the budget keeps compiled are not in flight: nothing moves them.
                active = in_flight - steps[ShardStep.COMPILED.value]
                # What is left is asked of the open requests only (the status index), and only
                # once no shard is moving: a round costs what is still to do, not what the job
                # holds (issue 12: O(work), not O(job)). While shards move, it is not needed.
                still_open = (_summed([ledger.open_request_counts(step.job)
                                       for step in self.steps]) if active == 0 else None)
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
                    for step in self.steps:
                        swept += await sweep_orphan_uploads(ledger, client, step.job,
                                                            self.skipped)
                    touched_uploads = False
                if (finished or not self.wait or flexed.budget_exhausted or held
                        or (flexed.daily_limit and in_flight == 0)):
                    break
                await anyio.sleep(interval.next(changed=changed or bool(created)))
        step_requests = {step.job: ledger.request_counts(step.job) for step in self.steps}
        requests = _summed(list(step_requests.values()))
        summary = RunSummary(
            job=spec.name,
            run_id=self.run_id,
            backend=describe_backend(spec),
            model=self.model,
            ledger=ledger.url,
            output=str(self.steps[-1].spec.output_path),
            finished=finished,
            elapsed_s=round(time.monotonic() - self.started, 3),
            compile=self.compiled.as_dict(),
            requests=requests,
            shards=steps,
            rows=ledger.row_counts(self.steps[0].job),
            reconciled=asdict(reconciled),
            totals=_summed_totals([ledger.request_totals(step.job) for step in self.steps]),
            rounds=rounds,
            poll_calls=poll_calls,
            left_retryable=requests[RequestStatus.RETRYABLE.value],
            fallback=flexed.as_dict(),
            deadline=deadline.isoformat() if deadline is not None else None,
            budget_exhausted=flexed.budget_exhausted or (self._held_cap() if held else None),
            worker=worker.id,
            cost_known=all(p is not None for p in step_prices.values()),
            completion_window=self.window.window if self.window else spec.policy.completion_window,
            steps={step.name: {"job": step.job, "rows": ledger.row_counts(step.job),
                               "requests": step_requests[step.job]}
                   for step in self.steps} if spec.steps else {},
            budget_held=held,
            leftovers={"rebatched": leftovers.rebatched, "to_flex": leftovers.to_flex,
                       "mode": spec.policy.fallback.leftovers},
            paths=_summed_paths([cost_by_path(ledger, step.job, step_prices[step.job])
                                 for step in self.steps]),
            spent={"prompt_tokens": reconciled.prompt_tokens + flexed.prompt_tokens,
                   "completion_tokens": reconciled.completion_tokens + flexed.completion_tokens,
                   "cost_usd": reconciled.cost_usd + flexed.cost_usd},
            failures=_summed_failures([failure_reasons(ledger, step.job) for step in self.steps]),
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
        shard = next((s for s in self.ledger.shards(self.steps[0].job)
                      if s["step"] == ShardStep.COMPILED.value), None)
        if shard is None:
            return None
        return self.budget.refusal(self.ledger, self.steps[0].job, shard["lines"], shard["bytes"])

    def _batches_running(self, job: str, held_shards: int) -> int:
        """Shards of ``job`` on their way, and requests waiting to be sharded (leftovers moved
        by a run that died before sharding them): the batch path is still busy. What the
        budget holds back is not running, so leftovers do not wait for it."""
        steps = count_steps(self.ledger, job)
        running = sum(steps[step] for step in IN_FLIGHT_STEPS)
        if held_shards or self.compiled.budget_reached:
            return running - steps[ShardStep.COMPILED.value]
        pending = self.ledger.open_request_counts(job)[RequestStatus.PENDING.value]
        return running + pending

    def _notes(self, summary: RunSummary, swept: int, flexed: FlexReport, in_flight: int,
               open_requests: int) -> None:
        spec = self.spec
        notes = summary.notes
        if not summary.cost_known:
            notes.append(unpriced(self.model))
        if self.window is not None:
            notes.append(f"completion window {self.window.window}: {self.window.reason}")
        notes.extend(sorted(self.skipped))
        if swept:
            notes.append(f"deleted {swept} stray uploads of this job's shards left by an interrupted run")
        if flexed.recovered_in_flight:
            notes.append(f"{flexed.recovered_in_flight} flex calls cut short by a stopped worker "
                         "were taken back (not counted as attempts)")
        if summary.budget_held:
            summary.unsent_reason = "the budget is reached"
            caps = ", ".join(f"{name} = {value}" for name, value in
                             spec.policy.budget.model_dump(exclude={"expected_completion_tokens"}).items()
                             if value is not None)
            notes.append(
                f"budget reached: {summary.budget_held} requests not sent; raise [policy.budget] "
                f"({caps}) and run again to send them"
            )
        if flexed.daily_limit:
            summary.unsent_reason = "the day's request limit is reached"
            notes.append(daily_limit_note(flexed.daily_limit, summary.left_retryable))
        elif flexed.halted:
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
            claims: dict[str, dict[str, int]] = {}
            for job in dict.fromkeys([spec.name, *(step.job for step in self.steps)]):
                for who, held in self.ledger.live_claims(job).items():
                    claims.setdefault(who, {}).update(held)
            others = {who: held for who, held in claims.items() if who != self.worker.id}
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
