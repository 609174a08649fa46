"""Small HTTP helpers shared by the route modules: JSON responses, bodies, query parsing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .errors import APIProblem, bad_request


class JSONResponse(Response):
    """``application/json`` rendered with orjson, ending in a newline as Groq's bodies do."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content) + b"\n"


def problem_response(problem: APIProblem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status_code, headers=problem.headers)


async def json_body(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request's JSON object. An empty body is ``{}`` when allowed (SDKs send
    ``Content-Type: application/json`` with no body on cancel)."""
    raw = await request.body()
    if not raw.strip():
        if allow_empty:
            return {}
        raise bad_request("The request body must be a JSON object.")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise bad_request("The request body must be a JSON object.")
    return value


def query_ids(request: Request, name: str = "id") -> list[str]:
    """A repeated id filter in every encoding the SDKs use: ``id=a&id=b``, ``id=a,b``, ``id[]=a``."""
    ids: list[str] = []
    for key, value in request.query_params.multi_items():
        if key in (name, f"{name}[]"):
            ids.extend(part for part in value.split(",") if part)
    return ids


def query_int(params: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"`{name}` must be an integer, got {raw!r}", param=name) from None
    if not low <= value <= high:
        raise bad_request(f"`{name}` must be between {low} and {high}, got {value}", param=name)
    return value


class ConnectionDropped(Exception):
    """Raised inside the app to make the server close the connection mid-answer."""


class DroppedResponse(Response):
    """Sends the status line and headers, then drops the connection without a body.

    ASGI has no "abort": uvicorn closes the transport when the app raises after the
    response started, which is how the client sees a connection dropped mid-answer.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200, headers={"content-length": "1024"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        raise ConnectionDropped("fault injected: connection dropped")
