"""Plan a job from its config: what a run would send and cost, spending nothing.

The real ledger is only read (and only if it already exists): a dry run creates no files.
"""

from __future__ import annotations

from pathlib import Path

from jobs import JobSpec, PlanReport, load_job, plan_job
from jobs.plan_steps import plan_steps
from jobs.steps import job_steps
from state import Ledger

from .errors import ConfigError


def existing_ledger(spec: JobSpec) -> Ledger | None:
    """The job's ledger if it exists already; a SQLAlchemy URL is always opened."""
    target = spec.ledger_target
    if "://" not in target and not Path(target).exists():
        return None
    return Ledger.open(target)


def resolve_model(spec: JobSpec, ledger: Ledger | None, *, config: str | Path | None = None) -> str:
    """The model id requests go to: ``model``, or the ``ft:`` id of the named adapter."""
    if spec.model is not None:
        return spec.model
    assert spec.adapter is not None  # the spec guarantees one of the two
    model = ledger.adapter_model(spec.adapter) if ledger is not None else None
    if model is None:
        earlier = ledger.adapter(spec.adapter) if ledger is not None else None
        why = ("it was deleted" if earlier is not None and earlier.deleted_at is not None
               else "the ledger has no live adapter by that name")
        raise ConfigError(
            f"unknown adapter {spec.adapter!r}: {why}",
            path=config,
            field="adapter",
            hint="register it with `groqbatch adapters upload ZIP --name NAME`",
        )
    return model


def resolve_job_model(spec: JobSpec, *, config: str | Path | None = None) -> str:
    """:func:`resolve_model` against the job's own ledger, read only if the job names an adapter
    (and only if it exists): an unknown or deleted adapter is a ConfigError, spending nothing."""
    if spec.model is not None:
        return spec.model
    ledger = existing_ledger(spec)
    try:
        return resolve_model(spec, ledger, config=config)
    finally:
        if ledger is not None:
            ledger.close()


def plan_config(config: JobSpec | str | Path, *, refresh: bool = False,
                config_path: str | Path | None = None) -> PlanReport:
    """Plan a job given as a loaded spec or a config path (the CLI's and the API's plan).

    Refuses (exit 2) what no run could do: a missing input file, a model the backend does not
    serve (:func:`~pipeline.preflight.check_model`; a server that cannot be asked is a
    warning), an input with nothing to send (unless ``[input] allow_empty``).
    ``config_path`` names the config file in errors when ``config`` is a loaded spec."""
    from .preflight import check_model, require_input, require_requests, run_sync

    spec, path = (config, config_path) if isinstance(config, JobSpec) else (load_job(config), config)
    require_input(spec, path)
    ledger = existing_ledger(spec)
    try:
        if spec.steps:
            models = {step.job: resolve_model(step.spec, ledger, config=path)
                      for step in job_steps(spec)}
            warnings = [w for step in job_steps(spec)
                        for w in run_sync(check_model, step.spec, models[step.job], path)]
            plan = plan_steps(spec, ledger, refresh=refresh, models=models)
        else:
            model = resolve_model(spec, ledger, config=path)
            warnings = run_sync(check_model, spec, model, path)
            plan = plan_job(spec, ledger, refresh=refresh, model=model)
    finally:
        if ledger is not None:
            ledger.close()
    report = plan.compile
    first = plan.rejections[0] if plan.rejections else None
    require_requests(spec, path, rows=report.rows, ok=report.ok, rejected=report.rejected,
                     example=None if first is None else
                     f"row {first['row_key']} (#{first['row_index']}): {first['reason']}")
    plan.warnings[:0] = warnings
    return plan
