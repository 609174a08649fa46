"""Crash trials: ``groqbatch run`` killed with SIGKILL, run again, then audited.

Shared by ``tests/e2e/test_crash.py`` (a fast, fixed set of trials) and ``bench/chaos.py``
(many seeded trials). A trial is a fresh job (its own folder, ledger and job name) against one
``groqbatch serve``; it is killed one or more times — at a named crash point
(``GROQBATCH_CRASH_AT``, see :mod:`pipeline.faultpoints`) or after a random wall-clock delay —
then run to completion with no crash, and :func:`audit` compares the ledger with the server:

- every request ``succeeded``, with exactly one result, sent in exactly one batch;
- every shard has exactly one batch on the server (``metadata.groqbatch_shard``), the one the
  ledger recorded, and it was created from the file the ledger recorded;
- every file the job uploaded (``groqbatch-<shard>.jsonl``) is some shard's ``file_id``;
- the quarantine is empty, and tokens are counted once: the requests' prompt and completion
  tokens sum to the usage in the stored result bodies;
- no request ``failed`` without ever getting an answer or an error (:func:`unanswered_failures`):
  a request may fail only on what a server said, never on a kill or a call cut short.
"""

from __future__ import annotations

import json
import random
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from jobs import load_job
from pipeline.faultpoints import ENV_VAR, POINTS
from state import Ledger, RequestStatus
from tests.e2e.cli import clean_env, groqbatch_command

CRASH_POINTS = tuple(sorted(POINTS - {"after_rebatch"}))
"""The points every trial's job passes (re-batching needs batches that leave leftovers: its
point is tried by ``tests/e2e/test_rebatch_crash.py``)."""
SERVE_ARGS = ("--time-scale", "10", "--throughput", "10")
"""A 10-line batch takes about half a real second (2 s validating, 1 s of lines, 2 s
finalizing, at 10 emulated seconds per real one): long enough to be killed mid-flight."""
RUN_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Kill:
    """How one crashing run dies: at the ``nth`` pass of a named point, or after ``delay_s``."""

    point: str | None = None
    nth: int = 1
    delay_s: float | None = None

    def __str__(self) -> str:
        return f"{self.point}:{self.nth}" if self.point else f"after {self.delay_s:.2f}s"


def random_kills(rng: random.Random, *, shards: int, most: int = 3) -> list[Kill]:
    """One to ``most`` kills, each a named point (with n) or a random delay, chosen by ``rng``."""
    kills = []
    for _ in range(rng.randint(1, most)):
        if rng.random() < 0.6:
            kills.append(Kill(rng.choice(CRASH_POINTS), rng.randint(1, shards)))
        else:
            kills.append(Kill(delay_s=round(rng.uniform(0.2, 2.0), 2)))
    return kills


def write_job(folder: Path, name: str, base_url: str, *, rows: int = 100, shard_lines: int = 10) -> Path:
    """A job of ``rows`` distinct requests in shards of ``shard_lines``, against ``base_url``."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "rows.jsonl").open("w") as out:
        for i in range(rows):
            out.write(json.dumps({"id": i, "text": f"{name}: row {i} asks for a short answer"}) + "\n")
    config = folder / "job.toml"
    config.write_text(
        f'name = "{name}"\nbackend = "local"\nbase_url = "{base_url}"\n'
        'model = "llama-3.1-8b-instant"\n'
        '[input]\npath = "rows.jsonl"\nid_column = "id"\n'
        '[prompt]\nuser = "{{ text }}"\nmax_completion_tokens = 16\n'
        f'[policy]\ncompletion_window = "24h"\nmax_lines_per_shard = {shard_lines}\n'
        "poll_interval_min_s = 0.02\npoll_interval_max_s = 0.2\n"
    )
    return config


def run_crashing(config: Path, kill: Kill, log: Path) -> str:
    """Run until the kill lands (or the run finishes first); returns what happened."""
    env = clean_env(**({ENV_VAR: f"{kill.point}:{kill.nth}"} if kill.point else {}))
    with log.open("ab") as out:
        proc = subprocess.Popen([*groqbatch_command(), "run", "--quiet", str(config)],
                                stdout=out, stderr=out, env=env, cwd=config.parent)
        try:
            code = proc.wait(timeout=kill.delay_s if kill.delay_s is not None else RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            if kill.delay_s is None:
                proc.kill()
                proc.wait()
                raise
            proc.send_signal(signal.SIGKILL)
            code = proc.wait()
    if code == -signal.SIGKILL:
        return "killed"
    if code == 0:
        return "finished"
    raise AssertionError(f"groqbatch run exited {code} under kill {kill}; see {log}")


def run_to_completion(config: Path, log: Path) -> dict[str, Any]:
    """The final run, no crash: it must finish the job. Returns its JSON summary."""
    result = subprocess.run([*groqbatch_command(), "run", "--json", str(config)], capture_output=True,
                            timeout=RUN_TIMEOUT_S, env=clean_env(), cwd=config.parent, check=False)
    with log.open("ab") as out:
        out.write(result.stderr)
    assert result.returncode == 0, f"final run exited {result.returncode}: {result.stderr.decode()[-2000:]}"
    summary: dict[str, Any] = orjson.loads(result.stdout)
    return summary


@dataclass(slots=True)
class Audit:
    """What a finished trial left behind; every count is 0 in a correct run."""

    requests: int = 0
    lost: int = 0
    """Requests not succeeded, or succeeded without a stored result."""
    duplicated: int = 0
    """Requests sent in more than one batch (paid for twice), or sent more than once per the ledger."""
    double_batches: int = 0
    """Shards with more than one batch on the server (or none, or not the one recorded)."""
    orphans: int = 0
    """Files uploaded for the job that no shard records."""
    quarantined: int = 0
    token_mismatch: int = 0
    unanswered: int = 0
    """Requests ``failed`` that never got an answer or an error (see :func:`unanswered_failures`)."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.double_batches or self.orphans
                    or self.quarantined or self.token_mismatch or self.unanswered)


