"""``groqbatch run``, ``status`` and ``cancel`` as a user runs them: the real command in a
subprocess, on the in-process local server (state kept in ``[local].data_dir`` between
invocations) or against ``groqbatch serve`` in another process."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from jobs import load_job
from pipeline.emulator import Emulator, EmulatorConfig
from tests.e2e.cli import ServeProcess, run_cli
from tests.integration.lifecycle import (
    assert_each_answered_once,
    assert_own_answers,
    read_ledger,
    write_job,
)

ROWS, SHARD_LINES, SHARDS = 20, 6, 4


def run_json(*args: str, **env: str) -> dict[str, Any]:
    result = run_cli(*args, "--json", **env)
    assert result.returncode == 0, result.stderr
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def remote_batches(data_dir: Path) -> dict[str, dict[str, str] | None]:
    emulator = Emulator(EmulatorConfig(data_dir=data_dir))
    try:
        return {b.id: b.metadata for b in emulator.batches.newest_first()}
    finally:
        emulator.close()


def test_run_json_summary_then_status_from_the_ledger(tmp_path: Path) -> None:
    config = write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES)
    spec = load_job(config)
    summary = run_json("run", str(config), "--run-name", "first")

    assert summary["job"] == spec.name
    assert summary["run_id"] == 1
    assert summary["finished"] is True
    assert summary["model"] == "llama-3.1-8b-instant"
    assert summary["backend"].startswith("the local server, in-process")
    assert summary["ledger"] == spec.ledger_target
    assert summary["requests"]["succeeded"] == ROWS
    assert summary["left_retryable"] == 0
    assert summary["shards"]["reconciled"] == SHARDS
    assert summary["rows"] == {"ok": ROWS, "rejected": 0}
    assert summary["compile"]["to_send"] == ROWS
    assert len(summary["compile"]["shards"]) == SHARDS
    assert summary["reconciled"]["succeeded"] == ROWS
    assert summary["reconciled"]["shards"] == SHARDS
    assert 1 <= summary["poll_calls"] <= summary["rounds"]
    assert summary["totals"]["prompt_tokens"] > 0
    assert summary["totals"]["cost_usd"] > 0
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
    assert summary["totals"]["prompt_tokens"] == view.totals["prompt_tokens"]

    status = run_json("status", str(config))
    assert status["job"] == spec.name
    assert status["ledger"] == spec.ledger_target
    assert status["requests"] == summary["requests"]
    assert status["totals"] == view.totals
    assert sorted(s["batch_id"] for s in status["shards"]) == sorted(s["batch_id"] for s in view.shards)
    assert {s["step"] for s in status["shards"]} == {"reconciled"}
    (run,) = status["runs"]
    assert run["id"] == 1
    assert run["run_name"] == "first"
    assert run["finished"]
    assert run["summary"]["requests"] == summary["requests"]

    text = run_cli("status", str(config))
    assert text.returncode == 0, text.stderr
    assert spec.name in text.stdout
    assert f"{ROWS} succeeded" in text.stdout

    # Run again: nothing to send, no call made, a second run in the ledger.
    again = run_json("run", str(config))
    assert again["run_id"] == 2
    assert again["finished"] is True
    assert again["compile"]["to_send"] == 0
    assert again["poll_calls"] == 0
    assert [r["id"] for r in run_json("status", str(config))["runs"]] == [2, 1]
    assert len(remote_batches(spec.local_data_dir)) == SHARDS

    human = run_cli("run", str(config))
    assert human.returncode == 0, human.stderr
    assert f"{ROWS} succeeded" in human.stdout
    assert "results: in the ledger" in human.stdout


def test_status_of_a_job_that_never_ran_is_a_ledger_error(tmp_path: Path) -> None:
    config = write_job(tmp_path, rows=2)
    result = run_cli("status", str(config))
    assert result.returncode == 3  # no ledger to read: docs/src/guide/exit-codes.md
    assert result.stderr.splitlines()[0].startswith("error: job 'life' has no ledger yet at ")
    assert "nothing has run" in result.stderr


def test_no_wait_from_cron_resumes_each_time_until_done(tmp_path: Path) -> None:
    # 18 lines a real second on the in-process server: the job takes a few invocations.
    config = write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES, local={"throughput_lines_per_s": 0.005})
    spec = load_job(config)
    summaries = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        summaries.append(run_json("run", "--no-wait", "--quiet", str(config)))
        if summaries[-1]["finished"]:
            break
    assert summaries[-1]["finished"] is True
    assert len(summaries) >= 2
    assert summaries[0]["shards"]["submitted"] == SHARDS
    assert summaries[0]["notes"]
    assert "run again" in summaries[0]["notes"][-1]
    assert [s["requests"]["succeeded"] for s in summaries][-1] == ROWS
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
    assert sorted(remote_batches(spec.local_data_dir)) == sorted(s["batch_id"] for s in view.shards)


def test_cancel_reconciles_what_the_batches_finished(tmp_path: Path) -> None:
    # 0.7 lines a real second: a 6-line batch is still running when the cancel arrives, even
    # when a loaded machine takes seconds to start the cancel command.
    config = write_job(tmp_path, rows=18, shard_lines=SHARD_LINES, local={"throughput_lines_per_s": 0.0002})
    spec = load_job(config)
    started = run_json("run", "--no-wait", str(config))
    assert started["shards"]["submitted"] == 3
    # Some lines done, most not: at 0.7 lines a second, 3 s in, a few of the 18 have run
    # (and a loaded machine's slow start of the cancel command leaves well under 18).
    time.sleep(3)
    report = run_json("cancel", str(config))

    assert report["cancelled"] == 3
    assert report["still_cancelling"] == 0
    assert report["reconciled_shards"] == 3
    view = read_ledger(spec)
    assert_each_answered_once(view, 18)
    assert_own_answers(view)
    assert {s["batch_status"] for s in view.shards} == {"cancelled"}
    done, left = view.with_status("succeeded"), view.with_status("retryable")
    assert (report["succeeded"], report["retryable"]) == (len(done), len(left))
    assert done
    assert left
    assert all("batch_cancelled" in (r.last_error or "") for r in left.values())
    assert len(done) + len(left) == 18

    # With the fallback off the cancelled requests stay unanswered: a failure unless allowed.
    refused = run_cli("run", "--quiet", str(config))
    assert refused.returncode == 4, refused.stderr
    assert refused.stderr.splitlines()[0].startswith(
        f"error: finished with failures: 0 of 18 requests failed, {len(left)} left unsent "
        "(the fallback is off)")
    after = run_json("run", "--max-failed", "100%", str(config))
    assert after["finished"] is True
    assert after["poll_calls"] == 0
    assert after["left_retryable"] == len(left)
    assert after["unsent_reason"] == "the fallback is off"


def test_run_against_groqbatch_serve_named_by_groq_base_url(tmp_path: Path) -> None:
    serve = ServeProcess("--time-scale", "3600", "--throughput", "50")
    try:
        serve.wait_ready()
        config = write_job(tmp_path, rows=ROWS, shard_lines=SHARD_LINES)
        summary = run_json("run", str(config), GROQ_BASE_URL=serve.url)
        state = httpx.get(f"{serve.url}/_emulator/state",
                                        headers={"Authorization": f"Bearer {serve.api_key}"}).json()
    finally:
        serve.stop()
    assert summary["backend"] == serve.url
    assert summary["finished"] is True
    assert summary["requests"]["succeeded"] == ROWS
    assert state["batches"] == {"completed": SHARDS}
    spec = load_job(config)
    assert not spec.local_data_dir.exists()  # nothing ran in-process
    view = read_ledger(spec)
    assert_each_answered_once(view, ROWS)
    assert_own_answers(view)
