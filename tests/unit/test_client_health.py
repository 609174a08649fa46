"""The client gives up on a server that does not answer: ``ServerHealth`` at the seam.

What counts, per endpoint (method + path template):

- *unanswered*: no HTTP answer (connect error, timeout, dropped connection, a download cut
  short) or a 5xx whose body is not JSON (a proxy's HTML error page);
- *answered* (the server is there; the clock restarts): a success, any 4xx (JSON or not,
  429 included), a JSON 5xx.

An endpoint unanswered for ``give_up_after_s`` raises :class:`ServerUnavailableError`, which no
retry policy retries. Most tests tick a fake clock one second per call (mocks only for clocks);
one runs on the real clock with a limit of a fraction of a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from jobs import load_job
from jobs.compile import compile_job
from pipeline.backend import open_client
from pipeline.client import GroqClient, ServerHealth, endpoint_of
from pipeline.errors import (
    APIError,
    ConfigError,
    RateLimitedError,
    RetryableAPIError,
    ServerUnavailableError,
    TransportError,
    exit_code_for,
)
from pipeline.flex import finish_leftovers
from pipeline.retry import NO_RETRY, RetryPolicy
from state import Ledger
from tests.integration.flexjobs import PRICE, write_flex_job
from tests.integration.lifecycle import MODEL

pytestmark = pytest.mark.anyio

MANY = RetryPolicy(max_attempts=50, initial_backoff_s=0.001, max_backoff_s=0.002)
"""Far more attempts than the limit allows: only giving up ends the call early."""
LIMIT_S = 5.0
HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


class Ticking:
    """A clock that moves one second each time the server is called."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def client_for(handler: Callable[[httpx.Request], httpx.Response], *, retry: RetryPolicy = MANY,
               clock: Ticking | None = None, give_up_after_s: float = LIMIT_S,
               base_url: str = "http://groq.test") -> tuple[GroqClient, list[httpx.Request]]:
    """A client whose every call goes to ``handler`` (and ticks ``clock``); the calls it made."""
    calls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if clock is not None:
            clock.now += 1.0
        return handler(request)

    client = GroqClient(base_url, "gsk_secret_value_123", transport=httpx.MockTransport(handle),
                        retry=retry, give_up_after_s=give_up_after_s)
    if clock is not None:
        client.health = ServerHealth(client.base_url, give_up_after_s, clock=clock)
    return client, calls


