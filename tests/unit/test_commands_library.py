"""The library functions behind ``init``, ``retry``, ``jobs`` and ``gc``, on real files and a
real SQLite ledger (no server: ``gc`` here is local only; the e2e tests run it remotely)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import httpx
import pytest

from jobs import compile_job, job_from_dict, load_job
from pipeline.catalog import list_jobs
from pipeline.cleanup import WRITE_GRACE_S, GcReport, _gc_remote, gc_job
from pipeline.client import GroqClient
from pipeline.errors import ConfigError
from pipeline.resend import parse_where, retry_job, select_failed
from pipeline.retry import RetryPolicy
from pipeline.scaffold import CONFIG_NAME, SAMPLE_PATH, init_job, job_name_for
from state import Ledger, RequestStatus, ResultRecord, ResultSource, ShardStep

S = RequestStatus


def _job(tmp_path: Path, rows: int = 6) -> tuple[object, Ledger]:
    lines = [f'{{"id": "r{n}", "text": "row {n}", "lang": "{"en" if n % 2 else "fr"}"}}'
             for n in range(rows)]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    spec = job_from_dict({"name": "lib", "backend": "local", "model": "llama-3.1-8b-instant",
                          "input": {"path": "rows.jsonl", "id_column": "id"},
                          "prompt": {"user": "{{ text }}"},
                          "policy": {"max_lines_per_shard": 2}}, base_dir=tmp_path)
    ledger = Ledger.open(spec.ledger_target)
    compile_job(spec, ledger)
    return spec, ledger


def _settle(ledger: Ledger, spec: object, failed: set[str],
            retryable: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every shard through a batch and reconciled; the rows in ``failed`` fail with a 400, those
    in ``retryable`` get a 500 (left for the fallback). Returns row key → custom_id."""
    ids = ledger.row_ids("lib", [f"r{n}" for n in range(6)])
    by_id = {custom_id: key for key, custom_id in ids.items()}
    for n, shard in enumerate(ledger.shards("lib")):
        key = shard["key"]
        for a, b in [(ShardStep.COMPILED, ShardStep.UPLOADING), (ShardStep.UPLOADING, ShardStep.UPLOADED),
                     (ShardStep.UPLOADED, ShardStep.SUBMITTING)]:
            ledger.set_shard_step(key, a, b, **({"file_id": f"in{n}"} if b is ShardStep.UPLOADED else {}))
        ledger.record_submitted(key, batch_id=f"batch{n}", batch_status="completed")
        ledger.set_shard_step(key, ShardStep.SUBMITTED, ShardStep.SETTLED, output_file_id=f"out{n}")
        members = [cid for cid, _ in ledger.shard_lines(key)]
        outcomes = {cid: (S.FAILED, 400) if by_id[cid] in failed else
                    (S.RETRYABLE, 500) if by_id[cid] in retryable else (S.SUCCEEDED, 200)
                    for cid in members}
        ledger.record_results(
            ResultRecord(cid, outcome, ResultSource.BATCH, status_code=code,
                         body=b'{"choices":[{"message":{"content":"ok"}}]}',
                         error=None if code == 200 else '{"message":"bad"}',
                         batch_id=f"batch{n}", shard_key=key)
            for cid, (outcome, code) in outcomes.items())
        ledger.set_shard_step(key, ShardStep.SETTLED, ShardStep.RECONCILED)
    return {key: cid for key, cid in ids.items() if cid is not None}


def test_init_writes_a_config_that_loads_and_refuses_to_overwrite(tmp_path: Path) -> None:
    report = init_job(tmp_path / "My Job!")
    config = tmp_path / "My Job!" / CONFIG_NAME
    assert report.written == [str(config), str(tmp_path / "My Job!" / SAMPLE_PATH)]
    spec = load_job(config)
    assert (spec.name, spec.backend, spec.input_path) == (
        "my-job", "local", tmp_path / "My Job!" / SAMPLE_PATH)
    assert config.read_text().count("\n#") > 10  # commented
    with pytest.raises(ConfigError, match=r"job.toml already exists; nothing was written.*--force"):
        init_job(tmp_path / "My Job!")
    (tmp_path / "My Job!" / SAMPLE_PATH).write_text("mine\n")
    again = init_job(tmp_path / "My Job!", force=True, name="other")
    assert again.overwritten == [str(config), str(tmp_path / "My Job!" / SAMPLE_PATH)]
    assert load_job(config).name == "other"
    assert job_name_for(tmp_path / "---") == "my-job"
    with pytest.raises(ConfigError, match="not a job name"):
        init_job(tmp_path / "x", name="Bad Name")


