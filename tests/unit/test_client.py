"""GroqClient at its seam: httpx.MockTransport stands in for the server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from pipeline.client import (
    GroqClient,
    RateLimitState,
    RemoteBatch,
    parse_go_duration,
    parse_retry_after,
)
from pipeline.errors import (
    AuthenticationError,
    CapacityExceededError,
    ConfigError,
    PermanentAPIError,
    RateLimitedError,
    RetryableAPIError,
    TransportError,
)
from pipeline.retry import NO_RETRY, RetryPolicy

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)


def client_for(handler: Callable[[httpx.Request], httpx.Response], retry: RetryPolicy = FAST) -> GroqClient:
    return GroqClient("http://groq.test", "gsk_secret_value_123", transport=httpx.MockTransport(handler),
                      retry=retry)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2m59.56s", 179.56), ("7.66s", 7.66), ("172.799999ms", 0.172799999), ("6m0s", 360.0),
     ("1h2m3s", 3723.0), ("0s", 0.0), ("", None), ("soon", None), ("5", None), ("3s garbage", None)],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    parsed = parse_go_duration(text)
    assert parsed == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_prefers_milliseconds() -> None:
    assert parse_retry_after({"retry-after-ms": "300", "retry-after": "5"}) == pytest.approx(0.3)
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None


def test_rate_limit_headers() -> None:
    state = RateLimitState.from_headers({
        "x-ratelimit-limit-requests": "14400", "x-ratelimit-remaining-requests": "14370",
        "x-ratelimit-reset-requests": "2m59.56s", "x-ratelimit-limit-tokens": "18000",
        "x-ratelimit-remaining-tokens": "17997", "x-ratelimit-reset-tokens": "7.66s",
    })
    assert state == RateLimitState(14400, 14370, pytest.approx(179.56), 18000, 17997, pytest.approx(7.66))


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(400, PermanentAPIError), (401, AuthenticationError), (403, AuthenticationError),
     (404, PermanentAPIError), (408, RetryableAPIError), (409, RetryableAPIError),
     (413, PermanentAPIError), (429, RateLimitedError), (498, CapacityExceededError),
     (500, RetryableAPIError), (503, RetryableAPIError)],
)
async def test_status_maps_to_what_the_caller_does_next(status: int, error_class: type[Exception]) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, json={"error": {"message": "nope", "type": "x", "code": "c"}})

    async with client_for(handler) as client:
        with pytest.raises(error_class) as caught:
            await client.get_batch("batch_1")
    assert type(caught.value) is error_class
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    retried = issubclass(error_class, RetryableAPIError)
    assert len(calls) == (FAST.max_attempts if retried else 1)


async def test_429_honours_retry_after_then_succeeds() -> None:
    answers = iter([
        httpx.Response(429, headers={"retry-after": "0.01"}, json={"error": {"message": "slow", "type": "requests"}}),
        httpx.Response(200, json={"id": "batch_1", "status": "completed", "error_file_id": {},
                                  "errors": [{"code": "invalid_method", "line": 4}]}),
    ])
    async with client_for(lambda request: next(answers)) as client:
        batch = await client.get_batch("batch_1")
    assert isinstance(batch, RemoteBatch)
    assert batch.error_file_id is None, "Groq's {} quirk is normalised at the seam"
    assert batch.errors[0]["line"] == 4, "a bare errors list is read like errors.data"


async def test_the_key_never_reaches_an_error_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer gsk_secret_value_123"
        return httpx.Response(401, json={"error": {"message": "Invalid API Key gsk_secret_value_123"}})

    async with client_for(handler) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.list_files()
    assert "gsk_secret_value_123" not in str(caught.value)
    assert "gsk_secret" not in repr(client)


async def test_the_key_never_reaches_a_kept_error_body() -> None:
    """The body rides on the error and flex stores it in the ledger (results, last_error)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(500, text="upstream said: Authorization: Bearer gsk_secret_value_123")
        return httpx.Response(401, json={"error": {"message": "Invalid API Key gsk_secret_value_123",
                                                   "echo": ["Bearer gsk_secret_value_123"]}})

    async with client_for(handler) as client:
        with pytest.raises(AuthenticationError) as refused:
            await client.chat({"model": "m", "messages": []}, retry=NO_RETRY)
        with pytest.raises(RetryableAPIError) as failed:
            await client.list_models()
    assert "gsk_secret" not in orjson.dumps(refused.value.body).decode()
    assert refused.value.body["error"]["message"] == "Invalid API Key ***"
    assert "gsk_secret" not in str(failed.value.body)


async def test_transport_failures_are_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with client_for(handler) as client:
        with pytest.raises(TransportError, match="ConnectError"):
            await client.get_batch("batch_1")


async def test_truncated_download_is_caught_and_retried(tmp_path: Path) -> None:
    content = b'{"custom_id":"a"}\n' * 100
    served: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        served.append(1)
        body = content[:700] if len(served) == 1 else content
        return httpx.Response(200, content=body)

    dest = tmp_path / "out.jsonl"
    async with client_for(handler) as client:
        written = await client.download_file("file_1", dest, expected_bytes=len(content))
    assert written == len(content)
    assert dest.read_bytes() == content
    assert len(served) == 2
    assert not (tmp_path / "out.jsonl.part").exists()


async def test_many_batches_in_one_call_per_200_ids() -> None:
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ids = request.url.params.get_list("id")
        seen.append(ids)
        return httpx.Response(200, json={"object": "list", "data": [
            {"id": i, "status": "in_progress"} for i in ids]})

    async with client_for(handler) as client:
        found = await client.get_batches([f"batch_{n}" for n in range(450)])
    assert [len(chunk) for chunk in seen] == [200, 200, 50]
    assert len(found) == 450


async def test_cursor_paging_follows_next_cursor() -> None:
    pages = {None: (["b3", "b2"], "c1"), "c1": (["b1"], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        ids, cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"object": "list", "data": [{"id": i, "status": "completed"} for i in ids],
                                         "paging": {"next_cursor": cursor}})

    async with client_for(handler) as client:
        assert [b.id async for b in client.iter_batches()] == ["b3", "b2", "b1"]


def test_from_env_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="GROQ_API_KEY"):
        GroqClient.from_env()
    monkeypatch.setenv("GROQ_API_KEY", "gsk_abc")
    monkeypatch.setenv("GROQ_BASE_URL", "http://127.0.0.1:9/openai/v1")
    client = GroqClient.from_env()
    assert client.base_url == "http://127.0.0.1:9", "an openai-style base URL is cut to the host root"
