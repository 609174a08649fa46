"""Errors of the local server.

Handlers raise :class:`APIProblem`; the app turns it into
``{"error": {"message", "type", "code", "param"?}}`` with the right status, so a bad request
never surfaces as a 500. :class:`DataDirError` is raised when the server starts, never
answered over HTTP: the saved state under ``--data-dir`` cannot be used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError


class DataDirError(ConfigError):
    """The server's ``data_dir`` holds state this version cannot use (or another server's)."""

    def __init__(self, data_dir: Path, message: str) -> None:
        super().__init__(message, path=data_dir, field="data_dir")
        self.data_dir = data_dir


class APIProblem(Exception):
    """An error answer: status code plus Groq's error object."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        error.update(self.extra)
        return {"error": error}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIProblem:
    return APIProblem(400, message, param=param, code=code)


def not_found(what: str, object_id: str, *, code: str = "not_found") -> APIProblem:
    return APIProblem(404, f"{what} `{object_id}` does not exist", code=code)


def model_not_found(model: str) -> APIProblem:
    return APIProblem(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


INVALID_API_KEY = APIProblem(401, "Invalid API Key", code="invalid_api_key")
