"""Plan a multi-step job: the first step as any job's plan, the later ones from the ledger.

A later step's rows are the previous step's answers, which a plan cannot know before they
exist. So each later step is planned from what the job's ledger holds now: the previous step's
answered rows are passed through the step's ``where`` and rendered (spending nothing), split
into already answered and to send, and priced; the previous step's rows still open are
*waiting* — each may become one request of this step (at most), and is not priced. The first
step's to-send rows count as waiting for the second step::

    plan = plan_steps(spec, ledger)          # ledger: the job's, or None if it never ran
    for step in plan.steps:
        print(step.name, step.to_send, step.waiting)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson

from jobs.compile import estimate_completion_tokens, estimate_prompt_tokens
from jobs.plan import PlanReport, Price, load_prices, plan_job, plan_window, price_for
from jobs.requests import RequestBuilder
from jobs.spec import JobSpec, row_matches
from jobs.steps import Step, job_steps, step_row
from jobs.template import RowRejected
from state import Ledger, RequestStatus

__all__ = ["StepPlan", "plan_steps"]


@dataclass(slots=True)
class StepPlan:
    """One step of a plan. ``as_dict()`` (through :class:`PlanReport`) is JSON-serialisable."""

    name: str
    job: str
    model: str
    rows: int = 0
    """Input rows the step has now (the first step: the input's; later: answered upstream)."""
    kept: int = 0
    """Of those, rows that become requests (past ``where``, rendered)."""
    left_out: int = 0
    """Rows ``where`` leaves out, rejected rows, and upstream failures."""
    already_answered: int = 0
    to_send: int = 0
    waiting: int = 0
    """Upstream rows not answered yet: each may become one more request of this step."""
    est_prompt_tokens: int = 0
    est_completion_tokens: int = 0
    cost_batch_usd: float | None = None
    completion_window: str | None = None
    window_reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def plan_steps(spec: JobSpec, ledger: Ledger | None, *, refresh: bool = False,
               models: dict[str, str] | None = None,
               prices: dict[str, Price] | None = None) -> PlanReport:
    """The plan of a job with ``[[steps]]`` (see the module docstring): the first step's
    :class:`PlanReport`, with every step in ``steps`` and the costs summed over them."""
    table = load_prices() if prices is None else prices
    steps = job_steps(spec)
    models = models or {}
    first = steps[0]
    plan = plan_job(first.spec, ledger, refresh=refresh, model=models.get(first.job), prices=table)
    compiled = plan.compile
    compiled.job = spec.name  # the job's plan; each step's name is in ``steps``
    head = StepPlan(first.name, first.job, compiled.model, rows=compiled.rows, kept=compiled.ok,
                    left_out=compiled.rejected, already_answered=compiled.already_answered,
                    to_send=compiled.to_send, est_prompt_tokens=compiled.est_prompt_tokens,
                    est_completion_tokens=compiled.est_completion_tokens,
                    cost_batch_usd=plan.cost_batch_usd, completion_window=plan.completion_window,
                    window_reason=plan.window_reason)
    planned = [head]
    upstream_open = compiled.to_send  # rows of the previous step still to be answered
    for step in steps[1:]:
        builder = RequestBuilder(step.spec, model=models.get(step.job))
        later = _plan_later(step, ledger, builder, refresh=refresh)
        later.waiting += upstream_open
        price = price_for(builder.model, table)
        if price is not None:
            later.cost_batch_usd = price.cost(later.est_prompt_tokens,
                                              later.est_completion_tokens, "batch")
        later.completion_window, later.window_reason = plan_window(
            step.spec, ledger, later.to_send + later.waiting)
        upstream_open = later.to_send + later.waiting
        if later.waiting:
            plan.warnings.append(
                f"step {step.name!r}: {later.waiting:,} rows wait on step "
                f"{planned[-1].name!r}'s answers — up to {later.waiting:,} more requests, "
                "not priced here")
        if price is None:
            plan.warnings.append(f"step {step.name!r}: no price for model {builder.model!r}")
        planned.append(later)
    plan.steps = [step.as_dict() for step in planned]
    costs = [step.cost_batch_usd for step in planned]
    if plan.cost_batch_usd is not None and all(cost is not None for cost in costs):
        plan.cost_batch_usd = sum(cost or 0.0 for cost in costs)
        plan.cost_on_demand_usd = plan.cost_batch_usd * 2
    return plan


def _plan_later(step: Step, ledger: Ledger | None, builder: RequestBuilder, *,
                refresh: bool) -> StepPlan:
    """A later step from the ledger's answers of the previous one (nothing written)."""
    assert step.source is not None
    plan = StepPlan(step.name, step.job, builder.model)
    if ledger is None:
        return plan
    completion = estimate_completion_tokens(step.spec)
    counts = ledger.request_counts(step.source)
    plan.waiting = sum(counts[status] for status in ("pending", "queued", "submitted",
                                                      "retryable", "in_flight"))
    after = ""
    while page := ledger.rows_to_feed(step.source, after=after, fed_too=True):
        after = page[-1].row_key
        bodies: dict[str, bytes] = {}
        for item in page:
            plan.rows += item.status is RequestStatus.SUCCEEDED
            if item.status is not RequestStatus.SUCCEEDED or item.data is None:
                plan.left_out += 1
                continue
            row = step_row(orjson.loads(item.data), item.parsed, item.body)
            if not row_matches(step.where, row):
                plan.left_out += 1
                continue
            try:
                built = builder.build(row)
            except RowRejected:
                plan.left_out += 1
                continue
            plan.kept += 1
            bodies[built.custom_id] = built.body
        answered = set() if refresh else ledger.answered_ids(bodies)
        plan.already_answered += len(answered)
        for custom_id, body in bodies.items():
            if custom_id in answered:
                continue
            plan.to_send += 1
            plan.est_prompt_tokens += estimate_prompt_tokens(body)
            plan.est_completion_tokens += completion
    return plan
