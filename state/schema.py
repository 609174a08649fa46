"""The ledger's tables (SQLAlchemy Core), its schema version, and the migrations between versions.

Times are ``REAL`` seconds since the Unix epoch (UTC): cheap to write in bulk, portable between
SQLite and PostgreSQL, and sortable. JSON documents are stored as text; request and result
bodies as JSON bytes, zlib-compressed when long (see :func:`state.engine.compress`).

The version lives in ``meta`` under ``schema_version``. :func:`ensure_schema` creates the
tables on an empty database, migrates a known older version step by step inside the caller's
transaction, and refuses anything else with an error that says what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Exists,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    exists,
    inspect,
    select,
    text,
    update,
)

from pipeline.errors import LedgerError, SchemaVersionError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "adapters",
    "deleted_files",
    "ensure_schema",
    "evaluations",
    "exports",
    "extra_spend",
    "jobs",
    "leases",
    "meta",
    "metadata",
    "migrate",
    "of_job",
    "quarantine",
    "requests",
    "result_history",
    "results",
    "rows",
    "run_metrics",
    "runs",
    "scores",
    "shards",
    "workers",
]

#: The schema this groqbatch writes. Bump it together with a step in :data:`MIGRATIONS`.
SCHEMA_VERSION = 3

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("name", String, primary_key=True),
    Column("spec_hash", String, nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String, ForeignKey("jobs.name"), nullable=False),
    Column("run_name", String, nullable=True),
    Column("backend", String, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("summary_json", Text, nullable=True),
)

rows = Table(
    "rows",
    metadata,
    Column("job", String, ForeignKey("jobs.name"), primary_key=True),
    Column("row_key", String, primary_key=True),
    Column("row_index", Integer, nullable=False),
    Column("custom_id", String, nullable=True),
    Column("status", String, nullable=False),  # RowStatus
    Column("reason", Text, nullable=True),
    # Multi-step jobs (v3): the row as its step reads it (JSON, see engine.compress), kept so
    # the next step can be fed from the ledger; and the custom_id whose answer this row last
    # passed on to the next step (NULL: not yet). Both NULL for a job without steps.
    Column("data", LargeBinary, nullable=True),
    Column("fed", String, nullable=True),
    # (custom_id, job) rather than (custom_id): "is this request wanted by job J" is then
    # answered from the index alone, which iter_pending and request_counts ask per request.
    Index("ix_rows_custom_id", "custom_id", "job"),
)

shards = Table(
    "shards",
    metadata,
    Column("key", String, primary_key=True),  # the shard file's content hash
    Column("job", String, ForeignKey("jobs.name"), nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", String, nullable=False),
    Column("lines", Integer, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("step", String, nullable=False),  # ShardStep
    Column("file_id", String, nullable=True),
    Column("batch_id", String, nullable=True),
    Column("batch_status", String, nullable=True),
    Column("request_counts_json", Text, nullable=True),
    Column("output_file_id", String, nullable=True),
    Column("error_file_id", String, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The worker whose next step on this shard is under way, until lease_until (Unix seconds).
    # NULL or an expired lease: free to claim (see state/claims.py).
    Column("claimed_by", String, nullable=True),
    Column("lease_until", Float, nullable=True),
    Index("ix_shards_job", "job", "step"),
)

requests = Table(
    "requests",
    metadata,
    Column("custom_id", String, primary_key=True),
    Column("endpoint", String, nullable=False),
    Column("body", LargeBinary, nullable=False),  # canonical JSON, see engine.compress
    Column("status", String, nullable=False),  # RequestStatus
    Column("shard_key", String, ForeignKey("shards.key"), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("tier", String, nullable=True),  # Tier
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # A flex call's owner and lease while the request is in_flight (see state/claims.py).
    Column("claimed_by", String, nullable=True),
    Column("lease_until", Float, nullable=True),
    # (status, custom_id) rather than (status): iter_pending pages through one status in
    # custom_id order, which this index serves as a range scan with no sort.
    Index("ix_requests_status", "status", "custom_id"),
    Index("ix_requests_shard_key", "shard_key"),
    # Partial: only the few claimed rows are in it, so compile's inserts (claimed_by NULL) do
    # not pay for it, and a worker's renewal and release find its claims without a scan.
    Index("ix_requests_claimed_by", "claimed_by",
          sqlite_where=text("claimed_by IS NOT NULL"),
          postgresql_where=text("claimed_by IS NOT NULL")),
)

results = Table(
    "results",
    metadata,
    Column("custom_id", String, ForeignKey("requests.custom_id"), primary_key=True),
    Column("status_code", Integer, nullable=True),
    Column("body", LargeBinary, nullable=True),  # response body JSON, see engine.compress
    Column("error_json", Text, nullable=True),
    Column("parsed_json", Text, nullable=True),
    Column("source", String, nullable=False),  # ResultSource
    Column("batch_id", String, nullable=True),
    Column("received_at", Float, nullable=False),
    Column("run_id", Integer, nullable=True),  # the run that recorded it (None before v2)
)

def of_job(custom_id: ColumnElement[str], job: str) -> Exists:
    """``job`` wants the request ``custom_id`` names: a correlated EXISTS on the rows table.

    Rather than ``custom_id IN (SELECT custom_id FROM rows WHERE job = …)``, which SQLite
    answers by first building the job's whole id list: with EXISTS, a query that picks a few
    requests by status (the retryable ones, the expired claims) costs what it finds, one
    ``ix_rows_custom_id`` probe each, not what the job holds — at 100k requests, the flex
    check with nothing to send went from 118 ms to under 1 ms.
    """
    return exists().where(rows.c.custom_id == custom_id, rows.c.job == job)


#: Answers that a newer answer replaced (``--refresh``): a refresh never deletes an answer
#: before it has a new one, and the one it replaces is kept here with the run that got it.
result_history = Table(
    "result_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("custom_id", String, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("body", LargeBinary, nullable=True),
    Column("error_json", Text, nullable=True),
    Column("parsed_json", Text, nullable=True),
    Column("source", String, nullable=False),
    Column("batch_id", String, nullable=True),
    Column("received_at", Float, nullable=False),
    Column("run_id", Integer, nullable=True),
    Column("replaced_at", Float, nullable=False),
    Index("ix_result_history_custom_id", "custom_id"),
)

#: Answers paid for that no request took: a batch output line repeating one already read in
#: that file, a fallback answer that arrived after its call was given up (its worker's claim
#: ran out and another call answered). They count against the budget ("every call made
#: counts"), never as a request's answer. ``origin`` (``<file_id>:<line>`` for a batch line)
#: makes reading a file again add nothing. Created in any ledger that lacks it (additive).
extra_spend = Table(
    "extra_spend",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String, nullable=False),
    Column("custom_id", String, nullable=False),
    Column("source", String, nullable=False),  # ResultSource
    Column("origin", String, nullable=True),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Index("ux_extra_spend_origin", "origin", unique=True),
    Index("ix_extra_spend_job", "job"),
)

#: Named locks with an owner and a lease: ``compile:<job>`` lets one worker compile a job at a
#: time. ``done`` records what the last holder finished (the compile's fingerprint), so a
#: worker that waited for another's compile knows whether it still has to compile.
leases = Table(
    "leases",
    metadata,
    Column("name", String, primary_key=True),
    Column("job", String, nullable=True),
    Column("claimed_by", String, nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("done", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
)

#: Every ``groqbatch run`` process that worked on a job: ``seen_at`` is its heartbeat, so
#: ``groqbatch status`` can tell live workers from dead ones.
workers = Table(
    "workers",
    metadata,
    Column("worker_id", String, primary_key=True),
    Column("job", String, nullable=False),
    Column("run_id", Integer, nullable=True),
    Column("host", String, nullable=True),
    Column("pid", Integer, nullable=True),
    Column("started_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
    Column("lease_s", Float, nullable=False),
    Column("stopped_at", Float, nullable=True),
    Index("ix_workers_job", "job", "seen_at"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("shard_key", String, nullable=True),
    Column("batch_id", String, nullable=True),
    Column("source_file_id", String, nullable=True),
    Column("line_no", Integer, nullable=True),
    Column("raw", LargeBinary, nullable=False),  # the whole line, as read
    Column("reason", Text, nullable=False),
    Column("received_at", Float, nullable=False),
    # Re-reading a file after a crash must not quarantine its bad lines twice.
    Index("ux_quarantine_line", "source_file_id", "line_no", unique=True),
)

#: One row per ``groqbatch export``: ``--since-last`` exports the rows answered after the
#: latest one's ``exported_at`` (taken when that export started reading, so none is missed).
exports = Table(
    "exports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String, ForeignKey("jobs.name"), nullable=False),
    Column("exported_at", Float, nullable=False),
    Column("path", Text, nullable=False),
    Column("format", String, nullable=False),
    Column("rows", Integer, nullable=False),
    Index("ix_exports_job", "job", "exported_at"),
)

#: Files ``groqbatch gc`` deleted: remote files by id (so a later gc does not ask again) and
#: local files by path, with the bytes each freed. A shard whose local file is gone is rebuilt
#: from the ledger when needed (:func:`pipeline.submit.shard_file`).
deleted_files = Table(
    "deleted_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String, nullable=False),
    Column("place", String, nullable=False),  # "remote" (a file id) or "local" (a path)
    Column("name", Text, nullable=False),
    Column("kind", String, nullable=False),  # input, output, error, shard, download
    Column("shard_key", String, nullable=True),
    Column("bytes", Integer, nullable=True),
    Column("deleted_at", Float, nullable=False),
    Index("ix_deleted_files_job", "job", "place", "name"),
)

adapters = Table(
    "adapters",
    metadata,
    Column("name", String, primary_key=True),
    Column("fine_tuning_id", String, nullable=True),
    Column("model_id", String, nullable=True),  # the "ft:" model id
    Column("base_model", String, nullable=False),
    Column("file_id", String, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("deleted_at", Float, nullable=True),
)

#: An evaluation run of a job with ``[evaluate]``: written once, when the run that finished the
#: job's requests has scored them (the marker that a run's scores are complete).
evaluations = Table(
    "evaluations",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("job", String, ForeignKey("jobs.name"), nullable=False),
    Column("run_name", String, nullable=True),
    Column("identity", String, nullable=False),  # the run identity its requests were salted with
    Column("digest", String, nullable=False),  # of the rows → custom_id mapping and the scorers
    Column("rows", Integer, nullable=False),
    Column("answered", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("scored_at", Float, nullable=False),
    Index("ix_evaluations_job", "job", "run_id"),
)

#: Per run and scorer: the mean score over the rows scored.
run_metrics = Table(
    "run_metrics",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("scorer", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("mean", Float, nullable=True),  # None when no row could be scored
    Column("n", Integer, nullable=False),
)

#: Per run, scorer and input row: its score in [0, 1].
scores = Table(
    "scores",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("scorer", String, primary_key=True),
    Column("row_key", String, primary_key=True),
    Column("custom_id", String, nullable=True),
    Column("score", Float, nullable=False),
)

#: One step of migration: brings a ledger from version N (the key) to N + 1, inside the
#: transaction :func:`ensure_schema` runs in.
Migration = Callable[[Connection], None]



def _add_columns(connection: Connection, table: Table, names: list[str]) -> None:
    """``ALTER TABLE … ADD COLUMN`` for each of ``names``, typed as the model says, in this
    dialect (nullable columns only: existing rows get NULL)."""
    quote = connection.dialect.identifier_preparer.quote
    for name in names:
        column = table.c[name]
        assert column.nullable, name
        kind = column.type.compile(dialect=connection.dialect)
        connection.exec_driver_sql(
            f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(name)} {kind}"
        )


def _v1_to_v2(connection: Connection) -> None:
    """Workers on one ledger: claims (owner and lease) on shards and requests, the run of a
    result. The new tables (leases, workers, result_history) are created afterwards by
    :func:`ensure_schema`, like any missing table."""
    _add_columns(connection, shards, ["claimed_by", "lease_until"])
    _add_columns(connection, requests, ["claimed_by", "lease_until"])
    _add_columns(connection, results, ["run_id"])
    connection.exec_driver_sql("DROP INDEX IF EXISTS ix_shards_job")
    connection.exec_driver_sql("CREATE INDEX ix_shards_job ON shards (job, step)")
    connection.exec_driver_sql(
        "CREATE INDEX ix_requests_claimed_by ON requests (claimed_by) WHERE claimed_by IS NOT NULL"
    )


def _v2_to_v3_step_rows(connection: Connection) -> None:
    """Multi-step jobs: a row's data (what its step reads) and its feed marker (``rows.data``,
    ``rows.fed``; see :mod:`jobs.steps`)."""
    _add_columns(connection, rows, ["data", "fed"])


#: Known steps, keyed by the version they start from.
MIGRATIONS: Mapping[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3_step_rows}

_VERSION_KEY = "schema_version"


def ensure_schema(connection: Connection, where: str) -> int:
    """Make the database behind ``connection`` a current ledger; return the version found.

    Runs inside the caller's (write) transaction, so two processes opening the same empty
    file do not both create it, and a failed migration leaves the file as it was. Returns
    0 when the schema was created from nothing.
    """
    tables = set(inspect(connection).get_table_names())
    if not tables:
        metadata.create_all(connection)
        connection.execute(meta.insert().values(key=_VERSION_KEY, value=str(SCHEMA_VERSION)))
        return 0
    if "meta" not in tables:
        shown = ", ".join(sorted(tables)[:5])
        raise LedgerError(
            f"{where} is not a groqbatch ledger: it holds tables ({shown}) but no 'meta' "
            "table. Point the job's ledger (or --ledger) at a new file or at a groqbatch ledger."
        )
    text = connection.execute(
        select(meta.c.value).where(meta.c.key == _VERSION_KEY)
    ).scalar_one_or_none()
    if text is None:
        raise LedgerError(
            f"{where} is not a groqbatch ledger: its 'meta' table has no schema_version."
        )
    found = _parse_version(text, where)
    if found != SCHEMA_VERSION:
        migrate(connection, found, where=where)
    _create_missing_tables(connection, tables)
    return found


def _create_missing_tables(connection: Connection, present: set[str]) -> None:
    """Tables added to version 1 before its release (``evaluations``, ``run_metrics``, …)
    are created in a ledger written before them. Once released, a change is a migration."""
    missing = [table for table in metadata.sorted_tables if table.name not in present]
    if missing:
        metadata.create_all(connection, tables=missing)


def migrate(
    connection: Connection,
    found: int,
    *,
    where: str,
    target: int = SCHEMA_VERSION,
    steps: Mapping[int, Migration] = MIGRATIONS,
) -> None:
    """Bring a ledger at version ``found`` to ``target`` by applying ``steps`` in order.

    Refuses (before changing anything) a version newer than ``target``, or one with no
    path of steps to it, with :class:`SchemaVersionError`.
    """
    if found > target:
        raise SchemaVersionError(
            f"{where} has ledger schema version {found}, written by a newer groqbatch; "
            f"this groqbatch supports schema version {target}. Upgrade groqbatch to use "
            "this ledger, or point --ledger at a new file."
        )
    missing = [v for v in range(found, target) if v not in steps]
    if missing:
        raise SchemaVersionError(
            f"{where} has ledger schema version {found}, which this groqbatch does not know "
            f"how to migrate (it supports version {target}{_known_sources(steps, target)}). "
            "Open it with the groqbatch that wrote it, or point --ledger at a new file."
        )
    for version in range(found, target):
        steps[version](connection)
    connection.execute(update(meta).where(meta.c.key == _VERSION_KEY).values(value=str(target)))


def _parse_version(text: str, where: str) -> int:
    try:
        version = int(text)
    except ValueError:
        version = -1
    if version < 0:
        raise SchemaVersionError(
            f"{where} has an unreadable ledger schema version {text!r}; this groqbatch "
            f"supports schema version {SCHEMA_VERSION}. Point --ledger at a new file."
        )
    return version


def _known_sources(steps: Mapping[int, Migration], target: int) -> str:
    sources = [v for v in sorted(steps) if all(s in steps for s in range(v, target))]
    if not sources:
        return ""
    return ", and migrates from " + ", ".join(str(v) for v in sources)