def html_502(request: httpx.Request) -> httpx.Response:
    return httpx.Response(502, content=HTML_502, headers={"content-type": "text/html"})


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def files(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": []})


async def test_html_5xx_pages_past_the_limit_stop_the_call_naming_the_server() -> None:
    client, calls = client_for(html_502, clock=Ticking(), base_url="http://10.0.0.7:8080/openai/v1")
    async with client:
        with pytest.raises(ServerUnavailableError) as caught:
            await client.list_files()
    error = caught.value
    assert str(error) == (
        "the server at http://10.0.0.7:8080/openai/v1 has not answered for 5.0s "
        "(GET /files: HTTP 502 Bad Gateway (text/html, 74 bytes, not JSON)); "
        "nothing recorded is lost — run again when it is back")
    assert (error.base_url, error.endpoint) == ("http://10.0.0.7:8080/openai/v1", "GET /files")
    assert error.down_for_s == LIMIT_S
    # retried while within the limit (the first unanswered call at t=1 starts the clock)
    assert len(calls) == 1 + int(LIMIT_S)


async def test_transport_errors_past_the_limit_stop_the_call() -> None:
    client, calls = client_for(refused, clock=Ticking())
    async with client:
        with pytest.raises(ServerUnavailableError, match=(
                r"^the server at http://groq.test/openai/v1 has not answered for 5.0s \(POST "
                r"/batches: ConnectError: \[Errno 111\] Connection refused\)")) as caught:
            await client.create_batch("file_1", completion_window="24h")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(calls) == 6


async def test_on_the_real_clock_a_dead_server_is_given_up_within_the_limit() -> None:
    client, calls = client_for(refused, retry=RetryPolicy(max_attempts=10_000, initial_backoff_s=0.01,
                                                          max_backoff_s=0.02),
                               give_up_after_s=0.3)
    started = time.monotonic()
    async with client:
        with pytest.raises(ServerUnavailableError, match=r"has not answered for \d\.\ds"):
            await client.get_batch("batch_01abc")
    assert 0.3 <= time.monotonic() - started < 5
    assert 1 < len(calls) < 10_000


def json_500(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500, json={"error": {"message": "internal error", "type": "server_error"}})


def json_429(request: httpx.Request) -> httpx.Response:
    return httpx.Response(429, json={"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
                          headers={"retry-after": "0"})


def text_429(request: httpx.Request) -> httpx.Response:
    return httpx.Response(429, text="Too Many Requests", headers={"retry-after": "0"})


def json_498(request: httpx.Request) -> httpx.Response:
    return httpx.Response(498, json={"error": {"message": "flex capacity exceeded"}})


@pytest.mark.parametrize(("handler", "error_class"), [
    (json_500, RetryableAPIError),
    (json_429, RateLimitedError),
    (text_429, RateLimitedError),
    (json_498, RetryableAPIError),
])
async def test_a_server_that_answers_even_with_errors_is_not_given_up(
        handler: Callable[[httpx.Request], httpx.Response], error_class: type[APIError]) -> None:
    """A JSON error (or any 4xx) is the API talking: the normal retries run out, as before."""
    client, calls = client_for(handler, clock=Ticking())
    async with client:
        with pytest.raises(error_class) as caught:
            await client.list_files()
    assert not isinstance(caught.value, ServerUnavailableError)
    assert len(calls) == MANY.max_attempts  # 50 s on the clock, ten times the limit


async def test_an_answer_restarts_the_clock() -> None:
    """Four unanswered calls, then a success, again and again: never five seconds in a row."""
    answers = iter(([html_502] * 4 + [files]) * 10)
    client, calls = client_for(lambda request: next(answers)(request), clock=Ticking())
    async with client:
        for _ in range(10):
            assert await client.list_files() == []
    assert len(calls) == 50


async def test_an_answer_in_json_restarts_the_clock_too() -> None:
    answers = iter(([refused] * 4 + [json_429]) * 6)
    client, _ = client_for(lambda request: next(answers)(request), clock=Ticking(), retry=NO_RETRY)
    async with client:
        for _ in range(6):
            for _ in range(4):
                with pytest.raises(TransportError):
                    await client.list_files()
            with pytest.raises(RateLimitedError):
                await client.list_files()


async def test_endpoints_keep_their_own_clocks() -> None:
    """Uploads failing for long do not condemn polling, which answers."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return html_502(request)
        return httpx.Response(200, json={"id": request.url.path.rsplit("/", 1)[-1],
                                         "status": "in_progress"})

    clock = Ticking()
    client, _ = client_for(handler, clock=clock, retry=NO_RETRY)
    async with client:
        for step in range(8):
            with pytest.raises(APIError) as caught:
                await client.create_batch("file_1", completion_window="24h")
            # POSTs at t = 1, 3, 5, 7, …: the one at t = 7 is 6 s into the outage
            assert isinstance(caught.value, ServerUnavailableError) == (step >= 3)
            assert (await client.get_batch(f"batch_{step}")).status == "in_progress"


async def test_a_download_that_always_breaks_off_is_given_up(tmp_path: Path) -> None:
    def cut_short(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"custom_id": "a"}\n')

    client, calls = client_for(cut_short, clock=Ticking())
    async with client:
        with pytest.raises(ServerUnavailableError, match=(
                r"\(GET /files/file_9/content: download cut short at 19 of 1900 bytes\)")) as caught:
            await client.download_file("file_9", tmp_path / "out.jsonl", expected_bytes=1900)
    assert caught.value.endpoint == "GET /files/{id}/content"
    assert len(calls) == 6
    assert not (tmp_path / "out.jsonl").exists()


def test_server_unavailable_is_not_retried_and_exits_1() -> None:
    error = ServerUnavailableError(base_url="http://x/openai/v1", endpoint="GET /files",
                                   call="GET /files", last_answer="ConnectError", down_for_s=300)
    assert isinstance(error, APIError)
    assert not isinstance(error, RetryableAPIError)
    assert not RetryPolicy().retries(error)
    assert exit_code_for(error) == 1
    assert error.status_code is None
    assert "has not answered for 300s" in str(error)


@pytest.mark.parametrize(("method", "path", "endpoint"), [
    ("POST", "/openai/v1/files", "POST /files"),
    ("GET", "/openai/v1/batches/batch_01j9", "GET /batches/{id}"),
    ("POST", "/openai/v1/batches/batch_01j9/cancel", "POST /batches/{id}/cancel"),
    ("GET", "/openai/v1/files/file_01/content", "GET /files/{id}/content"),
    ("GET", "/openai/v1/batches", "GET /batches"),
    ("DELETE", "/v1/fine_tunings/ft_123", "DELETE /v1/fine_tunings/{id}"),
    ("POST", "/openai/v1/chat/completions", "POST /chat/completions"),
])
def test_endpoints_are_templates(method: str, path: str, endpoint: str) -> None:
    assert endpoint_of(method, path) == endpoint


async def test_the_flex_stage_stops_on_a_dead_server_and_fails_no_request(tmp_path: Path) -> None:
    """Flex catches every APIError of a call to requeue it; a dead server must stop the stage
    instead (as a refused key does), the requests left retryable, none failed for good."""
    spec = load_job(write_flex_job(tmp_path, rows=12, policy={"mode": "sync"},
                                   fallback={"concurrency": 2, "max_attempts": 3}))
    client, calls = client_for(refused, clock=Ticking())
    with Ledger.open(spec.ledger_target) as ledger:
        compile_job(spec, ledger, model=MODEL)
        async with client:
            with pytest.raises(ServerUnavailableError, match="POST /chat/completions"):
                await finish_leftovers(ledger, client, spec, PRICE)
        counts = {status: n for status, n in ledger.request_counts(spec.name).items() if n}
    assert counts == {"retryable": 12}
    assert 1 + int(LIMIT_S) <= len(calls) < 12 * 3
    assert all(orjson.loads(call.content)["service_tier"] == "flex" for call in calls)


def test_give_up_after_s_is_a_job_key_and_must_be_positive(tmp_path: Path) -> None:
    config = write_flex_job(tmp_path)
    assert load_job(config).give_up_after_s == 300
    text = config.read_text()
    config.write_text(text.replace('backend = "local"\n', 'backend = "local"\ngive_up_after_s = 0\n'))
    with pytest.raises(ConfigError, match="give_up_after_s"):
        load_job(config)


async def test_the_job_s_limit_reaches_its_client(tmp_path: Path) -> None:
    config = write_flex_job(tmp_path, base_url="http://127.0.0.1:9")
    config.write_text(config.read_text().replace('backend = "local"\n',
                                                 'backend = "local"\ngive_up_after_s = 42.5\n'))
    async with open_client(load_job(config)) as client:
        assert client.health.give_up_after_s == 42.5
