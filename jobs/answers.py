"""What counts as an answer: a server is trusted for nothing it does not prove (DESIGN.md).

A ``200`` batch line or flex reply is an answer only if its body is a chat completion whose
first choice has a message with ``content`` (a string) or ``tool_calls`` (a non-empty list).
A body sent as a JSON *string* holding the completion (one open-source batch server writes it
that way) is parsed once and judged the same. Anything else — ``null``, ``{}``, no or empty
``choices``, ``content: null`` with no ``tool_calls``, a string that is not JSON — is not an
answer: the line is quarantined with the reason and its request goes back to retryable, never
``succeeded`` without an answer.

    >>> judge_answer({"choices": [{"message": {"content": "hi"}}]})[1] is None
    True
    >>> judge_answer('{"choices": [{"message": {"content": "hi"}}]}')[0]["choices"][0]["message"]
    {'content': 'hi'}
    >>> judge_answer({"choices": []})[1]
    'not an answer: the body has no choices'
"""

from __future__ import annotations

from typing import Any

import orjson

from jobs.audio import is_audio, transcript_text

__all__ = ["NOT_AN_ANSWER", "is_not_an_answer", "judge_answer"]

NOT_AN_ANSWER = "not an answer: "
"""How the reason starts, in ``last_error`` and the quarantine."""


def judge_answer(body: Any, endpoint: str = "/v1/chat/completions") -> tuple[Any, str | None]:
    """(the body — parsed, if it came as a JSON string —, None) for an answer, else (the body,
    the reason it is not one).

    For an audio ``endpoint`` the answer is a transcript: ``{"text": "..."}`` (``json``,
    ``verbose_json``), or the text itself (``response_format = "text"``).
    """
    if is_audio(endpoint):
        return _judge_transcript(body)
    if isinstance(body, str):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, NOT_AN_ANSWER + "the body is a string that is not JSON (cut short?)"
    if body is None:
        return body, NOT_AN_ANSWER + "the body is null"
    if not isinstance(body, dict):  # JSON objects parse to dict; the ABC check is slower
        return body, NOT_AN_ANSWER + f"the body is a JSON {_kind(body)}, not a chat completion"
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return body, NOT_AN_ANSWER + "the body has no choices"
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        return body, NOT_AN_ANSWER + "the first choice has no message"
    if isinstance(message.get("content"), str):
        return body, None
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return body, None
    return body, NOT_AN_ANSWER + "the first choice's message has neither content nor tool_calls"


def _judge_transcript(body: Any) -> tuple[Any, str | None]:
    if isinstance(body, str):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            # response_format = "text": the body is the transcript. Kept as {"text": ...},
            # the shape the client gives a synchronous text/plain answer, so one reader serves both.
            return {"text": body}, None
        if isinstance(parsed, str):  # a text answer sent as a JSON string
            return {"text": parsed}, None
        if isinstance(parsed, dict):
            body = parsed
    if body is None:
        return body, NOT_AN_ANSWER + "the body is null"
    if transcript_text(body) is None:
        return body, NOT_AN_ANSWER + "the body is not a transcript (no text)"
    return body, None


def is_not_an_answer(error: str | None) -> bool:
    """Whether a recorded error is :func:`judge_answer`'s verdict (possibly prefixed)."""
    return error is not None and NOT_AN_ANSWER in error


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
