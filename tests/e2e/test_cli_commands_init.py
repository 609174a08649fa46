"""``groqbatch init`` as a new user runs it: the files it writes run as they are."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.cli import run_cli


def test_init_writes_a_job_that_runs_on_the_local_server(tmp_path: Path) -> None:
    made = run_cli("init", "demo", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[0] == ("wrote demo/job.toml and demo/data/sample.jsonl "
                                           "(job 'demo'); next:")
    assert "  groqbatch run demo/job.toml" in made.stdout.splitlines()
    assert run_cli("validate", "demo/job.toml", cwd=tmp_path).returncode == 0
    ran = run_cli("run", "--quiet", "--json", "demo/job.toml", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert (summary["finished"], summary["requests"]["succeeded"], summary["requests"]["failed"]) \
        == (True, 5, 0)
    exported = run_cli("export", "demo/job.toml", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert len((tmp_path / "demo" / "out" / "results.jsonl").read_text().splitlines()) == 5


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = run_cli("init", "--json", str(tmp_path))
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert sorted(report) == ["config", "directory", "input", "job", "next", "overwritten",
                              "written"]
    assert report["written"] == [str(tmp_path / "job.toml"), str(tmp_path / "data/sample.jsonl")]
    (tmp_path / "job.toml").write_text("# mine\n")

    again = run_cli("init", str(tmp_path))
    assert again.returncode == 2
    assert again.stderr.splitlines()[0] == (f"error: {tmp_path / 'job.toml'} already exists; "
                                            "nothing was written (give --force to overwrite it)")
    assert (tmp_path / "job.toml").read_text() == "# mine\n"

    forced = run_cli("init", "--force", "--json", "--name", "renamed", str(tmp_path))
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["overwritten"] == report["written"]
    assert 'name = "renamed"' in (tmp_path / "job.toml").read_text()
