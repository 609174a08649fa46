"""Retry policy as a value (tenacity under the hood), configured once for the client.

Only :class:`~pipeline.errors.RetryableAPIError` is retried: 408, 409, 429, 498, 5xx and
transport failures. A server-given delay (``retry-after-ms`` / ``retry-after``) wins over the
backoff when it is within ``max_retry_after_s``; past that we back off on our own clock,
as the groq SDK does (wire-notes §1), rather than sleeping for minutes inside one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from .errors import RetryableAPIError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one API call is retried.

    >>> RetryPolicy(max_attempts=1).retrying()  # a single try   # doctest: +ELLIPSIS
    <AsyncRetrying ...>
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 60.0
    not_retried: frozenset[int] = field(default_factory=frozenset)
    """Statuses of the retryable class that this call does not retry (a 409 on cancel means
    "already settled", not "try again")."""

    def retries(self, exc: BaseException) -> bool:
        return isinstance(exc, RetryableAPIError) and exc.status_code not in self.not_retried

    def wait_s(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if (
            isinstance(exc, RetryableAPIError)
            and exc.retry_after_s is not None
            and 0 <= exc.retry_after_s <= self.max_retry_after_s
        ):
            return exc.retry_after_s
        backoff = wait_random_exponential(multiplier=self.initial_backoff_s, max=self.max_backoff_s)
        return float(backoff(state))

    def retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self.wait_s,
            retry=retry_if_exception(self.retries),
            reraise=True,
        )


NO_RETRY = RetryPolicy(max_attempts=1)

