"""Evaluation runs against the local server in-process: scores land in the ledger per run,
``cache = false`` salts every run's ids with its identity, caching on reuses answers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobs import load_job
from pipeline.errors import ConfigError
from pipeline.report import evaluation_report
from pipeline.runner import run_job

pytestmark = pytest.mark.anyio

COUNTRIES = ["France", "Japan", "Kenya", "Peru", "Canada", "Chile"]


def write_eval_job(directory: Path, *, cache: bool, user: str = "Capital of {{ country }}?",
                   extra: str = "") -> Path:
    """An evaluation job: the local server echoes the question, so a regex on the country
    scores 1 and an exact match on the capital scores 0."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "questions.jsonl").open("w") as out:
        for i, country in enumerate(COUNTRIES):
            out.write(json.dumps({"qid": f"q{i}", "country": country, "reference": f"City{i}",
                                  "n": i}) + "\n")
    (directory / "job.toml").write_text(f"""\
name = "evals"
backend = "local"
model = "llama-3.1-8b-instant"

[input]
path = "questions.jsonl"
id_column = "qid"

[prompt]
user = "{user}"
max_completion_tokens = 48

[policy]
cache = {"true" if cache else "false"}
max_lines_per_shard = 4
poll_interval_min_s = 0.05
poll_interval_max_s = 0.2

[local]
time_scale = 3600

[evaluate]
reference = "reference"

[[evaluate.scorers]]
kind = "exact"

[[evaluate.scorers]]
kind = "regex"
name = "echoes_country"
reference = "country"
{extra}""")
    return directory / "job.toml"


