"""The ``[policy]`` table of a job: how the job is run, not what it asks.

Everything here is validated when the config loads and used by later stages (submit, poll,
flex, budget). Durations are written the way people say them: ``"36h"``, ``"90m"``,
``"7d"``; sizes as ``"100MB"`` or a plain number of bytes.

    [policy]
    completion_window = "48h"
    max_lines_per_shard = 20000
    deadline = "36h"
    retry_invalid_output = 1              # ask again once when an answer does not fit

    [policy.fallback]
    triggers = ["expired", "missing", "deadline"]
    service_tier = "flex"

    leftovers = "auto"                    # re-batch what expired when a window still fits

    [policy.budget]
    max_dollars = 25.0
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_LINES",
    "BudgetSpec",
    "FallbackSpec",
    "FallbackTrigger",
    "PolicySpec",
    "field_error",
    "parse_duration",
    "parse_size",
]

#: Groq's Files API takes batch files of at most 50,000 lines.
BATCH_MAX_LINES = 50_000
#: The docs say both 100 MB and 200 MB; 200 MB is the hard ceiling we accept,
#: 100 MB (decimal) the default, so a file is never refused for its size.
BATCH_MAX_BYTES = 200_000_000
DEFAULT_SHARD_BYTES = 100_000_000

FallbackTrigger = Literal[
    "expired", "failed", "cancelled", "retryable_errors", "missing", "deadline"
]
ALL_TRIGGERS: tuple[FallbackTrigger, ...] = (
    "expired",
    "failed",
    "cancelled",
    "retryable_errors",
    "missing",
    "deadline",
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def field_error(field: str, message: str) -> PydanticCustomError:
    """A validation error about ``field`` of the model being checked (for cross-field rules).

    The loader appends ``field`` to the error's location, so the message points at the line
    of that key rather than at the table's header.
    """
    return PydanticCustomError("config_field", message, {"config_field": field})


def parse_duration(text: str) -> timedelta:
    """``"36h"`` → 36 hours. Units: s, m, h, d, w. Raises ``ValueError`` otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. '90m', '36h' or '7d'")
    return timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])


