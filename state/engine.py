"""The ledger's database: engine, SQLite settings, transactions, dialect-specific upserts.

This module and :mod:`state.ledger` are the only code in groqbatch that touches SQL.

SQLite is opened in WAL mode with ``synchronous=NORMAL`` (a commit survives a process crash;
only a power cut can lose the last commits, and never corrupts), foreign keys on, and a
busy timeout. We take over ``BEGIN`` from the ``sqlite3`` module (whose legacy mode neither
begins before DDL nor before ``SELECT``) so that every transaction is a real one, and writers
``BEGIN IMMEDIATE``: a writer takes the write lock up front and waits its turn (busy timeout)
instead of failing with ``SQLITE_BUSY`` when it upgrades a read lock another writer raced.
Readers ``BEGIN`` deferred, so a reader never blocks a writer (WAL).
"""

from __future__ import annotations

import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    URL,
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Table,
    UpdateBase,
    bindparam,
    create_engine,
    event,
    func,
    make_url,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError

from pipeline.errors import LedgerError, os_error_reason

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CHUNK_SIZE",
    "COMPRESS_MIN_BYTES",
    "PAGE_SIZE",
    "BulkWrite",
    "Database",
    "chunked",
    "compress",
    "decompress",
    "display_url",
]

#: Rows per executemany / ids per IN list. Well under SQLite's 32,766 bound variables.
CHUNK_SIZE = 5_000
#: Rows per page of a streamed read: each page is its own short read transaction.
PAGE_SIZE = 2_000
#: How long a writer waits for another process's write transaction before giving up.
BUSY_TIMEOUT_MS = 30_000
CACHE_KIB = 64 * 1024
"""SQLite page cache of a connection while it writes, in KiB (see ``_on_begin``)."""
READ_CACHE_KIB = 8 * 1024
"""… and while it reads. Reads walk indexes in order and need few pages at once; a process
holds several pooled connections (the event loop's, compile's and reconcile's threads), and
at 64 MB each their caches were most of a 100k-row run's peak RSS (420 MB; 235 MB with small
caches)."""

_WRITE_OPTION = "groqbatch_write"

T = TypeVar("T")


class Database:
    """An engine, its write-mode twin, a printable name, and the dialect-specific bits.

    Every transaction goes through :meth:`transaction`, which translates database errors
    into :class:`LedgerError` once, here.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.engine, self.url = _open_engine(target)
        self.dialect: str = self.engine.dialect.name
        self._writer = self.engine.execution_options(**{_WRITE_OPTION: True})
        self._bulk: dict[str, BulkWrite] = {}

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def transaction(self, operation: str, *, write: bool = True) -> Iterator[Connection]:
        """One transaction; database errors become :class:`LedgerError` naming the operation.

        ``write=True`` takes SQLite's write lock at ``BEGIN``; reads leave it free.
        """
        try:
            with (self._writer if write else self.engine).begin() as connection:
                yield connection
        except IntegrityError as exc:
            raise LedgerError(f"ledger {self.url}: {operation} refused: {exc.orig}") from exc
        except DBAPIError as exc:
            raise LedgerError(f"ledger {self.url}: {operation} failed: {exc.orig}") from exc

    def insert_ignore(self, table: Table, keys: Sequence[str]) -> Insert:
        """``INSERT … ON CONFLICT (keys) DO NOTHING`` in this dialect."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(keys))

    def in_list(self, column: ColumnElement[Any], name: str = "ids") -> ColumnElement[bool]:
        """``column IN (the values bound as name)``; bind them with :meth:`list_param`.

        On SQLite the list travels as one JSON text parameter that ``json_each`` unpacks in
        the query, which probes ``column``'s index for each value as an ``IN (?, ?, …)``
        list would. Why: SQLAlchemy's expanding ``IN`` re-renders the statement for every
        list (5,000 bind names each time), which cost reconcile 12 ms of its 28 ms per
        5,000-line chunk. PostgreSQL keeps the expanding ``IN``.
        """
        if self.dialect == "sqlite":
            values = func.json_each(bindparam(name)).table_valued("value")
            return column.in_(select(values.c.value).scalar_subquery())
        return column.in_(bindparam(name, expanding=True))

    def list_param(self, values: Sequence[Any]) -> Any:
        """The parameter value of an :meth:`in_list` clause."""
        if self.dialect == "sqlite":
            return orjson.dumps(list(values)).decode()
        return list(values)

    def upsert(
        self, table: Table, keys: Sequence[str], columns: Sequence[str], where: Any = None
    ) -> Insert:
        """``INSERT … ON CONFLICT (keys) DO UPDATE SET c = excluded.c`` for each of ``columns``
        (only where ``where`` holds of the existing row, when given)."""
        if self.dialect == "postgresql":
            pg = postgresql.insert(table)
            return pg.on_conflict_do_update(
                index_elements=list(keys), set_={c: pg.excluded[c] for c in columns}, where=where
            )
        lite = sqlite.insert(table)
        return lite.on_conflict_do_update(
            index_elements=list(keys), set_={c: lite.excluded[c] for c in columns}, where=where
        )

    def insert_new(
        self, connection: Connection, statement: Insert, params: list[dict[str, Any]]
    ) -> int:
        """Run an :meth:`insert_ignore` statement over ``params``; return how many were new."""
        if self.dialect == "postgresql":  # psycopg's executemany rowcount is not a sum
            key = next(iter(statement.table.primary_key))
            return len(connection.execute(statement.returning(key), params).all())
        # sqlite3's executemany rowcount is the sum of changes, and a conflict changes nothing.
        return int(connection.execute(statement, params).rowcount)

    def bulk(
        self, name: str, build: Callable[[], UpdateBase], columns: Sequence[str]
    ) -> BulkWrite:
        """The :class:`BulkWrite` of the statement ``build()`` makes, built once per database.

        ``name`` identifies the statement; ``columns`` names the values of each row passed to
        :meth:`BulkWrite.run`, in order.
        """
        found = self._bulk.get(name)
        if found is None:
            found = self._bulk[name] = BulkWrite(self, build(), columns)
        return found


