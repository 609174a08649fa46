"""Admin endpoints under ``/_emulator`` for tests and demos (same bearer key as the API).

- ``GET  /_emulator/state``          clock, scenario, counts of files and batches by status
- ``PUT  /_emulator/scenario``       replace the fault scenario (body: a Scenario as JSON)
- ``POST /_emulator/clock/advance``  ``{"seconds": N}``: jump the virtual clock forward
- ``GET  /_emulator/requests``       the calls served, oldest first (:mod:`.journal`); filters
  ``?since=<seq>``, ``?method=POST``, ``?path_contains=chat``
- ``DELETE /_emulator/requests``     forget them: ``{"cleared": n}``
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import Route

from .config import Scenario
from .errors import bad_request
from .http import JSONResponse, json_body, query_int

if TYPE_CHECKING:
    from .server import Emulator


def _emulator(request: Request) -> Emulator:
    emulator: Emulator = request.app.state.emulator
    return emulator


async def state(request: Request) -> JSONResponse:
    emulator = _emulator(request)
    # Reading batches may settle them (file work): keep it off the event loop.
    batches = await anyio.to_thread.run_sync(emulator.batches.all)
    statuses = Counter(batch.status for batch in batches)
    return JSONResponse(
        {
            "now": emulator.clock.now(),
            "time_scale": emulator.clock.time_scale,
            "files": len(emulator.files.all()),
            "batches": dict(statuses),
            "scenario": emulator.faults.scenario.model_dump(mode="json"),
        }
    )


async def put_scenario(request: Request) -> JSONResponse:
    emulator = _emulator(request)
    try:
        scenario = Scenario.model_validate(await json_body(request))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise bad_request(f"Invalid scenario: {field}: {first['msg']}", param=field) from None
    emulator.faults.replace(scenario, started_at=emulator.clock.now())
    return JSONResponse(scenario.model_dump(mode="json"))


async def advance_clock(request: Request) -> JSONResponse:
    emulator = _emulator(request)
    body = await json_body(request)
    seconds = body.get("seconds")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise bad_request("`seconds` must be a non-negative number", param="seconds")
    emulator.clock.advance(float(seconds))
    return JSONResponse({"now": emulator.clock.now()})


async def list_requests(request: Request) -> JSONResponse:
    params = request.query_params
    since = query_int(params, "since", 0, low=0, high=2**63 - 1)
    journal = _emulator(request).journal
    # A million entries take a while to copy: keep it off the event loop.
    entries = await anyio.to_thread.run_sync(
        lambda: journal.entries(since=since, method=params.get("method"),
                                path_contains=params.get("path_contains")))
    return JSONResponse({"object": "list", "data": entries})


async def clear_requests(request: Request) -> JSONResponse:
    return JSONResponse({"cleared": _emulator(request).journal.clear()})


routes = [
    Route("/state", state, methods=["GET"]),
    Route("/scenario", put_scenario, methods=["PUT"]),
    Route("/clock/advance", advance_clock, methods=["POST"]),
    Route("/requests", list_requests, methods=["GET"]),
    Route("/requests", clear_requests, methods=["DELETE"]),
]
