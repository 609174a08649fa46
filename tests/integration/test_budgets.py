"""Budgets over both paths, and leftovers by price, over real HTTP to the local server.

What was sent is counted from the server's side — its request journal
(``GET /_emulator/requests``) and the input files of the batches it created — not from the
ledger the code under test writes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from jobs import compile_job, load_job
from pipeline.emulator import Emulator, EmulatorConfig, Scenario
from pipeline.emulator.config import DEFAULT_API_KEY, BatchFaults
from pipeline.emulator.serve import ThreadedServer
from pipeline.planning import plan_config
from pipeline.reconcile import apply_file
from pipeline.runner import RunSummary, run_job
from pipeline.workers import Worker
from state import Ledger
from tests.e2e.cli import run_cli
from tests.integration.flexjobs import PRICE, assert_settled_once, tiers, write_flex_job
from tests.integration.lifecycle import read_ledger

pytestmark = pytest.mark.anyio

DAY_S = 86_400


def budget_server(*, throughput: float = 50.0, time_scale: float = 3600) -> ThreadedServer:
    config = EmulatorConfig(time_scale=time_scale, throughput_lines_per_s=throughput,
                            validation_s=1, finalizing_s=1, cancelling_s=1)
    return ThreadedServer(emulator=Emulator(config))


def expiring_server() -> ThreadedServer:
    """Two emulated days per real second, and batches that run 8.5 lines in a 24 h window: a
    10-line batch expires with 8 lines done, an 8-line one finishes."""
    return budget_server(throughput=8.5 / DAY_S, time_scale=2 * DAY_S)


def journal(url: str, **params: Any) -> list[dict[str, Any]]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}) as http:
        answer = http.get("/_emulator/requests", params=params)
        answer.raise_for_status()
        entries: list[dict[str, Any]] = answer.json()["data"]
        return entries


def batch_lines_sent(url: str) -> Counter[str]:
    """custom_id → how many created batches held it, read from the server: the journal's
    batch creations, each batch's input file."""
    sent = Counter[str]()
    created = [e for e in journal(url, method="POST") if e["path"].endswith("/batches")
               and e["status"] == 200]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}) as http:
        for entry in created:
            batch = http.get(f"/openai/v1/batches/{entry['batch_id']}").json()
            content = http.get(f"/openai/v1/files/{batch['input_file_id']}/content")
            sent.update(orjson.loads(line)["custom_id"] for line in content.content.splitlines())
    return sent


def file_content(url: str, file_id: str) -> bytes:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}) as http:
        answer = http.get(f"/openai/v1/files/{file_id}/content")
        answer.raise_for_status()
        return answer.content


def chat_calls(url: str) -> list[dict[str, Any]]:
    return [e for e in journal(url, method="POST") if e["path"].endswith("/chat/completions")]


# -- budgets on the batch path --------------------------------------------------------------


async def test_max_requests_bounds_what_goes_to_batches_and_a_larger_budget_sends_the_rest(
        tmp_path: Path) -> None:
    with budget_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=200, shard_lines=64, base_url=server.url,
                                       budget={"max_requests": 50}))
        summary = await run_job(spec)

        sent = batch_lines_sent(server.url)
        assert sum(sent.values()) == len(sent) == 50  # exactly 50 lines, in one 50-line batch
        assert not chat_calls(server.url)
        assert not summary.finished
        assert summary.budget_held == 150
        assert summary.budget_exhausted == "max_requests"
        assert summary.requests["succeeded"] == 50
        assert summary.requests["pending"] == 150
        assert ("budget reached: 150 requests not sent; raise [policy.budget] (max_requests = 50) "
                "and run again to send them") in summary.notes
        assert summary.totals["attempts"] == 50

        raised = load_job(write_flex_job(tmp_path, rows=200, shard_lines=64, base_url=server.url,
                                         budget={"max_requests": 1000}))
        again = await run_job(raised)
        sent = batch_lines_sent(server.url)

    assert again.finished
    assert again.budget_held == 0
    assert again.requests["succeeded"] == 200
    assert len(sent) == 200
    assert set(sent.values()) == {1}
    assert set(assert_settled_once(read_ledger(raised), 200).values()) == {"batch"}


