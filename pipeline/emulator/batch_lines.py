"""Lines of a batch: validating the input file, running a line, writing output and error lines.

Everything here is blocking file work; :mod:`.batches` calls it on worker threads. Nothing
holds a whole file in memory: the input is read line by line, and what is kept per line is
only its byte offset (an ``array('q')``, 8 bytes a line).

Line formats (wire-notes §4, Groq's ``BatchRequestOutput``)::

    success       {"id":"batch_req_…","custom_id":"r1","response":{"status_code":200,
                   "request_id":"req_…","body":{chat.completion}},"error":null}
    HTTP error    {"id":…,"custom_id":"r2","response":{"status_code":400,"request_id":…,
                   "body":{"error":{…}}},"error":null}                  (error file)
    never run     {"id":…,"custom_id":"r3","response":null,
                   "error":{"code":"batch_expired","message":"…"}}      (error file)

A line that fails validation is not run. It is reported in the batch's ``errors.data[]``
(``{code, message, param, line}``) *and* written to the error file as an HTTP-error line
(status 400, or 404 for ``model_not_found``; ``custom_id`` null when the line has none), and
it counts in ``request_counts.failed``. Groq's own example shows exactly that: a
``completed`` batch with an ``invalid_method`` entry in ``errors``, ``failed: 1`` and an
``error_file_id``; and its docs say every failed request has its error in the error file.
So every counted request can be found in one of the two files.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from . import audio
from .batch_params import ENDPOINTS
from .config import BatchFaults
from .errors import APIProblem
from .faults import FaultInjector
from .ids import new_id
from .models import ModelRegistry
from .responder import Responder

log = logging.getLogger("groqbatch.emulator")

MAX_REPORTED_ERRORS = 1000
"""``errors.data[]`` keeps the first this-many line problems (all of them are in the error file)."""

UnrunReason = Literal["batch_expired", "batch_cancelled"]
UNRUN_MESSAGES: dict[UnrunReason, str] = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request could not be executed before the batch was cancelled.",
}


@dataclass(frozen=True, slots=True)
class LineProblem:
    """Why one input line will not run."""

    code: str
    message: str
    param: str | None
    line: int
    """1-based line number in the input file."""
    custom_id: str | None = None

    def as_api(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}

    @property
    def status_code(self) -> int:
        return 404 if self.code == "model_not_found" else 400

    def error_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "invalid_request_error",
                          "code": self.code, "param": self.param}}


@dataclass(slots=True)
class Validation:
    """What one pass over the input file found."""

    total: int = 0
    """Request lines (blank lines are skipped and not counted)."""
    offsets: array[int] = field(default_factory=lambda: array("q"))
    """Byte offset of each runnable line, in file order."""
    invalid: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    """The first :data:`MAX_REPORTED_ERRORS` problems, as ``errors.data[]`` entries."""


class LineFile:
    """An output or error file being written: JSONL, every line ending in ``\\n``."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.lines_written = 0

    def write(self, record: dict[str, Any]) -> None:
        self.write_raw(orjson.dumps(record))

    def write_raw(self, line: bytes) -> None:
        self._handle.write(line + b"\n")
        self.lines_written += 1


@contextmanager
def appending(path: Path) -> Iterator[LineFile]:
    with path.open("ab") as handle:
        yield LineFile(handle)


