"""``kill -9`` while a batch's leftovers are re-batched, then run again: nothing lost, nothing
sent twice, the leftovers still finished at the batch price.

A 40-request job in four 10-line shards against a ``groqbatch serve`` whose batches run 8.5
lines in their 24 h window (two emulated days pass per real second): each shard's batch expires
with 8 lines done, and the 8 leftovers are re-batched into a fifth shard (or a few, when the four
do not settle in one poll), which finishes. The
run is killed at a named point of that re-batch — leftovers moved back to pending, its file
uploaded, its batch created, it recorded — run again to completion, and audited against the
server: one batch per shard, each request answered by exactly one output line in all the
batches, sent in as many batches as its attempts say, and nothing through flex.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from jobs import load_job
from state import Ledger
from tests.e2e import crash
from tests.e2e.cli import ServeProcess
from tests.e2e.crash import Kill, _all_batches, run_crashing, run_to_completion

ROWS, SHARD_LINES = 40, 10
DAY_S = 86_400


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = ServeProcess("--time-scale", str(2 * DAY_S), "--throughput", str(8.5 / DAY_S),
                          log=tmp_path_factory.mktemp("serve") / "serve.log")
    server.wait_ready()
    yield server
    server.stop()


def write_job(folder: Path, name: str, base_url: str) -> Path:
    """crash.py's job, its leftovers re-batched once two or more are left."""
    config = crash.write_job(folder, name, base_url, rows=ROWS, shard_lines=SHARD_LINES)
    with config.open("a") as out:
        out.write('[policy.fallback]\nleftovers = "auto"\nleftovers_flex_below = 2\n')
    return config


def server_view(server: ServeProcess, job: str) -> tuple[list[dict[str, Any]], Counter[str], Counter[str], int]:
    """The job's batches; custom_id → batches whose input held it; custom_id → answered output
    lines in all of them; and the chat completions the server served (flex)."""
    sent, answered = Counter[str](), Counter[str]()
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as http:
        batches = [b for b in _all_batches(http) if (b.get("metadata") or {}).get("groqbatch_job") == job]
        for batch in batches:
            lines = http.get(f"/openai/v1/files/{batch['input_file_id']}/content").content.splitlines()
            sent.update(orjson.loads(line)["custom_id"] for line in lines)
            if batch.get("output_file_id"):
                out = http.get(f"/openai/v1/files/{batch['output_file_id']}/content").content
                answered.update(orjson.loads(line)["custom_id"] for line in out.splitlines()
                                if (orjson.loads(line).get("response") or {}).get("status_code") == 200)
        chats = http.get("/_emulator/requests", params={"method": "POST"}).json()["data"]
    flexed = sum(1 for e in chats if e["path"].endswith("/chat/completions"))
    return batches, sent, answered, flexed


@pytest.mark.parametrize("kill", [Kill("after_rebatch"), Kill("after_upload", 5),
                                  Kill("after_create", 5), Kill("after_submit", 5)],
                         ids=str)
def test_a_kill_while_rebatching_loses_and_duplicates_nothing(
        kill: Kill, serve: ServeProcess, tmp_path: Path) -> None:
    job = f"rebatch-{kill.point}".replace("_", "-")
    config = write_job(tmp_path / job, job, serve.url)
    log = config.parent / "runs.log"
    assert run_crashing(config, kill, log) == "killed"
    summary = run_to_completion(config, log)

    assert summary["finished"]
    assert summary["requests"]["succeeded"] == ROWS
    batches, sent, answered, flexed = server_view(serve, job)
    assert flexed == 0  # the leftovers went to a batch, not to flex
    with Ledger.open(load_job(config).ledger_target) as ledger:
        shards = ledger.shards(job)
        attempts = {r.custom_id: r.attempts for r in ledger.iter_requests(job, "succeeded")}
        results = list(ledger.results_for(list(attempts)))
    assert len(attempts) == ROWS
    assert Counter(r.custom_id for r in results) == Counter(attempts.keys())  # one result each
    assert {str(r.source) for r in results} == {"batch"}
    # One batch per shard, the one recorded: four that expired and the re-batch (or a few, when
    # the four did not settle in one poll).
    by_shard = Counter(b["metadata"]["groqbatch_shard"] for b in batches)
    assert by_shard == Counter(s["key"] for s in shards)
    assert set(by_shard.values()) == {1}
    assert {b["id"] for b in batches} == {s["batch_id"] for s in shards}
    statuses = Counter(b["status"] for b in batches)
    assert statuses["expired"] == 4
    assert 1 <= statuses["completed"] == len(batches) - 4
    assert sent == Counter(attempts)  # each request sent in as many batches as it was attempted
    assert sorted(Counter(sent.values()).items()) == [(1, 32), (2, 8)]
    assert answered == Counter(dict.fromkeys(attempts, 1))  # and answered exactly once
    rebatched = summary["paths"]["rebatched"]
    assert rebatched["requests"] == 8
    assert rebatched["saved_usd"] == pytest.approx(rebatched["cost_usd"])
