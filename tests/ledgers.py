"""Ledgers for tests: a fresh SQLite file, or a fresh database on a real PostgreSQL server.

The server is the one ``GROQBATCH_TEST_LEDGER_URL`` points at (``eval "$(.ci/postgres)"``
starts one); each test gets its own database on it, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import make_url

ENV = "GROQBATCH_TEST_LEDGER_URL"
SKIP_REASON = f"PostgreSQL not available: set {ENV} (see .ci/postgres)"


def pg_available() -> bool:
    """Whether a PostgreSQL server for tests is configured."""
    return bool(os.environ.get(ENV))


@contextmanager
def fresh_postgres_database(server_url: str | None = None) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database ``gbt_<random>`` on ``server_url``'s server
    (default: ``$GROQBATCH_TEST_LEDGER_URL``'s), dropped on exit."""
    import psycopg  # only needed when PostgreSQL is: the SQLite suite runs without it
    from psycopg import sql

    server = make_url(server_url or os.environ[ENV])
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"gbt_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def sqlite_file(ledger_url: str) -> Path:
    """The file of a SQLite ``ledger_url``, for a test that reads it with ``sqlite3``.

    Skips the test on PostgreSQL: call it before doing anything else.
    """
    if "://" in ledger_url:
        pytest.skip("reads the ledger's SQLite file directly with sqlite3")
    return Path(ledger_url)