@pytest.mark.parametrize("cap", ["max_tokens", "max_dollars"])
async def test_token_and_dollar_budgets_stop_before_the_shard_that_would_pass_them(
        tmp_path: Path, cap: str) -> None:
    config = write_flex_job(tmp_path, rows=60, shard_lines=10, base_url="http://127.0.0.1:9")
    plan = plan_config(config)
    per_line = plan.compile.est_prompt_tokens / 60 + 48  # max_completion_tokens = 48
    # Room for about 25 lines by the estimate: two 10-line shards and a cut one of ~5.
    value: float = int(per_line * 25) if cap == "max_tokens" else 25 * PRICE.cost(per_line - 48, 48)
    with budget_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=60, shard_lines=10, base_url=server.url,
                                       budget={cap: value}))
        summary = await run_job(spec)
        sent = batch_lines_sent(server.url)

    # The first pass cuts at the estimate (~25 lines); once reconcile has recorded what they
    # really cost (fewer completion tokens than the 48 assumed), later passes send a few more.
    assert 25 <= len(sent) < 60
    assert set(sent.values()) == {1}
    assert summary.budget_exhausted == cap
    assert summary.budget_held == 60 - len(sent)
    assert summary.requests["succeeded"] == len(sent)
    totals = summary.totals
    spent = totals["prompt_tokens"] + totals["completion_tokens"] if cap == "max_tokens" \
        else totals["cost_usd"]
    assert spent <= value  # what reconcile recorded is within the cap the estimate kept


async def test_plan_says_which_shards_fit_the_budget(tmp_path: Path) -> None:
    config = write_flex_job(tmp_path, rows=200, shard_lines=64, base_url="http://127.0.0.1:9",
                            budget={"max_requests": 100})
    plan = plan_config(config)
    assert [(s.lines, s.fits) for s in plan.compile.shards] == [
        (64, True), (36, True), (64, False), (36, False)]
    assert (plan.budget_fits, plan.budget_held, plan.budget_reached) == (100, 100, "max_requests")

    with budget_server() as server:  # spend 50 of it: the plan counts what the ledger spent
        await run_job(load_job(write_flex_job(tmp_path, rows=200, shard_lines=64,
                                              base_url=server.url, budget={"max_requests": 50})))
    replan = plan_config(write_flex_job(tmp_path, rows=200, shard_lines=64,
                                        base_url="http://127.0.0.1:9", budget={"max_requests": 100}))
    assert replan.compile.to_send == 150
    assert replan.budget_fits == 50
    assert replan.budget_held == 100
    assert [(s.lines, s.fits) for s in replan.compile.shards][:1] == [(50, True)]


def test_the_plan_command_prints_which_shards_fit(tmp_path: Path) -> None:
    config = write_flex_job(tmp_path, rows=200, shard_lines=64, base_url="http://127.0.0.1:9",
                            budget={"max_requests": 100})
    shown = run_cli("plan", str(config), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "64 lines / " in text
    assert text.count("(over budget)") == 2
    assert "within [policy.budget] │ 2 of 4 shards, 100 requests" in text
    assert "held back by max_requests │ 100 requests" in text
    as_json = orjson.loads(run_cli("plan", "--json", str(config), cwd=tmp_path).stdout)
    assert [s["fits"] for s in as_json["compile"]["shards"]] == [True, True, False, False]
    assert (as_json["budget_fits"], as_json["budget_held"]) == (100, 100)


async def test_a_shard_compiled_earlier_waits_when_it_no_longer_fits(tmp_path: Path) -> None:
    """Submit weighs each shard again: one compiled under a larger budget is not uploaded."""
    with budget_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=30, shard_lines=10, base_url=server.url,
                                       budget={"max_requests": 1000}))
        await run_job(spec, wait=False)  # compiled and submitted all three
        # The next 30 rows' shards are compiled by a run with a budget of 45: one and a half fit.
        tight = load_job(write_flex_job(tmp_path, rows=60, shard_lines=10, base_url=server.url,
                                        budget={"max_requests": 45}))
        summary = await run_job(tight)
        sent = batch_lines_sent(server.url)
    assert len(sent) == 45
    assert set(sent.values()) == {1}
    assert summary.budget_held == 15
    assert summary.budget_exhausted == "max_requests"
    assert summary.requests["succeeded"] == 45


