"""The ledger's operations for multi-step jobs (schema 3): which rows a step has to feed on,
their markers, dropping rows from later steps — on SQLite and PostgreSQL — and the migration of
a schema-2 ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from state import Ledger, RequestRecord, RequestStatus, ResultRecord, ResultSource, RowRecord

BODY = orjson.dumps({"choices": [{"message": {"content": "ok"}}]})


def _answer(ledger: Ledger, custom_id: str, outcome: RequestStatus) -> None:
    ledger.transition([custom_id], RequestStatus.PENDING, RequestStatus.RETRYABLE)
    ledger.transition([custom_id], RequestStatus.RETRYABLE, RequestStatus.IN_FLIGHT)
    ledger.record_results([ResultRecord(custom_id, outcome, ResultSource.FLEX, status_code=200,
                                        body=BODY, parsed='{"k": 1}')])


def _setup(ledger: Ledger) -> None:
    for job in ("j.a", "j.b", "j.c"):
        ledger.record_job(job, "h", "{}")
    ledger.record_requests(RequestRecord(c, "/v1/chat/completions", b"{}") for c in "xyz")
    ledger.record_rows("j.a", [RowRecord("r1", 0, "x", None, b'{"t": 1}'),
                               RowRecord("r2", 1, "y", None, b'{"t": 2}'),
                               RowRecord("r3", 2, "z", None, b'{"t": 3}'),
                               RowRecord("r4", 3, None, "missing column", b'{"u": 4}')])


def test_rows_to_feed_are_the_settled_and_the_rejected_not_yet_fed(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        _setup(ledger)
        # Only the rejected row is settled so far.
        assert [r.row_key for r in ledger.rows_to_feed("j.a")] == ["r4"]
        _answer(ledger, "x", RequestStatus.SUCCEEDED)
        _answer(ledger, "y", RequestStatus.FAILED)
        page = ledger.rows_to_feed("j.a")
        assert [(r.row_key, r.status) for r in page] == [
            ("r1", RequestStatus.SUCCEEDED), ("r2", RequestStatus.FAILED), ("r4", None)]
        first = page[0]
        assert (first.data, first.body, first.parsed) == (b'{"t": 1}', BODY, '{"k": 1}')
        assert [r.row_key for r in ledger.rows_to_feed("j.a", after="r1")] == ["r2", "r4"]
        assert ledger.mark_fed("j.a", [("r1", "x"), ("r2", "y"), ("r4", "")]) == 3
        assert ledger.rows_to_feed("j.a") == []
        # Every settled row, fed or not, when asked (plan); a reset forgets the markers.
        assert len(ledger.rows_to_feed("j.a", fed_too=True)) == 3
        # A row whose request changed (a new custom_id) is due again once that one settles.
        ledger.record_rows("j.a", [RowRecord("r1", 0, "z", None, b'{"t": 9}')])
        assert ledger.rows_to_feed("j.a") == []
        _answer(ledger, "z", RequestStatus.SUCCEEDED)
        assert [r.row_key for r in ledger.rows_to_feed("j.a")] == ["r1", "r3"]
        assert ledger.reset_fed("j.a") == 3
        assert len(ledger.rows_to_feed("j.a")) == 4


def test_drop_rows_removes_only_those_keys_of_those_jobs(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        _setup(ledger)
        for job in ("j.b", "j.c"):
            ledger.record_rows(job, [RowRecord("r1", 0, "x", None), RowRecord("r2", 1, "y", None)])
        assert ledger.drop_rows(("j.b", "j.c"), ["r1"]) == 2
        assert set(ledger.row_ids("j.b", ["r1", "r2"])) == {"r2"}
        assert set(ledger.row_ids("j.c", ["r1", "r2"])) == {"r2"}
        assert set(ledger.row_ids("j.a", ["r1", "r2"])) == {"r1", "r2"}
        assert ledger.statuses(["x"]) == {"x": RequestStatus.PENDING}  # requests stay


def test_a_schema_2_ledger_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    with Ledger.open(path) as ledger:
        ledger.record_job("job", "h", "{}")
        ledger.record_requests([RequestRecord("x", "/v1/chat/completions", b"{}")])
        ledger.record_rows("job", [RowRecord("k", 0, "x", None)])
    with sqlite3.connect(path) as db:  # what groqbatch wrote before multi-step jobs
        for column in ("data", "fed"):
            db.execute(f"ALTER TABLE rows DROP COLUMN {column}")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with Ledger.open(path) as ledger:
        assert ledger.row_ids("job", ["k"]) == {"k": "x"}
        ledger.record_rows("job", [RowRecord("k2", 1, "x", None, b'{"a": 1}')])
        assert ledger.row_outcomes("job", ["k2"])["k2"].data == b'{"a": 1}'
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
        columns = {row[1] for row in db.execute("PRAGMA table_info(rows)")}
        assert {"data", "fed"} <= columns
