"""The emulator's virtual clock: ``time_scale`` emulated seconds pass per real second.

A batch's 24 h completion window is measured on this clock, so with ``time_scale=86400`` it
passes in one real second. Tests can also jump the clock forward with :meth:`advance`.
"""

from __future__ import annotations

import threading
import time


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
        self._start_virtual = time.time() if start is None else start
        self._start_real = time.monotonic()
        self._offset_s = 0.0
        self._lock = threading.Lock()

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
        with self._lock:
            self._offset_s += seconds

    def real_seconds_for(self, emulated_s: float) -> float:
        """How long, in real seconds, ``emulated_s`` of emulated time takes to pass."""
        return emulated_s / self.time_scale
