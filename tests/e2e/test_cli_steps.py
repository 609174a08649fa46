"""Multi-step jobs as a user runs them: ``configs/triage.toml`` (classify → summarise the bugs →
translate) through the real command against ``groqbatch serve``, counting from the server's
side what was sent: every batch's input file (by ``metadata.groqbatch_job``, one job per step)
and the journal of calls (``GET /_emulator/requests``)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from jobs import load_job
from pipeline.export import export_config
from state import Ledger
from tests.e2e.cli import ServeProcess, run_cli
from tests.e2e.crash import RUN_TIMEOUT_S, SERVE_ARGS, Kill, audit, run_crashing
from tests.e2e.workers import batch_lines, start_worker, wait_all

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STEPS = ("classify", "summarise", "translate")
TICKETS = 24


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A fast server: a 24h window passes in 24 s, batches settle at once."""
    server = ServeProcess("--time-scale", "3600", "--throughput", "1000",
                          log=tmp_path_factory.mktemp("serve") / "serve.log")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def crash_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The crash trials' server: batches take long enough to be killed mid-flight."""
    server = ServeProcess(*SERVE_ARGS, log=tmp_path_factory.mktemp("serve") / "serve.log")
    server.wait_ready()
    yield server
    server.stop()


def triage(folder: Path, server: ServeProcess, name: str, **replace: str) -> Path:
    """configs/triage.toml and its data in ``folder``, as job ``name`` on ``server``."""
    (folder / "data").mkdir(parents=True)
    shutil.copy(CONFIGS / "data" / "tickets.jsonl", folder / "data" / "tickets.jsonl")
    text = (CONFIGS / "triage.toml").read_text()
    text = text.replace('name = "triage"', f'name = "{name}"')
    text = text.replace('backend = "local"', f'backend = "local"\nbase_url = "{server.url}"')
    text = text.replace("poll_interval_min_s = 0.2", "poll_interval_min_s = 0.02")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    config = folder / "triage.toml"
    config.write_text(text)
    return config


