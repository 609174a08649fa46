"""``groqbatch export`` as a user runs it, after ``groqbatch run`` of the quickstart."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from tests.e2e.cli import run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def quickstart(tmp_path: Path) -> Path:
    shutil.copytree(CONFIGS, tmp_path / "configs", ignore=shutil.ignore_patterns(".groqbatch"))
    return tmp_path / "configs" / "quickstart.toml"


def test_export_before_any_run_says_nothing_has_run(tmp_path: Path) -> None:
    config = quickstart(tmp_path)
    result = run_cli("export", str(config))
    assert result.returncode == 3
    assert "nothing has run" in result.stderr
    assert not (tmp_path / "out").exists()


def test_run_then_export_in_each_format(tmp_path: Path) -> None:
    config = quickstart(tmp_path)
    ran = run_cli("run", "--quiet", "--json", str(config))
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["requests"]["succeeded"] == 20  # no answer cut off mid-JSON

    default = run_cli("export", str(config))
    assert default.returncode == 0, default.stderr
    path = tmp_path / "out" / "quickstart.jsonl"  # [output].path, relative to the config
    assert default.stdout.strip() == (f"exported 20 rows of job 'quickstart' to {path} (jsonl): "
                                      "20 succeeded")
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["ticket_id"] for r in rows] == [f"T{i:04d}" for i in range(1, 21)]
    assert all(r["groqbatch_parsed"] == orjson.loads(r["groqbatch_answer"]) for r in rows)

    as_csv = run_cli("export", "--format", "csv", "--only-succeeded", "--json", str(config))
    assert as_csv.returncode == 0, as_csv.stderr
    report = json.loads(as_csv.stdout)
    assert (report["format"], report["rows"], report["path"]) == (
        "csv", 20, str(tmp_path / "out" / "quickstart.csv"))
    with Path(report["path"]).open(newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert cells[0]["ticket_id"] == "T0001"
    assert cells[0]["groqbatch_status"] == "succeeded"

    parquet = tmp_path / "elsewhere" / "tickets.parquet"
    as_parquet = run_cli("export", "-o", str(parquet), str(config))
    assert as_parquet.returncode == 0, as_parquet.stderr
    assert pq.read_table(parquet).num_rows == 20

    since = run_cli("export", "--since-last", "--json", "-o", str(tmp_path / "new.jsonl"), str(config))
    assert since.returncode == 0, since.stderr
    assert json.loads(since.stdout)["rows"] == 0  # nothing answered since the last export
    assert (tmp_path / "new.jsonl").read_bytes() == b""
