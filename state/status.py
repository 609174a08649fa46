"""The states a request and a shard move through, and the moves the ledger allows.

The tables of legal moves live here, as data, so that the guard in :mod:`state.ledger`
and the tests read the same thing. Every move is applied in SQL as
``UPDATE … SET status = :to WHERE status = :from``: replaying a move that already happened
matches nothing and changes nothing, which is what makes resume after ``kill -9`` correct.
"""

from __future__ import annotations

import enum
import itertools

__all__ = [
    "AWAITING_ANSWER",
    "OUTCOMES",
    "REQUEST_MOVES",
    "SHARD_MOVES",
    "RequestStatus",
    "ResultSource",
    "RowStatus",
    "ShardStep",
    "Tier",
    "is_legal_request_move",
    "is_legal_shard_move",
]


class RequestStatus(enum.StrEnum):
    """Where one request (one ``custom_id``) stands."""

    # Compiled into the ledger, not yet written to any shard file (or a batch's leftover, to be
    # written into a new one; or held back by the budget).
    PENDING = "pending"
    # Written into a compiled shard file (``shard_key`` set); the batch is not created yet.
    QUEUED = "queued"
    # Its shard's batch was created remotely; an answer is expected from the batch output.
    SUBMITTED = "submitted"
    # Answered successfully; the result is in ``results``. Final (only ``refresh`` reopens it).
    SUCCEEDED = "succeeded"
    # Answered with a permanent error (a 4xx other than 408/409/429/498). Final (only
    # ``groqbatch retry`` reopens it).
    FAILED = "failed"
    # Needs another try through flex: expired, missing, or a retryable error line/response.
    RETRYABLE = "retryable"
    # A flex call for it is being made right now (attempt counted when entering this state).
    IN_FLIGHT = "in_flight"


class ShardStep(enum.StrEnum):
    """How far one shard file has got on the crash-exact submission path (DESIGN.md)."""

    # The shard file is written and recorded with its sha256; nothing remote exists yet.
    COMPILED = "compiled"
    # Intent to upload recorded; on resume without ``file_id``, adopt the remote file by name.
    UPLOADING = "uploading"
    # The file exists remotely and ``file_id`` is recorded.
    UPLOADED = "uploaded"
    # Intent to create the batch recorded; on resume without ``batch_id``, adopt by metadata.
    SUBMITTING = "submitting"
    # The batch exists and ``batch_id`` is recorded; polling updates ``batch_status``.
    SUBMITTED = "submitted"
    # The batch reached completed, expired, failed or cancelled; output/error ids recorded.
    SETTLED = "settled"
    # Both output and error files were read to the end and written into ``results``. Final.
    RECONCILED = "reconciled"
    # The deadline passed before a batch was created for it; its requests went to the
    # fallback. Final.
    DROPPED = "dropped"


class RowStatus(enum.StrEnum):
    """Whether an input row became a request."""

    # The row rendered into a request; ``custom_id`` is set.
    OK = "ok"
    # The row could not be used (missing column, template error); ``reason`` says why.
    REJECTED = "rejected"


class Tier(enum.StrEnum):
    """The Groq service tier a request was (last) sent through."""

    BATCH = "batch"
    FLEX = "flex"
    ON_DEMAND = "on_demand"
    AUTO = "auto"


class ResultSource(enum.StrEnum):
    """Where a stored result came from."""

    # A line of a batch's output or error file.
    BATCH = "batch"
    # A synchronous chat completion on the flex (or auto/on_demand) tier.
    FLEX = "flex"


_R = RequestStatus

#: Every move :meth:`state.Ledger.transition` accepts. ``succeeded → pending`` is not here:
#: only :meth:`state.Ledger.refresh` may reopen an answered request, and it deletes the result.
#: Nor is ``failed → pending``: only :meth:`state.Ledger.reopen_failed` (``groqbatch retry``) may.
REQUEST_MOVES: frozenset[tuple[RequestStatus, RequestStatus]] = frozenset(
    {
        (_R.PENDING, _R.QUEUED),  # written into a shard
        (_R.QUEUED, _R.PENDING),  # its shard was dropped before submission
        (_R.QUEUED, _R.SUBMITTED),  # the shard's batch was created
        (_R.SUBMITTED, _R.SUCCEEDED),
        (_R.SUBMITTED, _R.FAILED),
        (_R.SUBMITTED, _R.RETRYABLE),  # expired, missing line, retryable error line
        (_R.RETRYABLE, _R.IN_FLIGHT),  # a flex call starts
        (_R.IN_FLIGHT, _R.SUCCEEDED),
        (_R.IN_FLIGHT, _R.FAILED),
        (_R.IN_FLIGHT, _R.RETRYABLE),  # the call failed retryably, or crash recovery
        (_R.PENDING, _R.RETRYABLE),  # mode = "sync": straight to the synchronous path
        (_R.QUEUED, _R.RETRYABLE),  # the deadline passed before its shard was submitted
        (_R.RETRYABLE, _R.FAILED),  # its attempts are spent; the last error is kept
        (_R.RETRYABLE, _R.PENDING),  # a batch's leftovers, to be compiled into a new batch
    }
)

#: The statuses a result line may arrive for; any other status means "already answered".
AWAITING_ANSWER: frozenset[RequestStatus] = frozenset({_R.SUBMITTED, _R.IN_FLIGHT})

#: Outcomes a result may move a request to.
OUTCOMES: frozenset[RequestStatus] = frozenset({_R.SUCCEEDED, _R.FAILED, _R.RETRYABLE})

_S = ShardStep
_SHARD_ORDER = [step for step in ShardStep if step is not ShardStep.DROPPED]

#: Every move :meth:`state.Ledger.set_shard_step` accepts: one step forward, or staying on a
#: step to record fields (polling updates ``batch_status`` while the shard stays submitted).
SHARD_MOVES: frozenset[tuple[ShardStep, ShardStep]] = frozenset(
    {(step, step) for step in _SHARD_ORDER}
    | {(a, b) for a, b in itertools.pairwise(_SHARD_ORDER)}
    # Only before any batch can exist: from submitting on, a batch may be out there.
    | {(_S.COMPILED, _S.DROPPED), (_S.UPLOADING, _S.DROPPED), (_S.UPLOADED, _S.DROPPED)}
)


def is_legal_request_move(from_: RequestStatus, to: RequestStatus) -> bool:
    """Whether ``transition(from_=from_, to=to)`` is allowed."""
    return (from_, to) in REQUEST_MOVES


def is_legal_shard_move(from_: ShardStep, to: ShardStep) -> bool:
    """Whether ``set_shard_step(from_=from_, to=to)`` is allowed."""
    return (from_, to) in SHARD_MOVES
