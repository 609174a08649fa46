"""How the ledger stores bodies (short ones as they are, long ones zlib), and the bulk paths."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest

from state import Ledger, RequestRecord, RequestStatus, ResultRecord, ResultSource, RowRecord
from state.engine import COMPRESS_MIN_BYTES, compress, decompress

S = RequestStatus


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b'{"model":"m","messages":[]}',
        b"x-not-json-but-starts-like-zlib",
        b'{"text":"' + b"a" * COMPRESS_MIN_BYTES + b'"}',
    ],
)
def test_a_body_comes_back_as_stored(body: bytes) -> None:
    assert decompress(compress(body)) == body


def test_short_bodies_are_kept_as_they_are_and_long_ones_compressed() -> None:
    short = b'{"a":1}'
    long = b'{"text":"' + b"ab" * COMPRESS_MIN_BYTES + b'"}'
    assert compress(short) == short
    assert compress(long) == zlib.compress(long, 1)


def test_a_body_stored_compressed_by_an_earlier_groqbatch_still_reads() -> None:
    body = b'{"model":"m"}'
    assert decompress(zlib.compress(body, 1)) == body


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        opened.record_job("enrich", "h", "{}")
        yield opened


def test_bodies_of_both_forms_round_trip_through_the_ledger(ledger: Ledger) -> None:
    bodies = {"short": b'{"n":1}', "long": b'{"text":"' + b"z" * 2 * COMPRESS_MIN_BYTES + b'"}'}
    ledger.record_requests(RequestRecord(k, "/v1/chat/completions", b) for k, b in bodies.items())
    ledger.record_rows("enrich", (RowRecord(k, n, k, None) for n, k in enumerate(bodies)))
    assert dict(ledger.iter_pending("enrich")) == bodies
    ids = list(bodies)
    ledger.transition(ids, S.PENDING, S.QUEUED)
    ledger.transition(ids, S.QUEUED, S.SUBMITTED)
    ledger.record_results(ResultRecord(k, S.SUCCEEDED, ResultSource.BATCH, 200, b) for k, b in bodies.items())
    assert {r.custom_id: r.body for r in ledger.results_for(ids)} == bodies


def test_record_result_chunk_says_what_each_id_was_before(ledger: Ledger) -> None:
    ledger.record_requests(RequestRecord(k, "/v1/chat/completions", b"{}") for k in ("a", "b", "p"))
    ledger.record_rows("enrich", (RowRecord(k, n, k, None) for n, k in enumerate("abp")))
    ledger.transition(["a", "b"], S.PENDING, S.QUEUED)
    ledger.transition(["a", "b"], S.QUEUED, S.SUBMITTED)

    def answer(custom_id: str, outcome: RequestStatus = S.SUCCEEDED) -> ResultRecord:
        return ResultRecord(custom_id, outcome, ResultSource.BATCH, 200, b"{}", prompt_tokens=3)

    before, taken = ledger.record_result_chunk(
        [answer("b", S.FAILED), answer("a"), answer("a", S.FAILED), answer("p"), answer("nope")]
    )
    assert before == {"a": S.SUBMITTED, "b": S.SUBMITTED, "p": S.PENDING}  # "nope": unknown
    assert taken == {"a", "b"}
    assert ledger.statuses(["a", "b", "p"]) == {"a": S.SUCCEEDED, "b": S.FAILED, "p": S.PENDING}
    assert ledger.request_totals("enrich")["prompt_tokens"] == 6  # a once, b once
    again = ledger.record_result_chunk([answer("a", S.FAILED)])
    assert again == ({"a": S.SUCCEEDED}, frozenset())
    assert ledger.statuses(["a"]) == {"a": S.SUCCEEDED}
