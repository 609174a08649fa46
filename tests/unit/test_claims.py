"""Claims (state/claims.py): owner and lease on shards, flex requests and named locks — a
live claim is never taken, an expired one is, and only what a claim returned is the
worker's. On SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from state import Ledger, RequestRecord, RequestStatus, RowRecord, ShardRecord, ShardStep
from state.schema import SCHEMA_VERSION

S = RequestStatus


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        opened.record_job("job", "h", "{}")
        yield opened


def _shards(ledger: Ledger, n: int) -> list[str]:
    keys = []
    for i in range(n):
        key = f"job-s{i}"
        ids = [f"{key}-r{j}" for j in range(3)]
        ledger.record_requests(RequestRecord(cid, "/v1/chat/completions", b"{}") for cid in ids)
        ledger.record_rows("job", [RowRecord(cid, j, cid, None) for j, cid in enumerate(ids)])
        ledger.record_shard("job", ShardRecord(key, f"/nowhere/{key}", "0" * 64, 3, 30), ids)
        keys.append(key)
    return keys


def test_a_live_claim_is_never_taken_and_claims_split_the_work(ledger: Ledger) -> None:
    keys = _shards(ledger, 5)
    first = ledger.claim_shards("job", "w1", [ShardStep.COMPILED], limit=3, lease_s=60)
    second = ledger.claim_shards("job", "w2", [ShardStep.COMPILED], limit=3, lease_s=60)
    assert [s["key"] for s in first] == keys[:3]
    assert [s["key"] for s in second] == keys[3:]
    assert {s["claimed_by"] for s in first} == {"w1"}
    assert ledger.claim_shards("job", "w3", [ShardStep.COMPILED], limit=9, lease_s=60) == []
    # Nor by the holder itself: a stage never picks a shard twice.
    assert ledger.claim_shards("job", "w1", [ShardStep.COMPILED], limit=9, lease_s=60) == []


def test_an_expired_lease_is_taken_over_and_the_old_owner_can_no_longer_move_it(
    ledger: Ledger,
) -> None:
    (key,) = _shards(ledger, 1)
    assert ledger.claim_shards("job", "dead", [ShardStep.COMPILED], limit=1, lease_s=0.2)
    time.sleep(0.3)
    (taken,) = ledger.claim_shards("job", "alive", [ShardStep.COMPILED], limit=1, lease_s=60)
    assert taken["key"] == key
    assert not ledger.set_shard_step(key, ShardStep.COMPILED, ShardStep.UPLOADING, worker="dead")
    assert ledger.set_shard_step(key, ShardStep.COMPILED, ShardStep.UPLOADING, worker="alive")
    assert ledger.release_shard(key, "alive")
    assert not ledger.release_shard(key, "alive")


def test_renew_keeps_a_claim_alive(ledger: Ledger) -> None:
    _shards(ledger, 1)
    ledger.register_worker("w1", "job", None, lease_s=0.4)
    assert ledger.claim_shards("job", "w1", [ShardStep.COMPILED], limit=1, lease_s=0.4)
    for _ in range(3):
        time.sleep(0.2)
        assert ledger.renew("w1", lease_s=0.4) >= 1
    assert ledger.claim_shards("job", "w2", [ShardStep.COMPILED], limit=1, lease_s=60) == []
    assert ledger.live_claims("job") == {"w1": {"shards:compiled": 1}}


def _retryable(ledger: Ledger, ids: list[str]) -> None:
    ledger.record_requests(RequestRecord(cid, "/v1/chat/completions", b"{}") for cid in ids)
    ledger.record_rows("job", [RowRecord(cid, i, cid, None) for i, cid in enumerate(ids)])
    assert ledger.transition(ids, S.PENDING, S.RETRYABLE) == len(ids)


def test_flex_claims_return_only_what_this_worker_got(ledger: Ledger) -> None:
    ids = [f"r{i}" for i in range(6)]
    _retryable(ledger, ids)
    assert sorted(ledger.claim_requests(ids[:4], "w1", lease_s=60, tier="flex")) == ids[:4]
    assert sorted(ledger.claim_requests(ids, "w2", lease_s=60, tier="flex")) == ids[4:]
    assert ledger.claim_requests(ids, "w3", lease_s=60, tier="flex") == []
    assert ledger.request_totals("job")["attempts"] == 6
    # Recovery leaves live claims alone.
    assert ledger.recover_expired_requests("job", "flex: recovered") == 0


def test_an_expired_flex_claim_goes_back_without_counting_an_attempt(ledger: Ledger) -> None:
    ids = ["a", "b"]
    _retryable(ledger, ids)
    assert sorted(ledger.claim_requests(ids, "dead", lease_s=0.1, tier="flex")) == ids
    assert ledger.request_totals("job")["attempts"] == 2
    time.sleep(0.2)
    assert ledger.recover_expired_requests("job", "flex: recovered") == 2
    assert ledger.statuses(ids) == {"a": S.RETRYABLE, "b": S.RETRYABLE}
    assert ledger.request_totals("job")["attempts"] == 0


def test_a_flex_answer_is_recorded_only_by_the_claims_owner(ledger: Ledger) -> None:
    from state import ResultRecord, ResultSource

    _retryable(ledger, ["a"])
    assert ledger.claim_requests(["a"], "owner", lease_s=60, tier="flex") == ["a"]
    stray = ResultRecord("a", S.SUCCEEDED, ResultSource.FLEX, 200, b'{"x": 1}')
    assert ledger.record_results([stray], worker="someone-else") == 0
    assert ledger.record_results([stray], worker="owner") == 1
    assert ledger.statuses(["a"]) == {"a": S.SUCCEEDED}


def test_the_compile_lock_is_one_holder_at_a_time_and_remembers_what_was_done(
    ledger: Ledger,
) -> None:
    assert ledger.lock("compile:job", "job", "w1", lease_s=60) == (True, None, None)
    assert ledger.lock("compile:job", "job", "w2", lease_s=60) == (False, "w1", None)
    assert ledger.lock_holder("compile:job") == ("w1", None)
    assert ledger.unlock("compile:job", "w1", done="fp1")
    assert ledger.lock_holder("compile:job") == (None, "fp1")
    assert ledger.lock("compile:job", "job", "w2", lease_s=0.1) == (True, None, "fp1")
    time.sleep(0.2)
    taken, holder, _ = ledger.lock("compile:job", "job", "w3", lease_s=60)
    assert (taken, holder) == (True, None)  # w2's lease ran out


def test_dead_workers_of_this_host_are_reaped_at_once(ledger: Ledger) -> None:
    _shards(ledger, 1)
    ledger.register_worker("gone", "job", None, lease_s=60, host="h1", pid=111)
    ledger.register_worker("elsewhere", "job", None, lease_s=60, host="h2", pid=222)
    assert ledger.claim_shards("job", "gone", [ShardStep.COMPILED], limit=1, lease_s=60)
    alive = {111: False, 222: False}.__getitem__
    assert ledger.reap_dead_local_workers("job", "h1", "me", alive) == ["gone"]
    assert ledger.claim_shards("job", "me", [ShardStep.COMPILED], limit=1, lease_s=60)
    workers = {w["worker_id"]: w for w in ledger.workers("job")}
    assert not workers["gone"]["live"]
    assert workers["elsewhere"]["live"]  # another host's process cannot be checked from here


def test_schema_is_the_version_with_claims() -> None:
    assert SCHEMA_VERSION == 3  # 2: claims; 3: multi-step rows (rows.data, rows.fed)


def test_a_version_1_ledger_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    with Ledger.open(path) as ledger:
        ledger.record_job("job", "h", "{}")
        (key,) = _shards(ledger, 1)
    with sqlite3.connect(path) as db:  # make it what groqbatch 0.1 wrote
        db.execute("DROP INDEX ix_requests_claimed_by")
        for table, column in (("shards", "claimed_by"), ("shards", "lease_until"),
                              ("requests", "claimed_by"), ("requests", "lease_until"),
                              ("results", "run_id"), ("rows", "data"), ("rows", "fed")):
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        for table in ("leases", "workers", "result_history"):
            db.execute(f"DROP TABLE {table}")
        db.execute("DROP INDEX ix_shards_job")
        db.execute("CREATE INDEX ix_shards_job ON shards (job)")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Ledger.open(path) as ledger:
        (claimed,) = ledger.claim_shards("job", "w1", [ShardStep.COMPILED], limit=1, lease_s=60)
        assert claimed["key"] == key
        assert ledger.lock("compile:job", "job", "w1", lease_s=60)[0]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
        indexes = {row[1] for row in db.execute("PRAGMA index_list(requests)")}
        assert "ix_requests_claimed_by" in indexes


def test_a_shard_whose_requests_another_compile_took_is_not_recorded(ledger: Ledger) -> None:
    """Two jobs sharing requests compile at once: a shard file holding a request the other
    compile queued meanwhile would send it twice, so it is not recorded at all."""
    ids = ["a", "b", "c"]
    ledger.record_requests(RequestRecord(cid, "/v1/chat/completions", b"{}") for cid in ids)
    ledger.record_rows("job", [RowRecord(cid, i, cid, None) for i, cid in enumerate(ids)])
    assert ledger.record_shard("job", ShardRecord("other", "/x", "1" * 64, 1, 10), ["b"])
    assert not ledger.record_shard("job", ShardRecord("mine", "/y", "2" * 64, 3, 30), ids,
                                   whole=True)
    assert ledger.shard("mine") is None
    assert ledger.statuses(ids) == {"a": S.PENDING, "b": S.QUEUED, "c": S.PENDING}
    assert ledger.record_shard("job", ShardRecord("mine2", "/z", "3" * 64, 2, 20), ["a", "c"],
                               whole=True)
    assert ledger.statuses(ids) == {"a": S.QUEUED, "b": S.QUEUED, "c": S.QUEUED}


def test_a_claim_given_back_unsent_is_retryable_without_an_attempt(ledger: Ledger) -> None:
    ids = ["a", "b", "c"]
    _retryable(ledger, ids)
    assert sorted(ledger.claim_requests(ids, "w1", lease_s=60, tier="flex")) == ids
    assert ledger.release_requests(["a", "b"], "w2", "flex: not sent") == 0  # not w2's claims
    assert ledger.release_requests(["a", "b"], "w1", "flex: not sent") == 2
    assert ledger.statuses(ids) == {"a": S.RETRYABLE, "b": S.RETRYABLE, "c": S.IN_FLIGHT}
    assert ledger.request_totals("job")["attempts"] == 1
    assert ledger.error_counts("job", [S.RETRYABLE]) == [("flex: not sent", 2)]
    assert ledger.live_claims("job") == {"w1": {"requests": 1}}
