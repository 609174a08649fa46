"""Where a job's default ledger and workdir live: a state folder outside the config's folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs import load_job
from jobs.spec import STATE_DIR_ENV, state_root

CONFIG = '''name = "t"
model = "llama-3.1-8b-instant"
[input]
path = "rows.jsonl"
[prompt]
user = "{{ text }}"
'''


def write(folder: Path, text: str = CONFIG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text('{"text": "a"}\n')
    config = folder / "job.toml"
    config.write_text(text)
    return config


def test_state_root_order(tmp_path: Path) -> None:
    home = Path.home()
    assert state_root({}) == home / ".local" / "state" / "groqbatch"
    assert state_root({"XDG_STATE_HOME": "/x/state"}) == Path("/x/state/groqbatch")
    assert state_root({"XDG_STATE_HOME": "relative"}) == home / ".local" / "state" / "groqbatch"
    both = {"XDG_STATE_HOME": "/x/state", STATE_DIR_ENV: str(tmp_path / "s")}
    assert state_root(both) == tmp_path / "s"


def test_the_default_ledger_is_under_the_state_dir_keyed_by_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    spec = load_job(write(tmp_path / "configs"))
    assert spec.state_dir.parent == tmp_path / "state"
    assert spec.state_dir.name.startswith("configs-")
    assert spec.ledger_target == str(spec.state_dir / "t.sqlite")
    assert spec.workdir_path == spec.state_dir / "t"
    assert spec.output_path == spec.state_dir / "t" / "results.jsonl"
    # another folder with a job of the same name keeps its own state
    other = load_job(write(tmp_path / "elsewhere" / "configs"))
    assert other.state_dir != spec.state_dir
    assert other.state_dir.name.startswith("configs-")


def test_the_same_config_finds_the_same_ledger_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    config = write(tmp_path / "project" / "configs")
    monkeypatch.chdir(tmp_path / "project")
    from_project = load_job(Path("configs/job.toml")).ledger_target
    monkeypatch.chdir(tmp_path / "project" / "configs")
    from_configs = load_job(Path("job.toml")).ledger_target
    monkeypatch.chdir(tmp_path)
    from_outside = load_job(config).ledger_target
    (tmp_path / "link").symlink_to(tmp_path / "project")
    through_a_link = load_job(tmp_path / "link" / "configs" / "job.toml").ledger_target
    assert from_project == from_configs == from_outside == through_a_link


def test_explicit_ledger_and_workdir_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    text = CONFIG.replace('name = "t"\n', 'name = "t"\nledger = "l.sqlite"\nworkdir = "w"\n')
    spec = load_job(write(tmp_path / "c", text))
    assert spec.ledger_target == str(tmp_path / "c" / "l.sqlite")
    assert spec.workdir_path == tmp_path / "c" / "w"


def test_a_ledger_left_next_to_the_config_by_an_earlier_version_is_still_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    config = write(tmp_path / "c")
    assert load_job(config).state_dir.is_relative_to(tmp_path / "state")
    legacy = tmp_path / "c" / ".groqbatch"
    legacy.mkdir()
    (legacy / "t.sqlite").write_bytes(b"")
    spec = load_job(config)
    assert spec.ledger_target == str(legacy / "t.sqlite")
    assert spec.workdir_path == legacy / "t"
    # a legacy folder holding another job's ledger only does not capture this one
    os.rename(legacy / "t.sqlite", legacy / "other.sqlite")
    assert load_job(config).state_dir.is_relative_to(tmp_path / "state")
