"""``kill -9`` at any point of ``groqbatch run``, then run again: nothing lost, nothing paid twice.

Each trial is a fresh 100-request job in 10 shards against one ``groqbatch serve`` (shared by
the module; every trial has its own job name, folder and ledger). The run is killed — at a
named crash point (``GROQBATCH_CRASH_AT``, :mod:`pipeline.faultpoints`), which is how the
narrow windows between a remote call and its record are hit on purpose, or after a seeded
random delay — then run to completion, and the ledger is audited against the server (see
:mod:`tests.e2e.crash`). The long version is ``bench/chaos.py`` (and the ``slow`` test below).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobs import load_job
from tests.e2e.cli import ServeProcess
from tests.e2e.crash import CRASH_POINTS, SERVE_ARGS, Kill, audit, random_kills, run_trial

SEED = 20240601
SHARDS = 10


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = ServeProcess(*SERVE_ARGS, log=tmp_path_factory.mktemp("serve") / "serve.log")
    server.wait_ready()
    yield server
    server.stop()


def _job(request: pytest.FixtureRequest) -> str:
    """A job name unique within the module's server, readable in a failure."""
    return "crash-" + request.node.callspec.id.replace("_", "").replace(":", "n")[:24]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_kill_at_a_named_point_loses_and_duplicates_nothing(
    point: str, serve: ServeProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The 4th hit: with 4 concurrent submissions, shards stand in every step when it lands.
    trial = run_trial(tmp_path, _job(request), [Kill(point, 4)], serve.url, serve.api_key)
    assert [outcome for _, outcome in trial.kills] == ["killed"], trial.line()
    assert trial.audit.requests == 100
    assert trial.audit.ok, trial.line()


@pytest.mark.parametrize("case", range(3))
def test_kills_at_random_moments_lose_and_duplicate_nothing(
    case: int, serve: ServeProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED + case)
    # Two kills in a row, the first named, the second a wall-clock one after start-up.
    kills = [Kill(rng.choice(CRASH_POINTS), rng.randint(1, SHARDS)),
             Kill(delay_s=round(rng.uniform(0.7, 1.8), 2))]
    trial = run_trial(tmp_path, _job(request), kills, serve.url, serve.api_key)
    assert trial.audit.ok, trial.line()


def test_the_audit_sees_a_double_batch_and_an_orphan_upload(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """The audit is not vacuous: a second batch for a shard and a stray upload are caught."""
    job = "crash-audit"
    trial = run_trial(tmp_path, job, [Kill("after_settle", 1)], serve.url, serve.api_key)
    assert trial.audit.ok, trial.line()
    config = tmp_path / job / "job.toml"
    from state import Ledger

    with Ledger.open(load_job(config).ledger_target) as ledger:
        shard = ledger.shards(job)[0]
    with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {serve.api_key}"}) as http:
        stray = Path(shard["path"]).read_bytes()
        upload = http.post("/openai/v1/files", data={"purpose": "batch"},
                           files={"file": (f"groqbatch-{shard['key']}.jsonl", stray)})
        upload.raise_for_status()
        again = http.post("/openai/v1/batches", json={
            "input_file_id": shard["file_id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"groqbatch_job": job, "groqbatch_shard": shard["key"]},
        })
        again.raise_for_status()
    found = audit(config, job, serve.url, serve.api_key)
    assert (found.orphans, found.double_batches, found.duplicated) == (1, 1, shard["lines"])
    assert not found.ok


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_many_seeded_trials(serve: ServeProcess, tmp_path: Path) -> None:
    """The chaos run (``bench/chaos.py --trials 40``) as a test: ``pytest -m slow``."""
    rng = random.Random(SEED)
    failures = []
    for number in range(40):
        trial = run_trial(tmp_path, f"chaos-slow-{number}", random_kills(rng, shards=SHARDS),
                          serve.url, serve.api_key)
        if not trial.audit.ok:
            failures.append(trial.line())
    assert not failures, "\n".join(failures)
