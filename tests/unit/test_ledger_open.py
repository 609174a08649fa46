"""Opening a ledger: creation, schema versions, refusals, URLs, and the public API."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    Table,
    create_engine,
    inspect,
    make_url,
    select,
)

import state
from pipeline.errors import LedgerError, SchemaVersionError
from state import SCHEMA_VERSION, Ledger, RequestRecord
from state import schema as t
from state.engine import display_url


def _set_version(path: Path, value: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (value,))
    connection.close()


def test_open_creates_parents_schema_and_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "ledger.sqlite"
    with Ledger.open(path) as ledger:
        assert ledger.url == str(path)
    with sqlite3.connect(path) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
        version = connection.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        journal = connection.execute("PRAGMA journal_mode").fetchone()
    connection.close()
    assert set(t.metadata.tables) <= tables
    assert version == (str(SCHEMA_VERSION),)
    assert journal == ("wal",)


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path) as ledger:
        assert ledger.record_requests([RequestRecord("a", "/v1/chat/completions", b"{}")]) == 1
    with Ledger.open(str(path)) as ledger:
        assert ledger.request_counts()["pending"] == 1


def test_sqlite_url_is_accepted_and_shown_as_its_path(tmp_path: Path) -> None:
    path = tmp_path / "by-url.sqlite"
    with Ledger.open(f"sqlite:///{path}") as ledger:
        assert ledger.url == str(path)
        assert ledger.record_requests([RequestRecord("a", "/x", b"{}")]) == 1
    assert path.exists()


def test_future_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path).close()
    _set_version(path, str(SCHEMA_VERSION + 1))
    with pytest.raises(SchemaVersionError) as caught:
        Ledger.open(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"version {SCHEMA_VERSION + 1}" in message
    assert f"supports schema version {SCHEMA_VERSION}" in message
    assert "Upgrade groqbatch" in message


@pytest.mark.parametrize("found", ["0", "-3", "banana", ""])
def test_unknown_or_unreadable_version_is_refused(tmp_path: Path, found: str) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path).close()
    _set_version(path, found)
    with pytest.raises(SchemaVersionError, match=str(SCHEMA_VERSION)) as caught:
        Ledger.open(path)
    assert str(path) in str(caught.value)
    assert "new file" in str(caught.value)


def test_refused_open_leaves_the_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path).close()
    _set_version(path, "99")
    with pytest.raises(SchemaVersionError):
        Ledger.open(path)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT value FROM meta").fetchall() == [("99",)]
    connection.close()


def test_a_sqlite_db_of_something_else_is_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    connection.close()
    with pytest.raises(LedgerError, match="not a groqbatch ledger") as caught:
        Ledger.open(path)
    assert not isinstance(caught.value, SchemaVersionError)
    assert str(path) in str(caught.value)
    assert "customers" in str(caught.value)


def test_meta_without_a_version_is_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM meta")
    connection.close()
    with pytest.raises(LedgerError, match="no schema_version"):
        Ledger.open(path)


def test_a_file_that_is_not_sqlite_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(LedgerError, match="not a database") as caught:
        Ledger.open(path)
    assert str(path) in str(caught.value)
    assert path.read_text().startswith("these are my notes")


def test_a_directory_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(LedgerError) as caught:
        Ledger.open(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_an_unsupported_database_url_is_refused_without_its_password() -> None:
    with pytest.raises(LedgerError, match="unsupported") as caught:
        Ledger.open("mysql://bob:hunter2@db.example/ledger")
    assert "hunter2" not in str(caught.value)


def test_url_masks_the_password() -> None:
    url = make_url("postgresql+psycopg://bob:hunter2@db.example:5432/ledger")
    assert display_url(url) == "postgresql+psycopg://bob:***@db.example:5432/ledger"
    assert display_url(make_url("sqlite:////var/lib/ledger.sqlite")) == "/var/lib/ledger.sqlite"


def test_a_postgres_ledger_that_cannot_open_says_so_without_the_password() -> None:
    # No PostgreSQL here (no driver, no server): either way the error must not leak it.
    with pytest.raises(LedgerError) as caught:
        Ledger.open("postgresql+psycopg://bob:hunter2@127.0.0.1:9/ledger")
    assert "hunter2" not in str(caught.value)
    assert "bob:***@127.0.0.1:9/ledger" in str(caught.value)


def test_migrate_applies_steps_in_order_and_records_the_version(tmp_path: Path) -> None:
    """The migration runner, on a real file, with a step table supplied by the test."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    applied: list[int] = []

    def add_notes(connection: Connection) -> None:
        applied.append(1)
        Table("notes", MetaData(), Column("id", Integer, primary_key=True)).create(connection)

    def second(connection: Connection) -> None:
        applied.append(2)

    try:
        with engine.begin() as connection:
            t.metadata.create_all(connection)
            connection.execute(t.meta.insert().values(key="schema_version", value="1"))
            t.migrate(connection, 1, where="old", target=3, steps={1: add_notes, 2: second})
        with engine.connect() as connection:
            version = connection.execute(select(t.meta.c.value)).scalar_one()
            assert "notes" in inspect(connection).get_table_names()
    finally:
        engine.dispose()
    assert applied == [1, 2]
    assert version == "3"


def test_migrate_with_a_gap_refuses_before_changing_anything(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    applied: list[int] = []
    try:
        with (
            engine.begin() as connection,
            pytest.raises(SchemaVersionError, match="migrates from 2"),
        ):
            t.migrate(connection, 1, where="old", target=3, steps={2: lambda c: applied.append(2)})
    finally:
        engine.dispose()
    assert applied == []


def test_public_api_is_what_all_says() -> None:
    assert sorted(state.__all__) == sorted(
        name for name in dir(state) if not name.startswith("_") and name[0].isupper()
    )
    for name in state.__all__:
        assert getattr(state, name) is not None
    for method in (
        "open", "close", "url", "record_job", "start_run", "finish_run", "record_rows",
        "record_requests", "answered_ids", "iter_pending", "record_shard", "transition",
        "refresh", "request_counts", "row_counts", "rejected_rows", "shards", "set_shard_step",
        "record_results", "quarantine", "results_for",
    ):  # fmt: skip
        assert hasattr(Ledger, method), method


def test_adapter_model_reads_only_live_adapters(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, insert

    from state import schema

    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path) as ledger:
        assert ledger.adapter_model("support") is None
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(insert(schema.adapters), [
            {"name": "support", "model_id": "ft:llama-3.1-8b-instant:org/support-abc",
             "base_model": "llama-3.1-8b-instant", "created_at": 1.0, "deleted_at": None},
            {"name": "gone", "model_id": "ft:llama-3.1-8b-instant:org/gone-abc",
             "base_model": "llama-3.1-8b-instant", "created_at": 1.0, "deleted_at": 2.0},
        ])
    engine.dispose()
    with Ledger.open(path) as ledger:
        assert ledger.adapter_model("support") == "ft:llama-3.1-8b-instant:org/support-abc"
        assert ledger.adapter_model("gone") is None
