"""What clients send to the Batches API: the create body, and list cursors.

Each parser raises a 400 :class:`~.errors.APIProblem` naming the ``param`` at fault.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import bad_request

ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/audio/transcriptions", "/v1/audio/translations"})
"""groq-docs "Batch Processing" → "Prepare Your Batch File": the three endpoints a batch takes."""
MIN_WINDOW_S = 24 * 3600
MAX_WINDOW_S = 7 * 24 * 3600
MAX_IDS = 200
"""Groq: "up to 200 batch IDs in a single request"."""
_WINDOW = re.compile(r"([1-9][0-9]{0,5})([hd])")


@dataclass(frozen=True, slots=True)
class CreateParams:
    input_file_id: str
    endpoint: str
    completion_window: str
    window_s: int
    metadata: dict[str, str] | None


def parse_create(body: dict[str, Any]) -> CreateParams:
    """The body of ``POST /batches``. Unknown fields are ignored, as SDKs may add some."""
    input_file_id = _required_str(body, "input_file_id")
    endpoint = _required_str(body, "endpoint")
    window = _required_str(body, "completion_window")
    if endpoint not in ENDPOINTS:
        raise bad_request(
            f"Invalid endpoint {endpoint!r}: batches support '/v1/chat/completions', "
            "'/v1/audio/transcriptions' and '/v1/audio/translations'.",
            param="endpoint", code="invalid_value",
        )
    return CreateParams(input_file_id, endpoint, window, parse_window(window), _metadata(body))


def parse_window(window: str) -> int:
    """``"24h"`` … ``"7d"`` → seconds; 400 outside that range.

    >>> parse_window("36h"), parse_window("7d")
    (129600, 604800)
    """
    match = _WINDOW.fullmatch(window)
    seconds = 0
    if match:
        seconds = int(match[1]) * (3600 if match[2] == "h" else 86400)
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise bad_request(
            f"Invalid completion_window {window!r}: durations from `24h` to `7d` are supported "
            "(a whole number of hours `Nh` or days `Nd`).",
            param="completion_window", code="invalid_value",
        )
    return seconds


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise bad_request(f"Missing required parameter: `{name}`.", param=name,
                          code="missing_required_parameter")
    if not isinstance(value, str) or not value:
        raise bad_request(f"`{name}` must be a non-empty string.", param=name, code="invalid_type")
    return value


def _metadata(body: dict[str, Any]) -> dict[str, str] | None:
    metadata = body.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad_request("`metadata` must be an object of string keys to string values, or null.",
                          param="metadata", code="invalid_type")
    return metadata


def encode_cursor(batch_id: str) -> str:
    """An opaque cursor in Groq's look (``cursor_`` + base64 of ``{"id": …}``)."""
    return "cursor_" + base64.urlsafe_b64encode(orjson.dumps({"id": batch_id})).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The batch id a cursor pages after; 400 if it is not one of ours.

    >>> decode_cursor(encode_cursor("batch_01abc"))
    'batch_01abc'
    """
    try:
        text = cursor.removeprefix("cursor_")
        decoded = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        batch_id = decoded["id"]
        if not isinstance(batch_id, str):
            raise TypeError(batch_id)
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise bad_request(f"Invalid cursor {cursor!r}.", param="cursor", code="invalid_cursor") from None
    return batch_id
