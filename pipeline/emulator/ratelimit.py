"""Rate limits per model and service tier, as Groq applies and reports them.

Each (model, tier) has token buckets on the virtual clock: requests per minute, requests per
day and tokens per minute, each refilling continuously (``limit`` per window). That is what
Groq's headers describe: ``x-ratelimit-reset-requests: 172.799999ms`` on a 500,000-a-day
limit after one request is the time one request takes to refill (86400 s / 500,000).

Limits come from ``EmulatorConfig.rate_limits``, keyed ``"<model>@<tier>"`` or ``"<model>"``;
an ``ft:`` model falls back to its base model's entry. A model with no entry is unlimited and
still sends the headers, with large limits. ``auto`` is served (and limited) as ``on_demand``.
The ``*-requests`` headers report the RPD bucket (as Groq's do) when one is configured, else
the RPM one; the ``*-tokens`` headers report TPM.

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


@dataclass
class _Limits:
    """The buckets of one (model, tier)."""

    requests: list[tuple[str, Bucket]]
    """``("RPM" | "RPD", bucket)``; the last one is the one the headers report."""
    tokens: Bucket
    tokens_limited: bool


class RateLimiter:
    """Admits or refuses chat requests; thread-safe (batch workers and the event loop share it)."""

    def __init__(self, rate_limits: dict[str, RateLimit], clock: VirtualClock,
                 *, organization: str = DEFAULT_ORG) -> None:
        self.rate_limits = rate_limits
        self.clock = clock
        self.organization = organization
        self._state: dict[tuple[str, str], _Limits] = {}
        self._lock = threading.Lock()

    def limit_for(self, model: str, tier: str, base_model: str | None = None) -> RateLimit | None:
        for name in (model, base_model):
            if name is None:
                continue
            for key in (f"{name}@{tier}", name):
                if key in self.rate_limits:
                    return self.rate_limits[key]
        return None

    def _limits(self, model: str, tier: str, base_model: str | None, now: float) -> _Limits:
        state = self._state.get((model, tier))
        if state is None:
            limit = self.limit_for(model, tier, base_model) or RateLimit()
            requests = [
                (name, Bucket(value, window, value, now))
                for name, value, window in (
                    ("RPM", limit.requests_per_minute, MINUTE_S),
                    ("RPD", limit.requests_per_day, DAY_S),
                )
                if value is not None
            ]
            if not requests:
                requests = [("RPD", Bucket(UNLIMITED_REQUESTS, DAY_S, UNLIMITED_REQUESTS, now))]
            tpm = limit.tokens_per_minute
            tokens = Bucket(tpm or UNLIMITED_TOKENS, MINUTE_S, tpm or UNLIMITED_TOKENS, now)
            state = self._state[(model, tier)] = _Limits(requests, tokens, tpm is not None)
        return state

    def admit(self, model: str, tier: str, *, tokens: int, base_model: str | None = None) -> dict[str, str]:
        """Count one request of ``tokens`` tokens; its ``x-ratelimit-*`` headers.

        Raises :class:`APIProblem` 413 when the request alone exceeds the TPM limit, and 429
        (with ``retry-after`` and the headers) when a limit is reached.
        """
        tier = "on_demand" if tier == "auto" else tier
        with self._lock:
            now = self.clock.now()
            limits = self._limits(model, tier, base_model, now)
            for _, bucket in limits.requests:
                bucket.refill(now)
            limits.tokens.refill(now)
            where = f"for model `{model}` in organization `{self.organization}` service tier `{tier}`"
            if limits.tokens_limited and tokens > limits.tokens.capacity:
                raise APIProblem(
                    413,
                    f"Request too large {where} on tokens per minute (TPM): "
                    f"Limit {int(limits.tokens.capacity)}, Requested {tokens}, please reduce your "
                    f"message size and try again. {UPGRADE_HINT}",
                    type="tokens",
                    code="rate_limit_exceeded",
                    headers=self._headers(limits),
                )
            waits = [(b.wait_for(1), "requests", name, b, 1) for name, b in limits.requests]
            waits.append((limits.tokens.wait_for(tokens), "tokens", "TPM", limits.tokens, tokens))
            wait, kind, name, bucket, requested = max(waits, key=lambda w: w[0])
            if wait > 0:
                unit = {"RPM": "requests per minute", "RPD": "requests per day",
                        "TPM": "tokens per minute"}[name]
                used = math.ceil(bucket.capacity - bucket.level)
                hint = f" {UPGRADE_HINT}" if kind == "tokens" else ""
                raise APIProblem(
                    429,
                    f"Rate limit reached {where} on {unit} ({name}): Limit {int(bucket.capacity)}, "
                    f"Used {used}, Requested {requested}. Please try again in {go_duration(wait)}.{hint}",
                    type=kind,
                    code="rate_limit_exceeded",
                    headers={"retry-after": str(max(1, math.ceil(wait))), **self._headers(limits)},
                )
            for _, bucket in limits.requests:
                bucket.level -= 1
            limits.tokens.level -= tokens
            return self._headers(limits)

    @staticmethod
    def _headers(limits: _Limits) -> dict[str, str]:
        requests = limits.requests[-1][1]
        tokens = limits.tokens
        return {
            "x-ratelimit-limit-requests": str(int(requests.capacity)),
            "x-ratelimit-limit-tokens": str(int(tokens.capacity)),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(requests.level))),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(tokens.level))),
            "x-ratelimit-reset-requests": go_duration(requests.reset_s()),
            "x-ratelimit-reset-tokens": go_duration(tokens.reset_s()),
        }
