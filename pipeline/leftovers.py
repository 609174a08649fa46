"""Leftovers by price: what a batch left undone goes into a new batch (50% off) when there is
time for one, else to the flex fallback (the on-demand price).

``[policy.fallback] leftovers`` decides (:func:`route_leftovers`):

- ``flex``: every leftover goes to the fallback, as before re-batching existed;
- ``batch``: leftovers are re-batched whenever the deadline — or the absence of one — leaves
  room for another completion window;
- ``auto`` (default): re-batched when there is room and at least ``leftovers_flex_below`` are
  left (or the fallback is off, so flex is no option); fewer go to flex, which answers in
  seconds instead of a window. Batches settle one by one, so while others of the job are
  still running, fewer than the threshold ``wait`` for them: the count is decided on all the
  leftovers together, not on the first batch's few.

A leftover is a retryable request that its batch left — expired, cancelled, missing from the
output, or answered with a retryable error line — under one of ``[policy.fallback].triggers``,
that has been through fewer than ``leftovers_max_batches`` batches. Those of a batch that
*failed validation* would fail again, and what the deadline left, or a fallback call, never
goes back to a batch.

Re-batching is two ledger steps, each crash-exact: the leftovers move retryable → pending
(:meth:`~state.Ledger.transition`, one transaction, guarded, so a request a fallback call
claimed meanwhile stays with it), then the compile's shard pass writes them into new shards
under the job's compile lock, with the usual deterministic keys ``<job>-<sha16>-g<n>``, and
submit takes those to batches as any other shard. A ``kill -9`` between the two leaves pending
requests, which the next round (or run) shards; nothing is sent twice or lost.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from jobs import JobSpec
from state import Ledger, OpenRequest, RequestStatus

from .faultpoints import crash_point
from .flex import trigger_of
from .workers import Worker

REBATCH_TRIGGERS = frozenset({"expired", "cancelled", "missing", "retryable_errors"})
"""Leftovers a new batch can answer (a batch that failed validation would fail again)."""


def job_deadline_at(spec: JobSpec, ledger: Ledger) -> dt.datetime | None:
    """The job's deadline, whatever the fallback does with it (``None``: no deadline)."""
    if spec.policy.deadline is None:
        return None
    created = ledger.job_created_at(spec.name)
    started = dt.datetime.fromtimestamp(created, tz=dt.UTC) if created else dt.datetime.now(dt.UTC)
    return spec.policy.deadline_at(started)


def window_fits(spec: JobSpec, deadline: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    """Whether a batch created now would have its whole completion window before the deadline."""
    if deadline is None:
        return True
    now = now or dt.datetime.now(dt.UTC)
    # "auto" chooses the longest window that fits when it creates the batch: one fits if the
    # shortest (24h) does.
    window_s = spec.policy.completion_window_s or 24 * 3600
    return now + dt.timedelta(seconds=window_s) <= deadline


def is_leftover(spec: JobSpec, request: OpenRequest) -> bool:
    """A retryable request a new batch may take (see the module docstring)."""
    fallback = spec.policy.fallback
    trigger = trigger_of(request.last_error)
    return (trigger in REBATCH_TRIGGERS and trigger in fallback.triggers
            and request.shard_key is not None
            and request.attempts < fallback.leftovers_max_batches)


def route_leftovers(spec: JobSpec, count: int, *, room: bool,
                    batches_running: Callable[[], int] = lambda: 0) -> str:
    """``batch``, ``flex`` or ``wait``: where ``count`` leftovers go, with (or without) ``room``
    for another window before the deadline, while ``batches_running`` of the job's batches
    have not settled yet (asked only when it matters)."""
    fallback = spec.policy.fallback
    if fallback.leftovers == "flex" or not room or count == 0:
        return "flex"
    if fallback.leftovers == "batch" or not fallback.enabled:
        return "batch"
    if count >= fallback.leftovers_flex_below:
        return "batch"
    return "wait" if batches_running() else "flex"


@dataclass(slots=True)
class LeftoverReport:
    route: str = "flex"
    """Where this round's leftovers went: ``batch``, ``flex``, or ``wait`` (for the job's
    batches still running)."""
    rebatched: int = 0
    """Leftovers moved back to pending, to be compiled into new batches."""
    to_flex: int = 0
    """Leftovers seen and left to the fallback (time short, or too few)."""

    def add(self, other: LeftoverReport) -> None:
        self.rebatched += other.rebatched
        self.to_flex += other.to_flex

    def keep_for_batch(self, spec: JobSpec) -> Callable[[OpenRequest], bool] | None:
        """For the fallback that runs next: with leftovers going to batch this round, those
        another worker's reconcile makes meanwhile are left for the next round to re-batch."""
        if self.route == "flex":
            return None
        return lambda request: is_leftover(spec, request)


def rebatch_leftovers(ledger: Ledger, spec: JobSpec, deadline: dt.datetime | None,
                      worker: Worker | None = None, *,
                      batches_running: Callable[[], int] = lambda: 0) -> LeftoverReport:
    """Move the job's leftovers back to pending when :func:`route_leftovers` says ``batch``.
    The caller then shards them (the compile's shard pass, under its lock)."""
    report = LeftoverReport()
    if spec.policy.mode == "sync" or spec.policy.fallback.leftovers == "flex":
        return report
    leftovers = [r.custom_id for r in ledger.iter_requests(spec.name, RequestStatus.RETRYABLE)
                 if is_leftover(spec, r)]
    report.route = route_leftovers(spec, len(leftovers), room=window_fits(spec, deadline),
                                   batches_running=batches_running)
    if report.route == "flex":
        report.to_flex = len(leftovers)
    if report.route != "batch":
        return report
    # One transaction, guarded: a request another worker's fallback claimed meanwhile is not
    # retryable any more and stays with that call.
    report.rebatched = ledger.transition(leftovers, RequestStatus.RETRYABLE, RequestStatus.PENDING)
    crash_point("after_rebatch")
    return report
