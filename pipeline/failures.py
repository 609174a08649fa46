"""Whether a run's outcome is a success: failed requests against ``--max-failed``.

A finished run whose requests ended failed — or were left unanswered (retryable: the budget
spent, the fallback off, stopped on a permanent error, or not triggered) — beyond the tolerance is :class:`FinishedWithFailures` (exit 4),
naming the count and the most common reasons, so CI and cron see it::

    tolerance = MaxFailed.parse("2%")
    check_failures(summary, tolerance)   # raises FinishedWithFailures

Reasons are the requests' last errors made short and comparable: the server's error object
(``404 model_not_found: The model `x` does not exist``) without the attempt count.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from state import Ledger, RequestStatus

from .errors import FinishedWithFailures

__all__ = ["MaxFailed", "check_failures", "failure_reasons", "short_reason"]

REASON_CHARS = 120
_GAVE_UP = re.compile(r"\s*\(gave up after \d+ attempts\)$")


@dataclass(frozen=True, slots=True)
class MaxFailed:
    """How many requests may end failed or unsent before a run exits 4: a count or a percent
    of the job's requests.

    >>> MaxFailed.parse("5").allowed(1000), MaxFailed.parse("2.5%").allowed(1000)
    (5, 25)
    """

    count: int | None = 0
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> MaxFailed:
        value = text.strip()
        try:
            if value.endswith("%"):
                percent = float(value[:-1])
                if not 0 <= percent <= 100:
                    raise ValueError(value)
                return cls(count=None, percent=percent)
            count = int(value)
            if count < 0:
                raise ValueError(value)
            return cls(count=count)
        except ValueError:
            raise ValueError(f"{text!r}: expected a count (5) or a percent (2%)") from None

    def allowed(self, total: int) -> int:
        if self.percent is not None:
            return int(total * self.percent / 100)
        return self.count or 0


def short_reason(last_error: str | None) -> str:
    """A failure reason for people and for counting: the status, code and message of the
    server's error object, without our prefixes and attempt counts.

    >>> short_reason('{"message":"The model `x` does not exist","type":"invalid_request_error",'
    ...              '"code":"model_not_found"} (gave up after 3 attempts)')
    'model_not_found: The model `x` does not exist'
    """
    text = _GAVE_UP.sub("", (last_error or "no reason recorded").strip())
    text = text.removeprefix("flex: ")
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        status = value.get("status") if isinstance(value.get("error"), dict) else None
        inner = value["error"] if status is not None else value
        code = inner.get("code") or inner.get("type")
        message = inner.get("message")
        head = " ".join(str(part) for part in (status, code) if part)
        text = f"{head}: {message}" if head and message else str(message or head or text)
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def failure_reasons(ledger: Ledger, job: str, *, top: int = 3) -> list[tuple[str, int]]:
    """The ``top`` most common reasons the job's requests are failed or left retryable
    (unanswered), with their counts."""
    counts: Counter[str] = Counter()
    for error, n in ledger.error_counts(job, (RequestStatus.FAILED, RequestStatus.RETRYABLE)):
        counts[short_reason(error)] += n
    return counts.most_common(top)


def check_failures(summary: Any, tolerance: MaxFailed) -> None:
    """Raise :class:`FinishedWithFailures` when a finished run (a
    :class:`~pipeline.runner.RunSummary`) left more requests failed or unsent than allowed.
    A run that is not finished (``--no-wait``, work still in flight) is not judged yet, nor one
    stopped for today by the day's request limit: what it left is sent once the limit resets
    (its note says when), so it is a pause, not a failure."""
    if not summary.finished or summary.fallback.get("daily_limit"):
        return
    failed = summary.requests.get("failed", 0)
    # Unanswered all the same, whatever left them: retryable at the end, or held back unsent by
    # the budget on the batch path.
    unsent = summary.left_retryable + summary.budget_held
    total = sum(summary.requests.values())
    allowed = tolerance.allowed(total)
    if failed + unsent > allowed:
        raise FinishedWithFailures(failed=failed, unsent=unsent, total=total, allowed=allowed,
                                   reasons=[(reason, n) for reason, n in summary.failures],
                                   unsent_reason=summary.unsent_reason)
