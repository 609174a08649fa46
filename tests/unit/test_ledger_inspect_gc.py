"""The ledger reads behind ``inspect``, ``jobs`` and ``gc``, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

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
from state.cleanup import DeletedFile

S = RequestStatus
BODY = b'{"choices":[{"message":{"content":"hello"}}]}'


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        opened.record_job("enrich", "h", "{}")
        yield opened


def _shard(ledger: Ledger, key: str, ids: list[str], sha: str, *, job: str = "enrich",
           first_row: int = 0) -> None:
    ledger.record_requests(RequestRecord(i, "/v1/chat/completions", b'{"model":"m"}') for i in ids)
    ledger.record_rows(job, (RowRecord(f"row-{i}", first_row + n, i, None)
                             for n, i in enumerate(ids)))
    assert ledger.record_shard(job, ShardRecord(key, f"/w/shards/{sha}.jsonl", sha, len(ids), 100),
                               ids)


def _through_batch(ledger: Ledger, key: str, batch: str, *, to: ShardStep) -> None:
    """A shard's steps up to ``to``, with file, batch and output ids recorded on the way."""
    steps = [ShardStep.UPLOADING, ShardStep.UPLOADED, ShardStep.SUBMITTING]
    current = ShardStep.COMPILED
    for step in steps:
        fields = {"file_id": f"in-{key}"} if step is ShardStep.UPLOADED else {}
        assert ledger.set_shard_step(key, current, step, **fields)
        current = step
    ledger.record_submitted(key, batch_id=batch, batch_status="in_progress")
    current = ShardStep.SUBMITTED
    if to in (ShardStep.SETTLED, ShardStep.RECONCILED):
        assert ledger.set_shard_step(key, current, ShardStep.SETTLED, batch_status="completed",
                                     output_file_id=f"out-{key}", error_file_id=f"err-{key}")
        current = ShardStep.SETTLED
    if to is ShardStep.RECONCILED:
        assert ledger.set_shard_step(key, current, ShardStep.RECONCILED)


def _result(custom_id: str, outcome: RequestStatus, batch: str, code: int = 200) -> ResultRecord:
    return ResultRecord(custom_id, outcome, ResultSource.BATCH, status_code=code,
                        body=BODY if code == 200 else b'{"error":{"message":"no"}}',
                        error=None if code == 200 else '{"message":"no"}', batch_id=batch,
                        prompt_tokens=7, completion_tokens=2, cost_usd=0.5,
                        shard_key=None)


def test_a_journey_by_row_key_and_by_custom_id(ledger: Ledger) -> None:
    _shard(ledger, "s1", ["a", "b"], "1" * 64)
    ledger.record_rows("enrich", [RowRecord("row-a-twin", 5, "a", None),
                                  RowRecord("bad", 6, None, "missing column 'text'")])
    _through_batch(ledger, "s1", "batch_1", to=ShardStep.RECONCILED)
    ledger.record_results([_result("a", S.FAILED, "batch_1", code=400)])
    ledger.reopen_failed("enrich")
    ledger.record_shard("enrich", ShardRecord("s2", "/w/shards/2.jsonl", "2" * 64, 1, 10), ["a"])
    _through_batch(ledger, "s2", "batch_2", to=ShardStep.SUBMITTED)
    ledger.record_results([_result("a", S.SUCCEEDED, "batch_2")])

    by_row = ledger.journey("enrich", "row-a")
    assert by_row is not None
    assert by_row["matched_by"] == "row_key"
    assert by_row["custom_id"] == "a"
    assert [r["row_key"] for r in by_row["rows"]] == ["row-a", "row-a-twin"]  # the asked first
    twin = ledger.journey("enrich", "row-a-twin")
    assert twin is not None
    assert [r["row_key"] for r in twin["rows"]] == ["row-a-twin", "row-a"]
    request = by_row["request"]
    assert (request["status"], request["shard_key"], request["attempts"]) == ("succeeded", "s2", 1)
    assert request["body"] == {"model": "m"}
    assert by_row["result"]["body"] == {"choices": [{"message": {"content": "hello"}}]}
    assert [(h["status_code"], h["batch_id"]) for h in by_row["history"]] == [(400, "batch_1")]
    assert sorted(by_row["shards"]) == ["s1", "s2"]  # the current one and the one that answered
    assert by_row["shards"]["s2"]["batch_id"] == "batch_2"

    by_id = ledger.journey("enrich", "a")
    assert by_id is not None
    assert by_id["matched_by"] == "custom_id"
    assert [r["row_key"] for r in by_id["rows"]] == ["row-a", "row-a-twin"]

    rejected = ledger.journey("enrich", "bad")
    assert rejected is not None
    assert rejected["request"] is None
    assert rejected["rows"][0]["reason"] == "missing column 'text'"
    assert ledger.journey("enrich", "nope") is None
    assert ledger.journey("other-job", "row-a") is None


