"""The values that go into and come out of the ledger.

Bodies cross this boundary uncompressed (canonical JSON bytes); the ledger compresses them.
"""

from __future__ import annotations

from dataclasses import dataclass

from state.status import OUTCOMES, RequestStatus, ResultSource

__all__ = [
    "AdapterRecord",
    "FeedRow",
    "OpenRequest",
    "QuarantineRecord",
    "RequestRecord",
    "ResultRecord",
    "RowRecord",
    "ShardRecord",
    "StoredResult",
]


@dataclass(frozen=True, slots=True)
class RowRecord:
    """One input row: which request it became, or (``reason`` set) why it was rejected."""

    row_key: str
    row_index: int
    custom_id: str | None
    reason: str | None
    data: bytes | None = None
    """The row as JSON, kept for a multi-step job's next step (None otherwise)."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request to send; ``body`` is its canonical JSON, uncompressed."""

    custom_id: str
    endpoint: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """One compiled batch file; ``key`` is the hash of its content."""

    key: str
    path: str
    sha256: str
    lines: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One answer to a request, from a batch output/error line or a flex call.

    ``outcome`` is what the request becomes: succeeded, failed (permanent) or retryable.
    ``body`` is the response body JSON, uncompressed; ``error`` the error object as JSON text;
    ``parsed`` the parsed structured output as JSON text, when the job asks for one. Tokens and
    cost are what this answer used; they are added to the request's totals.

    ``shard_key`` (batch lines) names the shard whose batch gave the line: only a request
    still in that shard takes it. A request compiled into a newer shard since (``--refresh``
    after a run killed mid-reconcile) awaits that batch's answer, not the old one's.
    """

    custom_id: str
    outcome: RequestStatus
    source: ResultSource
    status_code: int | None = None
    body: bytes | None = None
    error: str | None = None
    parsed: str | None = None
    batch_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    shard_key: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            allowed = ", ".join(sorted(OUTCOMES))
            raise ValueError(
                f"result for {self.custom_id!r}: outcome {self.outcome!r} is not one of {allowed}"
            )


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """A request waiting for an answer, as the synchronous path reads it."""

    custom_id: str
    body: bytes
    attempts: int
    last_error: str | None
    shard_key: str | None
    """Set when the request went through a batch (which spent one attempt)."""


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A result as the ledger holds it; ``body`` is uncompressed again."""

    custom_id: str
    status_code: int | None
    body: bytes | None
    error: str | None
    parsed: str | None
    source: ResultSource
    batch_id: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class FeedRow:
    """A row of a step settled since it was last fed to the next step (:mod:`jobs.steps`):
    its data, and its request's status and stored answer."""

    row_key: str
    row_index: int
    custom_id: str | None
    data: bytes | None
    status: RequestStatus | None
    """None for a rejected row."""
    body: bytes | None
    parsed: str | None


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """A line that could not be matched to a request or parsed, kept whole for a person.

    ``line_no`` counts from 1 within ``source_file_id``; the pair identifies the line, so
    reading the same file again after a crash does not quarantine it twice.
    """

    raw: bytes
    reason: str
    shard_key: str | None = None
    batch_id: str | None = None
    source_file_id: str | None = None
    line_no: int | None = None


@dataclass(frozen=True, slots=True)
class AdapterRecord:
    """A LoRA adapter the ledger knows by ``name``.

    Registered when it has its ``ft:`` ``model_id``; an upload in progress (or cut short)
    when it has only its ``file_id``; gone when ``deleted_at`` is set.
    """

    name: str
    base_model: str
    created_at: float
    fine_tuning_id: str | None = None
    model_id: str | None = None
    file_id: str | None = None
    deleted_at: float | None = None

    @property
    def live(self) -> bool:
        """Registered and not deleted: jobs naming it resolve to ``model_id``."""
        return self.deleted_at is None and self.model_id is not None

    @property
    def pending(self) -> bool:
        """Uploaded (or being uploaded) but not registered: an interrupted ``adapters upload``."""
        return self.deleted_at is None and self.model_id is None
