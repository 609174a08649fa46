"""Settings of the local server, and the fault scenario it plays.

:class:`EmulatorConfig` is fixed for the life of a server (CLI flags of ``groqbatch serve``).
:class:`Scenario` is what can go wrong, loaded from ``--scenario FILE`` (TOML, YAML or JSON)
or replaced at run time through ``POST /_emulator/scenario``. Every fault is one the real
service can show, and every random choice is seeded, so a scenario replays the same way.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_API_KEY = "gsk_local_emulator_key"
DEFAULT_ORG = "org_01localemulator000000000"

ChatEndpoint = Literal["chat", "files", "batches", "models", "fine_tunings", "content"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimit(_Frozen):
    """Limits of one model on one service tier, each enforced on its own; None is unlimited.

    Groq's headers report two of them: ``x-ratelimit-*-requests`` the requests per day,
    ``x-ratelimit-*-tokens`` the tokens per minute. The others show only as a 429."""

    requests_per_minute: int | None = Field(None, gt=0, description="Requests per minute (RPM).")
    requests_per_day: int | None = Field(None, gt=0, description="Requests per day (RPD).")
    tokens_per_minute: int | None = Field(None, gt=0, description="Tokens per minute (TPM).")
    tokens_per_day: int | None = Field(None, gt=0, description="Tokens per day (TPD).")

    def scaled(self, factor: int) -> RateLimit:
        """Every limit ``factor`` times larger."""
        return RateLimit(**{name: None if value is None else value * factor
                            for name, value in self.model_dump().items()})


class Storm(_Frozen):
    """A window of emulated time in which a share of chat calls fail with ``status``."""

    status: Literal[429, 498, 500, 502, 503]
    start_s: float = 0.0
    """Seconds after the server started (emulated time)."""
    duration_s: float = float("inf")
    rate: float = Field(1.0, ge=0.0, le=1.0)
    tier: Literal["flex", "on_demand", "auto", "performance", "any"] = "any"
    retry_after_s: float | None = None
    """For 429: the ``retry-after`` header sent back (whole seconds, at least 1; 1 when None)."""
    should_retry: bool | None = None
    """Send ``x-should-retry: true|false`` (overrides the SDKs' retry rules); None sends none."""


class BatchFaults(_Frozen):
    """What goes wrong with batches."""

    expire_after_fraction: float | None = Field(None, ge=0.0, le=1.0)
    """Expire every batch once this share of its lines has run (partial output)."""
    fail_validation: bool = False
    """Fail every batch at validation (``errors.data[]`` names a reason)."""
    duplicate_line_rate: float = Field(0.0, ge=0.0, le=1.0)
    missing_line_rate: float = Field(0.0, ge=0.0, le=1.0)
    garbled_line_rate: float = Field(0.0, ge=0.0, le=1.0)
    line_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of lines answered with a 5xx inside the batch (a retryable error line)."""
    line_error_status: int = 500
    empty_error_file_object: bool = False
    """Groq's quirk: ``"error_file_id": {}`` on a batch with no errors."""
    string_body_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of answered lines whose ``response.body`` is a JSON *string* holding the
    completion, as one open-source batch server writes it."""
    null_body_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of answered lines written ``status_code: 200`` with ``body: null`` — not an
    answer, whatever the status says."""


class DownloadFaults(_Frozen):
    """What goes wrong with ``GET /files/{id}/content``."""

    truncate_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of downloads cut short (the body ends before ``content-length``)."""
    truncate_at_fraction: float = Field(0.5, ge=0.0, lt=1.0)
    drop_connection_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of downloads whose connection drops before any byte."""


class ServerQuirks(_Frozen):
    """Odd but real behaviours of other OpenAI-compatible batch servers, on demand."""

    list_files: bool = True
    """False: ``GET /files`` answers 405, as on servers that have no file listing."""
    cancel_settled_status: int = Field(400, ge=400, le=499)
    """What cancelling a batch that already settled answers (Groq/ours: 400; others: 409)."""
    throttle_rates: dict[ChatEndpoint, float] = Field(default_factory=dict)
    """Per endpoint, the share of calls answered 429 with ``retry-after: 1``."""


class Scenario(_Frozen):
    """A seeded set of faults. The empty scenario is a healthy server."""

    seed: int = 0
    error_rates: dict[ChatEndpoint, float] = Field(default_factory=dict)
    """Per endpoint, the share of calls answered with a 500 (Groq's error body)."""
    drop_connection_rates: dict[ChatEndpoint, float] = Field(default_factory=dict)
    """Per endpoint, the share of calls whose connection drops with no answer."""
    storms: tuple[Storm, ...] = ()
    flex_capacity: int | None = None
    """Concurrent flex requests the server takes before answering 498; None is unlimited."""
    batch: BatchFaults = BatchFaults()
    downloads: DownloadFaults = DownloadFaults()
    quirks: ServerQuirks = ServerQuirks()


class EmulatorConfig(_Frozen):
    """Fixed settings of one server."""

    api_key: str = DEFAULT_API_KEY
    organization: str = DEFAULT_ORG
    time_scale: float = Field(1.0, gt=0)
    """Emulated seconds per real second."""
    throughput_lines_per_s: float = Field(100.0, gt=0)
    """Batch lines processed per emulated second, per batch."""
    validation_s: float = Field(2.0, ge=0)
    """Emulated seconds a batch spends in ``validating``."""
    finalizing_s: float = Field(2.0, ge=0)
    cancelling_s: float = Field(5.0, ge=0)
    max_file_lines: int = Field(50_000, gt=0)
    max_file_bytes: int = Field(100 * 1024 * 1024, gt=0)
    count_unrun_as_failed: bool = True
    """Whether expired/cancelled lines that never ran count in ``request_counts.failed``."""
    chat_latency_s: float = Field(0.0, ge=0)
    """Real seconds each chat completion takes (to give flex capacity something to fill)."""
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    """Keyed ``"<model>"`` or ``"<model>@<tier>"``; a model with no entry follows
    ``rate_limit_plan``."""
    rate_limit_plan: Literal["unlimited", "free"] = Field(
        "unlimited",
        description="Limits of a model with no entry in ``rate_limits``: ``unlimited``, or "
                    "``free`` — the table on Groq's Rate Limits page (RPM, RPD, TPM, TPD per "
                    "model), ten times larger on the flex tier (\"10x higher rate limits\").")
    data_dir: Path | None = None
    """Where the server keeps its state (file contents, and metadata in ``emulator.sqlite3``),
    so that a server started again on it carries on (see :mod:`.persist`); a temporary
    directory, gone with the server, when None."""
    scenario: Scenario = Scenario()


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file (``.toml``, ``.yaml``/``.yml`` or ``.json``)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{file}: cannot read scenario: {exc.strerror}") from exc
    try:
        if file.suffix == ".toml":
            raw = tomllib.loads(text)
        elif file.suffix in {".yaml", ".yml"}:
            raw = yaml.safe_load(text) or {}
        else:
            raw = json.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: not a valid scenario file: {exc}") from exc
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"{file}: {problems}") from exc
