"""From a row to a request: the body, its canonical bytes, and its content-addressed id.

**The ``custom_id`` scheme (v1).** A request's id is a hash of what it asks::

    digest    = blake2b(b"groqbatch/v1\\0" + endpoint + b"\\0" + canonical_body
                        [+ b"\\0salt\\0" + salt], digest_size=16)     # 128 bits
    custom_id = "gb_" + base32(digest).lower().rstrip("=")            # 29 characters

``canonical_body`` is ``orjson.dumps(body, option=OPT_SORT_KEYS)``: keys sorted, no
whitespace, UTF-8. So the id is the same across runs, machines and key orders; identical
requests (from different rows, or different jobs) share one id and are sent once. A
``salt`` (e.g. a run id, to re-ask on purpose) gives a different id for the same body.
Changing this scheme re-sends everything: ``tests/unit/test_jobs_requests.py`` pins it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from jobs.spec import JobSpec
from jobs.template import PromptTemplates, RowRejected
from pipeline.errors import ConfigError

__all__ = [
    "CHAT_ENDPOINT",
    "BuiltRequest",
    "RequestBuilder",
    "batch_line",
    "canonical_json",
    "custom_id_for",
    "row_key_for",
]

CHAT_ENDPOINT = "/v1/chat/completions"
_ID_DOMAIN = b"groqbatch/v1\0"
_ROW_DOMAIN = b"groqbatch/row/v1\0"
_LINE_HEAD = b'{"custom_id":"'
_LINE_MID = b'","method":"POST","url":"' + CHAT_ENDPOINT.encode() + b'","body":'
_LINE_TAIL = b"}\n"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, compact, UTF-8. Non-JSON values (dates, decimals) as ``str``."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)


_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [a + b for a in _B32_ALPHABET for b in _B32_ALPHABET]  # 10 bits → 2 characters


def _b32(digest: bytes) -> str:
    """RFC 4648 base32 of a 16-byte digest, lowercase, unpadded (26 characters).

    Equal to ``base64.b32encode(digest).decode().rstrip("=").lower()``, which is pure
    Python on 3.11 and was the slowest step of building a request.
    """
    value = int.from_bytes(digest, "big") << 2  # 128 bits, zero-padded to 26 * 5 = 130
    pairs = _B32_PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -1, -10)])


def custom_id_for(body: bytes, *, endpoint: str = CHAT_ENDPOINT, salt: str | None = None) -> str:
    """The content-addressed id of a request whose canonical body is ``body``."""
    h = hashlib.blake2b(_ID_DOMAIN, digest_size=16)
    h.update(endpoint.encode())
    h.update(b"\0")
    h.update(body)
    if salt is not None:
        h.update(b"\0salt\0")
        h.update(salt.encode())
    return "gb_" + _b32(h.digest())


def row_key_for(row: Mapping[str, Any], id_column: str | None) -> str:
    """A row's key: its ``id_column`` value as text, else ``"h_"`` + a hash of its content.

    Raises :class:`RowRejected` when the id column is missing or empty.
    """
    if id_column is not None:
        value = row.get(id_column)
        if value is None or value == "":
            raise RowRejected(f"id column {id_column!r} is missing or empty")
        return value if isinstance(value, str) else str(value)
    digest = hashlib.blake2b(_ROW_DOMAIN + canonical_json(row), digest_size=16).digest()
    return "h_" + _b32(digest)


def unkeyed_row_key(row_index: int) -> str:
    """The key of a row whose ``id_column`` is missing or empty: it is recorded (rejected)
    under its position, and export and validate find it again the same way."""
    return f"#{row_index}"


def row_key_or_position(row: Mapping[str, Any], id_column: str | None, row_index: int) -> str:
    """:func:`row_key_for`, or :func:`unkeyed_row_key` for a row it rejects."""
    try:
        return row_key_for(row, id_column)
    except RowRejected:
        return unkeyed_row_key(row_index)


def batch_line(custom_id: str, body: bytes) -> bytes:
    """One line of a batch input file, newline included.

    ``{"custom_id":…,"method":"POST","url":"/v1/chat/completions","body":…}``; built by
    concatenation because ``custom_id`` needs no escaping and ``body`` is already JSON.
    """
    return _LINE_HEAD + custom_id.encode("ascii") + _LINE_MID + body + _LINE_TAIL


@dataclass(frozen=True, slots=True)
class BuiltRequest:
    """A request ready for the ledger: its id and canonical body bytes."""

    custom_id: str
    body: bytes

    @property
    def line_bytes(self) -> int:
        """The size of its batch line (see :func:`batch_line`)."""
        return len(_LINE_HEAD) + len(self.custom_id) + len(_LINE_MID) + len(self.body) + 2


class RequestBuilder:
    """Turns rows into requests for one job (templates compiled once).

    ``model`` overrides the spec's (needed when the spec names an ``adapter``: pass the
    ``ft:`` id it resolves to). ``max_line_bytes`` rejects requests too big for one shard.
    """

    def __init__(
        self,
        spec: JobSpec,
        *,
        model: str | None = None,
        salt: str | None = None,
        max_line_bytes: int | None = None,
    ) -> None:
        resolved = model or spec.model
        if resolved is None:
            raise ConfigError(
                f"adapter {spec.adapter!r} must be resolved to its ft: model id before compiling",
                field="adapter",
            )
        self.model = resolved
        self.endpoint = CHAT_ENDPOINT
        self.salt = salt
        self.max_line_bytes = max_line_bytes or spec.policy.max_bytes_per_shard
        self._templates = PromptTemplates.from_spec(spec.prompt_spec)
        self._params = spec.prompt_spec.request_params(spec.base_dir)

    def body(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The request body for ``row``; raises :class:`RowRejected`."""
        body = {"model": self.model, "messages": self._templates.messages(row)}
        body.update(self._params)
        return body

    def build(self, row: Mapping[str, Any]) -> BuiltRequest:
        """The request for ``row``; raises :class:`RowRejected` with a reason."""
        try:
            body = canonical_json(self.body(row))
        except orjson.JSONEncodeError as exc:
            raise RowRejected(f"cannot encode the request as JSON: {exc}") from None
        built = BuiltRequest(custom_id_for(body, endpoint=self.endpoint, salt=self.salt), body)
        size = built.line_bytes
        if size > self.max_line_bytes:
            raise RowRejected(
                f"request is {size} bytes, over max_bytes_per_shard ({self.max_line_bytes})"
            )
        return built
