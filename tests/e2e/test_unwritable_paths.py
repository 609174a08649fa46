"""A ledger or an export where nothing can be written is a clear error naming the path, with
the tree's exit code (3 ledger, 2 export), never a traceback.

Root ignores permission bits, and these tests may run as root; so the portable case puts the
path *under a regular file* (no one can create anything there), and the read-only-folder case
runs the command as an unprivileged user — directly when the tests are not root, through
``setpriv`` as ``nobody`` when they are — and is skipped when neither is possible.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs import load_job
from tests.e2e.cli import clean_env, groqbatch_command, run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def quickstart(folder: Path, *, ledger: str | None = None) -> Path:
    """The quickstart job (local server, in-process) copied into ``folder``; its config."""
    shutil.copytree(CONFIGS, folder / "configs", ignore=shutil.ignore_patterns(".groqbatch"))
    config = folder / "configs" / "quickstart.toml"
    if ledger is not None:
        text = config.read_text()
        config.write_text(text.replace('name = "quickstart"\n',
                                       f'name = "quickstart"\nledger = "{ledger}"\n', 1))
    return config


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == message


def test_a_ledger_under_a_file_stops_run_with_exit_3_naming_it(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    config = quickstart(tmp_path, ledger="../afile/ledger.sqlite")
    ledger = tmp_path / "afile" / "ledger.sqlite"

    result = run_cli("run", "--quiet", str(config))
    assert_clean_error(result, 3, f"error: cannot create the ledger at {ledger}: "
                                  f"{tmp_path / 'afile'} is a file, not a folder")
    assert not load_job(config).workdir_path.exists()  # nothing ran


def test_status_of_a_ledger_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    config = quickstart(tmp_path)
    ledger = tmp_path / "afile" / "deeper" / "ledger.sqlite"

    as_url = run_cli("status", "--ledger", f"sqlite:///{ledger}", str(config))
    assert_clean_error(as_url, 3, f"error: cannot create the ledger at {ledger}: "
                                  f"{tmp_path / 'afile'} is a file, not a folder")
    # A plain path that does not exist is a ledger that was never made: status says so.
    as_path = run_cli("status", "--ledger", str(ledger), str(config))
    assert as_path.returncode == 3, as_path.stderr
    assert "Traceback" not in as_path.stderr
    assert f"no ledger yet at {ledger}" in as_path.stderr


def test_an_export_under_a_file_exits_2_naming_it_and_leaves_nothing(tmp_path: Path) -> None:
    config = quickstart(tmp_path)
    ran = run_cli("run", "--quiet", str(config))
    assert ran.returncode == 0, ran.stderr
    (tmp_path / "afile").write_text("not a folder")

    for target in (tmp_path / "afile" / "out.jsonl", tmp_path / "afile" / "sub" / "out.csv"):
        result = run_cli("export", "-o", str(target), str(config))
        assert_clean_error(result, 2, f"error: output.path: cannot write the export to {target}: "
                                      f"{tmp_path / 'afile'} is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "not a folder"


# -- a read-only folder, as a user that permission bits apply to ---------------------------------


def _unprivileged() -> list[str] | None:
    """The command prefix that runs as a user permission bits apply to; None if there is none."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    if setpriv is None:
        return None
    return [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder any user can reach and write (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="groqbatch-unwritable-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(stat.S_IRWXU)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_read_only_folder_is_permission_denied_naming_the_path(shared_folder: Path) -> None:
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("no unprivileged user to run as: root ignores permission bits")

    def as_user(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *groqbatch_command(), *args], capture_output=True,
                              text=True, timeout=120, check=False,
                              env=clean_env(GROQBATCH_STATE_DIR=str(shared_folder / "state")))

    config = quickstart(shared_folder, ledger="../ro/ledger.sqlite")
    (shared_folder / "state").mkdir()  # the user's state dir (the test's own is private)
    for path in [shared_folder, *shared_folder.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    read_only = shared_folder / "ro"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)

    result = as_user("run", "--quiet", str(config))
    assert_clean_error(result, 3, f"error: cannot create the ledger at {read_only / 'ledger.sqlite'}: "
                                  f"permission denied ({read_only} is not writable)")

    writable = shared_folder / "ledger.sqlite"
    ran = as_user("run", "--quiet", "--ledger", str(writable), str(config))
    assert ran.returncode == 0, ran.stderr
    target = read_only / "out.jsonl"
    export = as_user("export", "--ledger", str(writable), "-o", str(target), str(config))
    assert_clean_error(export, 2, f"error: output.path: cannot write the export to {target}: "
                                  "permission denied")
    assert list(read_only.iterdir()) == []