def audit(config: Path, job: str, server_url: str, api_key: str, *,
          ledger_path: Path | None = None) -> Audit:
    """Compare the job's ledger with the server (see the module docstring). ``ledger_path``:
    where the ledger is when it is not the job's own (a step of a multi-step job)."""
    ledger_path = ledger_path or load_job(config).ledger_target
    report = Audit()
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {api_key}"},
                      timeout=30) as http:
        batches = [b for b in _all_batches(http) if (b.get("metadata") or {}).get("groqbatch_job") == job]
        files = _all_files(http)
        with Ledger.open(ledger_path) as ledger:
            shards = ledger.shards(job)
            ids = _request_ids(ledger_path, job)
            report.requests = len(ids)
            _audit_requests(report, ledger, job, ids)
            _audit_shards(report, shards, batches, files, job)
            _audit_sends(report, http, batches)
        report.quarantined = _quarantine_count(ledger_path)
        if report.quarantined:
            report.problems.append(f"{report.quarantined} lines quarantined")
    return report


def _audit_requests(report: Audit, ledger: Ledger, job: str, ids: list[str]) -> None:
    counts = ledger.request_counts(job)
    succeeded = counts.get("succeeded", 0)
    results = list(ledger.results_for(ids))
    per_id = Counter(r.custom_id for r in results)
    without = [i for i in ids if per_id[i] != 1]
    report.lost = max(report.requests - succeeded, len(without))
    if report.lost:
        others = {k: v for k, v in counts.items() if v and k != "succeeded"}
        report.problems.append(f"{report.lost} requests lost: {others}, {len(without)} without one result")
    unanswered = unanswered_failures(ledger, job, per_id.keys())
    report.unanswered = len(unanswered)
    if unanswered:
        report.problems.append(f"{len(unanswered)} requests failed unanswered: {unanswered[:3]}")
    totals = ledger.request_totals(job)
    if totals["attempts"] != report.requests:
        report.duplicated = max(report.duplicated, int(totals["attempts"]) - report.requests)
        report.problems.append(f"{totals['attempts']} attempts recorded for {report.requests} requests")
    usage = Counter[str]()
    for result in results:
        body = orjson.loads(result.body) if result.body else {}
        usage.update({k: int((body.get("usage") or {}).get(k) or 0)
                      for k in ("prompt_tokens", "completion_tokens")})
    for kind in ("prompt_tokens", "completion_tokens"):
        if int(totals[kind]) != usage[kind]:
            report.token_mismatch += 1
            report.problems.append(f"{kind}: ledger {totals[kind]} != result bodies {usage[kind]}")


_HTTP_STATUS = re.compile(r'"status":\s*[1-5][0-9][0-9]\b')
_NO_ANSWER = ("recovered after an interrupted run", "gave up")


def unanswered_failures(ledger: Ledger, job: str, with_result: Collection[str]) -> list[str]:
    """``failed`` requests that never got an answer or an error, as ``custom_id: last_error``:
    those not in ``with_result`` (the custom_ids with a stored result), and those whose
    ``last_error`` says they were recovered from an interrupted run or given up on, with no
    HTTP status in it."""
    found = []
    for request in ledger.iter_requests(job, RequestStatus.FAILED):
        error = request.last_error or ""
        if request.custom_id not in with_result or (
                any(text in error for text in _NO_ANSWER) and not _HTTP_STATUS.search(error)):
            found.append(f"{request.custom_id}: {error[:200]}")
    return found


