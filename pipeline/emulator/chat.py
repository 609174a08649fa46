"""``POST /chat/completions``: one synchronous chat completion, as Groq serves it.

The steps, in order, each of which can answer instead of the next:

1. parse and validate the body (4xx, never a 500 on junk) and prepare the answer;
2. the scenario's storms (429 with ``retry-after``, flex 498, 5xx), matched on the tier the
   request asked for (``auto`` storms hit ``auto`` requests);
3. flex capacity: more than ``scenario.flex_capacity`` flex requests at once → 498;
4. rate limits (429 / 413, see :mod:`.ratelimit`), counting the answer's total tokens;
5. ``config.chat_latency_s`` of real time, holding the flex slot;
6. the answer, with ``x-ratelimit-*`` headers and ``x-request-id`` (= ``x_groq.id``).

Every answer of steps 2-6 carries the ``x-ratelimit-*`` headers (Groq: "The other headers are
always included"); only a 429 carries ``retry-after``.

A 498 carries neither ``retry-after`` nor ``x-should-retry``: the SDKs do not retry it, as
they do not against Groq. ``x-should-retry`` is sent only when a storm sets ``should_retry``.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import anyio
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from .config import Storm
from .errors import APIProblem
from .http import JSONResponse, json_body
from .ids import new_id

if TYPE_CHECKING:
    from .server import Emulator

FLEX_CAPACITY_MESSAGE = "`flex` tier capacity exceeded for this model. Please try again later."
_SERVER_ERRORS = {
    500: ("Internal Server Error", "internal_server_error"),
    502: ("Bad Gateway", "bad_gateway"),
    503: ("Service Unavailable", "service_unavailable"),
}


def flex_capacity_exceeded(headers: dict[str, str] | None = None) -> APIProblem:
    return APIProblem(498, FLEX_CAPACITY_MESSAGE, type="service_unavailable",
                      code="capacity_exceeded", headers=headers)


class FlexGate:
    """Counts flex requests in flight, to refuse those beyond the scenario's capacity."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0

    def try_enter(self, capacity: int | None) -> bool:
        with self._lock:
            if capacity is not None and self.in_flight >= capacity:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def storm_problem(storm: Storm, organization: str, model: str, tier: str) -> APIProblem:
    """The error a storm answers with."""
    headers: dict[str, str] = {"x-request-id": new_id("req")}
    if storm.should_retry is not None:
        headers["x-should-retry"] = "true" if storm.should_retry else "false"
    if storm.status == 498:
        return flex_capacity_exceeded(headers)
    if storm.status == 429:
        wait = 1.0 if storm.retry_after_s is None else storm.retry_after_s
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        return APIProblem(
            429,
            f"Rate limit reached for model `{model}` in organization `{organization}` service "
            f"tier `{tier}` on requests per minute (RPM): the service is busy. "
            f"Please try again in {wait:g}s.",
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    message, code = _SERVER_ERRORS.get(storm.status, _SERVER_ERRORS[500])
    return APIProblem(storm.status, message, type="internal_server_error", code=code, headers=headers)


def _limit_headers(emulator: Emulator, model: str, tier: str, base_model: str | None) -> dict[str, str]:
    """Groq: "the other headers are always included" — on refusals too."""
    return emulator.rate_limiter.headers(model, tier, base_model=base_model)


def _emulator(request: Request) -> Emulator:
    emulator: Emulator = request.app.state.emulator
    return emulator


async def create_chat_completion(request: Request) -> JSONResponse:
    emulator = _emulator(request)
    chat = emulator.responder.validate(await json_body(request))
    requested_tier = chat.service_tier or "on_demand"
    tier = "on_demand" if requested_tier == "auto" else requested_tier
    completion = emulator.responder.answer(chat, service_tier=tier)

    storm = emulator.faults.storm(emulator.clock.now(), requested_tier)
    if storm is not None:
        problem = storm_problem(storm, emulator.config.organization, chat.model.id, tier)
        problem.headers.update(_limit_headers(emulator, chat.model.id, tier, chat.model.base_model))
        raise problem

    flex = tier == "flex"
    gate = emulator.flex_gate
    if flex and not gate.try_enter(emulator.faults.scenario.flex_capacity):
        raise flex_capacity_exceeded({
            "x-request-id": new_id("req"),
            **_limit_headers(emulator, chat.model.id, tier, chat.model.base_model)})
    try:
        try:
            headers = emulator.rate_limiter.admit(
                chat.model.id, tier, tokens=completion["usage"]["total_tokens"],
                base_model=chat.model.base_model,
            )
        except APIProblem as problem:
            problem.headers.setdefault("x-request-id", completion["x_groq"]["id"])
            raise
        if emulator.config.chat_latency_s > 0:
            await anyio.sleep(emulator.config.chat_latency_s)
    finally:
        if flex:
            gate.leave()
    headers["x-request-id"] = completion["x_groq"]["id"]
    return JSONResponse(completion, headers=headers)


routes: list[BaseRoute] = [
    Route("/chat/completions", create_chat_completion, methods=["POST"]),
]
