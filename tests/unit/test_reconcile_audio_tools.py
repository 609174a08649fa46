"""How reconcile reads a batch line of an audio job (a transcript, in any response format,
billed by seconds) and of a forced-function job (the call's arguments as the parsed output)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from jobs.outputs import OutputValidator
from jobs.plan import Price
from pipeline.reconcile import _parse_line
from state import RequestStatus, ResultRecord

PRICE = Price("whisper-large-v3", 0.0, 0.0, audio_per_hour=0.111)
TRANSCRIPTS = OutputValidator("transcript", endpoint="/v1/audio/transcriptions")
ORDER = {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}


def response_line(body: Any, status: int = 200) -> bytes:
    return orjson.dumps({"id": "batch_req_1", "custom_id": "gb_a", "error": None,
                         "response": {"status_code": status, "request_id": "req_1", "body": body}})


def parsed(raw: bytes, outputs: OutputValidator) -> ResultRecord:
    result = _parse_line(raw, "batch_1", PRICE, outputs)
    assert isinstance(result, ResultRecord), result
    return result


@pytest.mark.parametrize(("body", "seconds"), [
    ({"text": "hello", "usage": {"type": "duration", "seconds": 42}, "x_groq": {"id": "req_1"}}, 42),
    ({"text": "hello", "duration": 3.2, "segments": []}, 10),
    ("hello", 10),  # response_format = "text"
])
def test_a_transcript_line_succeeds_billed_by_its_seconds(body: Any, seconds: float) -> None:
    result = parsed(response_line(body), TRANSCRIPTS)
    assert result.outcome is RequestStatus.SUCCEEDED
    assert result.error is None
    assert orjson.loads(result.body or b"null")["text"] == "hello"
    assert (result.prompt_tokens, result.completion_tokens) == (0, 0)
    assert result.cost_usd == pytest.approx(seconds * 0.111 / 3600 * 0.5)


def test_a_chat_completion_in_an_audio_job_is_not_an_answer() -> None:
    chat = {"choices": [{"message": {"content": "hi"}}]}
    result = parsed(response_line(chat), TRANSCRIPTS)
    assert result.outcome is RequestStatus.RETRYABLE
    assert result.error is not None
    assert "not a transcript" in result.error


def test_a_forced_call_line_keeps_its_arguments_or_is_an_invalid_output() -> None:
    forced = OutputValidator("tool_call", schema=ORDER, function="record_order", retries=1)

    def call(arguments: str) -> dict[str, Any]:
        return {"choices": [{"message": {"content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "record_order", "arguments": arguments}}]}}]}

    good = parsed(response_line(call('{"sku": "A-1"}')), forced)
    assert good.outcome is RequestStatus.SUCCEEDED
    assert orjson.loads(good.parsed or "null") == {"sku": "A-1"}
    bad = parsed(response_line(call('{"sku": 7}')), forced)
    assert bad.outcome is RequestStatus.RETRYABLE  # retry_invalid_output = 1
    assert bad.error is not None
    assert bad.error.startswith("invalid_output: does not fit the schema at $.sku")
