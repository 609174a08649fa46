"""Pace synchronous calls to the rate limits Groq sets, as its answers reveal them.

Groq limits each model four ways — requests per minute (RPM), requests per day (RPD), tokens
per minute (TPM), tokens per day (TPD) — and whichever is reached first answers 429. Its
answers say only part of that (the Rate Limits page's header table):

- ``x-ratelimit-*-requests`` is the **day's** request budget: it tells when to stop for today,
  not how fast to go;
- ``x-ratelimit-*-tokens`` is the **minute's** token window: calls are spaced so the tokens
  they use stay under it;
- the per-minute request limit is in no header: it is found from the 429s, as below;
- a 429's ``retry-after`` pauses every call of the stage, not only the one refused.

**Finding the requests-per-minute limit.** Additive increase, multiplicative decrease (AIMD),
as TCP finds a path's capacity, with one shortcut: Groq's 429 message states the limit it hit
(``… on requests per minute (RPM): Limit 30, Used 30, …``). When it does, calls are paced at
``HEADROOM`` of that rate at once, and the pacer keeps its own reckoning of the server's
per-minute bucket, so what refilled during a pause is used after it. When the message does not
say (another server, a proxy), the rate is what was answered over the last seconds times
``DECREASE``, calls evenly spaced (with too few answers to tell, the stage goes back to one
call at a time and slow-starts again). After that, every answered call raises the rate by
``INCREASE_SHARE`` of the rate set at the last cut, per second (never past a stated limit),
and each new overflow cuts it by ``DECREASE``; 429s of calls already on the wire when the
first came back are the same overflow and change nothing more. Until the first answer arrives
only one call is out, then one more per answer (TCP's slow start): a stage that starts on an
empty bucket draws one 429, not one per worker.

**Stop for today.** When the day's remaining requests fall to ``daily_reserve`` or below, or
a 429 names the daily request or token limit, the pacer records a :class:`DailyStop` — which
limit and when it is full again — and the caller stops sending: what is left stays retryable
for the next run.

    pacer = Pacer(tokens_per_call=200, low_water=8, daily_reserve=8)
    async with pacer.turn() as sent_at:
        try:
            reply = await client.chat(body)
        except RateLimitedError as exc:
            pacer.refused(exc, sent_at=sent_at, backoff_s=exc.retry_after_s or 1.0)
        else:
            pacer.observe(reply.rate_limits, tokens_used=reply_total_tokens)
    if pacer.stopped is not None: ...
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from .client import RateLimitState
from .errors import RateLimitedError

HEADROOM = 0.98
"""Share of a stated requests-per-minute limit the pacer aims at (timing jitter never pushes
it over)."""
DECREASE = 0.85
"""What a 429 leaves of the request rate (multiplicative decrease)."""
INCREASE_SHARE = 0.02
"""Per second of answered calls, the rate grows by this share of the rate set at the last cut
(additive increase: from ``DECREASE`` back to the full rate in about 8 s)."""
MIN_RATE = 0.1
"""Requests per second never paced below (a 429 storm from another cause cannot stall a stage)."""
MEASURE_S = 10.0
"""Seconds of answers over which the achieved rate is measured."""
SLOW_START_CAP = 1024
LOOK_AGAIN_S = 0.25
"""Longest a waiting call sleeps before it looks again whether the stage stopped for today."""


@dataclass(frozen=True, slots=True)
class DailyStop:
    """A daily limit is (nearly) spent: ``limit`` names it, ``resets_at`` is when it is full
    again (UTC), ``left`` what the last answer said was left (None when a 429 said it)."""

    limit: str
    """``"requests per day (RPD) 14400"`` style, for people."""
    resets_at: datetime
    left: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "left": self.left,
                "resets_at": self.resets_at.isoformat(timespec="seconds")}


def daily_limit_note(daily: Mapping[str, Any], left_retryable: int) -> str:
    """The run summary's note for a stage stopped for today (``DailyStop.as_dict()``)."""
    left = f" ({daily['left']} left)" if daily.get("left") is not None else ""
    return (f"stopped for today: the daily rate limit ({daily['limit']}) is spent{left}; "
            f"{left_retryable} requests stay retryable — the limit is full again at "
            f"{daily['resets_at']}: run again then")


