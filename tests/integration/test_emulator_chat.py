"""Chat completions and LoRA adapters of the local server, in-process over ASGI."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from pipeline.emulator import Emulator, EmulatorConfig, RateLimit
from tests.adapters import BAD_ADAPTERS, adapter_zip
from tests.openapi import assert_response_matches

pytestmark = pytest.mark.anyio

MODEL = "llama-3.1-8b-instant"
CHAT = "/openai/v1/chat/completions"
RATE_HEADERS = (
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
)


@pytest.fixture
def emulator_config(request: pytest.FixtureRequest) -> EmulatorConfig:
    """The real-time clock by default (windows pass only when a test advances it)."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    return EmulatorConfig(time_scale=1, **overrides)


def chat_body(text: str = "hello there", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def put_scenario(client: httpx.AsyncClient, **scenario: Any) -> None:
    response = await client.put("/_emulator/scenario", json=scenario)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("tier", [None, "auto", "on_demand", "flex", "performance"])
async def test_answer_matches_spec_and_carries_headers(client: httpx.AsyncClient, tier: str | None) -> None:
    response = await client.post(CHAT, json=chat_body(service_tier=tier))
    assert response.status_code == 200, response.text
    assert_response_matches(response, "post", CHAT)
    body = response.json()
    for name in RATE_HEADERS:
        assert name in response.headers
    assert response.headers["x-request-id"] == body["x_groq"]["id"]
    assert "retry-after" not in response.headers
    assert body["service_tier"] == {None: "on_demand", "auto": "on_demand"}.get(tier, tier)
    assert "hello there" in body["choices"][0]["message"]["content"]


async def test_openai_prefix_serves_the_same_answer(client: httpx.AsyncClient) -> None:
    groq = await client.post(CHAT, json=chat_body())
    openai = await client.post("/v1/chat/completions", json=chat_body())
    assert groq.json()["choices"] == openai.json()["choices"]


@pytest.mark.parametrize(
    "emulator_config", [{"rate_limits": {MODEL: RateLimit(requests_per_minute=3, requests_per_day=100)}}],
    indirect=True,
)
async def test_rpm_limit_then_recovery(client: httpx.AsyncClient, emulator: Emulator) -> None:
    remaining = []
    for _ in range(3):
        response = await client.post(CHAT, json=chat_body())
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "100"  # always the day's (RPD)
        remaining.append(response.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["99", "98", "97"]
    refused = await client.post(CHAT, json=chat_body())
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "requests"
    assert "requests per minute (RPM): Limit 3" in error["message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "97"  # a refused call costs none
    # Other models and other tiers are limited apart.
    assert (await client.post(CHAT, json=chat_body(model="qwen/qwen3-32b"))).status_code == 200
    emulator.clock.advance(60)
    recovered = await client.post(CHAT, json=chat_body())
    assert recovered.status_code == 200
    assert recovered.headers["x-ratelimit-remaining-requests"] == "96"  # 0.07 refilled, 1 spent


@pytest.mark.parametrize(
    "emulator_config", [{"rate_limits": {f"{MODEL}@on_demand": RateLimit(tokens_per_minute=50)}}],
    indirect=True,
)
async def test_tpm_limits_give_429_and_413(client: httpx.AsyncClient) -> None:
    too_big = await client.post(CHAT, json=chat_body("word " * 100))
    assert too_big.status_code == 413
    assert too_big.json()["error"]["type"] == "tokens"
    assert "Request too large" in too_big.json()["error"]["message"]
    assert (await client.post(CHAT, json=chat_body("short", max_tokens=5))).status_code == 200
    statuses = [(await client.post(CHAT, json=chat_body("short", max_tokens=5))).status_code
                for _ in range(5)]
    assert 429 in statuses
    # The flex tier has no entry: unlimited.
    assert (await client.post(CHAT, json=chat_body("word " * 100, service_tier="flex"))).status_code == 200


@pytest.mark.parametrize("emulator_config", [{"chat_latency_s": 0.3}], indirect=True)
async def test_flex_capacity_gives_498(client: httpx.AsyncClient) -> None:
    await put_scenario(client, flex_capacity=2)
    responses: list[httpx.Response] = []

    async def call(tier: str) -> None:
        responses.append(await client.post(CHAT, json=chat_body(service_tier=tier)))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(call, "flex")
        group.start_soon(call, "on_demand")
    by_tier: dict[tuple[str, int], int] = {}
    for response in responses:
        tier = response.json().get("service_tier", "flex")
        by_tier[tier, response.status_code] = by_tier.get((tier, response.status_code), 0) + 1
    assert by_tier == {("flex", 200): 2, ("flex", 498): 3, ("on_demand", 200): 1}
    refused = next(r for r in responses if r.status_code == 498)
    assert refused.json() == {"error": {
        "message": "`flex` tier capacity exceeded for this model. Please try again later.",
        "type": "service_unavailable", "code": "capacity_exceeded"}}
    assert "retry-after" not in refused.headers
    assert "x-should-retry" not in refused.headers
    # Capacity is given back when requests finish.
    assert (await client.post(CHAT, json=chat_body(service_tier="flex"))).status_code == 200


async def test_storms(client: httpx.AsyncClient, emulator: Emulator) -> None:
    await put_scenario(client, storms=[{"status": 498, "tier": "flex", "duration_s": 30}])
    flex = await client.post(CHAT, json=chat_body(service_tier="flex"))
    assert flex.status_code == 498
    assert flex.json()["error"]["code"] == "capacity_exceeded"
    assert "retry-after" not in flex.headers
    assert (await client.post(CHAT, json=chat_body())).status_code == 200
    emulator.clock.advance(31)
    assert (await client.post(CHAT, json=chat_body(service_tier="flex"))).status_code == 200

    await put_scenario(client, storms=[{"status": 429, "retry_after_s": 2.5}])
    limited = await client.post(CHAT, json=chat_body())
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"

    for status in (500, 502, 503):
        await put_scenario(client, storms=[{"status": status, "should_retry": False}])
        failed = await client.post(CHAT, json=chat_body())
        assert failed.status_code == status
        assert failed.headers["x-should-retry"] == "false"
        assert_response_matches(failed, "post", CHAT)
    await put_scenario(client)
    assert (await client.post(CHAT, json=chat_body())).status_code == 200


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
MALFORMED: list[tuple[str, Any, int]] = [
    ("empty body", b"", 400),
    ("bad json", b"{not json", 400),
    ("not an object", b"[1, 2]", 400),
    ("missing model", {"messages": [{"role": "user", "content": "x"}]}, 400),
    ("model not a string", chat_body(model=7), 400),  # type: ignore[arg-type]
    ("unknown model", chat_body(model="gpt-17"), 404),
    ("messages missing", {"model": MODEL}, 400),
    ("messages not a list", {"model": MODEL, "messages": "hi"}, 400),
    ("message not an object", {"model": MODEL, "messages": ["hi"]}, 400),
    ("bad role", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("content not text", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400),
    ("bad part", {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400),
    ("image for text model", {"model": MODEL, "messages": [{"role": "user", "content": [IMAGE]}]}, 400),
    ("n=2", chat_body(n=2), 400),
    ("logprobs", chat_body(logprobs=True), 400),
    ("stream", chat_body(stream=True), 400),
    ("temperature too high", chat_body(temperature=3), 400),
    ("temperature not a number", chat_body(temperature="warm"), 400),
    ("max tokens zero", chat_body(max_completion_tokens=0), 400),
    ("max tokens not int", chat_body(max_tokens=1.5), 400),
    ("too many stops", chat_body(stop=["a", "b", "c", "d", "e"]), 400),
    ("stop not strings", chat_body(stop=[1]), 400),
    ("bad service_tier", chat_body(service_tier="premium"), 400),
    ("bad response_format", chat_body(response_format={"type": "yaml"}), 400),
    ("response_format not object", chat_body(response_format="json"), 400),
    ("json_schema without object", chat_body(response_format={"type": "json_schema"}), 400),
    ("broken $ref", chat_body(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"$ref": "#/$defs/nope"}}}), 400),
    ("seed not int", chat_body(seed="abc"), 400),
]


@pytest.mark.parametrize(("case", "payload", "status"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_requests_get_their_4xx(
    client: httpx.AsyncClient, case: str, payload: Any, status: int
) -> None:
    if isinstance(payload, bytes):
        response = await client.post(CHAT, content=payload, headers={"content-type": "application/json"})
    else:
        response = await client.post(CHAT, json=payload)
    assert response.status_code == status, (case, response.text)
    error = response.json()["error"]
    assert error["message"]
    assert error["type"] == "invalid_request_error"


async def test_vision_model_takes_images(client: httpx.AsyncClient) -> None:
    body = {"model": "meta-llama/llama-4-scout-17b-16e-instruct",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "describe"}, IMAGE]}]}
    response = await client.post(CHAT, json=body)
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] > 85


