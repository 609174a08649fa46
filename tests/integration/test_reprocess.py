"""Reprocessing: after the input or the template changes, only new or changed requests are
sent; ``plan`` counts new / changed / unchanged rows and cached requests first; ``--refresh``
sends everything again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import load_job
from pipeline.planning import plan_config
from pipeline.runner import run_job

pytestmark = pytest.mark.anyio

ROWS = 2_000
CHANGED = 20


def write_reviews(directory: Path, *, rows: int = ROWS, changed: int = 0, added: int = 0,
                  user: str = "Stars: {{ stars }} Review: {{ body }}") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "reviews.jsonl").open("w") as out:
        for i in range(rows + added):
            body = f"review {i} says the product is {'good' if i % 3 else 'bad'}"
            if i * 97 % rows < changed:  # a spread-out `changed` rows get a new text
                body += " (edited)"
            out.write(json.dumps({"review_id": f"rv{i:05d}", "stars": 1 + i % 5, "body": body})
                      + "\n")
    config = directory / "job.toml"
    config.write_text(f"""\
name = "reprocess"
backend = "local"
model = "llama-3.1-8b-instant"

[input]
path = "reviews.jsonl"
id_column = "review_id"

[prompt]
user = "{user}"
max_completion_tokens = 4

[policy]
max_lines_per_shard = 1000
poll_interval_min_s = 0.05
poll_interval_max_s = 0.2
[policy.fallback]
enabled = false

[local]
time_scale = 3600
throughput_lines_per_s = 2000
""")
    return config


async def test_one_percent_changed_sends_one_percent(tmp_path: Path) -> None:
    config = write_reviews(tmp_path)
    first = await run_job(load_job(config))
    assert first.finished
    assert first.compile["to_send"] == ROWS
    assert first.compile["new_rows"] == ROWS

    write_reviews(tmp_path, changed=CHANGED)
    plan = plan_config(config).compile
    assert (plan.new_rows, plan.changed_rows, plan.unchanged_rows) == (0, CHANGED, ROWS - CHANGED)
    assert plan.already_answered == ROWS - CHANGED  # "cached"
    assert plan.to_send == CHANGED

    second = await run_job(load_job(config))
    assert second.compile["to_send"] == CHANGED, "only the changed rows' requests are sent"
    assert second.compile["changed_rows"] == CHANGED
    assert second.compile["unchanged_rows"] == ROWS - CHANGED
    assert second.requests["succeeded"] == ROWS
    assert sum(s["lines"] for s in second.compile["shards"]) == CHANGED


async def test_plan_counts_new_rows_and_a_template_change_changes_every_row(tmp_path: Path) -> None:
    config = write_reviews(tmp_path, rows=50)
    await run_job(load_job(config))

    write_reviews(tmp_path, rows=50, added=5)
    plan = plan_config(config).compile
    assert (plan.new_rows, plan.changed_rows, plan.unchanged_rows) == (5, 0, 50)
    assert (plan.already_answered, plan.to_send) == (50, 5)

    write_reviews(tmp_path, rows=50, user="Rate {{ stars }}: {{ body }}")
    plan = plan_config(config).compile
    assert (plan.new_rows, plan.changed_rows, plan.unchanged_rows) == (0, 50, 0)
    assert plan.to_send == 50
    rerun = await run_job(load_job(config))
    assert rerun.compile["to_send"] == 50


async def test_refresh_forces_all(tmp_path: Path) -> None:
    config = write_reviews(tmp_path, rows=40)
    await run_job(load_job(config))

    assert plan_config(config).compile.to_send == 0
    assert plan_config(config, refresh=True).compile.to_send == 40
    refreshed = await run_job(load_job(config), refresh=True)
    assert refreshed.compile["refreshed"] == 40
    assert refreshed.compile["to_send"] == 40
    assert refreshed.requests["succeeded"] == 40