def test_parse_where_groups_values_and_refuses_nonsense() -> None:
    assert parse_where(["lang=en", "lang=fr", "id=a=b"]) == {"lang": ["en", "fr"], "id": ["a=b"]}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_where(["lang"])


def test_select_failed_filters_on_input_columns_and_ledger_columns(tmp_path: Path) -> None:
    spec, ledger = _job(tmp_path)
    with ledger:
        ids = _settle(ledger, spec, failed={"r1", "r2", "r3"})
        assert sorted(select_failed(spec, ledger, {"lang": ["en"]})) == sorted([ids["r1"], ids["r3"]])
        assert list(select_failed(spec, ledger, {"groqbatch_row_key": ["r2", "r4"]})) == [ids["r2"]]
        assert sorted(select_failed(spec, ledger, {"groqbatch_error": ["bad"]})) == sorted(
            [ids["r1"], ids["r2"], ids["r3"]])
        assert list(select_failed(spec, ledger, {"groqbatch_error": ["nothing like it"]})) == []
        with pytest.raises(ConfigError, match="--where colour: the input has no such column"):
            list(select_failed(spec, ledger, {"colour": ["red"]}))


def test_retry_marks_only_and_counts_with_a_dry_run(tmp_path: Path) -> None:
    spec, ledger = _job(tmp_path)
    with ledger:
        ids = _settle(ledger, spec, failed={"r1", "r2"})
    dry = anyio.run(lambda: retry_job(spec, dry_run=True))
    assert (dry.marked, dry.summary) == ({"failed": 2, "invalid_output": 0, "total": 2}, None)
    marked = anyio.run(lambda: retry_job(spec, where={"id": ["r2"]}, run=False))
    assert marked.marked["total"] == 1
    assert marked.as_dict()["run"] is None
    with Ledger.open(spec.ledger_target) as ledger:
        assert ledger.statuses([ids["r1"], ids["r2"]]) == {ids["r1"]: S.FAILED, ids["r2"]: S.PENDING}
    with pytest.raises(ConfigError, match="nothing to retry"):
        anyio.run(lambda: retry_job(spec, failed=False, invalid_output=False))


