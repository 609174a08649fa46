"""The jobs a ledger holds (``groqbatch jobs``), each with its state, counts and spend.

    for job in list_jobs("out/shared.sqlite"):
        print(job["name"], job["state"], job["spend"]["cost_usd"])

From the ledger alone: no config is needed, so one PostgreSQL ledger shared by many jobs
(``--ledger``) lists them all. A job's ``state``:

- ``running`` — a worker is on it now (its heartbeat is within its lease);
- ``unfinished`` — requests or shards are still open and no worker is on it: run it again
  (a ``--no-wait`` run, a budget spent, a run cut short);
- ``finished`` — every request succeeded or failed (``failed`` in ``requests`` says how many
  failed: ``groqbatch retry`` sends them again);
- ``empty`` — recorded, with no request (every row rejected, or an empty input).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from state import Ledger, RequestStatus

from .errors import ConfigError

__all__ = ["STATES", "list_jobs"]

STATES = ("running", "unfinished", "finished", "empty")
_OPEN = (RequestStatus.PENDING, RequestStatus.QUEUED, RequestStatus.SUBMITTED,
         RequestStatus.RETRYABLE, RequestStatus.IN_FLIGHT)


def _state(job: dict[str, Any]) -> str:
    requests = job["requests"]
    if job["live_workers"]:
        return "running"
    if not sum(requests.values()):
        return "empty"
    if job["open_shards"] or any(requests[status.value] for status in _OPEN):
        return "unfinished"
    return "finished"


def list_jobs(ledger_target: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every job in the ledger at ``ledger_target`` (a path or SQLAlchemy URL), by name: its
    ``state`` (see the module docstring), request counts by status, rows (ok/rejected), spend
    (tokens and cost so far), open shards, runs and live workers.

    A SQLite path that does not exist is a :class:`ConfigError` — it is never created here.
    """
    target = os.fspath(ledger_target)
    if "://" not in target and not Path(target).exists():
        raise ConfigError(f"no ledger at {target}", field="--ledger",
                          hint="give a job's ledger file or a SQLAlchemy URL")
    with Ledger.open(target) as ledger:
        jobs = ledger.job_overviews()
    for job in jobs:
        job["state"] = _state(job)
    return jobs
