"""``completion_window = "auto"`` in a real run: the batches are created with the window
chosen from the deadline, and the run summary says which and why."""

from __future__ import annotations

import json
from pathlib import Path

from jobs import load_job
from pipeline.emulator import Emulator, EmulatorConfig
from tests.e2e.cli import run_cli
from tests.integration.lifecycle import write_job


def created_windows(data_dir: Path) -> list[str]:
    emulator = Emulator(EmulatorConfig(data_dir=data_dir))
    try:
        return [batch.completion_window for batch in emulator.batches.newest_first()]
    finally:
        emulator.close()


def test_auto_creates_batches_with_the_longest_window_that_leaves_the_reserve(
        tmp_path: Path) -> None:
    config = write_job(tmp_path, rows=8, shard_lines=4, fallback=True,
                       policy={"completion_window": "auto", "deadline": "5d",
                               "fallback_reserve": "12h"})
    result = run_cli("run", str(config), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["finished"] is True
    # 5 days from the job's first run, less 12h, in whole hours ending before it: a few
    # seconds have passed since the job was recorded, so 107h, not 108h.
    assert summary["completion_window"] == "107h"
    assert any("completion window 107h: auto: the deadline is in" in note
               for note in summary["notes"])
    assert created_windows(load_job(config).workdir_path / "local-server") == ["107h", "107h"]
    planned = run_cli("plan", str(config))
    assert planned.returncode == 0, planned.stderr
    assert "completion window: 107h (auto: the deadline is in" in planned.stdout


def test_auto_without_a_deadline_is_24h(tmp_path: Path) -> None:
    config = write_job(tmp_path, rows=4, shard_lines=4, policy={"completion_window": "auto"})
    result = run_cli("run", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["completion_window"] == "24h"
    assert created_windows(load_job(config).workdir_path / "local-server") == ["24h"]
