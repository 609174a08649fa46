"""``groqbatch validate`` and ``groqbatch plan`` as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jobs.spec import state_root
from tests.e2e.cli import run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
JOB_CONFIGS = sorted(p for p in CONFIGS.iterdir() if p.is_file() and p.name != "prices.toml")


def test_every_shipped_config_validates() -> None:
    result = run_cli("validate", *map(str, JOB_CONFIGS))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is valid") == len(JOB_CONFIGS)


def test_validate_names_file_line_and_field(tmp_path: Path) -> None:
    config = tmp_path / "job.toml"
    config.write_text(
        'name = "typo"\nmodel = "llama-3.1-8b-instant"\n[input]\npath = "rows.jsonl"\n'
        '[prompt]\nuser = "{{ text }}"\n[policy]\ncompletion_windw = "24h"\n'
    )
    result = run_cli("validate", str(config))
    assert result.returncode == 2
    assert f"{config}:8: policy.completion_windw: unknown key" in result.stderr
    assert 'did you mean "completion_window"' in result.stderr


def test_validate_reports_rejected_rows_and_missing_input(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"id": 1, "text": "hi"}\n{"id": 2}\n')
    config = tmp_path / "job.toml"
    config.write_text('name = "rows"\nmodel = "llama-3.1-8b-instant"\n[input]\npath = "rows.jsonl"\n'
                      'id_column = "id"\n[prompt]\nuser = "{{ text }}"\n')
    result = run_cli("validate", "--json", str(config))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["rows"], report["ok"], report["rejected"]) == (2, 1, 1)
    assert report["first_rejections"][0]["row_key"] == "2"
    assert "text" in report["first_rejections"][0]["reason"]
    (tmp_path / "rows.jsonl").unlink()
    missing = run_cli("validate", str(config))
    assert missing.returncode == 2
    assert "rows.jsonl" in missing.stderr


def test_plan_spends_nothing_and_writes_nothing(tmp_path: Path) -> None:
    shutil.copytree(CONFIGS, tmp_path / "configs", ignore=shutil.ignore_patterns(".groqbatch"))
    config = tmp_path / "configs" / "quickstart.toml"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_cli("plan", "--json", str(config))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["compile"]["rows"] == 20
    assert plan["compile"]["to_send"] == 20
    assert [s["lines"] for s in plan["compile"]["shards"]] == [8, 8, 4]
    assert plan["cost_batch_usd"] == pytest.approx(plan["cost_on_demand_usd"] / 2)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "no ledger, no shards"
    assert not any(state_root().iterdir()), "no ledger, no shards in the state dir either"
    table = run_cli("plan", str(config))
    assert table.returncode == 0
    assert "to send" in table.stdout
    assert "cost at most (batch, 50% off)" in table.stdout
    assert "cost expected (batch)" in table.stdout

