"""Rate limits per model and service tier, as Groq applies and reports them.

Each (model, tier) has up to four token buckets on the virtual clock — requests per minute
(RPM), requests per day (RPD), tokens per minute (TPM), tokens per day (TPD) — each refilling
continuously (``limit`` per window) and each enforced on its own: a call is refused with 429
when any of them is short, naming that one (``… on requests per minute (RPM): Limit 30, Used
30, Requested 1. Please try again in 2s.``) with ``retry-after`` in whole seconds.

The headers follow the table on Groq's Rate Limits page, always, on every answer (429 too):
``x-ratelimit-{limit,remaining,reset}-requests`` describe the **requests per day**,
``x-ratelimit-{limit,remaining,reset}-tokens`` the **tokens per minute**; the per-minute
request limit and the daily token limit show only as a 429. ``reset`` is the time until the
bucket is full again, so ``x-ratelimit-reset-requests: 172.799999ms`` on a 500,000-a-day
limit after one request is the time one request takes to refill (86400 s / 500,000). A limit
not set reports a large one (1,000,000,000) that never runs out.

Limits come from ``EmulatorConfig.rate_limits``, keyed ``"<model>@<tier>"`` or ``"<model>"``;
an ``ft:`` model falls back to its base model's entry; a model with no entry follows
``rate_limit_plan`` (:data:`FREE_PLAN`, Groq's published table, or unlimited). ``auto`` is
served (and limited) as ``on_demand``.

    limiter = RateLimiter({"llama-3.1-8b-instant": RateLimit(requests_per_minute=30)}, clock)
    headers = limiter.admit("llama-3.1-8b-instant", "on_demand", tokens=120)  # or APIProblem 429/413
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from .clock import VirtualClock
from .config import DEFAULT_ORG, RateLimit
from .errors import APIProblem

MINUTE_S = 60.0
DAY_S = 86_400.0
UNLIMITED_REQUESTS = 1_000_000_000
UNLIMITED_TOKENS = 1_000_000_000
FLEX_FACTOR = 10
"""Groq: the flex tier has "10x higher rate limits" (paid plans; the free plan's table times 10)."""


def _plan(rpm: int, rpd: int, tpm: int, tpd: int) -> RateLimit:
    return RateLimit(requests_per_minute=rpm, requests_per_day=rpd, tokens_per_minute=tpm,
                     tokens_per_day=tpd)


FREE_PLAN: dict[str, RateLimit] = {
    "llama-3.1-8b-instant": _plan(30, 14_400, 6_000, 500_000),
    "llama-3.3-70b-versatile": _plan(30, 1_000, 12_000, 100_000),
    "openai/gpt-oss-20b": _plan(30, 1_000, 8_000, 200_000),
    "openai/gpt-oss-120b": _plan(30, 1_000, 8_000, 200_000),
    "meta-llama/llama-4-scout-17b-16e-instruct": _plan(30, 1_000, 30_000, 500_000),
    "meta-llama/llama-4-maverick-17b-128e-instruct": _plan(30, 1_000, 6_000, 500_000),
    "meta-llama/llama-guard-4-12b": _plan(30, 14_400, 15_000, 500_000),
    "qwen/qwen3-32b": _plan(60, 1_000, 6_000, 500_000),
    "moonshotai/kimi-k2-instruct-0905": _plan(60, 1_000, 10_000, 300_000),
}
"""Groq's Rate Limits page (free plan) for the models this server serves: RPM, RPD, TPM, TPD."""
UPGRADE_HINT = "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"


def go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration.String()``, as Groq's reset headers carry it.

    >>> [go_duration(s) for s in (179.56, 7.66, 0.172799999, 360, 0)]
    ['2m59.56s', '7.66s', '172.799999ms', '6m0s', '0s']
    """
    nanos = round(max(0.0, seconds) * 1e9)  # to the nanosecond, Go's resolution
    if nanos == 0:
        return "0s"
    if nanos < 1_000:
        return f"{nanos}ns"
    if nanos < 1_000_000:
        return _fraction(nanos, 1_000) + "µs"
    if nanos < 1_000_000_000:
        return _fraction(nanos, 1_000_000) + "ms"
    hours, rest = divmod(nanos, 3_600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    text = _fraction(rest, 1_000_000_000) + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def _fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


@dataclass
class Bucket:
    """``capacity`` units, refilled evenly over ``window_s`` seconds."""

    capacity: float
    window_s: float
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.capacity / self.window_s

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` units are available (0 when they are now)."""
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) / self.rate


_UNITS = {"RPM": "requests per minute", "RPD": "requests per day",
          "TPM": "tokens per minute", "TPD": "tokens per day"}


@dataclass
class _Limits:
    """The buckets of one (model, tier): the ones set, by name (``RPM``, ``RPD``, ``TPM``,
    ``TPD``), and the two the headers report (a never-emptied one when that limit is not set)."""

    buckets: dict[str, Bucket]
    daily_requests: Bucket
    minute_tokens: Bucket


