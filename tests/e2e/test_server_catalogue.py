"""A catalogue of odd-but-real server behaviours (issue 11): for each, a whole job runs against
``groqbatch serve`` showing it, and every row ends answered once — or retryable with its
reason — never succeeded without an answer, never a stuck job, never a second batch.

One table, one test: each row is a scenario for the server (``PUT /_emulator/scenario``), the
base URL's path, and what else to check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobs import load_job
from jobs.answers import judge_answer
from pipeline.emulator import Scenario
from state import Ledger
from tests.e2e.cli import ServeProcess, run_cli
from tests.e2e.workers import Journal, batch_lines, journal, write_job
from tests.integration.lifecycle import put_scenario

ROWS, SHARD_LINES = 30, 10


@dataclass(frozen=True)
class Case:
    name: str
    scenario: dict[str, Any]
    path: str = ""
    check: Callable[[dict[str, Any], Journal], None] | None = None
    flow: str = "run"
    serve_args: tuple[str, ...] = ()
    """Its own server, started with these (else the module's shared one)."""


def only_v1_paths(summary: dict[str, Any], seen: Journal) -> None:
    paths = {entry["path"] for entry in seen.entries}
    assert paths, "the journal saw nothing"
    assert all(p.startswith("/v1/") for p in paths), sorted(paths)[:5]


def quarantined_non_answers(summary: dict[str, Any], seen: Journal) -> None:
    assert summary["reconciled"]["retryable"] > 0
    assert summary["fallback"]["succeeded"] == summary["reconciled"]["retryable"]


def noted_no_listing(summary: dict[str, Any], seen: Journal) -> None:
    """The 429s made uploads whose outcome was unknown; with no listing to adopt from, they
    were uploaded again — said once in the notes, never failing the run."""
    assert any("does not list files" in note or "not swept" in note for note in summary["notes"])
    refused = [e for e in seen.entries if e["method"] == "GET" and e["path"].endswith("/files")]
    assert refused
    assert 405 in {e["status"] for e in refused}  # (some drew the 429s first)


CASES = [
    Case("string body", {"batch": {"string_body_rate": 1.0}}),
    Case("null body on 200", {"seed": 3, "batch": {"null_body_rate": 0.3}},
         check=quarantined_non_answers),
    Case("no GET /files, 429 on upload", {"seed": 5, "quirks": {
        "list_files": False, "throttle_rates": {"files": 0.5}}}, check=noted_no_listing),
    # Real time on its own server: the batches are still validating when the run leaves, and
    # completed (unknown to the ledger) by the time groqbatch cancel asks.
    Case("409 on cancel of a settled batch", {"quirks": {"cancel_settled_status": 409}},
         flow="cancel", serve_args=("--time-scale", "2", "--throughput", "200")),
    Case("/v1 paths", {}, path="/v1", check=only_v1_paths),
    Case("error_file_id {}", {"batch": {"empty_error_file_object": True}}),
    Case("5xx on poll and download", {"seed": 2, "error_rates": {"batches": 0.3, "content": 0.3}}),
    Case("429 with retry-after on upload and create", {"seed": 4, "quirks": {
        "throttle_rates": {"files": 0.5, "batches": 0.3}}}),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    serve = ServeProcess("--time-scale", "3600", "--throughput", "200",
                         log=tmp_path_factory.mktemp("serve") / "serve.log")
    serve.wait_ready()
    yield serve
    serve.stop()


def answered_once(config: Path) -> None:
    """Every request succeeded with a stored answer that is one."""
    spec = load_job(config)
    with Ledger.open(spec.ledger_target) as ledger:
        counts = ledger.request_counts(spec.name)
        assert counts["succeeded"] == ROWS, counts
        ids = [c for c in ledger.row_ids(spec.name, [str(i) for i in range(ROWS)]).values() if c]
        stored = {r.custom_id: r for r in ledger.results_for(ids)}
    assert len(stored) == ROWS
    for result in stored.values():
        assert result.body is not None
        _, problem = judge_answer(json.loads(result.body))
        assert problem is None, (result.custom_id, problem)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_whole_job_against_an_odd_server(case: Case, server: ServeProcess,
                                           tmp_path: Path) -> None:
    if case.serve_args:
        own = ServeProcess(*case.serve_args, log=tmp_path / "serve.log")
        own.wait_ready()
        try:
            run_case(case, own, tmp_path)
        finally:
            own.stop()
    else:
        run_case(case, server, tmp_path)


def run_case(case: Case, server: ServeProcess, tmp_path: Path) -> None:
    put_scenario(server.url, Scenario.model_validate(case.scenario))
    run_cli_env = {"GROQBATCH_LEASE_S": "5"}
    name = "cat-" + "".join(ch if ch.isalnum() else "-" for ch in case.name.lower())[:30]
    config = write_job(tmp_path / "job", name, server.url + case.path, rows=ROWS,
                       shard_lines=SHARD_LINES)
    try:
        with_journal_cleared(server.url)
        if case.flow == "cancel":
            first = run_cli("run", "--no-wait", "--json", str(config), **run_cli_env)
            assert first.returncode == 0, first.stderr
            time.sleep(5.0)  # the batches complete on the server; the ledger still says not
            cancelled = run_cli("cancel", "--json", str(config), timeout_s=90)
            assert cancelled.returncode == 0, cancelled.stderr
            assert json.loads(cancelled.stdout)["already_settled"] >= 1
        result = run_cli("run", "--json", str(config), timeout_s=90, **run_cli_env)
        seen = journal(server.url)
    finally:
        put_scenario(server.url, Scenario())  # the checks below read a healthy server
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["finished"] is True
    answered_once(config)
    per_shard, _ = batch_lines(server.url)
    mine = {k: v for k, v in per_shard.items() if k.startswith(name)}
    assert len(mine) == ROWS // SHARD_LINES
    assert set(mine.values()) == {1}, mine  # never a second batch
    if case.check is not None:
        case.check(summary, seen)


def with_journal_cleared(url: str) -> None:
    import httpx

    from pipeline.emulator.config import DEFAULT_API_KEY

    httpx.delete(url + "/_emulator/requests", timeout=10,
                 headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}).raise_for_status()
