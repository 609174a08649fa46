"""The official groq (sync and async) and openai SDKs against the local server over real HTTP:
upload → create → poll → download, list paging, the id filter, cancel, expiry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from groq import AsyncGroq, BadRequestError, Groq
from openai import OpenAI

from pipeline.emulator import Emulator, EmulatorConfig
from pipeline.emulator.serve import ThreadedServer
from tests.conftest import API_KEY

MODEL = "llama-3.1-8b-instant"
SETTLED = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Emulated time runs at real speed; tests jump it forward between polls."""
    return EmulatorConfig(time_scale=1, throughput_lines_per_s=1000, validation_s=0.5,
                          finalizing_s=0.5, cancelling_s=1)


@pytest.fixture
def groq(server: ThreadedServer) -> Iterator[Groq]:
    with Groq(base_url=server.url, api_key=API_KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def openai(server: ThreadedServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.url + "/openai/v1", api_key=API_KEY, max_retries=0) as client:
        yield client


def batch_file(ids: list[str], *, extra: bytes = b"") -> bytes:
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": [{"role": "user", "content": f"question {cid}"}]}}
        for cid in ids
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode() + extra


# One line fails validation (GET), one is rejected by the chat endpoint (no messages).
BAD_LINES = (
    b'{"custom_id":"bad-method","method":"GET","url":"/v1/chat/completions","body":{"model":"'
    + MODEL.encode() + b'"}}\n'
    b'{"custom_id":"no-messages","method":"POST","url":"/v1/chat/completions","body":{"model":"'
    + MODEL.encode() + b'","messages":[]}}\n'
)


def check_results(ids: list[str], output: str, errors: str) -> None:
    """Every custom_id is answered once, with the answer to its own question."""
    answered = [json.loads(line) for line in output.splitlines()]
    assert sorted(line["custom_id"] for line in answered) == sorted(ids)
    for line in answered:
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert f"question {line['custom_id']}" in content
    failed = {json.loads(line)["custom_id"]: json.loads(line) for line in errors.splitlines()}
    assert set(failed) == {"bad-method", "no-messages"}
    assert failed["bad-method"]["response"]["body"]["error"]["code"] == "invalid_method"
    assert failed["no-messages"]["response"]["status_code"] == 400


def poll(retrieve: Any, batch_id: str, emulator: Emulator, step_s: float = 1.0) -> Any:
    for _ in range(50):
        batch = retrieve(batch_id)
        if batch.status in SETTLED:
            return batch
        emulator.clock.advance(step_s)
    raise AssertionError(f"batch {batch_id} never settled")


def test_groq_sync_round_trip(groq: Groq, emulator: Emulator) -> None:
    ids = [f"g{i}" for i in range(12)]
    uploaded = groq.files.create(file=("in.jsonl", batch_file(ids, extra=BAD_LINES)), purpose="batch")
    batch = groq.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window="24h", metadata={"job": "sdk"})
    assert batch.status == "validating"
    assert batch.metadata == {"job": "sdk"}
    done = poll(groq.batches.retrieve, batch.id, emulator)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 14, "completed": 12, "failed": 2}
    assert done.errors is not None
    assert done.errors.data is not None
    assert [(e.code, e.line) for e in done.errors.data] == [("invalid_method", 13)]
    output = groq.files.content(done.output_file_id).text()
    errors = groq.files.content(done.error_file_id).text()
    check_results(ids, output, errors)


@pytest.mark.anyio
async def test_groq_async_round_trip(server: ThreadedServer, emulator: Emulator) -> None:
    async with AsyncGroq(base_url=server.url, api_key=API_KEY, max_retries=0) as client:
        ids = [f"a{i}" for i in range(8)]
        uploaded = await client.files.create(file=("in.jsonl", batch_file(ids, extra=BAD_LINES)),
                                             purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id,
                                            endpoint="/v1/chat/completions", completion_window="7d")
        for _ in range(50):
            batch = await client.batches.retrieve(batch.id)
            if batch.status in SETTLED:
                break
            emulator.clock.advance(1)
        assert batch.status == "completed"
        output = await (await client.files.content(batch.output_file_id)).text()
        errors = await (await client.files.content(batch.error_file_id)).text()
    check_results(ids, output, errors)


