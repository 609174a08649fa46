"""What a job *is*: frozen pydantic models of a job config, with ``extra="forbid"``.

A config is written by hand, in TOML, YAML or JSON; :func:`jobs.load.load_job` reads it into
a :class:`JobSpec`. Paths in it are relative to the config file's folder::

    name = "enrich-products"
    backend = "groq"                      # or "local": the built-in Groq-compatible server
    model = "llama-3.1-8b-instant"        # or: adapter = "my-lora" (resolved from the ledger)

    [input]
    path = "data/products.csv"            # format by suffix: .jsonl .csv .parquet
    id_column = "sku"
    where = { lang = "en" }

    [prompt]
    system = "You write product copy."
    user = "Describe {{ title }} in one sentence."
    temperature = 0.2
    max_completion_tokens = 200
    response_format = { type = "json_schema", name = "copy", schema = { type = "object" } }

    [output]
    path = "out/products.jsonl"

``GROQ_API_KEY`` (and ``GROQ_BASE_URL``) come from the environment only; a key in a config
file is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

from jobs.evaluate import EvaluateSpec
from jobs.policy import PolicySpec, field_error
from jobs.prompt import PromptSpec

__all__ = [
    "DEFAULT_BASE_URL",
    "FORMAT_BY_SUFFIX",
    "InputSpec",
    "JobSpec",
    "LocalServerSpec",
    "OutputSpec",
]

DEFAULT_BASE_URL = "https://api.groq.com"
FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+]*://")

Scalar = str | int | float | bool | None
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
ModelId = Annotated[str, StringConstraints(pattern=r"^\S+$", max_length=256)]
DataFormat = Literal["jsonl", "csv", "parquet"]


def _format_for(path: str, given: str | None, what: str) -> str:
    if given is not None:
        return given
    fmt = FORMAT_BY_SUFFIX.get(Path(path).suffix.lower())
    if fmt is None:
        raise field_error(
            "format",
            f"cannot tell the {what} format from {path!r}; "
            f'set format = "jsonl", "csv" or "parquet"',
        )
    return fmt


class _Table(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Table):
    """``[input]``: the dataset, one request per row."""

    path: str = Field(min_length=1)
    """The data file, relative to the config file's folder."""
    format: DataFormat | None = None
    """``jsonl``, ``csv`` or ``parquet``; by default from the file's suffix. Parquet needs the
    ``groqbatch[parquet]`` extra (pyarrow)."""
    id_column: str | None = None
    """The column that identifies a row. Without it a row's key is a hash of its content."""
    on_duplicate_id: Literal["error", "first", "last"] = "error"
    """What two rows with the same ``id_column`` value mean. ``error`` (the default): the input
    is wrong, and ``validate``, ``plan`` and ``run`` stop naming both lines. ``first`` /
    ``last``: the first / last such row is the one used (compiled, exported); the others are
    left out and counted as ``duplicate_rows``. Without an ``id_column``, identical rows are
    one row and this does nothing."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N rows (after ``where``): for trial runs."""
    where: dict[str, Scalar | list[Scalar]] = {}
    """Keep only rows whose columns equal these values (a list means "any of")."""
    allow_empty: bool = Field(False, description=(
        "Whether a job with nothing to send is fine. By default an input with no rows (after "
        "`where`), or whose every row is rejected (a template naming a missing column), is an "
        "error: `validate`, `plan` and `run` exit 2. Set true for inputs that are sometimes "
        "empty (a nightly job over a day with no new rows)."))

    @model_validator(mode="after")
    def _known_format(self) -> InputSpec:
        _format_for(self.path, self.format, "input")
        return self

    @property
    def resolved_format(self) -> str:
        """``format``, or the one the file's suffix implies."""
        return _format_for(self.path, self.format, "input")

    def keeps(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` passes ``where`` (plain equality; no expressions are evaluated)."""
        for column, wanted in self.where.items():
            value = row.get(column)
            if isinstance(wanted, list):
                if value not in wanted:
                    return False
            elif value != wanted:
                return False
        return True


class OutputSpec(_Table):
    """``[output]``: where results joined to input rows are exported."""

    path: str | None = None
    """The export file, relative to the config file's folder. Default
    ``<workdir>/results.jsonl``."""
    format: DataFormat | None = None
    """``jsonl``, ``csv`` or ``parquet``; by default from the path's suffix."""

    @model_validator(mode="after")
    def _known_format(self) -> OutputSpec:
        if self.path is not None:
            _format_for(self.path, self.format, "output")
        return self


class LocalServerSpec(_Table):
    """``[local]``: how ``backend = "local"`` runs the bundled Groq-compatible server.

    With no ``base_url`` (and no ``$GROQ_BASE_URL``) the server runs in-process, keeping its
    state in ``data_dir`` so a later ``groqbatch run`` finds the same files and batches, still
    progressing on the server's clock. With a ``base_url`` the job talks to a running
    ``groqbatch serve`` instead, and these settings are that server's business.
    """

    time_scale: float = Field(3600.0, gt=0)
    """Emulated seconds per real second: 3600 lets a 24 h window pass in 24 s."""
    throughput_lines_per_s: float = Field(100.0, gt=0)
    """Batch lines the server runs per emulated second, per batch."""
    scenario: str | None = None
    """A fault scenario file (TOML, YAML or JSON), relative to the config's folder."""
    data_dir: str | None = None
    """Where the in-process server keeps its state. Default ``<workdir>/local-server``."""


class JobSpec(_Table):
    """A whole job: what to read, what to ask, how to run it, where to write."""

    name: Slug
    """The job's name: lowercase letters, digits, ``-`` and ``_``; at most 64 characters."""
    description: str | None = None
    """Free text for people."""
    backend: Literal["local", "groq"] = "groq"
    """``groq`` for the real API, ``local`` for the built-in Groq-compatible server."""
    base_url: str | None = None
    """The API's base URL. Default: ``$GROQ_BASE_URL``, else ``https://api.groq.com``."""
    give_up_after_s: float = Field(300.0, gt=0)
    """How long one endpoint of the server (``POST /files``, ``GET /batches/{id}``, …) may go
    unanswered — no HTTP answer at all, or only 5xx pages that are not JSON — before the run
    stops with exit 1, naming the server and what it answered. Any other answer (a success, a
    4xx, a 429, a JSON 5xx) restarts the clock. Nothing recorded is lost: run again when the
    server is back."""
    ledger: str | None = None
    """The ledger: a path relative to the config's folder, or a SQLAlchemy URL.
    Default ``.groqbatch/<name>.sqlite``."""
    workdir: str | None = None
    """Folder for shard files and downloads. Default ``.groqbatch/<name>/``."""
    model: ModelId | None = None
    """A Groq model id (``llama-3.1-8b-instant``) or a LoRA id (``ft:...``)."""
    adapter: str | None = None
    """The name of an uploaded LoRA adapter, looked up in the ledger. Instead of ``model``."""
    input: InputSpec
    prompt: PromptSpec
    policy: PolicySpec = PolicySpec()
    output: OutputSpec = OutputSpec()
    local: LocalServerSpec = LocalServerSpec()
    evaluate: EvaluateSpec | None = None
    """``[evaluate]``: score answers against a reference column, per run (see
    :mod:`jobs.evaluate`)."""

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    def model_post_init(self, context: Any, /) -> None:
        if isinstance(context, dict) and context.get("base_dir") is not None:
            self._base_dir = Path(context["base_dir"])

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise field_error(
                "api_key",
                "an API key does not belong in a job config; set GROQ_API_KEY in the environment",
            )
        return data

    @field_validator("base_url", mode="after")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/") if value else value

    @field_validator("adapter", mode="after")
    @classmethod
    def _adapter_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("adapter must not be empty")
        return value

    @model_validator(mode="after")
    def _one_model(self) -> JobSpec:
        if self.model is None and self.adapter is None:
            raise field_error("model", 'set either model = "<model id>" or adapter = "<name>"')
        if self.model is not None and self.adapter is not None:
            raise field_error(
                "adapter", "set model or adapter, not both (an adapter names its own model)"
            )
        return self

    # -- resolved locations (relative to the config file's folder) ----------------------

    @property
    def base_dir(self) -> Path:
        """The folder the config file was loaded from; relative paths start here."""
        return self._base_dir

    def resolve_path(self, value: str) -> Path:
        """``value`` relative to :attr:`base_dir` (``~`` expanded)."""
        path = Path(value).expanduser()
        # normpath: "configs/../out/x.jsonl" reads as "out/x.jsonl" in messages and summaries.
        return Path(os.path.normpath(path if path.is_absolute() else self._base_dir / path))

    @property
    def input_path(self) -> Path:
        return self.resolve_path(self.input.path)

    @property
    def workdir_path(self) -> Path:
        return self.resolve_path(self.workdir or f".groqbatch/{self.name}")

    @property
    def ledger_target(self) -> str:
        """A SQLAlchemy URL as written, else the absolute path of the SQLite file."""
        if self.ledger is not None and _URL_SCHEME.match(self.ledger):
            return self.ledger
        return str(self.resolve_path(self.ledger or f".groqbatch/{self.name}.sqlite"))

    @property
    def output_path(self) -> Path:
        return self.resolve_path(self.output.path or f"{self.workdir_path}/results.jsonl")

    @property
    def output_format(self) -> str:
        return _format_for(str(self.output_path), self.output.format, "output")

    @property
    def local_data_dir(self) -> Path:
        return self.resolve_path(self.local.data_dir or f"{self.workdir_path}/local-server")

    def effective_base_url(self, environ: Mapping[str, str] = os.environ) -> str:
        """``base_url``, else ``$GROQ_BASE_URL``, else Groq's public endpoint."""
        return self.base_url or environ.get("GROQ_BASE_URL") or DEFAULT_BASE_URL
