"""The local server's state on disk, so that a server with a ``data_dir`` survives a restart.

One SQLite file, ``<data_dir>/emulator.sqlite3`` (WAL), one row per object, written on every
change of that object only: a poll that moves one batch writes one row, whatever else the
server holds. File contents stay where they always were (``files/``, ``scratch/``); only
metadata is in the database. Tables (:data:`SCHEMA_VERSION` 1)::

    meta               key → value; ``schema_version``
    clock              one row: the :class:`~.clock.ClockAnchor` (virtual_start, wall_start,
                       time_scale, offset_s)
    files              one row per file: id, filename, purpose, bytes, created_at, lines, path
    batches            one row per batch: every field of a BatchRecord that changes, paths
                       relative to data_dir, and the byte length of each scratch file at save
    batch_validations  one row per validated batch, written once: totals, runnable line
                       offsets (int64 little-endian blob), ``errors.data[]``
    fine_tunings       one row per live adapter

``seq`` (the rowid) keeps each table in creation order, which is the order the API lists in.

Crash safety (``kill -9`` at any point): every save is one transaction, so the database holds
either the old row or the new one. The files beside it are kept consistent with it by order:
a file is written before the row that points at it is committed, and deleted only after the
row that stopped pointing at it is. What a crash can leave is garbage — a file no row names,
or bytes past a scratch file's saved length — and :mod:`.server` / :mod:`.batches` remove it
on load. ``synchronous=NORMAL`` makes each commit durable against a process crash, not a
power cut (which may lose the last commits, never corrupt the file).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
from array import array
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .batch_lines import Validation
from .batches import BatchRecord, BatchStatus
from .clock import ClockAnchor
from .errors import DataDirError
from .files import StoredFile
from .lora import FineTuning

SCHEMA_VERSION = 1
DB_NAME = "emulator.sqlite3"
LOCK_NAME = "emulator.lock"

SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE clock (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        virtual_start REAL NOT NULL, wall_start REAL NOT NULL,
        time_scale REAL NOT NULL, offset_s REAL NOT NULL)""",
    """CREATE TABLE files (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, filename TEXT NOT NULL,
        purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
        lines INTEGER NOT NULL, path TEXT NOT NULL)""",
    """CREATE TABLE batches (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, input_file_id TEXT NOT NULL,
        endpoint TEXT NOT NULL, completion_window TEXT NOT NULL, metadata TEXT,
        created REAL NOT NULL, expires REAL NOT NULL,
        input_path TEXT NOT NULL, output_path TEXT NOT NULL, errors_path TEXT NOT NULL,
        state TEXT NOT NULL, times TEXT NOT NULL,
        done INTEGER NOT NULL, completed INTEGER NOT NULL, failed INTEGER NOT NULL,
        unrun INTEGER NOT NULL, output_file_id TEXT, error_file_id TEXT,
        advanced_to REAL NOT NULL, output_bytes INTEGER NOT NULL, errors_bytes INTEGER NOT NULL)""",
    """CREATE TABLE batch_validations (
        batch_id TEXT PRIMARY KEY REFERENCES batches (id), total INTEGER NOT NULL,
        invalid INTEGER NOT NULL, offsets BLOB NOT NULL, reported TEXT NOT NULL,
        errors TEXT)""",
    """CREATE TABLE fine_tunings (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
        base_model TEXT NOT NULL, type TEXT NOT NULL, input_file_id TEXT NOT NULL,
        created_at INTEGER NOT NULL, fine_tuned_model TEXT NOT NULL)""",
)

# -- named queries ----------------------------------------------------------------------------

READ_VERSION = "SELECT value FROM meta WHERE key = 'schema_version'"
WRITE_VERSION = "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
SAVE_CLOCK = """
    INSERT INTO clock (id, virtual_start, wall_start, time_scale, offset_s) VALUES (1, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET virtual_start = excluded.virtual_start,
        wall_start = excluded.wall_start, time_scale = excluded.time_scale,
        offset_s = excluded.offset_s"""
LOAD_CLOCK = "SELECT virtual_start, wall_start, time_scale, offset_s FROM clock WHERE id = 1"
SAVE_FILE = """
    INSERT INTO files (id, filename, purpose, bytes, created_at, lines, path)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET filename = excluded.filename, purpose = excluded.purpose,
        bytes = excluded.bytes, created_at = excluded.created_at, lines = excluded.lines,
        path = excluded.path"""
DELETE_FILE = "DELETE FROM files WHERE id = ?"
LOAD_FILES = "SELECT id, filename, purpose, bytes, created_at, lines, path FROM files ORDER BY seq"
BATCH_COLUMNS = (
    "id", "input_file_id", "endpoint", "completion_window", "metadata", "created", "expires",
    "input_path", "output_path", "errors_path", "state", "times", "done", "completed", "failed",
    "unrun", "output_file_id", "error_file_id", "advanced_to", "output_bytes", "errors_bytes",
)
SAVE_BATCH = f"""
    INSERT INTO batches ({", ".join(BATCH_COLUMNS)}) VALUES ({", ".join("?" for _ in BATCH_COLUMNS)})
    ON CONFLICT (id) DO UPDATE SET
        {", ".join(f"{name} = excluded.{name}" for name in BATCH_COLUMNS[1:])}"""
