"""``Ledger.reopen_failed`` (``groqbatch retry``) on real SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from jobs.outputs import INVALID_OUTPUT_PREFIX
from state import (
    Ledger,
    RequestRecord,
    RequestStatus,
    ResultRecord,
    ResultSource,
    RowRecord,
    ShardRecord,
)
from state.retries import INVALID_OUTPUT_PREFIX as STATE_PREFIX

S = RequestStatus
ERROR = '{"message":"Bad Request","type":"invalid_request_error"}'


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        opened.record_job("enrich", "h", "{}")
        opened.record_job("other", "h", "{}")
        yield opened


def _submit(ledger: Ledger, job: str, ids: list[str], shard: str) -> None:
    """Rows and requests of ``job``, written into one shard whose batch was created."""
    ledger.record_requests(RequestRecord(i, "/v1/chat/completions", b'{"n":1}') for i in ids)
    ledger.record_rows(job, (RowRecord(f"row-{i}", n, i, None) for n, i in enumerate(ids)))
    ledger.record_shard(job, ShardRecord(shard, f"/tmp/{shard}.jsonl", shard * 4, len(ids), 10),
                        ids)
    ledger.transition(ids, S.QUEUED, S.SUBMITTED)


def _answer(custom_id: str, outcome: RequestStatus, *, code: int = 200,
            error: str | None = None) -> ResultRecord:
    body = b'{"choices":[{"message":{"content":"x"}}]}' if code == 200 else b'{"error":{}}'
    return ResultRecord(custom_id, outcome, ResultSource.BATCH, status_code=code, body=body,
                        error=error, batch_id="batch_1", prompt_tokens=5, completion_tokens=3,
                        cost_usd=0.25)


@pytest.fixture
def mixed(ledger: Ledger) -> Ledger:
    """enrich: ok (succeeded), bad1/bad2 (failed, a 400), inv (invalid output), open
    (retryable), fly (in flight, claimed); other: theirs (failed)."""
    _submit(ledger, "enrich", ["ok", "bad1", "bad2", "inv", "open", "fly"], "s1")
    _submit(ledger, "other", ["theirs"], "s2")
    ledger.record_results([
        _answer("ok", S.SUCCEEDED),
        _answer("bad1", S.FAILED, code=400, error=ERROR),
        _answer("bad2", S.FAILED, code=400, error=ERROR),
        _answer("inv", S.FAILED, error=INVALID_OUTPUT_PREFIX + "not valid JSON"),
        _answer("open", S.RETRYABLE, code=500, error=ERROR),
        _answer("theirs", S.FAILED, code=400, error=ERROR),
    ])
    assert ledger.claim_requests(["open"], "worker-a", lease_s=60, tier="flex") == ["open"]
    assert ledger.transition(["fly"], S.SUBMITTED, S.RETRYABLE) == 1
    assert ledger.claim_requests(["fly"], "worker-b", lease_s=60, tier="flex") == ["fly"]
    return ledger


def _request(ledger: Ledger, custom_id: str) -> dict[str, object]:
    journey = ledger.journey("enrich", custom_id) or ledger.journey("other", custom_id)
    assert journey is not None
    assert journey["request"] is not None
    request: dict[str, object] = journey["request"]
    return request


def test_the_prefix_is_the_one_outputs_write() -> None:
    assert STATE_PREFIX == INVALID_OUTPUT_PREFIX


def test_failed_requests_go_back_to_pending_with_their_error_kept(mixed: Ledger) -> None:
    counts = mixed.reopen_failed("enrich")
    assert (counts.failed, counts.invalid_output, counts.total) == (2, 1, 3)
    statuses = mixed.statuses(["ok", "bad1", "bad2", "inv", "open", "fly", "theirs"])
    assert statuses == {"ok": S.SUCCEEDED, "bad1": S.PENDING, "bad2": S.PENDING, "inv": S.PENDING,
                        "open": S.IN_FLIGHT, "fly": S.IN_FLIGHT, "theirs": S.FAILED}
    reopened = _request(mixed, "bad1")
    assert (reopened["attempts"], reopened["shard_key"], reopened["last_error"]) == (0, None, None)
    assert (reopened["prompt_tokens"], reopened["cost_usd"]) == (5, 0.25)  # paid: kept
    history = mixed.result_history("bad1")
    assert [(h["status_code"], h["error_json"]) for h in history] == [(400, ERROR)]
    assert [h["error_json"] for h in mixed.result_history("inv")] == [
        INVALID_OUTPUT_PREFIX + "not valid JSON"]
    assert mixed.result_history("ok") == []
    # The stored result stays until a new one replaces it.
    assert [r.status_code for r in mixed.results_for(["bad1"])] == [400]
    # The next compile finds them pending, as new requests.
    assert sorted(cid for cid, _ in mixed.iter_pending("enrich")) == ["bad1", "bad2", "inv"]


def test_reopening_again_moves_nothing(mixed: Ledger) -> None:
    assert mixed.reopen_failed("enrich").total == 3
    assert mixed.reopen_failed("enrich").total == 0
    assert len(mixed.result_history("bad1")) == 1


def test_kinds_and_ids_narrow_the_selection(mixed: Ledger) -> None:
    only_invalid = mixed.reopen_failed("enrich", failed=False, invalid_output=True)
    assert (only_invalid.failed, only_invalid.invalid_output) == (0, 1)
    assert mixed.statuses(["bad1", "inv"]) == {"bad1": S.FAILED, "inv": S.PENDING}
    picked = mixed.reopen_failed("enrich", invalid_output=False, custom_ids=["bad2", "ok", "x"])
    assert (picked.failed, picked.invalid_output) == (1, 0)
    assert mixed.statuses(["bad1", "bad2", "ok"]) == {"bad1": S.FAILED, "bad2": S.PENDING,
                                                       "ok": S.SUCCEEDED}
    assert mixed.reopen_failed("enrich", custom_ids=[]).total == 0


def test_a_dry_run_counts_and_changes_nothing(mixed: Ledger) -> None:
    counts = mixed.reopen_failed("enrich", dry_run=True)
    assert (counts.failed, counts.invalid_output) == (2, 1)
    assert mixed.statuses(["bad1", "inv"]) == {"bad1": S.FAILED, "inv": S.FAILED}
    assert mixed.result_history("bad1") == []


def test_a_failed_request_shared_with_another_job_is_reopened_once(mixed: Ledger) -> None:
    mixed.record_rows("enrich", [RowRecord("row-shared", 99, "theirs", None)])
    assert mixed.reopen_failed("enrich").total == 4  # theirs is enrich's too now
    assert mixed.reopen_failed("other").total == 0


def test_concurrent_retries_reopen_each_request_once(ledger: Ledger, ledger_url: str) -> None:
    ids = [f"r{n:03d}" for n in range(300)]
    _submit(ledger, "enrich", ids, "big")
    ledger.record_results(_answer(i, S.FAILED, code=400, error=ERROR) for i in ids)
    totals: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def retry() -> None:
        try:
            with Ledger.open(ledger_url) as own:
                start.wait(timeout=10)
                totals.append(own.reopen_failed("enrich").total)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert sum(totals) == 300
    assert ledger.request_counts("enrich")["pending"] == 300
    assert all(len(ledger.result_history(i)) == 1 for i in ids[:20])