def _audit_shards(report: Audit, shards: list[dict[str, Any]], batches: list[dict[str, Any]],
                  files: list[dict[str, Any]], job: str) -> None:
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for batch in batches:
        by_shard.setdefault(batch["metadata"].get("groqbatch_shard", ""), []).append(batch)
    for shard in shards:
        found = by_shard.pop(shard["key"], [])
        if len(found) != 1 or found[0]["id"] != shard["batch_id"] or \
                found[0]["input_file_id"] != shard["file_id"] or shard["step"] != "reconciled":
            report.double_batches += 1
            report.problems.append(
                f"shard {shard['key']} ({shard['step']}, batch {shard['batch_id']}, file "
                f"{shard['file_id']}): server has {[(b['id'], b['input_file_id']) for b in found]}")
    for key, extra in by_shard.items():  # batches tagged with a shard the ledger does not know
        report.double_batches += 1
        report.problems.append(f"unknown shard {key!r} has batches {[b['id'] for b in extra]}")
    recorded = {shard["file_id"] for shard in shards}
    prefix = f"groqbatch-{job[:40]}-"
    for remote in files:
        if remote.get("purpose") == "batch" and remote["filename"].startswith(prefix) \
                and remote["id"] not in recorded:
            report.orphans += 1
            report.problems.append(f"orphan upload {remote['id']} ({remote['filename']})")


def _audit_sends(report: Audit, http: httpx.Client, batches: list[dict[str, Any]]) -> None:
    """Read every batch's input file: a custom_id in two of them was paid for twice."""
    sent = Counter[str]()
    for batch in batches:
        content = http.get(f"/openai/v1/files/{batch['input_file_id']}/content")
        content.raise_for_status()
        sent.update(orjson.loads(line)["custom_id"] for line in content.content.splitlines() if line)
    twice = sum(1 for n in sent.values() if n > 1)
    if twice:
        report.duplicated = max(report.duplicated, twice)
        report.problems.append(f"{twice} requests sent in more than one batch")


def _all_batches(http: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = http.get("/openai/v1/batches", params=params)
        page.raise_for_status()
        data = page.json()
        found.extend(data["data"])
        cursor = (data.get("paging") or {}).get("next_cursor")
        if not cursor:
            return found
        params = {"limit": 100, "cursor": cursor}


def _all_files(http: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 10_000}
    while True:
        page = http.get("/openai/v1/files", params=params)
        page.raise_for_status()
        data = page.json()
        found.extend(data["data"])
        if not data.get("has_more"):
            return found
        params = {"limit": 10_000, "after": data["last_id"]}


def _request_ids(ledger_path: Path, job: str) -> list[str]:
    """The job's custom_ids. The ledger has no operation listing them, so read it directly."""
    with sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT DISTINCT custom_id FROM rows WHERE job = ? AND custom_id IS NOT NULL",
                          (job,)).fetchall()
    return [row[0] for row in rows]


def _quarantine_count(ledger_path: Path) -> int:
    with sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    return count


@dataclass(slots=True)
class TrialResult:
    job: str
    kills: list[tuple[Kill, str]]
    audit: Audit
    elapsed_s: float

    def line(self) -> str:
        a = self.audit
        what = ", ".join(f"{kill} → {outcome}" for kill, outcome in self.kills)
        verdict = "ok" if a.ok else "FAIL: " + "; ".join(a.problems[:5])
        return (f"{self.job}: [{what}] requests={a.requests} lost={a.lost} duplicated={a.duplicated} "
                f"orphans={a.orphans} double_batches={a.double_batches} unanswered={a.unanswered} "
                f"{self.elapsed_s:.1f}s {verdict}")


def run_trial(root: Path, job: str, kills: list[Kill], server_url: str, api_key: str, *,
              rows: int = 100, shard_lines: int = 10) -> TrialResult:
    """Write a fresh job, run it under each kill in turn, finish it, and audit it."""
    started = time.monotonic()
    config = write_job(root / job, job, server_url, rows=rows, shard_lines=shard_lines)
    log = config.parent / "runs.log"
    outcomes = [(kill, run_crashing(config, kill, log)) for kill in kills]
    run_to_completion(config, log)
    return TrialResult(job, outcomes, audit(config, job, server_url, api_key), time.monotonic() - started)
