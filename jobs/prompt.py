"""The ``[prompt]`` table: message templates and the request parameters sent with them.

Templates are Jinja2 (sandboxed, undefined names are errors, no HTML escaping) over the
row's columns; ``row`` is the whole row, for columns whose names are not identifiers::

    [prompt]
    system = "You are a careful annotator."
    user = '''Classify this review: {{ text }}
    Product: {{ row["product name"] }}'''
    images = ["{{ photo_url }}"]          # image_url parts, for vision models
    max_completion_tokens = 64
    response_format = "json_object"      # or a table, see JsonSchemaFormat
"""

from __future__ import annotations

import importlib
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from jobs.policy import field_error
from jobs.template import check_syntax
from jobs.tools import NamedToolChoice, ToolSpec

__all__ = [
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "PromptSpec",
    "ResponseFormat",
    "TextFormat",
    "load_model_class",
    "load_schema_model",
]

#: Body keys a config may not set through ``extra_body``, and why.
_CLASHING_KEYS = {
    "model": 'set the model with model = "..." at the top of the config',
    "messages": "messages come from [prompt].system, user and images (or [prompt].messages)",
    "stream": "batch requests cannot stream",
    "service_tier": "the batch path has no tier; set [policy.fallback].service_tier",
}
#: First-class request parameters of ``[prompt]``, sent under the same names.
_PARAMS = (
    "temperature",
    "top_p",
    "max_completion_tokens",
    "seed",
    "stop",
    "reasoning_effort",
    "reasoning_format",
    "include_reasoning",
)