def test_retry_before_any_run_is_a_config_error(tmp_path: Path) -> None:
    spec = job_from_dict({"name": "never", "model": "m", "input": {"path": "x.jsonl"},
                          "prompt": {"user": "{{ text }}"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="nothing has run"):
        anyio.run(lambda: retry_job(spec))


def test_list_jobs_states_and_a_missing_ledger(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ledger at"):
        list_jobs(tmp_path / "none.sqlite")
    assert not (tmp_path / "none.sqlite").exists()
    spec, ledger = _job(tmp_path)
    with ledger:
        assert [(j["name"], j["state"]) for j in list_jobs(spec.ledger_target)] == [("lib", "unfinished")]
        _settle(ledger, spec, failed={"r0"})
        ledger.record_job("nothing", "h", "{}")
    listed = {j["name"]: j for j in list_jobs(spec.ledger_target)}
    assert listed["lib"]["state"] == "finished"
    assert listed["lib"]["requests"]["failed"] == 1
    assert listed["nothing"]["state"] == "empty"


def test_local_gc_deletes_only_done_shards_files(tmp_path: Path) -> None:
    spec, ledger = _job(tmp_path)
    shards_dir = spec.workdir_path / "shards"
    downloads = spec.workdir_path / "downloads"
    downloads.mkdir(parents=True)
    with ledger:
        ids = _settle(ledger, spec, failed=set(), retryable=frozenset({"r0"}))
        shards = ledger.shards("lib")
        # r0 went to the fallback: its shard is reconciled but its requests are not all settled.
        busy = next(s for s in shards if ids["r0"] in {c for c, _ in ledger.shard_lines(s["key"])})
    done = [s for s in shards if s["key"] != busy["key"]]
    assert len(done) == 2
    keep = {Path(busy["path"]), downloads / f"{busy['output_file_id']}.w-1.jsonl"}
    leftovers = {downloads / f"{done[0]['output_file_id']}.w-1.jsonl",
                 downloads / f"rebuilt-{done[0]['key']}-w-1.jsonl"}
    for path in leftovers | keep - {Path(busy["path"])}:
        path.write_text("x\n")
    fresh_part = downloads / f"{done[1]['output_file_id']}.w-2.jsonl.part"
    fresh_part.write_text("partial")
    stale_part = downloads / f"{done[1]['output_file_id']}.w-3.jsonl.part"
    stale_part.write_text("partial")
    old = time.time() - WRITE_GRACE_S - 5
    os.utime(stale_part, (old, old))
    strangers = {shards_dir / ".tmp-1-abc.jsonl", downloads / "file_unknown.jsonl",
                 spec.workdir_path / "local-server" / "state.json"}
    for path in strangers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not ours")

    dry = anyio.run(lambda: gc_job(spec, remote=False, dry_run=True))
    assert dry.local_freed["files"] > 0
    assert all(Path(f["name"]).exists() for f in dry.files)

    report = anyio.run(lambda: gc_job(spec, remote=False))
    deleted = {Path(f["name"]) for f in report.files}
    assert deleted == {Path(s["path"]) for s in done} | leftovers | {stale_part}
    assert report.local_freed == {"files": len(deleted), "bytes": sum(f["bytes"] for f in report.files)}
    assert all(not path.exists() for path in deleted)
    assert all(path.exists() for path in keep | strangers | {fresh_part})
    with Ledger.open(spec.ledger_target) as ledger:
        assert {Path(f.name) for f in ledger.deleted_files("lib", "local")} == deleted
    again = anyio.run(lambda: gc_job(spec, remote=False))
    assert again.local_freed["files"] == 0


def _server(delete_status: int, get_status: int) -> httpx.MockTransport:
    """A server whose ``DELETE /files/{id}`` answers ``delete_status`` and whose
    ``GET /files/{id}`` answers ``get_status`` (the published seam of :class:`GroqClient`)."""

    def handle(request: httpx.Request) -> httpx.Response:
        file_id = request.url.path.rsplit("/", 1)[-1]
        status = delete_status if request.method == "DELETE" else get_status
        if status == 200:
            return httpx.Response(200, json={"id": file_id, "object": "file", "bytes": 42,
                                             "created_at": 1, "filename": "f", "purpose": "batch"})
        return httpx.Response(status, json={"error": {"message": "no", "type": "invalid_request_error"}})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("delete_status", "get_status", "recorded", "noted"), [
    (405, 200, 0, True),   # no DELETE route
    (404, 200, 0, True),   # a 404 for a file the server still has: no DELETE route either
    (404, 404, 6, False),  # gone already: recorded, never asked again
])
def test_remote_gc_on_servers_without_delete_or_with_files_gone(
        tmp_path: Path, delete_status: int, get_status: int, recorded: int, noted: bool) -> None:
    spec, ledger = _job(tmp_path)
    with ledger:
        _settle(ledger, spec, failed=set())
        done = {s["key"]: s for s in ledger.gc_shards("lib")}
        report = GcReport(job="lib", dry_run=False, remote=True, local=False)

        async def go() -> None:
            async with GroqClient("http://files.test", "key",
                                  transport=_server(delete_status, get_status),
                                  retry=RetryPolicy(max_attempts=1)) as client:
                await _gc_remote(ledger, client, "lib", done, report)

        anyio.run(go)
        assert len(ledger.deleted_files("lib", "remote")) == recorded
    assert report.remote_freed["files"] == recorded  # 3 inputs and 3 outputs, when gone
    assert bool(report.notes) is noted
    if noted:
        assert report.notes[0].startswith(f"the server does not delete files (HTTP {delete_status})")
