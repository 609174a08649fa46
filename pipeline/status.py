"""A job's state from its ledger alone: no API call, safe while a run is going."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from jobs import JobSpec, load_prices, price_for
from jobs.plan import unpriced
from state import Ledger

from .errors import NoLedgerError
from .planning import existing_ledger


def _when(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return dt.datetime.fromtimestamp(stamp, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def job_status(spec: JobSpec, *, runs: int = 10) -> dict[str, Any]:
    """Runs, shards, request counts, tokens and cost so far, as one JSON-ready mapping."""
    ledger = existing_ledger(spec)
    if ledger is None:
        raise NoLedgerError(spec.name, spec.ledger_target)
    with ledger:
        return _status(ledger, spec, runs)


def _status(ledger: Ledger, spec: JobSpec, runs: int) -> dict[str, Any]:
    shards = [
        {key: shard[key] for key in ("key", "lines", "bytes", "step", "file_id", "batch_id",
                                      "batch_status", "request_counts_json", "output_file_id",
                                      "error_file_id")}
        for shard in ledger.shards(spec.name)
    ]
    model = spec.model or ledger.adapter_model(spec.adapter or "") or f"adapter {spec.adapter}"
    cost_known = price_for(model, load_prices()) is not None
    return {
        "job": spec.name,
        "ledger": ledger.url,
        "cost_known": cost_known,
        "cost_note": None if cost_known else unpriced(model),
        "rows": ledger.row_counts(spec.name),
        "requests": ledger.request_counts(spec.name),
        "totals": ledger.request_totals(spec.name),
        "shards": shards,
        # Requests a refresh reopened whose earlier answer is still the one export gives.
        "kept_answers": ledger.kept_answers(spec.name),
        "workers": [
            {
                "worker": w["worker_id"],
                "live": w["live"],
                "run": w["run_id"],
                "started": _when(w["started_at"]),
                "seen": _when(w["seen_at"]),
                "stopped": _when(w["stopped_at"]),
                "holds": w["holds"],
            }
            for w in ledger.workers(spec.name)
        ],
        "runs": [
            {
                "id": run["id"],
                "run_name": run["run_name"],
                "backend": run["backend"],
                "started": _when(run["started_at"]),
                "finished": _when(run["finished_at"]),
                "summary": orjson.loads(run["summary_json"]) if run["summary_json"] else None,
            }
            for run in ledger.runs(spec.name, limit=runs)
        ],
    }
