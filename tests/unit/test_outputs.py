"""Structured outputs: the validator, and how batch lines and flex answers are judged by it."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs import load_job
from jobs.outputs import OutputValidator, answer_content, json_validate_failed
from jobs.plan import Price
from pipeline.errors import ConfigError, PermanentAPIError
from pipeline.flex import Budget, FlexReport, _Call, _Stage, eligible, trigger_of
from pipeline.reconcile import _parse_line
from pipeline.retry import RetryPolicy
from state import RequestStatus, ResultRecord

PRICE = Price("llama-3.1-8b-instant", input_per_m=0.05, output_per_m=0.08)
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["topic", "urgent"],
    "properties": {
        "topic": {"type": "string", "enum": ["billing", "bug"]},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
USAGE = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}


def completion(content: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "usage": USAGE,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]}


def line(status: int, body: Any, custom_id: str = "gb_a") -> bytes:
    return orjson.dumps({"id": "batch_req_1", "custom_id": custom_id, "error": None,
                         "response": {"status_code": status, "request_id": "req_1", "body": body}})


def json_validate_failed_body() -> dict[str, Any]:
    return {"error": {"message": "Failed to validate JSON. Please adjust your prompt.",
                      "type": "invalid_request_error", "code": "json_validate_failed",
                      "failed_generation": '{"topic": "billing", "urgent": "yes"'}}


def judged(raw: bytes, outputs: OutputValidator | None) -> ResultRecord:
    result = _parse_line(raw, "batch_1", PRICE, outputs)
    assert isinstance(result, ResultRecord), result
    return result


def job(tmp_path: Path, response_format: str, *, policy: str = "") -> Path:
    (tmp_path / "rows.jsonl").write_text('{"id": 1, "text": "hi"}\n')
    config = tmp_path / "job.toml"
    config.write_text(textwrap.dedent(f"""\
        name = "outputs"
        backend = "local"
        model = "llama-3.1-8b-instant"
        [input]
        path = "rows.jsonl"
        id_column = "id"
        [prompt]
        user = "{{{{ text }}}}"
        {response_format}
        [policy]
        {policy}
        """))
    return config


# -- the validator ------------------------------------------------------------------------------


def test_a_schema_answer_that_fits_is_parsed() -> None:
    validator = OutputValidator("json_schema", schema=SCHEMA)
    parsed, reason = validator.check('{"topic": "bug", "urgent": true, "tags": ["a"]}')
    assert reason is None
    assert parsed == {"topic": "bug", "urgent": True, "tags": ["a"]}
    assert validator.fields == ("topic", "urgent", "tags")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"topic": "bug", "urgent": tru', "not valid JSON"),
        ("Sure! Here is the JSON you asked for", "not valid JSON"),
        ('{"topic": "shipping", "urgent": true}', "does not fit the schema at $.topic: 'shipping' is not one of"),
        ('{"topic": "bug"}', "does not fit the schema at $: 'urgent' is a required property"),
        ('{"topic": "bug", "urgent": true, "tags": [3]}', "does not fit the schema at $.tags[0]"),
        ('{"topic": "bug", "urgent": true, "extra": 1}', "Additional properties are not allowed"),
        (None, "the answer has no message content"),
    ],
)
def test_a_schema_answer_that_does_not_parse_or_fit_gives_the_reason(content: str | None,
                                                                    reason: str) -> None:
    parsed, found = OutputValidator("json_schema", schema=SCHEMA).check(content)
    assert parsed is None
    assert found is not None
    assert reason in found


def test_json_object_wants_an_object_and_nothing_more() -> None:
    validator = OutputValidator("json_object")
    assert validator.check('{"anything": [1, 2]}') == ({"anything": [1, 2]}, None)
    assert validator.check("[1, 2]") == (None, "not a JSON object (a JSON array)")
    assert validator.check('"text"') == (None, "not a JSON object (a JSON string)")
    assert validator.fields == ()


def test_a_long_reason_is_cut() -> None:
    _, reason = OutputValidator("json_schema", schema=SCHEMA).check(
        orjson.dumps({"topic": "x" * 2000, "urgent": True}).decode())
    assert reason is not None
    assert len(reason) <= 300
    assert reason.endswith("…")


def test_a_pydantic_model_named_in_the_config_validates_answers(tmp_path: Path) -> None:
    (tmp_path / "ticket_schemas.py").write_text(textwrap.dedent("""\
        from pydantic import BaseModel, Field

        class Ticket(BaseModel):
            topic: str
            urgent: bool
            score: int = Field(ge=0, le=5)
            note: str | None = None
        """))
    spec = load_job(job(tmp_path, 'response_format = { type = "json_schema", model = "ticket_schemas:Ticket" }'))
    validator = OutputValidator.for_job(spec)
    assert validator is not None
    assert validator.model is not None
    assert validator.model.__name__ == "Ticket"
    assert validator.fields == ("topic", "urgent", "score", "note")
    parsed, reason = validator.check('{"topic": "bug", "urgent": false, "score": 4}')
    assert reason is None
    assert parsed == {"topic": "bug", "urgent": False, "score": 4, "note": None}  # defaults filled
    parsed, reason = validator.check('{"topic": "bug", "urgent": false, "score": 9}')
    assert parsed is None
    assert reason is not None
    assert reason.startswith("does not fit Ticket at score: ")
    reason = validator.check('{"topic": "bug"')[1]
    assert reason is not None
    assert reason.startswith("not valid JSON: ")


def test_for_job_follows_the_response_format_and_the_policy(tmp_path: Path) -> None:
    assert OutputValidator.for_job(load_job(job(tmp_path, ""))) is None
    assert OutputValidator.for_job(load_job(job(tmp_path, 'response_format = "text"'))) is None
    plain = OutputValidator.for_job(load_job(job(tmp_path, 'response_format = "json_object"')))
    assert plain is not None
    assert (plain.kind, plain.retries, plain.invalid_outcome) == ("json_object", 0, RequestStatus.FAILED)
    retrying = OutputValidator.for_job(load_job(job(tmp_path, 'response_format = "json_object"',
                                                    policy="retry_invalid_output = 2")))
    assert retrying is not None
    assert (retrying.retries, retrying.invalid_outcome) == (2, RequestStatus.RETRYABLE)


def test_a_schema_that_is_not_a_json_schema_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid JSON schema"):
        OutputValidator("json_schema", schema={"type": "object", "properties": {"a": {"type": 7}}})


def test_answer_content_and_json_validate_failed_read_the_bodies() -> None:
    assert answer_content(completion("hi")) == "hi"
    assert answer_content({"choices": []}) is None
    assert answer_content("nonsense") is None
    reason = json_validate_failed(json_validate_failed_body())
    assert reason == "json_validate_failed: Failed to validate JSON. Please adjust your prompt."
    assert json_validate_failed({"error": {"code": "invalid_request_error"}}) is None


# -- batch lines ------------------------------------------------------------------------------


def test_a_200_line_that_fits_succeeds_with_its_parsed_output() -> None:
    content = '{"topic": "billing", "urgent": true}'
    result = judged(line(200, completion(content)), OutputValidator("json_schema", schema=SCHEMA))
    assert result.outcome is RequestStatus.SUCCEEDED
    assert orjson.loads(result.parsed or "") == {"topic": "billing", "urgent": True}
    assert result.error is None


def test_without_an_output_schema_nothing_is_parsed() -> None:
    result = judged(line(200, completion("free text")), None)
    assert (result.outcome, result.parsed, result.error) == (RequestStatus.SUCCEEDED, None, None)


@pytest.mark.parametrize(
    ("content", "reason"),
    [("not json at all", "not valid JSON"),
     ('{"topic": "refund", "urgent": true}', "does not fit the schema at $.topic")],
)
def test_a_200_line_that_does_not_fit_is_an_invalid_output_kept_whole_and_paid(content: str,
                                                                              reason: str) -> None:
    body = completion(content)
    result = judged(line(200, body), OutputValidator("json_schema", schema=SCHEMA))
    assert result.outcome is RequestStatus.FAILED
    assert result.error is not None
    assert result.error.startswith(f"invalid_output: {reason}")
    assert result.parsed is None
    assert orjson.loads(result.body or b"") == body  # the raw answer is kept
    assert (result.status_code, result.prompt_tokens, result.completion_tokens) == (200, 30, 9)
    assert result.cost_usd > 0


def test_an_invalid_output_is_retryable_when_the_policy_retries() -> None:
    validator = OutputValidator("json_object", retries=1)
    result = judged(line(200, completion("[1, 2]")), validator)
    assert result.outcome is RequestStatus.RETRYABLE
    assert result.error == "invalid_output: not a JSON object (a JSON array)"
    assert trigger_of(result.error) == "invalid_output"
    assert eligible(result.error, frozenset())  # the knob is its trigger, whatever the triggers


def test_groqs_json_validate_failed_400_is_an_invalid_output() -> None:
    body = json_validate_failed_body()
    failed = judged(line(400, body), OutputValidator("json_schema", schema=SCHEMA))
    assert failed.outcome is RequestStatus.FAILED
    assert failed.error == ("invalid_output: json_validate_failed: Failed to validate JSON. "
                            "Please adjust your prompt.")
    assert orjson.loads(failed.body or b"") == body
    retried = judged(line(400, body), OutputValidator("json_schema", schema=SCHEMA, retries=2))
    assert retried.outcome is RequestStatus.RETRYABLE
    other = judged(line(400, {"error": {"message": "bad", "code": "invalid_request_error"}}),
                   OutputValidator("json_schema", schema=SCHEMA, retries=2))
    assert other.outcome is RequestStatus.FAILED
    assert other.error is not None
    assert not other.error.startswith("invalid_output")


# -- flex answers -----------------------------------------------------------------------------


def flex_stage(tmp_path: Path, policy: str) -> _Stage:
    spec = load_job(job(tmp_path, 'response_format = "json_object"', policy=policy))
    return _Stage(None, None, spec, PRICE, FlexReport(), Budget(None, None, None, 0, 0, 0.0),  # type: ignore[arg-type]
                  frozenset(), RetryPolicy(), frozenset())


def test_flex_judges_its_answers_by_the_same_rule(tmp_path: Path) -> None:
    from pipeline.client import ChatReply

    stage = flex_stage(tmp_path, "retry_invalid_output = 1")
    call = _Call("gb_a", {}, 1, 100, 0.0)
    ok = stage._succeeded(call, ChatReply(completion('{"a": 1}'), None, None))  # type: ignore[arg-type]
    assert (ok.outcome, ok.parsed) == (RequestStatus.SUCCEEDED, '{"a":1}')
    bad = stage._succeeded(call, ChatReply(completion("{"), None, None))  # type: ignore[arg-type]
    assert bad.outcome is RequestStatus.RETRYABLE
    assert bad.error is not None
    assert bad.error.startswith("invalid_output: not valid JSON")
    assert bad.completion_tokens == 9
    assert bad.cost_usd > 0
    refused = stage._failed(call, PermanentAPIError("bad", status_code=400,
                                                    body=json_validate_failed_body()))
    assert refused.outcome is RequestStatus.RETRYABLE
    assert refused.error is not None
    assert refused.error.startswith("invalid_output: json_validate_failed")
    stage._count(bad)
    assert (stage.report.invalid_output, stage.report.requeued, stage.report.completion_tokens) == (1, 1, 9)