# --- LoRA ------------------------------------------------------------------------------------

async def upload_adapter(client: httpx.AsyncClient, content: bytes, purpose: str = "fine_tuning") -> str:
    response = await client.post("/openai/v1/files", files={"file": ("adapter.zip", content)},
                                 data={"purpose": purpose})
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


async def register(client: httpx.AsyncClient, file_id: str, name: str = "support-bot",
                   **extra: Any) -> httpx.Response:
    body = {"input_file_id": file_id, "name": name, "type": "lora", "base_model": MODEL, **extra}
    return await client.post("/v1/fine_tunings", json=body)


async def test_lora_lifecycle(client: httpx.AsyncClient) -> None:
    file_id = await upload_adapter(client, adapter_zip())
    created = await register(client, file_id)
    assert created.status_code == 200, created.text
    assert_response_matches(created, "post", "/v1/fine_tunings")
    ft = created.json()
    assert ft["id"].startswith("ft_")
    assert ft["object"] == "fine_tuning"
    model = ft["data"]["fine_tuned_model"]
    assert model.startswith(f"ft:{MODEL}:org_01localemulator000000000/support-bot-")
    assert len(model.rsplit("-", 1)[1]) == 12

    listed = await client.get("/v1/fine_tunings")
    assert_response_matches(listed, "get", "/v1/fine_tunings")
    assert [item["id"] for item in listed.json()["data"]] == [ft["id"]]
    assert (await client.get(f"/v1/fine_tunings/{ft['id']}")).json() == ft
    models = (await client.get("/openai/v1/models")).json()["data"]
    assert model in [m["id"] for m in models]

    base = (await client.post(CHAT, json=chat_body())).json()["choices"][0]["message"]["content"]
    tuned = await client.post(CHAT, json=chat_body(model=model))
    assert tuned.status_code == 200
    assert tuned.json()["model"] == model
    assert tuned.json()["choices"][0]["message"]["content"] != base
    assert "support-bot" in tuned.json()["choices"][0]["message"]["content"]

    again = await register(client, await upload_adapter(client, adapter_zip()))
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "duplicate_name"

    deleted = await client.delete(f"/v1/fine_tunings/{ft['id']}")
    assert deleted.json() == {"id": ft["id"], "object": "fine_tuning", "deleted": True}
    gone = await client.post(CHAT, json=chat_body(model=model))
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "model_not_found"
    assert (await client.get(f"/v1/fine_tunings/{ft['id']}")).status_code == 404
    assert (await client.delete(f"/v1/fine_tunings/{ft['id']}")).status_code == 404


