"""A fault proxy: a reverse proxy on a loopback port, in front of a real server (usually
``groqbatch serve`` or the local server on a thread), that changes one thing about what passes.

It is how the suite checks groqbatch against servers it did not write: a gateway under a path
prefix, a server that answers ``200 text/html``, a batch object with no ``status``, a file whose
``bytes`` disagree with what it serves. Each case is a small :class:`Fault`: a function that may
answer a request itself, and one that may rewrite the upstream answer. Everything else passes
through untouched, bodies whole (test files are small).

    with ThreadedServer(config) as server, FaultProxy(server.url, Fault(
            respond=lambda call: Canned(200, b"<html>sign in</html>", "text/html")
            if call.path.endswith("/batches") else None)) as proxy:
        spec = job(base_url=proxy.url)      # groqbatch talks to the proxy
        ...
        proxy.calls                         # what the proxy saw, in order

The server behind it keeps its own journal (``GET /_emulator/requests``): count what was really
sent there, not at the proxy, when a fault answers in the upstream's place.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.requests import Request
from starlette.responses import Response

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authenticate", "proxy-authorization", "content-length",
                        "content-encoding", "host"})


@dataclass(slots=True)
class Call:
    """One request as the proxy received it (``path`` after the prefix is stripped)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    seq: int

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(slots=True)
class Canned:
    """An answer: status, body, content type, extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: Any, **headers: str) -> Canned:
        return cls(status, orjson.dumps(value), "application/json", dict(headers))


@dataclass(slots=True)
class Fault:
    """What one case changes. ``respond(call)`` may answer in the upstream's place (return a
    :class:`Canned`; None passes the call on); ``rewrite(call, answer)`` may change the
    upstream's answer (return the new one; None keeps it). ``path_prefix`` is stripped from
    every incoming path before anything else (a gateway mounted under ``/groq``); a request
    outside it is a 404, as a gateway would give."""

    respond: Callable[[Call], Canned | None] | None = None
    rewrite: Callable[[Call, Canned], Canned | None] | None = None
    path_prefix: str = ""


def json_rewrite(change: Callable[[Call, Any], Any]) -> Callable[[Call, Canned], Canned | None]:
    """A ``rewrite`` for JSON answers: ``change(call, value)`` returns the new value (or None to
    keep the answer as it is). Non-JSON answers pass unchanged."""

    def rewrite(call: Call, answer: Canned) -> Canned | None:
        if not answer.content_type.startswith("application/json"):
            return None
        try:
            value = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return None
        changed = change(call, value)
        if changed is None:
            return None
        return Canned(answer.status, orjson.dumps(changed), answer.content_type, answer.headers)

    return rewrite


class FaultProxy:
    """The proxy on a free loopback port, on a daemon thread, for as long as the ``with`` lasts.

    ``url`` is its host root (with the fault's ``path_prefix``): the ``base_url`` for groqbatch
    or the groq SDK. ``calls`` lists what it received; ``faulted`` counts the calls a fault
    answered or rewrote.
    """

    def __init__(self, upstream: str, fault: Fault | None = None, *,
                 host: str = "127.0.0.1") -> None:
        self.upstream = upstream.rstrip("/")
        self.fault = fault or Fault()
        self.host = host
        self.calls: list[Call] = []
        self.faulted = 0
        self._lock = threading.Lock()
        with socket.socket() as probe:
            probe.bind((host, 0))
            self.port: int = probe.getsockname()[1]
        config = uvicorn.Config(self._app, host=host, port=self.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_keep_alive=30,
                                interface="asgi3")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.fault.path_prefix}"

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        path = request.url.path
        prefix = self.fault.path_prefix
        body = await request.body()
        with self._lock:
            seq = len(self.calls) + 1
        if prefix:
            if not (path == prefix or path.startswith(prefix + "/")):
                answer = Canned.json(404, {"error": {"message": f"no route {path}",
                                                     "type": "invalid_request_error"}})
                await self._answer(answer, scope, receive, send)
                return
            path = path[len(prefix):] or "/"
        call = Call(request.method, path, request.url.query, dict(request.headers), body, seq)
        with self._lock:
            self.calls.append(call)
        answer = self.fault.respond(call) if self.fault.respond else None
        if answer is not None:
            with self._lock:
                self.faulted += 1
        else:
            answer = await self._forward(call)
            if self.fault.rewrite is not None:
                changed = self.fault.rewrite(call, answer)
                if changed is not None:
                    answer = changed
                    with self._lock:
                        self.faulted += 1
        await self._answer(answer, scope, receive, send)

    async def _forward(self, call: Call) -> Canned:
        headers = {k: v for k, v in call.headers.items() if k.lower() not in HOP_BY_HOP}
        url = self.upstream + call.path + (f"?{call.query}" if call.query else "")
        # A client per call: nothing left open when the proxy's thread stops (test files are
        # small, and a loopback connection is cheap).
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0)) as http:
            upstream = await http.request(call.method, url, headers=headers, content=call.body)
        kept = {k: v for k, v in upstream.headers.items()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-type"}
        return Canned(upstream.status_code, upstream.content,
                      upstream.headers.get("content-type", ""), kept)

    @staticmethod
    async def _answer(answer: Canned, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(answer.headers)
        if answer.content_type:
            headers["content-type"] = answer.content_type
        await Response(answer.body, status_code=answer.status, headers=headers)(scope, receive,
                                                                                 send)

    def start(self, timeout_s: float = 10.0) -> FaultProxy:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the fault proxy did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
