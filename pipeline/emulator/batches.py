"""Batches: create, retrieve, list, cancel, and a state machine on the virtual clock.

Nothing runs in the background. Whenever a batch is read (retrieve, list, cancel, admin
state) it is first *advanced* to ``clock.now()``: every transition whose time has come is
applied, at the emulated time it happened, not at the time of the read::

    validating ──validation_s──▶ in_progress ──lines / throughput──▶ finalizing ──finalizing_s──▶ completed
        │                           │  (expires_at, or the expire_after_fraction fault)
        ├─▶ failed                  └─▶ expired                (partial output, batch_expired lines)
        └─────────── cancel ──▶ cancelling ──cancelling_s──▶ cancelled (partial output, batch_cancelled lines)

``failed`` means the whole file failed validation: no line could run, or the
``fail_validation`` fault. ``request_counts`` are then all 0 and there are no files, as on
OpenAI. Otherwise ``total`` counts the request lines, ``completed`` the lines answered 200,
``failed`` the invalid lines plus the lines answered with an error, plus (with
``count_unrun_as_failed``) the lines an expiry or cancel left unrun. Lines run as the clock
passes them, each exactly once, appended to scratch files, so the counts always match
what the files hold; the files are published (purpose ``batch_output``) when the batch
settles. ``output_file_id``/``error_file_id`` are null when that file would be empty (the
``empty_error_file_object`` fault makes the latter ``{}``). See :mod:`.batch_lines` for the
line formats and what happens to invalid lines.

With a ``data_dir`` every change of a batch is saved (:mod:`.persist`) before the read that
made it returns, together with the byte length of each scratch file; a scratch file is
deleted only once the saved state no longer needs it. After a restart the first read
advances the batch across the gap, running the lines the clock has passed meanwhile.

Line faults are keyed by custom_id, so a scenario replays the same way. Once a fault has hit
a custom_id, its next run on this server is keyed ``custom_id#2`` (then ``#3`` …), so a client
that resubmits a faulted line is not hit again forever.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.routing import Route

from . import batch_lines
from .batch_lines import UnrunReason, Validation
from .batch_params import MAX_IDS, CreateParams, decode_cursor, encode_cursor, parse_create
from .errors import APIProblem, bad_request
from .files import StoredFile, link_into_store
from .http import JSONResponse, json_body, query_ids, query_int
from .ids import new_id

if TYPE_CHECKING:
    from .server import Emulator

log = logging.getLogger("groqbatch.emulator")


class BatchStatus(StrEnum):
    VALIDATING = "validating"  # the input file is being checked
    FAILED = "failed"  # the whole file failed validation; nothing ran
    IN_PROGRESS = "in_progress"  # lines are running
    FINALIZING = "finalizing"  # every line ran; files being prepared
    COMPLETED = "completed"  # output/error files ready
    EXPIRED = "expired"  # the window closed first; partial output
    CANCELLING = "cancelling"  # cancel asked; lines stopped
    CANCELLED = "cancelled"  # partial output


SETTLED = frozenset({BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED,
                     BatchStatus.CANCELLED})
CANCELLABLE = frozenset({BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS})


@dataclass(eq=False)
class BatchRecord:
    """One batch. Times are emulated Unix seconds (floats); the API shows them as ints."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    expires: float
    input_path: Path
    """A hard link (or copy) of the input file, so deleting the file does not break the batch."""
    output_path: Path
    errors_path: Path
    state: BatchStatus = BatchStatus.VALIDATING
    times: dict[str, float] = field(default_factory=dict)
    """``in_progress`` / ``finalizing`` / ``completed`` / … → when it happened."""
    validation: Validation | None = None
    errors: list[dict[str, Any]] | None = None
    done: int = 0
    """Runnable lines run so far (they run in file order)."""
    completed: int = 0
    failed: int = 0
    unrun: int = 0
    output_file_id: str | None = None
    error_file_id: str | dict[str, Any] | None = None
    advanced_to: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    published: list[StoredFile] = field(default_factory=list, repr=False)
    """Output/error files registered since the last save (saved in the batch's transaction)."""
    discard: list[Path] = field(default_factory=list, repr=False)
    """Scratch files to delete once the batch's new state is saved."""
    saved_key: tuple[Any, ...] | None = field(default=None, repr=False)
    """:meth:`change_key` at the last save (None: never saved)."""

    def change_key(self) -> tuple[Any, ...]:
        """Changes whenever a saved field does (``advanced_to`` alone is not worth a write).

        ``errors`` and ``times`` only change together with ``state`` or ``validation``.
        """
        return (self.state, self.validation is not None, self.done, self.completed,
                self.failed, self.unrun, self.output_file_id, repr(self.error_file_id))

    @property
    def status(self) -> str:
        """The API's ``status`` string."""
        return self.state.value

    def as_api(self, count_unrun_as_failed: bool) -> dict[str, Any]:
        def at(name: str) -> int | None:
            when = self.times.get(name)
            return None if when is None else int(when)

        counted = self.validation is not None and self.state != BatchStatus.FAILED
        failed = self.failed + (self.unrun if count_unrun_as_failed else 0)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "finalizing_at": at("finalizing"),
            "failed_at": at("failed"),
            "expired_at": at("expired"),
            "cancelled_at": at("cancelled"),
            "request_counts": {
                "total": self.validation.total if counted and self.validation else 0,
                "completed": self.completed if counted else 0,
                "failed": failed if counted else 0,
            },
            "metadata": self.metadata,
            "created_at": int(self.created),
            "expires_at": int(self.expires),
            "cancelling_at": at("cancelling"),
            "completed_at": at("completed"),
            "in_progress_at": at("in_progress"),
        }


