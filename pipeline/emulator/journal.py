"""The journal of calls the local server served, so a test (or a user) can count from the
server's side what a client sent, independently of the client's own ledger.

Every HTTP call is recorded on arrival, in arrival order, by :class:`JournalMiddleware`, the
outermost layer of the app: so calls refused by auth (401) or by an injected fault count too.
Only the admin routes under ``/_emulator`` are left out (reading the journal is not traffic).
``GET /_emulator/requests`` lists it and ``DELETE /_emulator/requests`` clears it
(:mod:`.admin`); in-process, ``emulator.journal.entries()`` reads the same thing.

    >>> journal = RequestJournal(max_entries=2)
    >>> entry = journal.open(at=0.0, method="GET", path="/healthz")
    >>> journal.finish(entry, 200)
    >>> [(e["seq"], e["status"]) for e in journal.entries()]
    [(1, 200)]

What an entry says, and why:

- ``at`` is the arrival time on the server's clock (the virtual one, as its ``created_at``
  fields), in Unix seconds.

- ``status`` is ``null`` while the call is still being served; it is set just before the last
  byte of the answer is handed to the server, so a client that has its answer always finds it.
  :data:`DROPPED` (``0``) means no complete answer was sent: a ``drop_connection`` fault, or
  an error after the answer had started. A route that fails before answering is the ``500``
  the server then sends.
- ``digest`` (chat completions only) is the sha256 of the body's *canonical* JSON (keys
  sorted at every level, no whitespace, as ``orjson`` writes it), so equal bodies give equal
  digests whatever client serialised them; a body that is not JSON is hashed as sent.
- ``custom_id`` is the ``X-Custom-Id`` request header, else a string ``metadata.custom_id``
  in a chat body: chat calls carry no custom_id of their own, so a client that wants its
  calls told apart tags them. ``service_tier`` is the chat body's, as asked (``auto`` stays).
- ``batch_id`` / ``file_id``: the id a ``POST .../batches`` or ``POST .../files`` created, or
  the one named in the path (``GET .../batches/{id}``, ``.../files/{id}/content``, …).

The journal keeps the newest :data:`MAX_ENTRIES` entries (older ones are forgotten, ``seq``
carries on; about 250 bytes an entry, so some 250 MB when full), lives in memory only, and is
not saved under ``data_dir``: a restarted server starts an empty one at ``seq`` 1. It is
thread-safe: the server may serve on one thread while a test reads on another.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .http import ConnectionDropped

if TYPE_CHECKING:
    from .server import Emulator

MAX_ENTRIES = 1_000_000
"""Entries kept: the newest million calls (about 250 MB)."""
DROPPED = 0
"""The ``status`` of a call that got no complete answer (connection dropped)."""
ADMIN_PREFIX = "/_emulator"
_API_PREFIXES = ("/openai/v1/", "/v1/")


@dataclass(slots=True)
class JournalEntry:
    """One call; mutable only through :class:`RequestJournal` (which holds the lock)."""

    seq: int
    at: float
    method: str
    path: str
    status: int | None = None
    digest: bytes | None = None
    custom_id: str | None = None
    service_tier: str | None = None
    batch_id: str | None = None
    file_id: str | None = None

    def as_api(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "at": self.at, "method": self.method, "path": self.path,
            "status": self.status, "digest": None if self.digest is None else self.digest.hex(),
            "custom_id": self.custom_id, "service_tier": self.service_tier,
            "batch_id": self.batch_id, "file_id": self.file_id,
        }


class RequestJournal:
    """The newest ``max_entries`` calls, oldest first."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._entries: deque[JournalEntry] = deque(maxlen=max_entries)
        self._last_seq = 0

    def open(self, *, at: float, method: str, path: str, digest: bytes | None = None,
             custom_id: str | None = None, service_tier: str | None = None,
             batch_id: str | None = None, file_id: str | None = None) -> JournalEntry:
        """Record a call as it arrives (its ``status`` still unknown)."""
        with self._lock:
            self._last_seq += 1
            entry = JournalEntry(self._last_seq, at, method, path, None, digest, custom_id,
                                 service_tier, batch_id, file_id)
            self._entries.append(entry)
        return entry

    def finish(self, entry: JournalEntry, status: int, *, batch_id: str | None = None,
               file_id: str | None = None) -> None:
        """Record how the call ended, and the id it created if any."""
        with self._lock:
            entry.status = status
            entry.batch_id = batch_id or entry.batch_id
            entry.file_id = file_id or entry.file_id

    def entries(self, *, since: int = 0, method: str | None = None,
                path_contains: str | None = None) -> list[dict[str, Any]]:
        """The calls after ``seq`` ``since``, optionally of one method / with a path fragment."""
        wanted = method.upper() if method else None
        with self._lock:
            return [
                entry.as_api() for entry in self._entries
                if entry.seq > since
                and (wanted is None or entry.method == wanted)
                and (not path_contains or path_contains in entry.path)
            ]

    def clear(self) -> int:
        """Forget every entry (``seq`` carries on, so ``since`` stays meaningful); how many."""
        with self._lock:
            cleared = len(self._entries)
            self._entries.clear()
        return cleared


