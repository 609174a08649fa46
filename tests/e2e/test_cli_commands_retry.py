"""``groqbatch retry`` as a user runs it: failed requests are sent again, once, and nothing else.

The first run meets a server whose batches answer some lines with a 400 (a permanent failure);
the retry meets a healthy one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs import load_job
from state import Ledger
from tests.e2e.cli import ServeProcess, clean_env, groqbatch_command, run_cli
from tests.e2e.crash import SERVE_ARGS, write_job

FAULTS = 'seed = 11\n[batch]\nline_error_rate = 0.4\nline_error_status = 400\n'


def _job_with_failures(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The init job on the in-process server with the faults on; run once."""
    made = run_cli("init", str(tmp_path / "job"))
    assert made.returncode == 0, made.stderr
    config = tmp_path / "job" / "job.toml"
    (config.parent / "faults.toml").write_text(FAULTS)
    config.write_text(config.read_text().replace(
        "[output]", '[local]\nscenario = "faults.toml"\n\n[output]'))
    ran = run_cli("run", "--quiet", "--json", str(config))
    # Requests ended failed: the run says so with exit 4, its summary still on stdout.
    assert ran.returncode == 4, ran.stderr
    assert ran.stderr.startswith("error: finished with failures"), ran.stderr
    return config, json.loads(ran.stdout)


@pytest.mark.timeout(120)  # a dozen commands, each a process, on a busy machine
def test_retry_sends_the_failed_requests_again(tmp_path: Path) -> None:
    config, first = _job_with_failures(tmp_path)
    failed = first["requests"]["failed"]
    assert 0 < failed < 5, first["requests"]

    dry = run_cli("retry", "--dry-run", str(config))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == (f"would mark {failed} requests of job 'job' to send "
                                          f"again ({failed} failed, 0 invalid output)")

    export = tmp_path / "export.jsonl"
    assert run_cli("export", "-o", str(export), str(config)).returncode == 0
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    one = next(row["id"] for row in rows if row["groqbatch_status"] == "failed")
    marked = run_cli("retry", "--mark-only", "--json", "--where", f"id={one}", str(config))
    assert marked.returncode == 0, marked.stderr
    report = json.loads(marked.stdout)
    assert sorted(report) == ["dry_run", "job", "marked", "notes", "run", "selected"]
    assert report["marked"] == {"failed": 1, "invalid_output": 0, "total": 1}
    assert report["selected"] == {"failed": True, "invalid_output": True, "where": {"id": [one]}}
    assert report["run"] is None

    # The server is healthy again: the retry marks the others and runs the job.
    config.write_text(config.read_text().replace('scenario = "faults.toml"', ""))
    retried = run_cli("retry", "--quiet", "--json", "--failed", str(config))
    assert retried.returncode == 0, retried.stderr
    report = json.loads(retried.stdout)
    assert report["marked"]["total"] == failed - 1
    assert report["run"]["finished"] is True
    assert report["run"]["requests"]["succeeded"] == 5
    assert report["run"]["compile"]["already_answered"] == 5 - failed  # not sent again

    spec = load_job(config)
    with Ledger.open(spec.ledger_target) as ledger:
        custom_id = ledger.row_ids("job", [one])[one]
        assert custom_id is not None
        history = ledger.result_history(custom_id)
    assert [entry["status_code"] for entry in history] == [400]  # the failure is kept

    unknown = run_cli("retry", "--where", "colour=red", str(config))
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines()[0].startswith(
        f"error: {config.parent / 'data' / 'sample.jsonl'}: --where colour: the input has no "
        "such column (its columns: id, lang, text;")
    malformed = run_cli("retry", "--where", "colour", str(config))
    assert malformed.returncode == 2
    assert malformed.stderr.splitlines()[0].startswith("error: --where 'colour': expected KEY=VALUE")

    nothing = run_cli("retry", "--mark-only", str(config))
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout.startswith("marked 0 requests of job 'job' to send again")


def test_retry_before_any_run_exits_2(tmp_path: Path) -> None:
    made = run_cli("init", str(tmp_path / "job"))
    assert made.returncode == 0, made.stderr
    never = run_cli("retry", str(tmp_path / "job" / "job.toml"))
    assert never.returncode == 2
    assert never.stderr.splitlines()[0].startswith("error: ledger: job 'job' has no ledger yet at ")


@pytest.mark.timeout(120)
def test_two_retries_at_once_send_each_failed_request_once(tmp_path: Path) -> None:
    scenario = tmp_path / "faults.toml"
    scenario.write_text(FAULTS)
    faulty = ServeProcess(*SERVE_ARGS, "--scenario", str(scenario))
    faulty.wait_ready()
    try:
        config = write_job(tmp_path / "job", "twice", faulty.url, rows=20, shard_lines=5)
        ran = run_cli("run", "--quiet", "--json", str(config))
        assert ran.returncode == 4, ran.stderr  # some requests failed: "finished with failures"
    finally:
        faulty.stop()
    failed = json.loads(ran.stdout)["requests"]["failed"]
    assert failed >= 3

    healthy = ServeProcess(*SERVE_ARGS)
    healthy.wait_ready()
    try:
        config.write_text(config.read_text().replace(faulty.url, healthy.url))
        procs = [subprocess.Popen([*groqbatch_command(), "retry", "--quiet", "--json",
                                   "--worker-id", f"w{n}", str(config)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=clean_env())
                 for n in range(2)]
        outputs = [proc.communicate(timeout=60) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
        reports = [json.loads(out) for out, _ in outputs]
        auth = {"Authorization": f"Bearer {healthy.api_key}"}
        batches = httpx.get(f"{healthy.url}/openai/v1/batches", params={"limit": 100},
                            headers=auth).json()["data"]
        chats = httpx.get(f"{healthy.url}/_emulator/requests", headers=auth,
                          params={"path_contains": "chat/completions"}).json()["data"]
    finally:
        healthy.stop()
    assert sum(report["marked"]["total"] for report in reports) == failed
    assert sum(batch["request_counts"]["total"] for batch in batches) + len(chats) == failed
    spec = load_job(config)
    with Ledger.open(spec.ledger_target) as ledger:
        assert ledger.request_counts("twice")["succeeded"] == 20
