"""The job-wide budget (``[policy.budget]``) over both paths: what has been spent, what is
committed to batches not yet reconciled, and how much of a new shard still fits.

A batch is paid when it runs, and its tokens are only known once its output is reconciled; so
a shard is weighed by its estimate — its lines, and ``bytes / 4`` prompt tokens (the compile's
estimate, :func:`jobs.compile.estimate_prompt_tokens`, summed over its lines) plus the expected
completion tokens per line — from the moment its upload starts until it is reconciled, when
what the ledger recorded replaces the estimate::

    budget = BatchBudget.of(spec.policy.budget, completion_per_line, price)
    allowance = budget.allowance(ledger, spec.name)   # recorded + committed estimates
    allowance.take(len(line))                         # False: this line would pass the budget

Every call made counts: batch lines (one attempt each, when the batch is created), fallback
calls (when claimed), and answers that arrived twice (their tokens are added all the same).
Workers sharing a ledger read the same figures from it, so they share one budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.policy import BudgetSpec
from state import Ledger
from state.spend import Committed

if TYPE_CHECKING:  # jobs.plan imports the compile, which imports this
    from jobs.plan import Price

__all__ = ["Allowance", "BatchBudget", "Spend", "shard_estimate", "spent"]

BYTES_PER_TOKEN = 4.0
_SLACK = 1e-9
"""Relative slack when comparing an estimate with a cap: the compile sums a shard's estimate
line by line, submit weighs it whole, and the two may differ in the last bit of a float."""


def shard_estimate(lines: int, size: int, completion_per_line: int,
                   price: Price | None) -> tuple[float, float]:
    """(tokens, USD at the batch price) a batch of ``lines`` lines and ``size`` bytes is
    expected to cost."""
    prompt = size / BYTES_PER_TOKEN
    completion = float(lines * completion_per_line)
    usd = price.cost(prompt, completion, "batch") if price is not None else 0.0
    return prompt + completion, usd


@dataclass(frozen=True, slots=True)
class Spend:
    """What the job has spent or committed, as the ledger says now."""

    requests: int
    """Attempts recorded (batch lines of created batches, fallback calls) plus the lines of
    shards whose upload or batch creation is under way."""
    tokens: float
    """Tokens recorded, plus the estimate of shards between upload and reconcile."""
    dollars: float


def spent(ledger: Ledger, job: str, completion_per_line: int, price: Price | None, *,
          compiled: bool = False) -> Spend:
    """Read the job's :class:`Spend` from the ledger (every worker's, so workers share it).
    ``compiled``: count shards compiled but not yet started as committed too (what a compile
    cutting new shards must leave room for)."""
    return _spend(ledger.spend_totals(job), ledger.committed_shards(job), completion_per_line,
                  price, compiled=compiled)


def _spend(totals: Mapping[str, float], committed: Committed, completion_per_line: int,
           price: Price | None, *, compiled: bool = False) -> Spend:
    lines = committed.lines_reserved + (committed.lines_compiled if compiled else 0)
    size = committed.bytes_reserved + (committed.bytes_compiled if compiled else 0)
    tokens, usd = shard_estimate(lines, size, completion_per_line, price)
    unsent = committed.lines_unsent + (committed.lines_compiled if compiled else 0)
    return Spend(requests=int(totals["attempts"]) + unsent,
                 tokens=totals["prompt_tokens"] + totals["completion_tokens"] + tokens,
                 dollars=totals["cost_usd"] + usd)


def _within(value: float, cap: float | None) -> bool:
    return cap is None or value <= cap + _SLACK * max(cap, 1.0)


@dataclass(slots=True)
class Allowance:
    """What is left of the budget for new batch lines; :meth:`take` spends it a line at a time."""

    budget: BudgetSpec
    spend: Spend
    completion_per_line: int
    price: Price | None
    lines: int = 0
    bytes: int = 0
    refused: str | None = None
    """The cap the first refused line would have passed."""

    def refuses(self, lines: int, size: int) -> str | None:
        """The cap ``lines`` more lines of ``size`` bytes (on top of those taken) would pass."""
        tokens, usd = shard_estimate(self.lines + lines, self.bytes + size,
                                     self.completion_per_line, self.price)
        if not _within(self.spend.requests + self.lines + lines, self.budget.max_requests):
            return "max_requests"
        if not _within(self.spend.tokens + tokens, self.budget.max_tokens):
            return "max_tokens"
        if not _within(self.spend.dollars + usd, self.budget.max_dollars):
            return "max_dollars"
        return None

    def take(self, size: int) -> bool:
        """Spend one line of ``size`` bytes if it fits; False (and :attr:`refused`) if not."""
        refused = self.refuses(1, size)
        if refused is not None:
            self.refused = self.refused or refused
            return False
        self.lines += 1
        self.bytes += size
        return True


@dataclass(frozen=True, slots=True)
class BatchBudget:
    """A job's budget as the batch path applies it: compile cuts shards to what is left
    (:meth:`allowance`), submit starts a shard only if it still fits (:meth:`fits`)."""

    budget: BudgetSpec
    completion_per_line: int
    price: Price | None

    @classmethod
    def of(cls, budget: BudgetSpec, completion_per_line: int,
           price: Price | None) -> BatchBudget | None:
        """The batch budget, or None when ``[policy.budget]`` caps nothing."""
        if budget.max_requests is None and budget.max_tokens is None and budget.max_dollars is None:
            return None
        return cls(budget, completion_per_line, price)

    def allowance(self, ledger: Ledger, job: str) -> Allowance:
        """What new shards may still hold, given what is spent, on its way, or compiled."""
        spend = spent(ledger, job, self.completion_per_line, self.price, compiled=True)
        return Allowance(self.budget, spend, self.completion_per_line, self.price)

    def refusal(self, ledger: Ledger, job: str, lines: int, size: int) -> str | None:
        """The cap a new shard of ``lines`` lines and ``size`` bytes would pass now, if any."""
        spend = spent(ledger, job, self.completion_per_line, self.price)
        return Allowance(self.budget, spend, self.completion_per_line, self.price).refuses(lines, size)

    def fits(self, lines: int, size: int) -> Callable[[Mapping[str, float], Committed], bool]:
        """The check :meth:`state.Ledger.begin_upload_within` makes for a shard of ``lines``
        lines and ``size`` bytes, on the ledger's figures at that moment."""

        def check(totals: Mapping[str, float], committed: Committed) -> bool:
            spend = _spend(totals, committed, self.completion_per_line, self.price)
            allowance = Allowance(self.budget, spend, self.completion_per_line, self.price)
            return allowance.refuses(lines, size) is None

        return check
