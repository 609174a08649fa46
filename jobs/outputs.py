"""Structured outputs: does an answer parse, and does it fit the job's output schema?

A job's ``[prompt].response_format`` is its output schema:

- ``json_schema`` with an inline ``schema``: checked with ``jsonschema`` (the draft the schema's
  ``$schema`` names, else 2020-12; ``format`` is not asserted);
- ``json_schema`` with ``model = "module:Class"``: the pydantic model's ``model_validate_json``;
  what is stored is the validated model dumped as JSON (by alias, defaults filled in);
- ``json_object``: any JSON object;
- ``text``, or none: nothing to check (:meth:`OutputValidator.for_job` gives ``None``).

One rule for every path — reconcile (batch lines) and the fallback (synchronous answers) both
call :meth:`OutputValidator.judge`::

    validator = OutputValidator.for_job(spec)
    verdict = validator.judge(chat_completion_body)
    if verdict.invalid:          # "invalid_output: not valid JSON: ..."
        outcome = validator.invalid_outcome     # failed, or retryable if the policy says so
    else:
        parsed_json = verdict.parsed            # stored in results.parsed_json

An answer that does not parse or fit is an *invalid output*: the request's ``last_error`` (and
the result's error) reads ``invalid_output: <reason>``, and the answer is kept whole in the
result body. With ``[policy] retry_invalid_output = 0`` (the default) the request fails; with N
it is left retryable for the fallback, which asks again while the request has made at most N
attempts. Groq's own ``400 json_validate_failed`` (its constrained decoding gave up; the body
carries ``failed_generation``) is the same thing, and treated the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for
from pydantic import BaseModel, ValidationError

from jobs.prompt import JsonObjectFormat, JsonSchemaFormat, load_model_class
from jobs.spec import JobSpec
from pipeline.errors import ConfigError
from state.status import RequestStatus

__all__ = [
    "INVALID_OUTPUT_PREFIX",
    "OutputValidator",
    "Verdict",
    "answer_content",
    "invalid_output_error",
    "is_invalid_output",
    "json_validate_failed",
]

INVALID_OUTPUT_PREFIX = "invalid_output: "
_REASON_CHARS = 300
"""Reasons are cut to this length: a schema error can quote the whole answer."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :meth:`OutputValidator.judge` found: the parsed output as JSON text, or (``invalid``
    set) the error to record, ``invalid_output: <reason>``."""

    parsed: str | None = None
    invalid: str | None = None


def invalid_output_error(reason: str) -> str:
    """The error text of an invalid output, as ``requests.last_error`` keeps it."""
    return INVALID_OUTPUT_PREFIX + reason


def is_invalid_output(error: str | None) -> bool:
    """Whether a request's ``last_error`` (or a result's error) is an invalid output."""
    return bool(error) and str(error).startswith(INVALID_OUTPUT_PREFIX)


def answer_content(body: Any) -> str | None:
    """The message content of a chat completion body (its first choice), if it has one."""
    if not isinstance(body, Mapping):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return None
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    return content if isinstance(content, str) else None


def json_validate_failed(body: Any) -> str | None:
    """If ``body`` is Groq's ``json_validate_failed`` error (a 400 whose
    ``error.code`` says the generated JSON did not validate), the reason to record; else None."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping) or error.get("code") != "json_validate_failed":
        return None
    message = str(error.get("message") or "the generated JSON did not validate")
    return _cut(f"json_validate_failed: {message}")


class OutputValidator:
    """Checks answers against one job's output schema. Build with :meth:`for_job`."""

    def __init__(
        self,
        kind: Literal["json_object", "json_schema"],
        *,
        schema: Mapping[str, Any] | None = None,
        model: type[BaseModel] | None = None,
        retries: int = 0,
    ) -> None:
        self.kind = kind
        self.model = model
        self.retries = retries
        """``[policy] retry_invalid_output``: 0 fails an invalid output, N retries it."""
        if model is not None:
            schema = model.model_json_schema()
        self.schema: Mapping[str, Any] | None = schema
        self._schema_check: Any = None
        if schema is not None and model is None:
            checker = validator_for(schema, default=Draft202012Validator)
            try:
                checker.check_schema(schema)
            except SchemaError as exc:
                raise ConfigError(
                    f"not a valid JSON schema: {exc.message}",
                    field="prompt.response_format.schema",
                ) from None
            self._schema_check = checker(schema)
        properties = (schema or {}).get("properties")
        self.field_schemas: dict[str, Any] = dict(properties) if isinstance(properties, Mapping) else {}
        """The schema's top-level properties: each parsed field, with its own schema."""

    @classmethod
    def for_job(cls, spec: JobSpec) -> OutputValidator | None:
        """The validator of ``spec``'s output schema; None when answers are free text."""
        fmt = spec.prompt_spec.response_format
        retries = spec.policy.retry_invalid_output
        if isinstance(fmt, JsonObjectFormat):
            return cls("json_object", retries=retries)
        if not isinstance(fmt, JsonSchemaFormat):
            return None
        if fmt.model is not None:
            try:
                model = load_model_class(fmt.model, str(spec.base_dir))
            except ValueError as exc:
                raise ConfigError(str(exc), field="prompt.response_format.model") from None
            return cls("json_schema", model=model, retries=retries)
        return cls("json_schema", schema=fmt.json_schema, retries=retries)

    @property
    def fields(self) -> tuple[str, ...]:
        """Names of the parsed fields the schema declares, in its order (empty if it declares
        none, as for ``json_object``)."""
        return tuple(self.field_schemas)

    @property
    def invalid_outcome(self) -> RequestStatus:
        """What an invalid output makes of its request: failed, or retryable for the fallback."""
        return RequestStatus.RETRYABLE if self.retries > 0 else RequestStatus.FAILED

    def check(self, content: str | None) -> tuple[Any | None, str | None]:
        """``(parsed, None)`` for an answer that fits, ``(None, reason)`` for one that does not."""
        if content is None:
            return None, "the answer has no message content"
        try:
            value = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            return None, _cut(f"not valid JSON: {exc}")
        if self.model is not None:
            return self._check_model(content)
        if self._schema_check is not None:
            error = best_match(self._schema_check.iter_errors(value))
            if error is not None:
                return None, _cut(f"does not fit the schema at {error.json_path}: {error.message}")
            return value, None
        if not isinstance(value, dict):
            return None, f"not a JSON object (a JSON {_json_type(value)})"
        return value, None

    def judge(self, body: Any) -> Verdict:
        """Check the content of a successful chat completion ``body``."""
        parsed, reason = self.check(answer_content(body))
        if reason is not None:
            return Verdict(invalid=invalid_output_error(reason))
        return Verdict(parsed=orjson.dumps(parsed).decode())

    def _check_model(self, content: str) -> tuple[Any | None, str | None]:
        assert self.model is not None
        try:
            instance = self.model.model_validate_json(content)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            first = errors[0] if errors else {"loc": (), "msg": str(exc)}
            where = ".".join(str(part) for part in first.get("loc", ())) or "$"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return None, _cut(
                f"does not fit {self.model.__name__} at {where}: {first.get('msg')}{more}"
            )
        return instance.model_dump(mode="json", by_alias=True), None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _cut(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"
