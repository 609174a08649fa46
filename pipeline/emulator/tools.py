"""Tool calls in chat completions: ``tools`` and ``tool_choice`` checked as Groq checks them,
and answered deterministically.

- ``tool_choice`` naming a function: that function is called;
- ``"required"``: one of the tools is called, chosen by the request's digest;
- ``"auto"`` (the default when tools are given): the digest decides — an odd first byte calls
  a tool (chosen as for ``required``), an even one answers in text;
- ``"none"``: a text answer.

A call's ``arguments`` are JSON text that fits the function's ``parameters`` (filled by
:mod:`.schema_fill` from the request's words and digest); the message's ``content`` is null
and ``finish_reason`` is ``tool_calls``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import bad_request
from .schema_fill import SchemaError, fill

__all__ = ["ToolChoice", "ToolSet", "parse_tools", "tool_call"]

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ToolSet:
    """The validated ``tools`` (name → parameters schema) and ``tool_choice`` of a request."""

    functions: tuple[tuple[str, Mapping[str, Any]], ...]
    choice: str
    """``none``, ``auto``, ``required``, or ``function:<name>``."""

    def pick(self, digest: bytes) -> tuple[str, Mapping[str, Any]] | None:
        """The function this request calls, or None for a text answer."""
        if not self.functions or self.choice == "none":
            return None
        if self.choice.startswith("function:"):
            name = self.choice.removeprefix("function:")
            return next(f for f in self.functions if f[0] == name)
        if self.choice == "auto" and digest[5] % 2 == 0:
            return None
        return self.functions[digest[6] % len(self.functions)]


ToolChoice = str


def parse_tools(body: Mapping[str, Any]) -> ToolSet | None:
    """The request's tools and choice, or None if it has none; 400 when malformed."""
    raw, choice = body.get("tools"), body.get("tool_choice")
    if raw is None:
        if choice is not None and choice != "none":
            raise bad_request("`tool_choice` is only allowed when `tools` are specified",
                              param="tool_choice")
        return None
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise bad_request(f"`tools` must be an array of at most {MAX_TOOLS} tools", param="tools")
    functions: list[tuple[str, Mapping[str, Any]]] = []
    for index, tool in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise bad_request(f"`{where}.type` must be `function`", param=where)
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise bad_request(f"`{where}.function` must be an object", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise bad_request(
                f"`{where}.function.name` must be 1-64 letters, digits, underscores or dashes",
                param=f"{where}.function.name")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, Mapping):
            raise bad_request(f"`{where}.function.parameters` must be a JSON schema object",
                              param=f"{where}.function.parameters")
        functions.append((name, parameters))
    return ToolSet(tuple(functions), _choice(choice, {name for name, _ in functions}))


def _choice(choice: Any, names: set[str]) -> str:
    if choice is None:
        return "auto"
    if choice in ("none", "auto", "required"):
        return str(choice)
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if name in names:
            return f"function:{name}"
        raise bad_request(f"`tool_choice` names a function not in `tools`: {name!r}",
                          param="tool_choice")
    raise bad_request("`tool_choice` must be `none`, `auto`, `required` or "
                      "{\"type\": \"function\", \"function\": {\"name\": ...}}", param="tool_choice")


def tool_call(function: tuple[str, Mapping[str, Any]], words: list[str], digest: bytes) -> dict[str, Any]:
    """One call of ``function`` with arguments that fit its parameters."""
    name, parameters = function
    try:
        arguments = fill(parameters, words, digest)
    except (SchemaError, TypeError, ValueError, RecursionError) as exc:
        raise bad_request(f"Invalid JSON schema in the parameters of tool `{name}`: {exc}",
                          param="tools", code="invalid_json_schema") from None
    call_id = "call_" + hashlib.blake2b(digest + name.encode(), digest_size=10).hexdigest()
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}}
