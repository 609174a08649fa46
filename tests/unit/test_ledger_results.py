"""Reconcile into the ledger: record_results, results_for, quarantine."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from state import (
    CHUNK_SIZE,
    Ledger,
    QuarantineRecord,
    RequestRecord,
    RequestStatus,
    ResultRecord,
    ResultSource,
    RowRecord,
)
from tests.ledgers import sqlite_file

S = RequestStatus


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        opened.record_job("enrich", "h", "{}")
        yield opened


def _submitted(ledger: Ledger, ids: list[str]) -> None:
    ledger.record_requests(RequestRecord(i, "/v1/chat/completions", b"{}") for i in ids)
    ledger.record_rows("enrich", (RowRecord(f"row-{i}", n, i, None) for n, i in enumerate(ids)))
    ledger.transition(ids, S.PENDING, S.QUEUED)
    ledger.transition(ids, S.QUEUED, S.SUBMITTED)


def _ok(custom_id: str, content: str = "hi", **kw: object) -> ResultRecord:
    body = b'{"choices":[{"message":{"content":"' + content.encode() + b'"}}]}'
    return ResultRecord(custom_id, S.SUCCEEDED, ResultSource.BATCH, 200, body, **kw)  # type: ignore[arg-type]


def _tokens(path: Path) -> dict[str, tuple[int, int, float, str | None]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT custom_id, prompt_tokens, completion_tokens, cost_usd, last_error FROM requests"
        ).fetchall()
    connection.close()
    return {r[0]: r[1:] for r in rows}


def test_results_move_requests_and_are_read_back(ledger: Ledger) -> None:
    _submitted(ledger, ["a", "b", "c"])
    moved = ledger.record_results(
        [
            _ok("a", parsed='{"label": "x"}', batch_id="batch_1"),
            ResultRecord("b", S.FAILED, ResultSource.BATCH, 400, error='{"code": "bad"}'),
            ResultRecord("c", S.RETRYABLE, ResultSource.BATCH, 500, error='{"code": "oops"}'),
        ]
    )
    assert moved == 3
    assert ledger.statuses(["a", "b", "c"]) == {"a": S.SUCCEEDED, "b": S.FAILED, "c": S.RETRYABLE}
    stored = {r.custom_id: r for r in ledger.results_for(["a", "b", "c", "ghost"])}
    assert set(stored) == {"a", "b", "c"}
    assert stored["a"].body == _ok("a").body
    assert (stored["a"].parsed, stored["a"].batch_id, stored["a"].source) == (
        '{"label": "x"}',
        "batch_1",
        ResultSource.BATCH,
    )
    assert (stored["b"].status_code, stored["b"].error, stored["b"].body) == (
        400,
        '{"code": "bad"}',
        None,
    )


def test_the_same_lines_twice_change_nothing(ledger: Ledger, ledger_url: str) -> None:
    path = sqlite_file(ledger_url)
    _submitted(ledger, ["a", "b"])
    lines = [_ok("a", prompt_tokens=10, completion_tokens=5, cost_usd=0.01), _ok("b")]
    assert ledger.record_results(lines) == 2
    counts = ledger.request_counts()
    tokens = _tokens(path)
    first = list(ledger.results_for(["a", "b"]))

    assert ledger.record_results(lines) == 0
    assert ledger.request_counts() == counts
    assert _tokens(path) == tokens
    assert list(ledger.results_for(["a", "b"])) == first


def test_a_duplicate_line_in_one_chunk_counts_once(ledger: Ledger, ledger_url: str) -> None:
    path = sqlite_file(ledger_url)
    _submitted(ledger, ["a"])
    moved = ledger.record_results(
        [_ok("a", "first", prompt_tokens=3), _ok("a", "second", prompt_tokens=3)]
    )
    assert moved == 1
    (stored,) = ledger.results_for(["a"])
    assert stored.body is not None
    assert b"first" in stored.body
    assert _tokens(path)["a"][0] == 3


def test_a_late_batch_line_does_not_overwrite_a_flex_answer(ledger: Ledger) -> None:
    _submitted(ledger, ["a"])
    ledger.transition(["a"], S.SUBMITTED, S.RETRYABLE, last_error="missing")
    ledger.transition(["a"], S.RETRYABLE, S.IN_FLIGHT, tier="flex")
    flex = ResultRecord("a", S.SUCCEEDED, ResultSource.FLEX, 200, b'{"from": "flex"}')
    assert ledger.record_results([flex]) == 1
    assert ledger.record_results([_ok("a", "late")]) == 0
    (stored,) = ledger.results_for(["a"])
    assert (stored.source, stored.body) == (ResultSource.FLEX, b'{"from": "flex"}')


def test_a_retryable_answer_is_replaced_by_the_flex_one(ledger: Ledger, ledger_url: str) -> None:
    path = sqlite_file(ledger_url)
    _submitted(ledger, ["a"])
    ledger.record_results(
        [ResultRecord("a", S.RETRYABLE, ResultSource.BATCH, 503, error="busy", prompt_tokens=0)]
    )
    assert _tokens(path)["a"][3] == "busy"
    ledger.transition(["a"], S.RETRYABLE, S.IN_FLIGHT)
    flex = ResultRecord(
        "a", S.SUCCEEDED, ResultSource.FLEX, 200, b"{}", prompt_tokens=7, cost_usd=0.5
    )
    assert ledger.record_results([flex]) == 1
    (stored,) = ledger.results_for(["a"])
    assert (stored.source, stored.status_code, stored.error) == (ResultSource.FLEX, 200, None)
    assert _tokens(path)["a"] == (7, 0, 0.5, None)


def test_answers_for_requests_not_awaiting_one_are_ignored(ledger: Ledger) -> None:
    ledger.record_requests([RequestRecord("pending", "/x", b"{}")])
    _submitted(ledger, ["ok"])
    assert ledger.record_results([_ok("pending"), _ok("unknown"), _ok("ok")]) == 1
    assert ledger.statuses(["pending", "ok"]) == {"pending": S.PENDING, "ok": S.SUCCEEDED}
    assert [r.custom_id for r in ledger.results_for(["pending", "unknown", "ok"])] == ["ok"]


def test_results_across_chunks_in_any_order(ledger: Ledger) -> None:
    ids = [f"r{i:06d}" for i in range(CHUNK_SIZE + 123)]
    _submitted(ledger, ids)
    assert ledger.record_results(_ok(i) for i in reversed(ids)) == len(ids)
    assert ledger.request_counts()["succeeded"] == len(ids)
    assert ledger.answered_ids(ids) == set(ids)
    assert sum(1 for _ in ledger.results_for(iter(ids))) == len(ids)


def test_an_outcome_that_is_not_an_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="outcome"):
        ResultRecord("a", S.QUEUED, ResultSource.BATCH)


def test_quarantine_keeps_lines_whole_and_once(ledger: Ledger, ledger_url: str) -> None:
    path = sqlite_file(ledger_url)
    lines = [
        QuarantineRecord(b'{"custom_id": "zz", garbled', "unparseable JSON", "s1", "b1", "f1", 3),
        QuarantineRecord(b'{"custom_id": "who"}', "unknown custom_id", "s1", "b1", "f1", 9),
    ]
    assert ledger.quarantine(lines) == 2
    assert ledger.quarantine(lines) == 0  # the same file read again after a crash
    with sqlite3.connect(path) as connection:
        stored = connection.execute(
            "SELECT raw, reason, line_no FROM quarantine ORDER BY id"
        ).fetchall()
    connection.close()
    assert stored == [
        (b'{"custom_id": "zz", garbled', "unparseable JSON", 3),
        (b'{"custom_id": "who"}', "unknown custom_id", 9),
    ]
