"""The local Groq-compatible server: one :class:`Emulator` (all state) behind a Starlette app.

Groq's paths are served under ``/openai/v1`` (plus ``/v1/fine_tunings``), OpenAI's under
``/v1``: the same routes mounted twice, so the official ``groq`` SDK (base_url = host root)
and ``openai`` SDK (base_url ending in ``/openai/v1``) both work unchanged.

    app = create_app(EmulatorConfig(time_scale=3600))
    httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://local")

With ``EmulatorConfig(data_dir=...)`` the state is durable: every change is saved under the
directory (:mod:`.persist`) and a new :class:`Emulator` on the same directory, in this process
or the next, carries on with the same files, batches, adapters and clock. Without one, the
state lives in memory and a temporary directory, and is gone after :meth:`Emulator.close`.
"""

from __future__ import annotations

import hmac
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import admin, audio, batches, chat, files, lora, models
from .clock import VirtualClock
from .config import ChatEndpoint, EmulatorConfig
from .errors import INVALID_API_KEY, APIProblem
from .faults import FaultInjector
from .http import ConnectionDropped, DroppedResponse, JSONResponse, problem_response
from .journal import JournalMiddleware, RequestJournal
from .persist import SavedState, StateStore
from .ratelimit import FREE_PLAN, RateLimiter
from .responder import Responder

log = logging.getLogger("groqbatch.emulator")

API_PREFIXES = ("/openai/v1", "/v1")
FILE_NAME = re.compile(r"file_[0-9a-z]{26}")
SCRATCH_NAME = re.compile(r"batch_[0-9a-z]{26}\.(input|output|errors)\.jsonl")


class Emulator:
    """Everything the server knows: files, batches, models, adapters, limits, faults, clock."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.persist: StateStore | None = None
        """The saved state under ``data_dir``; None without one."""
        saved = SavedState()
        if self.config.data_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="groqbatch-emulator-")
            root = Path(self._tempdir.name)
        else:
            root = self.config.data_dir
            self.persist = StateStore(root)
            try:
                saved = self.persist.load()
            except BaseException:
                self.persist.close()
                raise
        self.clock = self._start_clock(saved)
        self.journal = RequestJournal()
        """The calls served (``GET /_emulator/requests``); in memory only, never saved."""
        self.faults = FaultInjector(self.config.scenario, started_at=self.clock.now())
        self.files = files.FileStore(root / "files")
        self.files.persist = self.persist
        self.scratch_dir = root / "scratch"
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self.models = models.ModelRegistry()
        self.rate_limiter = RateLimiter(
            self.config.rate_limits, self.clock, organization=self.config.organization,
            plan=FREE_PLAN if self.config.rate_limit_plan == "free" else None)
        self.flex_gate = chat.FlexGate()
        self.responder = Responder(self.models, clock=self.clock.now)
        self.batches = batches.BatchStore(self)
        self.fine_tunings = lora.FineTuningStore(self)
        if self.persist is not None:
            try:
                self._restore(saved)
            except BaseException:
                self.persist.close()
                raise

    def _start_clock(self, saved: SavedState) -> VirtualClock:
        """A new clock, or the saved one continued across the time the server was away."""
        scale = self.config.time_scale
        if saved.clock is None:
            clock = VirtualClock(scale)
        else:
            clock = VirtualClock.resume(saved.clock, scale, not_before=saved.latest_time())
        if self.persist is not None:
            self.persist.save_clock(clock.anchor())
            clock.on_advance = self.persist.save_clock
        return clock

    def _restore(self, saved: SavedState) -> None:
        for stored in saved.files:
            self.files.restore(stored)
        for item in saved.fine_tunings:
            self.fine_tunings.restore(item)
        for batch in saved.batches:
            self.batches.restore(batch.record, output_bytes=batch.output_bytes,
                                 errors_bytes=batch.errors_bytes)
        # What a crash can leave behind: contents no saved file names (an upload or a
        # publish cut short), scratch files of settled batches or of none.
        known = {stored.path.name for stored in saved.files}
        self._remove_unnamed(self.files.root, FILE_NAME, known)
        live = {path.name for batch in self.batches.newest_first()
                if batch.state not in batches.SETTLED
                for path in (batch.input_path, batch.output_path, batch.errors_path)}
        self._remove_unnamed(self.scratch_dir, SCRATCH_NAME, live)

    @staticmethod
    def _remove_unnamed(directory: Path, pattern: re.Pattern[str], keep: set[str]) -> None:
        for path in directory.iterdir():
            if pattern.fullmatch(path.name) and path.name not in keep:
                log.info("removing %s: no saved state names it", path)
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the data_dir (everything is already saved), or delete the temporary one."""
        if self.persist is not None:
            self.persist.close()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None


