"""Submit: take compiled shards to created batches, crash-exact (DESIGN.md).

Every remote side effect is preceded by a recorded intent and followed by a recorded outcome:

    compiled ──intent──▶ uploading ──upload──▶ uploaded ──intent──▶ submitting ──create──▶ submitted

A ``kill -9`` between an intent and its outcome leaves the shard in ``uploading`` (or
``submitting``) with no remote id. On resume the remote side is asked first — the file is
adopted by its name and size, the batch by the metadata that tags it with the shard — and only
if nothing matches is the call made again. So no shard ever gets two batches.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from jobs.budget import BatchBudget
from jobs.requests import CHAT_ENDPOINT, batch_line
from state import Ledger, ShardStep

from .client import GroqClient, RemoteBatch, RemoteFile
from .errors import APIError, LedgerError, PermanentAPIError, RetryableAPIError
from .faultpoints import crash_point
from .retry import NO_RETRY
from .workers import Worker

log = logging.getLogger("groqbatch.submit")
T = TypeVar("T")

CONCURRENT_SUBMISSIONS = 4
ADOPTION_MARGIN_S = 3600.0
"""How far before the recorded intent a remote batch may have been created and still be ours
(clock skew between us and the server)."""


def upload_filename(shard_key: str) -> str:
    """The name a shard's file is uploaded under; resume finds it again by this name."""
    return f"groqbatch-{shard_key}.jsonl"


def batch_metadata(job: str, shard_key: str) -> dict[str, str]:
    return {"groqbatch_job": job, "groqbatch_shard": shard_key}


@dataclass(slots=True)
class SubmitReport:
    uploaded: int = 0
    created: int = 0
    adopted_files: int = 0
    adopted_batches: int = 0
    deferred: int = 0
    """Shards whose calls kept failing retryably; the next round tries them again."""
    held_by_budget: int = 0
    """Shards left compiled, not uploaded, because they would pass ``[policy.budget]``."""
    held_lines: int = 0
    """Their lines (requests not sent)."""
    notes: set[str] = field(default_factory=set)
    """Optional calls the server does not offer, skipped (for the run summary)."""


async def submit_shards(ledger: Ledger, client: GroqClient, job: str, *, completion_window: str,
                        worker: Worker | None = None, shard_dir: Path | None = None,
                        limit: int = CONCURRENT_SUBMISSIONS,
                        budget: BatchBudget | None = None) -> SubmitReport:
    """Move every shard of ``job`` that is not yet submitted, and that no other worker holds,
    as far as it goes.

    ``limit`` shards at a time, each claimed (owner and lease) before anything remote is done
    for it and released when its step is recorded; other workers take the rest meanwhile.
    ``shard_dir`` is where a shard file compiled on another machine is rebuilt from the ledger.
    With a ``budget``, a compiled shard is started (compiled → uploading) only if it fits what
    the ledger says is left, weighed and moved in one transaction; one that does not stays
    compiled, its requests unsent (:attr:`SubmitReport.held_by_budget`). A shard already past
    that step is always finished: its batch may exist.
    """
    worker = worker or Worker.make()
    report = SubmitReport()
    refused: list[APIError] = []
    held: list[str] = []  # claims kept until the stage ends (a deferred shard is not retried now)

    async def slot() -> None:
        while not refused:
            claimed = await anyio.to_thread.run_sync(lambda: ledger.claim_shards(
                job, worker.id, _UNSUBMITTED, limit=1, lease_s=worker.lease_s))
            if not claimed:
                return
            shard = claimed[0]
            held.append(shard["key"])
            if budget is not None and shard["step"] == ShardStep.COMPILED:
                started = await anyio.to_thread.run_sync(
                    ledger.begin_upload_within, shard["key"], job, worker.id,
                    budget.fits(shard["lines"], shard["bytes"]))
                if not started:  # held (and claimed until the stage ends, so not tried again)
                    report.held_by_budget += 1
                    report.held_lines += shard["lines"]
                    continue
                shard = {**shard, "step": ShardStep.UPLOADING.value, "fresh_upload": True}
            try:
                await _submit_shard(ledger, client, job, shard, completion_window, report,
                                    worker, shard_dir)
            except RetryableAPIError as exc:
                report.deferred += 1
                log.warning("shard %s: %s; will try again", shard["key"], exc)
            except APIError as exc:
                refused.append(exc)

    try:
        async with anyio.create_task_group() as group:
            for _ in range(limit):
                group.start_soon(slot)
    finally:
        with anyio.CancelScope(shield=True):
            for key in held:
                await anyio.to_thread.run_sync(ledger.release_shard, key, worker.id)
    if refused:
        # A refusal (bad file, bad window, auth) would be refused again: stop and say which.
        raise refused[0]
    return report


