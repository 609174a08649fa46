"""The progress display of ``groqbatch run``: what the run is doing, from its own snapshots.

Each :class:`~pipeline.runner.Progress` (after every round, and while the flex fallback
records answers) is shown on stderr — stdout stays clean for ``--json``:

- on a terminal, a live panel of a few lines, each cut to the terminal's width (never
  wrapped)::

      quickstart · batches running · 12.3s
      compiled 5,000 requests · shards: 5 submitted
      batches: 3 in_progress, 1 finalizing, 1 completed
      requests: 1,234/5,000 done (12 failed) · 98/s · eta 38s

- otherwise (logs, cron), one line each time something other than the clock changes::

      [  12.3s] batches running: 3 in_progress, 1 finalizing · 1,234/5,000 done · 98/s · eta 38s

- nothing with ``--quiet`` or ``--json``.

"Done" counts what the ledger has settled plus the lines the running batches report done in
their own ``request_counts`` (polled each round), so a batch's progress shows while it runs.
The rate is measured over the last :data:`RATE_WINDOW_S` seconds and the ETA is the rest at
that rate. A batch that has finished its lines but not yet its files is ``finalizing``, and
the display says so: the run is not done until the files are read.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.text import Text

from .runner import Progress

__all__ = ["RATE_WINDOW_S", "ProgressDisplay", "ProgressView"]

RATE_WINDOW_S = 30.0
"""The rate (and so the ETA) is measured over this many seconds of the run's recent past."""

_RUNNING = ("validating", "in_progress", "submitted")
_UNSENT_STEPS = ("compiled", "uploading", "uploaded", "submitting")
_FLEX_STATES = ("retryable", "in_flight")


def _n(value: float) -> str:
    return f"{int(value):,}"


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _counts(values: dict[str, int], order: tuple[str, ...] = ()) -> str:
    known = [k for k in order if values.get(k)]
    rest = sorted(k for k, n in values.items() if n and k not in order)
    return ", ".join(f"{_n(values[k])} {k}" for k in [*known, *rest])