def ledger_rows(config: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    spec = load_job(config)
    with sqlite3.connect(spec.ledger_target) as db:
        return db.execute(query, params).fetchall()


async def test_a_finished_run_stores_per_row_scores_and_metrics(tmp_path: Path) -> None:
    config = write_eval_job(tmp_path, cache=True)
    summary = await run_job(load_job(config), run_name="first")

    assert summary.finished
    evaluation = summary.evaluation
    assert evaluation is not None
    assert (evaluation["rows"], evaluation["answered"], evaluation["failed"]) == (6, 6, 0)
    assert evaluation["metrics"]["exact"] == {"kind": "exact", "mean": 0.0, "n": 6}
    assert evaluation["metrics"]["echoes_country"] == {"kind": "regex", "mean": 1.0, "n": 6}
    scores = ledger_rows(config, "SELECT scorer, row_key, score FROM scores WHERE run_id = ?",
                         summary.run_id)
    assert len(scores) == 12
    assert {(s, v) for s, _, v in scores} == {("exact", 0.0), ("echoes_country", 1.0)}
    metrics = ledger_rows(config, "SELECT scorer, mean, n FROM run_metrics WHERE run_id = ?",
                          summary.run_id)
    assert sorted(metrics) == [("echoes_country", 1.0, 6), ("exact", 0.0, 6)]


async def test_cache_false_salts_ids_per_run_and_a_named_run_keeps_its_ids(tmp_path: Path) -> None:
    config = write_eval_job(tmp_path, cache=False)
    spec = load_job(config)
    first = await run_job(spec, run_name="nightly-1")
    ids_1 = set(ledger_rows(config, "SELECT custom_id FROM rows WHERE job = 'evals'"))
    again = await run_job(spec, run_name="nightly-1")  # the same evaluation: nothing new
    ids_again = set(ledger_rows(config, "SELECT custom_id FROM rows WHERE job = 'evals'"))
    second = await run_job(spec, run_name="nightly-2")
    ids_2 = set(ledger_rows(config, "SELECT custom_id FROM rows WHERE job = 'evals'"))
    unnamed = await run_job(spec)
    ids_3 = set(ledger_rows(config, "SELECT custom_id FROM rows WHERE job = 'evals'"))

    assert first.compile["to_send"] == 6
    assert again.compile["to_send"] == 0
    assert ids_again == ids_1
    assert again.evaluation is not None
    assert again.evaluation["skipped"]
    assert second.compile["to_send"] == 6
    assert ids_2.isdisjoint(ids_1)
    assert unnamed.compile["to_send"] == 6
    assert ids_3.isdisjoint(ids_1 | ids_2)
    assert ledger_rows(config, "SELECT identity FROM evaluations ORDER BY run_id") == [
        ("name:nightly-1",), ("name:nightly-2",), (f"run:{unnamed.run_id}",)]
    # every run's answers were fresh requests: 18 of them in all, each answered once
    assert ledger_rows(config, "SELECT count(*), sum(attempts) FROM requests") == [(18, 18)]
    report = evaluation_report(spec)
    assert [r["run_id"] for r in report["runs"]] == [first.run_id, second.run_id, unnamed.run_id]


async def test_caching_on_answers_unchanged_requests_from_the_ledger(tmp_path: Path) -> None:
    config = write_eval_job(tmp_path, cache=True)
    first = await run_job(load_job(config), run_name="a")
    second = await run_job(load_job(config), run_name="b")

    assert first.compile["to_send"] == 6
    assert second.compile["to_send"] == 0
    assert second.compile["unchanged_rows"] == 6
    assert second.evaluation is not None
    assert second.evaluation["metrics"] == first.evaluation["metrics"]  # type: ignore[index]
    assert ledger_rows(config, "SELECT count(*) FROM requests") == [(6,)]
    assert len(evaluation_report(load_job(config))["runs"]) == 2


async def test_no_wait_without_a_run_name_is_refused_when_cache_is_off(tmp_path: Path) -> None:
    config = write_eval_job(tmp_path, cache=False)
    with pytest.raises(ConfigError, match="needs --run-name") as info:
        await run_job(load_job(config), wait=False)
    assert info.value.field == "policy.cache"
    ledger = anyio.Path(load_job(config).ledger_target)
    assert not await ledger.exists(), "refused before anything is written"


async def test_a_no_wait_series_is_scored_once_by_the_invocation_that_finishes_it(
    tmp_path: Path,
) -> None:
    config = write_eval_job(tmp_path, cache=False)
    spec = load_job(config)
    summaries = []
    for _ in range(200):
        summary = await run_job(spec, wait=False, run_name="nightly-7")
        summaries.append(summary)
        if summary.evaluation is not None:
            break
        await anyio.sleep(0.05)
    assert summaries[-1].finished
    assert summaries[-1].evaluation is not None
    assert not summaries[-1].evaluation["skipped"]
    assert all(s.evaluation is None for s in summaries[:-1])
    sent = sum(s.compile["to_send"] for s in summaries)
    assert sent == 6, "every invocation resumed the same salted requests"
    after = await run_job(spec, wait=False, run_name="nightly-7")
    assert after.evaluation is not None
    assert after.evaluation["skipped"]
    assert len(evaluation_report(spec)["runs"]) == 1


async def test_a_callable_scorer_that_fails_names_the_scorer_and_row(tmp_path: Path) -> None:
    (tmp_path / "my_scoring.py").write_text(
        "def strict(answer, reference, row):\n    return 3 if row['qid'] == 'q2' else 1\n")
    config = write_eval_job(tmp_path, cache=True, extra=(
        '\n[[evaluate.scorers]]\nkind = "callable"\nfunction = "my_scoring:strict"\n'))
    with pytest.raises(ConfigError, match=r"scorer 'callable' on row 'q2': .*returned 3") as info:
        await run_job(load_job(config))
    assert info.value.field == "evaluate.scorers[2].function"
    # fixed, the next invocation scores the finished run
    (tmp_path / "my_scoring.py").write_text(
        "def strict(answer, reference, row):\n    return row['n'] % 2 == 0\n")
    import sys

    sys.modules.pop("my_scoring", None)
    summary = await run_job(load_job(config))
    assert summary.evaluation is not None
    assert summary.evaluation["metrics"]["callable"]["mean"] == pytest.approx(0.5)
