"""A batch line answers only a request still in the line's shard.

A run killed mid-reconcile leaves its shard ``settled`` with some requests answered; ``run
--refresh`` then reopens those and compiles them into a new shard whose batch is created before
the old shard's files are read again. The old lines must not answer the new batch's requests:
that would undo the refresh and throw away (after paying for) the new batch's answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.reconcile import apply_file
from state import Ledger, RequestRecord, RequestStatus, RowRecord, ShardRecord, ShardStep

S = RequestStatus


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.sqlite") as opened:
        opened.record_job("enrich", "h", "{}")
        opened.record_requests([RequestRecord("a", "/v1/chat/completions", b"{}")])
        opened.record_rows("enrich", [RowRecord("row-a", 0, "a", None)])
        yield opened


def _submit(ledger: Ledger, key: str, batch_id: str) -> dict[str, Any]:
    """Compile the pending requests into shard ``key`` and record its batch created."""
    ledger.record_shard("enrich", ShardRecord(key, f"/tmp/{key}.jsonl", "0" * 64, 1, 10), ["a"])
    ledger.set_shard_step(key, ShardStep.COMPILED, ShardStep.UPLOADING)
    ledger.set_shard_step(key, ShardStep.UPLOADING, ShardStep.UPLOADED, file_id=f"file-{key}")
    ledger.set_shard_step(key, ShardStep.UPLOADED, ShardStep.SUBMITTING)
    ledger.record_submitted(key, batch_id=batch_id, batch_status="in_progress")
    return {"key": key, "batch_id": batch_id}


def _output(tmp_path: Path, name: str, content: str) -> Path:
    line = {"custom_id": "a", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"content": content}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}}}, "error": None}
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(orjson.dumps(line) + b"\n")
    return path


def test_an_old_shards_line_does_not_answer_a_refreshed_request(ledger: Ledger,
                                                                 tmp_path: Path) -> None:
    old = _submit(ledger, "old", "batch_old")
    old_file = _output(tmp_path, "old", "old answer")
    assert apply_file(ledger, old_file, old, "out-old", None).succeeded == 1
    # Killed before "old" was marked reconciled; then `run --refresh`:
    assert ledger.refresh(["a"]) == 1
    new = _submit(ledger, "new", "batch_new")

    again = apply_file(ledger, old_file, old, "out-old", None)  # the old shard read again

    assert (again.succeeded, again.duplicates) == (0, 1)
    assert ledger.statuses(["a"]) == {"a": S.SUBMITTED}, "still awaiting the new batch"
    fresh = apply_file(ledger, _output(tmp_path, "new", "new answer"), new, "out-new", None)
    assert fresh.succeeded == 1
    (stored,) = ledger.results_for(["a"])
    assert stored.batch_id == "batch_new"
    assert stored.body is not None
    assert b"new answer" in stored.body
