"""Shared fixtures: the local server in-process (ASGI) and on a loopback port (uvicorn), and
ledger URLs on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from jobs.spec import STATE_DIR_ENV
from pipeline.emulator import Emulator, EmulatorConfig, create_app
from pipeline.emulator.config import DEFAULT_API_KEY
from pipeline.emulator.serve import ThreadedServer
from tests.ledgers import SKIP_REASON, fresh_postgres_database, pg_available

API_KEY = DEFAULT_API_KEY


_SESSION_STATE = tempfile.mkdtemp(prefix="groqbatch-test-state-")


def pytest_configure(config: pytest.Config) -> None:
    """Jobs' default state goes to a throwaway folder for the whole session, even from fixtures
    wider than a test (each test then gets its own, below): never the user's state dir, and
    never what an earlier command left there."""
    os.environ.setdefault("NO_COLOR", "1")
    os.environ[STATE_DIR_ENV] = _SESSION_STATE


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SESSION_STATE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_outside_environment(monkeypatch: pytest.MonkeyPatch,
                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never pick up a developer's real key or base URL, nor anyone's job state."""
    for name in ("GROQ_API_KEY", "GROQ_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL",
                 "GROQBATCH_LEDGER", "GROQBATCH_LEASE_S", "GROQBATCH_PRICES", "GROQBATCH_CRASH_AT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Fast by default: an hour of emulated time per real second, quick validation."""
    return EmulatorConfig(time_scale=3600, throughput_lines_per_s=50, validation_s=1, finalizing_s=1)


@pytest.fixture
def emulator(emulator_config: EmulatorConfig) -> Iterator[Emulator]:
    emu = Emulator(emulator_config)
    yield emu
    emu.close()


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the server in-process (no port)."""
    transport = httpx.ASGITransport(app=create_app(emulator=emulator))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://emulator.local",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as http:
        yield http


@pytest.fixture
def server(emulator: Emulator) -> Iterator[ThreadedServer]:
    """The server on a loopback port (uvicorn on a thread), sharing ``emulator``'s state."""
    with ThreadedServer(emulator=emulator) as running:
        yield running


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not pg_available(), reason=SKIP_REASON),
            ],
        ),
    ]
)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a test's ledger goes: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.sqlite")
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

