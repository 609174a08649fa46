"""Reading Groq's rate-limit headers and 429s, and the pacer's decisions on them.

The headers mean what Groq's Rate Limits page says: ``*-requests`` the day's requests,
``*-tokens`` the minute's tokens. The pacer's clock is a plain counter here (mocks only for
clocks); waiting itself is checked with anyio on the real clock, in fractions of a second.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest

from pipeline.client import RateLimitState, error_for_response, rate_limit_of
from pipeline.errors import RateLimitedError
from pipeline.pacing import DECREASE, HEADROOM, INCREASE_SHARE, Pacer, daily_limit_note

DOCS_HEADERS = {  # the example of Groq's header table
    "x-ratelimit-limit-requests": "14400", "x-ratelimit-limit-tokens": "18000",
    "x-ratelimit-remaining-requests": "14370", "x-ratelimit-remaining-tokens": "17997",
    "x-ratelimit-reset-requests": "2m59.56s", "x-ratelimit-reset-tokens": "7.66s",
}


def groq_429(limit: str, value: int, *, retry_after: str = "2",
             headers: dict[str, str] | None = None) -> RateLimitedError:
    unit = {"RPM": "requests per minute", "RPD": "requests per day", "TPM": "tokens per minute",
            "TPD": "tokens per day"}[limit]
    body = {"error": {
        "message": f"Rate limit reached for model `llama-3.1-8b-instant` in organization `org_x` "
                   f"service tier `flex` on {unit} ({limit}): Limit {value}, Used {value}, "
                   f"Requested 1. Please try again in 1.5s.",
        "type": "tokens" if limit.startswith("T") else "requests", "code": "rate_limit_exceeded"}}
    response = httpx.Response(429, json=body, headers={"retry-after": retry_after, **(headers or {})})
    error = error_for_response(response, what="POST /chat/completions")
    assert isinstance(error, RateLimitedError)
    return error


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_docs_header_table_reads_as_the_days_requests_and_the_minutes_tokens() -> None:
    state = RateLimitState.from_headers(DOCS_HEADERS)
    assert state == RateLimitState(14400, 14370, 179.56, 18000, 17997, 7.66)
    assert RateLimitState.from_headers({}) == RateLimitState()
    assert RateLimitState.from_headers({"x-ratelimit-reset-tokens": "soon"}).reset_tokens_s is None


@pytest.mark.parametrize(("message", "found"), [
    ("… service tier `on_demand` on requests per minute (RPM): Limit 30, Used 30, Requested 1. …",
     ("RPM", 30)),
    ("… on tokens per minute (TPM): Limit 8000, Used 5536, Requested 5599. Please try again in 23.5125s.",
     ("TPM", 8000)),
    ("… on requests per day (RPD): Limit 14400, Used 14400, Requested 1. …", ("RPD", 14400)),
    ("… on tokens per day (TPD): Limit 500000, Used 499990, Requested 70. …", ("TPD", 500000)),
    ("… on requests per minute (RPM): the service is busy. Please try again in 1s.", ("RPM", None)),
    ("Rate limit reached, please try again in 1s.", (None, None)),
])
def test_a_429_message_names_the_limit_it_hit(message: str, found: tuple[str | None, int | None]) -> None:
    assert rate_limit_of({"error": {"message": message}}) == found


def test_a_429_answer_becomes_an_error_carrying_its_limit_headers_and_retry_after() -> None:
    error = groq_429("RPM", 30, retry_after="3", headers=DOCS_HEADERS)
    assert (error.limit, error.limit_value, error.retry_after_s) == ("RPM", 30, 3.0)
    assert error.rate_limits == RateLimitState(14400, 14370, 179.56, 18000, 17997, 7.66)
    bare = error_for_response(httpx.Response(429, text="slow down"), what="POST /chat/completions")
    assert isinstance(bare, RateLimitedError)
    assert (bare.limit, bare.limit_value, bare.rate_limits, bare.retry_after_s) == (None, None, None, None)


def test_the_days_requests_do_not_pace_calls_however_few_a_minute_allows() -> None:
    """The old reading took the requests headers for the minute's: 100 left of 14,400 then
    spaced calls out. They are the day's: nothing to pace, nothing to stop yet."""
    pacer = Pacer(tokens_per_call=50, low_water=8, daily_reserve=8, clock=Clock())
    pacer.observe(RateLimitState(14400, 100, 60.0, 6000, 5900, 1.0), tokens_used=50)
    assert pacer.interval_s == 0
    assert pacer.stopped is None


