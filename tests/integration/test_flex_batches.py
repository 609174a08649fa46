"""The flex fallback behind the batch path, over real HTTP to the local server: what expired,
cancelled or dropped batches leave undone is finished by synchronous flex calls — each request
answered once, tokens and cost counted once and priced at the tier that answered — and what
the job's triggers, deadline and budget say is respected, all checked in the SQLite ledger."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from jobs import compile_job, load_job
from pipeline.client import GroqClient
from pipeline.emulator import Emulator, EmulatorConfig, Scenario
from pipeline.emulator.config import DEFAULT_API_KEY, BatchFaults
from pipeline.emulator.serve import ThreadedServer
from pipeline.runner import run_job
from pipeline.submit import upload_filename
from state import Ledger, ShardStep
from tests.integration.flexjobs import PRICE, assert_settled_once, tiers, write_flex_job
from tests.integration.lifecycle import read_ledger

pytestmark = pytest.mark.anyio

ROWS, SHARD_LINES = 20, 6  # shards of 6, 6, 6, 2


def batch_server(scenario: Scenario | None = None, *, throughput: float = 50) -> ThreadedServer:
    """An hour of emulated time per real second; ``throughput`` batch lines per emulated second."""
    config = EmulatorConfig(time_scale=3600, throughput_lines_per_s=throughput, validation_s=1,
                            finalizing_s=1, cancelling_s=1, scenario=scenario or Scenario())
    return ThreadedServer(emulator=Emulator(config))


@pytest.mark.parametrize(("fraction", "ran_per_shard"),
                         [(0.0, [0, 0, 0, 0]), (0.3, [2, 2, 2, 1]), (0.7, [5, 5, 5, 2])])
async def test_expired_batches_are_finished_by_flex(tmp_path: Path, fraction: float,
                                                     ran_per_shard: list[int]) -> None:
    with batch_server(Scenario(batch=BatchFaults(expire_after_fraction=fraction))) as server:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
        summary = await run_job(spec)

    assert summary.finished
    assert summary.requests["succeeded"] == ROWS
    assert summary.left_retryable == 0
    assert not summary.notes
    view = read_ledger(spec)
    sources = assert_settled_once(view, ROWS)
    ran = sum(ran_per_shard)
    assert Counter(sources.values()) == Counter({"batch": ran, "flex": ROWS - ran})
    assert all(s["batch_status"] == "expired" and s["step"] == "reconciled" for s in view.shards)
    by_shard = Counter(r.shard_key for cid, r in view.requests.items() if sources[cid] == "batch")
    assert sorted(by_shard.values(), reverse=True) == [n for n in ran_per_shard if n]
    sent_by = tiers(spec)
    for custom_id, request in view.requests.items():
        flexed = sources[custom_id] == "flex"
        # One attempt in the batch; the flexed ones one more, on the flex tier.
        assert request.attempts == (2 if flexed else 1)
        assert sent_by[custom_id] == ("flex" if flexed else "batch")

    flex = summary.fallback
    assert (flex["sent"], flex["succeeded"], flex["requeued"], flex["failed"]) == (ROWS - ran, ROWS - ran, 0, 0)
    assert flex["status_counts"] == {}
    flexed = [r for cid, r in view.requests.items() if sources[cid] == "flex"]
    assert flex["prompt_tokens"] == sum(r.prompt_tokens for r in flexed)
    assert flex["completion_tokens"] == sum(r.completion_tokens for r in flexed)
    assert flex["cost_usd"] == pytest.approx(sum(r.cost_usd for r in flexed))
    # Flex is priced at the flex (on-demand) rate, the batch lines at half of it.
    assert flex["cost_usd"] == pytest.approx(
        sum(PRICE.cost(r.prompt_tokens, r.completion_tokens, "flex") for r in flexed))
    assert summary.totals["cost_usd"] == pytest.approx(sum(r.cost_usd for r in view.requests.values()))


async def test_triggers_leave_expired_requests_retryable_and_flex_only_the_missing(tmp_path: Path) -> None:
    scenario = Scenario(seed=5, batch=BatchFaults(expire_after_fraction=0.7, missing_line_rate=0.4))
    with batch_server(scenario) as server:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url,
                                       fallback={"triggers": ["missing"]}))
        summary = await run_job(spec)

    view = read_ledger(spec)
    expired = view.with_status("retryable")
    assert expired
    assert all('"batch_expired"' in (r.last_error or "") for r in expired.values())
    assert all(r.attempts == 1 for r in expired.values())  # never sent again
    assert summary.left_retryable == len(expired)
    assert summary.notes == [f"{len(expired)} requests are left retryable "
                             "(their trigger is not in [policy.fallback].triggers)"]
    flexed = {cid for cid, result in view.results.items()
              if result.source == "flex" and view.requests[cid].status == "succeeded"}
    assert flexed, "the seeded scenario leaves some lines missing"
    assert summary.fallback["sent"] == summary.fallback["succeeded"] == len(flexed)
    assert summary.reconciled["missing"] == len(flexed)
    answered = {cid: r for cid, r in view.requests.items() if r.status == "succeeded"}
    assert len(answered) + len(expired) == ROWS
    # The answered ones hold their own answers, once (the retryable ones hold none yet).
    answered_view = type(view)(view.counts, answered, view.results, view.shards, view.quarantine,
                               {"prompt_tokens": sum(r.prompt_tokens for r in answered.values()),
                                "completion_tokens": sum(r.completion_tokens for r in answered.values())})
    assert_settled_once(answered_view, len(answered))


async def test_sync_mode_sends_everything_through_flex_and_no_batch(tmp_path: Path) -> None:
    with batch_server() as server:
        spec = load_job(write_flex_job(tmp_path, rows=ROWS, base_url=server.url, policy={"mode": "sync"}))
        summary = await run_job(spec)
        assert server.emulator.batches.newest_first() == []
        assert server.emulator.files.all() == []

    assert summary.finished
    assert summary.requests["succeeded"] == ROWS
    assert summary.compile["shards"] == []
    assert summary.compile["to_send"] == ROWS
    view = read_ledger(spec)
    assert view.shards == []
    assert set(assert_settled_once(view, ROWS).values()) == {"flex"}
    assert all(r.attempts == 1 and r.shard_key is None for r in view.requests.values())
    assert set(tiers(spec).values()) == {"flex"}
    assert summary.fallback["sent"] == summary.fallback["succeeded"] == ROWS
    assert summary.totals["attempts"] == ROWS


async def test_deadline_cancels_batches_drops_unsubmitted_shards_and_flex_finishes(tmp_path: Path) -> None:
    # ~3.6 lines a real second: a 6-line batch is still running when the deadline passes.
    with batch_server(throughput=0.001) as server:
        first = load_job(write_flex_job(tmp_path, rows=12, shard_lines=SHARD_LINES, base_url=server.url))
        started = time.monotonic()
        await run_job(first, wait=False)  # two batches created and running
        submitted = {s["key"] for s in read_ledger(first).shards}
        assert len(submitted) == 2
        # Eight more rows (new shards), and a deadline one second after the job began.
        spec = load_job(write_flex_job(tmp_path, rows=20, shard_lines=SHARD_LINES, base_url=server.url,
                                       policy={"deadline": "1s"}))
        assert spec.policy.deadline is not None
        assert spec.policy.deadline.total_seconds() == 1
        await anyio.sleep(max(0.0, 1.05 - (time.monotonic() - started)))
        summary = await run_job(spec)

    assert summary.finished
    assert summary.deadline is not None
    assert summary.requests["succeeded"] == ROWS
    view = read_ledger(spec)
    sources = assert_settled_once(view, ROWS)
    steps = {s["key"]: (s["step"], s["batch_status"], s["batch_id"]) for s in view.shards}
    dropped = {key for key, (step, _, _) in steps.items() if step == "dropped"}
    assert len(dropped) == 2
    assert not dropped & submitted
    assert all(steps[key][2] is None for key in dropped)  # no batch was ever made for them
    assert all(steps[key][:2] == ("reconciled", "cancelled") for key in submitted)
    for custom_id, request in view.requests.items():
        if request.shard_key in dropped:
            # Straight to flex, and only one attempt spent: the batch never ran.
            assert (sources[custom_id], request.attempts) == ("flex", 1)
    of_cancelled = Counter(sources[cid] for cid, r in view.requests.items() if r.shard_key in submitted)
    assert of_cancelled["batch"] >= 1, "the cancelled batches' partial output is kept"
    assert of_cancelled["flex"] >= 1
    assert summary.fallback["sent"] == summary.fallback["succeeded"] == Counter(sources.values())["flex"]


async def test_a_shard_caught_in_submitting_at_the_deadline_is_resolved_then_cancelled(
    tmp_path: Path
) -> None:
    """A crash between creating a batch and recording it leaves the shard ``submitting``; once
    the deadline has passed, the run must still resolve it (adopt the batch, else create it)
    and cancel it, or the shard stays in flight and the run never ends."""
    with batch_server(throughput=0.001) as server:
        spec = load_job(write_flex_job(tmp_path, rows=12, shard_lines=SHARD_LINES, base_url=server.url,
                                       policy={"deadline": "2020-01-01T00:00:00Z"}))
        with Ledger.open(spec.ledger_target) as ledger:
            compile_job(spec, ledger)
            caught, _ = ledger.shards(spec.name)
            async with GroqClient(server.url, DEFAULT_API_KEY) as client:
                remote = await client.upload_file(Path(caught["path"]),
                                                  filename=upload_filename(caught["key"]))
            for step, to, fields in [(ShardStep.COMPILED, ShardStep.UPLOADING, {}),
                                     (ShardStep.UPLOADING, ShardStep.UPLOADED, {"file_id": remote.id}),
                                     (ShardStep.UPLOADED, ShardStep.SUBMITTING, {})]:
                assert ledger.set_shard_step(caught["key"], step, to, **fields)
        with anyio.fail_after(20):
            summary = await run_job(spec)
        batches = server.emulator.batches.newest_first()

    assert summary.finished
    assert summary.requests["succeeded"] == 12
    view = read_ledger(spec)
    assert_settled_once(view, 12)
    shards = {s["key"]: s for s in view.shards}
    assert (shards[caught["key"]]["step"], shards[caught["key"]]["batch_status"]) == ("reconciled", "cancelled")
    assert [b.id for b in batches] == [shards[caught["key"]]["batch_id"]]  # one batch, no more
    assert [s["step"] for key, s in shards.items() if key != caught["key"]] == ["dropped"]


@pytest.mark.parametrize(("budget", "exhausted"), [({"max_requests": 8}, "max_requests"),
                                                   ({"max_dollars": 2e-5}, "max_dollars")])
async def test_budget_stops_cleanly_and_a_raised_budget_finishes(
    tmp_path: Path, budget: dict[str, float], exhausted: str
) -> None:
    with batch_server() as server:
        config = write_flex_job(tmp_path, rows=ROWS, base_url=server.url, policy={"mode": "sync"},
                                budget=budget)
        spec = load_job(config)
        summary = await run_job(spec)

        assert summary.budget_exhausted == summary.fallback["budget_exhausted"] == exhausted
        sent = summary.fallback["sent"]
        assert 0 < sent < ROWS
        assert summary.fallback["succeeded"] == sent
        assert summary.requests["succeeded"] == sent
        assert summary.left_retryable == ROWS - sent
        assert summary.requests["in_flight"] == 0
        assert summary.notes == [f"the budget ({exhausted}) is spent: {ROWS - sent} requests are left "
                                 "retryable; raise [policy.budget] and run again to finish them"]
        if exhausted == "max_requests":
            assert sent == 8
        else:
            assert summary.totals["cost_usd"] <= 2e-5
        view = read_ledger(spec)
        assert all(r.attempts == 0 for r in view.with_status("retryable").values())

        raised = load_job(write_flex_job(tmp_path, rows=ROWS, base_url=server.url,
                                         policy={"mode": "sync"}, budget={"max_requests": 1000}))
        again = await run_job(raised)

    assert again.budget_exhausted is None
    assert again.requests["succeeded"] == ROWS
    assert again.fallback["sent"] == ROWS - sent
    assert set(assert_settled_once(read_ledger(raised), ROWS).values()) == {"flex"}
