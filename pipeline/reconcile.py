"""Reconcile: a settled batch's output and error files, line by line, into the ledger.

Each file is downloaded whole to disk first (streamed, its size checked against the file
object's ``bytes``), then read line by line and written in chunks — one transaction each — by
upsert on ``custom_id``, so a line read twice (a duplicate, or a file read again after a
crash) changes nothing. What the API returned is kept as it is; nothing is invented:

- ``response.status_code == 200`` with an answer (:mod:`jobs.answers`: a chat completion whose
  first choice has ``content`` or ``tool_calls``; a body sent as a JSON string is parsed) →
  succeeded, with the body, tokens and the batch-priced cost — a 200 that is not an answer is
  quarantined with the reason and its request becomes retryable;
  when the job has an output schema, its parsed output too — or, for an answer that does not
  parse or fit (and for Groq's 400 ``json_validate_failed``), an invalid output, failed or
  retryable per ``[policy] retry_invalid_output`` (:mod:`jobs.outputs`);
- ``response.status_code >= 400`` → retryable for 408/409/429/498/5xx, else failed, with the
  body kept whole;
- ``response: null`` with an ``error`` (``batch_expired``, ``batch_cancelled``,
  ``request_timeout``) → retryable;
- a line that is not JSON, has no ``custom_id``, or names one the ledger never sent → the
  quarantine, kept whole with the file and line number for a person to read;
- a request of the shard with no line in either file → retryable ("missing").

A batch that failed validation has no files; its ``errors.data[]`` are read per line (line N
of the shard file is request N) and its requests become retryable with that message. The
shard is marked ``reconciled`` only after both files were read to the end.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

from jobs import Price
from jobs.answers import is_not_an_answer, judge_answer
from jobs.audio import billed_audio_seconds, is_audio
from jobs.outputs import (
    OutputValidator,
    invalid_output_error,
    is_invalid_output,
    json_validate_failed,
)
from jobs.requests import CHAT_ENDPOINT
from state import Ledger, QuarantineRecord, RequestStatus, ResultRecord, ResultSource, ShardStep
from state.engine import chunked
from state.spend import ExtraSpend

from .client import GroqClient
from .errors import PermanentAPIError, RetryableAPIError
from .faultpoints import crash_point
from .submit import shard_file
from .workers import Worker

log = logging.getLogger("groqbatch.reconcile")

CHUNK_LINES = 5_000
RETRYABLE_STATUS = frozenset({408, 409, 429, 498})
MISSING = "missing: no line for this request in the batch's output or error file"


def _outcome_for_status(status: int) -> RequestStatus:
    if status < 400:
        return RequestStatus.SUCCEEDED
    if status in RETRYABLE_STATUS or status >= 500:
        return RequestStatus.RETRYABLE
    return RequestStatus.FAILED


@dataclass(slots=True)
class ReconcileReport:
    shards: int = 0
    lines: int = 0
    succeeded: int = 0
    failed: int = 0
    retryable: int = 0
    missing: int = 0
    quarantined: int = 0
    duplicates: int = 0
    lost_files: int = 0
    """Output/error files the server no longer had (404): their requests became missing."""
    deferred: int = 0
    """Settled shards whose files could not be downloaded this round; the next one tries again."""
    invalid_output: int = 0
    """Answers that did not parse or fit the output schema (also counted as failed or retryable)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    """What the answers this reconcile recorded cost (the batch's price): a run's own spend."""

    def add(self, other: ReconcileReport) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


async def reconcile_shards(ledger: Ledger, client: GroqClient, job: str, download_dir: Path,
                           price: Price | None, *,
                           outputs: OutputValidator | None = None,
                           worker: Worker | None = None) -> ReconcileReport:
    """Reconcile every settled shard of ``job`` that no other worker holds, one at a time,
    each claimed first.

    A shard whose files cannot be had now (the client's retries ran out on a dropped or cut-short
    download, a 5xx) stays ``settled``, and claimed until the stage ends: the next round tries
    it again, as submit does.
    """
    worker = worker or Worker.make()
    total = ReconcileReport()
    held: list[str] = []
    try:
        while True:
            claimed = await anyio.to_thread.run_sync(lambda: ledger.claim_shards(
                job, worker.id, [ShardStep.SETTLED], limit=1, lease_s=worker.lease_s))
            if not claimed:
                break
            shard = claimed[0]
            held.append(shard["key"])
            try:
                total.add(await reconcile_shard(ledger, client, shard, download_dir, price,
                                                outputs=outputs, worker=worker))
            except RetryableAPIError as exc:
                total.deferred += 1
                log.warning("shard %s: %s; will try again", shard["key"], exc)
    finally:
        with anyio.CancelScope(shield=True):
            for key in held:
                await anyio.to_thread.run_sync(ledger.release_shard, key, worker.id)
    return total


