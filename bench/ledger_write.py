"""Ledger write throughput: ``record_requests`` and ``record_results`` beside raw sqlite3.

    .venv/bin/python bench/ledger_write.py            # 1,000,000 requests
    .venv/bin/python bench/ledger_write.py 200000     # fewer

Raw means ``sqlite3.executemany`` of the same rows (same columns, same compressed bodies,
random content-hash keys, WAL, synchronous=NORMAL, a commit per 5,000 rows) into a table of
the same shape. DESIGN.md: raw ~70k rows/s with random keys; SQLAlchemy Core about half.
Prints figures once every request was recorded and every result moved its request; otherwise
exits 1 with the reason.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from state import Ledger, RequestRecord, RequestStatus, ResultRecord, ResultSource
from state.ledger import CHUNK_SIZE


def _requests(count: int) -> Iterator[RequestRecord]:
    for i in range(count):
        body = (
            b'{"model":"llama-3.1-8b-instant","messages":[{"role":"user","content":"Summarise row '
            + str(i).encode()
            + b' of the input in one sentence."}],"temperature":0}'
        )
        yield RequestRecord(hashlib.sha256(body).hexdigest()[:32], "/v1/chat/completions", body)


def _raw(path: Path, count: int) -> float:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(
        "CREATE TABLE requests (custom_id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, "
        "body BLOB NOT NULL, status TEXT NOT NULL, shard_key TEXT, attempts INTEGER NOT NULL, "
        "tier TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
        "cost_usd REAL NOT NULL, last_error TEXT, created_at REAL NOT NULL, "
        "updated_at REAL NOT NULL)"
    )
    connection.execute("CREATE INDEX ix_status ON requests (status, custom_id)")
    connection.execute("CREATE INDEX ix_shard ON requests (shard_key)")
    sql = (
        "INSERT INTO requests (custom_id, endpoint, body, status, attempts, prompt_tokens, "
        "completion_tokens, cost_usd, created_at, updated_at) "
        "VALUES (?, ?, ?, 'pending', 0, 0, 0, 0.0, ?, ?) ON CONFLICT (custom_id) DO NOTHING"
    )
    started = time.perf_counter()
    batch: list[tuple[str, str, bytes, float, float]] = []
    for request in _requests(count):
        now = time.time()
        batch.append(
            (request.custom_id, request.endpoint, zlib.compress(request.body, 1), now, now)
        )
        if len(batch) == CHUNK_SIZE:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(sql, batch)
            connection.execute("COMMIT")
            batch.clear()
    if batch:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(sql, batch)
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def _results(ids: list[str]) -> Iterator[ResultRecord]:
    for custom_id in ids:
        yield ResultRecord(
            custom_id=custom_id,
            outcome=RequestStatus.SUCCEEDED,
            source=ResultSource.BATCH,
            status_code=200,
            body=b'{"choices":[{"message":{"content":"One sentence."}}],"usage":{"total_tokens":9}}',
            batch_id="batch_1",
            prompt_tokens=7,
            completion_tokens=2,
        )


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        raw_s = _raw(Path(tmp) / "raw.sqlite", count)
        with Ledger.open(Path(tmp) / "ledger.sqlite") as ledger:
            started = time.perf_counter()
            new = ledger.record_requests(_requests(count))
            ours_s = time.perf_counter() - started

            ids = [request.custom_id for request in _requests(count)]
            ledger.record_job("bench", "h", "{}")
            # Put everything in submitted without timing it, then time reconcile.
            with ledger._db.transaction("bench") as connection:  # bench-only shortcut
                connection.exec_driver_sql("UPDATE requests SET status = 'submitted'")
            ids.reverse()  # files arrive in any order; record_results sorts each chunk
            started = time.perf_counter()
            moved = ledger.record_results(_results(ids))
            results_s = time.perf_counter() - started
    if new != count or moved != count:
        sys.exit(f"work not done, no figures: {new:,} requests recorded and {moved:,} results "
                 f"moved of {count:,}")
    print(f"requests: {count:,} (new: {new:,}; results moved: {moved:,})")
    print(f"raw sqlite3 executemany insert : {count / raw_s:>10,.0f} rows/s  ({raw_s:.1f} s)")
    print(
        f"Ledger.record_requests        : {count / ours_s:>10,.0f} rows/s  ({ours_s:.1f} s)"
        f"  = {raw_s / ours_s:.0%} of raw"
    )
    print(
        f"Ledger.record_results         : {count / results_s:>10,.0f} rows/s  ({results_s:.1f} s)"
    )


if __name__ == "__main__":
    main()
