"""The local server's journal of calls (``GET/DELETE /_emulator/requests``): what a client sent,
counted from the server's side, in-process and over a loopback port."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from pipeline.emulator import Emulator, EmulatorConfig, Scenario, create_app
from pipeline.emulator.journal import DROPPED, RequestJournal
from pipeline.emulator.serve import ThreadedServer
from tests.conftest import API_KEY

MODEL = "llama-3.1-8b-instant"
GROQ_CHAT = "/openai/v1/chat/completions"
OPENAI_CHAT = "/v1/chat/completions"
ENTRY_KEYS = {"seq", "at", "method", "path", "status", "digest", "custom_id", "service_tier",
              "batch_id", "file_id"}


def chat_body(text: str = "name three rivers", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def canonical_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def journal(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/_emulator/requests", params=params)
    assert response.status_code == 200, response.text
    listing = response.json()
    assert listing["object"] == "list"
    entries: list[dict[str, Any]] = listing["data"]
    return entries


# -- in-process (ASGI) ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_equal_chat_bodies_have_equal_digests(client: httpx.AsyncClient) -> None:
    body = chat_body(temperature=0.5, service_tier="flex")
    # The same body as another client would write it: other key order, other whitespace.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    other = chat_body("name three mountains")
    for path, content in ((GROQ_CHAT, orjson.dumps(body)), (OPENAI_CHAT, reordered.encode()),
                          (GROQ_CHAT, orjson.dumps(other))):
        answer = await client.post(path, content=content, headers={"content-type": "application/json"})
        assert answer.status_code == 200, answer.text

    first, second, third = await journal(client)
    assert [e["path"] for e in (first, second, third)] == [GROQ_CHAT, OPENAI_CHAT, GROQ_CHAT]
    assert [e["seq"] for e in (first, second, third)] == [1, 2, 3]
    assert set(first) == ENTRY_KEYS
    assert (first["method"], first["status"]) == ("POST", 200)
    assert first["digest"] == second["digest"] == canonical_digest(body)
    assert third["digest"] == canonical_digest(other) != first["digest"]
    assert (first["service_tier"], third["service_tier"]) == ("flex", None)
    assert (first["custom_id"], first["batch_id"]) == (None, None)


@pytest.mark.anyio
async def test_custom_id_from_header_or_metadata(client: httpx.AsyncClient) -> None:
    await client.post(GROQ_CHAT, json=chat_body(), headers={"x-custom-id": "row-7"})
    await client.post(GROQ_CHAT, json=chat_body(metadata={"custom_id": "row-8"}))
    assert [e["custom_id"] for e in await journal(client)] == ["row-7", "row-8"]


@pytest.mark.anyio
async def test_file_upload_and_batch_create_are_recorded(client: httpx.AsyncClient) -> None:
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": chat_body()}
    upload = await client.post("/openai/v1/files", files={"file": ("in.jsonl", orjson.dumps(line))},
                               data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    create = await client.post("/v1/batches", json={
        "input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert create.status_code == 200, create.text
    batch_id = create.json()["id"]
    assert (await client.get(f"/openai/v1/batches/{batch_id}")).status_code == 200

    uploaded, created, polled = await journal(client)
    assert (uploaded["method"], uploaded["path"], uploaded["status"]) == ("POST", "/openai/v1/files", 200)
    assert (uploaded["file_id"], uploaded["digest"]) == (file_id, None)
    assert (created["method"], created["path"], created["status"]) == ("POST", "/v1/batches", 200)
    assert (created["batch_id"], created["file_id"]) == (batch_id, None)
    assert (polled["method"], polled["batch_id"]) == ("GET", batch_id)


@pytest.mark.anyio
async def test_clear_forgets_and_seq_carries_on(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.get("/openai/v1/models")
    assert len(await journal(client)) == 3
    cleared = await client.delete("/_emulator/requests")
    assert cleared.status_code == 200
    assert cleared.json() == {"cleared": 3}
    assert await journal(client) == []
    await client.get("/v1/models")
    (after,) = await journal(client)
    assert (after["seq"], after["path"]) == (4, "/v1/models")
    assert (await client.delete("/_emulator/requests")).json() == {"cleared": 1}


@pytest.mark.anyio
async def test_filters_and_admin_routes_left_out(client: httpx.AsyncClient) -> None:
    await client.post(GROQ_CHAT, json=chat_body())
    await client.get("/openai/v1/models")
    await client.get("/_emulator/state")
    await client.post(OPENAI_CHAT, json=chat_body("again"))
    await client.get("/healthz")

    everything = await journal(client)
    assert [e["path"] for e in everything] == [GROQ_CHAT, "/openai/v1/models", OPENAI_CHAT, "/healthz"]
    assert [e["seq"] for e in await journal(client, path_contains="chat")] == [1, 3]
    assert [e["path"] for e in await journal(client, method="get")] == ["/openai/v1/models", "/healthz"]
    assert [e["seq"] for e in await journal(client, since=3)] == [4]
    bad = await client.get("/_emulator/requests", params={"since": "soon"})
    assert bad.status_code == 400


@pytest.mark.anyio
async def test_refused_calls_are_recorded(emulator: Emulator, client: httpx.AsyncClient) -> None:
    refused = await client.get("/openai/v1/models", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401
    assert (await client.post(GROQ_CHAT, json={"model": MODEL})).status_code == 400
    anonymous = await client.get("/_emulator/requests", headers={"Authorization": "Bearer wrong"})
    assert anonymous.status_code == 401  # the journal needs the key, as the other admin routes
    assert [(e["path"], e["status"]) for e in emulator.journal.entries()] == [
        ("/openai/v1/models", 401), (GROQ_CHAT, 400)]


def test_journal_keeps_the_newest_entries() -> None:
    journal = RequestJournal(max_entries=3)
    for n in range(5):
        journal.finish(journal.open(at=float(n), method="GET", path=f"/v1/files/f{n}"), 200)
    assert [e["seq"] for e in journal.entries()] == [3, 4, 5]
    assert journal.clear() == 3
    assert journal.open(at=9.0, method="GET", path="/healthz").seq == 6


@pytest.mark.anyio
async def test_not_saved_in_data_dir(tmp_path: Path) -> None:
    async def upload(emulator: Emulator) -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(emulator=emulator)),
                                     base_url="http://local",
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            answer = await http.post("/openai/v1/files", files={"file": ("a.jsonl", b"{}\n")},
                                     data={"purpose": "batch"})
            file_id: str = answer.json()["id"]
            return file_id

    first = Emulator(EmulatorConfig(data_dir=tmp_path))
    try:
        file_id = await upload(first)
        assert [e["file_id"] for e in first.journal.entries()] == [file_id]
    finally:
        first.close()
    again = Emulator(EmulatorConfig(data_dir=tmp_path))
    try:
        assert again.files.get(file_id) is not None  # the state came back; the journal did not
        assert again.journal.entries() == []
        await upload(again)
        assert [e["seq"] for e in again.journal.entries()] == [1]
    finally:
        again.close()


# -- on a loopback port (uvicorn) -------------------------------------------------------------


def server_journal(server: ThreadedServer, **params: Any) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.url}/_emulator/requests", params=params,
                       headers={"Authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()["data"]
    return entries


def test_openai_sdk_calls_counted_by_the_server(server: ThreadedServer) -> None:
    texts = [f"question {n % 4}" for n in range(12)]
    with openai.OpenAI(api_key=API_KEY, base_url=server.url + "/openai/v1", max_retries=0) as sdk:
        sdk.models.list()

        def ask(text: str) -> None:
            sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                        service_tier="on_demand")  # type: ignore[arg-type]

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(ask, texts))

    chats = server_journal(server, path_contains="chat", method="POST")
    assert len(chats) == len(texts)
    assert all(e["path"] == GROQ_CHAT and e["status"] == 200 for e in chats)
    assert all(e["service_tier"] == "on_demand" for e in chats)
    assert len({e["seq"] for e in chats}) == len(texts)
    # Four distinct questions, three times each: the digests say so.
    assert sorted(sum(e["digest"] == d for e in chats) for d in {e["digest"] for e in chats}) == [3] * 4
    assert [e["path"] for e in server_journal(server, path_contains="models")] == ["/openai/v1/models"]


def test_dropped_connection_is_status_zero(emulator: Emulator, server: ThreadedServer) -> None:
    emulator.faults.replace(Scenario(drop_connection_rates={"chat": 1.0}), started_at=emulator.clock.now())
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{server.url}{OPENAI_CHAT}", json=chat_body(),
                   headers={"Authorization": f"Bearer {API_KEY}"})
    (dropped,) = server_journal(server)
    assert (dropped["path"], dropped["status"]) == (OPENAI_CHAT, DROPPED)
    assert dropped["digest"] == canonical_digest(chat_body())
