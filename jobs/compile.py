"""Compile a job: rows → requests in the ledger → shard files. Memory stays flat.

Three passes, each streamed and written in chunks::

    with Ledger.open(spec.ledger_target) as ledger:
        report = compile_job(spec, ledger)
        print(report.as_dict())

1. **Rows.** Read the input (``where``, ``limit``), render each row into a request, and record
   the rows (row key → ``custom_id``, or the reason it was rejected) and the requests in the
   ledger, a chunk at a time. Requests are content-addressed, so identical ones — from rows of
   this job or of any other — are stored once and sent once.
2. **Refresh** (``refresh=True`` only): the job's answered requests go back to pending.
3. **Shards.** Stream the job's pending requests in ``custom_id`` order into shard files within
   the line and byte limits, recording each shard (pending → queued) as it closes. The order
   makes the files the same whatever order the input rows came in; requests answered before
   (by any job) are not pending, so they are not sent again.

**Reprocessing.** Ids are content-addressed, so compiling again after the input or the
template changed sends only the new or changed rows' requests: an unchanged row maps to the
same, already answered request, which is not pending. Each row is counted as new, changed or
unchanged against the mapping recorded before (``CompileReport.new_rows`` …); ``refresh``
re-asks everything.

**Token estimate.** Prompt tokens of a request ≈ the characters of its messages' text / 4,
plus 4 per message and 3 for the reply (the chat template's overhead), plus a tool list or
JSON schema's text / 4; an image counts 85 (a lower bound). Measured against what a job's
answers report, this is within ~10% for English prompts, where the body's size / 4 (the first
version's rule) counted the JSON, the model name and the parameters too, and came out ~3.5x
high. Completion tokens per request = ``[policy.budget].expected_completion_tokens``, else
``[prompt].max_completion_tokens``, else 256. ``groqbatch plan`` also shows what the job's
earlier answers used on average, when its ledger has some.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from jobs.budget import BatchBudget
from jobs.inputs import find_duplicate_ids, iter_job_rows
from jobs.load import spec_hash, spec_json
from jobs.requests import (
    SAMPLE_MARK,
    RequestBuilder,
    batch_line,
    row_key_for,
    sample_row_key,
    unkeyed_row_key,
)
from jobs.shards import ShardWriter, WrittenShard, shard_key
from jobs.spec import JobSpec
from jobs.steps import row_data
from jobs.template import RowRejected
from state import Ledger, RequestRecord, RequestStatus, RowRecord
from state.engine import chunked

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "CompileReport",
    "ShardSummary",
    "compile_job",
    "estimate_completion_tokens",
    "estimate_prompt_tokens",
    "record_rows_and_requests",
    "shard_pending",
]

#: Rows (and their requests) written to the ledger per chunk, in one transaction: large
#: enough that commits are few (each rewrites the index pages the chunk touched), small enough
#: that a chunk's bodies stay a few MB and another worker's write waits well under a second.
CHUNK_ROWS = 10_000
DEFAULT_COMPLETION_TOKENS = 256


CHARS_PER_TOKEN = 4
"""English text runs about 4 characters a token in the Llama and GPT tokenizers."""
MESSAGE_OVERHEAD_TOKENS = 4
"""The chat template's tokens around each message (role, separators)."""
REPLY_PRIMING_TOKENS = 3
"""The tokens that open the assistant's reply."""
IMAGE_TOKENS = 85
"""An image part, at the smallest size a vision model reads it: a lower bound."""