class RateLimiter:
    """Admits or refuses chat requests; thread-safe (batch workers and the event loop share it)."""

    def __init__(self, rate_limits: dict[str, RateLimit], clock: VirtualClock,
                 *, organization: str = DEFAULT_ORG, plan: dict[str, RateLimit] | None = None) -> None:
        self.rate_limits = rate_limits
        self.plan = plan or {}
        """Limits of a model with no entry in ``rate_limits`` (flex: ``FLEX_FACTOR`` times)."""
        self.clock = clock
        self.organization = organization
        self._state: dict[tuple[str, str], _Limits] = {}
        self._lock = threading.Lock()

    def limit_for(self, model: str, tier: str, base_model: str | None = None) -> RateLimit | None:
        names = [name for name in (model, base_model) if name is not None]
        for name in names:
            for key in (f"{name}@{tier}", name):
                if key in self.rate_limits:
                    return self.rate_limits[key]
        for name in names:
            if name in self.plan:
                return self.plan[name].scaled(FLEX_FACTOR) if tier == "flex" else self.plan[name]
        return None

    def _limits(self, model: str, tier: str, base_model: str | None, now: float) -> _Limits:
        state = self._state.get((model, tier))
        if state is None:
            limit = self.limit_for(model, tier, base_model) or RateLimit()
            buckets = {
                name: Bucket(value, window, value, now)
                for name, value, window in (
                    ("RPM", limit.requests_per_minute, MINUTE_S),
                    ("RPD", limit.requests_per_day, DAY_S),
                    ("TPM", limit.tokens_per_minute, MINUTE_S),
                    ("TPD", limit.tokens_per_day, DAY_S),
                )
                if value is not None
            }
            daily = buckets.get("RPD") or Bucket(UNLIMITED_REQUESTS, DAY_S, UNLIMITED_REQUESTS, now)
            minute = buckets.get("TPM") or Bucket(UNLIMITED_TOKENS, MINUTE_S, UNLIMITED_TOKENS, now)
            state = self._state[(model, tier)] = _Limits(buckets, daily, minute)
        return state

    def admit(self, model: str, tier: str, *, tokens: int, base_model: str | None = None) -> dict[str, str]:
        """Count one request of ``tokens`` tokens; its ``x-ratelimit-*`` headers.

        Raises :class:`APIProblem` 413 when the request alone exceeds the TPM (or TPD) limit,
        and 429 (with ``retry-after`` and the headers) when a limit is reached.
        """
        tier = "on_demand" if tier == "auto" else tier
        with self._lock:
            now = self.clock.now()
            limits = self._limits(model, tier, base_model, now)
            for bucket in (*limits.buckets.values(), limits.daily_requests, limits.minute_tokens):
                bucket.refill(now)
            where = f"for model `{model}` in organization `{self.organization}` service tier `{tier}`"
            for name in ("TPM", "TPD"):
                window = limits.buckets.get(name)
                if window is not None and tokens > window.capacity:
                    raise APIProblem(
                        413,
                        f"Request too large {where} on {_UNITS[name]} ({name}): "
                        f"Limit {int(window.capacity)}, Requested {tokens}, please reduce your "
                        f"message size and try again. {UPGRADE_HINT}",
                        type="tokens",
                        code="rate_limit_exceeded",
                        headers=self._headers(limits),
                    )
            asked = {name: (1 if name.startswith("R") else tokens) for name in limits.buckets}
            waits = [(bucket.wait_for(asked[name]), name) for name, bucket in limits.buckets.items()]
            wait, name = max(waits, default=(0.0, ""))
            if wait > 0:
                bucket = limits.buckets[name]
                kind = "requests" if name.startswith("R") else "tokens"
                used = math.ceil(bucket.capacity - bucket.level)
                hint = f" {UPGRADE_HINT}" if kind == "tokens" else ""
                raise APIProblem(
                    429,
                    f"Rate limit reached {where} on {_UNITS[name]} ({name}): Limit {int(bucket.capacity)}, "
                    f"Used {used}, Requested {asked[name]}. Please try again in {go_duration(wait)}.{hint}",
                    type=kind,
                    code="rate_limit_exceeded",
                    headers={"retry-after": str(max(1, math.ceil(wait))), **self._headers(limits)},
                )
            for name, bucket in limits.buckets.items():
                bucket.level -= asked[name]
            if "RPD" not in limits.buckets:
                limits.daily_requests.level -= 1
            if "TPM" not in limits.buckets:
                limits.minute_tokens.level -= tokens
            return self._headers(limits)

    def headers(self, model: str, tier: str, *, base_model: str | None = None) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers as they stand, counting nothing — for answers refused
        before the limits are asked (storms, flex capacity): Groq sends them on every answer."""
        tier = "on_demand" if tier == "auto" else tier
        with self._lock:
            now = self.clock.now()
            limits = self._limits(model, tier, base_model, now)
            for bucket in (*limits.buckets.values(), limits.daily_requests, limits.minute_tokens):
                bucket.refill(now)
            return self._headers(limits)

    @staticmethod
    def _headers(limits: _Limits) -> dict[str, str]:
        """As Groq's table: the requests headers are the day's, the tokens headers the minute's."""
        requests, tokens = limits.daily_requests, limits.minute_tokens
        return {
            "x-ratelimit-limit-requests": str(int(requests.capacity)),
            "x-ratelimit-limit-tokens": str(int(tokens.capacity)),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(requests.level))),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(tokens.level))),
            "x-ratelimit-reset-requests": go_duration(requests.reset_s()),
            "x-ratelimit-reset-tokens": go_duration(tokens.reset_s()),
        }