async def test_workers_sharing_a_ledger_share_one_budget(tmp_path: Path) -> None:
    """Twenty shards compiled with no budget, then two workers under max_requests = 50: each
    shard is weighed and started in one transaction, so together they start five, not more."""
    with budget_server(throughput=20) as server:
        spec = load_job(write_flex_job(tmp_path, rows=200, shard_lines=10, base_url=server.url))
        with Ledger.open(spec.ledger_target) as ledger:
            assert len(compile_job(spec, ledger).shards) == 20
        capped = load_job(write_flex_job(tmp_path, rows=200, shard_lines=10, base_url=server.url,
                                         budget={"max_requests": 50}))
        summaries: list[RunSummary] = []

        async def work(name: str) -> None:
            summaries.append(await run_job(capped, worker=Worker.make(name)))

        async with anyio.create_task_group() as group:
            group.start_soon(work, "w1")
            group.start_soon(work, "w2")
        sent = batch_lines_sent(server.url)

    assert len(sent) == 50
    assert set(sent.values()) == {1}
    assert {s.budget_held for s in summaries} == {150}
    with Ledger.open(capped.ledger_target) as ledger:
        assert ledger.request_counts(capped.name)["succeeded"] == 50
        assert ledger.request_totals(capped.name)["attempts"] == 50


async def test_answers_that_arrived_twice_count_against_the_budget(tmp_path: Path) -> None:
    scenario = Scenario(seed=3, batch=BatchFaults(duplicate_line_rate=0.3))
    config = EmulatorConfig(time_scale=3600, throughput_lines_per_s=50, validation_s=1,
                            finalizing_s=1, scenario=scenario)
    with ThreadedServer(emulator=Emulator(config)) as server:
        spec = load_job(write_flex_job(tmp_path, rows=20, shard_lines=10, base_url=server.url))
        summary = await run_job(spec)
        assert summary.finished
        with Ledger.open(spec.ledger_target) as ledger:
            shards = ledger.shards(spec.name)
        outputs = {s["key"]: file_content(server.url, s["output_file_id"]) for s in shards}
    lines = Counter(orjson.loads(line)["custom_id"] for text in outputs.values()
                    for line in text.splitlines())
    twice = sum(n - 1 for n in lines.values())
    assert twice > 0
    with Ledger.open(spec.ledger_target) as ledger:
        extra = ledger.extra_spend(spec.name)
        assert extra["calls"] == twice
        assert extra["cost_usd"] > 0
        assert ledger.spend_totals(spec.name)["attempts"] == 20 + twice
        # The requests' own figures count each answer once.
        assert ledger.request_totals(spec.name)["attempts"] == 20
        # Reading the files again (a reconcile taken over after a crash) adds nothing.
        for shard in shards:
            path = tmp_path / f"{shard['key']}.jsonl"
            path.write_bytes(outputs[shard["key"]])
            apply_file(ledger, path, shard, shard["output_file_id"], PRICE)
        assert ledger.extra_spend(spec.name) == extra


# -- leftovers by price ---------------------------------------------------------------------


async def test_expired_leftovers_are_rebatched_at_the_batch_price(tmp_path: Path) -> None:
    # Each expired batch leaves 2: at the threshold, whether the four settle in one poll or not.
    with expiring_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=40, shard_lines=10, base_url=server.url,
                                       fallback={"leftovers_flex_below": 2}))
        summary = await run_job(spec)
        sent = batch_lines_sent(server.url)
        flexed = chat_calls(server.url)

    assert summary.finished
    assert summary.requests["succeeded"] == 40
    assert not flexed  # nothing through flex
    view = read_ledger(spec)
    assert set(assert_settled_once(view, 40).values()) == {"batch"}
    expired = [s for s in view.shards if s["batch_status"] == "expired"]
    assert len(expired) == 4
    assert 5 <= len(view.shards) <= 8  # the leftovers in one new batch, or a few
    assert {s["batch_status"] for s in view.shards if s not in expired} == {"completed"}
    rebatched = {cid for cid, n in sent.items() if n == 2}
    assert len(rebatched) == 8
    assert set(sent.values()) == {1, 2}
    assert {cid for cid, r in view.requests.items() if r.attempts == 2} == rebatched
    assert set(tiers(spec).values()) == {"batch"}
    assert summary.leftovers == {"rebatched": 8, "to_flex": 0, "mode": "auto"}
    paths = summary.paths
    assert (paths["rebatched"]["requests"], paths["batch"]["requests"]) == (8, 32)
    again = [view.requests[cid] for cid in rebatched]
    cost = sum(r.cost_usd for r in again)
    assert paths["rebatched"]["cost_usd"] == pytest.approx(cost)
    flex_cost = sum(PRICE.cost(r.prompt_tokens, r.completion_tokens, "flex") for r in again)
    assert paths["rebatched"]["flex_equivalent_usd"] == pytest.approx(flex_cost)
    assert paths["rebatched"]["saved_usd"] == pytest.approx(flex_cost - cost) == pytest.approx(cost)


