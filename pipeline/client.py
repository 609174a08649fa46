"""The one I/O seam to the Groq API (and the local server, which speaks the same protocol).

Stages never touch httpx: they call :class:`GroqClient`. Foreign errors are translated here,
once — an HTTP status or an httpx exception becomes a class of :mod:`pipeline.errors` — and
retries are configured here, once, as a :class:`~pipeline.retry.RetryPolicy` value.

The same seam watches whether the server is there at all (:class:`ServerHealth`): an endpoint
that has had no answer for ``give_up_after_s`` raises :class:`ServerUnavailableError`, which no
retry and no stage catches, so a dead server stops a run instead of being tried forever.

    async with GroqClient.from_env() as client:
        batch = await client.get_batch("batch_01…")

The API key is held by the client and sent as a header; it never appears in a message,
a log line or a repr.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from .errors import (
    APIError,
    AuthenticationError,
    CapacityExceededError,
    ConfigError,
    PermanentAPIError,
    RateLimitedError,
    RetryableAPIError,
    ServerUnavailableError,
    TransportError,
    redact_json,
)
from .retry import RetryPolicy

GROQ_BASE_URL = "https://api.groq.com"
OPENAI_PREFIX = "/openai/v1"
SETTLED_STATUSES = frozenset({"completed", "expired", "failed", "cancelled"})
MAX_IDS_PER_LIST = 200
"""Groq's limit on the repeated ``id`` filter of ``GET /batches``."""
GIVE_UP_AFTER_S = 300.0
"""How long an endpoint may go unanswered before the client gives up (see :class:`ServerHealth`)."""


@dataclass(frozen=True, slots=True)
class RemoteFile:
    id: str
    filename: str
    bytes: int
    purpose: str
    created_at: int

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> RemoteFile:
        return cls(data["id"], data.get("filename", ""), int(data.get("bytes") or 0),
                   data.get("purpose", ""), int(data.get("created_at") or 0))


