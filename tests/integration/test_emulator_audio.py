"""The local server's audio endpoints over HTTP (in-process): batch lines for transcriptions and
translations (by ``url`` only; a mixed batch), the synchronous multipart bodies refused as Groq
refuses them, and the pipeline's client reading every response format."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from pipeline.client import GroqClient
from pipeline.emulator import Emulator, create_app
from tests.audio import wav_bytes, wav_data_url
from tests.conftest import API_KEY

pytestmark = pytest.mark.anyio

TRANSCRIBE, TRANSLATE, CHAT = "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/chat/completions"


def line(custom_id: str, endpoint: str, **body: Any) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": endpoint,
                         "body": body}) + b"\n"


async def run_batch(client: httpx.AsyncClient, emulator: Emulator, content: bytes,
                    endpoint: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Upload, create, let the batch finish: (batch, output lines by id, error lines by id)."""
    upload = await client.post("/openai/v1/files", files={"file": ("in.jsonl", content)},
                               data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    created = await client.post("/openai/v1/batches", json={
        "input_file_id": upload.json()["id"], "endpoint": endpoint, "completion_window": "24h"})
    assert created.status_code == 200, created.text
    assert created.json()["endpoint"] == endpoint
    emulator.clock.advance(3 * 3600)
    batch = (await client.get(f"/openai/v1/batches/{created.json()['id']}")).json()
    assert batch["status"] == "completed", batch
    files = []
    for key in ("output_file_id", "error_file_id"):
        lines: dict[str, Any] = {}
        if batch[key]:
            raw = (await client.get(f"/openai/v1/files/{batch[key]}/content")).content
            lines = {item["custom_id"]: item for item in map(orjson.loads, raw.splitlines())}
        files.append(lines)
    return batch, files[0], files[1]


async def test_a_batch_of_audio_lines_answers_each_format(client: httpx.AsyncClient,
                                                          emulator: Emulator) -> None:
    url = wav_data_url(1.6)
    content = b"".join([
        line("json", TRANSCRIBE, model="whisper-large-v3", url=url),
        line("verbose", TRANSCRIBE, model="whisper-large-v3-turbo", url=url, language="en",
             response_format="verbose_json", timestamp_granularities=["word", "segment"]),
        line("text", TRANSLATE, model="whisper-large-v3", url=url, response_format="text"),
        line("chat", CHAT, model="llama-3.1-8b-instant",
             messages=[{"role": "user", "content": "hi"}]),  # a mixed batch, as Groq's docs show
        line("file", TRANSCRIBE, model="whisper-large-v3", file="aGk="),
        line("turbo-translate", TRANSLATE, model="whisper-large-v3-turbo", url=url),
        line("no-stamps", TRANSCRIBE, model="whisper-large-v3", url=url,
             timestamp_granularities=["word"]),
        line("chat-model", TRANSCRIBE, model="llama-3.1-8b-instant", url=url),
    ])
    batch, out, err = await run_batch(client, emulator, content, TRANSCRIBE)
    assert batch["request_counts"] == {"total": 8, "completed": 4, "failed": 4}
    assert set(out) == {"json", "verbose", "text", "chat"}
    json_body = out["json"]["response"]["body"]
    assert set(json_body) == {"text", "usage", "x_groq"}
    assert json_body["usage"] == {"type": "duration", "seconds": 2}
    assert out["json"]["response"]["request_id"] == json_body["x_groq"]["id"]
    verbose = out["verbose"]["response"]["body"]
    assert verbose["duration"] == 1.6
    assert verbose["segments"][-1]["end"] == 1.6
    assert verbose["words"][-1]["end"] == 1.6
    assert isinstance(out["text"]["response"]["body"], str)  # text: the response body is the text
    assert out["chat"]["response"]["body"]["object"] == "chat.completion"
    reasons = {cid: item["response"]["body"]["error"]["message"] for cid, item in err.items()}
    assert "not supported in Batch API requests" in reasons["file"]
    assert "does not support translations" in reasons["turbo-translate"]
    assert "verbose_json" in reasons["no-stamps"]
    assert "does not support" in reasons["chat-model"]
    assert all(item["response"]["status_code"] == 400 for item in err.values())


async def test_a_chat_request_to_a_whisper_model_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/openai/v1/chat/completions", json={
        "model": "whisper-large-v3", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize(("fields", "param"), [
    ({"model": "whisper-large-v3", "url": "https://example.com/a.wav", "service_tier": "flex"},
     "service_tier"),
    ({"model": "whisper-large-v3"}, "url"),
    ({"url": "https://example.com/a.wav"}, "model"),
    ({"model": "whisper-large-v3", "url": "https://example.com/a.wav", "response_format": "srt"},
     "response_format"),
])
async def test_sync_bodies_are_validated_as_groq_does(client: httpx.AsyncClient,
                                                      fields: dict[str, str], param: str) -> None:
    response = await client.post("/openai/v1/audio/transcriptions",
                                 files=[(k, (None, v)) for k, v in fields.items()])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_sync_refuses_a_file_and_a_url_together_and_json_bodies(client: httpx.AsyncClient) -> None:
    both = await client.post("/openai/v1/audio/transcriptions",
                             data={"model": "whisper-large-v3", "url": "https://example.com/a.wav"},
                             files={"file": ("a.wav", wav_bytes(1.0), "audio/wav")})
    assert both.status_code == 400
    as_json = await client.post("/openai/v1/audio/transcriptions",
                                json={"model": "whisper-large-v3", "url": "https://example.com/a"})
    assert as_json.status_code == 400
    assert "multipart" in as_json.json()["error"]["message"]


async def test_the_pipeline_client_reads_every_format(emulator: Emulator) -> None:
    transport = httpx.ASGITransport(app=create_app(emulator=emulator))
    client = GroqClient("http://emulator.local", API_KEY, transport=transport)
    try:
        url = wav_data_url(2.2)
        text = await client.transcribe(TRANSCRIBE, {"model": "whisper-large-v3", "url": url,
                                                    "response_format": "text"})
        plain = await client.transcribe(TRANSCRIBE, {"model": "whisper-large-v3", "url": url})
        verbose = await client.transcribe(TRANSCRIBE, {
            "model": "whisper-large-v3", "url": url, "response_format": "verbose_json",
            "temperature": 0.2, "timestamp_granularities": ["segment", "word"]})
        translated = await client.transcribe(TRANSLATE, {"model": "whisper-large-v3", "url": url})
    finally:
        await client.aclose()
    assert text.body == {"text": plain.body["text"]}  # text/plain comes back as {"text": ...}
    assert plain.request_id == plain.body["x_groq"]["id"]
    assert verbose.body["duration"] == 2.2
    assert verbose.body["segments"][0]["temperature"] == 0.2
    assert verbose.body["words"]
    assert verbose.body["text"] == plain.body["text"]
    assert translated.body["text"] != plain.body["text"]
