"""The ledger's spend operations (state/spend.py), on SQLite and on PostgreSQL: what shards on
their way commit, the budgeted start of an upload — weighed and moved in one transaction, so
workers racing for one budget together start no more than it allows — and cost by path."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from state import (
    Ledger,
    RequestRecord,
    RequestStatus,
    ResultRecord,
    ResultSource,
    RowRecord,
    ShardRecord,
    ShardStep,
)
from state.spend import Committed

S = RequestStatus


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        opened.record_job("job", "h", "{}")
        yield opened


def _shard(ledger: Ledger, key: str, lines: int = 3, size: int = 300) -> list[str]:
    ids = [f"{key}-r{j}" for j in range(lines)]
    ledger.record_requests(RequestRecord(cid, "/v1/chat/completions", b"{}") for cid in ids)
    ledger.record_rows("job", [RowRecord(cid, j, cid, None) for j, cid in enumerate(ids)])
    ledger.record_shard("job", ShardRecord(key, f"/nowhere/{key}", "0" * 64, lines, size), ids)
    return ids


def _start(ledger: Ledger, key: str, worker: str = "w") -> None:
    ledger.claim_shards("job", worker, [ShardStep.COMPILED], limit=100, lease_s=60)
    assert ledger.begin_upload_within(key, "job", worker, lambda totals, committed: True)


def test_committed_counts_shards_on_their_way_until_reconciled(ledger: Ledger) -> None:
    for key in ("a", "b", "c"):
        _shard(ledger, key, lines=3, size=300)
    assert ledger.committed_shards("job") == Committed(0, 0, 0, 9, 900)
    _start(ledger, "a")
    assert ledger.committed_shards("job") == Committed(3, 3, 300, 6, 600)
    ledger.set_shard_step("a", ShardStep.UPLOADING, ShardStep.UPLOADED, file_id="f")
    ledger.set_shard_step("a", ShardStep.UPLOADED, ShardStep.SUBMITTING)
    assert ledger.record_submitted("a", batch_id="b1", batch_status="validating") == 3
    # Submitted: its lines are attempts now, its tokens still an estimate.
    assert ledger.committed_shards("job") == Committed(0, 3, 300, 6, 600)
    assert ledger.request_totals("job")["attempts"] == 3
    ledger.set_shard_step("a", ShardStep.SUBMITTED, ShardStep.SETTLED)
    ledger.set_shard_step("a", ShardStep.SETTLED, ShardStep.RECONCILED)
    assert ledger.committed_shards("job") == Committed(0, 0, 0, 6, 600)


def test_a_shard_that_does_not_fit_stays_compiled(ledger: Ledger) -> None:
    _shard(ledger, "a")
    assert ledger.claim_shards("job", "w", [ShardStep.COMPILED], limit=1, lease_s=60)
    seen: list[tuple[dict[str, float], Committed]] = []

    def refuse(totals: dict[str, float], committed: Committed) -> bool:
        seen.append((totals, committed))
        return False

    assert not ledger.begin_upload_within("a", "job", "w", refuse)
    assert ledger.shard("a")["step"] == ShardStep.COMPILED  # type: ignore[index]
    assert seen[0][0]["attempts"] == 0
    # Only the worker holding the claim may start it.
    assert not ledger.begin_upload_within("a", "job", "other", lambda t, c: True)
    assert ledger.begin_upload_within("a", "job", "w", lambda t, c: True)
    assert ledger.shard("a")["step"] == ShardStep.UPLOADING  # type: ignore[index]


def test_workers_racing_for_one_budget_start_no_more_than_it_allows(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        ledger.record_job("job", "h", "{}")
        for i in range(12):
            _shard(ledger, f"s{i:02d}", lines=3)

    def fits(totals: dict[str, float], committed: Committed) -> bool:
        return totals["attempts"] + committed.lines_unsent + 3 <= 15  # five shards' worth

    def worker(name: str) -> int:
        started = 0
        with Ledger.open(ledger_url) as mine:
            while claimed := mine.claim_shards("job", name, [ShardStep.COMPILED], limit=1, lease_s=60):
                started += mine.begin_upload_within(claimed[0]["key"], "job", name, fits)
        return started

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(worker, ["w1", "w2", "w3", "w4"]))
    assert sum(counts) == 5
    with Ledger.open(ledger_url) as ledger:
        steps = [s["step"] for s in ledger.shards("job")]
    assert steps.count(ShardStep.UPLOADING) == 5


def test_cost_by_path_tells_rebatched_from_batch_and_flex(ledger: Ledger) -> None:
    first, second = _shard(ledger, "a", lines=3), _shard(ledger, "b", lines=1)
    for key in ("a", "b"):
        _start(ledger, key)
        ledger.set_shard_step(key, ShardStep.UPLOADING, ShardStep.UPLOADED, file_id="f")
        ledger.set_shard_step(key, ShardStep.UPLOADED, ShardStep.SUBMITTING)
        ledger.record_submitted(key, batch_id=f"batch-{key}", batch_status="in_progress")
    # a: one answered, one expired twice (re-batched, then answered by the second batch), one
    # left to flex.
    ledger.record_results([
        ResultRecord(first[0], S.SUCCEEDED, ResultSource.BATCH, status_code=200, body=b"{}",
                     prompt_tokens=10, completion_tokens=5, cost_usd=1.0, shard_key="a"),
        ResultRecord(first[1], S.RETRYABLE, ResultSource.BATCH, error='{"code": "batch_expired"}',
                     shard_key="a"),
        ResultRecord(first[2], S.RETRYABLE, ResultSource.BATCH, error='{"code": "batch_expired"}',
                     shard_key="a"),
    ])
    assert ledger.transition([first[1]], S.RETRYABLE, S.PENDING) == 1
    ledger.record_shard("job", ShardRecord("c", "/nowhere/c", "1" * 64, 1, 100), [first[1]])
    _start(ledger, "c", worker="w2")
    ledger.set_shard_step("c", ShardStep.UPLOADING, ShardStep.UPLOADED, file_id="f")
    ledger.set_shard_step("c", ShardStep.UPLOADED, ShardStep.SUBMITTING)
    ledger.record_submitted("c", batch_id="batch-c", batch_status="in_progress")
    ledger.record_results([ResultRecord(first[1], S.SUCCEEDED, ResultSource.BATCH, status_code=200,
                                        body=b"{}", prompt_tokens=20, completion_tokens=4,
                                        cost_usd=2.0, shard_key="c")])
    assert ledger.claim_requests([first[2]], "w", lease_s=60, tier="flex") == [first[2]]
    ledger.record_results([ResultRecord(first[2], S.SUCCEEDED, ResultSource.FLEX, status_code=200,
                                        body=b"{}", prompt_tokens=7, completion_tokens=3,
                                        cost_usd=4.0)])
    paths = ledger.cost_by_path("job")
    assert paths["batch"] == {"requests": 2, "succeeded": 1, "prompt_tokens": 10,
                              "completion_tokens": 5, "cost_usd": 1.0}  # second[0] still out
    assert paths["rebatched"] == {"requests": 1, "succeeded": 1, "prompt_tokens": 20,
                                  "completion_tokens": 4, "cost_usd": 2.0}
    assert paths["flex"] == {"requests": 1, "succeeded": 1, "prompt_tokens": 7,
                             "completion_tokens": 3, "cost_usd": 4.0}
    assert second