class _Table(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@lru_cache(maxsize=64)
def load_schema_model(ref: str, base_dir: str) -> dict[str, Any]:
    """The JSON schema of the pydantic model named ``"package.module:Class"``.

    The config's folder is put on ``sys.path`` while importing, so a ``schemas.py`` next
    to the config can be named as ``"schemas:Invoice"``.
    """
    schema: dict[str, Any] = load_model_class(ref, base_dir).model_json_schema()
    return schema


@lru_cache(maxsize=64)
def load_model_class(ref: str, base_dir: str) -> type[BaseModel]:
    """The pydantic model class named ``"package.module:Class"`` (see :func:`load_schema_model`)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{ref!r} is not of the form 'module:Class'")
    added = base_dir not in sys.path
    if added:
        sys.path.insert(0, base_dir)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    finally:
        if added:
            sys.path.remove(base_dir)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        raise ValueError(f"{ref!r} is not a pydantic model class")
    return target


class TextFormat(_Table):
    """``{ type = "text" }``: plain text answers (the API's default)."""

    type: Literal["text"] = Field(
        description='`"text"`: plain text answers, nothing checked (the same as no '
        "`response_format`)."
    )

    def wire(self, base_dir: Path) -> dict[str, Any]:
        return {"type": "text"}


class JsonObjectFormat(_Table):
    """``{ type = "json_object" }`` (or just ``"json_object"``): JSON mode, any object."""

    type: Literal["json_object"] = Field(
        description='`"json_object"` (or just `response_format = "json_object"`): JSON mode; '
        "an answer that is not a JSON object is an invalid output."
    )

    def wire(self, base_dir: Path) -> dict[str, Any]:
        return {"type": "json_object"}


class JsonSchemaFormat(_Table):
    """``{ type = "json_schema", name = "...", schema = {...} }``, or ``model = "mod:Class"``
    instead of ``schema`` to use a pydantic model's ``model_json_schema()``."""

    type: Literal["json_schema"] = Field(
        description='`"json_schema"`: structured outputs; every answer must be JSON that '
        "fits the schema given by `schema` or `model`."
    )
    name: str = Field(
        default="response",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The schema's name, sent as `json_schema.name`: 1-64 letters, digits, "
        "`_` or `-`.",
    )
    description: str | None = Field(
        default=None,
        description="Sent as `json_schema.description`: tells the model what the schema is "
        "for. Default: not sent.",
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="The JSON schema, inline (a TOML table, YAML mapping or JSON object). "
        "Answers are validated against it with the draft its `$schema` names, else 2020-12. "
        "Give exactly one of `schema` and `model`.",
    )
    model: str | None = Field(
        default=None,
        description='A pydantic model, `"module:Class"`, whose `model_json_schema()` is sent '
        "and whose `model_validate_json` checks each answer (the config's folder is searched "
        "first when importing). Instead of `schema`.",
    )
    strict: bool | None = Field(
        default=None,
        description="Sent as `json_schema.strict`: constrained decoding on models that "
        "support it (every property required, `additionalProperties: false`). Default: not "
        "sent.",
    )

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> JsonSchemaFormat:
        if (self.json_schema is None) == (self.model is None):
            raise field_error("schema", "give exactly one of schema = {...} or model = 'mod:Class'")
        if self.model is not None:
            base = (info.context or {}).get("base_dir") or Path.cwd()
            try:
                load_schema_model(self.model, str(base))
            except ValueError as exc:
                raise field_error("model", str(exc)) from None
        return self

    def wire(self, base_dir: Path) -> dict[str, Any]:
        schema = self.json_schema
        if schema is None:
            assert self.model is not None
            schema = load_schema_model(self.model, str(base_dir))
        spec: dict[str, Any] = {"name": self.name, "schema": schema}
        if self.description is not None:
            spec["description"] = self.description
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class PromptSpec(_Table):
    """``[prompt]``: the messages of each request, and the parameters sent with them."""

    system: str | None = Field(
        default=None,
        description="The system message, a Jinja2 template over the row's columns. Default: "
        "no system message.",
    )
    user: str | None = Field(
        default=None,
        description="The user message, a Jinja2 template over the row's columns (sandboxed, "
        'no HTML escaping; `row["a b"]` for a column whose name is not an identifier). A '
        "column the row lacks rejects that row, with the reason kept in the ledger. Required "
        "unless `messages` is given.",
    )
    images: list[str] = Field(
        default=[],
        max_length=5,
        description="Templates that give image URLs (`https://…` or "
        "`data:image/…;base64,…`), sent as `image_url` parts of the user message, for vision "
        "models; at most 5. One that renders empty is left out.",
    )
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Sampling temperature, 0 to 2. Default: not sent (the model's default).",
    )
    top_p: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Nucleus sampling, 0 to 1. Default: not sent.",
    )
    max_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        description="The most tokens an answer may have; leave room for the whole answer, "
        "since a JSON answer cut off here is an invalid output. `plan` estimates completion "
        "tokens with it when `[policy.budget].expected_completion_tokens` is not set. "
        "Default: not sent.",
    )
    seed: int | None = Field(
        default=None,
        description="Sent as `seed`: asks the model for repeatable sampling. Default: not "
        "sent.",
    )
    stop: str | list[str] | None = Field(
        default=None,
        description="A stop sequence, or a list of 1 to 4. Default: not sent.",
    )
    reasoning_effort: Literal["none", "default", "low", "medium", "high"] | None = Field(
        default=None,
        description="`none`/`default` for Qwen 3; `low`/`medium`/`high` for GPT-OSS. "
        "Default: not sent.",
    )
    reasoning_format: Literal["parsed", "raw", "hidden"] | None = Field(
        default=None,
        description="How a reasoning model returns its reasoning: `parsed` (a separate "
        "`reasoning` field), `raw` (in the content) or `hidden`. Not together with "
        "`include_reasoning`. Default: not sent.",
    )
    include_reasoning: bool | None = Field(
        default=None,
        description="Return the `reasoning` field (GPT-OSS). Not together with "
        "`reasoning_format`. Default: not sent.",
    )
    response_format: ResponseFormat | None = Field(
        default=None,
        description='The output schema: `"text"`, `"json_object"`, or a table with '
        '`type = "json_schema"`. Every answer is checked against it when it arrives; one that '
        "does not parse or fit is an invalid output (see `[policy].retry_invalid_output`). "
        "Default: text, nothing checked.",
    )
    messages: str | None = Field(
        default=None,
        description=(
            'A column holding a whole conversation, e.g. "{{ conversation }}": a list of chat '
            "messages (JSONL), or that list as JSON text (a CSV cell). Each row's list is "
            "checked (roles system, developer, user, assistant, tool; content a string or a "
            "list of parts); a bad row is rejected with the message and field named. "
            "`system`, if set, is sent first. Instead of `user` and `images`."
        ),
    )
    samples: int = Field(
        default=1,
        ge=1,
        le=100,
        description=(
            "Requests per row, each with its own seed (`seed` + i, from 0 when no seed is "
            "set): Groq answers one choice per request (n = 1). Exported as one row per "
            "sample, numbered in a `groqbatch_sample` column."
        ),
    )
    extra_body: dict[str, Any] = Field(
        default={},
        description="Any other body field, sent as is (`tools`, `tool_choice`, …). It cannot "
        "set `model`, `messages`, `stream`, `service_tier`, `response_format` or a key of "
        "this table, and `n` only as 1.",
    )
    tools: list[ToolSpec] = Field(
        default=[],
        max_length=128,
        description="Functions the model may call (`[[prompt.tools]]`, each "
        "`{ type = \"function\", function = { name, description, parameters } }`). An answer "
        "that calls them is an answer.",
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None,
        description="`none`, `auto`, `required`, or `{ type = \"function\", function = "
        "{ name = \"...\" } }` to force one function: its arguments are then the structured "
        "output, checked against its parameters.",
    )

    @field_validator("system", "user", "images", "messages", mode="after")
    @classmethod
    def _templates_parse(cls, value: str | list[str] | None) -> str | list[str] | None:
        for text in [value] if isinstance(value, str) else value or []:
            check_syntax(text)
        return value

    @field_validator("response_format", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("stop", mode="after")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not 1 <= len(value) <= 4:
            raise ValueError(f"stop takes 1 to 4 sequences, not {len(value)}")
        return value

    @field_validator("extra_body", mode="after")
    @classmethod
    def _no_clash(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if key in _CLASHING_KEYS:
                raise ValueError(f"extra_body cannot set {key!r}: {_CLASHING_KEYS[key]}")
            if key == "n" and item != 1:
                raise ValueError("extra_body: n must be 1 (Groq answers one choice per request)")
            if key in _PARAMS or key == "response_format":
                raise ValueError(f"extra_body cannot set {key!r}; set [prompt].{key} instead")
        return value

    @model_validator(mode="after")
    def _user_or_messages(self) -> PromptSpec:
        if self.messages is None and self.user is None:
            # reported as the missing key it usually is (the hint: "add user = ... under [prompt]")
            raise PydanticCustomError("missing", "missing required key (or messages = "
                                      '"{{ a column }}")', {"config_field": "user"})
        if self.messages is not None and self.user is not None:
            raise field_error("messages", "set user or messages, not both (a conversation "
                              "column holds the user turns)")
        if self.messages is not None and self.images:
            raise field_error("images", "images go with user; with messages, put image_url "
                              "parts in the conversation itself")
        return self

    @model_validator(mode="after")
    def _tools(self) -> PromptSpec:
        names = [tool.function.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise field_error("tools", "two tools have the same function name")
        for key in ("tools", "tool_choice"):
            if key in self.extra_body and (self.tools or self.tool_choice is not None):
                raise field_error("extra_body", f"set [prompt].{key}, not extra_body.{key}")
        if self.tool_choice is not None and not self.tools:
            raise field_error("tool_choice", "tool_choice needs [[prompt.tools]]")
        forced = self.forced_function
        if forced is not None:
            if forced not in names:
                raise field_error(
                    "tool_choice", f"tool_choice names {forced!r}, which is not one of the tools"
                )
            if self.response_format is not None and self.response_format.type != "text":
                raise field_error(
                    "response_format",
                    "a forced function's arguments are the structured output; "
                    "drop response_format",
                )
        return self

    @property
    def forced_function(self) -> str | None:
        """The function ``tool_choice`` forces, if it names one."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return None

    def tool_parameters(self, name: str) -> dict[str, Any]:
        """The ``parameters`` schema of the tool named ``name``."""
        return next(t.function.parameters for t in self.tools if t.function.name == name)

    @model_validator(mode="after")
    def _reasoning(self) -> PromptSpec:
        if self.include_reasoning is not None and self.reasoning_format is not None:
            raise field_error(
                "include_reasoning",
                "include_reasoning and reasoning_format are mutually exclusive; keep one",
            )
        return self

    def request_params(self, base_dir: Path) -> dict[str, Any]:
        """Every body field except ``model`` and ``messages``, as sent."""
        params: dict[str, Any] = {}
        for key in _PARAMS:
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        if self.response_format is not None:
            params["response_format"] = self.response_format.wire(base_dir)
        if self.tools:
            params["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
        if self.tool_choice is not None:
            choice = self.tool_choice
            params["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
        params.update(self.extra_body)
        return params