async def test_leftovers_flex_keeps_the_old_behaviour(tmp_path: Path) -> None:
    with expiring_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=40, shard_lines=10, base_url=server.url,
                                       fallback={"leftovers": "flex", "leftovers_flex_below": 5}))
        summary = await run_job(spec)
        sent = batch_lines_sent(server.url)
        flexed = chat_calls(server.url)

    assert summary.finished
    assert summary.requests["succeeded"] == 40
    assert set(sent.values()) == {1}
    assert len(sent) == 40
    assert len(flexed) == 8
    assert {e["service_tier"] for e in flexed} == {"flex"}
    assert Counter(assert_settled_once(read_ledger(spec), 40).values()) == {"batch": 32, "flex": 8}
    assert summary.leftovers["rebatched"] == 0
    assert summary.paths["flex"]["requests"] == 8
    assert "rebatched" not in summary.paths


@pytest.mark.parametrize(("fallback", "flexed"), [
    ({"leftovers": "batch", "leftovers_flex_below": 5}, 8),  # batch, but no window fits: flex
    ({"leftovers_flex_below": 100}, 8),  # auto, too few to wait a window for: flex
])
async def test_leftovers_go_to_flex_when_time_is_short_or_they_are_few(
        tmp_path: Path, fallback: dict[str, Any], flexed: int) -> None:
    policy = {"deadline": "23h"} if fallback.get("leftovers") == "batch" else {}
    with expiring_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=40, shard_lines=10, base_url=server.url,
                                       fallback=fallback, policy=policy))
        summary = await run_job(spec)
        calls = chat_calls(server.url)
    assert summary.finished
    assert summary.requests["succeeded"] == 40
    assert len(calls) == flexed
    assert summary.leftovers["rebatched"] == 0
    assert summary.leftovers["to_flex"] >= flexed


async def test_with_the_fallback_off_leftovers_are_rebatched_not_left_open(tmp_path: Path) -> None:
    with expiring_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=40, shard_lines=10, base_url=server.url,
                                       fallback={"enabled": False}))
        summary = await run_job(spec)
        calls = chat_calls(server.url)
    assert summary.finished
    assert summary.requests["succeeded"] == 40
    assert summary.left_retryable == 0
    assert not calls
    assert summary.leftovers["rebatched"] == 8


async def test_a_request_goes_through_at_most_leftovers_max_batches(tmp_path: Path) -> None:
    """Batches that always expire (3.5 lines a window): after its second batch, what a request's
    batches left goes to flex."""
    with budget_server(throughput=3.5 / DAY_S, time_scale=2 * DAY_S) as server:
        spec = load_job(write_flex_job(tmp_path, rows=20, shard_lines=10, base_url=server.url,
                                       fallback={"leftovers": "batch"}))
        summary = await run_job(spec)
        sent = batch_lines_sent(server.url)
        calls = chat_calls(server.url)
    assert summary.finished
    assert summary.requests["succeeded"] == 20
    assert max(sent.values()) == 2  # never a third batch
    assert summary.leftovers["rebatched"] == 14  # 2 x 7 left by the first batches
    sources = assert_settled_once(read_ledger(spec), 20)
    flexed = {cid for cid, source in sources.items() if source == "flex"}
    assert len(calls) == len(flexed) > 0
    assert all(sent[cid] == 2 for cid in flexed)  # only after their second batch