class ProgressView:
    """Turns a run's snapshots into text, keeping the recent past for the rate and ETA.

    >>> view = ProgressView()
    >>> view.update(progress)          # each snapshot, in order
    >>> view.panel_lines(progress)     # the terminal's panel
    >>> view.line(progress)            # the one line for logs
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, int]] = deque()

    def update(self, progress: Progress) -> None:
        self._seen.append((progress.elapsed_s, progress.done))
        while len(self._seen) > 2 and progress.elapsed_s - self._seen[1][0] >= self.window_s:
            self._seen.popleft()

    def rate(self) -> float | None:
        """Requests done per second over the window, None until two snapshots differ in time."""
        if len(self._seen) < 2:
            return None
        (t0, d0), (t1, d1) = self._seen[0], self._seen[-1]
        if t1 - t0 <= 0:
            return None
        return max(d1 - d0, 0) / (t1 - t0)

    def eta_s(self, progress: Progress) -> float | None:
        left = progress.total - progress.done
        rate = self.rate()
        if left <= 0 or not rate:
            return None
        return left / rate

    @staticmethod
    def phase(progress: Progress) -> str:
        """What the run is busy with, in words."""
        steps, requests, batches = progress.shards, progress.requests, progress.batch_statuses
        if progress.compiling or (progress.total == 0 and not any(steps.values())):
            return "compiling"
        if any(steps.get(step) for step in _UNSENT_STEPS):
            return "submitting"
        if any(batches.get(status) for status in _RUNNING):
            return "batches running"
        if batches.get("finalizing"):
            return "finalizing"
        if steps.get("settled"):
            return "reconciling"
        if requests.get("in_flight") or (requests.get("retryable") and progress.flex_sent):
            return "flex fallback"
        open_requests = sum(requests.get(s, 0) for s in ("pending", "queued", "submitted", "in_flight"))
        return "waiting" if open_requests else "done"

    def _done(self, progress: Progress) -> str:
        failed = progress.requests.get("failed", 0)
        text = f"{_n(progress.done)}/{_n(progress.total)} done"
        if failed:
            text += f" ({_n(failed)} failed)"
        rate, eta = self.rate(), self.eta_s(progress)
        if rate is not None and progress.done < progress.total:
            text += f" · {rate:,.1f}/s" if rate < 10 else f" · {rate:,.0f}/s"
        if eta is not None:
            text += f" · eta {_duration(eta)}"
        return text

    def _detail(self, phase: str, progress: Progress) -> str:
        steps = progress.shards
        shards = sum(steps.values())
        if phase == "compiling":
            return "reading the input" if not progress.compiling else "another worker compiles"
        if phase == "submitting":
            sent = shards - sum(steps.get(step, 0) for step in _UNSENT_STEPS)
            uploaded = sent + steps.get("uploaded", 0) + steps.get("submitting", 0)
            return f"{_n(uploaded)}/{_n(shards)} shards uploaded, {_n(sent)} submitted"
        if phase in ("batches running", "finalizing"):
            return _counts(progress.batch_statuses, ("validating", "in_progress", "finalizing"))
        if phase == "reconciling":
            return f"{_n(steps.get('reconciled', 0))}/{_n(shards)} shards reconciled"
        if phase == "flex fallback":
            return (f"{_n(progress.requests.get('in_flight', 0))} in flight, "
                    f"{progress.flex_pace_rps:,.1f}/s")
        return ""

    def line(self, progress: Progress) -> str:
        """One line for logs: the phase, what it is at, and the requests done."""
        phase = self.phase(progress)
        detail = self._detail(phase, progress)
        head = f"[{progress.elapsed_s:6.1f}s] {phase}" + (f": {detail}" if detail else "")
        return f"{head} · {self._done(progress)}"

    def state(self, progress: Progress) -> tuple[Any, ...]:
        """What a new log line is printed for: anything but the clock, rate and ETA."""
        phase = self.phase(progress)
        detail = (progress.requests.get("in_flight", 0) if phase == "flex fallback"
                  else self._detail(phase, progress))
        return (phase, detail, progress.done, progress.total, progress.requests.get("failed", 0))

    def panel_lines(self, progress: Progress) -> list[str]:
        """The terminal's panel, a line per phase that has something to show."""
        phase = self.phase(progress)
        steps, requests = progress.shards, progress.requests
        lines = [f"{progress.job} · {phase} · {_duration(progress.elapsed_s)}"
                 if progress.elapsed_s >= 90 else
                 f"{progress.job} · {phase} · {progress.elapsed_s:.1f}s"]
        shards = _counts(steps, ("compiled", "uploading", "uploaded", "submitting", "submitted",
                                 "settled", "reconciled", "dropped"))
        lines.append(f"compiled {_n(progress.total)} requests"
                     + (f" · shards: {shards}" if shards else ""))
        if progress.batch_statuses:
            lines.append("batches: " + _counts(progress.batch_statuses,
                                               ("validating", "in_progress", "finalizing")))
        lines.append("requests: " + self._done(progress))
        if progress.flex_sent or requests.get("in_flight"):
            waiting = sum(requests.get(s, 0) for s in _FLEX_STATES)
            lines.append(f"flex: {_n(requests.get('in_flight', 0))} in flight, "
                         f"{_n(waiting)} to go, {_n(progress.flex_sent)} sent · "
                         f"{progress.flex_pace_rps:,.1f}/s")
        return lines


def _fit(line: str) -> Text:
    """A line that is cut with … at the console's width instead of wrapping."""
    return Text(line, no_wrap=True, overflow="ellipsis")


class ProgressDisplay:
    """Shows snapshots on ``console`` (stderr by default): a live panel on a terminal, one
    plain line per change otherwise, nothing when quiet."""

    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False)
        self.view = ProgressView()
        self._live: Any = None
        self._last: tuple[Any, ...] | None = None

    def __call__(self, progress: Progress) -> None:
        if self.quiet:
            return
        self.view.update(progress)
        if self.console.is_terminal:
            from rich.live import Live

            if self._live is None:
                self._live = Live(console=self.console, refresh_per_second=4, transient=False)
                self._live.start()
            self._live.update(self.renderable(progress))
            return
        state = self.view.state(progress)
        if state != self._last:
            self._last = state
            self.console.print(self.view.line(progress), no_wrap=True, overflow="ellipsis",
                               markup=False, highlight=False)

    def renderable(self, progress: Progress) -> Group:
        """The panel as rich renders it: one line per entry, never wrapped."""
        return Group(*(_fit(line) for line in self.view.panel_lines(progress)))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