@dataclass(frozen=True, slots=True)
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class RemoteBatch:
    """A batch as the API reports it, with Groq's quirks normalised (``error_file_id: {}`` → None,
    ``errors`` as a bare list or ``{"data": [...]}`` → a list)."""

    id: str
    status: str
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    request_counts: RequestCounts
    metadata: Mapping[str, str]
    errors: tuple[Mapping[str, Any], ...]
    created_at: int
    expires_at: int | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def settled(self) -> bool:
        return self.status in SETTLED_STATUSES

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> RemoteBatch:
        errors = data.get("errors") or ()
        if isinstance(errors, Mapping):
            errors = errors.get("data") or ()
        counts = data.get("request_counts") or {}
        return cls(
            id=data["id"],
            status=data["status"],
            input_file_id=data.get("input_file_id", ""),
            output_file_id=data.get("output_file_id") or None,
            error_file_id=data.get("error_file_id") or None,
            request_counts=RequestCounts(
                int(counts.get("total", 0)), int(counts.get("completed", 0)), int(counts.get("failed", 0))
            ),
            metadata=dict(data.get("metadata") or {}),
            errors=tuple(errors),
            created_at=int(data.get("created_at") or 0),
            expires_at=data.get("expires_at"),
            raw=data,
        )


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_go_duration(text: str) -> float | None:
    """Groq's reset headers: ``2m59.56s`` → 179.56, ``172.799999ms`` → 0.1728; None if unreadable."""
    text = text.strip()
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """What the ``x-ratelimit-*`` headers of one answer said (None where absent).

    As Groq's Rate Limits page defines them: the ``*_requests`` fields are the **requests per
    day** (RPD) — limit, what is left, time until the day's budget is full again — and the
    ``*_tokens`` fields the **tokens per minute** (TPM). The per-minute request limit is in no
    header; only a 429 shows it (:func:`rate_limit_of`).

    >>> state = RateLimitState.from_headers({"x-ratelimit-limit-requests": "14400",
    ...     "x-ratelimit-remaining-requests": "14370", "x-ratelimit-reset-requests": "2m59.56s",
    ...     "x-ratelimit-limit-tokens": "18000", "x-ratelimit-remaining-tokens": "17997",
    ...     "x-ratelimit-reset-tokens": "7.66s"})
    >>> (state.remaining_requests, state.reset_requests_s, state.limit_tokens, state.reset_tokens_s)
    (14370, 179.56, 18000, 7.66)
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitState:
        def number(name: str) -> int | None:
            value = headers.get(f"x-ratelimit-{name}")
            try:
                return int(float(value)) if value is not None else None
            except ValueError:
                return None

        def duration(name: str) -> float | None:
            value = headers.get(f"x-ratelimit-{name}")
            return parse_go_duration(value) if value is not None else None

        return cls(number("limit-requests"), number("remaining-requests"), duration("reset-requests"),
                   number("limit-tokens"), number("remaining-tokens"), duration("reset-tokens"))


_LIMIT_IN_MESSAGE = re.compile(r"\((RPM|RPD|TPM|TPD|ASH|ASD)\)(?::\s*Limit\s+(\d+))?")


def rate_limit_of(body: Any) -> tuple[str | None, int | None]:
    """Which limit a 429 (or 413) body says was reached, and its size, from Groq's message:
    ``"… on requests per minute (RPM): Limit 30, Used 30, Requested 1. …"`` → ``("RPM", 30)``;
    ``(None, None)`` when the body does not say.

    >>> rate_limit_of({"error": {"message": "Rate limit reached for model `m` in organization `o` "
    ...     "service tier `flex` on tokens per minute (TPM): Limit 8000, Used 5536, Requested 5599."}})
    ('TPM', 8000)
    """
    error = body.get("error") if isinstance(body, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    found = _LIMIT_IN_MESSAGE.search(message) if isinstance(message, str) else None
    if found is None:
        return None, None
    return found.group(1), int(found.group(2)) if found.group(2) else None


@dataclass(frozen=True, slots=True)
class ChatReply:
    body: Mapping[str, Any]
    rate_limits: RateLimitState
    request_id: str | None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` wins; else ``retry-after`` as seconds or as an HTTP date."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(parsed.timestamp() - time.time(), 0.0) if parsed is not None else None


def error_for_response(response: httpx.Response, *, what: str) -> APIError:
    """The error class a caller acts on, for an error answer. The body is kept whole."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:2000]
    body = redact_json(body)  # kept whole on the error, and by flex in the ledger
    error = body.get("error") if isinstance(body, dict) else None
    message = (error or {}).get("message") if isinstance(error, dict) else None
    code = (error or {}).get("code") if isinstance(error, dict) else None
    text = f"{what}: {message or response.reason_phrase or 'error'}"
    kw: dict[str, Any] = {"status_code": status, "body": body, "code": code}
    if status == 429:
        limit, limit_value = rate_limit_of(body)
        headers = RateLimitState.from_headers(response.headers)
        return RateLimitedError(text, retry_after_s=parse_retry_after(response.headers), limit=limit,
                                limit_value=limit_value,
                                rate_limits=headers if headers != RateLimitState() else None, **kw)
    if status == 498:
        return CapacityExceededError(text, **kw)
    if status in (408, 409) or status >= 500:
        return RetryableAPIError(text, retry_after_s=parse_retry_after(response.headers), **kw)
    if status in (401, 403):
        return AuthenticationError(text, **kw)
    return PermanentAPIError(text, **kw)


_COLLECTIONS = frozenset({"files", "batches", "fine_tunings", "models"})


def endpoint_of(method: str, path: str) -> str:
    """The call's template, ids replaced, without the API root's ``/openai/v1``:
    ``GET /openai/v1/batches/batch_01…`` → ``GET /batches/{id}``.

    >>> endpoint_of("GET", "/openai/v1/files/file_01abc/content")
    'GET /files/{id}/content'
    """
    parts = _api_path(path).split("/")
    for i in range(1, len(parts)):
        if parts[i - 1] in _COLLECTIONS and parts[i]:
            parts[i] = "{id}"
    return f"{method} {'/'.join(parts)}"


def _api_path(path: str) -> str:
    return path[len(OPENAI_PREFIX):] if path.startswith(OPENAI_PREFIX + "/") else path