LOAD_BATCHES = f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches ORDER BY seq"
SAVE_VALIDATION = """
    INSERT OR REPLACE INTO batch_validations (batch_id, total, invalid, offsets, reported, errors)
    VALUES (?, ?, ?, ?, ?, ?)"""
LOAD_VALIDATIONS = "SELECT batch_id, total, invalid, offsets, reported, errors FROM batch_validations"
SAVE_FINE_TUNING = """
    INSERT INTO fine_tunings (id, name, base_model, type, input_file_id, created_at, fine_tuned_model)
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"""
DELETE_FINE_TUNING = "DELETE FROM fine_tunings WHERE id = ?"
LOAD_FINE_TUNINGS = """
    SELECT id, name, base_model, type, input_file_id, created_at, fine_tuned_model
    FROM fine_tunings ORDER BY seq"""


@dataclass(slots=True)
class SavedBatch:
    """A batch as loaded, with the scratch files' lengths at its last save."""

    record: BatchRecord
    output_bytes: int
    errors_bytes: int


@dataclass(slots=True)
class SavedState:
    """Everything a data_dir held (all empty for a new one)."""

    clock: ClockAnchor | None = None
    files: list[StoredFile] = field(default_factory=list)
    batches: list[SavedBatch] = field(default_factory=list)
    fine_tunings: list[FineTuning] = field(default_factory=list)

    def latest_time(self) -> float:
        """The latest emulated time the state shows: the resumed clock must not start before it."""
        times = [0.0]
        times += [f.created_at for f in self.files]
        times += [ft.created_at for ft in self.fine_tunings]
        for saved in self.batches:
            record = saved.record
            times += [record.created, record.advanced_to, *record.times.values()]
        return max(times)


def _offsets_blob(offsets: array[int]) -> bytes:
    if sys.byteorder == "little":
        return offsets.tobytes()
    swapped = array("q", offsets)
    swapped.byteswap()
    return swapped.tobytes()