def check_line(raw: bytes, number: int, endpoint: str, seen: set[str],
               models: ModelRegistry) -> LineProblem | None:
    """The first problem of one input line, or None if it can run.

    Every custom_id met is added to ``seen``, valid line or not: a custom_id is unique among
    all lines of the file, so the second line that uses it is the ``duplicate_custom_id``.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LineProblem("invalid_json_line", "This line is not parseable as valid JSON.", None, number)
    if not isinstance(obj, dict):
        return LineProblem("invalid_json_line", "This line is not a JSON object.", None, number)
    raw_id = obj.get("custom_id")
    custom_id = raw_id if isinstance(raw_id, str) and raw_id else None
    if custom_id is not None:
        if custom_id in seen:
            return LineProblem(
                "duplicate_custom_id",
                f"The custom_id '{custom_id}' is used by more than one line; "
                "it must be unique within a batch.",
                "custom_id", number, custom_id,
            )
        seen.add(custom_id)
    for name in ("custom_id", "method", "url", "body"):
        if obj.get(name) is None:
            return LineProblem("missing_required_parameter", f"Missing required parameter: '{name}'.",
                               name, number, custom_id)
    if custom_id is None:
        return LineProblem("invalid_request", "'custom_id' must be a non-empty string.",
                           "custom_id", number)
    method, url, body = obj["method"], obj["url"], obj["body"]
    if method != "POST":
        return LineProblem("invalid_method", f"Invalid value: '{method}'. Supported values are: 'POST'",
                           "method", number, custom_id)
    if url != endpoint and url not in ENDPOINTS:
        # Lines may name another endpoint the Batch API takes (Groq's "Mixed Batch" example).
        return LineProblem(
            "invalid_url",
            f"URL provided for this request is not supported: got '{url}'; batch lines may "
            f"target {', '.join(sorted(ENDPOINTS))}.",
            "url", number, custom_id,
        )
    if not isinstance(body, dict):
        return LineProblem("invalid_request", "'body' must be a JSON object.", "body", number, custom_id)
    model = body.get("model")
    if model is None:
        return LineProblem("missing_required_parameter", "Missing required parameter: 'body.model'.",
                           "body.model", number, custom_id)
    if not isinstance(model, str) or models.get(model) is None:
        return LineProblem("model_not_found",
                           f"The model `{model}` does not exist or you do not have access to it.",
                           "body.model", number, custom_id)
    return None


def validate_file(path: Path, endpoint: str, models: ModelRegistry, errors_out: LineFile) -> Validation:
    """One streaming pass: count the lines, keep offsets of runnable ones, write invalid ones."""
    result = Validation()
    seen: set[str] = set()
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            result.total += 1
            problem = check_line(raw, number, endpoint, seen, models)
            if problem is None:
                result.offsets.append(start)
                continue
            result.invalid += 1
            if len(result.errors) < MAX_REPORTED_ERRORS:
                result.errors.append(problem.as_api())
            errors_out.write(response_line(problem.custom_id, problem.status_code, new_id("req"),
                                           problem.error_body()))
    return result


def response_line(custom_id: str | None, status_code: int, request_id: str,
                  body: Any) -> dict[str, Any]:
    return {
        "id": new_id("batch_req"),
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }


def unrun_line(custom_id: str, reason: UnrunReason) -> dict[str, Any]:
    return {
        "id": new_id("batch_req"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": reason, "message": UNRUN_MESSAGES[reason]},
    }


def server_error_body(status: int) -> dict[str, Any]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Server Error"
    kind = "service_unavailable" if status == 503 else "internal_server_error"
    return {"error": {"message": phrase, "type": kind, "code": kind}}


def read_line(handle: IO[bytes], offset: int) -> dict[str, Any]:
    """The (already validated) input line starting at ``offset``."""
    handle.seek(offset)
    line: dict[str, Any] = orjson.loads(handle.readline())
    return line


@dataclass(frozen=True, slots=True)
class LineFaults:
    """The scenario's decisions for one run of one line, keyed by custom_id (see :mod:`.batches`)."""

    server_error: bool = False
    missing: bool = False
    garbled: bool = False
    duplicate: bool = False
    string_body: bool = False
    null_body: bool = False

    @classmethod
    def decide(cls, faults: FaultInjector, key: str) -> LineFaults:
        rates: BatchFaults = faults.scenario.batch
        return cls(
            server_error=faults.chance("batch:line_error", rates.line_error_rate, key),
            missing=faults.chance("batch:missing", rates.missing_line_rate, key),
            garbled=faults.chance("batch:garbled", rates.garbled_line_rate, key),
            duplicate=faults.chance("batch:duplicate", rates.duplicate_line_rate, key),
            string_body=faults.chance("batch:string_body", rates.string_body_rate, key),
            null_body=faults.chance("batch:null_body", rates.null_body_rate, key),
        )

    @property
    def any(self) -> bool:
        return (self.server_error or self.missing or self.garbled or self.duplicate
                or self.null_body)