def split_base_url(base_url: str) -> tuple[str, str, str]:
    """(origin, API root path, Groq root path) of a base URL, read as the official SDKs read it.

    No path means Groq's layout: the OpenAI-compatible API under ``/openai/v1``, fine-tunings
    under ``/v1``. A path is the API root itself (the openai SDK's ``…/v1``, ``…/openai/v1``, a
    gateway's ``…/groq/openai/v1``); Groq's own endpoints sit beside it.

    >>> split_base_url("https://api.groq.com")
    ('https://api.groq.com', '/openai/v1', '')
    >>> split_base_url("http://127.0.0.1:8000/v1")
    ('http://127.0.0.1:8000', '/v1', '')
    >>> split_base_url("https://gw.example/groq/openai/v1/")
    ('https://gw.example', '/groq/openai/v1', '/groq')
    """
    url = httpx.URL(base_url.strip())
    path = url.path.rstrip("/")
    origin = str(url.copy_with(path="/", query=None, fragment=None)).rstrip("/")
    if not path:
        return origin, OPENAI_PREFIX, ""
    if path.endswith(OPENAI_PREFIX):
        return origin, path, path[: -len(OPENAI_PREFIX)]
    if path.endswith("/v1"):
        return origin, path, path[: -len("/v1")]
    return origin, path, path


class ServerHealth:
    """Whether each endpoint of one server is answering, and when to give up on it.

    A call *goes unanswered* when it gets no HTTP answer (connect error, timeout, dropped
    connection, a download cut short) or a 5xx whose body is not JSON — a proxy's or load
    balancer's error page, not the API. Any other answer — a success, a 4xx, a 429, a JSON
    5xx — shows the server is there and restarts that endpoint's clock. Once an endpoint has
    gone unanswered for ``give_up_after_s`` since its first unanswered call (with no answer in
    between), its next unanswered call raises :class:`ServerUnavailableError` instead of the
    retryable error. Endpoints are told apart by method and path template
    (:func:`endpoint_of`), so a server that fails only downloads is judged on downloads.

    >>> clock = iter([0.0, 301.0]).__next__
    >>> health = ServerHealth("http://127.0.0.1:9", 300.0, clock=clock)
    >>> health.unanswered("POST", "/openai/v1/files", "ConnectError: refused")
    >>> health.unanswered("POST", "/openai/v1/files", "ConnectError: refused")  # doctest: +ELLIPSIS
    ServerUnavailableError('the server at http://127.0.0.1:9/openai/v1 has not answered for 301s ...')
    """

    def __init__(self, base_url: str, give_up_after_s: float = GIVE_UP_AFTER_S, *,
                 clock: Callable[[], float] = time.monotonic, api_root: str = OPENAI_PREFIX) -> None:
        self.base_url = base_url.rstrip("/")
        """The host root the client calls (``http://127.0.0.1:9``); messages name the API root
        (``…/openai/v1``) for the calls under it."""
        self.api_root = api_root
        self.give_up_after_s = give_up_after_s
        self._clock = clock
        self._unanswered_since: dict[str, float] = {}
        """endpoint → when its current run of unanswered calls began."""

    def answered(self, method: str, path: str) -> None:
        if self._unanswered_since:  # the usual case, every call: nothing to look up
            self._unanswered_since.pop(endpoint_of(method, path), None)

    def unanswered(self, method: str, path: str, what: str) -> ServerUnavailableError | None:
        """Note an unanswered call (``what`` it got); the error to raise instead of the
        retryable one once the endpoint is past its time, else None."""
        endpoint = endpoint_of(method, path)
        now = self._clock()
        since = self._unanswered_since.setdefault(endpoint, now)
        if now - since < self.give_up_after_s:
            return None
        api = path.startswith(self.api_root + "/")
        return ServerUnavailableError(base_url=self.base_url + (self.api_root if api else ""),
                                      endpoint=endpoint,
                                      call=f"{method} {path[len(self.api_root):] if api else path}",
                                      last_answer=what, down_for_s=now - since)


def _is_json(response: httpx.Response) -> bool:
    try:
        orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return True


