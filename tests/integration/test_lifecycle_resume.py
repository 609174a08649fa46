"""Resuming: ``wait=False`` runs that each advance the job until it is done (the in-process
server keeping its state in ``[local].data_dir`` between them), a finished job that sends
nothing when run again, and the crash-exact submission path adopting a file or a batch that a
crashed run created but never recorded."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from jobs import compile_job, load_job
from pipeline.client import GroqClient
from pipeline.emulator import Emulator, EmulatorConfig
from pipeline.emulator.config import DEFAULT_API_KEY
from pipeline.emulator.serve import ThreadedServer
from pipeline.runner import run_job
from pipeline.submit import batch_metadata, upload_filename
from state import Ledger, ShardStep
from tests.integration.lifecycle import (
    access_log,
    assert_each_answered_once,
    assert_own_answers,
    read_ledger,
    write_job,
)

pytestmark = pytest.mark.anyio

ROWS, SHARD_LINES, SHARDS = 20, 6, 4


def remote_batches(data_dir: Path) -> dict[str, dict[str, str] | None]:
    """batch id → metadata, from the in-process server's saved state (no server is running)."""
    emulator = Emulator(EmulatorConfig(data_dir=data_dir))
    try:
        return {b.id: b.metadata for b in emulator.batches.newest_first()}
    finally:
        emulator.close()


async def test_no_wait_runs_each_advance_until_the_job_is_done(tmp_path: Path) -> None:
    # The in-process server runs ~7 lines a real second: a 6-line batch needs a few calls, even
    # on a loaded machine where each call takes a second or more.
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES,
                              local={"throughput_lines_per_s": 0.002}))
    summaries = []
    for _ in range(200):
        summary = await run_job(spec, wait=False)
        summaries.append(summary)
        assert summary.rounds == 1
        if summary.finished:
            break
        await anyio.sleep(0.1)
    assert summaries[-1].finished
    assert len(summaries) >= 3
    first = summaries[0]
    assert first.shards["submitted"] == SHARDS
    assert first.requests["submitted"] == ROWS
    assert "run again to continue" in first.notes[-1]
    done = [s.requests["succeeded"] for s in summaries]
    assert done == sorted(done)
    assert done[-1] == ROWS
    assert [s.run_id for s in summaries] == list(range(1, len(summaries) + 1))
    assert sum(s.compile["to_send"] for s in summaries) == ROWS  # compiled once

    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
    remote = remote_batches(spec.local_data_dir)
    assert sorted(remote) == sorted(s["batch_id"] for s in view.shards)  # one batch per shard

    # Run again: nothing to send, nothing to poll, no new batch.
    again = await run_job(spec)
    assert again.finished
    assert again.compile["to_send"] == 0
    assert again.compile["already_answered"] == ROWS
    assert (again.poll_calls, again.reconciled["shards"]) == (0, 0)
    assert remote_batches(spec.local_data_dir) == remote
    assert read_ledger(spec).results == view.results


async def test_a_finished_job_run_again_sends_nothing_over_http(tmp_path: Path, emulator: Emulator) -> None:
    with ThreadedServer(emulator=emulator, log_level="debug") as server:
        spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
        first = await run_job(spec)
        assert first.finished
        assert first.requests["succeeded"] == ROWS
        batches = len(emulator.batches.newest_first())
        with access_log() as seen:
            again = await run_job(spec)
    assert again.finished
    assert again.requests["succeeded"] == ROWS
    assert seen == []  # not one call
    assert len(emulator.batches.newest_first()) == batches == SHARDS


