"""A local server with a ``data_dir`` survives a restart: files, batches (mid-way included),
adapters and the clock come back, and a crash never makes a line run twice."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from pipeline.emulator import Emulator, EmulatorConfig, create_app
from pipeline.emulator.config import DEFAULT_API_KEY
from pipeline.emulator.errors import DataDirError
from pipeline.emulator.persist import DB_NAME
from tests.adapters import adapter_zip

pytestmark = pytest.mark.anyio

MODEL = "llama-3.1-8b-instant"
LINES = 20
STILL = 1e-9
"""A time scale at which the clock stands still unless a test moves it."""


def config(data_dir: Path, time_scale: float = STILL, **fields: Any) -> EmulatorConfig:
    # validation 10 s, then 10 lines per emulated second, then finalizing 20 s.
    return EmulatorConfig(data_dir=data_dir, time_scale=time_scale, throughput_lines_per_s=10,
                          validation_s=10, finalizing_s=20, cancelling_s=5, **fields)


@contextmanager
def running(data_dir: Path, time_scale: float = STILL, **fields: Any) -> Iterator[Emulator]:
    emulator = Emulator(config(data_dir, time_scale, **fields))
    try:
        yield emulator
    finally:
        emulator.close()


@asynccontextmanager
async def http(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(emulator=emulator)),
        base_url="http://emulator.local",
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    ) as client:
        yield client


def batch_input(n: int = LINES) -> bytes:
    return b"".join(
        orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": MODEL,
                               "messages": [{"role": "user", "content": f"question {i}"}]}}) + b"\n"
        for i in range(n)
    )


async def upload(client: httpx.AsyncClient, content: bytes, purpose: str = "batch",
                 name: str = "in.jsonl") -> str:
    response = await client.post("/openai/v1/files", files={"file": (name, content)},
                                 data={"purpose": purpose})
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


async def start_batch(client: httpx.AsyncClient, n: int = LINES) -> tuple[str, str]:
    """(input file id, batch id) of a new batch of ``n`` lines."""
    file_id = await upload(client, batch_input(n))
    response = await client.post("/openai/v1/batches", json={
        "input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert response.status_code == 200, response.text
    return file_id, response.json()["id"]


async def batch(client: httpx.AsyncClient, batch_id: str) -> dict[str, Any]:
    response = await client.get(f"/openai/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def batch_after(client: httpx.AsyncClient, emulator: Emulator, batch_id: str,
                      seconds: float) -> dict[str, Any]:
    emulator.clock.advance(seconds)
    return await batch(client, batch_id)


async def answered(client: httpx.AsyncClient, done: dict[str, Any]) -> list[str]:
    """Every custom_id in the output and error files, in file order (duplicates kept)."""
    ids: list[str] = []
    for key in ("output_file_id", "error_file_id"):
        if isinstance(done[key], str):
            raw = (await client.get(f"/openai/v1/files/{done[key]}/content")).content
            ids += [orjson.loads(line)["custom_id"] for line in raw.splitlines()]
    return ids


def every_id(n: int = LINES) -> list[str]:
    return sorted(f"r{i}" for i in range(n))


# -- restarts -----------------------------------------------------------------------------------


async def test_a_batch_half_done_continues_after_a_restart(tmp_path: Path) -> None:
    with running(tmp_path) as first:
        async with http(first) as client:
            file_id, batch_id = await start_batch(client)
            halfway = await batch_after(client, first, batch_id, 11)  # validated, 1 s of lines
            assert halfway["status"] == "in_progress"
            assert halfway["request_counts"] == {"total": LINES, "completed": 10, "failed": 0}
            files_before = (await client.get("/openai/v1/files")).json()["data"]

    with running(tmp_path) as second:
        async with http(second) as client:
            assert (await client.get("/openai/v1/files")).json()["data"] == files_before
            content = await client.get(f"/openai/v1/files/{file_id}/content")
            assert content.content == batch_input()
            again = await batch(client, batch_id)
            assert again == halfway
            listed = (await client.get("/openai/v1/batches")).json()["data"]
            assert [b["id"] for b in listed] == [batch_id]
            done = await batch_after(client, second, batch_id, 100)
            assert done["status"] == "completed"
            assert done["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
            assert done["in_progress_at"] == halfway["in_progress_at"]
            assert sorted(await answered(client, done)) == every_id()
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == []

    with running(tmp_path) as third:  # settled stays settled, and its files stay downloadable
        async with http(third) as client:
            assert await batch(client, batch_id) == done
            assert sorted(await answered(client, done)) == every_id()


async def test_the_first_read_after_a_restart_runs_the_lines_of_the_gap(tmp_path: Path) -> None:
    with running(tmp_path) as first:
        async with http(first) as client:
            _, batch_id = await start_batch(client)
            assert (await batch_after(client, first, batch_id, 10.5))["request_counts"]["completed"] == 5
            first.clock.advance(1)  # 10 more lines are due, but nobody reads the batch before exit

    with running(tmp_path) as second:
        async with http(second) as client:
            assert (await batch(client, batch_id))["request_counts"]["completed"] == 15
            done = await batch_after(client, second, batch_id, 100)
            assert sorted(await answered(client, done)) == every_id()


async def test_deleted_files_stay_deleted_and_cancel_carries_on(tmp_path: Path) -> None:
    with running(tmp_path) as first:
        async with http(first) as client:
            doomed = await upload(client, b"{}\n", name="doomed.jsonl")
            assert (await client.delete(f"/openai/v1/files/{doomed}")).status_code == 200
            _, batch_id = await start_batch(client)
            await batch_after(client, first, batch_id, 10.5)
            cancelling = await client.post(f"/openai/v1/batches/{batch_id}/cancel")
            assert cancelling.json()["status"] == "cancelling"

    with running(tmp_path) as second:
        async with http(second) as client:
            assert (await client.get(f"/openai/v1/files/{doomed}")).status_code == 404
            assert not (tmp_path / "files" / doomed).exists()
            cancelled = await batch_after(client, second, batch_id, 5)
            assert cancelled["status"] == "cancelled"
            assert cancelled["request_counts"] == {"total": LINES, "completed": 5, "failed": 15}
            assert sorted(await answered(client, cancelled)) == every_id()


async def test_an_adapter_survives_a_restart_and_its_model_still_answers(tmp_path: Path) -> None:
    with running(tmp_path) as first:
        async with http(first) as client:
            zip_id = await upload(client, adapter_zip(), purpose="fine_tuning", name="a.zip")
            created = await client.post("/v1/fine_tunings", json={
                "input_file_id": zip_id, "name": "support-bot", "type": "lora", "base_model": MODEL})
            assert created.status_code == 200, created.text
            ft = created.json()["data"]
            model = ft["fine_tuned_model"]

    with running(tmp_path) as second:
        async with http(second) as client:
            listed = (await client.get("/v1/fine_tunings")).json()["data"]
            assert listed == [ft]
            assert (await client.get(f"/openai/v1/models/{model}")).status_code == 200
            chat = await client.post("/openai/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "hello"}]})
            assert chat.status_code == 200, chat.text
            assert chat.json()["model"] == model
            assert (await client.delete(f"/v1/fine_tunings/{ft['id']}")).status_code == 200

    with running(tmp_path) as third:
        async with http(third) as client:
            assert (await client.get("/v1/fine_tunings")).json()["data"] == []
            assert (await client.get(f"/openai/v1/models/{model}")).status_code == 404


def test_the_clock_keeps_running_while_the_server_is_away(tmp_path: Path) -> None:
    with running(tmp_path, time_scale=3600) as first:
        first.clock.advance(1000)
        before = first.clock.now()
    time.sleep(0.05)  # 180 emulated seconds
    with running(tmp_path, time_scale=3600) as second:
        assert second.clock.now() >= before + 150
    # A new scale: carry on from the saved clock's "now" at the new pace.
    with running(tmp_path, time_scale=1) as third:
        resumed = third.clock.now()
        assert resumed >= before + 150
        assert third.clock.time_scale == 1
        time.sleep(0.05)
        assert resumed < third.clock.now() < resumed + 1


async def test_a_batch_created_at_one_pace_finishes_at_another(tmp_path: Path) -> None:
    with running(tmp_path, time_scale=STILL) as first:
        async with http(first) as client:
            _, batch_id = await start_batch(client)
    with running(tmp_path, time_scale=3600) as second:  # 32 emulated seconds pass in ~10 ms
        async with http(second) as client:
            for _ in range(200):
                done = await batch(client, batch_id)
                if done["status"] == "completed":
                    break
                await anyio.sleep(0.01)
            assert done["status"] == "completed"
            assert sorted(await answered(client, done)) == every_id()


# -- crashes ------------------------------------------------------------------------------------


async def test_lines_written_but_not_saved_are_cut_off_on_load(tmp_path: Path) -> None:
    with running(tmp_path) as first:
        async with http(first) as client:
            _, batch_id = await start_batch(client)
            await batch_after(client, first, batch_id, 10.5)
    # What a crash between appending lines and saving `done` leaves: bytes past the saved length.
    scratch = tmp_path / "scratch" / f"{batch_id}.output.jsonl"
    saved_length = scratch.stat().st_size
    with scratch.open("ab") as handle:
        handle.write(orjson.dumps({"custom_id": "r5", "response": {"status_code": 200}}) + b"\n")
        handle.write(b'{"custom_id": "r6", "resp')

    with running(tmp_path) as second:
        assert scratch.stat().st_size == saved_length
        async with http(second) as client:
            done = await batch_after(client, second, batch_id, 100)
            assert done["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
            assert sorted(await answered(client, done)) == every_id()


async def test_a_save_that_never_happened_runs_the_lines_again_once(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with running(tmp_path) as first:
        async with http(first) as client:
            _, batch_id = await start_batch(client)
            await batch_after(client, first, batch_id, 10.5)  # 5 lines, saved

            def killed(*args: Any, **kwargs: Any) -> None:
                raise SystemExit("kill -9")  # the process dies before the commit

            assert first.persist is not None
            monkeypatch.setattr(first.persist, "save_batch", killed)
            first.clock.advance(1)
            with pytest.raises(SystemExit):
                first.batches.snapshot(first.batches.require(batch_id))  # 10 lines appended
            monkeypatch.undo()

    with running(tmp_path) as second:
        async with http(second) as client:
            again = await batch(client, batch_id)
            assert again["request_counts"]["completed"] == 15  # the 10 lines ran again, once
            done = await batch_after(client, second, batch_id, 100)
            assert sorted(await answered(client, done)) == every_id()


async def test_a_crash_while_publishing_leaves_no_stray_output_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with running(tmp_path) as first:
        async with http(first) as client:
            file_id, batch_id = await start_batch(client)
            await batch_after(client, first, batch_id, 10.5)

            def killed(*args: Any, **kwargs: Any) -> None:
                raise SystemExit("kill -9")

            assert first.persist is not None
            monkeypatch.setattr(first.persist, "save_batch", killed)
            first.clock.advance(100)  # every line runs and the output file is published...
            with pytest.raises(SystemExit):  # ...but the process dies before the save
                first.batches.snapshot(first.batches.require(batch_id))
            monkeypatch.undo()

    with running(tmp_path) as second:
        async with http(second) as client:
            files = (await client.get("/openai/v1/files")).json()["data"]
            assert [f["id"] for f in files] == [file_id]
            assert sorted(p.name for p in (tmp_path / "files").iterdir()) == [file_id]
            done = await batch_after(client, second, batch_id, 100)
            assert done["status"] == "completed"
            assert sorted(await answered(client, done)) == every_id()
            files = (await client.get("/openai/v1/files")).json()["data"]
            assert sorted(f["id"] for f in files) == sorted([file_id, done["output_file_id"]])


async def test_a_copy_taken_mid_batch_is_a_loadable_state(tmp_path: Path) -> None:
    live, copy = tmp_path / "live", tmp_path / "copy"
    with running(live) as first:
        async with http(first) as client:
            _, batch_id = await start_batch(client)
            await batch_after(client, first, batch_id, 10.5)
            shutil.copytree(live, copy)  # database, its WAL and the scratch files, while open
            await batch_after(client, first, batch_id, 0.5)

    with running(copy) as restored:
        async with http(restored) as client:
            assert (await batch(client, batch_id))["request_counts"]["completed"] == 5
            done = await batch_after(client, restored, batch_id, 100)
            assert sorted(await answered(client, done)) == every_id()


async def test_contents_no_saved_state_names_are_removed(tmp_path: Path) -> None:
    with running(tmp_path) as first:
        async with http(first) as client:
            kept = await upload(client, batch_input(1))
    stray = tmp_path / "files" / ("file_" + "0" * 26)  # an upload cut short by a crash
    stray.write_bytes(b"half an upload")
    stale = tmp_path / "scratch" / f"batch_{'1' * 26}.output.jsonl"
    stale.write_bytes(b"{}\n")
    unrelated = tmp_path / "files" / "notes.txt"
    unrelated.write_text("mine")
    with running(tmp_path):
        assert not stray.exists()
        assert not stale.exists()
        assert unrelated.exists()
        assert (tmp_path / "files" / kept).exists()


# -- what cannot be loaded ----------------------------------------------------------------------


def test_an_unknown_schema_version_is_a_clear_error(tmp_path: Path) -> None:
    with running(tmp_path):
        pass
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(DataDirError) as caught:
        Emulator(config(tmp_path))
    message = str(caught.value)
    assert str(tmp_path) in message
    assert "schema version 99" in message
    assert caught.value.exit_code == 2


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite, just text " * 100)
    with pytest.raises(DataDirError, match="cannot be read") as caught:
        Emulator(config(tmp_path))
    assert str(tmp_path) in str(caught.value)


def test_two_servers_cannot_share_a_data_dir(tmp_path: Path) -> None:
    with running(tmp_path), pytest.raises(DataDirError, match="in use"):
        Emulator(config(tmp_path))
    with running(tmp_path):  # released by close()
        pass


def test_without_a_data_dir_nothing_is_saved(tmp_path: Path) -> None:
    emulator = Emulator(EmulatorConfig())
    try:
        assert emulator.persist is None
        assert not (emulator.files.root.parent / DB_NAME).exists()
    finally:
        emulator.close()
