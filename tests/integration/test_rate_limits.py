"""Rate limits as Groq defines them, over real HTTP to the local server on a loopback port.

The server enforces RPM, RPD, TPM and TPD apart and sends the headers as the table on Groq's
Rate Limits page says — ``*-requests`` the day's requests, ``*-tokens`` the minute's tokens,
``retry-after`` only on a 429 — checked on the wire and through the official ``groq`` SDK's
raw response. The fallback stops for today when the day's requests run out: what is left
stays retryable, the summary says when the limit is full again, and a run the next day
finishes the job with every request answered once.

The server's clock stands still (``time_scale`` 1e-9) unless a test moves it, so every figure
is exact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import groq
import httpx
import pytest

from jobs import load_job
from pipeline.emulator import Emulator, EmulatorConfig, RateLimit, Scenario
from pipeline.emulator.config import BatchFaults, Storm
from pipeline.emulator.ratelimit import go_duration
from pipeline.emulator.serve import ThreadedServer
from pipeline.runner import run_job
from tests.conftest import API_KEY
from tests.integration.flexjobs import assert_settled_once, chat_log, write_flex_job
from tests.integration.lifecycle import MODEL, read_ledger

STILL = 1e-9
CHAT = "/openai/v1/chat/completions"
MESSAGES: list[Any] = [{"role": "user", "content": "name three rivers"}]
HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(time_scale=STILL, rate_limit_plan="free")


@pytest.fixture
def http(server: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture
def groq_client(server: ThreadedServer) -> Iterator[groq.Groq]:
    with groq.Groq(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        yield client


def chat(http: httpx.Client, model: str = MODEL, **extra: Any) -> httpx.Response:
    return http.post(CHAT, json={"model": model, "messages": MESSAGES, **extra})


@pytest.mark.parametrize(("tier", "rpd", "tpm", "one_request"), [
    ("on_demand", 14_400, 6_000, "6s"),        # Groq's free table for llama-3.1-8b-instant
    ("flex", 144_000, 60_000, "600ms"),        # flex: "10x higher rate limits"
])
def test_headers_are_the_days_requests_and_the_minutes_tokens(
        http: httpx.Client, groq_client: groq.Groq, tier: str, rpd: int, tpm: int, one_request: str) -> None:
    first = chat(http, service_tier=tier)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert {name: first.headers[name] for name in HEADERS} == {
        "x-ratelimit-limit-requests": str(rpd),
        "x-ratelimit-remaining-requests": str(rpd - 1),
        "x-ratelimit-reset-requests": one_request,   # one request's refill of a day's budget
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-tokens": str(tpm - used),
        "x-ratelimit-reset-tokens": go_duration(used / (tpm / 60)),
    }
    assert "retry-after" not in first.headers  # only on a 429
    # The same through the official SDK's raw response.
    raw: Any = groq_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, service_tier=tier)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-ratelimit-limit-requests"] == str(rpd)
    assert raw.headers["x-ratelimit-remaining-requests"] == str(rpd - 2)
    assert raw.headers["x-ratelimit-limit-tokens"] == str(tpm)
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < tpm - used
    assert "retry-after" not in raw.headers


def test_the_minutes_requests_show_only_as_a_429_with_retry_after(
        http: httpx.Client, groq_client: groq.Groq) -> None:
    remaining = [chat(http).headers["x-ratelimit-remaining-requests"] for _ in range(30)]
    assert remaining[-1] == "14370"  # the docs' example: 30 of 14,400 spent today
    with pytest.raises(groq.RateLimitError) as caught:
        groq_client.chat.completions.create(model=MODEL, messages=MESSAGES)
    response = caught.value.response
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"  # one of 30 a minute refills in 2 s
    assert response.headers["x-ratelimit-limit-requests"] == "14400"  # the others always sent
    assert response.headers["x-ratelimit-remaining-requests"] == "14370"
    assert set(HEADERS) <= set(response.headers)
    assert caught.value.body == {"error": {
        "message": "Rate limit reached for model `llama-3.1-8b-instant` in organization "
                   "`org_01localemulator000000000` service tier `on_demand` on requests per minute "
                   "(RPM): Limit 30, Used 30, Requested 1. Please try again in 2s.",
        "type": "requests", "code": "rate_limit_exceeded"}}
    # Other models and tiers have their own limits.
    assert chat(http, model="qwen/qwen3-32b").status_code == 200
    assert chat(http, service_tier="flex").status_code == 200


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(time_scale=STILL, rate_limits={
    MODEL: RateLimit(requests_per_day=3),
    "qwen/qwen3-32b": RateLimit(tokens_per_minute=1_000_000, tokens_per_day=120),
    "openai/gpt-oss-20b": RateLimit(tokens_per_minute=150),
})])
def test_daily_requests_daily_tokens_and_the_minutes_tokens_are_enforced_apart(
        http: httpx.Client, emulator: Emulator) -> None:
    assert [chat(http).headers["x-ratelimit-remaining-requests"] for _ in range(3)] == ["2", "1", "0"]
    refused = chat(http)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "28800"  # one of 3 a day: 8 h
    assert "on requests per day (RPD): Limit 3, Used 3, Requested 1." in refused.json()["error"]["message"]
    assert refused.json()["error"]["type"] == "requests"

    statuses = []
    for _ in range(6):
        answer = chat(http, model="qwen/qwen3-32b")
        statuses.append(answer.status_code)
        # The tokens headers are the minute's, with plenty left, whatever the day's say.
        assert int(answer.headers["x-ratelimit-remaining-tokens"]) > 999_000
        if answer.status_code == 429:
            break
    assert statuses[-1] == 429
    assert 200 in statuses
    assert "on tokens per day (TPD): Limit 120," in answer.json()["error"]["message"]
    assert answer.json()["error"]["type"] == "tokens"

    left = []
    for _ in range(6):
        answer = chat(http, model="openai/gpt-oss-20b")
        if answer.status_code == 429:
            break
        left.append(int(answer.headers["x-ratelimit-remaining-tokens"]))
    assert left == sorted(left, reverse=True)
    assert left
    assert "on tokens per minute (TPM): Limit 150," in answer.json()["error"]["message"]
    assert answer.headers["x-ratelimit-limit-tokens"] == "150"
    # A minute later the minute's tokens are back; the day's requests are not.
    emulator.clock.advance(60)
    assert chat(http, model="openai/gpt-oss-20b").status_code == 200
    assert chat(http).status_code == 429


ROWS = 20
DAILY = 14


@pytest.mark.anyio
@pytest.mark.parametrize("emulator_config", [EmulatorConfig(time_scale=STILL, rate_limits={
    f"{MODEL}@flex": RateLimit(requests_per_day=DAILY)})])
async def test_a_spent_daily_budget_stops_the_run_for_today_and_tomorrow_finishes_it(
        tmp_path: Path, emulator: Emulator) -> None:
    concurrency = 2
    with ThreadedServer(emulator=emulator, log_level="debug") as server, chat_log() as calls:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, base_url=server.url,
                                       policy={"mode": "sync"},
                                       fallback={"concurrency": concurrency, "max_attempts": 2}))
        today = await run_job(spec)
        view = read_ledger(spec)
        # Tomorrow: the day's budget is full again.
        emulator.clock.advance(86_400)
        tomorrow = await run_job(spec)

    # Today: stopped once the day's requests fell to `concurrency`, cleanly (nothing in flight,
    # as a spent budget ends a run), nothing failed.
    assert today.finished
    answered = today.requests["succeeded"]
    assert DAILY - concurrency <= answered <= DAILY
    assert today.requests["failed"] == 0
    assert today.left_retryable == ROWS - answered
    assert set(view.with_status("retryable")) | set(view.with_status("succeeded")) == set(view.requests)
    flex = today.fallback
    assert flex["status_counts"] == {}  # stopped before the server had to refuse anything
    daily = flex["daily_limit"]
    assert daily["limit"] == f"requests per day (RPD) {DAILY}"
    assert DAILY - answered <= daily["left"] <= concurrency  # a call in flight may spend one more
    # Full again when the spent requests (as of the answer that stopped it) have refilled, at 14
    # a day — the emulated clock stands still.
    resets_at = datetime.fromisoformat(daily["resets_at"])
    expected = datetime.now(UTC) + timedelta(seconds=(DAILY - daily["left"]) * 86_400 / DAILY)
    assert abs((resets_at - expected).total_seconds()) < 60
    note = next(n for n in today.notes if n.startswith("stopped for today"))
    assert f"{ROWS - answered} requests stay retryable" in note
    assert daily["resets_at"] in note
    assert not any("trigger is not in" in n for n in today.notes)

    assert tomorrow.finished
    assert tomorrow.requests["succeeded"] == ROWS
    assert set(assert_settled_once(read_ledger(spec), ROWS).values()) == {"flex"}
    # Every request was sent once, over both days; not one 429.
    assert Counter(status for _, status in calls) == {200: ROWS}


def test_refusals_before_the_limits_carry_the_headers_too(http: httpx.Client, emulator: Emulator) -> None:
    """Groq: "The other headers are always included" — a 429 storm and a flex 498 as well."""
    chat(http)
    emulator.faults.replace(Scenario(storms=(Storm(status=429, retry_after_s=3),)),
                            started_at=emulator.clock.now())
    busy = chat(http)
    assert busy.status_code == 429
    assert busy.headers["retry-after"] == "3"
    assert busy.headers["x-ratelimit-remaining-requests"] == "14399"  # a refusal costs none
    emulator.faults.replace(Scenario(flex_capacity=0), started_at=emulator.clock.now())
    full = chat(http, service_tier="flex")
    assert full.status_code == 498
    assert "retry-after" not in full.headers
    assert full.headers["x-ratelimit-limit-requests"] == "144000"
    assert full.headers["x-ratelimit-limit-tokens"] == "60000"


@pytest.mark.anyio
async def test_stopped_for_today_the_batches_in_flight_are_still_seen_through(tmp_path: Path) -> None:
    """The day's requests bound the synchronous calls, not the batches: the shard that settles
    first sends its error lines to flex, which stops for today, and the run still waits for the
    other batches, then ends with everything left retryable and no shard in flight."""
    config = EmulatorConfig(time_scale=30, throughput_lines_per_s=1, validation_s=1, finalizing_s=1,
                            rate_limits={f"{MODEL}@flex": RateLimit(requests_per_day=3)},
                            scenario=Scenario(batch=BatchFaults(line_error_rate=1.0)))
    with ThreadedServer(emulator=Emulator(config)) as server:
        # Shards of 6, 6, 6 and 2 lines: the 2-line one settles first.
        spec = load_job(write_flex_job(tmp_path, rows=20, shard_lines=6, base_url=server.url,
                                       fallback={"concurrency": 1}))
        summary = await run_job(spec)

    assert summary.fallback["daily_limit"]["limit"] == "requests per day (RPD) 3"
    assert summary.fallback["sent"] == 2  # the day's third request is left for a person
    assert summary.finished
    assert summary.shards["reconciled"] == 4
    assert summary.requests["succeeded"] == 2
    assert summary.left_retryable == 18
    assert not any("still in flight" in note for note in summary.notes)
