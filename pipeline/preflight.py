"""Checks made before anything is spent or recorded: `validate`, `plan` and `run` share them.

- :func:`require_input` — the input file exists (else exit 2 naming ``input.path`` and its
  line in the config);
- :func:`check_model` — the model is one the backend serves: asked of the server
  (``GET /models``) when it answers, of the bundled server's catalogue for an in-process
  ``backend = "local"`` (without starting it). An unknown model is exit 2 naming the config's
  ``model`` line; a server that cannot be asked is a warning, never a failure;
- :func:`require_requests` — some row becomes a request (else exit 2, unless
  ``[input] allow_empty = true``).

``ft:`` models (LoRA adapters) are checked by their base model: Groq's model list may or may
not show an organisation's adapters, so an ``ft:`` id missing from the list is a warning, while
an unknown base model is an error.
"""

from __future__ import annotations

import asyncio
import difflib
import os
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

from jobs import JobSpec
from jobs.load import config_error_at

from .errors import APIError, GroqBatchError, InputError
from .retry import NO_RETRY

__all__ = ["MODEL_CHECK_TIMEOUT_S", "check_model", "known_models", "require_input",
           "require_requests", "run_sync"]

T = TypeVar("T")

MODEL_CHECK_TIMEOUT_S = 15.0
"""How long ``GET /models`` may take before the check is skipped with a warning."""


def require_input(spec: JobSpec, config: str | os.PathLike[str] | None) -> None:
    """The input file exists and is a file; else :class:`InputError` at ``input.path``."""
    path = spec.input_path
    if path.is_file():
        return
    what = "is a folder, not a file" if path.is_dir() else "not found"
    raise config_error_at(config, "input.path", f"input file {path} {what}", error=InputError)


def require_requests(spec: JobSpec, config: str | os.PathLike[str] | None, *, rows: int,
                     ok: int, rejected: int, example: str | None = None) -> None:
    """Refuse a job whose input has no rows, or whose every row is rejected, unless
    ``[input] allow_empty`` says that is fine."""
    if spec.input.allow_empty or ok:
        return
    if rows == 0:
        why = "the input has no rows" + (" that pass [input].where" if spec.input.where else "")
    else:
        why = (f"every row is rejected ({rejected:,} of {rows:,}), nothing would be sent"
               + (f"; first: {example}" if example else ""))
    raise config_error_at(config, "input.allow_empty" if rows == 0 else "prompt", why,
                          hint="set [input] allow_empty = true if that is expected",
                          error=InputError)


def known_models(spec: JobSpec) -> frozenset[str] | None:
    """The model ids of the bundled server, when the job runs it in-process — its base models
    and the adapters registered in its ``data_dir`` — read without starting it; else None (ask
    the server)."""
    if spec.backend != "local" or spec.base_url or os.environ.get("GROQ_BASE_URL"):
        return None
    from .emulator.models import BASE_MODELS
    from .emulator.persist import saved_adapter_models

    return (frozenset(model.id for model in BASE_MODELS)
            | saved_adapter_models(spec.local_data_dir))


async def _served_models(spec: JobSpec) -> frozenset[str]:
    from .backend import open_client

    with anyio.fail_after(MODEL_CHECK_TIMEOUT_S):
        async with open_client(spec, retry=NO_RETRY) as client:
            return frozenset(str(m.get("id")) for m in await client.list_models())


async def check_model(spec: JobSpec, model: str, config: str | os.PathLike[str] | None) -> list[str]:
    """Refuse (ConfigError at ``model``) a model the backend does not serve; return warnings
    (the server could not be asked, an ``ft:`` id it does not list)."""
    served = known_models(spec)
    where = "the local server"
    if served is None:
        from .backend import describe_backend

        where = describe_backend(spec)
        try:
            served = await _served_models(spec)
        except (GroqBatchError, OSError, TimeoutError) as exc:
            why = exc.message if isinstance(exc, GroqBatchError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, APIError) and exc.status_code == 404:
                why = "it has no GET /models"
            return [f"model {model!r} not checked: could not list the models of {where} ({why})"]
    base = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 2 else model
    if model in served:
        return []
    key = "adapter" if spec.model is None else "model"
    if base != model and base in served:
        if known_models(spec) is not None:  # the local server knows every adapter it has
            raise config_error_at(config, key, f"unknown model {model!r}: {where} has no such "
                                  "adapter", hint="register one with `groqbatch adapters upload "
                                  "ZIP --name NAME --config CONFIG`")
        return [f"model {model!r} is not in the model list of {where}; its base model {base!r} is"]
    raise config_error_at(config, key, f"unknown model {base!r}: {where} does not serve it",
                          hint=_suggest(base, served))


def run_sync(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run(func, *args)`` for sync callers (``plan``, the API's ``plan``), also when
    called from inside an event loop (a notebook, an async test): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(func, *args)
    with ThreadPoolExecutor(1, thread_name_prefix="groqbatch-preflight") as pool:
        return pool.submit(anyio.run, func, *args).result()


def _suggest(model: str, served: Iterable[str]) -> str:
    names = sorted(served)
    close = difflib.get_close_matches(model, names, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    shown = ", ".join(names[:6]) + (f", … ({len(names)} in all)" if len(names) > 6 else "")
    return f"models served: {shown}"