def _failure(exc: Exception) -> str:
    """A transport failure, named for a person: ``ConnectError: [Errno 111] Connection refused``."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _page(response: httpx.Response) -> str:
    """A non-JSON error answer, named for a person: ``HTTP 502 Bad Gateway (text/html, 157 bytes,
    not JSON)``."""
    kind = response.headers.get("content-type", "no content type").split(";")[0].strip()
    return (f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
            + f" ({kind}, {len(response.content)} bytes, not JSON)")


def _decode(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer. A body that is not JSON (cut short, garbled) is a transport
    fault: the same call may well succeed again."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        what = f"{response.request.method} {response.request.url.path}"
        raise TransportError(f"{what}: answer is not JSON ({len(response.content)} bytes): {exc}") from exc


def _form_value(value: Any) -> str:
    """A body value as a multipart form field: text as is, anything else as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class GroqClient:
    """Async client for Groq's Files, Batches, Chat, Models and fine-tuning endpoints."""

    def __init__(self, base_url: str, api_key: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout_s: float = 60.0, retry: RetryPolicy | None = None,
                 max_connections: int = 32, give_up_after_s: float = GIVE_UP_AFTER_S) -> None:
        """``give_up_after_s``: how long an endpoint may go unanswered (no HTTP answer, or
        only non-JSON 5xx pages) before calls to it raise :class:`ServerUnavailableError`."""
        root, self.api_root, self.groq_root = split_base_url(base_url)
        self.base_url = root
        """The server's origin; calls go under :attr:`api_url`."""
        self.api_url = root + self.api_root
        """The API root every call goes under (as the SDKs read ``base_url``)."""
        self.retry = retry or RetryPolicy()
        self.health = ServerHealth(root, give_up_after_s, api_root=self.api_root)
        self._http = httpx.AsyncClient(
            base_url=root,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "groqbatch"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    @classmethod
    def from_env(cls, base_url: str | None = None, **kw: Any) -> GroqClient:
        """Key from ``GROQ_API_KEY``; base URL from the argument, ``GROQ_BASE_URL`` or Groq's."""
        api_key = os.environ.get("GROQ_API_KEY")
        if not api_key:
            raise ConfigError("GROQ_API_KEY is not set: export your Groq API key to run on backend 'groq'")
        return cls(base_url or os.environ.get("GROQ_BASE_URL") or GROQ_BASE_URL, api_key, **kw)

    def __repr__(self) -> str:
        return f"GroqClient(base_url={self.api_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> GroqClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one attempt, errors translated ---------------------------------------------------------

    def _route(self, path: str) -> str:
        """The path actually called: the client's paths are written in Groq's layout
        (``/openai/v1/…``, ``/v1/fine_tunings``) and moved under the base URL's roots."""
        if path.startswith(OPENAI_PREFIX + "/"):
            return self.api_root + path[len(OPENAI_PREFIX):]
        if path.startswith("/v1/"):
            return self.groq_root + path
        return path

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        path = self._route(path)
        what = f"{method} {path}"
        try:
            response = await self._http.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            self._unanswered(method, path, f"{type(exc).__name__}: timed out", exc)
            raise TransportError(f"{what}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            self._unanswered(method, path, _failure(exc), exc)
            raise TransportError(f"{what}: {type(exc).__name__}: {exc}") from exc
        self._judge(method, path, response)
        if response.status_code >= 400:
            raise error_for_response(response, what=what)
        return response

    def _judge(self, method: str, path: str, response: httpx.Response) -> None:
        """Tell :attr:`health` what an endpoint answered (a non-JSON 5xx is no answer)."""
        if response.status_code >= 500 and not _is_json(response):
            self._unanswered(method, path, _page(response), None)
        else:
            self.health.answered(method, path)

    def _unanswered(self, method: str, path: str, what: str, cause: BaseException | None) -> None:
        """Raise :class:`ServerUnavailableError` if the endpoint is past its time; else return,
        and the caller raises its retryable error."""
        if (gone := self.health.unanswered(method, path, what)) is not None:
            raise gone from cause

    async def _json(self, method: str, path: str, *, retry: RetryPolicy | None = None, **kw: Any) -> Any:
        async for attempt in (retry or self.retry).retrying():
            with attempt:
                return _decode(await self._send(method, path, **kw))
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    # -- files ------------------------------------------------------------------------------------

    async def upload_file(self, path: Path, *, filename: str, purpose: str = "batch",
                          retry: RetryPolicy | None = None) -> RemoteFile:
        """Upload a file from disk (multipart). ``filename`` is what the remote listing shows."""
        async for attempt in (retry or self.retry).retrying():
            with attempt, path.open("rb") as handle:
                response = await self._send(
                    "POST", f"{OPENAI_PREFIX}/files",
                    files={"file": (filename, handle, "application/octet-stream")},
                    data={"purpose": purpose},
                )
                return RemoteFile.from_api(_decode(response))
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_files(self) -> list[RemoteFile]:
        data = await self._json("GET", f"{OPENAI_PREFIX}/files")
        return [RemoteFile.from_api(item) for item in data.get("data", [])]

    async def get_file(self, file_id: str) -> RemoteFile:
        return RemoteFile.from_api(await self._json("GET", f"{OPENAI_PREFIX}/files/{file_id}"))

    async def delete_file(self, file_id: str) -> None:
        await self._json("DELETE", f"{OPENAI_PREFIX}/files/{file_id}")

    async def download_file(self, file_id: str, dest: Path, *, expected_bytes: int | None = None) -> int:
        """Stream a file's content to ``dest`` (via a temp file, renamed when whole).

        A download cut short — fewer bytes than ``content-length`` or than the file's known
        size — is a :class:`TransportError`, retried like any other.
        """
        part = dest.with_name(dest.name + ".part")
        path = f"{OPENAI_PREFIX}/files/{file_id}/content"
        async for attempt in self.retry.retrying():
            with attempt:
                written = await self._download_once(path, part, expected_bytes)
                part.replace(dest)
                return written
        raise AssertionError("unreachable")  # pragma: no cover

    async def _download_once(self, path: str, part: Path, expected_bytes: int | None) -> int:
        path = self._route(path)
        written = 0
        try:
            async with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._judge("GET", path, response)
                    raise error_for_response(response, what=f"GET {path}")
                # content-length counts encoded bytes; compare it only when nothing is encoded.
                encoded = response.headers.get("content-encoding", "identity") != "identity"
                declared = None if encoded else response.headers.get("content-length")
                with part.open("wb") as out:
                    async for chunk in response.aiter_bytes(1 << 20):
                        out.write(chunk)
                        written += len(chunk)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            self._unanswered("GET", path, f"{_failure(exc)} after {written} bytes", exc)
            raise TransportError(f"GET {path}: download broke off after {written} bytes: {exc}") from exc
        for expected in (int(declared) if declared else None, expected_bytes):
            if expected is not None and written != expected:
                self._unanswered("GET", path, f"download cut short at {written} of {expected} bytes",
                                 None)
                raise TransportError(f"GET {path}: download truncated: {written} of {expected} bytes")
        self.health.answered("GET", path)
        return written

    # -- batches ----------------------------------------------------------------------------------

    async def create_batch(self, input_file_id: str, *, completion_window: str,
                           metadata: Mapping[str, str] | None = None,
                           endpoint: str = "/v1/chat/completions",
                           retry: RetryPolicy | None = None) -> RemoteBatch:
        body = {"input_file_id": input_file_id, "endpoint": endpoint,
                "completion_window": completion_window, "metadata": dict(metadata or {})}
        data = await self._json("POST", f"{OPENAI_PREFIX}/batches", json=body, retry=retry)
        return RemoteBatch.from_api(data)

    async def get_batch(self, batch_id: str) -> RemoteBatch:
        return RemoteBatch.from_api(await self._json("GET", f"{OPENAI_PREFIX}/batches/{batch_id}"))

    async def get_batches(self, batch_ids: Sequence[str]) -> list[RemoteBatch]:
        """Many batches in as few calls as the API allows (repeated ``id``, 200 per call)."""
        found: list[RemoteBatch] = []
        for start in range(0, len(batch_ids), MAX_IDS_PER_LIST):
            chunk = batch_ids[start : start + MAX_IDS_PER_LIST]
            params = httpx.QueryParams([("id", batch_id) for batch_id in chunk])
            data = await self._json("GET", f"{OPENAI_PREFIX}/batches", params=params)
            found.extend(RemoteBatch.from_api(item) for item in data.get("data", []))
        return found

    async def iter_batches(self) -> AsyncIterator[RemoteBatch]:
        """Every batch of the organisation, following Groq's ``paging.next_cursor``."""
        cursor: str | None = None
        while True:
            params = {"cursor": cursor} if cursor else {}
            data = await self._json("GET", f"{OPENAI_PREFIX}/batches", params=params)
            for item in data.get("data", []):
                yield RemoteBatch.from_api(item)
            cursor = (data.get("paging") or {}).get("next_cursor")
            if not cursor:
                return

    async def cancel_batch(self, batch_id: str, *, retry: RetryPolicy | None = None) -> RemoteBatch:
        return RemoteBatch.from_api(
            await self._json("POST", f"{OPENAI_PREFIX}/batches/{batch_id}/cancel", retry=retry))

    # -- chat, models, fine tunings ---------------------------------------------------------------

    async def chat(self, body: Mapping[str, Any], *, service_tier: str | None = None,
                   retry: RetryPolicy | None = None) -> ChatReply:
        """One chat completion. ``retry`` overrides the client's policy (the flex stage passes
        its own, since it paces and counts attempts itself)."""
        payload = dict(body)
        if service_tier is not None:
            payload["service_tier"] = service_tier
        async for attempt in (retry or self.retry).retrying():
            with attempt:
                response = await self._send("POST", f"{OPENAI_PREFIX}/chat/completions",
                                            content=orjson.dumps(payload),
                                            headers={"Content-Type": "application/json"})
                return ChatReply(_decode(response), RateLimitState.from_headers(response.headers),
                                 response.headers.get("x-request-id"))
        raise AssertionError("unreachable")  # pragma: no cover

    async def transcribe(self, endpoint: str, body: Mapping[str, Any], *,
                         retry: RetryPolicy | None = None) -> ChatReply:
        """One synchronous transcription or translation (``endpoint`` is the batch line's
        ``/v1/audio/...``), sent as Groq takes it: a multipart form of the body's fields (the
        audio by ``url``; a list as repeated ``name[]`` fields, as the SDKs send it). A
        ``text`` answer (``text/plain``) comes back as ``{"text": ...}``."""
        form = [(f"{name}[]" if isinstance(value, list) else name, (None, _form_value(item)))
                for name, value in body.items() if value is not None
                for item in (value if isinstance(value, list) else [value])]
        path = OPENAI_PREFIX + endpoint.removeprefix("/v1")
        async for attempt in (retry or self.retry).retrying():
            with attempt:
                response = await self._send("POST", path, files=form)
                if response.headers.get("content-type", "").startswith("text/plain"):
                    data: Any = {"text": response.text}
                else:
                    data = _decode(response)
                return ChatReply(data, RateLimitState.from_headers(response.headers),
                                 response.headers.get("x-request-id"))
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_models(self) -> list[Mapping[str, Any]]:
        data = await self._json("GET", f"{OPENAI_PREFIX}/models")
        return list(data.get("data", []))

    async def create_fine_tuning(self, *, input_file_id: str, name: str, base_model: str,
                                 type: str = "lora") -> Mapping[str, Any]:
        body = {"input_file_id": input_file_id, "name": name, "type": type, "base_model": base_model}
        result: Mapping[str, Any] = await self._json("POST", "/v1/fine_tunings", json=body)
        return result

    async def list_fine_tunings(self) -> list[Mapping[str, Any]]:
        data = await self._json("GET", "/v1/fine_tunings")
        return list(data.get("data", []))

    async def get_fine_tuning(self, fine_tuning_id: str) -> Mapping[str, Any]:
        result: Mapping[str, Any] = await self._json("GET", f"/v1/fine_tunings/{fine_tuning_id}")
        return result

    async def delete_fine_tuning(self, fine_tuning_id: str) -> None:
        await self._json("DELETE", f"/v1/fine_tunings/{fine_tuning_id}")
