"""``[prompt] tools`` and ``tool_choice``: validation naming the line, the request body, forced
arguments judged like a json_schema output, and the local server's deterministic calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs import JobSpec, RequestBuilder, load_job
from jobs.answers import judge_answer
from jobs.outputs import OutputValidator
from pipeline.emulator.errors import APIProblem
from pipeline.emulator.models import ModelRegistry
from pipeline.emulator.responder import Responder
from pipeline.errors import ConfigError

TOOLS_TOML = """\
name = "orders"
model = "llama-3.1-8b-instant"

[input]
path = "rows.jsonl"

[prompt]
user = "Extract the order: {{ text }}"
tool_choice = { type = "function", function = { name = "record_order" } }

[[prompt.tools]]
type = "function"
function = { name = "record_order", description = "Record one order.", parameters = { type = "object", required = ["sku", "quantity"], properties = { sku = { type = "string" }, quantity = { type = "integer", minimum = 1 } } } }

[[prompt.tools]]
type = "function"
function = { name = "flag_spam", parameters = { type = "object", properties = { reason = { type = "string" } } } }
"""
PARAMETERS = {"type": "object", "required": ["sku", "quantity"],
              "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}}


def load(tmp_path: Path, text: str) -> JobSpec:
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return load_job(path)


def load_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


def call(name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": name, "arguments": text}}]}}]}


def test_tools_and_tool_choice_are_sent_as_the_api_takes_them(tmp_path: Path) -> None:
    spec = load(tmp_path, TOOLS_TOML)
    body = RequestBuilder(spec).body({"text": "two mugs"})
    assert body["tool_choice"] == {"type": "function", "function": {"name": "record_order"}}
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "record_order", "description": "Record one order.", "parameters": PARAMETERS}}
    assert body["tools"][1]["function"]["name"] == "flag_spam"
    auto = load(tmp_path, TOOLS_TOML.replace(
        'tool_choice = { type = "function", function = { name = "record_order" } }',
        'tool_choice = "required"'))
    assert RequestBuilder(auto).body({"text": "x"})["tool_choice"] == "required"
    assert OutputValidator.for_job(auto) is None  # not forced: no structured output


@pytest.mark.parametrize(("change", "line", "field", "words"), [
    (('name = "record_order", description', 'name = "record order", description'), 13,
     "prompt.tools[0].function.name", "pattern"),
    (('name = "record_order" } }', 'name = "record_ordr" } }'), 9, "prompt.tool_choice",
     "not one of the tools"),
    (("quantity = { type = \"integer\"", "quantity = { type = \"int\""), 13,
     "prompt.tools[0].function.parameters", "not a valid JSON schema"),
    (('tool_choice = { type = "function", function = { name = "record_order" } }',
      'tool_choice = "always"'), 9, "prompt.tool_choice", "none"),
    (('name = "flag_spam"', 'name = "record_order"'), 11, "prompt.tools", "same function name"),
])
def test_bad_tools_name_the_line(tmp_path: Path, change: tuple[str, str], line: int, field: str,
                                 words: str) -> None:
    error = load_error(tmp_path, TOOLS_TOML.replace(*change))
    assert (error.line, error.field) == (line, field), str(error)
    assert words in error.message


def test_tool_choice_needs_tools_and_excludes_a_response_format(tmp_path: Path) -> None:
    no_tools = TOOLS_TOML.split("[[prompt.tools]]")[0]
    assert load_error(tmp_path, no_tools).field == "prompt.tool_choice"
    both = TOOLS_TOML.replace('user = "Extract', 'response_format = "json_object"\nuser = "Extract')
    assert load_error(tmp_path, both).field == "prompt.response_format"
    twice = TOOLS_TOML.replace('user = "Extract', 'extra_body = { tool_choice = "auto" }\nuser = "Extract')
    assert load_error(tmp_path, twice).field == "prompt.extra_body"


def test_forced_arguments_are_the_structured_output(tmp_path: Path) -> None:
    validator = OutputValidator.for_job(load(tmp_path, TOOLS_TOML))
    assert validator is not None
    assert validator.kind == "tool_call"
    assert validator.fields == ("sku", "quantity")
    good = validator.judge(call("record_order", {"sku": "MUG-1", "quantity": 2}))
    assert good.invalid is None
    assert orjson.loads(good.parsed or "null") == {"sku": "MUG-1", "quantity": 2}
    cases = {
        "does not fit the schema at $.quantity": call("record_order", {"sku": "M", "quantity": 0}),
        "not valid JSON": call("record_order", '{"sku": '),
        "does not call 'record_order' (it calls flag_spam)": call("flag_spam", {}),
        "does not call 'record_order' (no tool_calls)":
            {"choices": [{"message": {"content": "I cannot"}}]},
    }
    for words, body in cases.items():
        verdict = validator.judge(body)
        assert verdict.parsed is None
        assert verdict.invalid is not None
        assert verdict.invalid.startswith("invalid_output: ")
        assert words in verdict.invalid, verdict.invalid


def test_a_tool_call_with_null_content_is_an_answer() -> None:
    body = call("record_order", {"sku": "A", "quantity": 1})
    assert judge_answer(body)[1] is None
    assert judge_answer({"choices": [{"message": {"content": None, "tool_calls": []}}]})[1] is not None


# -- the local server --------------------------------------------------------------------------


def chat(choice: Any, text: str = "two mugs please", tools: list[Any] | None = None) -> dict[str, Any]:
    tools = tools if tools is not None else [
        {"type": "function", "function": {"name": "record_order", "parameters": PARAMETERS}},
        {"type": "function", "function": {"name": "flag_spam"}}]
    body: dict[str, Any] = {"model": "llama-3.1-8b-instant", "tools": tools,
                            "messages": [{"role": "user", "content": text}]}
    if choice is not None:
        body["tool_choice"] = choice
    return body


def test_the_server_calls_a_forced_function_with_arguments_that_fit() -> None:
    responder = Responder(ModelRegistry())
    forced = {"type": "function", "function": {"name": "record_order"}}
    first = responder.complete(chat(forced), service_tier="on_demand")
    again = responder.complete(chat(forced), service_tier="on_demand")
    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (called,) = choice["message"]["tool_calls"]
    assert called["function"]["name"] == "record_order"
    arguments = orjson.loads(called["function"]["arguments"])
    assert set(arguments) >= {"sku", "quantity"}
    assert arguments["quantity"] >= 1
    assert again["choices"][0]["message"]["tool_calls"] == choice["message"]["tool_calls"]
    assert first["usage"]["completion_tokens"] > 0


def test_required_always_calls_auto_decides_by_digest_and_none_never() -> None:
    responder = Responder(ModelRegistry())
    texts = [f"order number {i}" for i in range(24)]
    required = [responder.complete(chat("required", t), service_tier="on_demand") for t in texts]
    assert all(r["choices"][0]["message"]["tool_calls"] for r in required)
    auto = [responder.complete(chat("auto", t), service_tier="on_demand") for t in texts]
    called = [bool(r["choices"][0]["message"].get("tool_calls")) for r in auto]
    assert any(called)
    assert not all(called)
    assert called == [bool(responder.complete(chat(None, t), service_tier="on_demand")
                           ["choices"][0]["message"].get("tool_calls")) for t in texts]
    none = responder.complete(chat("none"), service_tier="on_demand")
    assert isinstance(none["choices"][0]["message"]["content"], str)


@pytest.mark.parametrize(("body", "param"), [
    (chat({"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    (chat("auto", tools=[{"type": "function", "function": {"name": "bad name"}}]),
     "tools[0].function.name"),
    (chat("auto", tools=[{"type": "retrieval"}]), "tools[0]"),
    ({"model": "llama-3.1-8b-instant", "tool_choice": "required",
      "messages": [{"role": "user", "content": "x"}]}, "tool_choice"),
])
def test_the_server_refuses_malformed_tools(body: dict[str, Any], param: str) -> None:
    with pytest.raises(APIProblem) as info:
        Responder(ModelRegistry()).complete(body, service_tier="on_demand")
    assert info.value.status_code == 400
    assert info.value.body()["error"]["param"] == param
