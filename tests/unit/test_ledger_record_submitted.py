"""``Ledger.record_submitted``: a shard's batch and its requests recorded in one transaction.

Found by the crash test: recorded as two transactions, a ``kill -9`` between them left the
shard ``submitted`` with its requests still ``queued``, so reconcile discarded their answers
(nothing was awaiting them) and the job finished with them stranded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from pipeline.errors import LedgerError
from state import Ledger, RequestRecord, RequestStatus, RowRecord, ShardRecord, ShardStep
from tests.ledgers import sqlite_file


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        opened.record_job("enrich", "h", "{}")
        ids = ["a", "b", "c"]
        opened.record_requests(RequestRecord(i, "/v1/chat/completions", b"{}") for i in ids)
        opened.record_rows("enrich", (RowRecord(f"row-{i}", n, i, None) for n, i in enumerate(ids)))
        opened.record_shard("enrich", ShardRecord("s1", "p", "h", 2, 9), ["a", "b"])
        opened.record_shard("enrich", ShardRecord("s2", "p", "h", 1, 9), ["c"])
        for step in (ShardStep.UPLOADING, ShardStep.UPLOADED, ShardStep.SUBMITTING):
            opened.set_shard_step("s1", ShardStep(_before(step)), step)
        yield opened


def _before(step: ShardStep) -> str:
    order = list(ShardStep)
    return order[order.index(step) - 1].value


def test_moves_the_shard_and_only_its_queued_requests(ledger: Ledger) -> None:
    moved = ledger.record_submitted("s1", batch_id="batch_1", batch_status="validating",
                                    request_counts_json={"total": 2, "completed": 0, "failed": 0})
    assert moved == 2
    (s1, s2) = ledger.shards("enrich")
    assert (s1["step"], s1["batch_id"], s1["batch_status"]) == ("submitted", "batch_1", "validating")
    assert s2["step"] == "compiled"
    assert ledger.statuses(["a", "b", "c"]) == {
        "a": RequestStatus.SUBMITTED, "b": RequestStatus.SUBMITTED, "c": RequestStatus.QUEUED,
    }
    totals = ledger.request_totals("enrich")
    assert totals["attempts"] == 2


def test_replaying_it_changes_nothing(ledger: Ledger, ledger_url: str) -> None:
    path = sqlite_file(ledger_url)
    ledger.record_submitted("s1", batch_id="batch_1")
    assert ledger.record_submitted("s1", batch_id="batch_2") == 0
    assert ledger.shards("enrich")[0]["batch_id"] == "batch_1"
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT custom_id, tier, attempts FROM requests ORDER BY custom_id").fetchall()
    assert rows == [("a", "batch", 1), ("b", "batch", 1), ("c", None, 0)]


def test_refuses_unknown_fields_and_changes_nothing(ledger: Ledger) -> None:
    with pytest.raises(TypeError, match="step"):
        ledger.record_submitted("s1", step="reconciled")
    assert ledger.shards("enrich")[0]["step"] == "submitting"
    assert ledger.statuses(["a"]) == {"a": RequestStatus.QUEUED}


def test_set_shard_step_still_refuses_illegal_moves(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="illegal"):
        ledger.set_shard_step("s2", ShardStep.COMPILED, ShardStep.SUBMITTED)