def _endpoint_of(path: str) -> ChatEndpoint | None:
    for prefix in API_PREFIXES:
        if path.startswith(prefix + "/"):
            rest = path[len(prefix) + 1 :]
            break
    else:
        return None
    head = rest.split("/", 1)[0]
    if head == "files" and rest.endswith("/content"):
        return "content"
    if head == "chat":
        return "chat"
    if head in ("files", "batches", "models", "fine_tunings"):
        return head  # type: ignore[return-value]
    return None


class GatewayMiddleware:
    """Auth and per-endpoint faults, before any route runs (pure ASGI, so streaming is kept)."""

    def __init__(self, app: ASGIApp, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(API_PREFIXES) or path.startswith("/_emulator"):
            response = self._gate(Request(scope), path)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _gate(self, request: Request, path: str) -> Response | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.emulator.config.api_key
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            return problem_response(INVALID_API_KEY)
        endpoint = _endpoint_of(path)
        if endpoint is None:
            return None
        faults = self.emulator.faults
        if faults.drop_connection(endpoint):
            return DroppedResponse()
        throttle = faults.scenario.quirks.throttle_rates.get(endpoint, 0.0)
        if faults.chance(f"throttle:{endpoint}", throttle):
            return problem_response(
                APIProblem(429, "Rate limit reached, please try again in 1s.",
                           type="rate_limit_exceeded", code="rate_limit_exceeded",
                           headers={"retry-after": "1"})
            )
        if faults.server_error(endpoint):
            return problem_response(
                APIProblem(500, "Internal Server Error", type="internal_server_error",
                           code="internal_server_error")
            )
        return None


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIProblem)
    return problem_response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}. Please check the URL for typos."
        problem = APIProblem(404, message, code="unknown_url")
    elif exc.status_code == 405:
        problem = APIProblem(405, f"Method {request.method} is not allowed on {request.url.path}.",
                             code="method_not_allowed")
    else:
        problem = APIProblem(exc.status_code, str(exc.detail))
    return problem_response(problem)


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    """The client went away mid-request (killed, timed out): nobody to answer, nothing to log
    beyond a line — a real server sees this all the time. (A traceback per disconnect filled
    the stderr pipe of a server under the crash tests until it blocked.)"""
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ConnectionDropped):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem_response(
        APIProblem(500, "Internal Server Error", type="internal_server_error", code="internal_server_error")
    )


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(config: EmulatorConfig | None = None, *, emulator: Emulator | None = None) -> Starlette:
    """The ASGI app. Pass ``emulator`` to share state with the caller (tests, in-process jobs)."""
    emulator = emulator or Emulator(config)
    api = [*files.routes, *batches.routes, *chat.routes, *models.routes, *lora.routes,
           *audio.routes]
    app = Starlette(
        routes=[
            Route("/healthz", _health, methods=["GET"]),
            *(Mount(prefix, routes=api) for prefix in API_PREFIXES),
            Mount("/_emulator", routes=admin.routes),
        ],
        # The journal outermost, so it also records what the gateway refuses (401s, faults).
        middleware=[Middleware(JournalMiddleware, emulator=emulator),
                    Middleware(GatewayMiddleware, emulator=emulator)],
        exception_handlers={
            APIProblem: _on_problem,
            HTTPException: _on_http_exception,
            ClientDisconnect: _on_client_gone,
            Exception: _on_unexpected,
        },
    )
    app.state.emulator = emulator
    return app


def emulator_of(app: Any) -> Emulator:
    emulator: Emulator = app.state.emulator
    return emulator
