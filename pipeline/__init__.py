"""groqbatch: run LLM work in bulk through the Groq Batch API.

The public Python API (see :mod:`pipeline.api`)::

    import pipeline as groqbatch
    summary = groqbatch.run("configs/quickstart.toml")

Names are imported on first use, so ``import pipeline`` stays cheap and the CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "gc": "pipeline.api",
    "init": "pipeline.api",
    "inspect": "pipeline.api",
    "job_from_dict": "pipeline.api",
    "list_jobs": "pipeline.api",
    "load": "pipeline.api",
    "plan": "pipeline.api",
    "results": "pipeline.api",
    "results_frame": "pipeline.api",
    "retry_failed": "pipeline.api",
    "run": "pipeline.api",
    "run_async": "pipeline.api",
    "RunSummary": "pipeline.runner",
    "JobSpec": "jobs",
    "PlanReport": "jobs",
    "GroqClient": "pipeline.client",
    "GroqBatchError": "pipeline.errors",
    "ConfigError": "pipeline.errors",
}

__all__ = [
    "ConfigError",
    "GroqBatchError",
    "GroqClient",
    "JobSpec",
    "PlanReport",
    "RunSummary",
    "__version__",
    "gc",
    "init",
    "inspect",
    "job_from_dict",
    "list_jobs",
    "load",
    "plan",
    "results",
    "results_frame",
    "retry_failed",
    "run",
    "run_async",
]

if TYPE_CHECKING:
    from jobs import JobSpec, PlanReport
    from pipeline.api import (
        gc,
        init,
        inspect,
        job_from_dict,
        list_jobs,
        load,
        plan,
        results,
        results_frame,
        retry_failed,
        run,
        run_async,
    )
    from pipeline.client import GroqClient
    from pipeline.errors import ConfigError, GroqBatchError
    from pipeline.runner import RunSummary


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