def _text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def estimate_prompt_tokens(body: bytes) -> int:
    """Prompt tokens of a request, estimated from its body (see the module docstring): the
    text of its messages (and of any tools or JSON schema it sends) at ~4 characters a token,
    plus the chat template's overhead per message. A body with no messages (a transcription)
    is estimated from its size."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        request = None
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list):
        return -(-len(body) // CHARS_PER_TOKEN)
    tokens = REPLY_PRIMING_TOKENS
    for message in messages:
        tokens += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            tokens += _text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    tokens += _text_tokens(str(part.get("text") or ""))
                elif isinstance(part, dict):
                    tokens += IMAGE_TOKENS
    for extra in ("tools", "response_format"):
        value = request.get(extra)
        if isinstance(value, list) or (isinstance(value, dict) and len(value) > 1):
            tokens += _text_tokens(orjson.dumps(value).decode())  # a schema the model is shown
    return tokens


def estimate_completion_tokens(spec: JobSpec) -> int:
    """Completion tokens expected per request (see the module docstring)."""
    return (
        spec.policy.budget.expected_completion_tokens
        or (spec.prompt.max_completion_tokens if spec.prompt is not None else None)
        or DEFAULT_COMPLETION_TOKENS
    )


@dataclass(frozen=True, slots=True)
class ShardSummary:
    """One shard file written by a compile (or, for ``plan``, one that would be)."""

    key: str | None
    path: str | None
    sha256: str | None
    lines: int
    bytes: int
    fits: bool = True
    """Within ``[policy.budget]`` (``plan``: a shard past it is what a larger budget sends)."""


@dataclass(slots=True)
class RowTally:
    """What pass 1 saw."""

    rows: int = 0
    ok: int = 0
    rejected: int = 0
    new_requests: int = 0
    refreshed: int = 0
    new_rows: int = 0
    changed_rows: int = 0
    unchanged_rows: int = 0
    duplicate_rows: int = 0


@dataclass(slots=True)
class CompileReport:
    """What a compile did. ``as_dict()`` is JSON-serialisable."""

    job: str
    model: str
    rows: int = 0
    ok: int = 0
    rejected: int = 0
    unique_requests: int = 0
    new_requests: int = 0
    already_answered: int = 0
    refreshed: int = 0
    to_send: int = 0
    new_rows: int = 0
    """Rows whose key the ledger had not seen for this job."""
    changed_rows: int = 0
    """Rows the ledger knew whose request is different now (input or template changed, or a
    ``cache = false`` run's fresh salt): their new requests are sent, unless answered before."""
    unchanged_rows: int = 0
    """Rows whose request is the one recorded before: answered from the ledger if it was."""
    duplicate_rows: int = 0
    """Rows left out because another row has their id (``[input] on_duplicate_id = "first"``
    or ``"last"``); not counted in ``rows``."""
    shards: list[ShardSummary] = field(default_factory=list)
    held_by_budget: int = 0
    """Requests left pending, not written into a shard, because the next line would have
    passed ``[policy.budget]`` (:mod:`jobs.budget`)."""
    budget_reached: str | None = None
    """The budget cap that stopped the shard pass, if one did."""
    est_prompt_tokens: int = 0
    est_completion_tokens: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_rows_and_requests(
    spec: JobSpec,
    ledger: Ledger,
    builder: RequestBuilder,
    *,
    refresh: bool = False,
    previous: Ledger | None = None,
    keep_data: bool = False,
) -> RowTally:
    """Pass 1 (and 2): stream the job's rows into the ledger as rows and requests.

    With ``previous`` (the job's ledger before this compile), each row is also counted as
    new, changed (its ``custom_id`` differs from the one recorded) or unchanged.

    ``keep_data`` keeps each row's data in the ledger (the first step of a multi-step job: the
    next step is fed from it, see :mod:`jobs.steps`).

    Rows come one per id (:func:`jobs.inputs.iter_job_rows`), so no chunk holds two rows
    with one key and no row is recorded only to be replaced by a later one. A duplicate id
    with ``on_duplicate_id = "error"`` raises ``InputError`` here, before any row is recorded.
    """
    duplicates = find_duplicate_ids(spec.input, spec.input_path)
    tally = RowTally(duplicate_rows=duplicates.left_out)
    # A job the ledger has no rows of: every row is new, and no chunk needs to look its keys
    # up (20 queries of 5,000 keys at 100k rows, all finding nothing).
    first_compile = previous is not None and not previous.has_rows(spec.name)
    id_column = spec.input.id_column
    for chunk in chunked(iter_job_rows(spec.input, spec.input_path, duplicates), CHUNK_ROWS):
        rows: list[RowRecord] = []
        requests: dict[str, RequestRecord] = {}  # deduplicated within the chunk
        for row_index, _line, row in chunk:
            try:
                key = row_key_for(row, id_column)
            except RowRejected as exc:
                rows.append(RowRecord(unkeyed_row_key(row_index), row_index, None, exc.reason))
                tally.rejected += 1
                continue
            data = row_data(row) if keep_data else None
            try:
                samples = builder.build_samples(row)
            except RowRejected as exc:
                rows.extend(RowRecord(sample_row_key(key, i), row_index, None, exc.reason, data)
                            for i in range(builder.samples))
                tally.rejected += 1
                continue
            tally.ok += 1
            for i, built in enumerate(samples):
                rows.append(RowRecord(sample_row_key(key, i), row_index, built.custom_id, None,
                                      data))
                if built.custom_id not in requests:
                    requests[built.custom_id] = RequestRecord(
                        built.custom_id, builder.endpoint, built.body
                    )
        tally.rows += len(chunk)
        if previous is not None:
            firsts = rows if builder.samples == 1 else [  # a row counts once, not per sample
                r for r in rows if SAMPLE_MARK not in r.row_key]
            if first_compile:
                tally.new_rows += len(firsts)
            else:
                _tally_changes(tally, firsts,
                               previous.row_ids(spec.name, (r.row_key for r in firsts)))
        tally.new_requests += ledger.record_compiled(spec.name, rows, requests.values())
        if refresh:
            tally.refreshed += ledger.refresh(requests.keys())
    return tally


def _tally_changes(tally: RowTally, rows: list[RowRecord], before: dict[str, str | None]) -> None:
    for row in rows:
        if row.row_key not in before:
            tally.new_rows += 1
        elif before[row.row_key] == row.custom_id:
            tally.unchanged_rows += 1
        else:
            tally.changed_rows += 1


def write_shards(
    spec: JobSpec, ledger: Ledger, report: CompileReport, *, tag: str | None = None,
    budget: BatchBudget | None = None,
) -> None:
    """Pass 3: the job's pending requests → shard files, each recorded as it closes.

    A shard's key is deterministic from its content: ``<job>-<sha256[:16]>-g<n>``, ``n`` the
    number of shards of the job with that content the ledger already has (a refresh that makes
    the same file again gets the next one, so the earlier one's upload and batch are never
    mistaken for it). Two compiles of the same requests therefore make the same shards, never
    extra ones. ``tag`` (tests) fixes the last part instead.

    With a ``budget``, the pass stops before the first line that would pass it (by the
    estimate, :mod:`jobs.budget`): the shard open then is closed short and the rest stays
    pending — not lost, sharded by a later pass once the budget allows.
    """
    directory = spec.workdir_path / "shards"
    policy = spec.policy
    completion = estimate_completion_tokens(spec)

    def key_for(digest: str) -> str:
        return shard_key(spec.name, digest, tag or f"g{ledger.shard_generation(spec.name, digest)}")

    # A compile of another job sharing requests with this one may queue some of them while
    # this pass writes them into a file: that shard is then not recorded (record_shard whole)
    # and the pass starts again on what is still pending. Each restart follows another
    # compile's progress, so it ends.
    while True:
        estimates: dict[str, int] = {}  # prompt tokens of the requests in unrecorded shards
        allowance = budget.allowance(ledger, spec.name) if budget is not None else None
        try:
            with ShardWriter(
                directory,
                max_lines=policy.max_lines_per_shard,
                max_bytes=policy.max_bytes_per_shard,
                job=spec.name,
                key_for=key_for,
            ) as writer:
                for custom_id, body in ledger.iter_pending(spec.name):
                    line = batch_line(custom_id, body, spec.endpoint)
                    if allowance is not None and not allowance.take(len(line)):
                        break
                    estimates[custom_id] = estimate_prompt_tokens(body)
                    closed = writer.add(custom_id, line)
                    _record(ledger, spec.name, report, closed, estimates, completion)
                _record(ledger, spec.name, report, writer.close(), estimates, completion)
            if allowance is not None and allowance.refused is not None:
                report.budget_reached = allowance.refused
                report.held_by_budget = ledger.request_counts(spec.name)["pending"]
            return
        except _TakenMeanwhile:
            continue


class _TakenMeanwhile(Exception):
    """Some requests of a shard being recorded were queued by another compile meanwhile."""


def _record(ledger: Ledger, job: str, report: CompileReport, shards: Iterable[WrittenShard],
            estimates: dict[str, int], completion: int) -> None:
    for shard in shards:
        if not ledger.record_shard(job, shard.record, shard.custom_ids, whole=True):
            Path(shard.record.path).unlink(missing_ok=True)
            raise _TakenMeanwhile(shard.record.key)
        r = shard.record
        report.shards.append(ShardSummary(r.key, r.path, r.sha256, r.lines, r.bytes))
        report.to_send += r.lines
        report.est_completion_tokens += completion * r.lines
        report.est_prompt_tokens += sum(estimates.pop(cid) for cid in shard.custom_ids)


def shard_pending(spec: JobSpec, ledger: Ledger, report: CompileReport, *,
                  budget: BatchBudget | None = None) -> None:
    """What compile's last pass does, alone: the job's pending requests (rows recorded by a
    compile that was cut short, or requests shared with another job that has not sharded them)
    → shard files, or straight to the synchronous path for ``mode = "sync"``."""
    if spec.policy.mode == "sync":
        report.to_send += route_to_sync(spec, ledger)
    else:
        report.held_by_budget, report.budget_reached = 0, None
        write_shards(spec, ledger, report, budget=budget)


def compile_job(
    spec: JobSpec,
    ledger: Ledger,
    *,
    refresh: bool = False,
    model: str | None = None,
    salt: str | None = None,
    budget: BatchBudget | None = None,
    keep_data: bool = False,
) -> CompileReport:
    """Compile ``spec`` into ``ledger`` and shard files under ``<workdir>/shards/``.

    ``refresh`` re-asks requests already answered. ``model`` is the resolved ``ft:`` id when
    the spec names an ``adapter``. ``salt`` gives every request a fresh id (see
    :func:`jobs.requests.custom_id_for`); with ``[policy] cache = false`` callers pass a run id.
    ``budget`` (:class:`jobs.budget.BatchBudget`) cuts the shards at what the budget leaves.
    ``keep_data``: see :func:`record_rows_and_requests`.
    Raises :class:`~pipeline.errors.ConfigError` / ``InputError`` for a bad config or input
    file; rows that cannot be rendered are rejected and recorded, not raised.
    """
    started = time.perf_counter()
    builder = RequestBuilder(spec, model=model, salt=salt)
    ledger.record_job(spec.name, spec_hash(spec), spec_json(spec))
    tally = record_rows_and_requests(spec, ledger, builder, refresh=refresh, previous=ledger,
                                     keep_data=keep_data)
    counts = ledger.request_counts(spec.name)
    report = CompileReport(
        job=spec.name,
        model=builder.model,
        rows=tally.rows,
        ok=tally.ok,
        rejected=tally.rejected,
        unique_requests=sum(counts.values()),
        new_requests=tally.new_requests,
        already_answered=counts.get("succeeded", 0),
        refreshed=tally.refreshed,
        new_rows=tally.new_rows,
        changed_rows=tally.changed_rows,
        unchanged_rows=tally.unchanged_rows,
        duplicate_rows=tally.duplicate_rows,
    )
    if spec.policy.mode == "sync":
        report.to_send = route_to_sync(spec, ledger)
    else:
        write_shards(spec, ledger, report, budget=budget)
    report.elapsed_s = round(time.perf_counter() - started, 3)
    return report


SYNC_MODE_REASON = "sync: mode = \"sync\" skips the batch path"


def route_to_sync(spec: JobSpec, ledger: Ledger) -> int:
    """``mode = "sync"``: the job's pending requests go straight to the synchronous path
    (pending → retryable), chunk by chunk; no shard files are written."""
    moved = 0
    for chunk in chunked((custom_id for custom_id, _ in ledger.iter_pending(spec.name)), CHUNK_ROWS):
        moved += ledger.transition(chunk, RequestStatus.PENDING, RequestStatus.RETRYABLE,
                                   last_error=SYNC_MODE_REASON)
    return moved