def _offsets_of(blob: bytes) -> array[int]:
    offsets = array("q")
    offsets.frombytes(blob)
    if sys.byteorder != "little":
        offsets.byteswap()
    return offsets


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _unjson(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class StateStore:
    """The SQLite file of one data_dir. Thread-safe: one connection, used under a lock.

    Opening takes an exclusive lock on the data_dir (``emulator.lock``), so two servers never
    write the same state; it is released by :meth:`close` or when the process ends.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock_dir(data_dir)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = sqlite3.connect(
                data_dir / DB_NAME, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            self._unlock()
            raise DataDirError(data_dir, f"cannot open {DB_NAME}: {exc}") from exc
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _lock_dir(data_dir: Path) -> int | None:
        if sys.platform == "win32":  # pragma: no cover - no flock: the data_dir is not locked
            return None
        import fcntl

        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirError(
                data_dir, "is in use by another local server (or another Emulator in this process)"
            ) from None
        return fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _prepare(self) -> None:
        """Check the schema version, or create the schema in a new database."""
        try:
            with self._lock:
                assert self._conn is not None
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")
            with self._transaction() as conn:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
                if "meta" not in tables:
                    if tables:
                        raise DataDirError(self.root, f"{DB_NAME} is not a groqbatch server state")
                    for statement in SCHEMA:
                        conn.execute(statement)
                    conn.execute(WRITE_VERSION, (str(SCHEMA_VERSION),))
                    return
                row = conn.execute(READ_VERSION).fetchone()
        except sqlite3.DatabaseError as exc:
            raise DataDirError(self.root, f"{DB_NAME} cannot be read: {exc}") from exc
        found = None if row is None else row[0]
        if found != str(SCHEMA_VERSION):
            raise DataDirError(
                self.root,
                f"{DB_NAME} holds server state of schema version {found}; this groqbatch reads "
                f"version {SCHEMA_VERSION} (use another --data-dir, or the groqbatch that wrote it)",
            )

    def close(self) -> None:
        """Close the database and release the data_dir (idempotent; everything is saved)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._unlock()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError(f"the server state in {self.root} was closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    # -- saving ---------------------------------------------------------------------------

    def save_clock(self, anchor: ClockAnchor) -> None:
        with self._transaction() as conn:
            conn.execute(SAVE_CLOCK, (anchor.virtual_start, anchor.wall_start,
                                      anchor.time_scale, anchor.offset_s))

    def _file_row(self, stored: StoredFile) -> tuple[Any, ...]:
        return (stored.id, stored.filename, stored.purpose, stored.bytes, stored.created_at,
                stored.lines, self._relative(stored.path))

    def save_file(self, stored: StoredFile) -> None:
        with self._transaction() as conn:
            conn.execute(SAVE_FILE, self._file_row(stored))

    def delete_file(self, file_id: str) -> None:
        with self._transaction() as conn:
            conn.execute(DELETE_FILE, (file_id,))

    def save_batch(self, record: BatchRecord, *, with_validation: bool,
                   files: list[StoredFile]) -> None:
        """Save ``record`` (and, in the same transaction, the files it published).

        Call with the batch's lock held: the scratch files' lengths are measured here and
        must match ``record.done``.
        """
        settled = record.state in {BatchStatus.COMPLETED, BatchStatus.EXPIRED,
                                   BatchStatus.CANCELLED, BatchStatus.FAILED}
        row = (
            record.id, record.input_file_id, record.endpoint, record.completion_window,
            _json(record.metadata), record.created, record.expires,
            self._relative(record.input_path), self._relative(record.output_path),
            self._relative(record.errors_path), record.state.value, _json(record.times),
            record.done, record.completed, record.failed, record.unrun, record.output_file_id,
            _json(record.error_file_id), record.advanced_to,
            0 if settled else _size(record.output_path),
            0 if settled else _size(record.errors_path),
        )
        validation = record.validation
        with self._transaction() as conn:
            for stored in files:
                conn.execute(SAVE_FILE, self._file_row(stored))
            conn.execute(SAVE_BATCH, row)
            if with_validation and validation is not None:
                conn.execute(SAVE_VALIDATION, (
                    record.id, validation.total, validation.invalid,
                    _offsets_blob(validation.offsets), _json(validation.errors),
                    _json(record.errors),
                ))

    def save_fine_tuning(self, item: FineTuning) -> None:
        with self._transaction() as conn:
            conn.execute(SAVE_FINE_TUNING, (item.id, item.name, item.base_model, item.type,
                                            item.input_file_id, item.created_at,
                                            item.fine_tuned_model))

    def delete_fine_tuning(self, ft_id: str) -> None:
        with self._transaction() as conn:
            conn.execute(DELETE_FINE_TUNING, (ft_id,))

    # -- loading --------------------------------------------------------------------------

    def load(self) -> SavedState:
        """Everything saved, in creation order."""
        try:
            with self._transaction() as conn:
                return self._load(conn)
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as exc:
            raise DataDirError(self.root, f"{DB_NAME} cannot be loaded: {exc}") from exc

    def _load(self, conn: sqlite3.Connection) -> SavedState:
        state = SavedState()
        clock = conn.execute(LOAD_CLOCK).fetchone()
        if clock is not None:
            state.clock = ClockAnchor(*clock)
        for file_id, filename, purpose, size, created_at, lines, path in conn.execute(LOAD_FILES):
            state.files.append(StoredFile(file_id, filename, purpose, size, created_at,
                                          self.root / path, lines))
        validations: dict[str, tuple[Validation, Any]] = {}
        for batch_id, total, invalid, offsets, reported, shown in conn.execute(LOAD_VALIDATIONS):
            validations[batch_id] = (
                Validation(total=total, offsets=_offsets_of(offsets), invalid=invalid,
                           errors=_unjson(reported)),
                _unjson(shown),
            )
        for row in conn.execute(LOAD_BATCHES):
            values = dict(zip(BATCH_COLUMNS, row, strict=True))
            validation: Validation | None = None
            errors: Any = None
            if values["id"] in validations:
                validation, errors = validations[values["id"]]
            record = BatchRecord(
                id=values["id"],
                input_file_id=values["input_file_id"],
                endpoint=values["endpoint"],
                completion_window=values["completion_window"],
                metadata=_unjson(values["metadata"]),
                created=values["created"],
                expires=values["expires"],
                input_path=self.root / values["input_path"],
                output_path=self.root / values["output_path"],
                errors_path=self.root / values["errors_path"],
                state=BatchStatus(values["state"]),
                times=_unjson(values["times"]),
                validation=validation,
                errors=errors,
                done=values["done"],
                completed=values["completed"],
                failed=values["failed"],
                unrun=values["unrun"],
                output_file_id=values["output_file_id"],
                error_file_id=_unjson(values["error_file_id"]),
                advanced_to=values["advanced_to"],
            )
            state.batches.append(SavedBatch(record, values["output_bytes"], values["errors_bytes"]))
        for ft_row in conn.execute(LOAD_FINE_TUNINGS):
            state.fine_tunings.append(FineTuning(*ft_row))
        return state


def saved_adapter_models(data_dir: Path) -> frozenset[str]:
    """The ``ft:`` model ids registered on the server whose state is in ``data_dir``, read
    without opening (or locking) it: a running server may hold it. Empty if there is none."""
    path = data_dir / DB_NAME
    if not path.is_file():
        return frozenset()
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return frozenset(row[0] for row in conn.execute(
                "SELECT fine_tuned_model FROM fine_tunings"))
    except sqlite3.Error:
        return frozenset()
