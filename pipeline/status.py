"""A job's state from its ledger alone: no API call, safe while a run is going."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from jobs import JobSpec, load_prices, price_for
from jobs.plan import unpriced
from jobs.steps import job_steps
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


def _summed(counts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return total


def _status(ledger: Ledger, spec: JobSpec, runs: int) -> dict[str, Any]:
    steps = job_steps(spec)  # a job without [[steps]] is one step: itself
    shards = [
        {key: shard[key] for key in ("key", "job", "lines", "bytes", "step", "file_id",
                                      "batch_id", "batch_status", "request_counts_json",
                                      "output_file_id", "error_file_id")}
        for step in steps for shard in ledger.shards(step.job)
    ]
    prices = load_prices()
    models = [step.spec.model or ledger.adapter_model(step.spec.adapter or "")
              or f"adapter {step.spec.adapter}" for step in steps]
    unknown = [model for model in models if price_for(model, prices) is None]
    cost_known = not unknown
    per_step: list[dict[str, Any]] = [
        {"step": step.name, "job": step.job, "model": model,
         "rows": ledger.row_counts(step.job), "requests": ledger.request_counts(step.job),
         "totals": ledger.request_totals(step.job)}
        for step, model in zip(steps, models, strict=True)
    ]
    return {
        "job": spec.name,
        "ledger": ledger.url,
        "cost_known": cost_known,
        "cost_note": None if cost_known else unpriced(unknown[0]),
        "rows": per_step[0]["rows"],
        "requests": _summed([step["requests"] for step in per_step]),
        "totals": _summed([step["totals"] for step in per_step]),
        # A job with [[steps]]: each step's rows, requests and totals (the above are sums;
        # "rows" is the first step's, the input's).
        "steps": per_step if spec.steps else [],
        "shards": shards,
        # Requests a refresh reopened whose earlier answer is still the one export gives.
        "kept_answers": sum(ledger.kept_answers(step.job) for step in steps),
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
