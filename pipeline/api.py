"""groqbatch from Python: notebooks, Airflow/Dagster tasks, scripts.

    import pipeline as groqbatch

    job = groqbatch.load("configs/quickstart.toml")        # or groqbatch.job_from_dict({...})
    print(groqbatch.plan(job).compile.to_send)              # a dry run, nothing spent
    summary = groqbatch.run(job)                            # blocks until done
    for row in groqbatch.results(job):                      # input columns + answer + status
        print(row["ticket_id"], row["groqbatch_answer"])
    frame = groqbatch.results_frame(job)                    # pandas (or library="polars")

In async code use ``await groqbatch.run_async(job)``. Every function takes a loaded job or a
config path; errors are those of :mod:`pipeline.errors` (``ConfigError`` names the file,
line and field).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anyio

from jobs import JobSpec, PlanReport, job_from_dict, load_job
from jobs.load import with_ledger

from .errors import ConfigError, NoLedgerError
from .export import iter_results
from .planning import existing_ledger, plan_config
from .runner import RunSummary, run_job
from .workers import Worker

__all__ = ["job_from_dict", "load", "plan", "results", "results_frame", "run", "run_async"]

JobLike = JobSpec | str | os.PathLike[str]


def load(path: str | os.PathLike[str]) -> JobSpec:
    """Load and check a job config (TOML, YAML or JSON)."""
    return load_job(path)


def _job(job: JobLike) -> tuple[JobSpec, Path | None]:
    """The spec (with ``$GROQBATCH_LEDGER`` over its ledger, as on the command line)."""
    if isinstance(job, JobSpec):
        return with_ledger(job), None
    return with_ledger(load_job(job)), Path(job)


def plan(job: JobLike, *, refresh: bool = False) -> PlanReport:
    """What a run would send and cost; spends nothing, writes nothing."""
    return plan_config(job if isinstance(job, JobSpec) else Path(job), refresh=refresh)


async def run_async(job: JobLike, *, wait: bool = True, refresh: bool = False,
                    run_name: str | None = None, ledger: str | None = None,
                    worker_id: str | None = None) -> RunSummary:
    """Run (or resume, or join) a job; with ``wait=False``, advance what can move now and
    return. Any number of calls, in any processes sharing the ledger, share the work;
    ``ledger`` (else ``$GROQBATCH_LEDGER``) overrides the config's."""
    spec, config = _job(job)
    if ledger is not None:
        spec = with_ledger(spec, ledger)
    return await run_job(spec, wait=wait, refresh=refresh, run_name=run_name, config_path=config,
                         worker=Worker.make(worker_id))


def run(job: JobLike, **options: Any) -> RunSummary:
    """:func:`run_async`, for code that is not async (starts its own event loop)."""
    return anyio.run(lambda: run_async(job, **options))


def results(job: JobLike, *, only_succeeded: bool = False) -> Iterator[dict[str, Any]]:
    """Each input row as a dict: its columns plus ``groqbatch_status``, ``groqbatch_answer``,
    ``groqbatch_error``, tokens, tier and the parsed fields — the records ``groqbatch export``
    writes. Streamed from the input file and the ledger; memory stays flat."""
    spec, _ = _job(job)
    ledger = existing_ledger(spec)
    if ledger is None:
        raise NoLedgerError(spec.name, spec.ledger_target)
    with ledger:
        yield from iter_results(spec, ledger, only_succeeded=only_succeeded)


def results_frame(job: JobLike, *, only_succeeded: bool = False,
                  library: Literal["pandas", "polars"] = "pandas") -> Any:
    """:func:`results` as a pandas (or polars) DataFrame, when that library is installed.
    This one does hold every row in memory: use :func:`results` for very large jobs."""
    rows = list(results(job, only_succeeded=only_succeeded))
    try:
        if library == "polars":
            import polars

            return polars.DataFrame(rows)
        import pandas

        return pandas.DataFrame(rows)
    except ImportError:
        raise ConfigError(f"results_frame needs {library}: pip install {library}",
                          field="library") from None
