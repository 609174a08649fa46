"""The official ``groq`` and ``openai`` SDKs calling tools on the local server (a loopback port):
a forced function comes back as a typed tool call whose arguments fit its parameters."""

from __future__ import annotations

import json
from typing import Any

import groq
import openai
import pytest
from jsonschema import validate

from pipeline.emulator.serve import ThreadedServer
from tests.conftest import API_KEY

PARAMETERS = {"type": "object", "required": ["city", "days"], "additionalProperties": False,
              "properties": {"city": {"type": "string"},
                             "days": {"type": "integer", "minimum": 1, "maximum": 14},
                             "units": {"enum": ["metric", "imperial"]}}}
TOOLS: Any = [{"type": "function", "function": {"name": "get_forecast",
                                                "description": "The weather forecast.",
                                                "parameters": PARAMETERS}}]
MESSAGES: Any = [{"role": "user", "content": "weather in Lisbon for the weekend"}]
FORCED: Any = {"type": "function", "function": {"name": "get_forecast"}}


def test_groq_gets_a_forced_call(server: ThreadedServer) -> None:
    with groq.Groq(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        completion = client.chat.completions.create(
            model="llama-3.3-70b-versatile", messages=MESSAGES, tools=TOOLS, tool_choice=FORCED)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_forecast"]
    validate(json.loads(calls[0].function.arguments), PARAMETERS)


def test_openai_gets_a_call_when_required_and_text_when_none(server: ThreadedServer) -> None:
    with openai.OpenAI(api_key=API_KEY, base_url=server.url + "/openai/v1", max_retries=0) as client:
        required = client.chat.completions.create(
            model="llama-3.1-8b-instant", messages=MESSAGES, tools=TOOLS, tool_choice="required")
        none = client.chat.completions.create(
            model="llama-3.1-8b-instant", messages=MESSAGES, tools=TOOLS, tool_choice="none")
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="llama-3.1-8b-instant", messages=MESSAGES, tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "get_tides"}})
    calls = required.choices[0].message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].type == "function"
    validate(json.loads(calls[0].function.arguments), PARAMETERS)  # type: ignore[union-attr]
    assert none.choices[0].message.tool_calls is None
    assert isinstance(none.choices[0].message.content, str)
    assert refused.value.status_code == 400
