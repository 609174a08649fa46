"""Creating a batch (or uploading a file) is never retried blindly: when the answer is lost,
the server is asked before the call is made again, so nothing is created — or paid — twice."""

from __future__ import annotations

import httpx
import pytest

from pipeline.client import GroqClient
from pipeline.emulator import Emulator, create_app
from pipeline.retry import RetryPolicy
from pipeline.submit import batch_metadata, make_once
from tests.conftest import API_KEY

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002)
LINE = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"llama-3.1-8b-instant","messages":[{"role":"user","content":"hi"}]}}\n'


class LoseAnswers(httpx.AsyncBaseTransport):
    """Passes requests to the server, then throws away the first ``n`` answers to ``path``,
    as a connection that drops after the server acted."""

    def __init__(self, inner: httpx.AsyncBaseTransport, path: str, n: int) -> None:
        self.inner, self.path, self.left = inner, path, n

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == self.path and self.left > 0:
            self.left -= 1
            await response.aread()
            raise httpx.ReadError("connection dropped after the server answered", request=request)
        return response


def client_losing(emulator: Emulator, path: str, n: int) -> GroqClient:
    inner = httpx.ASGITransport(app=create_app(emulator=emulator))
    return GroqClient("http://local", API_KEY, transport=LoseAnswers(inner, path, n), retry=FAST)


async def test_lost_create_answer_adopts_instead_of_creating_again(emulator: Emulator, tmp_path) -> None:
    shard = {"key": "job-abc-1", "bytes": len(LINE), "updated_at": 0.0}
    path = tmp_path / "shard.jsonl"
    path.write_bytes(LINE)
    async with client_losing(emulator, "/openai/v1/batches", n=2) as client:
        uploaded = await client.upload_file(path, filename="groqbatch-job-abc-1.jsonl")
        from pipeline.submit import _adopt_batch

        batch, adopted = await make_once(
            client,
            lambda: client.create_batch(uploaded.id, completion_window="24h",
                                        metadata=batch_metadata("job", shard["key"]),
                                        retry=RetryPolicy(max_attempts=1)),
            lambda: _adopt_batch(client, "job", shard),
        )
    assert adopted is True
    assert [b.id for b in emulator.batches.all()] == [batch.id], "exactly one batch on the server"


async def test_lost_upload_answer_adopts_the_file(emulator: Emulator, tmp_path) -> None:
    path = tmp_path / "shard.jsonl"
    path.write_bytes(LINE)
    shard = {"key": "job-abc-2", "bytes": len(LINE)}
    async with client_losing(emulator, "/openai/v1/files", n=1) as client:
        from pipeline.submit import _adopt_file, upload_filename

        remote, adopted = await make_once(
            client,
            lambda: client.upload_file(path, filename=upload_filename(shard["key"]),
                                       retry=RetryPolicy(max_attempts=1)),
            lambda: _adopt_file(client, shard, set()),
        )
    assert adopted is True
    assert [f.id for f in emulator.files.all()] == [remote.id], "no second upload"


async def test_a_call_that_never_reached_the_server_is_made_again(emulator: Emulator, tmp_path) -> None:
    calls: list[int] = []

    async def find() -> None:
        return None

    async def make() -> str:
        calls.append(1)
        if len(calls) < 3:
            from pipeline.errors import TransportError

            raise TransportError("refused")
        return "made"

    async with client_losing(emulator, "/nowhere", n=0) as client:
        assert await make_once(client, make, find) == ("made", False)
    assert len(calls) == 3


async def test_finished_run_sweeps_stray_uploads_of_its_shards(emulator: Emulator, tmp_path) -> None:
    from pipeline.submit import sweep_orphan_uploads, upload_filename
    from state import Ledger, ShardRecord, ShardStep

    path = tmp_path / "shard.jsonl"
    path.write_bytes(LINE)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        ledger.record_job("job", "hash", "{}")
        ledger.record_shard("job", ShardRecord("job-abc-3", str(path), "sha", 1, len(LINE)), [])
        async with client_losing(emulator, "/nowhere", n=0) as client:
            kept = await client.upload_file(path, filename=upload_filename("job-abc-3"))
            stray = await client.upload_file(path, filename=upload_filename("job-abc-3"))
            other = await client.upload_file(path, filename="someone-elses.jsonl")
            ledger.set_shard_step("job-abc-3", ShardStep.COMPILED, ShardStep.UPLOADING)
            ledger.set_shard_step("job-abc-3", ShardStep.UPLOADING, ShardStep.UPLOADED, file_id=kept.id)
            assert await sweep_orphan_uploads(ledger, client, "job") == 1
            assert await sweep_orphan_uploads(ledger, client, "job") == 0
    remaining = {f.id for f in emulator.files.all()}
    assert remaining == {kept.id, other.id}
    assert stray.id not in remaining