async def reconcile_shard(ledger: Ledger, client: GroqClient, shard: Mapping[str, Any],
                          download_dir: Path, price: Price | None, *,
                          outputs: OutputValidator | None = None,
                          worker: Worker | None = None) -> ReconcileReport:
    report = ReconcileReport(shards=1)
    await anyio.Path(download_dir).mkdir(parents=True, exist_ok=True)
    # Per-worker names: two workers never write the same file, even one whose claim ran out.
    suffix = f".{worker.slug}" if worker is not None else ""
    # Both files are downloaded before either is applied: a download that fails for good then
    # leaves the ledger untouched, and the next try counts every line once.
    downloaded: list[tuple[str, Path]] = []
    for file_id in (shard["output_file_id"], shard["error_file_id"]):
        if not file_id:
            continue
        dest = download_dir / f"{file_id}{suffix}.jsonl"
        try:
            size = (await client.get_file(file_id)).bytes
            await client.download_file(file_id, dest, expected_bytes=size or None)
        except PermanentAPIError as exc:
            if exc.status_code != 404:
                raise
            # Gone for good (deleted, or past the server's retention): its lines can never be
            # read, so its requests are missing — retryable, for the fallback — not stuck.
            log.warning("shard %s: file %s is gone (404); its requests count as missing",
                        shard["key"], file_id)
            report.lost_files += 1
            continue
        downloaded.append((file_id, dest))
    for file_id, dest in downloaded:
        part = await anyio.to_thread.run_sync(apply_file, ledger, dest, shard, file_id, price,
                                              outputs)
        report.add(part)
        dest.unlink(missing_ok=True)
    if shard["batch_status"] == "failed":
        report.retryable += await _fail_validated(ledger, client, shard, download_dir, worker)
    report.missing = ledger.transition_shard(shard["key"], RequestStatus.SUBMITTED,
                                             RequestStatus.RETRYABLE, last_error=MISSING)
    ledger.set_shard_step(shard["key"], ShardStep.SETTLED, ShardStep.RECONCILED,
                          worker=worker.id if worker is not None else None)
    crash_point("after_reconcile")
    return report


