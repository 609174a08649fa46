"""Tool calls: ``[prompt] tools`` and ``tool_choice``, and answers that are calls.

Tools are written as the API takes them (OpenAI's shape, which Groq follows)::

    [prompt]
    user = "Extract the order from: {{ text }}"
    tool_choice = { type = "function", function = { name = "record_order" } }

    [[prompt.tools]]
    type = "function"
    function = { name = "record_order", description = "Record one order.", parameters = {
        type = "object", required = ["sku", "quantity"],
        properties = { sku = { type = "string" }, quantity = { type = "integer" } } } }

A function's ``name`` is 1-64 letters, digits, ``_`` or ``-``; its ``parameters`` must be a
valid JSON schema (checked as a ``json_schema`` output's is). ``tool_choice`` is ``"none"``,
``"auto"``, ``"required"`` or one named function; naming a function *forces* it, and then the
call's ``arguments`` are the job's structured output: parsed and checked against that
function's ``parameters`` like a ``json_schema`` answer (:mod:`jobs.outputs`).

An answer whose message has ``tool_calls`` (``content`` null) is an answer; the export keeps
the calls in ``groqbatch_tool_calls``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "FunctionSpec",
    "NamedToolChoice",
    "ToolSpec",
    "tool_calls_of",
]

FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class _Table(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FunctionSpec(_Table):
    """A function the model may call."""

    name: str = Field(
        pattern=FUNCTION_NAME,
        description="The function's name: 1 to 64 letters, digits, underscores or dashes.",
    )
    description: str | None = Field(
        default=None, description="What the function does, for the model to choose by."
    )
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="A JSON schema of the arguments (an object). A forced function's arguments "
        "are checked against it.",
    )
    strict: bool | None = Field(
        default=None, description="Constrained decoding of the arguments on models that support it."
    )

    @field_validator("parameters", mode="after")
    @classmethod
    def _json_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        checker = validator_for(value, default=Draft202012Validator)
        try:
            checker.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"parameters is not a valid JSON schema: {exc.message}") from None
        if value.get("type", "object") != "object":
            raise ValueError("parameters must describe an object (type = \"object\")")
        return value


class ToolSpec(_Table):
    """``[[prompt.tools]]``: one tool, ``{ type = "function", function = {...} }``."""

    type: Literal["function"] = Field(description='The kind of tool: always "function", the only kind Groq accepts.')
    function: FunctionSpec = Field(description="The function: name, description, parameters.")


class _FunctionName(_Table):
    name: str = Field(pattern=FUNCTION_NAME, description="The name of one of the job's tools.")


class NamedToolChoice(_Table):
    """``{ type = "function", function = { name = "..." } }``: force that function."""

    type: Literal["function"] = Field(description='What is forced: always "function", naming one of the job'"'"'s tools below.')
    function: _FunctionName = Field(description="Which function must be called.")


def tool_calls_of(body: Any) -> list[Any] | None:
    """The ``tool_calls`` of a chat completion's first choice, if it has any."""
    if not isinstance(body, Mapping):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return None
    message = choices[0].get("message")
    calls = message.get("tool_calls") if isinstance(message, Mapping) else None
    return calls if isinstance(calls, list) and calls else None