def chat_digest(body: bytes) -> tuple[bytes, Any]:
    """The digest of a chat body (see the module docstring) and the body parsed (None if not JSON)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return hashlib.sha256(body).digest(), None
    return hashlib.sha256(orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS)).digest(), parsed


def _api_route(path: str) -> list[str] | None:
    """The path's segments after the API prefix, or None outside the API."""
    for prefix in _API_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):].split("/")
    return None


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message of the request body, and the body (None if the client left mid-body)."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


def _created_id(chunks: list[bytes]) -> str | None:
    try:
        answer = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        return None
    created = answer.get("id") if isinstance(answer, dict) else None
    return created if isinstance(created, str) else None


class JournalMiddleware:
    """Records each call in ``emulator.journal`` (pure ASGI, so streamed answers stay streamed).

    A chat body is read whole before the app runs, to hash it even when the call is refused
    unread (401, faults), and then replayed to the app unchanged.
    """

    def __init__(self, app: ASGIApp, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"] if scope["type"] == "http" else ""
        if scope["type"] != "http" or path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        segments = _api_route(path) or []
        resource = segments[0] if segments else None
        named = segments[1] if len(segments) > 1 and segments[1] else None
        fields: dict[str, Any] = {
            "batch_id": named if resource == "batches" else None,
            "file_id": named if resource == "files" else None,
            "custom_id": Headers(scope=scope).get("x-custom-id"),
        }
        if method == "POST" and segments == ["chat", "completions"]:
            pending, body = await _read_body(receive)
            if body is not None:
                fields["digest"], parsed = chat_digest(body)
                fields.update(_chat_fields(parsed, fields["custom_id"]))
            receive = _replay(pending, receive)
        if named is None:
            path = sys.intern(path)  # a path without an id recurs: share one string
        journal = self.emulator.journal
        entry = journal.open(at=self.emulator.clock.now(), method=method, path=path, **fields)
        # The id a create returns is in its (small, JSON) answer: keep the body to read it.
        creates = method == "POST" and named is None and resource in ("batches", "files")
        status: int | None = None
        chunks: list[bytes] = []

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status is not None:
                if creates:
                    chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    created = _created_id(chunks) if creates and status == 200 else None
                    journal.finish(entry, status,
                                   batch_id=created if resource == "batches" else None,
                                   file_id=created if resource == "files" else None)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except BaseException as exc:
            # Before the answer started, the server answers an error with a 500; after, or on
            # a dropped connection (a fault), the client gets no complete answer.
            failed = status is None and isinstance(exc, Exception) and not isinstance(exc, ConnectionDropped)
            journal.finish(entry, 500 if failed else DROPPED)
            raise
        if entry.status is None:
            journal.finish(entry, DROPPED)


def _chat_fields(parsed: Any, custom_id: str | None) -> dict[str, Any]:
    if not isinstance(parsed, dict):
        return {}
    fields: dict[str, Any] = {}
    tier = parsed.get("service_tier")
    if isinstance(tier, str):
        fields["service_tier"] = tier
    metadata = parsed.get("metadata")
    if custom_id is None and isinstance(metadata, dict) and isinstance(metadata.get("custom_id"), str):
        fields["custom_id"] = metadata["custom_id"]
    return fields


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``messages`` first, then whatever the client sends next."""
    pending = deque(messages)

    async def replayed() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replayed