def test_openai_round_trip(openai: OpenAI, emulator: Emulator) -> None:
    ids = [f"o{i}" for i in range(10)]
    uploaded = openai.files.create(file=("in.jsonl", batch_file(ids, extra=BAD_LINES)), purpose="batch")
    batch = openai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    done = poll(openai.batches.retrieve, batch.id, emulator)
    assert done.status == "completed"
    assert done.completed_at is not None
    assert done.request_counts is not None
    assert done.request_counts.completed == 10
    output = openai.files.content(done.output_file_id or "").text
    errors = openai.files.content(done.error_file_id or "").text
    check_results(ids, output, errors)


def make_batches(groq: Groq, n: int) -> list[str]:
    uploaded = groq.files.create(file=("in.jsonl", batch_file(["x"])), purpose="batch")
    return [
        groq.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                            completion_window="24h").id
        for _ in range(n)
    ]


def test_openai_auto_pagination_terminates(groq: Groq, openai: OpenAI) -> None:
    made = make_batches(groq, 5)
    seen = [batch.id for batch in openai.batches.list(limit=2)]
    assert seen == made[::-1]


def test_groq_cursor_paging_terminates(groq: Groq) -> None:
    made = make_batches(groq, 5)
    seen: list[str] = []
    query: dict[str, Any] = {"limit": 2}
    for _ in range(10):
        page = groq.batches.list(extra_query=query)
        seen += [batch.id for batch in page.data]
        cursor = (page.model_extra or {}).get("paging", {}).get("next_cursor")
        if not cursor:
            break
        query = {"limit": 2, "cursor": cursor}
    assert seen == made[::-1]


def test_id_filter_with_each_sdk(groq: Groq, openai: OpenAI) -> None:
    made = make_batches(groq, 4)
    wanted = [made[1], made[3]]
    by_groq = groq.batches.list(extra_query={"id": wanted})  # ?id=a%2Cb
    assert {b.id for b in by_groq.data} == set(wanted)
    by_openai = openai.batches.list(extra_query={"id": wanted})  # ?id[]=a&id[]=b
    assert {b.id for b in by_openai} == set(wanted)


def test_cancel_keeps_partial_output(groq: Groq, openai: OpenAI, emulator: Emulator) -> None:
    emulator.config = emulator.config.model_copy(update={"throughput_lines_per_s": 1.0})
    ids = [f"c{i}" for i in range(10)]
    uploaded = groq.files.create(file=("in.jsonl", batch_file(ids)), purpose="batch")
    batch = groq.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window="24h")
    emulator.clock.advance(3.5)  # validation 0.5 s, then 3 lines at 1 line/s
    cancelling = openai.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    done = poll(groq.batches.retrieve, batch.id, emulator)
    assert done.status == "cancelled"
    assert done.cancelled_at is not None
    output = groq.files.content(done.output_file_id).text().splitlines()
    errors = [json.loads(line) for line in groq.files.content(done.error_file_id).text().splitlines()]
    assert len(output) == 3
    assert len(errors) == 7
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    with pytest.raises(BadRequestError, match="cannot be cancelled"):
        groq.batches.cancel(batch.id)


def test_expiry_with_partial_output(server: ThreadedServer, groq: Groq, emulator: Emulator) -> None:
    scenario = httpx.put(server.url + "/_emulator/scenario", json={"batch": {"expire_after_fraction": 0.5}},
                         headers={"Authorization": f"Bearer {API_KEY}"})
    assert scenario.status_code == 200
    ids = [f"e{i}" for i in range(10)]
    uploaded = groq.files.create(file=("in.jsonl", batch_file(ids)), purpose="batch")
    batch = groq.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window="24h")
    done = poll(groq.batches.retrieve, batch.id, emulator)
    assert done.status == "expired"
    assert done.expired_at is not None
    assert done.request_counts.model_dump() == {"total": 10, "completed": 5, "failed": 5}
    output = [json.loads(line) for line in groq.files.content(done.output_file_id).text().splitlines()]
    errors = [json.loads(line) for line in groq.files.content(done.error_file_id).text().splitlines()]
    assert {line["custom_id"] for line in output} | {line["custom_id"] for line in errors} == set(ids)
    assert all(line["error"]["code"] == "batch_expired" for line in errors)
