"""Garbage collection (``groqbatch gc``): a job's files that nothing needs any more.

    report = anyio.run(lambda: gc_job(spec, older_than_s=7 * 86400))
    print(report.freed["files"], report.freed["bytes"])

A shard is *done* when its batch is terminal and read (the shard ``reconciled``, or
``dropped`` before a batch existed), no worker holds a live claim on it, and every request in
it has settled (succeeded or failed). Only a done shard's files are deleted:

- **remote** — its batch input file, and the batch's output and error files, through the
  Files API's ``DELETE``. A file some other shard (of any job) still needs is kept. A server
  that has no ``DELETE`` (405/501, or a 404 for a file it still lists) is skipped with a note; a
  file already gone (404 on both) counts as deleted. Deleted ids are recorded in the ledger, so a later gc does not
  ask for them again.
- **local** — in the job's workdir only: its shard file (``shards/<sha256>.jsonl``, kept while
  any shard of that content, of any job, is not done), files rebuilt from the ledger
  (``rebuilt-<shard>-<worker>.jsonl``) and downloads left by an interrupted reconcile
  (``downloads/<file id>….jsonl``). A partial file (``.part``) written in the last
  :data:`WRITE_GRACE_S` is kept: a worker may still be writing it. Nothing else in the
  workdir — the in-process server's data, compile's temporary files — is touched.

``older_than_s`` keeps the files of shards finished more recently than that (the ledger's
time of the shard's last step). ``dry_run`` reports what would go and deletes nothing. A shard
file deleted here is rebuilt from the ledger if it is ever needed again
(:func:`pipeline.submit.shard_file`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs import JobSpec
from state import DEFAULT_LEASE_S, Ledger
from state.cleanup import DeletedFile

from .backend import open_client
from .client import GroqClient
from .errors import APIError, ConfigError
from .planning import existing_ledger
from .submit import OPTIONAL_REFUSED

__all__ = ["WRITE_GRACE_S", "GcReport", "gc_job"]

WRITE_GRACE_S = DEFAULT_LEASE_S
"""A ``.part`` file younger than this may still be being written by a worker: kept."""
_SHARD_FILE = re.compile(r"^(?P<sha>[0-9a-f]{64})\.jsonl$")


@dataclass(slots=True)
class GcReport:
    """What gc deleted (or, with ``dry_run``, would delete). ``as_dict()`` is JSON-ready."""

    job: str
    dry_run: bool
    remote: bool
    local: bool
    freed: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0})
    """Both places together: files deleted and the bytes they held (known sizes only)."""
    remote_freed: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0})
    local_freed: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0})
    kept: dict[str, int] = field(default_factory=lambda: {"shards_not_done": 0,
                                                          "shards_too_recent": 0})
    """Shards whose files stay: not done (batch live, claimed, or requests open), or newer
    than ``older_than_s``."""
    files: list[dict[str, Any]] = field(default_factory=list)
    """Each file deleted: place, kind, name (file id or path), shard_key, bytes."""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, deleted: DeletedFile) -> None:
        self.files.append({"place": deleted.place, "kind": deleted.kind, "name": deleted.name,
                           "shard_key": deleted.shard_key, "bytes": deleted.bytes})
        for totals in (self.freed, self.remote_freed if deleted.place == "remote"
                       else self.local_freed):
            totals["files"] += 1
            totals["bytes"] += deleted.bytes or 0


async def gc_job(spec: JobSpec, *, remote: bool = True, local: bool = True,
                 older_than_s: float | None = None, dry_run: bool = False) -> GcReport:
    """Delete the job's remote and/or local files that no shard needs any more (see the module
    docstring); returns what was freed. Raises :class:`ConfigError` when the job has no ledger."""
    ledger = existing_ledger(spec)
    if ledger is None:
        raise ConfigError(f"job {spec.name!r} has no ledger yet at {spec.ledger_target}: "
                          "nothing has run, so there is nothing to clean", field="ledger")
    report = GcReport(job=spec.name, dry_run=dry_run, remote=remote, local=local)
    with ledger:
        done = _done_shards(ledger, spec.name, older_than_s, report)
        if remote:
            async with open_client(spec) as client:
                await _gc_remote(ledger, client, spec.name, done, report)
        if local:
            _gc_local(ledger, spec, done, report)
    return report


def _done_shards(ledger: Ledger, job: str, older_than_s: float | None,
                 report: GcReport) -> dict[str, dict[str, Any]]:
    cutoff = None if older_than_s is None else time.time() - older_than_s
    done: dict[str, dict[str, Any]] = {}
    for shard in ledger.gc_shards(job):
        if not shard["final"] or shard["claimed"] or shard["open_requests"]:
            report.kept["shards_not_done"] += 1
        elif cutoff is not None and shard["updated_at"] > cutoff:
            report.kept["shards_too_recent"] += 1
        else:
            done[shard["key"]] = shard
    return done


async def _gc_remote(ledger: Ledger, client: GroqClient, job: str,
                     done: dict[str, dict[str, Any]], report: GcReport) -> None:
    gone_before = {f.name for f in ledger.deleted_files(job, "remote")}
    wanted: dict[str, tuple[str, dict[str, Any]]] = {}
    for shard in done.values():
        for kind, column in (("input", "file_id"), ("output", "output_file_id"),
                             ("error", "error_file_id")):
            file_id = shard[column]
            if isinstance(file_id, str) and file_id and file_id not in gone_before:
                wanted.setdefault(file_id, (kind, shard))
    _, in_use = ledger.files_in_use(file_ids=wanted)
    for file_id, (kind, shard) in wanted.items():
        if file_id in in_use:
            continue
        size = shard["bytes"] if kind == "input" else await _remote_size(client, file_id)
        deleted = DeletedFile(job, "remote", file_id, kind, shard["key"], size)
        if not report.dry_run:
            try:
                await client.delete_file(file_id)
            except APIError as exc:
                if exc.status_code not in OPTIONAL_REFUSED:
                    raise
                if exc.status_code != 404 or await _still_there(client, file_id):
                    report.notes.append(f"the server does not delete files (HTTP "
                                        f"{exc.status_code}): remote files were left as they are")
                    return
                # Gone already (deleted elsewhere, or past the server's retention).
                deleted = DeletedFile(job, "remote", file_id, kind, shard["key"], 0)
            ledger.record_deleted_files([deleted])
        report.add(deleted)


async def _still_there(client: GroqClient, file_id: str) -> bool:
    """After a 404 on ``DELETE``: whether the file is still there (the server has no such
    route) rather than gone."""
    try:
        await client.get_file(file_id)
    except APIError:
        return False
    return True


async def _remote_size(client: GroqClient, file_id: str) -> int | None:
    """The file's size, if the server says; None when it cannot (the file is deleted anyway)."""
    try:
        return (await client.get_file(file_id)).bytes
    except APIError:
        return None