_UNSUBMITTED = frozenset({ShardStep.COMPILED, ShardStep.UPLOADING, ShardStep.UPLOADED, ShardStep.SUBMITTING})


class ClaimLost(Exception):
    """This worker's claim on a shard ran out and another worker took it: stop acting on it."""


async def _submit_shard(ledger: Ledger, client: GroqClient, job: str, shard: Mapping[str, Any],
                        completion_window: str, report: SubmitReport, worker: Worker,
                        shard_dir: Path | None) -> None:
    key: str = shard["key"]
    try:
        await _advance_shard(ledger, client, job, shard, completion_window, report, worker,
                             shard_dir)
    except APIError as exc:
        exc.add_note(f"while submitting shard {key}")
        raise
    except ClaimLost:
        log.warning("shard %s: %s's claim ran out and another worker took it over", key, worker.id)


async def _advance_shard(ledger: Ledger, client: GroqClient, job: str, shard: Mapping[str, Any],
                         completion_window: str, report: SubmitReport, worker: Worker,
                         shard_dir: Path | None) -> None:
    key: str = shard["key"]
    step = ShardStep(shard["step"])
    file_id: str | None = shard["file_id"]

    def move(from_: ShardStep, to: ShardStep, **fields: Any) -> None:
        if not ledger.set_shard_step(key, from_, to, worker=worker.id, **fields):
            raise ClaimLost(key)

    if step is ShardStep.COMPILED:
        move(ShardStep.COMPILED, ShardStep.UPLOADING)
        step = ShardStep.UPLOADING
    if step is ShardStep.UPLOADING:
        # A shard found in uploading may have been uploaded by a run that died; one this
        # worker just moved there (here, or under the budget's check) has not.
        resumed = shard["step"] == ShardStep.UPLOADING and not shard.get("fresh_upload")
        remote = await _adopt_file(client, shard, report.notes) if resumed else None
        if remote is not None:
            report.adopted_files += 1
            log.info("shard %s: adopted uploaded file %s", key, remote.id)
        else:
            path = await anyio.to_thread.run_sync(shard_file, ledger, shard, shard_dir, worker)
            remote, adopted = await make_once(
                client,
                lambda: client.upload_file(path, filename=upload_filename(key), retry=NO_RETRY),
                lambda: _adopt_file(client, shard, report.notes),
            )
            report.uploaded += not adopted
            report.adopted_files += adopted
            crash_point("after_upload")
        assert remote is not None
        file_id = remote.id
        move(ShardStep.UPLOADING, ShardStep.UPLOADED, file_id=file_id)
        step = ShardStep.UPLOADED
    if step is ShardStep.UPLOADED:
        move(ShardStep.UPLOADED, ShardStep.SUBMITTING)
        step = ShardStep.SUBMITTING
    assert step is ShardStep.SUBMITTING
    assert file_id is not None
    batch = await _adopt_batch(client, job, shard) if shard["step"] == ShardStep.SUBMITTING else None
    if batch is not None:
        report.adopted_batches += 1
        log.info("shard %s: adopted batch %s", key, batch.id)
    else:
        endpoint = await anyio.to_thread.run_sync(ledger.shard_endpoint, key) or CHAT_ENDPOINT
        batch, adopted = await make_once(
            client,
            lambda: client.create_batch(file_id, completion_window=completion_window,
                                        metadata=batch_metadata(job, key), endpoint=endpoint,
                                        retry=NO_RETRY),
            lambda: _adopt_batch(client, job, shard),
        )
        report.created += not adopted
        report.adopted_batches += adopted
        crash_point("after_create")
    assert batch is not None
    if not record_submitted(ledger, key, batch, worker=worker.id):
        raise ClaimLost(key)
    crash_point("after_submit")