def test_job_overviews_count_requests_spend_and_open_work(ledger: Ledger) -> None:
    ledger.record_job("empty", "h", "{}")
    _shard(ledger, "s1", ["a", "b", "c"], "1" * 64)
    _through_batch(ledger, "s1", "batch_1", to=ShardStep.SUBMITTED)
    ledger.record_results([_result("a", S.SUCCEEDED, "batch_1"),
                           _result("b", S.FAILED, "batch_1", code=400)])
    run = ledger.start_run("enrich", "local")
    ledger.register_worker("w1", "enrich", run, lease_s=60)
    overviews = {job["name"]: job for job in ledger.job_overviews()}
    assert sorted(overviews) == ["empty", "enrich"]
    enrich = overviews["enrich"]
    assert (enrich["requests"]["succeeded"], enrich["requests"]["failed"],
            enrich["requests"]["submitted"]) == (1, 1, 1)
    assert enrich["rows"] == {"ok": 3}
    assert enrich["spend"] == {"prompt_tokens": 14, "completion_tokens": 4, "cost_usd": 1.0}
    assert (enrich["open_shards"], enrich["runs"], enrich["live_workers"]) == (1, 1, 1)
    ledger.stop_worker("w1")
    assert ledger.job_overviews()[1]["live_workers"] == 0
    assert overviews["empty"]["runs"] == 0
    assert sum(overviews["empty"]["requests"].values()) == 0


def test_gc_reads_tell_done_shards_from_busy_ones(ledger: Ledger) -> None:
    _shard(ledger, "done", ["a"], "1" * 64)
    _through_batch(ledger, "done", "batch_1", to=ShardStep.RECONCILED)
    ledger.record_results([_result("a", S.SUCCEEDED, "batch_1")])
    _shard(ledger, "live", ["b"], "2" * 64)
    _through_batch(ledger, "live", "batch_2", to=ShardStep.SUBMITTED)
    _shard(ledger, "open", ["c"], "3" * 64)  # reconciled, but its request went to the fallback
    _through_batch(ledger, "open", "batch_3", to=ShardStep.RECONCILED)
    ledger.transition(["c"], S.SUBMITTED, S.RETRYABLE)

    shards = {s["key"]: s for s in ledger.gc_shards("enrich")}
    assert (shards["done"]["final"], shards["done"]["claimed"], shards["done"]["open_requests"]) \
        == (True, False, 0)
    assert (shards["live"]["final"], shards["live"]["open_requests"]) == (False, 1)
    assert (shards["open"]["final"], shards["open"]["open_requests"]) == (True, 1)

    shas, ids = ledger.files_in_use(sha256s=["1" * 64, "2" * 64, "3" * 64],
                                    file_ids=["in-done", "out-done", "in-live", "out-open"])
    assert shas == {"2" * 64, "3" * 64}
    assert ids == {"in-live", "out-open"}

    # A live claim makes a done shard busy too.
    assert ledger.claim_shards("enrich", "w1", [ShardStep.RECONCILED], limit=5, lease_s=60)
    assert ledger.files_in_use(file_ids=["in-done"])[1] == {"in-done"}
    assert next(s for s in ledger.gc_shards("enrich") if s["key"] == "done")["claimed"]


def test_deleted_files_are_recorded_per_job_and_place(ledger: Ledger) -> None:
    ledger.record_deleted_files([
        DeletedFile("enrich", "remote", "file_1", "input", "s1", 100),
        DeletedFile("enrich", "local", "/w/shards/x.jsonl", "shard", "s1", 100),
        DeletedFile("other", "remote", "file_2", "output", "s9", None),
    ])
    assert [f.name for f in ledger.deleted_files("enrich")] == ["file_1", "/w/shards/x.jsonl"]
    assert ledger.deleted_files("enrich", "remote") == [
        DeletedFile("enrich", "remote", "file_1", "input", "s1", 100)]
    assert [f.bytes for f in ledger.deleted_files("other")] == [None]
