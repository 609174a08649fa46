"""Validate the local server's answers against Groq's OpenAPI spec.

``tests/data/groq-openapi.yaml`` is a verbatim copy of the GroqCloud API spec v2.1 (as
vendored by github.com/tryAGI/Groq, 2026-08-14), kept here so a lone clone can run the tests.

The spec is OpenAPI 3.0 (``nullable: true``) and Groq's own docs show ``null`` for optional
fields the spec types as plain strings (``output_file_id``, ``completed_at`` …). So an
optional property may be null; a required one only where the spec says ``nullable``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml

SPEC_PATH = Path(__file__).resolve().parent / "data" / "groq-openapi.yaml"


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-") or key in ("example", "examples", "discriminator"):
            continue
        if key == "$ref" and isinstance(value, str):
            out[key] = value.replace("#/components/schemas/", "#/$defs/")
        elif key == "properties" and isinstance(value, dict):
            required = set(node.get("required", ()))
            out[key] = {
                name: _convert(prop) if name in required else _nullable(_convert(prop))
                for name, prop in value.items()
            }
        else:
            out[key] = _convert(value)
    if out.pop("nullable", False):
        return _nullable(out)
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


@cache
def _spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return loaded


@cache
def _defs() -> dict[str, Any]:
    converted: dict[str, Any] = _convert(_spec()["components"]["schemas"])
    return converted


def schema_for(name: str) -> dict[str, Any]:
    return {"$defs": _defs(), "$ref": f"#/$defs/{name}"}


def response_schema_name(method: str, path_template: str, status: int) -> str:
    """The component named by the spec for this operation's answer (``ErrorResponse`` for errors)."""
    if status >= 400:
        return "ErrorResponse"
    operation = _spec()["paths"][path_template][method.lower()]
    ref: str = operation["responses"][str(status)]["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


def assert_valid(instance: Any, name: str) -> None:
    """Fail with the path and reason of the first mismatch."""
    validator = jsonschema.Draft202012Validator(schema_for(name))
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise AssertionError(f"{name} at {where}: {first.message}")


def assert_response_matches(response: httpx.Response, method: str, path_template: str) -> None:
    assert_valid(response.json(), response_schema_name(method, path_template, response.status_code))