def apply_file(ledger: Ledger, path: Path, shard: Mapping[str, Any], file_id: str,
               price: Price | None, outputs: OutputValidator | None = None) -> ReconcileReport:
    """Read one downloaded output/error file into the ledger, a chunk per transaction."""
    report = ReconcileReport()
    batch_id: str | None = shard["batch_id"]
    counted: set[str] = set()  # ids answered by this file: bounded by the shard's size
    seen: set[str] = set()  # ids read in this pass of the file (a second line is a duplicate)

    def quarantined(raw: bytes, reason: str, line_no: int) -> QuarantineRecord:
        return QuarantineRecord(raw.rstrip(b"\n"), reason, shard["key"], batch_id, file_id, line_no)

    with path.open("rb") as handle:
        for chunk in chunked(enumerate(handle, start=1), CHUNK_LINES):
            parsed: list[tuple[int, bytes, ResultRecord]] = []
            bad: list[QuarantineRecord] = []
            for line_no, raw in chunk:
                if not raw.strip():
                    continue
                report.lines += 1
                result = _parse_line(raw, batch_id, price, outputs, shard_key=shard["key"])
                if isinstance(result, str):
                    bad.append(quarantined(raw, result, line_no))
                else:
                    parsed.append((line_no, raw, result))
                    if is_not_an_answer(result.error):  # kept whole for a person to read
                        bad.append(quarantined(raw, result.error or "", line_no))
            # One look-up of the chunk's ids, in the transaction that stores the answers: the
            # status each known id had before (an id the ledger never sent is not in it).
            known, taken = ledger.record_result_chunk(result for _, _, result in parsed)
            twice: list[ExtraSpend] = []
            for line_no, raw, result in parsed:
                status = known.get(result.custom_id)
                if status is None:
                    bad.append(quarantined(raw, f"unknown custom_id {result.custom_id!r}", line_no))
                elif result.custom_id in taken and result.custom_id not in counted:
                    counted.add(result.custom_id)
                    setattr(report, result.outcome.value, getattr(report, result.outcome.value) + 1)
                    report.prompt_tokens += result.prompt_tokens
                    report.completion_tokens += result.completion_tokens
                    report.cost_usd += result.cost_usd
                    report.invalid_output += is_invalid_output(result.error)
                else:
                    report.duplicates += 1
                    # A second answer in this file (not the first one read again after a
                    # crash): paid for, so the budget counts it — once, whatever the re-reads.
                    if result.custom_id in seen and (result.prompt_tokens or result.completion_tokens):
                        twice.append(ExtraSpend(
                            shard["job"], result.custom_id, ResultSource.BATCH.value,
                            f"{file_id}:{line_no}", result.prompt_tokens,
                            result.completion_tokens, result.cost_usd))
                seen.add(result.custom_id)
            ledger.record_extra_spend(twice)
            report.quarantined += ledger.quarantine(bad)
            crash_point("mid_reconcile")
    return report


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _parse_line(raw: bytes, batch_id: str | None, price: Price | None,
                outputs: OutputValidator | None = None, *,
                shard_key: str | None = None) -> ResultRecord | str:
    """A result, or the reason the line goes to the quarantine.

    With ``outputs`` (the job's output schema), a 200 answer is parsed and checked: one that
    fits carries its parsed output, one that does not — or Groq's 400 ``json_validate_failed``
    — is an invalid output (failed, or retryable per ``[policy] retry_invalid_output``), its
    body kept whole (see :mod:`jobs.outputs`).
    """
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(line, dict):
        return "not a JSON object"
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "no custom_id"
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status: int = response["status_code"]
        body = response.get("body")
        outcome = _outcome_for_status(status)
        prompt = completion = 0
        error_text = parsed = None
        endpoint = outputs.endpoint if outputs is not None else CHAT_ENDPOINT
        audio_s = 0.0
        if outcome is RequestStatus.SUCCEEDED:
            body, error_text = judge_answer(body, endpoint)
            usage = body.get("usage") if isinstance(body, dict) else None
            if isinstance(usage, dict):  # paid for, answer or not
                prompt = _int(usage.get("prompt_tokens"))
                completion = _int(usage.get("completion_tokens"))
            if is_audio(endpoint):  # billed by the audio's length
                audio_s = billed_audio_seconds(body)
            if error_text is not None:
                outcome = RequestStatus.RETRYABLE  # ask again; the line is quarantined too
        if error_text is None and outcome is RequestStatus.SUCCEEDED and outputs is not None:
            verdict = outputs.judge(body)
            parsed, error_text = verdict.parsed, verdict.invalid
            if error_text is not None:
                outcome = outputs.invalid_outcome  # answered (and paid for), but not usable
        elif outcome is RequestStatus.FAILED and (reason := json_validate_failed(body)):
            error_text = invalid_output_error(reason)
            outcome = outputs.invalid_outcome if outputs is not None else RequestStatus.FAILED
        elif outcome is not RequestStatus.SUCCEEDED and error_text is None:
            inner = body.get("error") if isinstance(body, dict) else None
            error_text = orjson.dumps(inner if inner is not None else body).decode()
        return ResultRecord(
            custom_id, outcome, ResultSource.BATCH, status_code=status,
            body=orjson.dumps(body) if body is not None else None, error=error_text,
            parsed=parsed, batch_id=batch_id, prompt_tokens=prompt, completion_tokens=completion,
            cost_usd=(price.cost(prompt, completion, "batch") + price.audio_cost(audio_s, "batch")
                      if price else 0.0),
            shard_key=shard_key,
        )
    if isinstance(error, dict):
        return ResultRecord(custom_id, RequestStatus.RETRYABLE, ResultSource.BATCH,
                            error=orjson.dumps(error).decode(), batch_id=batch_id,
                            shard_key=shard_key)
    return "neither a response with a status_code nor an error"


async def _fail_validated(ledger: Ledger, client: GroqClient, shard: Mapping[str, Any],
                          download_dir: Path, worker: Worker | None) -> int:
    """A batch that failed validation: each request named in ``errors.data[]`` (line N of the
    shard file is request N) becomes retryable with its line's message. The rest are left
    submitted, and so become "missing" next, with the batch-level message below."""
    batch = await client.get_batch(shard["batch_id"])
    by_line: dict[int, str] = {}
    for error in batch.errors:
        line = error.get("line")
        if isinstance(line, int):
            by_line[line] = f"batch failed validation: {error.get('code')}: {error.get('message')}"
    moved = 0
    if by_line:
        path = await anyio.to_thread.run_sync(shard_file, ledger, shard, download_dir,
                                              worker or Worker.make())
        moved = await anyio.to_thread.run_sync(_retry_lines, ledger, path, by_line)
    summary = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in batch.errors[:3]) or "no reason given"
    moved += ledger.transition_shard(shard["key"], RequestStatus.SUBMITTED, RequestStatus.RETRYABLE,
                                     last_error=f"batch {batch.id} failed validation: {summary}")
    return moved


def _retry_lines(ledger: Ledger, shard_path: Path, messages: dict[int, str]) -> int:
    """Requests on the given lines of a shard file → retryable, each with its message."""
    moved = 0
    with shard_path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no in messages:
                custom_id = orjson.loads(raw)["custom_id"]
                moved += ledger.transition([custom_id], RequestStatus.SUBMITTED,
                                           RequestStatus.RETRYABLE, last_error=messages[line_no])
    return moved
