"""The official ``groq`` and ``openai`` SDKs against the local server on a loopback port:
chat on every tier, retries on 429, no retry on 498, models, and the LoRA flow."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import groq
import openai
import pytest

from pipeline.emulator import Emulator, Scenario
from pipeline.emulator.config import Storm
from pipeline.emulator.serve import ThreadedServer
from tests.adapters import BAD_ADAPTERS, adapter_zip
from tests.conftest import API_KEY

MODEL = "llama-3.1-8b-instant"
MESSAGES: list[Any] = [{"role": "user", "content": "name three rivers"}]
TIERS = ["auto", "on_demand", "flex", "performance"]


@pytest.fixture
def groq_client(server: ThreadedServer) -> Iterator[groq.Groq]:
    with groq.Groq(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        yield client


@pytest.fixture
def openai_client(server: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=API_KEY, base_url=server.url + "/openai/v1", max_retries=0) as client:
        yield client


def play(emulator: Emulator, *storms: Storm) -> None:
    emulator.faults.replace(Scenario(storms=storms), started_at=emulator.clock.now())


@pytest.mark.parametrize("tier", TIERS)
def test_groq_chat_on_each_tier(groq_client: groq.Groq, tier: Any) -> None:
    raw = groq_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, service_tier=tier)
    completion = raw.parse()
    assert raw.headers["x-request-id"] == completion.x_groq.id  # type: ignore[union-attr]
    assert int(raw.headers["x-ratelimit-remaining-requests"]) > 0
    assert completion.service_tier == ("on_demand" if tier == "auto" else tier)
    assert "name three rivers" in (completion.choices[0].message.content or "")
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


@pytest.mark.anyio
@pytest.mark.parametrize("tier", TIERS)
async def test_async_groq_chat(server: ThreadedServer, tier: Any) -> None:
    async with groq.AsyncGroq(api_key=API_KEY, base_url=server.url) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                          service_tier=tier)
    assert completion.service_tier == ("on_demand" if tier == "auto" else tier)


@pytest.mark.parametrize("tier", TIERS)
def test_openai_chat_on_each_tier(openai_client: openai.OpenAI, tier: Any) -> None:
    completion = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                       service_tier=tier)
    assert completion.service_tier == ("on_demand" if tier == "auto" else tier)
    assert completion.model_extra is not None
    assert completion.model_extra["x_groq"]["id"].startswith("req_")


def test_json_schema_through_the_sdk(openai_client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"rivers": {"type": "array", "items": {"type": "string"},
                                                          "minItems": 3, "maxItems": 3}},
              "required": ["rivers"], "additionalProperties": False}
    completion = openai_client.chat.completions.create(
        model="openai/gpt-oss-20b", messages=MESSAGES,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "rivers", "schema": schema, "strict": True}})
    assert len(json.loads(completion.choices[0].message.content or "")["rivers"]) == 3


@pytest.mark.parametrize("sdk", ["groq", "openai"])
def test_429_is_retried_after_retry_after(server: ThreadedServer, emulator: Emulator, sdk: str) -> None:
    # 1800 emulated seconds is half a real second at the fixture's time scale: the storm is
    # over when the SDK retries after `retry-after: 1`.
    play(emulator, Storm(status=429, retry_after_s=1, duration_s=1800))
    started = time.monotonic()
    if sdk == "groq":
        with groq.Groq(api_key=API_KEY, base_url=server.url, max_retries=1) as client:
            raw: Any = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    else:
        with openai.OpenAI(api_key=API_KEY, base_url=server.url + "/openai/v1", max_retries=1) as oai:
            raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    elapsed = time.monotonic() - started
    assert raw.http_request.headers["x-stainless-retry-count"] == "1"
    assert raw.parse().choices[0].message.content
    assert 0.9 <= elapsed < 5


def test_429_without_retries_raises_with_retry_after(groq_client: groq.Groq, emulator: Emulator) -> None:
    play(emulator, Storm(status=429, retry_after_s=7))
    with pytest.raises(groq.RateLimitError) as caught:
        groq_client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("sdk", ["groq", "openai"])
def test_498_is_not_retried(server: ThreadedServer, emulator: Emulator, sdk: str) -> None:
    play(emulator, Storm(status=498, tier="flex"))
    error: Any
    if sdk == "groq":
        with groq.Groq(api_key=API_KEY, base_url=server.url, max_retries=2) as client, \
                pytest.raises(groq.APIStatusError) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, service_tier="flex")
        error = caught.value
        assert error.body["error"]["code"] == "capacity_exceeded"
    else:
        with openai.OpenAI(api_key=API_KEY, base_url=server.url + "/openai/v1", max_retries=2) as oai, \
                pytest.raises(openai.APIStatusError) as caught_oai:
            oai.chat.completions.create(model=MODEL, messages=MESSAGES, service_tier="flex")  # type: ignore[arg-type]
        error = caught_oai.value
        assert error.code == "capacity_exceeded"
    assert error.status_code == 498
    assert error.response.request.headers["x-stainless-retry-count"] == "0"


def test_models_list_and_retrieve(groq_client: groq.Groq, openai_client: openai.OpenAI) -> None:
    ids = [m.id for m in groq_client.models.list().data]
    assert MODEL in ids
    assert "openai/gpt-oss-20b" in ids
    model = groq_client.models.retrieve(MODEL)
    assert model.context_window == 131_072  # type: ignore[attr-defined]
    nested = openai_client.models.retrieve("openai/gpt-oss-20b")
    assert nested.id == "openai/gpt-oss-20b"
    assert nested.model_extra is not None
    assert nested.model_extra["max_completion_tokens"] == 65_536
    assert MODEL in [m.id for m in openai_client.models.list()]


def _chat_text(client: groq.Groq | openai.OpenAI, model: str) -> str:
    completion = client.chat.completions.create(model=model, messages=MESSAGES)
    return completion.choices[0].message.content or ""


def test_lora_flow_with_groq(groq_client: groq.Groq) -> None:
    uploaded = groq_client.files.create(file=("adapter.zip", adapter_zip()), purpose="fine_tuning")  # type: ignore[arg-type]
    body = {"input_file_id": uploaded.id, "name": "rivers-expert", "type": "lora", "base_model": MODEL}
    created: Any = groq_client.post("/v1/fine_tunings", body=body, cast_to=object)
    model = created["data"]["fine_tuned_model"]
    listed: Any = groq_client.get("/v1/fine_tunings", cast_to=object)
    assert [item["fine_tuned_model"] for item in listed["data"]] == [model]
    assert model in [m.id for m in groq_client.models.list().data]

    tuned = _chat_text(groq_client, model)
    assert tuned != _chat_text(groq_client, MODEL)
    assert "rivers-expert" in tuned

    deleted: Any = groq_client.delete(f"/v1/fine_tunings/{created['id']}", cast_to=object)
    assert deleted["deleted"] is True
    with pytest.raises(groq.NotFoundError) as caught:
        _chat_text(groq_client, model)
    assert caught.value.body["error"]["code"] == "model_not_found"  # type: ignore[index]


def test_lora_flow_with_openai(openai_client: openai.OpenAI, server: ThreadedServer) -> None:
    uploaded = openai_client.files.create(file=("adapter.zip", adapter_zip()), purpose="fine_tuning")  # type: ignore[arg-type]
    url = f"{server.url}/v1/fine_tunings"
    body = {"input_file_id": uploaded.id, "name": "oai-adapter", "type": "lora", "base_model": MODEL}
    created: Any = openai_client.post(url, body=body, cast_to=object)
    model = created["data"]["fine_tuned_model"]
    retrieved: Any = openai_client.get(f"{url}/{created['id']}", cast_to=object)
    assert retrieved == created
    assert "oai-adapter" in _chat_text(openai_client, model)
    openai_client.delete(f"{url}/{created['id']}", cast_to=object)
    with pytest.raises(openai.NotFoundError) as caught:
        _chat_text(openai_client, model)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize("case", list(BAD_ADAPTERS))
def test_bad_adapters_through_the_sdk(groq_client: groq.Groq, case: str) -> None:
    content, code = BAD_ADAPTERS[case]
    uploaded = groq_client.files.create(file=("adapter.zip", content), purpose="fine_tuning")  # type: ignore[arg-type]
    body = {"input_file_id": uploaded.id, "name": "broken", "type": "lora", "base_model": MODEL}
    with pytest.raises(groq.BadRequestError) as caught:
        groq_client.post("/v1/fine_tunings", body=body, cast_to=object)
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["code"] == code
    assert error["message"]
