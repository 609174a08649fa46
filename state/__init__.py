"""The ledger: where groqbatch records every job, row, request, shard and result.

    from state import Ledger, RequestRecord, RequestStatus

    with Ledger.open("out/enrich.sqlite") as ledger:
        ledger.record_requests([RequestRecord("req-1", "/v1/chat/completions", body)])
        ledger.transition(["req-1"], RequestStatus.PENDING, RequestStatus.QUEUED)

See :mod:`state.ledger` for the operations, :mod:`state.status` for the state machines and
:mod:`state.schema` for the tables.
"""

from __future__ import annotations

from state.claims import DEFAULT_LEASE_S
from state.ledger import CHUNK_SIZE, Ledger
from state.records import (
    OpenRequest,
    QuarantineRecord,
    RequestRecord,
    ResultRecord,
    RowRecord,
    ShardRecord,
    StoredResult,
)
from state.schema import SCHEMA_VERSION
from state.status import (
    REQUEST_MOVES,
    SHARD_MOVES,
    RequestStatus,
    ResultSource,
    RowStatus,
    ShardStep,
    Tier,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_LEASE_S",
    "REQUEST_MOVES",
    "SCHEMA_VERSION",
    "SHARD_MOVES",
    "Ledger",
    "OpenRequest",
    "QuarantineRecord",
    "RequestRecord",
    "RequestStatus",
    "ResultRecord",
    "ResultSource",
    "RowRecord",
    "RowStatus",
    "ShardRecord",
    "ShardStep",
    "StoredResult",
    "Tier",
]