def shard_file(ledger: Ledger, shard: Mapping[str, Any], shard_dir: Path | None,
               worker: Worker) -> Path:
    """The shard's file on this machine: the one compile wrote, or — when it was compiled on
    another machine (or the file is gone) — rebuilt from the ledger and checked against the
    recorded sha256, so workers need no shared filesystem.

    Rebuilding is cheap: its lines are the shard's requests in custom_id order, exactly as
    compile wrote them, read back a page at a time (see :meth:`state.Ledger.shard_lines`).
    Measured on this machine kind: a 50,000-line, 12.8 MB shard rebuilds in 0.49 s (compiling
    it took 2.05 s; uploading it takes longer than either). Keeping each file compressed in the
    ledger instead would add ~3 MB a shard to every ledger, written by every compile, to save
    that half second on the machines that did not compile it.
    """
    path = Path(shard["path"])
    try:
        if path.stat().st_size == shard["bytes"]:
            return path
    except OSError:
        pass
    directory = shard_dir or path.parent
    directory.mkdir(parents=True, exist_ok=True)
    rebuilt = directory / f"rebuilt-{shard['key']}-{worker.slug}.jsonl"
    part = rebuilt.with_name(rebuilt.name + ".part")
    digest = hashlib.sha256()
    size = lines = 0
    endpoint = ledger.shard_endpoint(shard["key"]) or CHAT_ENDPOINT
    with part.open("wb") as out:
        for custom_id, body in ledger.shard_lines(shard["key"]):
            line = batch_line(custom_id, body, endpoint)
            out.write(line)
            digest.update(line)
            size += len(line)
            lines += 1
    if digest.hexdigest() != shard["sha256"] or size != shard["bytes"]:
        part.unlink(missing_ok=True)
        raise LedgerError(
            f"shard {shard['key']}: its file {path} is not on this machine, and rebuilding it "
            f"from the ledger gave {lines} lines, {size} bytes, sha256 {digest.hexdigest()[:16]}… "
            f"instead of {shard['lines']} lines, {shard['bytes']} bytes, {shard['sha256'][:16]}…"
        )
    part.replace(rebuilt)
    return rebuilt


async def make_once(client: GroqClient, make: Callable[[], Awaitable[T]],
                    find: Callable[[], Awaitable[T | None]]) -> tuple[T, bool]:
    """Create a remote object (a file, a batch) without ever creating it twice.

    Not retried blindly: a timeout, a dropped connection or a 5xx leaves it unknown whether
    the server acted, and a plain retry could upload the file again or — worse — create and
    pay for a second batch. So before each retry the server is asked (``find``) and a match
    is adopted; only when it has nothing is the call made again. Returns (object, adopted).
    """
    async for attempt in client.retry.retrying():
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                found = await find()
                if found is not None:
                    return found, True
            return await make(), False
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def record_submitted(ledger: Ledger, key: str, batch: RemoteBatch, *,
                     worker: str | None = None) -> bool:
    """The outcome of creating (or adopting) a shard's batch; its requests are now submitted.
    Shard and requests move in one transaction (a crash between them would strand them).
    False if ``worker`` no longer held the shard (nothing was recorded)."""
    if ledger.record_submitted(key, worker=worker, batch_id=batch.id, batch_status=batch.status,
                               request_counts_json=_counts(batch)):
        return True
    # No request moved: either the shard's requests all went elsewhere (shared with another
    # job's shard) and it moved all the same, or the claim was lost and nothing was recorded.
    now = ledger.shard(key)
    return now is not None and now["batch_id"] == batch.id


