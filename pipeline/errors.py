"""The one exception tree of groqbatch, split by what the caller does next.

    GroqBatchError
    ├── ConfigError              fix the job config or its input, then run again   (exit 2)
    │   ├── InputError           a row or file of the input dataset is unusable
    │   └── AdapterError         a LoRA adapter folder or zip is not what Groq takes
    ├── LedgerError              the ledger cannot be used as it is                (exit 3)
    │   ├── SchemaVersionError   written by another groqbatch version; not misread
    │   └── NoLedgerError        the job has never run: there is no ledger to read
    ├── APIError                 the Groq API (or the local server) said no
    │   ├── ServerUnavailableError  no answer on an endpoint for ``give_up_after_s``:
    │   │                           stop the run, resume later                    (exit 1)
    │   ├── RetryableAPIError    try the same call again later: 408, 409, 429, 498, 5xx, transport
    │   │   ├── RateLimitedError       429, carries ``retry_after_s``
    │   │   ├── CapacityExceededError  498, flex tier at capacity
    │   │   └── TransportError         connect/read failure, timeout, dropped connection
    │   └── PermanentAPIError    the same call will fail again: other 4xx
    │       └── AuthenticationError    401/403
    ├── BudgetExhaustedError     the job's request/token/dollar budget is spent     (exit 4)
    └── FinishedWithFailures     the run ended with more requests failed or unsent than
                                 ``--max-failed`` allows                           (exit 4)

Every error carries the ids it is about (``path``, ``line``, ``field``, ``custom_id``,
``batch_id``) as attributes, and its message names them, so a person can find the place.
Messages never contain API keys: :func:`redact` is applied to anything that echoes a request.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = [
    "APIError",
    "AdapterError",
    "AuthenticationError",
    "BudgetExhaustedError",
    "CapacityExceededError",
    "ConfigError",
    "FinishedWithFailures",
    "GroqBatchError",
    "InputError",
    "LedgerError",
    "NoLedgerError",
    "PermanentAPIError",
    "RateLimitedError",
    "RetryableAPIError",
    "SchemaVersionError",
    "ServerUnavailableError",
    "TransportError",
    "exit_code_for",
    "os_error_reason",
    "redact",
    "redact_json",
]

_SECRET = re.compile(r"(gsk_|sk-)[A-Za-z0-9_\-]{4,}|(?i:bearer\s+)[^\s\"',]+")


def redact(text: str) -> str:
    """Mask anything that looks like an API key or a bearer token."""
    return _SECRET.sub("***", text)


def redact_json(value: Any) -> Any:
    """:func:`redact` every string (keys too) of a parsed JSON value, keeping its shape.

    An error body is kept whole on the exception and in the ledger; a server or proxy that
    echoes the key (``"Invalid API Key gsk_…"``) must not put it there.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_json(key): redact_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_json(item) for item in value]
    return value


class GroqBatchError(Exception):
    """Base of every error groqbatch raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))
        self.message = redact(message)


class ConfigError(GroqBatchError):
    """A job config (or something it points at) is wrong. Names the file, line and field."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.hint = hint
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "")
        if field:
            where = f"{where}: {field}" if where else field
        text = f"{where}: {message}" if where else message
        if hint:
            text = f"{text} ({hint})"
        super().__init__(text)


class InputError(ConfigError):
    """An input dataset file cannot be read (bad encoding, broken JSONL line, missing column)."""


class AdapterError(ConfigError):
    """A LoRA adapter (folder or zip) Groq would refuse. ``problems`` names each one; ``path``
    the folder or zip they are about."""

    def __init__(self, problems: list[str] | tuple[str, ...], *, path: str | Path | None = None,
                 hint: str | None = None) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        head = "not a valid Groq LoRA adapter" if count == 1 else f"{count} problems"
        super().__init__(f"{head}: " + "; ".join(self.problems), path=path, hint=hint)


class LedgerError(GroqBatchError):
    """The ledger database cannot be opened or used."""

    exit_code = 3


class SchemaVersionError(LedgerError):
    """The ledger was written by a different schema version and cannot be migrated."""


class NoLedgerError(LedgerError):
    """A command that only reads the ledger (``status``, ``export``) found none: the job has
    never run. ``target`` is where the ledger would be."""

    def __init__(self, job: str, target: str, *, what: str = "") -> None:
        self.job = job
        self.target = target
        super().__init__(f"job {job!r} has no ledger yet at {target}: nothing has run"
                         + (f", so {what}" if what else ""))


