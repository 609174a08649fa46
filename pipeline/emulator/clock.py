"""The emulator's virtual clock: ``time_scale`` emulated seconds pass per real second.

A batch's 24 h completion window is measured on this clock, so with ``time_scale=86400`` it
passes in one real second. Tests can also jump the clock forward with :meth:`advance`.

With a ``data_dir`` the clock outlives the process: its :class:`ClockAnchor` (emulated start,
the wall-clock time of that start, the scale, the offset added by :meth:`advance`) is saved,
and :meth:`VirtualClock.resume` continues it in the next process as if the server had kept
running meanwhile. Within one process the clock runs on ``time.monotonic()`` (immune to wall
clock steps); only the gap between processes is measured on ``time.time()``, the one clock
that two processes (or two boots) share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClockAnchor:
    """Where a clock stood: emulated ``virtual_start`` at Unix wall time ``wall_start``."""

    virtual_start: float
    wall_start: float
    time_scale: float
    offset_s: float

    def now_at(self, wall: float) -> float:
        """Emulated time at wall time ``wall``; a wall clock that went back counts as no gap."""
        return self.virtual_start + max(wall - self.wall_start, 0.0) * self.time_scale + self.offset_s


class VirtualClock:
    """Monotonic emulated wall clock, in Unix seconds.

    >>> clock = VirtualClock(time_scale=3600, start=1_700_000_000)
    >>> clock.advance(60)
    >>> clock.now() >= 1_700_000_060
    True
    """

    def __init__(self, time_scale: float = 1.0, start: float | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self._start_wall = time.time()
        self._start_virtual = self._start_wall if start is None else start
        self._start_real = time.monotonic()
        self._offset_s = 0.0
        self._lock = threading.Lock()
        self._advance_lock = threading.Lock()
        self.on_advance: Callable[[ClockAnchor], None] | None = None
        """Called with the new anchor after every :meth:`advance` (the server saves it)."""

    @classmethod
    def resume(cls, saved: ClockAnchor, time_scale: float, *, not_before: float = 0.0) -> VirtualClock:
        """Continue a clock saved by an earlier process.

        The time the process was away counts at the *saved* scale (the server "kept running"
        as it was), and from now on the clock runs at ``time_scale``, which may differ: a
        restart with a new ``--time-scale`` continues from the saved clock's "now" at the new
        pace. ``not_before`` (the latest time the saved state shows) keeps the clock from
        going back if the wall clock did.

        >>> saved = ClockAnchor(1_000.0, time.time() - 2, time_scale=100, offset_s=50)
        >>> VirtualClock.resume(saved, time_scale=1).now() >= 1_000 + 200 + 50
        True
        """
        return cls(time_scale, start=max(saved.now_at(time.time()), not_before))

    def anchor(self) -> ClockAnchor:
        """What to save so that :meth:`resume` can continue this clock in another process."""
        with self._lock:
            return ClockAnchor(self._start_virtual, self._start_wall, self.time_scale, self._offset_s)

    def now(self) -> float:
        elapsed_real = time.monotonic() - self._start_real
        with self._lock:
            return self._start_virtual + elapsed_real * self.time_scale + self._offset_s

    def now_int(self) -> int:
        """Whole seconds, as the API's ``created_at`` fields carry them."""
        return int(self.now())

    def advance(self, seconds: float) -> None:
        """Jump forward by ``seconds`` of emulated time (never backwards)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        # One advance (and its save) at a time, so saves land in the order the offsets grew.
        with self._advance_lock:
            with self._lock:
                self._offset_s += seconds
            if self.on_advance is not None:
                self.on_advance(self.anchor())

    def real_seconds_for(self, emulated_s: float) -> float:
        """How long, in real seconds, ``emulated_s`` of emulated time takes to pass."""
        return emulated_s / self.time_scale
