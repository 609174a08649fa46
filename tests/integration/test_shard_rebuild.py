"""No shared filesystem needed (issue 10): a worker that did not compile a shard — its file is
not on this machine — rebuilds the file from the ledger, checks it against the recorded sha256,
and uploads exactly the lines compile wrote."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import anyio
import pytest

from jobs import compile_job, load_job
from pipeline.errors import LedgerError
from pipeline.runner import run_job
from pipeline.submit import shard_file
from pipeline.workers import Worker
from state import Ledger
from tests.integration.lifecycle import write_job

ROWS, SHARD_LINES = 30, 10


def compiled(tmp_path: Path) -> tuple[Path, list[dict[str, object]], dict[str, bytes]]:
    config = write_job(tmp_path / "job", rows=ROWS, shard_lines=SHARD_LINES)
    spec = load_job(config)
    with Ledger.open(spec.ledger_target) as ledger:
        compile_job(spec, ledger)
        shards = ledger.shards(spec.name)
    originals = {str(s["key"]): Path(str(s["path"])).read_bytes() for s in shards}
    return config, shards, originals


def test_a_shard_file_rebuilt_from_the_ledger_is_byte_for_byte_the_compiled_one(
    tmp_path: Path,
) -> None:
    config, shards, originals = compiled(tmp_path)
    spec = load_job(config)
    shutil.rmtree(spec.workdir_path / "shards")  # compiled "on another machine"
    elsewhere = tmp_path / "elsewhere"
    with Ledger.open(spec.ledger_target) as ledger:
        for shard in shards:
            path = shard_file(ledger, shard, elsewhere, Worker("w2"))
            assert path.parent == elsewhere
            assert path.read_bytes() == originals[str(shard["key"])]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]


def test_a_worker_without_the_files_runs_the_job(tmp_path: Path) -> None:
    config, _, _ = compiled(tmp_path)
    spec = load_job(config)
    shutil.rmtree(spec.workdir_path / "shards")
    summary = anyio.run(lambda: run_job(spec, worker=Worker("w2")))
    assert summary.finished
    assert summary.requests["succeeded"] == ROWS


def test_a_rebuild_that_does_not_match_the_recorded_sha256_is_refused(tmp_path: Path) -> None:
    config, shards, _ = compiled(tmp_path)
    spec = load_job(config)
    shutil.rmtree(spec.workdir_path / "shards")
    forged = dict(shards[0], sha256="0" * 64)
    with Ledger.open(spec.ledger_target) as ledger, pytest.raises(LedgerError, match="sha256"):
        shard_file(ledger, forged, tmp_path / "elsewhere", Worker("w2"))
    assert not list((tmp_path / "elsewhere").glob("*.jsonl"))
