"""groqbatch from Python: notebooks, Airflow/Dagster tasks, scripts.

    import pipeline as groqbatch

    job = groqbatch.load("configs/quickstart.toml")        # or groqbatch.job_from_dict({...})
    print(groqbatch.plan(job).compile.to_send)              # a dry run, nothing spent
    summary = groqbatch.run(job)                            # blocks until done
    for row in groqbatch.results(job):                      # input columns + answer + status
        print(row["ticket_id"], row["groqbatch_answer"])
    frame = groqbatch.results_frame(job)                    # pandas (or library="polars")

Housekeeping: ``groqbatch.init("my-job")`` writes a job that runs as it is;
``groqbatch.retry_failed(job)`` sends failed requests again; ``groqbatch.inspect(job, "T0001")`` is one
row's journey; ``groqbatch.list_jobs(ledger)`` the jobs of a ledger; ``groqbatch.gc(job)``
deletes files nothing needs any more.

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
from jobs.steps import find_step

from . import catalog
from .cleanup import GcReport, gc_job
from .errors import ConfigError, NoLedgerError
from .export import iter_results
from .journey import inspect_row
from .planning import existing_ledger, plan_config
from .resend import RetryReport, retry_job
from .runner import RunSummary, run_job
from .scaffold import InitReport, init_job
from .workers import Worker

__all__ = ["gc", "init", "inspect", "job_from_dict", "list_jobs", "load", "plan", "results",
           "results_frame", "retry_failed", "run", "run_async"]

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


def results(job: JobLike, *, only_succeeded: bool = False,
            step: str | None = None) -> Iterator[dict[str, Any]]:
    """Each input row as a dict: its columns plus ``groqbatch_status``, ``groqbatch_answer``,
    ``groqbatch_error``, tokens, tier and the parsed fields — the records ``groqbatch export``
    writes. Streamed from the input file and the ledger; memory stays flat. A job with
    ``[[steps]]``: the rows of ``step`` (default the last), as ``export --step`` writes them."""
    spec, _ = _job(job)
    chosen = find_step(spec, step) if spec.steps or step is not None else None
    ledger = existing_ledger(spec)
    if ledger is None:
        raise NoLedgerError(spec.name, spec.ledger_target)
    with ledger:
        if chosen is not None:
            yield from iter_results(chosen.spec, ledger, only_succeeded=only_succeeded,
                                    stored_rows=chosen.index > 0)
            return
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


def init(directory: str | os.PathLike[str] = ".", *, force: bool = False,
         name: str | None = None) -> InitReport:
    """Write a commented job config (``DIR/job.toml``) and a sample input that run as they are
    on the local server; refuses to overwrite unless ``force`` (:func:`pipeline.scaffold.init_job`)."""
    return init_job(directory, force=force, name=name)


def retry_failed(job: JobLike, *, failed: bool = True, invalid_output: bool = True,
          where: dict[str, list[str]] | None = None, run: bool = True, wait: bool = True,
          run_name: str | None = None, ledger: str | None = None,
          worker_id: str | None = None) -> RetryReport:
    """Reopen the job's failed requests (of rows matching ``where``) and — unless ``run`` is
    False — run the job to send them again (:func:`pipeline.resend.retry_job`)."""
    spec, config = _job(job)
    if ledger is not None:
        spec = with_ledger(spec, ledger)
    return anyio.run(lambda: retry_job(spec, failed=failed, invalid_output=invalid_output,
                                       where=where, run=run, wait=wait, run_name=run_name,
                                       config_path=config, worker=Worker.make(worker_id)))


def inspect(job: JobLike, key: str) -> dict[str, Any]:
    """One row's (or request's) journey: input row, request, shard, batch, attempts, result,
    error and cost (:func:`pipeline.journey.inspect_row`)."""
    return inspect_row(_job(job)[0], key)


def list_jobs(ledger: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The jobs a ledger holds, with state, counts and spend (:func:`pipeline.catalog.list_jobs`)."""
    return catalog.list_jobs(ledger)


def gc(job: JobLike, *, remote: bool = True, local: bool = True,
       older_than_s: float | None = None, dry_run: bool = False) -> GcReport:
    """Delete the job's remote and local files nothing needs any more
    (:func:`pipeline.cleanup.gc_job`)."""
    spec, _ = _job(job)
    return anyio.run(lambda: gc_job(spec, remote=remote, local=local, older_than_s=older_than_s,
                                    dry_run=dry_run))
