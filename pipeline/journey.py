"""Inspect: one row's journey through a job (``groqbatch inspect CONFIG ROW_KEY|CUSTOM_ID``).

    journey = inspect_row(load_job("configs/quickstart.toml"), "T0001")
    print(journey["request"]["status"], [a["outcome"] for a in journey["attempts"]])

From the ledger alone (no API call; safe while a run is going), plus the input file for the
row itself: the input row, the request body and ``custom_id``, the shard and batch it is in,
every recorded outcome — batch lines and flex answers, the replaced ones from
``result_history`` first — with its batch and run, the result and error now, and its tokens and
cost. The ledger keeps the *outcomes* of attempts, not each call: a flex call that was retried
after a 429 or a dropped connection shows as the one outcome it ended with; ``attempts`` in
the request is the count of sends since the request was last (re)opened.
"""

from __future__ import annotations

from typing import Any

from jobs import JobSpec, iter_job_rows
from jobs.outputs import is_invalid_output
from jobs.requests import row_key_or_position
from state import RequestStatus

from .errors import ConfigError, GroqBatchError
from .planning import existing_ledger

__all__ = ["inspect_row"]

_AWAITING = {RequestStatus.SUBMITTED.value: "batch", RequestStatus.IN_FLIGHT.value: "flex"}


def inspect_row(spec: JobSpec, key: str) -> dict[str, Any]:
    """The journey of the row with key ``key`` (else of the request with that custom_id), as one
    JSON-ready mapping. Raises :class:`ConfigError` (exit 2) naming the key when the job has
    neither, or has no ledger yet."""
    ledger = existing_ledger(spec)
    if ledger is None:
        raise ConfigError(f"job {spec.name!r} has no ledger yet at {spec.ledger_target}: "
                          "nothing has run", field="ledger")
    with ledger:
        found = ledger.journey(spec.name, key)
        where = ledger.url
    if found is None:
        raise ConfigError(
            f"job {spec.name!r} has no row key or custom_id {key!r} in its ledger ({where})",
            hint="a row key is the row's id_column value; `groqbatch export` lists them as "
                 "groqbatch_row_key",
        )
    request = found["request"]
    shards = found["shards"]
    current = shards.get(request["shard_key"]) if request and request["shard_key"] else None
    first_row = found["rows"][0] if found["rows"] else None
    input_row, input_note = _input_row(spec, first_row["row_key"]) if first_row else (None, None)
    return {
        "job": spec.name,
        "key": key,
        "matched_by": found["matched_by"],
        "row_key": first_row["row_key"] if first_row else None,
        "rows": found["rows"],
        "input_row": input_row,
        "input_note": input_note,
        "custom_id": found["custom_id"],
        "status": request["status"] if request else (first_row or {}).get("status"),
        "request": request,
        "shard": current,
        "batch": None if current is None else {
            "id": current["batch_id"], "status": current["batch_status"],
            "request_counts": current["request_counts"],
        },
        "attempts": _attempts(found, shards),
        "result": found["result"],
        "error": (request or {}).get("last_error") or (first_row or {}).get("reason"),
        "cost": None if request is None else {
            "prompt_tokens": request["prompt_tokens"],
            "completion_tokens": request["completion_tokens"],
            "cost_usd": request["cost_usd"],
        },
        "shards": list(shards.values()),
    }


def _attempts(found: dict[str, Any], shards: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every recorded outcome, oldest first — replaced ones, the current one — and, while the
    request awaits an answer, the send under way."""
    by_batch = {shard["batch_id"]: key for key, shard in shards.items() if shard["batch_id"]}
    outcomes = [*found["history"], *([found["result"]] if found["result"] else [])]
    attempts = []
    for outcome in sorted(outcomes, key=lambda o: o["received_at"]):
        attempts.append({
            "source": outcome["source"],
            "batch_id": outcome["batch_id"],
            "shard_key": by_batch.get(outcome["batch_id"]),
            "status_code": outcome["status_code"],
            "error": outcome["error"],
            "received_at": outcome["received_at"],
            "run_id": outcome["run_id"],
            "replaced_at": outcome.get("replaced_at"),
            "outcome": _outcome(outcome),
        })
    request = found["request"]
    if request is not None and request["status"] in _AWAITING:
        shard = shards.get(request["shard_key"] or "")
        via_batch = request["status"] == RequestStatus.SUBMITTED.value
        attempts.append({
            "source": _AWAITING[request["status"]],
            "batch_id": shard["batch_id"] if shard and via_batch else None,
            "shard_key": request["shard_key"] if via_batch else None,
            "status_code": None, "error": None, "received_at": None, "run_id": None,
            "replaced_at": None, "outcome": "in_progress",
        })
    return attempts


def _outcome(outcome: dict[str, Any]) -> str:
    code, error = outcome["status_code"], outcome["error"]
    if code == 200 and error is None:
        return "answer"
    if isinstance(error, str) and is_invalid_output(error):
        return "invalid_output"
    return "error"


def _input_row(spec: JobSpec, row_key: str) -> tuple[dict[str, Any] | None, str | None]:
    """The input row with ``row_key``, read from the input file (streamed until found), or
    None and why not."""
    try:
        for index, _line, row in iter_job_rows(spec.input, spec.input_path):
            if row_key_or_position(row, spec.input.id_column, index) == row_key:
                return row, None
    except GroqBatchError as exc:
        return None, f"the input could not be read: {exc}"
    return None, f"{spec.input_path} no longer has this row (the input changed since it ran)"
