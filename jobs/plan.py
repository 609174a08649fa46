"""Plan a job: what a compile would send, and what it would cost — spending nothing.

:func:`plan_job` runs the compile's row pass into a scratch ledger in a temporary folder,
asks the real ledger which requests it has already answered, and sizes the shards without
writing them::

    with Ledger.open(spec.ledger_target) as ledger:
        plan = plan_job(spec, ledger)
    print(plan.cost_batch_usd, plan.shards)

Prices come from ``configs/prices.toml``: USD per 1M tokens at on-demand rates, per model.
The Batch API costs 50% of that; flex costs the same as on-demand (during its beta). A
LoRA id ``ft:<base>:...`` is priced as its base model.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from jobs.audio import MIN_BILLED_AUDIO_S, is_audio
from jobs.budget import Allowance, BatchBudget, Spend
from jobs.compile import (
    CompileReport,
    ShardSummary,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    record_rows_and_requests,
)
from jobs.load import spec_hash, spec_json
from jobs.requests import RequestBuilder, batch_line
from jobs.shards import ShardSizer
from jobs.spec import JobSpec
from jobs.window import choose_window, flex_pace
from pipeline.errors import ConfigError
from state import Ledger

__all__ = [
    "DEFAULT_PRICES",
    "PlanReport",
    "Price",
    "load_prices",
    "plan_job",
    "price_for",
    "refuse_unpriced_budget",
    "unpriced",
]

DEFAULT_PRICES = Path(__file__).resolve().parent.parent / "configs" / "prices.toml"
_ANSWER_CHUNK = 5_000
REJECTIONS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens at on-demand rates, and the batch discount."""

    model: str
    input_per_m: float
    output_per_m: float
    batch_discount: float = 0.5
    flex_factor: float = 1.0
    audio_per_hour: float = 0.0
    """USD per hour of audio (speech-to-text models), on-demand."""

    def cost(self, prompt_tokens: float, completion_tokens: float, tier: str = "batch") -> float:
        """USD for these tokens on ``tier`` (``batch``, ``flex``, ``on_demand``)."""
        usd = (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6
        return self._on(tier, usd)

    def audio_cost(self, seconds: float, tier: str = "batch") -> float:
        """USD for ``seconds`` of billed audio on ``tier``."""
        return self._on(tier, seconds * self.audio_per_hour / 3600)

    def _on(self, tier: str, usd: float) -> float:
        if tier == "batch":
            return usd * (1 - self.batch_discount)
        return usd * self.flex_factor if tier == "flex" else usd


PRICES_ENV = "GROQBATCH_PRICES"
"""Names a price table of your own (negotiated prices, new models) over the shipped one."""


def prices_path() -> Path:
    """Where the price table is read from: ``$GROQBATCH_PRICES``, else the shipped one."""
    return Path(os.environ.get(PRICES_ENV) or DEFAULT_PRICES)


def load_prices(path: str | os.PathLike[str] | None = None) -> dict[str, Price]:
    """The price table: ``[models."<id>"] input = … output = …`` (USD per 1M tokens)."""
    if path is None and os.environ.get(PRICES_ENV):
        path = os.environ[PRICES_ENV]
    file = Path(path) if path is not None else DEFAULT_PRICES
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if path is None:
            return {}
        raise ConfigError("price table not found", path=file) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot parse the price table: {exc}", path=file) from None
    discount = float(data.get("batch_discount", 0.5))
    flex = float(data.get("flex_factor", 1.0))
    prices: dict[str, Price] = {}
    for model, entry in data.get("models", {}).items():
        try:
            prices[model] = Price(
                model, float(entry["input"]), float(entry["output"]), discount, flex,
                float(entry.get("audio_per_hour", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                "each model needs numeric input and output prices",
                path=file,
                field=f"models.{model}",
            ) from None
    return prices


def price_for(model: str, prices: dict[str, Price]) -> Price | None:
    """The price of ``model``; a LoRA id ``ft:<base>:...`` is priced as ``<base>``."""
    if model.startswith("ft:"):
        model = model.split(":")[1]
    return prices.get(model)


@dataclass(slots=True)
class PlanReport:
    """What a compile would do and cost. ``as_dict()`` is JSON-serialisable."""

    compile: CompileReport
    price_known: bool = False
    input_usd_per_m: float | None = None
    output_usd_per_m: float | None = None
    cost_batch_usd: float | None = None
    """At most, on the batch tier: every answer at ``max_completion_tokens``."""
    cost_on_demand_usd: float | None = None
    """The same tokens at on-demand prices."""
    cost_expected_usd: float | None = None
    """Expected, on the batch tier: at the mean usage of this job's earlier answers when its
    ledger has some (``expected_from``), else the same as ``cost_batch_usd``."""
    max_completion_tokens: int = 0
    """Completion tokens per answer that "at most" assumes."""
    expected_prompt_tokens: int = 0
    expected_completion_tokens: int = 0
    expected_from: str = "the upper bound"
    """What "expected" is based on: ``N earlier answers`` of this job, or the upper bound."""
    rejections: list[dict[str, Any]] = field(default_factory=list)
    """The first rejected rows: ``row_key``, ``row_index``, ``reason``."""
    budget_fits: int | None = None
    """With ``[policy.budget]``: requests a run would send now (the shards marked ``fits``),
    what the budget leaves after what the ledger has spent or committed."""
    budget_held: int = 0
    """Requests past the budget: left pending until a run with a larger budget."""
    budget_reached: str | None = None
    """The cap that holds them back."""
    warnings: list[str] = field(default_factory=list)
    completion_window: str | None = None
    """The batch window a run would create batches with now (``auto``: chosen, see
    :mod:`jobs.window`)."""
    window_reason: str | None = None
    """Why that window."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    """A job with ``[[steps]]``: each step's plan (:class:`jobs.plan_steps.StepPlan`); the
    other fields are the first step's, the costs summed over the steps."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_window(spec: JobSpec, ledger: Ledger | None, requests: int,
                now: datetime | None = None) -> tuple[str, str]:
    """The window a run would choose now, and why: a duration deadline counts from the job's
    first run (the ledger's record of it; now, if it never ran), and the flex pace is the one
    its earlier runs saw."""
    now = now or datetime.now(UTC)
    created = ledger.job_created_at(spec.name) if ledger is not None else None
    first_run = datetime.fromtimestamp(created, tz=UTC) if created else now
    summaries = ([orjson.loads(run["summary_json"]) for run in ledger.runs(spec.name)
                  if run["summary_json"]] if ledger is not None else [])
    choice = choose_window(spec.policy, now=now, deadline=spec.policy.deadline_at(first_run),
                           requests=requests, pace_rps=flex_pace(summaries))
    return choice.window, choice.reason


def plan_job(
    spec: JobSpec,
    ledger_for_answers: Ledger | None,
    *,
    refresh: bool = False,
    model: str | None = None,
    prices: dict[str, Price] | None = None,
) -> PlanReport:
    """What ``compile_job(spec, …)`` would send, priced; nothing persisted, nothing spent.

    Requests the real ledger has answered count as already answered (unless ``refresh``).
    Requests it holds in another state (queued, submitted) are counted as to send. Rows are
    counted as new, changed or unchanged against the real ledger's row → request mapping.

    With ``[policy] cache = false`` a run salts its ids with its own identity, so nothing is
    answered from the ledger: every row is to send, and the rows seen before count as changed.
    """
    builder = RequestBuilder(spec, model=model)
    table = load_prices() if prices is None else prices
    with (
        tempfile.TemporaryDirectory(prefix="groqbatch-plan-") as scratch_dir,
        Ledger.open(Path(scratch_dir) / "plan.sqlite") as scratch,
    ):
        scratch.record_job(spec.name, spec_hash(spec), spec_json(spec))
        tally = record_rows_and_requests(spec, scratch, builder, previous=ledger_for_answers)
        if ledger_for_answers is None:  # never run: every row is new
            tally.new_rows = tally.rows
        report = CompileReport(
            job=spec.name,
            model=builder.model,
            rows=tally.rows,
            ok=tally.ok,
            rejected=tally.rejected,
            unique_requests=sum(scratch.request_counts(spec.name).values()),
            new_rows=tally.new_rows,
            changed_rows=tally.changed_rows,
            unchanged_rows=tally.unchanged_rows,
            duplicate_rows=tally.duplicate_rows,
        )
        if not spec.policy.cache:
            # A run salts with its own identity (not known here): every known row changes.
            report.changed_rows += report.unchanged_rows
            report.unchanged_rows = 0
            refresh = True
        allowance = _allowance(spec, ledger_for_answers, builder.model, table)
        _size_shards(spec, scratch, ledger_for_answers, report, refresh=refresh,
                     allowance=allowance)
        rejections = [
            {"row_key": key, "row_index": index, "reason": reason}
            for key, index, reason in scratch.rejected_rows(spec.name, limit=REJECTIONS_SHOWN)
        ]
    report.new_requests = report.to_send
    plan = _price(spec, report, table, ledger_for_answers)
    plan.rejections = rejections
    if allowance is not None:
        plan.budget_fits = sum(s.lines for s in report.shards if s.fits)
        plan.budget_held = report.to_send - plan.budget_fits
        plan.budget_reached = allowance.refused
    plan.completion_window, plan.window_reason = plan_window(spec, ledger_for_answers,
                                                             report.to_send)
    if report.duplicate_rows:
        kept = spec.input.on_duplicate_id
        plan.warnings.append(
            f"{report.duplicate_rows} rows left out: another row has the same "
            f'{spec.input.id_column} (on_duplicate_id = "{kept}" keeps the {kept} of each)'
        )
    if not spec.policy.cache:
        plan.warnings.append(
            "cache = false: each run asks every request afresh (ids salted with the run's "
            "identity), so nothing is answered from the ledger"
        )
    return plan


def _allowance(spec: JobSpec, real: Ledger | None, model: str,
               prices: dict[str, Price]) -> Allowance | None:
    """What the budget leaves for new shards, after what the real ledger spent or committed."""
    budget = BatchBudget.of(spec.policy.budget, estimate_completion_tokens(spec),
                            price_for(model, prices))
    if budget is None:
        return None
    if real is None:
        return Allowance(budget.budget, Spend(0, 0.0, 0.0), budget.completion_per_line,
                         budget.price)
    return budget.allowance(real, spec.name)


def _size_shards(
    spec: JobSpec, scratch: Ledger, real: Ledger | None, report: CompileReport, *, refresh: bool,
    allowance: Allowance | None = None,
) -> None:
    """Size the shards a compile would write; with an ``allowance`` they are cut where the
    compile would cut them, and those past it are marked as not fitting."""
    sizer = ShardSizer(spec.policy.max_lines_per_shard, spec.policy.max_bytes_per_shard)
    over = ShardSizer(spec.policy.max_lines_per_shard, spec.policy.max_bytes_per_shard)
    completion = estimate_completion_tokens(spec)
    chunk: list[tuple[str, bytes]] = []

    def flush() -> None:
        answered = real.answered_ids(c for c, _ in chunk) if real and not refresh else set()
        report.already_answered += len(answered)
        for custom_id, body in chunk:
            if custom_id in answered:
                continue
            report.to_send += 1
            report.est_prompt_tokens += estimate_prompt_tokens(body)
            report.est_completion_tokens += completion
            size = len(batch_line(custom_id, body, spec.endpoint))
            if allowance is None or (allowance.refused is None and allowance.take(size)):
                sizer.add(size)
            else:
                over.add(size)
        chunk.clear()

    for item in scratch.iter_pending(spec.name):
        chunk.append(item)
        if len(chunk) >= _ANSWER_CHUNK:
            flush()
    flush()
    sizer.close()
    over.close()
    report.shards = [ShardSummary(None, None, None, lines, size) for lines, size in sizer.closed]
    report.shards += [ShardSummary(None, None, None, lines, size, fits=False)
                      for lines, size in over.closed]


def unpriced(model: str) -> str:
    """What plan, run and status say of a model the price table does not have."""
    return (f"cost unknown: no price for model {model!r} in {prices_path()} — its tokens are "
            "counted but priced at nothing; add the model there to see (and budget) its cost")


def refuse_unpriced_budget(spec: JobSpec, model: str, prices: dict[str, Price] | None = None,
                           *, config_path: str | os.PathLike[str] | None = None) -> None:
    """A dollar budget on a model with no price could never trip: refuse it (exit 2)."""
    if spec.policy.budget.max_dollars is None:
        return
    if price_for(model, load_prices() if prices is None else prices) is None:
        raise ConfigError(
            f"max_dollars = {spec.policy.budget.max_dollars} cannot be kept: {unpriced(model)}",
            path=None if config_path is None else Path(config_path),
            field="policy.budget.max_dollars",
        )


def _price_audio(plan: PlanReport, price: Price, requests: int) -> None:
    """An audio job is billed by the length of its audio, which a plan does not read: its cost
    is given as the least it can be (every request billed its minimum 10 seconds)."""
    seconds = MIN_BILLED_AUDIO_S * requests
    plan.cost_batch_usd = price.audio_cost(seconds, "batch")
    plan.cost_on_demand_usd = price.audio_cost(seconds, "on_demand")
    plan.warnings.append(
        f"audio is billed by its length (${price.audio_per_hour}/hour on demand, at least "
        f"{MIN_BILLED_AUDIO_S:g} s a request): the cost shown is that minimum; token estimates "
        "do not apply"
    )


def _expect(spec: JobSpec, report: CompileReport, plan: PlanReport, ledger: Ledger | None) -> None:
    """The upper bound (every answer at ``max_completion_tokens``) and the expectation (this
    job's earlier answers' mean usage, when its ledger has them, else the upper bound)."""
    cap = spec.prompt.max_completion_tokens if spec.prompt is not None else None
    plan.max_completion_tokens = cap or estimate_completion_tokens(spec)
    if cap is None:
        plan.warnings.append(
            f"[prompt] max_completion_tokens is not set: \"at most\" assumes "
            f"{plan.max_completion_tokens} completion tokens an answer, but a model may write more")
    plan.expected_prompt_tokens = report.est_prompt_tokens
    plan.expected_completion_tokens = report.est_completion_tokens
    answered, prompt_mean, completion_mean = (
        ledger.usage_averages(spec.name) if ledger is not None else (0, 0.0, 0.0))
    if answered:
        plan.expected_prompt_tokens = round(prompt_mean * report.to_send)
        plan.expected_completion_tokens = round(completion_mean * report.to_send)
        plan.expected_from = f"{answered:,} earlier answers of this job"


def _price(spec: JobSpec, report: CompileReport, prices: dict[str, Price],
           ledger: Ledger | None = None) -> PlanReport:
    plan = PlanReport(compile=report)
    _expect(spec, report, plan, ledger)
    price = price_for(report.model, prices)
    prompt, completion = report.est_prompt_tokens, report.est_completion_tokens
    at_most_completion = report.to_send * plan.max_completion_tokens
    if price is None:
        plan.warnings.append(unpriced(report.model))
    else:
        plan.price_known = True
        plan.input_usd_per_m = price.input_per_m
        plan.output_usd_per_m = price.output_per_m
        plan.cost_batch_usd = price.cost(prompt, max(at_most_completion, completion), "batch")
        plan.cost_on_demand_usd = price.cost(prompt, max(at_most_completion, completion),
                                             "on_demand")
        plan.cost_expected_usd = price.cost(plan.expected_prompt_tokens,
                                            plan.expected_completion_tokens, "batch")
        if is_audio(spec.endpoint):
            _price_audio(plan, price, report.to_send)
    budget = spec.policy.budget
    if budget.max_requests is not None and report.to_send > budget.max_requests:
        plan.warnings.append(
            f"{report.to_send} requests to send, over budget.max_requests ({budget.max_requests})"
        )
    if budget.max_tokens is not None and prompt + completion > budget.max_tokens:
        plan.warnings.append(
            f"~{prompt + completion} tokens estimated, over budget.max_tokens ({budget.max_tokens})"
        )
    if (
        budget.max_dollars is not None
        and plan.cost_batch_usd is not None
        and plan.cost_batch_usd > budget.max_dollars
    ):
        plan.warnings.append(
            f"~${plan.cost_batch_usd:.2f} estimated, over budget.max_dollars ({budget.max_dollars})"
        )
    return plan