async def test_submit_adopts_what_a_crashed_run_created_and_never_recorded(
    tmp_path: Path, server: ThreadedServer
) -> None:
    spec = load_job(write_job(tmp_path, rows=24, shard_lines=SHARD_LINES, base_url=server.url))
    with Ledger.open(spec.ledger_target) as ledger:
        compile_job(spec, ledger)
        uploaded_only, created, intent_upload, intent_create = ledger.shards(spec.name)
        async with GroqClient(server.url, DEFAULT_API_KEY) as client:
            # Crashed after uploading, before recording the file id.
            ledger.set_shard_step(uploaded_only["key"], ShardStep.COMPILED, ShardStep.UPLOADING)
            lost_file = await client.upload_file(Path(uploaded_only["path"]),
                                                 filename=upload_filename(uploaded_only["key"]))
            # Crashed after creating the batch, before recording the batch id.
            file_id = await upload_and_record(ledger, client, created)
            ledger.set_shard_step(created["key"], ShardStep.UPLOADED, ShardStep.SUBMITTING)
            lost_batch = await client.create_batch(file_id, completion_window="24h",
                                                   metadata=batch_metadata(spec.name, created["key"]))
            # Crashed after recording an intent, before the call was made.
            ledger.set_shard_step(intent_upload["key"], ShardStep.COMPILED, ShardStep.UPLOADING)
            await upload_and_record(ledger, client, intent_create)
            ledger.set_shard_step(intent_create["key"], ShardStep.UPLOADED, ShardStep.SUBMITTING)

    summary = await run_job(spec)

    assert summary.finished
    assert summary.requests["succeeded"] == 24
    view = read_ledger(spec)
    assert_each_answered_once(view, 24)
    assert_own_answers(view)
    by_key = {s["key"]: s for s in view.shards}
    assert by_key[uploaded_only["key"]]["file_id"] == lost_file.id
    assert by_key[created["key"]]["batch_id"] == lost_batch.id
    # Exactly one uploaded file and one batch per shard on the server.
    uploads = sorted(f.filename for f in server.emulator.files.all() if f.purpose == "batch")
    assert uploads == sorted(upload_filename(key) for key in by_key)
    remote = sorted((b.metadata or {})["groqbatch_shard"] for b in server.emulator.batches.newest_first())
    assert remote == sorted(by_key)


async def upload_and_record(ledger: Ledger, client: GroqClient, shard: dict[str, object]) -> str:
    """Take a shard to ``uploaded`` the way submit does."""
    key = str(shard["key"])
    ledger.set_shard_step(key, ShardStep.COMPILED, ShardStep.UPLOADING)
    remote = await client.upload_file(Path(str(shard["path"])), filename=upload_filename(key))
    ledger.set_shard_step(key, ShardStep.UPLOADING, ShardStep.UPLOADED, file_id=remote.id)
    return remote.id


async def test_a_shard_left_submitting_adopts_the_right_batch_among_many(
    tmp_path: Path, server: ThreadedServer
) -> None:
    """Other jobs' batches and newer ones are on the server too; only the metadata match counts."""
    spec = load_job(write_job(tmp_path / "a", name="adopt", rows=6, shard_lines=6, base_url=server.url))
    other = load_job(write_job(tmp_path / "b", name="other", rows=12, shard_lines=6, base_url=server.url))
    assert (await run_job(other)).finished
    with Ledger.open(spec.ledger_target) as ledger:
        compile_job(spec, ledger)
        (shard,) = ledger.shards(spec.name)
        async with GroqClient(server.url, DEFAULT_API_KEY) as client:
            file_id = await upload_and_record(ledger, client, shard)
            ledger.set_shard_step(shard["key"], ShardStep.UPLOADED, ShardStep.SUBMITTING)
            ours = await client.create_batch(file_id, completion_window="24h",
                                             metadata=batch_metadata(spec.name, shard["key"]))
            # A batch of another job created afterwards, with the same shard key but other metadata.
            await client.create_batch(file_id, completion_window="24h",
                                      metadata=batch_metadata("someone-else", shard["key"]))

    summary = await run_job(spec)

    assert summary.finished
    assert summary.requests["succeeded"] == 6
    view = read_ledger(spec)
    assert view.shards[0]["batch_id"] == ours.id
    assert_own_answers(view)
    assert len(server.emulator.batches.newest_first()) == 2 + 2  # other's two, ours, the decoy