def _gc_local(ledger: Ledger, spec: JobSpec, done: dict[str, dict[str, Any]],
              report: GcReport) -> None:
    workdir = spec.workdir_path
    candidates = list(_local_candidates(workdir, ledger.gc_shards(spec.name), done))
    shas = {shard["sha256"] for _path, _kind, shard in candidates}
    in_use, _ = ledger.files_in_use(sha256s=shas)
    now = time.time()
    deleted: list[DeletedFile] = []
    for path, kind, shard in candidates:
        if shard["sha256"] in in_use:
            continue
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.name.endswith(".part") and now - stat.st_mtime < WRITE_GRACE_S:
            continue
        if not report.dry_run:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
        record = DeletedFile(spec.name, "local", str(path), kind, shard["key"], stat.st_size)
        deleted.append(record)
        report.add(record)
    if deleted and not report.dry_run:
        ledger.record_deleted_files(deleted)


def _local_candidates(workdir: Path, shards: list[dict[str, Any]],
                      done: dict[str, dict[str, Any]]) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """(path, kind, shard) of each file in the workdir's ``shards/`` and ``downloads/`` that
    belongs to a done shard of the job. A shard file's content may be shared by several shards
    (a refresh that made the same file again): it is a candidate only if all of them are done."""
    by_sha: dict[str, list[dict[str, Any]]] = {}
    by_file_id: dict[str, dict[str, Any]] = {}
    for shard in shards:
        by_sha.setdefault(shard["sha256"], []).append(shard)
        for column in ("output_file_id", "error_file_id"):
            if shard[column]:
                by_file_id[shard[column]] = shard
    for folder in ("shards", "downloads"):
        directory = workdir / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if not path.is_file():
                continue
            name = path.name
            if (match := _SHARD_FILE.match(name)) and folder == "shards":
                same = by_sha.get(match["sha"], [])
                if same and all(s["key"] in done for s in same):
                    yield path, "shard", same[0]
            elif name.startswith("rebuilt-"):
                if (rebuilt := _by_key_prefix(done, name)) is not None:
                    yield path, "shard", rebuilt
            elif folder == "downloads":
                owner = by_file_id.get(name.split(".", 1)[0])
                if owner is not None and owner["key"] in done:
                    yield path, "download", owner


def _by_key_prefix(done: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The done shard a ``rebuilt-<key>-<worker slug>.jsonl`` file belongs to (the slug may hold
    dashes, so the key is the longest done key the name starts with)."""
    rest = name.removeprefix("rebuilt-")
    keys = [key for key in done if rest.startswith(key + "-")]
    return done[max(keys, key=len)] if keys else None
