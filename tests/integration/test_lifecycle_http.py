"""The batch lifecycle over real HTTP to the local server on a loopback port: compile → submit →
poll → reconcile into a real SQLite ledger, with every batch-level outcome the server can give
(completed, line errors, expired, failed validation, cancelled), checked in the ledger
afterwards — down to each request holding its own answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from jobs import load_job
from pipeline.cancel import cancel_job
from pipeline.emulator import Emulator, EmulatorConfig, Scenario
from pipeline.emulator.config import BatchFaults
from pipeline.emulator.serve import ThreadedServer
from pipeline.runner import run_job
from tests.integration.lifecycle import (
    MODEL,
    access_log,
    answer_of,
    assert_each_answered_once,
    assert_own_answers,
    put_scenario,
    read_ledger,
    write_job,
)

pytestmark = pytest.mark.anyio

ROWS, SHARD_LINES = 20, 6
SHARDS = 4  # 6 + 6 + 6 + 2


def shard_ids(view_shards: list[dict[str, object]]) -> dict[str, str]:
    return {str(s["batch_id"]): str(s["key"]) for s in view_shards}


async def test_all_success_over_http_polls_every_batch_in_one_call(tmp_path: Path) -> None:
    # Lines at 72 a real second: a 6-line batch takes a few poll rounds.
    emulator = Emulator(EmulatorConfig(time_scale=3600, throughput_lines_per_s=0.02, validation_s=1,
                                       finalizing_s=1))
    with ThreadedServer(emulator=emulator, log_level="debug") as server, access_log() as seen:
        spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
        summary = await run_job(spec)

    assert summary.finished
    assert summary.requests["succeeded"] == ROWS
    assert summary.shards["reconciled"] == SHARDS
    assert summary.left_retryable == 0
    assert summary.reconciled["succeeded"] == ROWS
    assert summary.reconciled["duplicates"] == 0
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
    for request in view.requests.values():  # the answer came from its own shard's batch
        shard = next(s for s in view.shards if s["key"] == request.shard_key)
        assert view.results[request.custom_id].batch_id == shard["batch_id"]
        assert shard["batch_status"] == "completed"
        assert orjson.loads(shard["request_counts_json"])["total"] == shard["lines"]

    # One batch per shard on the server, tagged with the job and shard.
    remote = {b.id: b.metadata for b in emulator.batches.newest_first()}
    assert remote == {s["batch_id"]: {"groqbatch_job": spec.name, "groqbatch_shard": s["key"]}
                      for s in view.shards}
    # One poll call per round, whatever the number of batches in flight: the repeated id filter.
    polls = [line for line in seen if line.startswith("GET /openai/v1/batches?")]
    assert summary.rounds >= 2
    assert 1 <= summary.poll_calls <= summary.rounds
    assert len(polls) == summary.poll_calls
    first = polls[0].split(" ")[1].split("?", 1)[1].split("&")
    assert sorted(first) == sorted(f"id={batch_id}" for batch_id in remote)


@pytest.mark.parametrize("line_error_status", [500, 503, 429])
async def test_error_lines_retryable_5xx_kept_and_4xx_failed(tmp_path: Path, server: ThreadedServer,
                                                            line_error_status: int) -> None:
    put_scenario(server.url, Scenario(seed=3, batch=BatchFaults(line_error_rate=0.3,
                                                                line_error_status=line_error_status)))
    # Rows with a photo ask a text-only model about an image: the server answers those 400.
    with_photo = {f"r{i:03d}" for i in range(ROWS) if i % 4 == 1}
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url,
                              images=True, photo=lambda i: f"https://img.example/{i}.png" if i % 4 == 1 else ""))
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
    row_of = {cid: r.body["messages"][-1]["content"][0]["text"].split(":")[0].split()[1]
              for cid, r in view.requests.items()}
    failed, retryable = view.with_status("failed"), view.with_status("retryable")
    assert failed
    assert retryable
    assert view.with_status("succeeded")
    for custom_id, request in failed.items():
        result = view.results[custom_id]
        assert row_of[custom_id] in with_photo
        assert result.status_code == 400
        assert "image" in answer_of(result)["error"]["message"]  # the body, kept whole
        assert orjson.loads(request.last_error or "null") == answer_of(result)["error"]
    for custom_id, request in retryable.items():
        result = view.results[custom_id]
        assert result.status_code == line_error_status
        assert answer_of(result)["error"]["code"] in ("internal_server_error", "service_unavailable")
        assert orjson.loads(request.last_error or "null") == answer_of(result)["error"]
    assert summary.left_retryable == len(retryable)
    assert summary.reconciled["failed"] == len(failed)
    assert summary.reconciled["retryable"] == len(retryable)
    assert not view.quarantine


@pytest.mark.parametrize(("fraction", "ran_per_shard"), [(0.3, [2, 2, 2, 1]), (0.7, [5, 5, 5, 2])])
async def test_expiry_keeps_partial_output_and_leaves_the_rest_retryable(
    tmp_path: Path, server: ThreadedServer, fraction: float, ran_per_shard: list[int]
) -> None:
    put_scenario(server.url, Scenario(batch=BatchFaults(expire_after_fraction=fraction)))
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
    assert {s["batch_status"] for s in view.shards} == {"expired"}
    ran = sorted((sum(1 for r in view.with_status("succeeded").values() if r.shard_key == s["key"])
                  for s in view.shards), reverse=True)
    assert ran == ran_per_shard
    left = view.with_status("retryable")
    assert len(left) == ROWS - sum(ran_per_shard) == summary.left_retryable
    for custom_id, request in left.items():
        assert "batch_expired" in (request.last_error or "")
        assert view.results[custom_id].status_code is None  # nothing was answered for it
    assert not view.with_status("failed")


async def test_failed_validation_leaves_every_request_retryable_with_the_reason(
    tmp_path: Path, server: ThreadedServer
) -> None:
    put_scenario(server.url, Scenario(batch=BatchFaults(fail_validation=True)))
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert {s["batch_status"] for s in view.shards} == {"failed"}
    assert view.counts["retryable"] == ROWS == summary.left_retryable
    for request in view.requests.values():
        shard = next(s for s in view.shards if s["key"] == request.shard_key)
        assert request.last_error == (f"batch {shard['batch_id']} failed validation: invalid_request: "
                                      "The input file failed validation (emulated fault).")
    assert not view.results


async def test_a_batch_with_no_valid_line_names_each_lines_problem(tmp_path: Path,
                                                                   server: ThreadedServer) -> None:
    config = write_job(tmp_path, rows=8, shard_lines=4, base_url=server.url)
    # An adapter id the server does not list passes the model check with a warning (Groq may
    # not list an organisation's adapters); the batch then fails validation line by line.
    config.write_text(config.read_text().replace(MODEL, f"ft:{MODEL}:acme:no-such-adapter"))
    spec = load_job(config)
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, 8)
    assert {s["batch_status"] for s in view.shards} == {"failed"}
    for request in view.requests.values():
        assert view.requests[request.custom_id].status == "retryable"
        assert (request.last_error or "").startswith("batch failed validation: model_not_found:")


@pytest.fixture
def slow_server() -> Iterator[ThreadedServer]:
    """Slow batches: 6 lines take ~1.7 s of real time, so a cancel finds them in progress."""
    config = EmulatorConfig(time_scale=3600, throughput_lines_per_s=0.001, validation_s=1,
                            finalizing_s=1, cancelling_s=5)
    with ThreadedServer(config) as running:
        yield running


async def test_cancel_reconciles_partial_output_and_leaves_the_rest_retryable(
    tmp_path: Path, slow_server: ThreadedServer
) -> None:
    import anyio

    # Three full shards (no short one that would finish before the cancel).
    spec = load_job(write_job(tmp_path, rows=18, shard_lines=SHARD_LINES, base_url=slow_server.url))
    first = await run_job(spec, wait=False)
    assert not first.finished
    assert first.shards["submitted"] == 3
    await anyio.sleep(0.6)  # about two lines of each batch run meanwhile
    report = await cancel_job(spec)

    assert report.cancelled == 3
    assert report.still_cancelling == 0
    assert report.reconciled_shards == 3
    view = read_ledger(spec)
    assert_each_answered_once(view, 18)
    assert_own_answers(view)
    assert {s["batch_status"] for s in view.shards} == {"cancelled"}
    done, left = view.with_status("succeeded"), view.with_status("retryable")
    assert done
    assert left
    assert len(done) + len(left) == 18
    assert (report.succeeded, report.retryable) == (len(done), len(left))
    for custom_id, request in left.items():
        assert "batch_cancelled" in (request.last_error or ""), custom_id
    # A run afterwards finds nothing in flight and sends nothing.
    again = await run_job(spec)
    assert again.finished
    assert again.poll_calls == 0
    assert len(slow_server.emulator.batches.newest_first()) == 3
