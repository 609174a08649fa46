"""The flex fallback against a misbehaving flex tier, over real HTTP to the local server on a
loopback port (its clock at real time, so storms and ``retry-after`` are in real seconds):
498 storms are backed off and retried, or given up after ``max_attempts`` with the 498 in the
reason; a 429's ``retry-after`` pauses the whole stage; 5xx bursts are retried; a permanent
4xx fails that request with its body, once. Every case is a ``mode = "sync"`` job (everything
through flex) checked in the SQLite ledger: each request answered once or failed with its
reason, and the report's counts match the ledger's."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from jobs import load_job
from pipeline.emulator import Emulator, EmulatorConfig, RateLimit, Scenario
from pipeline.emulator.config import Storm
from pipeline.emulator.errors import APIProblem
from pipeline.emulator.serve import ThreadedServer
from pipeline.errors import AuthenticationError
from pipeline.runner import run_job
from tests.integration.flexjobs import assert_settled_once, chat_log, flex_error, write_flex_job
from tests.integration.lifecycle import MODEL, answer_of, put_scenario, read_ledger

pytestmark = pytest.mark.anyio

ROWS = 20
SYNC = {"mode": "sync"}


def flex_server(*, log_level: str = "warning", **config: object) -> ThreadedServer:
    return ThreadedServer(emulator=Emulator(EmulatorConfig(**config)), log_level=log_level)  # type: ignore[arg-type]


def assert_attempts_match(view_requests: dict[str, object], sent: int) -> None:
    """Every flex call is one attempt in the ledger, and none is counted twice."""
    assert sum(r.attempts for r in view_requests.values()) == sent  # type: ignore[attr-defined]


async def test_a_498_storm_is_backed_off_and_every_request_succeeds(tmp_path: Path) -> None:
    with flex_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, base_url=server.url, policy=SYNC,
                                       fallback={"max_attempts": 10}))
        # The storm starts now and lasts 1.5 real seconds; 60% of the flex calls in it get a 498.
        put_scenario(server.url, Scenario(seed=1, storms=(
            Storm(status=498, tier="flex", rate=0.6, duration_s=1.5),)))
        summary = await run_job(spec)

    flex = summary.fallback
    assert summary.requests["succeeded"] == ROWS
    assert flex["gave_up"] == 0
    assert flex["status_counts"]["498"] >= 3
    assert set(flex["status_counts"]) == {"498"}
    assert flex["requeued"] == flex["status_counts"]["498"]
    assert flex["sent"] == ROWS + flex["requeued"]
    assert flex["succeeded"] == ROWS
    view = read_ledger(spec)
    assert set(assert_settled_once(view, ROWS).values()) == {"flex"}
    assert_attempts_match(view.requests, flex["sent"])
    assert max(r.attempts for r in view.requests.values()) >= 2  # some were retried


async def test_a_498_storm_that_never_ends_fails_each_request_after_max_attempts(tmp_path: Path) -> None:
    storm = Scenario(storms=(Storm(status=498, tier="flex", rate=1.0),))
    with flex_server(scenario=storm) as server:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, base_url=server.url, policy=SYNC,
                                       fallback={"max_attempts": 2}))
        summary = await run_job(spec)

    flex = summary.fallback
    assert summary.requests["failed"] == ROWS
    assert flex["gave_up"] == ROWS
    assert flex["sent"] == flex["requeued"] == 2 * ROWS
    assert flex["status_counts"] == {"498": 2 * ROWS}
    assert flex["succeeded"] == 0
    assert flex["cost_usd"] == 0
    view = read_ledger(spec)
    assert_settled_once(view, ROWS)
    for request in view.requests.values():
        assert request.attempts == 2
        assert request.last_error is not None
        assert request.last_error.endswith("(gave up after 2 attempts)")
        error = flex_error(request.last_error)
        # The server's 498 body, whole.
        assert error == {"status": 498, "error": {
            "message": "`flex` tier capacity exceeded for this model. Please try again later.",
            "type": "service_unavailable", "code": "capacity_exceeded"}}
        assert request.prompt_tokens == request.completion_tokens == 0
        assert request.cost_usd == 0
    assert summary.totals["cost_usd"] == 0


async def test_a_429_retry_after_pauses_every_call_until_it_has_elapsed(tmp_path: Path) -> None:
    concurrency = 8
    with flex_server(log_level="debug") as server, chat_log() as calls:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, base_url=server.url, policy=SYNC,
                                       fallback={"concurrency": concurrency}))
        # Every flex call in the next 2.5 s is refused with ``retry-after: 3``.
        put_scenario(server.url, Scenario(storms=(
            Storm(status=429, tier="flex", rate=1.0, duration_s=2.5, retry_after_s=3),)))
        summary = await run_job(spec)

    flex = summary.fallback
    assert summary.requests["succeeded"] == ROWS
    refused = flex["status_counts"]["429"]
    # Only the calls already on their way when the first 429 came back were refused.
    assert 1 <= refused <= concurrency
    assert flex["requeued"] == refused
    assert flex["sent"] == ROWS + refused
    view = read_ledger(spec)
    assert set(assert_settled_once(view, ROWS).values()) == {"flex"}
    assert_attempts_match(view.requests, flex["sent"])
    # No call reached the server before the retry-after had passed (a lower bound; the server
    # logs a 429 a little after the client may have read it, hence the small allowance).
    first_429 = min(t for t, status in calls if status == 429)
    first_ok = min(t for t, status in calls if status == 200)
    assert first_ok - first_429 >= 3.0 - 0.1
    assert Counter(status for _, status in calls) == {429: refused, 200: ROWS}


def spend_allowance(server: ThreadedServer, calls: int) -> None:
    for _ in range(calls):
        server.emulator.rate_limiter.admit(MODEL, "flex", tokens=10)


async def test_a_flex_rate_limit_is_paced_not_hammered(tmp_path: Path) -> None:
    rpm, concurrency = 600, 8  # 10 requests a second
    with flex_server(rate_limits={f"{MODEL}@flex": RateLimit(requests_per_minute=rpm)}) as server:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, base_url=server.url, policy=SYNC,
                                       fallback={"concurrency": concurrency, "max_attempts": 2}))
        # Spend the minute's allowance first, as another client would have.
        with pytest.raises(APIProblem) as refused:
            spend_allowance(server, rpm + 10)
        assert refused.value.status_code == 429
        drained_at = time.monotonic()
        summary = await run_job(spec)
        since_drain_s = time.monotonic() - drained_at

    flex = summary.fallback
    # 429s do not count against max_attempts (2): nothing is lost to the limit.
    assert summary.requests["succeeded"] == ROWS
    assert flex["gave_up"] == 0
    # The first 429 states the limit (the requests headers are the day's, no help): from then
    # on calls are paced to it. Only the calls already out when it came back are refused too.
    assert flex["status_counts"].get("429", 0) <= concurrency
    # What the limit allows, at most: < 1 left by the drain, then 10 a second (what refilled
    # while the job compiled is used too).
    assert since_drain_s >= (ROWS - 1) / 10
    view = read_ledger(spec)
    assert set(assert_settled_once(view, ROWS).values()) == {"flex"}
    assert_attempts_match(view.requests, flex["sent"])


async def test_5xx_bursts_are_retried_until_every_request_succeeds(tmp_path: Path) -> None:
    with flex_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, base_url=server.url, policy=SYNC,
                                       fallback={"max_attempts": 10}))
        put_scenario(server.url, Scenario(seed=2, storms=(
            Storm(status=500, tier="flex", rate=0.4, duration_s=1.5),
            Storm(status=503, tier="any", rate=0.5, duration_s=1.5))))
        summary = await run_job(spec)

    flex = summary.fallback
    assert summary.requests["succeeded"] == ROWS
    assert flex["gave_up"] == 0
    assert flex["status_counts"].get("500", 0) >= 1
    assert flex["status_counts"].get("503", 0) >= 1
    assert set(flex["status_counts"]) <= {"500", "503"}
    assert flex["requeued"] == sum(flex["status_counts"].values())
    view = read_ledger(spec)
    assert set(assert_settled_once(view, ROWS).values()) == {"flex"}
    assert_attempts_match(view.requests, flex["sent"])


async def test_a_permanent_4xx_fails_that_request_with_its_body_and_is_not_retried(tmp_path: Path) -> None:
    # A row with a photo asks a text-only model about an image: the server answers it 400.
    with_photo = {i for i in range(ROWS) if i % 4 == 1}
    with flex_server() as server:
        spec = load_job(write_flex_job(
            tmp_path, rows=ROWS, base_url=server.url, policy=SYNC,
            photo=lambda i: f"https://img.example/{i}.png" if i in with_photo else ""))
        summary = await run_job(spec)

    flex = summary.fallback
    assert summary.requests == {**summary.requests, "succeeded": ROWS - len(with_photo),
                                "failed": len(with_photo), "retryable": 0}
    assert flex["status_counts"] == {"400": len(with_photo)}
    assert flex["failed"] == len(with_photo)
    assert flex["requeued"] == 0
    assert flex["sent"] == ROWS
    view = read_ledger(spec)
    assert_settled_once(view, ROWS)
    for custom_id, request in view.with_status("failed").items():
        assert request.attempts == 1  # not retried
        result = view.results[custom_id]
        assert (result.status_code, result.source) == (400, "flex")
        body = answer_of(result)
        assert "image" in body["error"]["message"]  # the body, kept whole
        assert orjson.loads(request.last_error or "null") == body["error"]
        assert request.prompt_tokens == 0
        assert request.cost_usd == 0


async def test_a_refused_key_stops_the_fallback_and_fails_no_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 401 is about the key, not the request: nothing is failed for good, the run stops with
    the error, and once the key is right the next run answers everything."""
    with flex_server(api_key="gsk_the_right_key_1234") as server:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, base_url=server.url, policy=SYNC,
                                       fallback={"concurrency": 4}))
        monkeypatch.setenv("GROQ_API_KEY", "gsk_a_revoked_key_5678")
        with pytest.raises(AuthenticationError, match="Invalid API Key"):
            await run_job(spec)
        view = read_ledger(spec)
        assert {r.status for r in view.requests.values()} == {"retryable"}
        assert "gsk_a_revoked" not in str(view.requests)

        monkeypatch.setenv("GROQ_API_KEY", "gsk_the_right_key_1234")
        summary = await run_job(spec)

    assert summary.requests["succeeded"] == ROWS
    assert summary.requests["failed"] == 0
    assert set(assert_settled_once(read_ledger(spec), ROWS).values()) == {"flex"}