class Pacer:
    """Holds calls back as the server's rate-limit headers and 429s say (see the module).

    >>> pacer = Pacer(tokens_per_call=100, low_water=8)
    >>> pacer.observe(RateLimitState(14400, 14000, 60.0, 6000, 500, 55.0), tokens_used=100)
    >>> round(pacer.interval_s, 3)   # 500 tokens left of a 6,000/min window: 100 a second
    1.0
    """

    def __init__(self, *, tokens_per_call: int, low_water: int = 8, daily_reserve: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens_per_call = float(max(tokens_per_call, 1))
        """Tokens a call uses: the estimate at first, then an average of what answers used."""
        self.low_water = max(low_water, 1)
        self.daily_reserve = max(daily_reserve, 0)
        self.clock = clock
        self.request_rate: float | None = None
        """Requests per second calls are spaced at; None until a 429 says to pace."""
        self.request_ceiling: float | None = None
        """``HEADROOM`` of the per-minute request limit a 429 stated, per second."""
        self.request_burst = 1.0
        """Calls that may go at once after a quiet spell: the stated per-minute limit (the
        server's bucket holds that many), else 1 (calls evenly spaced)."""
        self.token_interval_s = 0.0
        """Spacing the minute's token window asks for; 0 while plenty is left."""
        self.stopped: DailyStop | None = None
        self._tokens_seen = False
        self._not_before = 0.0
        self._next_token_turn = 0.0
        self._level = 0.0
        """Calls the server's per-minute bucket holds by our reckoning, as of ``_level_at``."""
        self._level_at = 0.0
        self._refused_at = -math.inf
        self._increased_at = 0.0
        self._increase_per_s = 0.0
        self._answered: deque[float] = deque()
        self._window = 1
        self._in_flight = 0
        self._slot_freed = anyio.Event()

    @property
    def interval_s(self) -> float:
        """Spacing between calls now; 0 when calls may go at once."""
        by_requests = 1.0 / self.request_rate if self.request_rate else 0.0
        return max(by_requests, self.token_interval_s)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[float]:
        """Wait until a call may go — past any pause, its turn by the request rate and the
        token window, a slot of the slow-start window — and hold the slot while the call runs.
        Yields the time it was let go."""
        while True:
            now = self.clock()
            if self.stopped is not None:
                break  # the caller sends nothing more: no need to wait
            if self._in_flight >= self._window:
                await self._slot_freed.wait()
                continue
            start = max(self._not_before, self._request_turn(now),
                        self._next_token_turn if self.token_interval_s else 0.0)
            if start <= now:
                break
            # A pause may grow, or the day's limit stop the stage, meanwhile: look again.
            await anyio.sleep(min(start - now, LOOK_AGAIN_S))
        if self.request_rate is not None:
            self._refill(now)
            self._level = max(self._level - 1.0, 0.0)
        self._next_token_turn = max(now, self._next_token_turn) + self.token_interval_s
        self._in_flight += 1
        try:
            yield now
        finally:
            self._in_flight -= 1
            self._slot_freed.set()
            self._slot_freed = anyio.Event()

    def _refill(self, now: float) -> None:
        if self.request_rate is not None and now > self._level_at:
            self._level = min(self.request_burst, self._level + (now - self._level_at) * self.request_rate)
        self._level_at = max(self._level_at, now)

    def _request_turn(self, now: float) -> float:
        """When the next call may go by the request rate (the per-minute bucket as we reckon
        it: one call's worth refilled)."""
        if self.request_rate is None:
            return now
        self._refill(now)
        return now if self._level >= 1.0 else now + (1.0 - self._level) / self.request_rate

    def pause(self, seconds: float) -> None:
        """No call goes for ``seconds`` (every caller's, including those already waiting)."""
        self._not_before = max(self._not_before, self.clock() + seconds)

    def observe(self, state: RateLimitState, *, tokens_used: int | None = None) -> None:
        """An answered call: its headers, and the tokens it used."""
        now = self.clock()
        self._window = min(self._window + 1, SLOW_START_CAP)
        self._answered.append(now)
        while self._answered and self._answered[0] < now - MEASURE_S:
            self._answered.popleft()
        if tokens_used:
            self.tokens_per_call = (0.8 * self.tokens_per_call + 0.2 * tokens_used
                                    if self._tokens_seen else float(tokens_used))
            self._tokens_seen = True
        if self.request_rate is not None:
            self._refill(now)
            grown = self.request_rate + self._increase_per_s * max(0.0, now - self._increased_at)
            self.request_rate = min(grown, self.request_ceiling) if self.request_ceiling else grown
        self._increased_at = now
        self._watch_tokens(state)
        self._watch_day(state)

    def refused(self, error: RateLimitedError, *, sent_at: float, backoff_s: float) -> None:
        """A 429 for a call let go at ``sent_at``: pause everyone ``backoff_s``, and learn from
        it. A call that went before the last 429 came back is the same overflow: it changes
        nothing more (its ``retry-after`` was counted from about the same moment)."""
        if sent_at < self._refused_at:
            return
        self._refused_at = self.clock()
        self.pause(backoff_s)
        state = error.rate_limits if isinstance(error.rate_limits, RateLimitState) else None
        if state is not None:
            self._watch_tokens(state)
            self._watch_day(state)
        if error.limit in ("RPD", "TPD", "ASD"):
            unit = {"RPD": "requests per day", "TPD": "tokens per day", "ASD": "audio seconds per day"}
            reset_s = (state.reset_requests_s if error.limit == "RPD" and state is not None
                       and state.reset_requests_s else None) or error.retry_after_s or backoff_s
            self._stop(f"{unit[error.limit]} ({error.limit})", error.limit_value, reset_s, None)
        elif error.limit not in ("TPM", "ASH"):  # RPM, or a 429 that does not say: the request rate
            self._slow_down(error.limit_value if error.limit == "RPM" else None)

    def _slow_down(self, stated_rpm: int | None) -> None:
        now = self.clock()
        if stated_rpm:
            self.request_ceiling = stated_rpm / 60.0 * HEADROOM
            self.request_burst = max(stated_rpm * HEADROOM, 1.0)
        if self.request_rate is None and self.request_ceiling is not None:
            rate = self.request_ceiling  # found: go at the stated limit straight away
        elif self.request_rate is None:
            measured = self._measured_rate(now)
            if measured is None:  # nothing to go by: one call at a time again, then more
                self._window = 1
                return
            rate = measured * DECREASE
        else:
            rate = self.request_rate * DECREASE
        if self.request_ceiling is not None:
            rate = min(rate, self.request_ceiling)
        self.request_rate = max(rate, MIN_RATE)
        self._increase_per_s = self.request_rate * INCREASE_SHARE
        self._level, self._level_at = 0.0, now  # the server's bucket is empty: it said so
        self._refused_at = self._increased_at = now

    def _measured_rate(self, now: float) -> float | None:
        """Calls answered per second over the last ``MEASURE_S``; None with too few to tell."""
        recent = [t for t in self._answered if t >= now - MEASURE_S]
        if len(recent) < 4:
            return None
        return len(recent) / max(now - recent[0], 1.0)

    def _watch_tokens(self, state: RateLimitState) -> None:
        """Space calls so the minute's tokens last: once few calls' worth are left, one call
        every ``tokens_per_call / (limit / 60)`` seconds; short of one call's worth, a pause."""
        limit, left = state.limit_tokens, state.remaining_tokens
        if not limit or left is None or left > self.tokens_per_call * self.low_water:
            self.token_interval_s = 0.0
            return
        per_s = limit / 60.0
        self.token_interval_s = self.tokens_per_call / per_s
        if left < self.tokens_per_call:
            self.pause((self.tokens_per_call - left) / per_s)

    def _watch_day(self, state: RateLimitState) -> None:
        left = state.remaining_requests
        if left is None or left > self.daily_reserve:
            return
        limit = state.limit_requests
        self._stop("requests per day (RPD)", limit, state.reset_requests_s or 86_400.0, left)

    def _stop(self, what: str, value: int | None, reset_s: float, left: int | None) -> None:
        if self.stopped is None:
            limit = f"{what} {value}" if value is not None else what
            self.stopped = DailyStop(limit, datetime.now(UTC) + timedelta(seconds=reset_s), left)