def parse_size(value: int | str) -> int:
    """``"100MB"`` → 100_000_000; ``"1MiB"`` → 1_048_576; an int is a number of bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size; write e.g. 100000000, '100MB' or '64MiB'")
    return int(float(match[1]) * _SIZE_UNIT[(match[2] or "b").lower()])


class _Table(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False)


class FallbackSpec(_Table):
    """``[policy.fallback]``: what the batch path leaves undone goes through sync calls."""

    enabled: bool = Field(
        default=True,
        description="Run the synchronous fallback at all. When false, what the batches leave "
        "undone is re-batched while a window fits (see `leftovers`), else stays retryable in "
        "the ledger, and the summary says how many.",
    )
    triggers: tuple[FallbackTrigger, ...] = Field(
        default=ALL_TRIGGERS,
        description="Which leftovers go to the fallback: lines of `expired`, `failed` "
        "(failed validation) and `cancelled` batches, `retryable_errors` (408/409/429/498/5xx "
        "error lines), `missing` lines, and everything still open at the `deadline`. Default: "
        "all six. Requests under a trigger that is off stay retryable.",
    )
    service_tier: Literal["flex", "auto", "on_demand"] = Field(
        default="flex",
        description="The `service_tier` of the synchronous calls. `flex` is priced as "
        "on-demand and may answer 498 when at capacity (retried with backoff).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Fallback calls per request, the first included (1-20); then the "
        "request fails with its last error. Within one run a 429 does not count, and a call "
        "cut off by a crash never does.",
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Fallback calls in flight at once, per worker (1-256). Calls are also "
        "held back while the rate-limit headers say the window is spent.",
    )
    leftovers: Literal["auto", "batch", "flex"] = Field(
        default="auto",
        description=(
            "Where what a batch left undone (expired, cancelled, missing lines, retryable error "
            "lines) goes: `batch` compiles it into a new batch at the batch price whenever the "
            "deadline (or none) leaves room for another completion window; `flex` sends it "
            "through the synchronous fallback at the on-demand price; `auto` re-batches when "
            "there is room and at least `leftovers_flex_below` requests are left (or the "
            "fallback is off), else uses flex."
        ),
    )
    leftovers_flex_below: int = Field(
        default=100,
        ge=0,
        description=(
            "With `leftovers = \"auto\"`: fewer leftovers than this go to flex (a batch window "
            "is not worth waiting for them); this many or more are re-batched."
        ),
    )
    leftovers_max_batches: int = Field(
        default=2,
        ge=1,
        le=10,
        description=(
            "Batches a request may go through in all (the first one included); what its last "
            "batch leaves undone goes to flex (or stays retryable with the fallback off)."
        ),
    )

    @field_validator("triggers", mode="after")
    @classmethod
    def _unique_sorted(cls, value: tuple[FallbackTrigger, ...]) -> tuple[FallbackTrigger, ...]:
        return tuple(t for t in ALL_TRIGGERS if t in value)


class BudgetSpec(_Table):
    """``[policy.budget]``: a job-wide ceiling over both paths. Compile and submit stop before
    a shard that would pass it (by the estimate, corrected by what reconcile records); the
    fallback stops before a call that would. What is not sent stays pending or retryable."""

    max_requests: int | None = Field(
        default=None,
        ge=1,
        description="Requests the job may send in all runs, batch lines plus fallback calls. "
        "Checked on both paths: compile and submit stop before a shard whose estimate would "
        "go over (its requests stay pending), and the fallback does not send the call that "
        "would (the rest stays retryable). Default: no limit.",
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Prompt plus completion tokens the job may use, as the API reported "
        "them, job-wide. Default: no limit.",
    )
    max_dollars: float | None = Field(
        default=None,
        gt=0,
        description="USD the job may spend, priced from `configs/prices.toml` (or the table "
        "`$GROQBATCH_PRICES` names): batch lines at 50% off, fallback calls at the on-demand "
        "price. Refused (exit 2) for a model the table does not price. Default: no limit.",
    )
    expected_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Completion tokens per request that `plan` assumes when estimating "
        "tokens and cost; never sent. Default: `[prompt].max_completion_tokens`, else 256.",
    )


class PolicySpec(_Table):
    """``[policy]``: windows, shard sizes, polling, deadline, fallback and budget."""

    completion_window: str = Field(
        default="24h",
        description="The batch window, `24h` to `7d` (written in hours `\"48h\"` or days "
        "`\"3d\"`), or `\"auto\"`: with a `deadline`, the longest window that ends before the "
        "deadline less the time the fallback needs for the job's open requests (see "
        "`fallback_reserve`); without a deadline, 24h.",
    )
    max_lines_per_shard: int = Field(
        default=BATCH_MAX_LINES,
        ge=1,
        le=BATCH_MAX_LINES,
        description="Lines per batch file (one batch each), at most 50,000 (Groq's limit).",
    )
    max_bytes_per_shard: int = Field(
        default=DEFAULT_SHARD_BYTES,
        ge=1024,
        le=BATCH_MAX_BYTES,
        description='Bytes per batch file: a number, or a size such as `"100MB"` or '
        '`"64MiB"`. Default 100 MB, at most 200 MB. A single request larger than this '
        "rejects its row.",
    )
    poll_interval_min_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds of the first (shortest) wait between polls of the job's "
        "batches; the wait doubles while nothing changes.",
    )
    poll_interval_max_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds of the longest wait between polls; not below "
        "`poll_interval_min_s`.",
    )
    deadline: timedelta | datetime | None = Field(
        default=None,
        description='When to stop waiting for batches: a duration from the job\'s first run '
        '(`"36h"`) or an ISO datetime with a UTC offset. Past it (with the fallback on and its '
        "`deadline` trigger) nothing new is submitted, unsubmitted shards are dropped, in-flight batches are cancelled and reconciled, and "
        "what is still open goes to the fallback (trigger `deadline`). Default: none.",
    )
    mode: Literal["batch", "sync"] = Field(
        default="batch",
        description="`batch`: through the Batch API, the fallback finishing what it leaves. "
        "`sync`: skip batches; every request goes straight to the synchronous fallback path.",
    )
    cache: bool = Field(
        default=True,
        description="Answer requests already answered in the ledger (same `custom_id`) "
        "from it instead of sending them. With `false`, every run salts its ids with its "
        "identity (`--run-name`, else the run id), so each run asks afresh — what an "
        "evaluation wants.",
    )
    retry_invalid_output: int = Field(
        default=0,
        ge=0,
        le=20,
        description="When an answer does not parse or fit the output schema (or Groq "
        "answers 400 `json_validate_failed`): 0 fails the request with "
        "`invalid_output: <reason>`; N sends it again through the fallback while it has made "
        "at most N attempts in all (so at most N retries), within "
        "`[policy.fallback].max_attempts`.",
    )
    fallback_reserve: timedelta | None = Field(
        default=None,
        description="With `completion_window = \"auto\"`: how long the fallback needs to finish "
        "what a batch leaves undone (`\"6h\"`); the window chosen ends at least this long "
        "before the `deadline`. Default: the job's open requests at the flex pace seen in "
        "earlier runs (else at 1 request/s).",
    )
    fallback: FallbackSpec = Field(
        default=FallbackSpec(),
        description="`[policy.fallback]`: what the batch path leaves undone is finished with "
        "synchronous calls on the flex tier.",
    )
    budget: BudgetSpec = Field(
        default=BudgetSpec(),
        description="`[policy.budget]`: job-wide ceilings over both paths, counting every run "
        "and worker; a shard or call that would go over is not sent, and the rest waits for "
        "a larger budget.",
    )

    @field_validator("completion_window", mode="after")
    @classmethod
    def _window(cls, value: str) -> str:
        text = value.strip().lower()
        if text == "auto":
            return text
        if not re.fullmatch(r"\d+[hd]", text):
            raise ValueError(
                f"{value!r} is not a window; write hours or days, e.g. '24h' or '7d', or 'auto'"
            )
        hours = int(text[:-1]) * (24 if text.endswith("d") else 1)
        if not 24 <= hours <= 168:
            raise ValueError(f"{value!r} is outside the supported range 24h to 7d")
        return text

    @field_validator("max_bytes_per_shard", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: Any) -> Any:
        if isinstance(value, str) and _DURATION.match(value):
            return parse_duration(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is neither a duration ('36h') nor an ISO datetime"
                ) from None
        return value

    @field_validator("fallback_reserve", mode="before")
    @classmethod
    def _reserve(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("fallback_reserve", mode="after")
    @classmethod
    def _reserve_positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value.total_seconds() < 0:
            raise ValueError("fallback_reserve must not be negative")
        return value

    @field_validator("deadline", mode="after")
    @classmethod
    def _aware(cls, value: timedelta | datetime | None) -> timedelta | datetime | None:
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("a deadline datetime needs a UTC offset, e.g. 2025-01-31T18:00:00Z")
        if isinstance(value, timedelta) and value.total_seconds() <= 0:
            raise ValueError("a deadline duration must be positive")
        return value

    @model_validator(mode="after")
    def _poll_order(self) -> PolicySpec:
        if self.poll_interval_min_s > self.poll_interval_max_s:
            raise field_error(
                "poll_interval_min_s",
                f"poll_interval_min_s ({self.poll_interval_min_s}) is above "
                f"poll_interval_max_s ({self.poll_interval_max_s})",
            )
        return self

    @property
    def completion_window_s(self) -> int | None:
        """The window in seconds; None for ``"auto"`` (chosen when batches are created)."""
        if self.completion_window == "auto":
            return None
        hours = int(self.completion_window[:-1])
        return hours * (86400 if self.completion_window.endswith("d") else 3600)

    def deadline_at(self, started_at: datetime) -> datetime | None:
        """The absolute deadline for a run that started at ``started_at`` (aware datetime)."""
        if isinstance(self.deadline, timedelta):
            return started_at + self.deadline
        return self.deadline
