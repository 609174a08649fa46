"""``groqbatch gc`` against ``groqbatch serve``: a live batch's files are never deleted; a
finished job's remote and local files are, once, and what was freed is reported."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs import load_job
from state import Ledger
from tests.e2e.cli import ServeProcess, clean_env, groqbatch_command, run_cli
from tests.e2e.crash import write_job


def _files(serve: ServeProcess) -> set[str]:
    listed = httpx.get(f"{serve.url}/openai/v1/files",
                       headers={"Authorization": f"Bearer {serve.api_key}"}).json()["data"]
    return {item["id"] for item in listed}


def _deletes(serve: ServeProcess) -> int:
    journal = httpx.get(f"{serve.url}/_emulator/requests", params={"method": "DELETE"},
                        headers={"Authorization": f"Bearer {serve.api_key}"}).json()["data"]
    return len(journal)


def _gc(config: Path, *args: str) -> dict[str, Any]:
    result = run_cli("gc", "--json", *args, str(config))
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.timeout(120)  # a run held open on a slow server, and a dozen commands
def test_gc_keeps_live_batches_files_then_frees_a_finished_jobs_files(tmp_path: Path) -> None:
    # About 8 s a batch: long enough to look at the job while its batches run.
    serve = ServeProcess("--time-scale", "1", "--throughput", "1")
    serve.wait_ready()
    try:
        config = write_job(tmp_path / "job", "sweep", serve.url, rows=8, shard_lines=4)
        spec = load_job(config)
        running = subprocess.Popen([*groqbatch_command(), "run", "--quiet", str(config)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=clean_env())
        try:
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, "the batches were never created"
                if Path(spec.ledger_target).exists():
                    with Ledger.open(spec.ledger_target) as ledger:
                        shards = ledger.shards("sweep")
                    if len(shards) == 2 and all(s["batch_id"] for s in shards):
                        break
                time.sleep(0.2)
            uploaded = {s["file_id"] for s in shards}
            live = _gc(config)
            listing = json.loads(run_cli("jobs", "--json", "--ledger", spec.ledger_target).stdout)
            assert running.poll() is None, "the run ended before gc could look at live batches"
        finally:
            _out, err = running.communicate(timeout=60)
        assert running.returncode == 0, err
        assert live["freed"] == {"files": 0, "bytes": 0}
        assert live["kept"]["shards_not_done"] == 2
        assert live["files"] == []
        assert [job["state"] for job in listing["jobs"]] == ["running"]

        assert uploaded <= _files(serve)  # nothing of the live batches was deleted
        shard_files = set((spec.workdir_path / "shards").glob("*.jsonl"))
        assert len(shard_files) == 2

        recent = _gc(config, "--older-than", "7d")
        assert (recent["freed"]["files"], recent["kept"]["shards_too_recent"]) == (0, 2)

        dry = _gc(config, "--dry-run")
        assert dry["dry_run"] is True
        assert dry["local_freed"]["files"] == 2
        assert dry["remote_freed"]["files"] >= 4  # 2 inputs and 2 outputs (error files if any)
        assert set((spec.workdir_path / "shards").glob("*.jsonl")) == shard_files
        assert uploaded <= _files(serve)
        deletes_before = _deletes(serve)

        freed = _gc(config)
        remote = {f["name"] for f in freed["files"] if f["place"] == "remote"}
        assert remote == {f["name"] for f in dry["files"] if f["place"] == "remote"}
        assert uploaded <= remote
        assert not remote & _files(serve)
        assert _deletes(serve) == deletes_before + len(remote)
        assert not list((spec.workdir_path / "shards").glob("*.jsonl"))
        assert freed["local_freed"]["bytes"] == sum(s["bytes"] for s in shards)
        assert freed["freed"]["files"] == len(remote) + 2

        again = run_cli("gc", str(config))
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[0] == ("deleted 0 remote files (0 bytes) and 0 local "
                                                "files (0 bytes) of job 'sweep'")
        assert _deletes(serve) == deletes_before + len(remote)  # not asked again
    finally:
        serve.stop()


def test_gc_error_paths(tmp_path: Path) -> None:
    config = write_job(tmp_path / "job", "never", "http://127.0.0.1:9")
    never = run_cli("gc", str(config))
    assert never.returncode == 2
    assert never.stderr.splitlines()[0].startswith("error: ledger: job 'never' has no ledger yet")
    bad = run_cli("gc", "--older-than", "a week", str(config))
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[0] == (
        "error: --older-than: 'a week' is not a duration; write e.g. '90m', '36h' or '7d'")