def run_line(line: dict[str, Any], responder: Responder, faults: LineFaults,
             line_error_status: int, at: float | None = None) -> tuple[dict[str, Any], bool]:
    """Answer one validated line: (output record, succeeded). Rate limits do not apply."""
    custom_id: str = line["custom_id"]
    body: dict[str, Any] = line["body"]
    request_id = new_id("req")
    if faults.server_error:
        body_of_error = server_error_body(line_error_status)
        return response_line(custom_id, line_error_status, request_id, body_of_error), False
    tier = body.get("service_tier")
    completion: Any
    try:
        if line.get("url") in audio.AUDIO_URLS:
            completion = audio.answer_line(line["url"], body, responder.models)
        else:
            completion = responder.complete(
                body, service_tier=tier if isinstance(tier, str) else "on_demand", at=at)
    except APIProblem as problem:
        return response_line(custom_id, problem.status_code, request_id, problem.body()), False
    except Exception:
        # A responder bug must not wedge the batch (every poll would retry the same line).
        log.exception("responder failed on batch line %r", custom_id)
        return response_line(custom_id, 500, request_id, server_error_body(500)), False
    x_groq = completion.get("x_groq") if isinstance(completion, dict) else None
    if isinstance(x_groq, dict) and isinstance(x_groq.get("id"), str):
        request_id = x_groq["id"]
    return response_line(custom_id, 200, request_id, completion), True


def emit(target: LineFile, record: dict[str, Any], faults: LineFaults, *, succeeded: bool) -> None:
    """Write a line that ran, through the file-corruption faults (missing/garbled/duplicate).

    These faults change only the bytes written, never ``request_counts``: the counts say
    what the server ran, as a real service's would when its output file is damaged.
    """
    if faults.missing:
        return
    response = record.get("response")
    if succeeded and isinstance(response, dict) and (faults.string_body or faults.null_body):
        body = None if faults.null_body else orjson.dumps(response["body"]).decode()
        record = {**record, "response": {**response, "body": body}}
    text = orjson.dumps(record).decode()
    if faults.garbled:
        # A proper prefix of a JSON object is never valid JSON.
        text = text[: len(text) // 2]
    target.write_raw(text.encode())
    if succeeded and faults.duplicate:
        target.write_raw(text.encode())


def run_lines(input_path: Path, offsets: array[int], *, output_path: Path, errors_path: Path,
              responder: Responder, decide: Callable[[str], LineFaults],
              line_error_status: int,
              time_of: Callable[[int], float] | None = None) -> tuple[int, int]:
    """Run the lines at ``offsets``, appending to the output/error files: (succeeded, failed).

    ``time_of(k)``: the emulated time the k-th of them ran (its answer's ``created``), so every
    line's time falls within the batch's ``in_progress_at … finalizing_at`` (or its expiry or
    cancel) however late the server got round to writing it."""
    succeeded = 0
    with (input_path.open("rb") as source, appending(output_path) as output,
          appending(errors_path) as errors_out):
        for k, offset in enumerate(offsets):
            line = read_line(source, offset)
            faults = decide(line["custom_id"])
            at = time_of(k) if time_of is not None else None
            record, ok = run_line(line, responder, faults, line_error_status, at)
            emit(output if ok else errors_out, record, faults, succeeded=ok)
            succeeded += ok
    return succeeded, len(offsets) - succeeded


def write_unrun(input_path: Path, offsets: array[int], errors_path: Path, reason: UnrunReason) -> int:
    """Write one ``batch_expired``/``batch_cancelled`` line per line at ``offsets``; how many."""
    with input_path.open("rb") as source, appending(errors_path) as errors_out:
        for offset in offsets:
            errors_out.write(unrun_line(read_line(source, offset)["custom_id"], reason))
    return len(offsets)
