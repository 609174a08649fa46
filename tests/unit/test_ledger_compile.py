"""Compiling into the ledger: jobs, runs, rows, requests, iter_pending, record_shard."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest

from pipeline.errors import LedgerError
from state import CHUNK_SIZE, Ledger, RequestRecord, RequestStatus, RowRecord, ShardRecord
from state.ledger import PAGE_SIZE
from tests.ledgers import sqlite_file

ENDPOINT = "/v1/chat/completions"


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        opened.record_job("enrich", "hash-1", '{"name": "enrich"}')
        yield opened


def _requests(ids: list[str]) -> list[RequestRecord]:
    return [RequestRecord(i, ENDPOINT, json.dumps({"id": i}).encode()) for i in ids]


def _rows_for(ids: list[str]) -> list[RowRecord]:
    return [RowRecord(f"row-{i}", n, i, None) for n, i in enumerate(ids)]


def _shard(key: str, lines: int = 1) -> ShardRecord:
    return ShardRecord(key=key, path=f"out/{key}.jsonl", sha256=key * 2, lines=lines, bytes=99)


def test_record_job_updates_the_spec(ledger: Ledger) -> None:
    assert ledger.job_spec_hash("enrich") == "hash-1"
    ledger.record_job("enrich", "hash-2", "{}")
    assert ledger.job_spec_hash("enrich") == "hash-2"
    assert ledger.job_spec_hash("nope") is None


def test_runs_record_start_and_summary(ledger: Ledger, ledger_url: str) -> None:
    path = sqlite_file(ledger_url)
    first = ledger.start_run("enrich", "local", run_name="nightly")
    second = ledger.start_run("enrich", "groq")
    assert second > first
    ledger.finish_run(first, {"succeeded": 3, "cost_usd": 0.25})
    with sqlite3.connect(path) as connection:
        row = connection.execute(
            "SELECT run_name, backend, finished_at, summary_json FROM runs WHERE id = ?", (first,)
        ).fetchone()
    connection.close()
    assert row[0:2] == ("nightly", "local")
    assert row[2] is not None
    assert json.loads(row[3]) == {"cost_usd": 0.25, "succeeded": 3}


def test_finish_run_of_an_unknown_run_is_an_error(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no run with id 404"):
        ledger.finish_run(404, {})


def test_rows_of_an_unknown_job_are_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="record_rows refused"):
        ledger.record_rows("no-such-job", [RowRecord("k", 0, "c", None)])


def test_record_rows_is_an_idempotent_chunked_upsert(ledger: Ledger) -> None:
    count = 2 * CHUNK_SIZE + 2_345
    rows = [
        RowRecord(
            f"k{i}", i, None if i % 100 == 7 else f"c{i % 50}", "bad" if i % 100 == 7 else None
        )
        for i in range(count)
    ]
    assert ledger.record_rows("enrich", iter(rows)) == count
    expected = {"ok": count - len(range(7, count, 100)), "rejected": len(range(7, count, 100))}
    assert ledger.row_counts("enrich") == expected
    assert ledger.record_rows("enrich", iter(rows)) == count  # again: same rows, same counts
    assert ledger.row_counts("enrich") == expected
    # An upsert: a row that changes is updated, not duplicated.
    ledger.record_rows("enrich", [RowRecord("k7", 7, "c7", None)])
    assert ledger.row_counts("enrich") == {
        "ok": expected["ok"] + 1,
        "rejected": expected["rejected"] - 1,
    }


def test_rejected_rows_are_listed_in_input_order(ledger: Ledger) -> None:
    ledger.record_rows(
        "enrich",
        [
            RowRecord("z", 9, None, "missing column 'text'"),
            RowRecord("a", 2, None, "template error"),
            RowRecord("m", 5, "c1", None),
            RowRecord("q", 4, None, "empty"),
        ],
    )
    assert ledger.rejected_rows("enrich") == [
        ("a", 2, "template error"),
        ("q", 4, "empty"),
        ("z", 9, "missing column 'text'"),
    ]
    assert ledger.rejected_rows("enrich", limit=1) == [("a", 2, "template error")]
    assert ledger.rejected_rows("other") == []


def test_record_requests_counts_only_new_ones_across_chunks(ledger: Ledger) -> None:
    count = 2 * CHUNK_SIZE + 2_345
    ids = [f"req-{i:06d}" for i in range(count)]
    assert ledger.record_requests(iter(_requests(ids))) == count
    assert ledger.record_requests(iter(_requests(ids))) == 0
    more = [f"req-{i:06d}" for i in range(count - 10, count + 5)]
    assert ledger.record_requests(_requests(more)) == 5
    assert ledger.request_counts()["pending"] == count + 5


def test_record_requests_leaves_an_existing_request_alone(ledger: Ledger) -> None:
    ledger.record_requests([RequestRecord("a", ENDPOINT, b'{"v": 1}')])
    ledger.record_rows("enrich", _rows_for(["a"]))
    assert ledger.record_requests([RequestRecord("a", ENDPOINT, b'{"v": 2}')]) == 0
    assert list(ledger.iter_pending("enrich")) == [("a", b'{"v": 1}')]


def test_bodies_are_stored_compressed_and_returned_whole(ledger: Ledger, ledger_url: str) -> None:
    path = sqlite_file(ledger_url)
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 5_000}]}).encode()
    ledger.record_requests([RequestRecord("big", ENDPOINT, body)])
    ledger.record_rows("enrich", _rows_for(["big"]))
    with sqlite3.connect(path) as connection:
        (stored,) = connection.execute("SELECT body FROM requests").fetchone()
    connection.close()
    assert len(stored) < len(body) / 10
    assert list(ledger.iter_pending("enrich")) == [("big", body)]


def test_iter_pending_is_ordered_job_scoped_and_pending_only(ledger: Ledger) -> None:
    ledger.record_job("other", "h", "{}")
    mine = [f"m{i:03d}" for i in (5, 1, 9, 3, 7)]
    theirs = ["o1", "o2"]
    shared = "s1"  # two jobs may share one request
    ledger.record_requests(_requests([*mine, *theirs, shared, "orphan"]))
    ledger.record_rows("enrich", _rows_for([*mine, shared]))
    ledger.record_rows("other", [*_rows_for(theirs), RowRecord("x", 9, shared, None)])
    ledger.record_rows("enrich", [RowRecord("dup", 99, "m001", None)])  # two rows, one request
    ledger.record_shard("enrich", _shard("sh"), ["m009"])

    got = [custom_id for custom_id, _ in ledger.iter_pending("enrich")]
    assert got == ["m001", "m003", "m005", "m007", shared]
    assert [c for c, _ in ledger.iter_pending("other")] == ["o1", "o2", shared]
    assert list(ledger.iter_pending("nobody")) == []


def test_iter_pending_streams_pages_while_the_caller_writes(ledger: Ledger) -> None:
    count = 2 * PAGE_SIZE + 5
    ids = [f"r{i:06d}" for i in range(count)]
    ledger.record_requests(_requests(ids))
    ledger.record_rows("enrich", _rows_for(ids))

    pending = ledger.iter_pending("enrich")
    first_id, first_body = next(pending)
    assert (first_id, json.loads(first_body)) == ("r000000", {"id": "r000000"})
    # Written after the iteration began: a fetch-everything-first reader could not see it.
    ledger.record_requests(_requests(["r999999"]))
    ledger.record_rows("enrich", _rows_for(["r999999"]))
    # The caller queues what it has read, as compile does, between items.
    ledger.record_shard("enrich", _shard("s0"), [first_id])
    seen = [first_id]
    for custom_id, _ in pending:
        seen.append(custom_id)
        if len(seen) % 1_000 == 0:
            ledger.record_shard("enrich", _shard(f"s{len(seen)}"), seen[-1_000:])
    assert seen == [*ids, "r999999"]
    assert len(set(seen)) == len(seen)


def test_record_shard_queues_only_pending_requests(ledger: Ledger, ledger_url: str) -> None:
    path = sqlite_file(ledger_url)
    ids = ["a", "b", "c", "d"]
    ledger.record_requests(_requests(ids))
    ledger.record_rows("enrich", _rows_for(ids))
    ledger.record_shard("enrich", _shard("s1"), ["a"])
    ledger.transition(["a"], RequestStatus.QUEUED, RequestStatus.SUBMITTED)

    ledger.record_shard("enrich", _shard("s2", lines=3), ["a", "b", "c", "unknown"])

    counts = ledger.request_counts("enrich")
    assert (counts["pending"], counts["queued"], counts["submitted"]) == (1, 2, 1)
    with sqlite3.connect(path) as connection:
        keys = dict(connection.execute("SELECT custom_id, shard_key FROM requests"))
    connection.close()
    assert keys == {"a": "s1", "b": "s2", "c": "s2", "d": None}
    shards = ledger.shards("enrich")
    assert [(s["key"], s["step"], s["lines"]) for s in shards] == [
        ("s1", "compiled", 1),
        ("s2", "compiled", 3),
    ]


def test_record_shard_again_changes_nothing(ledger: Ledger) -> None:
    ledger.record_requests(_requests(["a", "b"]))
    ledger.record_rows("enrich", _rows_for(["a", "b"]))
    ledger.record_shard("enrich", _shard("s1"), ["a"])
    before = ledger.shards("enrich")
    ledger.record_shard("enrich", ShardRecord("s1", "elsewhere", "other", 7, 7), ["a"])
    assert ledger.shards("enrich") == before
    assert ledger.request_counts("enrich")["queued"] == 1


def test_request_counts_per_job_and_overall(ledger: Ledger) -> None:
    ledger.record_job("other", "h", "{}")
    ledger.record_requests(_requests(["a", "b", "c"]))
    ledger.record_rows("enrich", _rows_for(["a", "b"]))
    ledger.record_rows("other", _rows_for(["c"]))
    ledger.record_shard("enrich", _shard("s"), ["a"])
    assert ledger.request_counts("enrich") == {
        "pending": 1, "queued": 1, "submitted": 0, "succeeded": 0,
        "failed": 0, "retryable": 0, "in_flight": 0,
    }  # fmt: skip
    assert ledger.request_counts("other")["pending"] == 1
    assert ledger.request_counts()["pending"] == 2
    assert sum(ledger.request_counts().values()) == 3
