"""How reconcile classifies one line of a batch's output or error file, and the poll interval."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from jobs.plan import Price
from pipeline.poll import PollInterval
from pipeline.reconcile import _parse_line
from state import RequestStatus, ResultRecord, ResultSource

PRICE = Price("llama-3.1-8b-instant", input_per_m=0.05, output_per_m=0.08)
BATCH = "batch_01testbatch"
USAGE = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
              "usage": USAGE}


def response_line(status: int, body: Any, custom_id: str = "gb_a") -> bytes:
    return orjson.dumps({"id": "batch_req_1", "custom_id": custom_id,
                         "response": {"status_code": status, "request_id": "req_1", "body": body},
                         "error": None})


def error_body(code: str, message: str = "nope") -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


def parsed(raw: bytes) -> ResultRecord:
    result = _parse_line(raw, BATCH, PRICE)
    assert isinstance(result, ResultRecord), result
    return result


def test_a_200_line_succeeds_with_its_body_tokens_and_batch_price() -> None:
    result = parsed(response_line(200, COMPLETION))
    assert result.outcome is RequestStatus.SUCCEEDED
    assert (result.custom_id, result.status_code, result.batch_id) == ("gb_a", 200, BATCH)
    assert result.source is ResultSource.BATCH
    assert orjson.loads(result.body or b"") == COMPLETION
    assert (result.prompt_tokens, result.completion_tokens) == (40, 12)
    assert result.cost_usd == pytest.approx((40 * 0.05 + 12 * 0.08) / 1e6 * 0.5)
    assert result.error is None


def test_a_200_line_without_usage_costs_nothing_and_without_a_price_is_free() -> None:
    body = {k: v for k, v in COMPLETION.items() if k != "usage"}
    assert (parsed(response_line(200, body)).prompt_tokens, parsed(response_line(200, body)).cost_usd) == (0, 0.0)
    free = _parse_line(response_line(200, COMPLETION), BATCH, None)
    assert isinstance(free, ResultRecord)
    assert free.cost_usd == 0.0
    assert free.prompt_tokens == 40


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, RequestStatus.FAILED),
        (401, RequestStatus.FAILED),
        (404, RequestStatus.FAILED),
        (413, RequestStatus.FAILED),
        (422, RequestStatus.FAILED),
        (408, RequestStatus.RETRYABLE),
        (409, RequestStatus.RETRYABLE),
        (429, RequestStatus.RETRYABLE),
        (498, RequestStatus.RETRYABLE),
        (500, RequestStatus.RETRYABLE),
        (502, RequestStatus.RETRYABLE),
        (503, RequestStatus.RETRYABLE),
    ],
)
def test_an_http_error_line_keeps_its_body_and_is_failed_or_retryable(status: int,
                                                                     outcome: RequestStatus) -> None:
    body = error_body(f"code_{status}", f"answered {status}")
    result = parsed(response_line(status, body))
    assert result.outcome is outcome
    assert result.status_code == status
    assert orjson.loads(result.body or b"") == body  # kept whole
    assert orjson.loads(result.error or b"") == body["error"]
    assert (result.prompt_tokens, result.completion_tokens, result.cost_usd) == (0, 0, 0.0)


def test_an_error_answer_that_is_not_an_error_object_is_kept_as_the_error() -> None:
    result = parsed(response_line(500, "upstream went away"))
    assert result.outcome is RequestStatus.RETRYABLE
    assert orjson.loads(result.error or b"") == "upstream went away"
    assert orjson.loads(result.body or b"") == "upstream went away"


def test_usage_on_an_error_answer_is_not_counted() -> None:
    result = parsed(response_line(400, {**error_body("bad"), "usage": USAGE}))
    assert result.outcome is RequestStatus.FAILED
    assert (result.prompt_tokens, result.completion_tokens, result.cost_usd) == (0, 0, 0.0)


@pytest.mark.parametrize("code", ["batch_expired", "batch_cancelled", "request_timeout"])
def test_a_line_that_never_ran_is_retryable_with_its_error(code: str) -> None:
    error = {"code": code, "message": f"not run: {code}"}
    raw = orjson.dumps({"id": "batch_req_2", "custom_id": "gb_b", "response": None, "error": error})
    result = parsed(raw)
    assert result.outcome is RequestStatus.RETRYABLE
    assert result.custom_id == "gb_b"
    assert result.status_code is None
    assert result.body is None
    assert orjson.loads(result.error or b"") == error
    assert result.batch_id == BATCH


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"id": "batch_req_1", "custom_id": "gb_a", "respo', "not JSON"),
        (b"\x00\xff garbage", "not JSON"),
        (b'["gb_a", 200]', "not a JSON object"),
        (b'"gb_a"', "not a JSON object"),
        (b'{"id": "x", "response": {"status_code": 200, "body": {}}}', "no custom_id"),
        (b'{"custom_id": null, "response": {"status_code": 400, "body": {}}}', "no custom_id"),
        (b'{"custom_id": "", "response": {"status_code": 200, "body": {}}}', "no custom_id"),
        (b'{"custom_id": 7, "response": {"status_code": 200, "body": {}}}', "no custom_id"),
        (b'{"custom_id": "gb_a"}', "neither"),
        (b'{"custom_id": "gb_a", "response": null, "error": null}', "neither"),
        (b'{"custom_id": "gb_a", "response": {"body": {}}, "error": null}', "neither"),
        (b'{"custom_id": "gb_a", "response": {"status_code": "200", "body": {}}}', "neither"),
        (b'{"custom_id": "gb_a", "response": null, "error": "boom"}', "neither"),
    ],
)
def test_unusable_lines_go_to_the_quarantine_with_a_reason(raw: bytes, reason: str) -> None:
    result = _parse_line(raw, BATCH, PRICE)
    assert isinstance(result, str)
    assert result.startswith(reason)


def test_a_response_wins_over_an_error_on_the_same_line() -> None:
    raw = orjson.dumps({"custom_id": "gb_a", "response": {"status_code": 200, "body": COMPLETION},
                        "error": {"code": "batch_expired", "message": "late"}})
    assert parsed(raw).outcome is RequestStatus.SUCCEEDED


def test_a_trailing_newline_or_crlf_does_not_matter() -> None:
    line = response_line(200, COMPLETION)
    assert parsed(line + b"\n") == parsed(line)
    assert parsed(line + b"\r\n") == parsed(line)


# -- the poll interval ------------------------------------------------------------------------------


def test_poll_interval_starts_at_the_minimum_and_doubles_up_to_the_maximum() -> None:
    interval = PollInterval(0.5, 5.0)
    assert [interval.next(changed=False) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_poll_interval_drops_back_to_the_minimum_when_something_changes() -> None:
    interval = PollInterval(1.0, 60.0)
    for _ in range(4):
        interval.next(changed=False)
    assert interval.next(changed=True) == 1.0
    assert interval.next(changed=False) == 2.0
    assert interval.next(changed=True) == 1.0


def test_poll_interval_first_wait_is_the_minimum_whatever_changed() -> None:
    assert PollInterval(0.2, 2.0).next(changed=True) == 0.2
    assert PollInterval(0.2, 2.0).next(changed=False) == 0.2


def test_poll_interval_with_equal_bounds_is_constant() -> None:
    interval = PollInterval(3.0, 3.0)
    assert {interval.next(changed=c) for c in (False, True, False, False)} == {3.0}


def test_poll_interval_never_leaves_its_bounds() -> None:
    interval = PollInterval(0.05, 0.2)
    waits = [interval.next(changed=i % 7 == 0) for i in range(50)]
    assert min(waits) == 0.05
    assert max(waits) == 0.2