@pytest.mark.parametrize("case", list(BAD_ADAPTERS))
async def test_bad_adapter_zips(client: httpx.AsyncClient, case: str) -> None:
    content, code = BAD_ADAPTERS[case]
    response = await register(client, await upload_adapter(client, content))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["param"] == "input_file_id"


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        ({"type": "full"}, "type", "unsupported_fine_tuning_type"),
        ({"base_model": "llama-3.3-70b-versatile"}, "base_model", "unsupported_base_model"),
        ({"name": "bad name!"}, "name", "invalid_name"),
        ({"name": ""}, "name", "missing_required_parameter"),
        ({"input_file_id": "file_missing"}, "input_file_id", "file_not_found"),
    ],
)
async def test_bad_fine_tuning_requests(
    client: httpx.AsyncClient, change: dict[str, Any], param: str, code: str
) -> None:
    file_id = await upload_adapter(client, adapter_zip())
    response = await register(client, file_id, **change)
    assert response.status_code == 400
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (param, code)


async def test_adapter_file_needs_fine_tuning_purpose(client: httpx.AsyncClient) -> None:
    file_id = await upload_adapter(client, adapter_zip(), purpose="batch")
    response = await register(client, file_id)
    assert response.json()["error"]["code"] == "invalid_file_purpose"