def test_a_days_requests_near_zero_stop_for_today_with_the_reset_time() -> None:
    pacer = Pacer(tokens_per_call=50, low_water=8, daily_reserve=8, clock=Clock())
    before = datetime.now(UTC)
    pacer.observe(RateLimitState(1000, 8, 3600.0, 6000, 5900, 1.0), tokens_used=50)
    assert pacer.stopped is not None
    assert pacer.stopped.limit == "requests per day (RPD) 1000"
    assert pacer.stopped.left == 8
    assert before + timedelta(seconds=3600) <= pacer.stopped.resets_at <= datetime.now(UTC) + timedelta(seconds=3601)
    note = daily_limit_note(pacer.stopped.as_dict(), 42)
    assert note.startswith("stopped for today: the daily rate limit (requests per day (RPD) 1000) is spent (8 left); "
                           "42 requests stay retryable — the limit is full again at ")
    assert pacer.stopped.as_dict()["resets_at"] in note


@pytest.mark.parametrize("limit", ["RPD", "TPD"])
def test_a_429_on_a_daily_limit_stops_for_today(limit: str) -> None:
    pacer = Pacer(tokens_per_call=50, clock=Clock())
    pacer.refused(groq_429(limit, 1000, retry_after="60"), sent_at=1000.0, backoff_s=60)
    assert pacer.stopped is not None
    assert pacer.stopped.limit.endswith(f"({limit}) 1000")
    assert pacer.request_rate is None  # not a per-minute matter


def test_the_minutes_tokens_space_calls_once_few_calls_worth_are_left() -> None:
    clock = Clock()
    pacer = Pacer(tokens_per_call=100, low_water=4, clock=clock)
    pacer.observe(RateLimitState(None, None, None, 6000, 5000, 10.0), tokens_used=100)
    assert pacer.token_interval_s == 0  # 50 calls' worth left
    pacer.observe(RateLimitState(None, None, None, 6000, 350, 56.5), tokens_used=100)
    assert pacer.token_interval_s == pytest.approx(1.0)  # 100 tokens a call, 100 a second refill
    assert pacer._not_before == 0.0
    pacer.observe(RateLimitState(None, None, None, 6000, 40, 59.6), tokens_used=100)
    assert pacer._not_before == pytest.approx(clock.now + 0.6)  # 60 short, at 100 a second


def test_tokens_a_call_uses_are_learnt_from_the_answers() -> None:
    pacer = Pacer(tokens_per_call=32, clock=Clock())
    pacer.observe(RateLimitState(), tokens_used=600)
    assert pacer.tokens_per_call == 600  # the first answer replaces the estimate
    pacer.observe(RateLimitState(), tokens_used=100)
    assert pacer.tokens_per_call == pytest.approx(500)


