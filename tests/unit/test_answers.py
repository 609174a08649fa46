"""What counts as an answer (issue 11, case 1): a 200 line or flex reply whose body is not a
chat completion with a first choice holding ``content`` or ``tool_calls`` is never recorded as
succeeded; a body sent as a JSON string is parsed and judged the same."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from jobs.answers import NOT_AN_ANSWER, judge_answer
from pipeline.reconcile import _parse_line
from state import RequestStatus, ResultRecord
from tests.unit.test_reconcile_lines import BATCH, COMPLETION, PRICE, USAGE, response_line

TOOL_CALL = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function",
     "function": {"name": "extract", "arguments": '{"x": 1}'}}]}}], "usage": USAGE}

NOT_ANSWERS: list[tuple[str, Any, str]] = [
    ("null", None, "the body is null"),
    ("empty object", {}, "no choices"),
    ("no choices", {"id": "x", "usage": USAGE}, "no choices"),
    ("empty choices", {"choices": [], "usage": USAGE}, "no choices"),
    ("no message", {"choices": [{"index": 0}]}, "no message"),
    ("content null, no tool_calls", {"choices": [{"message": {"content": None}}]}, "neither"),
    ("content null, empty tool_calls",
     {"choices": [{"message": {"content": None, "tool_calls": []}}]}, "neither"),
    ("a number", 42, "a JSON number"),
    ("a list", [COMPLETION], "a JSON array"),
    ("a truncated string", orjson.dumps(COMPLETION).decode()[:40], "not JSON"),
    ("a string holding null", "null", "the body is null"),
]


@pytest.mark.parametrize(("name", "body", "reason"), NOT_ANSWERS, ids=[n for n, _, _ in NOT_ANSWERS])
def test_what_is_not_an_answer_says_why(name: str, body: Any, reason: str) -> None:
    _, problem = judge_answer(body)
    assert problem is not None
    assert problem.startswith(NOT_AN_ANSWER)
    assert reason in problem


@pytest.mark.parametrize("body", [COMPLETION, TOOL_CALL, orjson.dumps(COMPLETION).decode(),
                                  {"choices": [{"message": {"content": ""}}]}])
def test_answers_pass(body: Any) -> None:
    normal, problem = judge_answer(body)
    assert problem is None
    assert isinstance(normal, dict)


@pytest.mark.parametrize(("name", "body", "reason"), NOT_ANSWERS, ids=[n for n, _, _ in NOT_ANSWERS])
def test_a_200_line_that_is_not_an_answer_is_retryable_never_succeeded(
    name: str, body: Any, reason: str
) -> None:
    result = _parse_line(response_line(200, body), BATCH, PRICE)
    assert isinstance(result, ResultRecord)
    assert result.outcome is RequestStatus.RETRYABLE
    assert result.error is not None
    assert reason in result.error


def test_a_body_sent_as_a_string_is_parsed_and_kept_as_the_completion() -> None:
    result = _parse_line(response_line(200, orjson.dumps(COMPLETION).decode()), BATCH, PRICE)
    assert isinstance(result, ResultRecord)
    assert result.outcome is RequestStatus.SUCCEEDED
    assert orjson.loads(result.body or b"") == COMPLETION
    assert (result.prompt_tokens, result.completion_tokens) == (40, 12)


def test_a_tool_call_answer_succeeds() -> None:
    result = _parse_line(response_line(200, TOOL_CALL), BATCH, PRICE)
    assert isinstance(result, ResultRecord)
    assert result.outcome is RequestStatus.SUCCEEDED


def test_a_paid_non_answer_still_counts_its_tokens() -> None:
    result = _parse_line(response_line(200, {"choices": [], "usage": USAGE}), BATCH, PRICE)
    assert isinstance(result, ResultRecord)
    assert (result.prompt_tokens, result.completion_tokens) == (40, 12)