def run_json(*args: str) -> dict[str, Any]:
    result = run_cli(*args, "--json", timeout_s=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def journal(server: ServeProcess, since: int = 0, **params: str) -> list[dict[str, Any]]:
    """The calls the server served after ``since`` (its journal, ``GET /_emulator/requests``)."""
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as http:
        answer = http.get("/_emulator/requests", params={"since": str(since), **params})
        answer.raise_for_status()
        entries: list[dict[str, Any]] = answer.json()["data"]
    return entries


def last_seq(server: ServeProcess) -> int:
    entries = journal(server)
    return int(entries[-1]["seq"]) if entries else 0


def sent(server: ServeProcess, job: str, since: int) -> dict[str, Counter[str]]:
    """Per step job of ``job``: each custom_id → how many lines of the batches created since
    ``since`` (by the journal) sent it."""
    per_job: dict[str, Counter[str]] = {f"{job}.{step}": Counter() for step in STEPS}
    created = [entry["batch_id"] for entry in journal(server, since, method="POST")
               if entry["path"].endswith("/batches") and entry["status"] == 200]
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as http:
        for batch_id in created:
            batch = http.get(f"/openai/v1/batches/{batch_id}").json()
            owner = (batch.get("metadata") or {}).get("groqbatch_job")
            if owner in per_job:
                content = http.get(f"/openai/v1/files/{batch['input_file_id']}/content").content
                per_job[owner].update(orjson.loads(line)["custom_id"]
                                      for line in content.splitlines() if line)
    return per_job


def ledger_ids(config: Path, job: str) -> set[str]:
    with sqlite3.connect(ledger_of(config, job)) as db:
        rows = db.execute("SELECT custom_id FROM rows WHERE job = ? AND custom_id IS NOT NULL",
                          (job,)).fetchall()
    return {row[0] for row in rows}


def ledger_of(config: Path, job: str) -> Path:
    """The job's ledger (a step's job is ``<job>.<step>``; the ledger is the job's)."""
    return Path(load_job(config).ledger_target)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_triage_runs_every_step_and_exports_any_step(serve: ServeProcess, tmp_path: Path) -> None:
    start = last_seq(serve)
    config = triage(tmp_path / "cfg", serve, "triage-e2e")
    summary = run_json("run", str(config))
    assert summary["finished"] is True
    steps = summary["steps"]
    assert list(steps) == list(STEPS)
    assert steps["classify"]["requests"]["succeeded"] == TICKETS
    bugs = steps["summarise"]["rows"]["ok"]
    assert 0 < bugs < TICKETS  # the where filter keeps some rows, not all
    assert steps["translate"]["requests"]["succeeded"] == bugs
    assert summary["requests"]["succeeded"] == TICKETS + 2 * bugs

    # Every request of every step was sent once, in one batch.
    per_job = sent(serve, "triage-e2e", start)
    for step in STEPS:
        job = f"triage-e2e.{step}"
        assert set(per_job[job]) == ledger_ids(config, job), step
        assert set(per_job[job].values()) == {1}, step
    assert summary["fallback"]["sent"] == 0
    assert journal(serve, start, path_contains="chat") == []  # no synchronous call at all

    # The last step by default: the bugs, with what every earlier step said about them.
    exported = run_json("export", str(config))
    assert exported["path"] == str(tmp_path / "out" / "triage.jsonl")
    assert exported["job"] == "triage-e2e.translate"
    translated = read_jsonl(Path(exported["path"]))
    assert len(translated) == bugs
    assert {row["topic"] for row in translated} == {"bug"}
    assert all(row["summary"] and row["groqbatch_answer"] for row in translated)
    assert {row["groqbatch_status"] for row in translated} == {"succeeded"}
    classified = run_json("export", str(config), "--step", "classify")
    assert classified["rows"] == TICKETS
    rows = read_jsonl(Path(classified["path"]))
    assert Counter(row["topic"] for row in rows)["bug"] == bugs
    assert {"ticket_id", "text", "topic", "urgent"} <= set(rows[0])

    shown = run_cli("status", str(config))
    assert shown.returncode == 0, shown.stderr
    assert f"step summarise (llama-3.1-8b-instant): {bugs} rows" in shown.stdout
    planned = run_cli("plan", str(config))
    assert planned.returncode == 0, planned.stderr
    assert "completion window: 24h (auto without a deadline: 24h)" in planned.stdout
    assert "translate" in planned.stdout
    missing = run_cli("export", str(config), "--step", "nope")
    assert missing.returncode == 2
    assert "no step 'nope'; its steps: classify, summarise, translate" in missing.stderr

    # Run again: everything is answered, nothing is sent.
    again = run_json("run", str(config))
    assert again["finished"] is True
    assert sent(serve, "triage-e2e", start) == per_job


def test_changing_one_steps_prompt_resends_only_that_step(serve: ServeProcess,
                                                          tmp_path: Path) -> None:
    start = last_seq(serve)
    config = triage(tmp_path / "cfg", serve, "triage-redo")
    first = run_json("run", str(config))
    bugs = first["steps"]["summarise"]["rows"]["ok"]
    before = sent(serve, "triage-redo", start)

    # The last step's prompt: only its requests are new.
    config.write_text(config.read_text().replace("Translate into French:",
                                                 "Translate into German:"))
    run_json("run", str(config))
    after = sent(serve, "triage-redo", start)
    assert after["triage-redo.classify"] == before["triage-redo.classify"]
    assert after["triage-redo.summarise"] == before["triage-redo.summarise"]
    new = after["triage-redo.translate"] - before["triage-redo.translate"]
    assert sum(new.values()) == bugs
    assert set(new.values()) == {1}

    # A middle step's prompt: that step again, and the next one where its input changed; the
    # first step not at all.
    config.write_text(config.read_text().replace("bug summaries for engineers",
                                                 "bug summaries for managers"))
    redo = run_json("run", str(config))
    assert redo["finished"] is True
    last = sent(serve, "triage-redo", start)
    assert last["triage-redo.classify"] == before["triage-redo.classify"]
    assert sum((last["triage-redo.summarise"] - after["triage-redo.summarise"]).values()) == bugs
    assert sum((last["triage-redo.translate"] - after["triage-redo.translate"]).values()) <= bugs
    assert all(n == 1 for counts in last.values() for n in counts.values())


def test_changing_one_input_row_resends_only_its_chain(serve: ServeProcess,
                                                       tmp_path: Path) -> None:
    start = last_seq(serve)
    config = triage(tmp_path / "cfg", serve, "triage-row")
    run_json("run", str(config))
    classified = read_jsonl(Path(export_config(load_job(config), step="classify").path))
    bug = next(row for row in classified if row["topic"] == "bug")
    before = sent(serve, "triage-row", start)
    data = config.parent / "data" / "tickets.jsonl"
    data.write_text(data.read_text().replace(bug["text"], bug["text"] + " It happens daily."))
    summary = run_json("run", str(config))
    assert summary["finished"] is True
    after = sent(serve, "triage-row", start)
    new = {job: sum((after[job] - before[job]).values()) for job in after}
    assert new["triage-row.classify"] == 1
    # The chain of that row only: at most one request per later step.
    assert new["triage-row.summarise"] <= 1
    assert new["triage-row.translate"] <= 1
    # The row's chain is consistent: the export shows its new text wherever it got to.
    for step in STEPS:
        rows = read_jsonl(Path(export_config(load_job(config), step=step).path))
        mine = [row for row in rows if row["ticket_id"] == bug["ticket_id"]]
        assert all(row["text"].endswith("It happens daily.") for row in mine), step


def test_steps_overlap_a_step_starts_on_the_first_answers_of_the_one_before(
        tmp_path: Path) -> None:
    # Slow batches: the 20-line classify batch takes ~3.5 s, the 4-line one ~2 s less.
    server = ServeProcess("--time-scale", "4", "--throughput", "2",
                          log=tmp_path / "serve.log")
    server.wait_ready()
    try:
        config = triage(tmp_path / "cfg", server, "triage-overlap",
                        **{"max_lines_per_shard = 6": "max_lines_per_shard = 20",
                           "poll_interval_max_s = 2.0": "poll_interval_max_s = 0.2"})
        summary = run_json("run", str(config))
        assert summary["finished"] is True
    finally:
        server.stop()
    with sqlite3.connect(ledger_of(config, "triage-overlap")) as db:
        classify_done = db.execute(
            "SELECT max(updated_at) FROM shards WHERE job = 'triage-overlap.classify'"
        ).fetchone()[0]
        summarise_started = db.execute(
            "SELECT min(created_at) FROM shards WHERE job = 'triage-overlap.summarise'"
        ).fetchone()[0]
    assert summarise_started < classify_done, "summarise waited for all of classify"


@pytest.mark.parametrize("kill", [Kill("after_create", 3), Kill("mid_reconcile", 2)], ids=str)
def test_a_kill_mid_run_then_resume_answers_every_row_of_every_step_once(
        crash_serve: ServeProcess, tmp_path: Path, kill: Kill) -> None:
    serve = crash_serve
    name = "triage-kill-" + (kill.point or "x").replace("_", "")
    start = last_seq(serve)
    config = triage(tmp_path / "cfg", serve, name)
    assert run_crashing(config, kill, tmp_path / "runs.log") == "killed"
    summary = run_json("run", str(config))
    assert summary["finished"] is True
    per_job = sent(serve, name, start)
    # Synchronous calls, if the fallback made any: each request's body at most once.
    digests = Counter(e["digest"] for e in journal(serve, start, path_contains="chat"))
    assert all(n == 1 for n in digests.values()), digests
    for step in STEPS:
        job = f"{name}.{step}"
        report = audit(config, job, serve.url, serve.api_key,
                       ledger_path=ledger_of(config, job))
        assert report.ok, (step, report.problems)
        assert report.requests == len(ledger_ids(config, job)) > 0
        assert set(per_job[job]) == ledger_ids(config, job), step
        assert set(per_job[job].values()) == {1}, step  # each sent once, whatever the kill
    assert summary["steps"]["translate"]["requests"]["succeeded"] == \
        summary["steps"]["summarise"]["rows"]["ok"]


def test_two_workers_share_a_multi_step_job_sending_nothing_twice(tmp_path: Path,
                                                                  ledger_url: str) -> None:
    server = ServeProcess("--time-scale", "600", "--throughput", "200",
                          log=tmp_path / "serve.log")
    server.wait_ready()
    try:
        config = triage(tmp_path / "cfg", server, "triage-workers")
        logs = [tmp_path / f"w{i}.log" for i in range(2)]
        procs = [start_worker(config, ledger_url, log, worker_id=f"w{i}")
                 for i, log in enumerate(logs)]
        summaries = wait_all(procs, logs)
        per_shard, per_request = batch_lines(server.url)
    finally:
        server.stop()
    assert all(summary["finished"] for summary in summaries)
    with Ledger.open(ledger_url) as ledger:
        shards = [s["key"] for step in STEPS for s in ledger.shards(f"triage-workers.{step}")]
        answered = sum(ledger.request_counts(f"triage-workers.{step}")["succeeded"]
                       for step in STEPS)
    assert sorted(per_shard) == sorted(shards)
    assert set(per_shard.values()) == {1}  # one batch per shard, whichever worker made it
    assert set(per_request.values()) == {1}  # every request sent once
    assert sum(per_request.values()) == answered > TICKETS