class APIError(GroqBatchError):
    """The API answered with an error status, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        code: str | None = None,
        custom_id: str | None = None,
        batch_id: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.code = code
        self.custom_id = custom_id
        self.batch_id = batch_id
        prefix = f"HTTP {status_code}: " if status_code is not None else ""
        about = "".join(
            f" [{name}={value}]"
            for name, value in (("custom_id", custom_id), ("batch_id", batch_id))
            if value
        )
        super().__init__(f"{prefix}{message}{about}")


class ServerUnavailableError(APIError):
    """An endpoint has had no answer for longer than the job's ``give_up_after_s``: every call
    to it got no HTTP answer (connect error, timeout, dropped connection, cut-short download)
    or a 5xx page that is not JSON (a proxy's or load balancer's HTML). Trying on is pointless,
    so it is deliberately *not* a :class:`RetryableAPIError`: the stages, which catch that to
    "try again next round", let it through, and the run stops with one message. Nothing
    recorded is lost; the next run resumes.

    ``base_url`` is the API root the client calls, ``endpoint`` the call template
    (``GET /batches/{id}``), ``down_for_s`` how long it has gone unanswered, ``last_answer``
    what the last call got.
    """

    def __init__(self, *, base_url: str, endpoint: str, call: str, last_answer: str,
                 down_for_s: float) -> None:
        self.base_url = base_url
        self.endpoint = endpoint
        self.last_answer = last_answer
        self.down_for_s = down_for_s
        super().__init__(
            f"the server at {base_url} has not answered for {_seconds(down_for_s)} "
            f"({call}: {last_answer}); nothing recorded is lost — run again when it is back"
        )


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


class RetryableAPIError(APIError):
    """Worth trying again later (408, 409, 429, 498, 5xx, transport failures)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kw)


class RateLimitedError(RetryableAPIError):
    """429: a rate limit was hit; ``retry_after_s`` says when to come back, if the server said.

    ``limit`` names the limit Groq's message says was reached (``"RPM"``, ``"RPD"``, ``"TPM"``,
    ``"TPD"``; None when the message does not say) and ``limit_value`` its size; ``rate_limits``
    is what the answer's ``x-ratelimit-*`` headers said (a ``RateLimitState``), if it had them.
    """

    def __init__(self, message: str, *, limit: str | None = None, limit_value: int | None = None,
                 rate_limits: Any = None, **kw: Any) -> None:
        self.limit = limit
        self.limit_value = limit_value
        self.rate_limits = rate_limits
        super().__init__(message, **kw)


class CapacityExceededError(RetryableAPIError):
    """498: the flex tier is at capacity. Neither official SDK retries this; we do."""


class TransportError(RetryableAPIError):
    """The request did not get an HTTP answer: connect error, timeout, dropped connection."""


class PermanentAPIError(APIError):
    """A 4xx other than 408/409/429/498: the same request will fail the same way."""


class AuthenticationError(PermanentAPIError):
    """401/403: the API key is missing, wrong, or not allowed to do this."""


class BudgetExhaustedError(GroqBatchError):
    """The job's budget (requests, tokens or dollars) is spent; the rest stays retryable."""

    exit_code = 4


class FinishedWithFailures(GroqBatchError):
    """A run settled every request it could, but more ended failed (or were left unsent: the
    budget spent, the fallback stopped on a permanent error) than the tolerance allows.

    ``failed`` and ``unsent`` are the job's counts, ``allowed`` the tolerance in requests,
    ``reasons`` the most common failure reasons as ``(reason, count)``, most common first.
    """

    exit_code = 4

    def __init__(self, *, failed: int, unsent: int, total: int, allowed: int,
                 reasons: list[tuple[str, int]], unsent_reason: str | None = None) -> None:
        self.failed, self.unsent, self.total, self.allowed = failed, unsent, total, allowed
        self.reasons = list(reasons)
        self.unsent_reason = unsent_reason
        parts = [f"{failed:,} of {total:,} requests failed"]
        if unsent:
            parts.append(f"{unsent:,} left unsent" + (f" ({unsent_reason})" if unsent_reason else ""))
        why = "; ".join(f"{n:,} x {reason}" for reason, n in self.reasons)
        super().__init__("finished with failures: " + ", ".join(parts)
                         + f" (--max-failed allows {allowed:,})" + (f": {why}" if why else ""))


def os_error_reason(exc: OSError, path: str | Path) -> str:
    """Why ``path`` could not be created or written, for a message: a file standing where a
    folder must be, else the system's reason (``permission denied``).

    >>> os_error_reason(PermissionError(13, "Permission denied"), "/ro/out.jsonl")
    'permission denied'
    """
    for folder in Path(path).parents:  # nearest first: the first one that exists decides
        if folder.exists():
            if not folder.is_dir():
                return f"{folder} is a file, not a folder"
            break
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    if exc.filename is not None and Path(exc.filename) in Path(path).parents:
        reason = f"{reason} ({exc.filename})"  # which folder could not be made
    return reason


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an error: one mapping, used by the CLI."""
    if isinstance(exc, GroqBatchError):
        return exc.exit_code
    return 1
