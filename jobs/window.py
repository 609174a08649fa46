"""``completion_window = "auto"``: the longest batch window that still leaves the fallback time
to finish before the job's deadline.

Groq takes windows from ``24h`` to ``7d`` and recommends the longest one a job can afford: a
longer window means fewer expiries when the service is busy. A window that ends after the
deadline is no use, though — past the deadline the run cancels what is open and finishes it
through the fallback, which needs time of its own. So, with a deadline::

    reserve = [policy] fallback_reserve                         # if set, else
            = open requests / flex pace seen in earlier runs    # if any were seen, else
            = open requests / 1 request per second
    window  = the whole hours from now to (deadline - reserve), clamped to 24h … 7d

Without a deadline the window is ``24h``. When even 24h ends too late, 24h it is — the
shortest — and the deadline's cancel-and-fallback finishes what it leaves. With the fallback
off there is nothing to reserve time for: the window only has to end by the deadline.

The runner chooses again each time it creates batches (time passes, requests get answered), so
later shards of a job may get shorter windows; ``groqbatch plan`` prints the choice and why.

>>> from datetime import UTC, datetime, timedelta
>>> from jobs.policy import PolicySpec
>>> now = datetime(2026, 1, 1, tzinfo=UTC)
>>> policy = PolicySpec(completion_window="auto", fallback_reserve="12h")
>>> choose_window(policy, now=now, deadline=now + timedelta(days=3), requests=100).window
'60h'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jobs.policy import PolicySpec

__all__ = ["ASSUMED_FLEX_RPS", "MAX_WINDOW_H", "MIN_WINDOW_H", "WindowChoice", "choose_window",
           "deadline_from", "flex_pace"]

MIN_WINDOW_H = 24
MAX_WINDOW_H = 168
"""Groq's batch windows: durations from 24h to 7d."""
ASSUMED_FLEX_RPS = 1.0
"""The flex pace assumed before any run has measured one (deliberately slow: a reserve that is
too long only costs a shorter window; one too short costs the deadline)."""


@dataclass(frozen=True, slots=True)
class WindowChoice:
    """The window to create batches with, and why (for ``plan`` and the run summary)."""

    window: str
    reason: str


def _hours(delta: timedelta | float) -> str:
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else delta
    return f"{seconds / 3600:.1f}h"


def _window_text(hours: int) -> str:
    return "7d" if hours == MAX_WINDOW_H else f"{hours}h"


def flex_pace(summaries: Iterable[Mapping[str, Any] | None]) -> float | None:
    """Requests per second the fallback sent, over the runs whose summaries are given
    (``RunSummary.as_dict()``): calls sent over the time its stages took. None if none sent."""
    sent = elapsed = 0.0
    for summary in summaries:
        fallback = (summary or {}).get("fallback") or {}
        sent += float(fallback.get("sent") or 0)
        elapsed += float(fallback.get("elapsed_s") or 0)
    return sent / elapsed if sent and elapsed > 0 else None


def deadline_from(policy: PolicySpec, first_run_at: datetime) -> datetime | None:
    """The job's deadline: a duration counts from the job's first run (as the runner counts it)."""
    return policy.deadline_at(first_run_at)


def _reserve(policy: PolicySpec, requests: int, pace_rps: float | None) -> tuple[float, str]:
    """Seconds to keep free before the deadline for the fallback, and how that was decided."""
    if policy.fallback_reserve is not None:
        return policy.fallback_reserve.total_seconds(), "fallback_reserve"
    if not policy.fallback.enabled:
        return 0.0, "the fallback is off"
    if pace_rps:
        return requests / pace_rps, f"{requests:,} requests at the flex pace seen so far, {pace_rps:.2f}/s"
    return (requests / ASSUMED_FLEX_RPS,
            f"{requests:,} requests at an assumed {ASSUMED_FLEX_RPS:g}/s (no flex pace seen yet; "
            "set fallback_reserve to say)")


def choose_window(policy: PolicySpec, *, now: datetime, deadline: datetime | None,
                  requests: int, pace_rps: float | None = None) -> WindowChoice:
    """The window for batches created at ``now`` (see the module docstring).

    ``requests`` is how many the fallback might have to finish (the job's open requests),
    ``pace_rps`` the flex pace seen so far (:func:`flex_pace`), ``deadline`` the job's (or None).
    """
    if policy.completion_window != "auto":
        return WindowChoice(policy.completion_window, "completion_window in [policy]")
    if deadline is None:
        return WindowChoice(f"{MIN_WINDOW_H}h", "auto without a deadline: 24h")
    reserve_s, how = _reserve(policy, requests, pace_rps)
    room_s = (deadline - now).total_seconds() - reserve_s
    hours = max(0, math.floor(room_s / 3600))
    told = (f"the deadline is in {_hours(deadline - now)}, less {_hours(reserve_s)} kept for the "
            f"fallback ({how})")
    if hours >= MAX_WINDOW_H:
        return WindowChoice("7d", f"auto: {told}: the longest window, 7d, ends in time")
    if hours >= MIN_WINDOW_H:
        return WindowChoice(_window_text(hours), f"auto: {told}: {hours}h is the longest window "
                                                 "that ends in time")
    return WindowChoice(f"{MIN_WINDOW_H}h",
                        f"auto: {told}: no window ends in time, so 24h, the shortest; at the "
                        "deadline what is open is cancelled and finished by the fallback")
