"""Every output-file and transport fault the local server can inject, against a whole run over
real HTTP: the run still finishes with each request answered once, with its own answer, and
nothing counted twice. Damaged lines are kept whole in the quarantine."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from jobs import load_job
from pipeline.emulator import Emulator, EmulatorConfig, Scenario
from pipeline.emulator.config import BatchFaults, DownloadFaults
from pipeline.emulator.serve import ThreadedServer
from pipeline.reconcile import MISSING
from pipeline.runner import run_job
from tests.integration.lifecycle import (
    access_log,
    assert_each_answered_once,
    assert_own_answers,
    put_scenario,
    read_ledger,
    write_job,
)

pytestmark = pytest.mark.anyio

ROWS, SHARD_LINES, SHARDS = 20, 6, 4


@pytest.fixture
def logged_server(emulator: Emulator) -> Iterator[tuple[ThreadedServer, list[str]]]:
    """The server on a loopback port, and the request lines it logs."""
    with ThreadedServer(emulator=emulator, log_level="debug") as running, access_log() as seen:
        yield running, seen


def one_batch_per_shard(emulator: Emulator, shards: list[dict[str, object]]) -> None:
    remote = sorted(str((b.metadata or {})["groqbatch_shard"]) for b in emulator.batches.newest_first())
    assert remote == sorted(str(s["key"]) for s in shards)


async def test_duplicate_lines_are_counted_once(tmp_path: Path, server: ThreadedServer) -> None:
    put_scenario(server.url, Scenario(seed=1, batch=BatchFaults(duplicate_line_rate=0.5)))
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)  # tokens and cost as one answer's, not two
    assert view.counts["succeeded"] == ROWS
    assert summary.reconciled["succeeded"] == ROWS
    assert summary.reconciled["duplicates"] > 0
    assert summary.reconciled["lines"] == ROWS + summary.reconciled["duplicates"]
    usage = [orjson.loads(r.body or b"{}")["usage"] for r in view.results.values()]
    assert summary.totals["prompt_tokens"] == sum(u["prompt_tokens"] for u in usage)
    assert summary.totals["completion_tokens"] == sum(u["completion_tokens"] for u in usage)
    assert not view.quarantine


async def test_missing_lines_leave_their_requests_retryable(tmp_path: Path, server: ThreadedServer) -> None:
    put_scenario(server.url, Scenario(seed=2, batch=BatchFaults(missing_line_rate=0.3)))
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
    missing = view.with_status("retryable")
    assert 0 < len(missing) < ROWS
    assert summary.reconciled["missing"] == len(missing) == summary.left_retryable
    for custom_id, request in missing.items():
        assert request.last_error == MISSING
        assert custom_id not in view.results
    # The server counted the lines as run even though their output is gone.
    assert sum(orjson.loads(s["request_counts_json"])["completed"] for s in view.shards) == ROWS


async def test_garbled_lines_are_quarantined_whole_and_their_requests_retryable(
    tmp_path: Path, server: ThreadedServer
) -> None:
    put_scenario(server.url, Scenario(seed=4, batch=BatchFaults(garbled_line_rate=0.3)))
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
    garbled = view.with_status("retryable")
    assert garbled
    assert len(view.quarantine) == len(garbled) == summary.reconciled["quarantined"]
    assert summary.reconciled["missing"] == len(garbled)
    batch_of_file = {s["output_file_id"]: s for s in view.shards}
    for line in view.quarantine:
        shard = batch_of_file[line["source_file_id"]]
        assert (line["shard_key"], line["batch_id"]) == (shard["key"], shard["batch_id"])
        assert line["reason"].startswith("not JSON")
        # Kept whole: the very bytes of that line of the output file on the server.
        content = server.emulator.files.require(line["source_file_id"]).path.read_bytes()
        assert content.splitlines()[line["line_no"] - 1] == line["raw"]
    # The requests of the garbled lines (cut in half, their custom_id still readable) are
    # exactly those left retryable as missing.
    named = {re.search(rb'"custom_id":"(gb_[0-9a-z]+)"', q["raw"]).group(1).decode()  # type: ignore[union-attr]
             for q in view.quarantine}
    assert named == set(garbled)
    for request in garbled.values():
        assert request.last_error == MISSING


async def test_an_empty_error_file_object_is_no_error_file(tmp_path: Path, server: ThreadedServer) -> None:
    put_scenario(server.url, Scenario(batch=BatchFaults(empty_error_file_object=True)))
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    assert summary.requests["succeeded"] == ROWS
    view = read_ledger(spec)
    assert_own_answers(view)
    assert {s["error_file_id"] for s in view.shards} == {None}
    assert all(b.error_file_id == {} for b in server.emulator.batches.newest_first())


async def test_truncated_downloads_are_detected_and_fetched_again(
    tmp_path: Path, logged_server: tuple[ThreadedServer, list[str]]
) -> None:
    server, seen = logged_server
    put_scenario(server.url, Scenario(seed=5, downloads=DownloadFaults(truncate_rate=0.5)))
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert view.counts["succeeded"] == ROWS
    assert_own_answers(view)  # no answer was read from a cut-short file
    downloads = [line for line in seen if line.endswith("/content")]
    assert len(downloads) > SHARDS  # some were cut short and fetched again
    assert not view.quarantine


async def test_a_download_that_keeps_failing_is_tried_again_next_round(
    tmp_path: Path, logged_server: tuple[ThreadedServer, list[str]]
) -> None:
    server, seen = logged_server
    # Seeded: the first 5 downloads (all of the client's attempts) are cut short, the 6th is whole.
    put_scenario(server.url, Scenario(seed=5, downloads=DownloadFaults(truncate_rate=0.8)))
    spec = load_job(write_job(tmp_path, rows=6, shard_lines=6, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    assert summary.reconciled["deferred"] == 1
    assert summary.reconciled["shards"] == 1
    assert summary.reconciled["succeeded"] == 6
    assert summary.reconciled["duplicates"] == 0
    view = read_ledger(spec)
    assert_each_answered_once(view, 6)
    assert view.counts["succeeded"] == 6
    assert_own_answers(view)
    assert len([line for line in seen if line.endswith("/content")]) == 6


async def test_a_poll_that_keeps_failing_is_tried_again_next_round(tmp_path: Path,
                                                                  server: ThreadedServer) -> None:
    # Seeded, one shard so the calls are in order: the create goes through, then the first
    # poll's 5 attempts are all answered 500, then the next poll goes through.
    put_scenario(server.url, Scenario(seed=343, error_rates={"batches": 0.6}))
    spec = load_job(write_job(tmp_path, rows=6, shard_lines=6, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    assert summary.rounds == 2
    assert summary.poll_calls == 2
    view = read_ledger(spec)
    assert_each_answered_once(view, 6)
    assert view.counts["succeeded"] == 6
    assert_own_answers(view)
    one_batch_per_shard(server.emulator, view.shards)


async def test_the_in_process_backend_plays_the_jobs_scenario_file(tmp_path: Path) -> None:
    scenario = Scenario(seed=11, batch=BatchFaults(duplicate_line_rate=0.3, missing_line_rate=0.2,
                                                   garbled_line_rate=0.2))
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, scenario=scenario))
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
    assert summary.reconciled["duplicates"] > 0
    assert view.quarantine
    assert view.counts["retryable"] == summary.reconciled["missing"] > len(view.quarantine)
    assert view.counts["succeeded"] + view.counts["retryable"] == ROWS


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(seed=6, downloads=DownloadFaults(drop_connection_rate=0.4)),
        Scenario(seed=7, drop_connection_rates={"batches": 0.3, "files": 0.2}),
        Scenario(seed=8, error_rates={"batches": 0.3, "files": 0.3, "content": 0.3}),
    ],
    ids=["drop-downloads", "drop-batches-files", "5xx-batches-files-content"],
)
async def test_dropped_connections_and_5xx_are_retried_to_the_end(
    tmp_path: Path, server: ThreadedServer, scenario: Scenario
) -> None:
    put_scenario(server.url, scenario)
    spec = load_job(write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, base_url=server.url))
    summary = await run_job(spec)

    assert summary.finished
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert view.counts["succeeded"] == ROWS
    assert_own_answers(view)
    one_batch_per_shard(server.emulator, view.shards)
    # Every upload went through once per shard (retries of a refused upload leave no file).
    uploads = [f for f in server.emulator.files.all() if f.purpose == "batch"]
    assert sorted(f.filename for f in uploads) == sorted(f"groqbatch-{s['key']}.jsonl" for s in view.shards)


async def test_all_faults_at_once_still_answer_each_request_once(tmp_path: Path) -> None:
    scenario = Scenario(
        seed=9,
        error_rates={"batches": 0.15, "files": 0.15},
        drop_connection_rates={"content": 0.15},
        batch=BatchFaults(duplicate_line_rate=0.2, missing_line_rate=0.1, garbled_line_rate=0.1,
                          line_error_rate=0.1, empty_error_file_object=True),
        downloads=DownloadFaults(truncate_rate=0.2),
    )
    config = EmulatorConfig(time_scale=3600, throughput_lines_per_s=50, validation_s=1, finalizing_s=1,
                            scenario=scenario)
    with ThreadedServer(config) as server:
        spec = load_job(write_job(tmp_path, rows=30, shard_lines=SHARD_LINES, base_url=server.url))
        summary = await run_job(spec)
        view = read_ledger(spec)
        one_batch_per_shard(server.emulator, view.shards)

    assert summary.finished
    assert_each_answered_once(view, 30)
    assert_own_answers(view)
    assert view.counts["succeeded"] + view.counts["retryable"] == 30
    assert summary.reconciled["succeeded"] == view.counts["succeeded"]
    assert summary.reconciled["retryable"] + summary.reconciled["missing"] == view.counts["retryable"]
