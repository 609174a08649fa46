"""The README's two commands, in order, in a scratch copy of the repository: the first (the
quickstart) leaves its state outside the checkout, and the tests that copy ``configs/`` then
stay green (issue 15: they used to pick up the quickstart's ledger under ``configs/``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.cli import clean_env, groqbatch_command

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("configs", "jobs", "pipeline", "state", "tests", "pyproject.toml", "README.md")
CONFIG_COPYING_TESTS = ("tests/e2e/test_cli_export.py", "tests/e2e/test_cli_jobs.py")


def readme_first_command() -> list[str]:
    """The ``groqbatch …`` part of the README's first command (after its install steps)."""
    setup = (ROOT / "README.md").read_text(encoding="utf-8").split("## Set up", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", setup, re.S)
    assert block is not None, "the README's Set up has no bash block"
    last = block.group(1).strip().split("&&")[-1].split()
    assert last[0] == ".venv/bin/groqbatch", f"the first command changed shape: {block.group(1)}"
    return last[1:]


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


@pytest.mark.timeout(240)
def test_the_readme_in_order_leaves_the_checkout_clean_and_the_tests_green(tmp_path: Path) -> None:
    scratch = tmp_path / "repo"
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, scratch / name,
                            ignore=shutil.ignore_patterns("__pycache__", ".groqbatch"))
        else:
            shutil.copy2(source, scratch / name)
    before = files_under(scratch)
    xdg = tmp_path / "xdg-state"
    # as a user runs it: no GROQBATCH_STATE_DIR, so the XDG state dir is the default
    env = {k: v for k, v in clean_env(XDG_STATE_HOME=str(xdg)).items() if k != "GROQBATCH_STATE_DIR"}

    first = subprocess.run([*groqbatch_command(), *readme_first_command()], cwd=scratch, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert "20 succeeded" in first.stdout
    ledgers = list((xdg / "groqbatch").glob("configs-*/quickstart.sqlite"))
    assert len(ledgers) == 1, sorted(files_under(xdg))
    assert str(ledgers[0]) in first.stdout
    added = files_under(scratch) - before
    assert {p for p in added if p.parts[0] != "out"} == set(), "state was left in the checkout"

    # then the tests that copy configs/, from that checkout (a fresh state dir of their own)
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=",
         "-m", "not slow", *CONFIG_COPYING_TESTS],
        cwd=scratch, env=env, capture_output=True, text=True, timeout=200, check=False)
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", suite.stdout), suite.stdout[-2000:]
    assert " failed" not in suite.stdout
