"""The public Python API: ``import pipeline as groqbatch``."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

import pipeline as groqbatch
from pipeline.errors import ConfigError, NoLedgerError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_public_api_is_small_and_named() -> None:
    assert groqbatch.__all__ == [
        "ConfigError", "GroqBatchError", "GroqClient", "JobSpec", "PlanReport", "RunSummary",
        "__version__", "gc", "init", "inspect", "job_from_dict", "list_jobs", "load", "plan",
        "results", "results_frame", "retry_failed", "run", "run_async",
    ]
    for name in groqbatch.__all__:
        assert getattr(groqbatch, name) is not None, name
    with pytest.raises(AttributeError):
        _ = groqbatch.not_a_name  # type: ignore[attr-defined]


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    shutil.copytree(CONFIGS, tmp_path / "configs", ignore=shutil.ignore_patterns(".groqbatch"))
    return tmp_path / "configs" / "quickstart.toml"


def test_load_plan_run_results_frame(quickstart: Path) -> None:
    job = groqbatch.load(quickstart)
    assert groqbatch.plan(job).compile.to_send == 20
    summary = groqbatch.run(job)
    assert summary.finished
    assert summary.requests["succeeded"] == 20
    rows = list(groqbatch.results(job))
    assert len(rows) == 20
    assert {row["groqbatch_status"] for row in rows} == {"succeeded"}
    assert all(row["ticket_id"] and row["groqbatch_answer"] for row in rows)
    assert len({row["groqbatch_answer"] for row in rows}) == 20, "each row its own answer"
    frame = groqbatch.results_frame(quickstart)
    assert len(frame) == 20
    assert {"ticket_id", "groqbatch_answer", "groqbatch_status"} <= set(frame.columns)
    assert groqbatch.plan(quickstart).compile.to_send == 0, "answered requests are not sent again"


def test_job_built_in_code(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_bytes(b"".join(
        orjson.dumps({"id": i, "text": f"question {i}"}) + b"\n" for i in range(5)))
    job = groqbatch.job_from_dict({
        "name": "in-code", "backend": "local", "model": "llama-3.1-8b-instant",
        "input": {"path": "rows.jsonl", "id_column": "id"},
        "prompt": {"user": "Answer: {{ text }}"},
        "policy": {"poll_interval_min_s": 0.05, "poll_interval_max_s": 0.2},
    }, base_dir=tmp_path)
    assert groqbatch.run(job).requests["succeeded"] == 5
    assert [row["id"] for row in groqbatch.results(job, only_succeeded=True)] == [0, 1, 2, 3, 4]


def test_job_from_dict_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"<dict>: policy.completion_windw: unknown key"):
        groqbatch.job_from_dict({"name": "x", "model": "m", "input": {"path": "a.jsonl"},
                                 "prompt": {"user": "u"}, "policy": {"completion_windw": "24h"}})


def test_results_before_any_run_is_a_clear_error(quickstart: Path) -> None:
    with pytest.raises(NoLedgerError, match="nothing has run"):
        list(groqbatch.results(quickstart))


@pytest.mark.anyio
async def test_run_async(quickstart: Path) -> None:
    summary = await groqbatch.run_async(quickstart, run_name="from-async")
    assert summary.finished
    assert summary.requests["succeeded"] == 20


def test_init_run_inspect_retry_failed_list_jobs_gc(tmp_path: Path) -> None:
    report = groqbatch.init(tmp_path / "demo")
    summary = groqbatch.run(report.config)
    assert summary.requests["succeeded"] == 5
    journey = groqbatch.inspect(report.config, "r1")
    assert (journey["row_key"], journey["status"]) == ("r1", "succeeded")
    assert groqbatch.retry_failed(report.config).marked["total"] == 0  # nothing failed
    listed = groqbatch.list_jobs(summary.ledger)
    assert [(job["name"], job["state"]) for job in listed] == [("demo", "finished")]
    freed = groqbatch.gc(report.config)
    assert freed.local_freed["files"] == 1
    assert freed.remote_freed["files"] >= 2  # the batch's input and output files
