"""Every batch line's time falls within its batch's run (issue 11, case 8): a completed
batch's lines between ``in_progress_at`` and ``finalizing_at``, an expired one's before
``expired_at``, a cancelled one's before ``cancelling_at`` — in order, however late the server
got round to writing them (here: only when the batch is retrieved, long after)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from pipeline.emulator import Emulator, Scenario
from pipeline.emulator.config import BatchFaults
from tests.integration import test_emulator_batches as batches_tests
from tests.integration.test_emulator_batches import (
    LINES_PER_S,
    T0,
    VALIDATION_S,
    at,
    content,
    create,
)

# The same server as the batch tests: a clock that stands still unless a test moves it.
emulator_config = pytest.fixture(batches_tests.emulator_config.__wrapped__)
emulator = pytest.fixture(batches_tests.emulator.__wrapped__)

pytestmark = pytest.mark.anyio
N = 40


def line_times(lines: list[bytes]) -> list[int]:
    times = []
    for raw in lines:
        line = orjson.loads(raw)
        body = (line.get("response") or {}).get("body") or {}
        if "created" in body:
            times.append(int(body["created"]))
    return times


async def settle(client: httpx.AsyncClient, emulator: Emulator, batch_id: str) -> dict[str, Any]:
    batch = await at(client, emulator, batch_id, 48 * 3600)  # well past everything
    assert batch["status"] in ("completed", "expired", "cancelled"), batch["status"]
    return batch


async def test_a_completed_batchs_lines_ran_between_in_progress_and_finalizing(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    batch = await create(client, n=N)
    done = await settle(client, emulator, batch["id"])
    times = line_times(await content(client, done["output_file_id"]))
    assert len(times) == N
    assert done["in_progress_at"] <= min(times)
    assert max(times) <= done["finalizing_at"] <= done["completed_at"]
    assert times == sorted(times)


async def test_an_expired_batchs_lines_ran_before_it_expired(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.faults.replace(Scenario(batch=BatchFaults(expire_after_fraction=0.5)),
                            started_at=emulator.clock.now())
    batch = await create(client, n=N)
    done = await settle(client, emulator, batch["id"])
    assert done["status"] == "expired"
    times = line_times(await content(client, done["output_file_id"]))
    assert 0 < len(times) < N
    assert done["in_progress_at"] <= min(times)
    assert max(times) <= done["expired_at"]


async def test_a_cancelled_batchs_lines_ran_before_the_cancel(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    batch = await create(client, n=N)
    # Half way through the lines, cancel.
    await at(client, emulator, batch["id"], VALIDATION_S + (N / 2) / LINES_PER_S)
    response = await client.post(f"/openai/v1/batches/{batch['id']}/cancel")
    assert response.status_code == 200, response.text
    done = await settle(client, emulator, batch["id"])
    assert done["status"] == "cancelled"
    times = line_times(await content(client, done["output_file_id"]))
    assert 0 < len(times) < N
    assert done["in_progress_at"] <= min(times)
    assert max(times) <= done["cancelling_at"] <= done["cancelled_at"]
    assert min(times) >= T0