def _counts(batch: RemoteBatch) -> dict[str, int]:
    counts = batch.request_counts
    return {"total": counts.total, "completed": counts.completed, "failed": counts.failed}


OPTIONAL_REFUSED = frozenset({404, 405, 501})
"""What a server answers for an endpoint it does not have: an optional call (listing files to
adopt, the stray-upload sweep) refused so is skipped with a note, never failing the run."""


def refused_optional(exc: APIError) -> bool:
    return exc.status_code in OPTIONAL_REFUSED


async def _adopt_file(client: GroqClient, shard: Mapping[str, Any],
                      notes: set[str]) -> RemoteFile | None:
    """The file a crashed run uploaded for this shard, if the server has it (name and size).

    A server that cannot list files: nothing to adopt, so the file is uploaded again — an
    unused upload costs nothing (the sweep deletes strays where the server lets it), a second
    batch would cost money; batches are never created blindly (:func:`_adopt_batch`).
    """
    name = upload_filename(shard["key"])
    try:
        listed = await client.list_files()
    except APIError as exc:
        if not refused_optional(exc):
            raise
        notes.add(f"the server does not list files (HTTP {exc.status_code}): a shard file whose "
                  "upload was interrupted was uploaded again")
        return None
    matches = [f for f in listed if f.filename == name and f.bytes == shard["bytes"]]
    return max(matches, key=lambda f: f.created_at) if matches else None


async def _adopt_batch(client: GroqClient, job: str, shard: Mapping[str, Any]) -> RemoteBatch | None:
    """The batch a crashed run created for this shard, if any. Batches are listed newest first;
    none older than the recorded intent (less a margin) can be ours, so the walk stops there.

    A server that cannot list batches cannot say whether the batch exists: creating one blindly
    could pay for the shard twice, so that is refused, saying so.
    """
    wanted = batch_metadata(job, shard["key"])
    oldest = float(shard["updated_at"]) - ADOPTION_MARGIN_S
    try:
        async for batch in client.iter_batches():
            if all(batch.metadata.get(k) == v for k, v in wanted.items()):
                return batch
            if batch.created_at and batch.created_at < oldest:
                return None
    except APIError as exc:
        if not refused_optional(exc):
            raise
        raise PermanentAPIError(
            f"shard {shard['key']}: creating its batch was interrupted and the server cannot "
            f"list batches (HTTP {exc.status_code}) to tell whether it exists; groqbatch will "
            "not create one blindly and risk paying twice. Look for a batch with metadata "
            f"groqbatch_shard={shard['key']} on the server",
            status_code=exc.status_code,
        ) from exc
    return None


async def sweep_orphan_uploads(ledger: Ledger, client: GroqClient, job: str,
                               notes: set[str] | None = None) -> int:
    """Delete uploads of this job's shards that the ledger does not hold.

    A run killed after an upload, whose answer only reached the server after the next run had
    listed files and uploaded again, leaves a second copy: it costs storage, never a batch
    (batches are only created from recorded file ids). Called once every shard is settled;
    only shards whose file is recorded and that no worker holds are looked at, so an upload a
    live claim may still be using is never deleted. Cleanup is optional: a server that does not
    list or delete files, or any other refusal, is noted and never fails a run whose results
    are saved.
    """
    notes = notes if notes is not None else set()
    recorded = {upload_filename(s["key"]): s["file_id"] for s in ledger.shards(job)
                if s["file_id"] and not _held_live(s)}
    swept = 0
    try:
        for remote in await client.list_files():
            if remote.filename in recorded and remote.id != recorded[remote.filename]:
                await client.delete_file(remote.id)
                swept += 1
    except APIError as exc:
        notes.add(f"stray uploads were not swept: {exc}")
    return swept


def _held_live(shard: Mapping[str, Any]) -> bool:
    lease = shard.get("lease_until")
    return shard.get("claimed_by") is not None and lease is not None and lease >= time.time()
