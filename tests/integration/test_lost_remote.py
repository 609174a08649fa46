"""Remote objects that vanish: a batch the server no longer knows, an output file gone for good.
Neither may leave a shard polled forever or its requests stuck: they go to the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import load_job
from pipeline.client import GroqClient
from pipeline.emulator import Emulator, EmulatorConfig
from pipeline.emulator.serve import ThreadedServer
from pipeline.runner import run_job
from tests.conftest import API_KEY
from tests.integration.lifecycle import assert_each_answered_once, read_ledger, write_job

pytestmark = pytest.mark.anyio


def slow_emulator() -> Emulator:
    # Batches stay in progress until the test moves the clock.
    return Emulator(EmulatorConfig(time_scale=1, throughput_lines_per_s=0.001, validation_s=1,
                                   finalizing_s=1))


async def test_a_batch_the_server_forgot_settles_as_lost_and_goes_to_flex(tmp_path: Path) -> None:
    emulator = slow_emulator()
    with ThreadedServer(emulator=emulator) as server:
        spec = load_job(write_job(tmp_path, rows=12, shard_lines=6, base_url=server.url, fallback=True))
        await run_job(spec, wait=False)
        submitted = [s for s in read_ledger(spec).shards if s["step"] == "submitted"]
        assert len(submitted) == 2
        forgotten = submitted[0]
        emulator.batches._batches.pop(forgotten["batch_id"])  # as if it aged out of the server
        emulator.clock.advance(86_400)  # the other batch finishes meanwhile
        summary = await run_job(spec, wait=True)
    view = read_ledger(spec)
    lost = next(s for s in view.shards if s["key"] == forgotten["key"])
    assert lost["step"] == "reconciled"
    assert lost["batch_status"] == "lost"
    assert summary.finished
    assert_each_answered_once(view, 12)
    flexed = {cid for cid, r in view.requests.items() if r.shard_key == forgotten["key"]}
    assert {view.results[cid].source for cid in flexed} == {"flex"}
    emulator.close()


async def test_an_output_file_gone_for_good_makes_its_requests_missing(tmp_path: Path) -> None:
    emulator = slow_emulator()
    with ThreadedServer(emulator=emulator) as server:
        spec = load_job(write_job(tmp_path, rows=6, shard_lines=6, base_url=server.url, fallback=True))
        await run_job(spec, wait=False)
        (shard,) = read_ledger(spec).shards
        emulator.clock.advance(86_400)  # the batch finishes (its window is 24h; lines ran)
        async with GroqClient(server.url, API_KEY) as client:
            batch = await client.get_batch(shard["batch_id"])
            assert batch.status in ("completed", "expired")
            assert batch.output_file_id is not None
            await client.delete_file(batch.output_file_id)
        summary = await run_job(spec, wait=True)
    assert summary.reconciled["lost_files"] == 1
    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, 6)
    assert {r.source for r in view.results.values()} == {"flex"}
    emulator.close()