class BatchStore:
    """All batches of one server, and the rules that move them along."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._batches: dict[str, BatchRecord] = {}
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        self._hits_lock = threading.Lock()

    # -- reading ------------------------------------------------------------------------

    def get(self, batch_id: str) -> BatchRecord | None:
        with self._lock:
            return self._batches.get(batch_id)

    def require(self, batch_id: str) -> BatchRecord:
        found = self.get(batch_id)
        if found is None:
            raise APIProblem(404, f"Batch `{batch_id}` does not exist", code="batch_not_found")
        return found

    def newest_first(self) -> list[BatchRecord]:
        with self._lock:
            return list(reversed(self._batches.values()))

    def all(self) -> list[BatchRecord]:
        """Every batch, advanced to now. Blocking: async callers use :meth:`snapshots`."""
        records = self.newest_first()
        for record in records:
            self.snapshot(record)
        return records

    def snapshot(self, record: BatchRecord) -> dict[str, Any]:
        """Advance ``record`` to now and return its API object (blocking; run on a thread)."""
        with record.lock:
            self._advance(record, self.emulator.clock.now())
            self._commit(record)
            return record.as_api(self.emulator.config.count_unrun_as_failed)

    def snapshots(self, records: list[BatchRecord]) -> list[dict[str, Any]]:
        return [self.snapshot(record) for record in records]

    # -- writing ------------------------------------------------------------------------

    def create(self, source: StoredFile, params: CreateParams) -> dict[str, Any]:
        """Register a new batch in ``validating`` (blocking: links the input file)."""
        emulator = self.emulator
        batch_id = new_id("batch")
        scratch = emulator.scratch_dir
        input_path = scratch / f"{batch_id}.input.jsonl"
        try:
            os.link(source.path, input_path)
        except FileNotFoundError:  # deleted since it was looked up
            raise APIProblem(404, f"File `{source.id}` does not exist", code="file_not_found",
                             param="input_file_id") from None
        except OSError:  # no hard links here (another filesystem)
            shutil.copyfile(source.path, input_path)
        now = emulator.clock.now()
        record = BatchRecord(
            id=batch_id,
            input_file_id=source.id,
            endpoint=params.endpoint,
            completion_window=params.completion_window,
            metadata=params.metadata,
            created=now,
            expires=float(int(now) + params.window_s),
            input_path=input_path,
            output_path=scratch / f"{batch_id}.output.jsonl",
            errors_path=scratch / f"{batch_id}.errors.jsonl",
            advanced_to=now,
        )
        with record.lock:
            self._commit(record)
        with self._lock:
            self._batches[batch_id] = record
        return record.as_api(emulator.config.count_unrun_as_failed)

    def restore(self, record: BatchRecord, *, output_bytes: int, errors_bytes: int) -> None:
        """Take back a batch saved by an earlier process (see :mod:`.persist`).

        A crash after lines were appended to a scratch file but before the batch's new
        ``done`` was saved leaves bytes past the saved length: lines the saved state says
        have not run. They will run again on the next read, so they are cut off here, or
        their custom_ids would be answered twice.
        """
        if record.state not in SETTLED:
            for path, length in ((record.output_path, output_bytes),
                                 (record.errors_path, errors_bytes)):
                self._truncate(path, length)
        record.saved_key = record.change_key()
        with self._lock:
            self._batches[record.id] = record

    @staticmethod
    def _truncate(path: Path, length: int) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
            if length == 0:
                return
        if size > length:
            with path.open("r+b") as handle:
                handle.truncate(length)
        elif size < length:
            # Only a power cut (not a process crash) can lose bytes a commit counted.
            log.warning("%s: %d bytes saved but %d found; lines of it are lost", path, length, size)

    def cancel(self, record: BatchRecord) -> dict[str, Any]:
        """Ask to cancel (blocking). Idempotent while ``cancelling``; 400 once settled."""
        with record.lock:
            now = self.emulator.clock.now()
            self._advance(record, now)
            cancellable = record.state in CANCELLABLE
            if cancellable:
                if record.validation is None:
                    self._scan(record)
                record.state = BatchStatus.CANCELLING
                record.times["cancelling"] = max(now, record.advanced_to)
                self._advance(record, now)
            self._commit(record)
            if not cancellable and record.state != BatchStatus.CANCELLING:
                status = self.emulator.faults.scenario.quirks.cancel_settled_status
                message = f"Batch `{record.id}` cannot be cancelled: its status is `{record.status}`."
                if status == 409:
                    message = f"Cannot cancel batch {record.id} with status '{record.status}'"
                raise APIProblem(status, message, code="batch_not_cancellable")
            return record.as_api(self.emulator.config.count_unrun_as_failed)

    def _commit(self, record: BatchRecord) -> None:
        """Save ``record`` if it changed (with a data_dir), then delete the scratch files it
        no longer needs: only now, so a crash before the save finds them still there."""
        persist = self.emulator.persist
        if persist is not None:
            key = record.change_key()
            if key != record.saved_key:
                first_validated = record.saved_key is None or not record.saved_key[1]
                persist.save_batch(record, with_validation=first_validated,
                                   files=record.published)
                record.saved_key = key
        record.published.clear()
        self._discard(*record.discard)
        record.discard.clear()

    # -- the state machine --------------------------------------------------------------

    def _advance(self, record: BatchRecord, now: float) -> None:
        """Apply every transition due by ``now``, each at its own emulated time."""
        config = self.emulator.config
        now = max(now, record.advanced_to)
        while record.state not in SETTLED:
            if record.state == BatchStatus.VALIDATING:
                end = record.created + config.validation_s
                if record.expires < end and record.expires <= now:
                    self._scan(record)
                    self._settle(record, BatchStatus.EXPIRED, record.expires)
                elif end <= now:
                    self._validate(record, end)
                else:
                    break
            elif record.state == BatchStatus.IN_PROGRESS:
                if not self._progress(record, now):
                    break
            else:
                stage = "finalizing" if record.state == BatchStatus.FINALIZING else "cancelling"
                delay = config.finalizing_s if stage == "finalizing" else config.cancelling_s
                end = record.times[stage] + delay
                if end > now:
                    break
                final = BatchStatus.COMPLETED if stage == "finalizing" else BatchStatus.CANCELLED
                self._settle(record, final, end)
        record.advanced_to = now

    def _scan(self, record: BatchRecord) -> None:
        with batch_lines.appending(record.errors_path) as errors_out:
            record.validation = batch_lines.validate_file(
                record.input_path, record.endpoint, self.emulator.models, errors_out
            )
        record.failed = record.validation.invalid
        record.errors = record.validation.errors or None

    def _validate(self, record: BatchRecord, at: float) -> None:
        self._scan(record)
        assert record.validation is not None
        if self.emulator.faults.scenario.batch.fail_validation:
            fault = {"code": "invalid_request", "param": "input_file_id", "line": None,
                     "message": "The input file failed validation (emulated fault)."}
            record.errors = [fault, *(record.errors or [])]
        elif record.validation.offsets:
            record.state = BatchStatus.IN_PROGRESS
            record.times["in_progress"] = at
            return
        elif record.validation.total == 0:
            record.errors = [{"code": "empty_file", "param": "input_file_id", "line": None,
                              "message": "The input file has no request lines."}]
        record.state = BatchStatus.FAILED
        record.times["failed"] = at
        record.failed = 0
        record.discard += [record.errors_path, record.output_path, record.input_path]

    def _progress(self, record: BatchRecord, now: float) -> bool:
        """Run the lines due by ``now``; True if the batch left ``in_progress``."""
        assert record.validation is not None
        rate = self.emulator.config.throughput_lines_per_s
        start = record.times["in_progress"]
        runnable = len(record.validation.offsets)
        finish = start + runnable / rate
        deadline, lines_by_deadline = None, runnable
        if record.expires < finish:
            deadline = record.expires
            lines_by_deadline = min(runnable, math.floor((record.expires - start) * rate + 1e-9))
        fraction = self.emulator.faults.scenario.batch.expire_after_fraction
        if fraction is not None:
            share = max(math.ceil(fraction * runnable - 1e-9), record.done)
            when = max(start + share / rate, record.advanced_to)
            if deadline is None or when < deadline:
                deadline, lines_by_deadline = when, share
        if deadline is not None and deadline <= now:
            self._run_lines(record, lines_by_deadline)
            self._settle(record, BatchStatus.EXPIRED, deadline)
            return True
        if finish <= now:
            self._run_lines(record, runnable)
            record.state = BatchStatus.FINALIZING
            record.times["finalizing"] = finish
            return True
        self._run_lines(record, min(runnable, math.floor((now - start) * rate + 1e-9)))
        return False

    def _run_lines(self, record: BatchRecord, upto: int) -> None:
        if upto <= record.done:
            return
        assert record.validation is not None
        # Line j (from 0) of the batch ran at start + (j + 1) / rate: within in_progress …
        # finalizing (and before an expiry or cancel, which stop the lines where they are).
        start, rate, first = record.times["in_progress"], self.emulator.config.throughput_lines_per_s, record.done
        stop = record.times.get("cancelling", math.inf)
        completed, failed = batch_lines.run_lines(
            record.input_path, record.validation.offsets[record.done : upto],
            output_path=record.output_path, errors_path=record.errors_path,
            responder=self.emulator.responder, decide=self._decide_faults,
            line_error_status=self.emulator.faults.scenario.batch.line_error_status,
            time_of=lambda k: min(start + (first + k + 1) / rate, stop),
        )
        record.completed += completed
        record.failed += failed
        record.done = upto

    def _decide_faults(self, custom_id: str) -> batch_lines.LineFaults:
        """Faults for this run of ``custom_id``: keyed ``custom_id``, then ``custom_id#2``, … once
        a fault has hit it, so a resubmitted line is not hit again forever (only hit ids are kept)."""
        with self._hits_lock:
            hits = self._hits.get(custom_id, 0)
        key = custom_id if hits == 0 else f"{custom_id}#{hits + 1}"
        faults = batch_lines.LineFaults.decide(self.emulator.faults, key)
        if faults.any:
            with self._hits_lock:
                self._hits[custom_id] += 1
        return faults

    def _settle(self, record: BatchRecord, status: BatchStatus, at: float) -> None:
        """Write the never-run lines, publish the files, and enter a final status."""
        assert record.validation is not None
        if status in (BatchStatus.EXPIRED, BatchStatus.CANCELLED):
            reason: UnrunReason = "batch_expired" if status == BatchStatus.EXPIRED else "batch_cancelled"
            record.unrun = batch_lines.write_unrun(
                record.input_path, record.validation.offsets[record.done :], record.errors_path, reason
            )
        created_at = int(at)
        output = self._publish(record, record.output_path, "output", created_at)
        record.output_file_id = output.id if output is not None else None
        errors = self._publish(record, record.errors_path, "errors", created_at)
        if errors is not None:
            record.error_file_id = errors.id
        elif self.emulator.faults.scenario.batch.empty_error_file_object:
            record.error_file_id = {}
        record.discard.append(record.input_path)
        record.state = status
        record.times[status.value] = at

    def _publish(self, record: BatchRecord, path: Path, kind: str, created_at: int) -> StoredFile | None:
        """Register a scratch file as a ``batch_output`` file (a link: the scratch copy goes
        after the save, see :meth:`_commit`)."""
        record.discard.append(path)
        if not path.exists() or path.stat().st_size == 0:
            return None
        stored = link_into_store(self.emulator.files, path, filename=f"{record.id}_{kind}.jsonl",
                                 purpose="batch_output", created_at=created_at)
        record.published.append(stored)
        return stored

    @staticmethod
    def _discard(*paths: Path) -> None:
        for path in paths:
            path.unlink(missing_ok=True)


# -- HTTP -----------------------------------------------------------------------------------


def _emulator(request: Request) -> Emulator:
    emulator: Emulator = request.app.state.emulator
    return emulator


async def create_batch(request: Request) -> JSONResponse:
    emulator = _emulator(request)
    params = parse_create(await json_body(request))
    source = emulator.files.get(params.input_file_id)
    if source is None:
        raise APIProblem(404, f"File `{params.input_file_id}` does not exist", code="file_not_found",
                         param="input_file_id")
    if source.purpose != "batch":
        raise bad_request(
            f"File `{source.id}` has purpose `{source.purpose}`; a batch input file must be "
            "uploaded with purpose `batch`.",
            param="input_file_id", code="invalid_file_purpose",
        )
    created = await anyio.to_thread.run_sync(emulator.batches.create, source, params)
    return JSONResponse(created)


async def retrieve_batch(request: Request) -> JSONResponse:
    batches = _emulator(request).batches
    record = batches.require(request.path_params["batch_id"])
    return JSONResponse(await anyio.to_thread.run_sync(batches.snapshot, record))


async def cancel_batch(request: Request) -> JSONResponse:
    batches = _emulator(request).batches
    record = batches.require(request.path_params["batch_id"])
    await json_body(request, allow_empty=True)
    return JSONResponse(await anyio.to_thread.run_sync(batches.cancel, record))


async def list_batches(request: Request) -> JSONResponse:
    """Newest first. Groq's ``cursor`` paging and ``id`` filter, and OpenAI's ``after``/``limit``."""
    batches = _emulator(request).batches
    params = request.query_params
    ids = query_ids(request)
    if len(ids) > MAX_IDS:
        raise bad_request(f"At most {MAX_IDS} batch ids may be given, got {len(ids)}.", param="id")
    cursor, after = params.get("cursor"), params.get("after")
    if cursor and after:
        raise bad_request("Pass either `cursor` or `after`, not both.", param="cursor")
    limit = query_int(params, "limit", MAX_IDS if ids else 20, low=1, high=100 if not ids else MAX_IDS)
    records = batches.newest_first()
    start_after = decode_cursor(cursor) if cursor else after
    if start_after:
        position = next((i for i, r in enumerate(records) if r.id == start_after), None)
        if position is None:
            param = "cursor" if cursor else "after"
            raise bad_request(f"No batch `{start_after}` to page from.", param=param)
        records = records[position + 1 :]
    if ids:
        wanted = set(ids)
        records = [r for r in records if r.id in wanted]
    page = records[:limit]
    has_more = len(records) > limit
    data = await anyio.to_thread.run_sync(batches.snapshots, page)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "paging": {"next_cursor": encode_cursor(page[-1].id) if has_more else None},
        }
    )


routes = [
    Route("/batches", create_batch, methods=["POST"]),
    Route("/batches", list_batches, methods=["GET"]),
    Route("/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