class BulkWrite:
    """A Core INSERT/UPDATE run by ``executemany`` over rows given as tuples.

    On PostgreSQL each row becomes a dict and goes through ``connection.execute`` as usual.
    On SQLite the statement is compiled once per process and the tuples go to the sqlite3
    cursor through ``exec_driver_sql`` (which still translates its errors into SQLAlchemy's,
    so :meth:`Database.transaction` reports them as before). Why not ``connection.execute``:
    SQLAlchemy processes every parameter of every row of an executemany in Python
    (``construct_params``, bind processors), which was ~22% of reconcile. Measured at 100k
    rows, same data, this path vs dicts through ``connection.execute``:
    ``Ledger.record_results`` 27k → 48k rows/s; in ``compile_job``, ``record_requests``
    2.75 → 1.98 s and ``record_rows`` 1.22 → 0.75 s.
    """

    def __init__(self, db: Database, statement: UpdateBase, columns: Sequence[str]) -> None:
        self.statement = statement
        self.columns = tuple(columns)
        self._sql: str | None = None
        self._tail: tuple[Any, ...] = ()
        self._order: itemgetter[tuple[Any, ...]] | None = None
        if db.dialect != "sqlite":
            return
        # An INSERT renders the columns given (``column_keys``), as ``execute`` would.
        keys = list(self.columns) if isinstance(statement, Insert) else None
        compiled = statement.compile(dialect=db.engine.dialect, column_keys=keys)
        order = list(compiled.positiontup or [])
        # Binds the caller does not pass are the statement's own constants (``status = 'x'``).
        own = [name for name in order if name not in self.columns]
        if any(compiled.binds[name].required for name in own) or len(order) - len(own) != len(
            self.columns
        ):
            raise ValueError(f"{statement}: parameters {order}, given {list(self.columns)}")
        self._sql = compiled.string
        self._tail = tuple(compiled.binds[name].effective_value for name in own)
        if order != [*self.columns, *own]:  # else each row is (*row, *tail), already in order
            at = {name: i for i, name in enumerate([*self.columns, *own])}
            self._order = itemgetter(*[at[name] for name in order])

    def run(self, connection: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
        """Execute over ``rows``; return the rows changed (SQLite: conflicts change none)."""
        if not rows:
            return 0
        if self._sql is None:
            params = [dict(zip(self.columns, row, strict=True)) for row in rows]
            return int(connection.execute(self.statement, params).rowcount)
        tail, order = self._tail, self._order
        if order is not None:
            rows = [order(row + tail) for row in rows]
        elif tail:
            rows = [row + tail for row in rows]
        return int(connection.exec_driver_sql(self._sql, list(rows)).rowcount)

    def run_new(self, connection: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
        """Execute an insert-if-absent over ``rows``; return how many were new."""
        if self._sql is None and rows:  # psycopg's executemany rowcount is not a sum
            params = [dict(zip(self.columns, row, strict=True)) for row in rows]
            assert isinstance(self.statement, Insert)
            key = next(iter(self.statement.table.primary_key))
            return len(connection.execute(self.statement.returning(key), params).all())
        return self.run(connection, rows)


COMPRESS_MIN_BYTES = 4096
"""Bodies shorter than this are stored as they are (see :func:`compress`)."""
_ZLIB_HEADER = b"x"  # 0x78: the first byte of every zlib stream with a 32 KiB window


def compress(body: bytes) -> bytes:
    """A JSON body as stored: zlib level 1 if it is long, else the body itself.

    Each ``zlib.compress`` call pays a fixed ~20-60 µs here (it sets up and frees ~270 KB of
    state) whatever the input's size — ~18 µs for a typical 700-byte chat body, to save ~250
    bytes of it. Measured at 100k rows against compressing every body: reconcile's
    ``apply_file`` 19k → 29.5k lines/s, ``compile_job`` 6.9 → 5.7 s. Past a few KiB the setup
    is a small part and the saving is worth it. Level 1: nearly level 6's size on JSON.

    The two forms are told apart by the first byte: a zlib stream starts with ``x``, which a
    JSON text never does; the rare short body that does is compressed anyway.
    """
    if len(body) < COMPRESS_MIN_BYTES and body[:1] != _ZLIB_HEADER:
        return body
    return zlib.compress(body, 1)


def decompress(stored: bytes) -> bytes:
    """The JSON body :func:`compress` stored (either form)."""
    if stored[:1] == _ZLIB_HEADER:
        return zlib.decompress(stored)
    return bytes(stored)


def _open_engine(target: str | os.PathLike[str]) -> tuple[Engine, str]:
    """An engine for ``target`` (a filesystem path or an SQLAlchemy URL) and a printable name.

    The name is the file path for SQLite, and the URL with its password masked otherwise.
    """
    url = _to_url(target)
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ":memory:"
        if database != ":memory:" and not database.startswith("file:"):
            _prepare_sqlite_file(Path(database))
        engine = create_engine(url)
        _configure_sqlite(engine)
        return engine, display_url(url)
    shown = display_url(url)
    if backend == "postgresql":
        try:
            return create_engine(url, pool_pre_ping=True), shown
        except ImportError as exc:
            raise LedgerError(
                f"cannot open ledger {shown}: its driver is missing ({exc.name}); "
                "install it with: pip install 'groqbatch[postgres]'"
            ) from exc
    raise LedgerError(
        f"unsupported ledger database {shown}: "
        "groqbatch keeps its ledger in SQLite (a path or sqlite:///…) or PostgreSQL "
        "(postgresql+psycopg://…)."
    )


def _prepare_sqlite_file(path: Path) -> None:
    """Make the ledger file's folder, and check that SQLite can create the file there.

    SQLite opens a file lazily, at the first transaction, and then only says "unable to open
    database file"; so the usual causes are looked for here, up front, and named with the path:
    a file standing where a folder must be, a folder that is not writable, a folder where the
    file should be.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LedgerError(f"cannot create the ledger at {path}: {os_error_reason(exc, path)}") from exc
    if path.is_dir():
        raise LedgerError(f"cannot open the ledger at {path}: it is a folder, not a file")
    # The file and (in WAL mode) its -wal and -shm companions are created beside it.
    if not path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise LedgerError(
            f"cannot create the ledger at {path}: permission denied ({path.parent} is not writable)"
        )


def display_url(url: URL) -> str:
    """A URL as the ledger shows it: the file path for SQLite, else with the password masked."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def _to_url(target: str | os.PathLike[str]) -> URL:
    if isinstance(target, str) and "://" in target:
        try:
            return make_url(target)
        except Exception as exc:  # sqlalchemy raises ArgumentError, ValueError, …
            raise LedgerError(f"not a database URL: {_mask(target)} ({exc})") from exc
    path = Path(os.fspath(target)).expanduser()
    return URL.create("sqlite", database=str(path))


def _mask(text: str) -> str:
    """Hide the password of a URL-ish string that did not parse."""
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, waiting out other processes that open the same new file.

    Switching a fresh database to WAL needs an exclusive lock, and SQLite does not always wait
    on the busy handler for it: several workers started together on one new ledger got
    "database is locked" at once. So try again, up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


_cache_kib: dict[int, int] = {}
"""id of a driver connection → the cache size last set on it (so a begin sets it only on change)."""


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL itself needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            # custom_ids are content hashes, so inserts land all over the B-trees: with the
            # default ~2 MB page cache a 1M-request ledger re-reads pages from disk on most
            # inserts. 64 MB measured +34% executemany rows/s at 300k rows (more beyond).
            cursor.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            _cache_kib[id(dbapi_connection)] = CACHE_KIB
            cursor.execute("PRAGMA temp_store = MEMORY")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        # A write gets the large cache, a read the small one (a smaller size frees the pages
        # beyond it): only the connection writing now holds a large cache. Setting it costs
        # nothing when it is already that size.
        driver = connection.connection.driver_connection
        wanted = CACHE_KIB if immediate else READ_CACHE_KIB
        if driver is not None and _cache_kib.get(id(driver)) != wanted:
            driver.execute(f"PRAGMA cache_size = -{wanted}")
            _cache_kib[id(driver)] = wanted
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to ``size`` items, in order, pulling from ``items`` lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