def test_a_stated_rpm_limit_is_paced_at_once_and_cut_only_by_a_new_overflow() -> None:
    clock = Clock()
    pacer = Pacer(tokens_per_call=50, clock=clock)
    ceiling = 600 / 60 * HEADROOM
    pacer.refused(groq_429("RPM", 600, retry_after="1"), sent_at=clock.now, backoff_s=1.0)
    assert pacer.request_rate == pytest.approx(ceiling)
    assert pacer.request_burst == pytest.approx(600 * HEADROOM)
    assert pacer._not_before == clock.now + 1.0
    # Calls already on the wire come back 429 too: the same overflow, nothing changes.
    clock.now += 0.01
    pacer.refused(groq_429("RPM", 600, retry_after="1"), sent_at=clock.now - 0.05, backoff_s=1.0)
    assert pacer.request_rate == pytest.approx(ceiling)
    assert pacer._not_before == 1001.0
    # A call sent after it, refused: multiplicative decrease…
    clock.now += 2
    pacer.refused(groq_429("RPM", 600, retry_after="1"), sent_at=clock.now - 0.01, backoff_s=1.0)
    assert pacer.request_rate == pytest.approx(ceiling * DECREASE)
    # …then additive increase with every answer, never past the stated limit.
    clock.now += 1
    pacer.observe(RateLimitState())
    assert pacer.request_rate == pytest.approx(ceiling * DECREASE * (1 + INCREASE_SHARE))
    clock.now += 60
    pacer.observe(RateLimitState())
    assert pacer.request_rate == pytest.approx(ceiling)


def test_an_unstated_limit_is_found_from_what_was_answered() -> None:
    clock = Clock()
    pacer = Pacer(tokens_per_call=50, clock=clock)
    unstated = RateLimitedError("429", status_code=429, retry_after_s=1.0)
    # Nothing answered yet: back to one call at a time, no rate to go by.
    pacer.refused(unstated, sent_at=clock.now, backoff_s=1.0)
    assert pacer.request_rate is None
    assert pacer._window == 1
    for _ in range(40):  # 40 answers over 4 s: 10 a second
        clock.now += 0.1
        pacer.observe(RateLimitState())
    pacer.refused(unstated, sent_at=clock.now, backoff_s=1.0)
    assert pacer.request_rate == pytest.approx(40 / 3.9 * DECREASE)
    assert pacer.request_burst == 1.0  # evenly spaced: no bucket size to lean on


def test_a_tpm_429_pauses_without_touching_the_request_rate() -> None:
    pacer = Pacer(tokens_per_call=50, clock=Clock())
    pacer.refused(groq_429("TPM", 6000, retry_after="4"), sent_at=1000.0, backoff_s=4.0)
    assert pacer._not_before == 1004.0
    assert pacer.request_rate is None
    assert pacer.stopped is None


@pytest.mark.anyio
async def test_a_pause_holds_every_caller_and_the_rate_spaces_them() -> None:
    pacer = Pacer(tokens_per_call=50)
    for _ in range(8):  # past slow start
        pacer.observe(RateLimitState())
    pacer.pause(0.3)
    started = time.monotonic()
    went: list[float] = []

    async def call() -> None:
        async with pacer.turn():
            went.append(time.monotonic() - started)

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(call)
    assert min(went) >= 0.29
    pacer.request_rate, pacer.request_burst = 20.0, 1.0  # one call every 50 ms
    pacer._level, pacer._level_at = 0.0, time.monotonic()
    went.clear()
    started = time.monotonic()
    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(call)
    assert sorted(went)[-1] >= 0.19  # the 4th waited for 4 refills


@pytest.mark.anyio
async def test_slow_start_lets_one_call_out_until_an_answer_comes() -> None:
    pacer = Pacer(tokens_per_call=50)
    order: list[str] = []

    async def call(name: str, hold_s: float) -> None:
        async with pacer.turn():
            order.append(f"{name} in")
            await anyio.sleep(hold_s)
            order.append(f"{name} out")

    async with anyio.create_task_group() as group:
        group.start_soon(call, "a", 0.1)
        await anyio.sleep(0.01)
        group.start_soon(call, "b", 0)
    assert order == ["a in", "a out", "b in", "b out"]


@pytest.mark.anyio
async def test_a_stopped_pacer_lets_waiting_calls_go_at_once() -> None:
    """They are given back unsent: no reason to sit out a pause of hours."""
    pacer = Pacer(tokens_per_call=50)
    pacer.pause(3600)
    pacer.refused(groq_429("RPD", 10, retry_after="3600"), sent_at=time.monotonic(), backoff_s=3600)
    with anyio.fail_after(2):
        async with pacer.turn():
            pass
    assert pacer.stopped is not None
