"""Where a job's API calls go: Groq, a running local server, or one started in-process.

    async with open_client(spec) as client:
        await client.get_batches(ids)

The three cases, by ``backend`` and ``base_url`` (else ``$GROQ_BASE_URL``):

- ``groq``: Groq's API with ``$GROQ_API_KEY`` (required).
- ``local`` with a base URL: a running ``groqbatch serve``, with ``$GROQ_API_KEY`` if set,
  else the local server's default key.
- ``local`` without one: the bundled server in this process (no port), its state kept in the
  job's ``[local].data_dir`` so the next run finds the same files and batches.

Every client gives up on an endpoint left unanswered for the job's ``give_up_after_s``
(:class:`~pipeline.client.ServerHealth`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from jobs import JobSpec

from .client import GroqClient
from .errors import ConfigError
from .retry import RetryPolicy

IN_PROCESS_URL = "http://groqbatch-local"


def describe_backend(spec: JobSpec) -> str:
    """Where the job's calls go, for people (never with a key)."""
    if spec.backend == "groq":
        return spec.effective_base_url()
    url = spec.base_url or os.environ.get("GROQ_BASE_URL")
    return url if url else f"the local server, in-process ({spec.local_data_dir})"


@asynccontextmanager
async def open_client(spec: JobSpec, *, retry: RetryPolicy | None = None) -> AsyncIterator[GroqClient]:
    if spec.backend == "groq":
        async with GroqClient.from_env(spec.effective_base_url(), retry=retry,
                                       give_up_after_s=spec.give_up_after_s) as client:
            yield client
        return
    from .emulator.config import DEFAULT_API_KEY

    url = spec.base_url or os.environ.get("GROQ_BASE_URL")
    api_key = os.environ.get("GROQ_API_KEY") or DEFAULT_API_KEY
    if url:
        async with GroqClient(url, api_key, retry=retry,
                              give_up_after_s=spec.give_up_after_s) as client:
            yield client
        return
    async with _in_process_client(spec, retry) as client:
        yield client


@asynccontextmanager
async def _in_process_client(spec: JobSpec, retry: RetryPolicy | None) -> AsyncIterator[GroqClient]:
    from .emulator import Emulator, EmulatorConfig, create_app, load_scenario
    from .emulator.config import DEFAULT_API_KEY, Scenario

    scenario = Scenario()
    if spec.local.scenario is not None:
        path = spec.resolve_path(spec.local.scenario)
        try:
            scenario = load_scenario(path)
        except ValueError as exc:
            raise ConfigError(str(exc), field="local.scenario") from None
    config = EmulatorConfig(
        time_scale=spec.local.time_scale,
        throughput_lines_per_s=spec.local.throughput_lines_per_s,
        data_dir=spec.local_data_dir,
        scenario=scenario,
    )
    emulator = Emulator(config)
    try:
        # raise_app_exceptions=False: a fault that drops the connection reaches us as a
        # broken answer (as over a socket), not as the server's own exception.
        transport = httpx.ASGITransport(app=create_app(emulator=emulator), raise_app_exceptions=False)
        async with GroqClient(IN_PROCESS_URL, DEFAULT_API_KEY, transport=transport, retry=retry,
                              give_up_after_s=spec.give_up_after_s) as client:
            yield client
    finally:
        emulator.close()
