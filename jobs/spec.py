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

import hashlib
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
    ValidationInfo,
    field_validator,
    model_validator,
)

from jobs.audio import AUDIO_ENDPOINTS, AudioSpec
from jobs.evaluate import EvaluateSpec
from jobs.policy import PolicySpec, field_error
from jobs.prompt import PromptSpec
from pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_BASE_URL",
    "FORMAT_BY_SUFFIX",
    "STATE_DIR_ENV",
    "InputSpec",
    "JobSpec",
    "LocalServerSpec",
    "OutputSpec",
    "StepSpec",
    "row_matches",
    "state_root",
]

DEFAULT_BASE_URL = "https://api.groq.com"
FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+]*://")
STATE_DIR_ENV = "GROQBATCH_STATE_DIR"
"""The environment variable that moves every job's default state folder (see :func:`state_root`)."""
_LEGACY_STATE = ".groqbatch"
"""Where default ledgers and workdirs were kept before: next to the config."""

Scalar = str | int | float | bool | None
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
ModelId = Annotated[str, StringConstraints(pattern=r"^\S+$", max_length=256)]
DataFormat = Literal["jsonl", "csv", "parquet"]


def state_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder under which jobs keep their default ledger and workdir, outside any checkout:
    ``$GROQBATCH_STATE_DIR``, else ``$XDG_STATE_HOME/groqbatch``, else
    ``~/.local/state/groqbatch``."""
    explicit = environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = environ.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is to be ignored
        return Path(xdg) / "groqbatch"
    return Path.home() / ".local" / "state" / "groqbatch"


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


def row_matches(where: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """Whether ``row`` passes ``where``: each column equals its value (a list means "any of");
    plain equality, no expressions are evaluated."""
    for column, wanted in where.items():
        value = row.get(column)
        if isinstance(wanted, list):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


class InputSpec(_Table):
    """``[input]``: the dataset, one request per row."""

    path: str = Field(
        min_length=1,
        description="The input data file, relative to the config file's folder (`~` is "
        "expanded). Each row becomes one request; the file is streamed, never read whole.",
    )
    format: DataFormat | None = Field(
        default=None,
        description="`jsonl`, `csv` or `parquet`. Default: from the file's suffix (`.jsonl` or "
        "`.ndjson`, `.csv`, `.parquet`); a file with any other suffix needs it. Parquet needs "
        "the `groqbatch[parquet]` extra (pyarrow).",
    )
    id_column: str | None = Field(
        default=None,
        description="The column that identifies a row: its value is the row's key in the "
        "ledger and in exports (`groqbatch_row_key`), so a changed row is recognised as "
        "changed. Without it a row's key is a hash of its content, and an edited row is a new "
        "row.",
    )
    on_duplicate_id: Literal["error", "first", "last"] = Field(
        default="error",
        description="What two rows with the same `id_column` value mean. `error` (the "
        "default): the input is wrong, and `validate`, `plan` and `run` stop (exit 2) naming "
        "both lines. `first` / `last`: the first / last such row is the one used (compiled, "
        "exported); the others are left out and counted as `duplicate_rows`. Without an "
        "`id_column`, identical rows are one row and this does nothing.",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description="Use only the first N rows that pass `where`, for a trial run. Default: "
        "every row.",
    )
    where: dict[str, Scalar | list[Scalar]] = Field(
        default={},
        description='Keep only rows whose columns equal these values; a list means "any of" '
        '(`where = { lang = ["en", "de"] }`). Plain equality: nothing is evaluated. Default: '
        "every row is kept.",
    )
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
        return row_matches(self.where, row)


class OutputSpec(_Table):
    """``[output]``: where results joined to input rows are exported."""

    path: str | None = Field(
        default=None,
        description="Where `groqbatch export` writes the results joined to the input rows, "
        "relative to the config file's folder. Default `<workdir>/results.jsonl`. "
        "`export -o PATH` overrides it.",
    )
    format: DataFormat | None = Field(
        default=None,
        description="`jsonl`, `csv` or `parquet`. Default: from the path's suffix. "
        "`export --format` overrides it; Parquet needs the `groqbatch[parquet]` extra.",
    )
    kind: Literal["answer", "moderation"] = Field(
        default="answer",
        description=(
            "`answer` (the default): the answer as the model gives it, parsed by "
            "`[prompt].response_format` if it has one. `moderation`: a Llama Guard verdict "
            "(`safe`, or `unsafe` and category codes on the next line), parsed into the "
            "columns `safe` (bool), `categories` (codes, S1 … S14) and `category_names` "
            "(the docs' taxonomy); an answer of another shape is an invalid output."
        ),
    )

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

    time_scale: float = Field(
        3600.0,
        gt=0,
        description="Emulated seconds per real second on the in-process server's virtual "
        "clock: the default 3600 lets a `24h` completion window pass in 24 real seconds. Only "
        "for `backend = \"local\"` without a `base_url`.",
    )
    throughput_lines_per_s: float = Field(
        100.0,
        gt=0,
        description="Batch lines the in-process server answers per emulated second, in each "
        "batch (at the default `time_scale`, 100 is 360,000 lines per real second). Lower it "
        "to watch batches progress or to make them expire. Only for `backend = \"local\"` "
        "without a `base_url`.",
    )
    scenario: str | None = Field(
        default=None,
        description="A fault scenario file (TOML, YAML or JSON; see the local server page), "
        "relative to the config's folder: errors, storms, expiry, broken lines and downloads "
        "the in-process server then produces, seeded. Default: no faults. Only for "
        "`backend = \"local\"` without a `base_url`.",
    )
    data_dir: str | None = Field(
        default=None,
        description="Where the in-process server keeps its files, batches, adapters and "
        "clock, so a later `groqbatch run` finds them, still progressing. Relative to the "
        "config's folder. Default `<workdir>/local-server`.",
    )


class StepSpec(_Table):
    """``[[steps]]``: one step of a multi-step job — a job of its own whose input rows are the
    previous step's results (see :mod:`jobs.steps`)."""

    name: Slug = Field(description="The step's name (lowercase letters, digits, `-`, `_`), "
                       "unique in the job: `export --step NAME` and `status` use it.")
    description: str | None = Field(default=None, description="Free text for people.")
    model: ModelId | None = Field(default=None, description="This step's model; default: the "
                                  "job's `model` (or `adapter`).")
    adapter: str | None = Field(default=None, description="An uploaded LoRA adapter's name for "
                                "this step, instead of `model`.")
    prompt: PromptSpec = Field(description="`[steps.prompt]`: this step's messages and "
                               "parameters, templates over its input row (see `[prompt]`).")
    where: dict[str, Scalar | list[Scalar]] = Field(
        default={},
        description="Keep only the previous step's results whose columns (input columns, "
        "parsed fields, `answer`) equal these values; a list means \"any of\". Not on the "
        "first step: filter the input with `[input].where`.",
    )
    policy: PolicySpec | None = Field(
        default=None,
        description="`[steps.policy]`: the keys set here replace the job's `[policy]` keys for "
        "this step (a sub-table such as `[steps.policy.fallback]` replaces that whole table); "
        "the others are inherited.",
    )
    output: OutputSpec | None = Field(
        default=None,
        description="`[steps.output]`: where `export --step NAME` writes this step. Default: "
        "the job's `[output]` for the last step, `<output>.<step><suffix>` for the others.",
    )

    @model_validator(mode="after")
    def _one_model(self) -> StepSpec:
        if self.model is not None and self.adapter is not None:
            raise field_error("adapter", "set model or adapter, not both")
        return self


class JobSpec(_Table):
    """A whole job: what to read, what to ask, how to run it, where to write."""

    name: Slug = Field(
        description="The job's name: lowercase letters, digits, `-` and `_`, starting with a "
        "letter or digit; at most 64 characters. It names the job in the ledger, the default "
        "ledger file and work folder, and the batches' `groqbatch_job` metadata."
    )
    description: str | None = Field(
        default=None, description="Free text for people; groqbatch does nothing with it."
    )
    backend: Literal["local", "groq"] = Field(
        default="groq",
        description="`groq`: Groq's API, with the key from `$GROQ_API_KEY` (required). "
        "`local`: the bundled Groq-compatible server — in-process (no port, state in "
        "`[local].data_dir`) unless a `base_url` names a running `groqbatch serve`.",
    )
    base_url: str | None = Field(
        default=None,
        description="The API's base URL (http or https). Default: `$GROQ_BASE_URL`, else "
        "`https://api.groq.com`. A URL with no path means Groq's `/openai/v1`; one with a path "
        "is the API root, as the official SDKs read it.",
    )
    give_up_after_s: float = Field(
        300.0,
        gt=0,
        description="Seconds one endpoint of the server (`POST /files`, "
        "`GET /batches/{id}`, …) may go unanswered — no HTTP answer at all, or only 5xx pages "
        "that are not JSON — before the run stops with exit 1, naming the server and what it "
        "answered. Any other answer (a success, a 4xx, a 429, a JSON 5xx) restarts the clock. "
        "Nothing recorded is lost: run again when the server is back.",
    )
    ledger: str | None = Field(
        default=None,
        description="The ledger: a SQLite file path relative to the config's folder, or a "
        "SQLAlchemy URL (`postgresql+psycopg://…` for many workers). Default "
        "`<state dir>/<name>.sqlite` (the state dir: `$GROQBATCH_STATE_DIR`, else "
        "`$XDG_STATE_HOME/groqbatch`, else `~/.local/state/groqbatch`, then one folder per "
        "config folder). `--ledger` and `$GROQBATCH_LEDGER` override it.",
    )
    workdir: str | None = Field(
        default=None,
        description="Folder for shard files, downloads and (by default) the in-process "
        "server's state, relative to the config's folder. Default `<state dir>/<name>/` "
        "(see `ledger`).",
    )
    model: ModelId | None = Field(
        default=None,
        description="The model every request names: a Groq model id "
        "(`llama-3.1-8b-instant`) or a LoRA model id (`ft:…`). Give exactly one of `model` "
        "and `adapter`.",
    )
    adapter: str | None = Field(
        default=None,
        description="The name of a LoRA adapter uploaded with `groqbatch adapters upload`, "
        "resolved to its `ft:` model id from this job's ledger (never from the API); an "
        "unknown or deleted one fails `validate`, `plan` and `run` with exit 2. Instead of "
        "`model`.",
    )
    input: InputSpec = Field(description="`[input]`: the dataset, one request per row.")
    prompt: PromptSpec | None = Field(
        default=None,
        description="`[prompt]`: the message templates and the request parameters sent "
        "with them — of a chat job (every job but an audio one). A job with `[[steps]]` has "
        "none: each step has its own.",
    )
    steps: tuple[StepSpec, ...] = Field(
        default=(),
        description="`[[steps]]`: a multi-step job — each step a job of its own whose input is "
        "the previous step's results (the first step's is `[input]`). Instead of `[prompt]`.",
    )
    policy: PolicySpec = Field(
        default=PolicySpec(),
        description="`[policy]`: how the job runs — window, shard sizes, polling, deadline, "
        "caching, fallback and budget.",
    )
    output: OutputSpec = Field(
        default=OutputSpec(), description="`[output]`: where `groqbatch export` writes."
    )
    local: LocalServerSpec = Field(
        default=LocalServerSpec(),
        description="`[local]`: the in-process local server of a `backend = \"local\"` job.",
    )
    evaluate: EvaluateSpec | None = Field(
        default=None,
        description="`[evaluate]`: score each run's answers against a reference column of "
        "the input. Default: no scoring.",
    )

    endpoint: Literal[
        "/v1/chat/completions", "/v1/audio/transcriptions", "/v1/audio/translations"
    ] = Field(
        default="/v1/chat/completions",
        description="The API endpoint each request goes to: chat completions (with `[prompt]`), "
        "or audio transcriptions / translations (with `[audio]`).",
    )
    audio: AudioSpec | None = Field(
        default=None,
        description="`[audio]`: the request of an audio job (`url` template, `language`, "
        "`prompt`, `response_format`, `temperature`, `timestamp_granularities`).",
    )

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
    def _moderation_is_text(self) -> JobSpec:
        if (self.output.kind == "moderation" and self.prompt is not None
                and self.prompt.response_format is not None):
            raise field_error("prompt.response_format", 'output kind "moderation" parses plain '
                              "text verdicts; leave response_format out")
        return self

    @model_validator(mode="after")
    def _prompt_or_steps(self) -> JobSpec:
        if not self.steps:
            return self  # [prompt] or [audio]: see _endpoint_tables
        if self.endpoint in AUDIO_ENDPOINTS:
            raise field_error("steps", "[[steps]] are chat jobs; an audio job has none")
        if self.prompt is not None:
            raise field_error("prompt", "a job with [[steps]] has no top-level [prompt]: each "
                              "step has its own [steps.prompt]")
        if self.evaluate is not None:
            raise field_error("evaluate", "[evaluate] is not supported with [[steps]]")
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise field_error("steps", f"two steps are named {step.name!r}; step names "
                                  "must be unique")
            seen.add(step.name)
        if self.steps[0].where:
            raise field_error("steps", f"the first step ({self.steps[0].name!r}) reads [input]: "
                              "filter it with [input].where, not steps.where")
        return self

    @property
    def prompt_spec(self) -> PromptSpec:
        """The job's ``[prompt]``; a job with ``[[steps]]`` has one per step instead (compile
        each step's own spec, :func:`jobs.steps.job_steps`)."""
        if self.prompt is None:
            raise ConfigError(f"job {self.name!r} has [[steps]]: each step has its own prompt",
                              field="prompt")
        return self.prompt

    @model_validator(mode="after")
    def _one_model(self) -> JobSpec:
        if self.model is None and self.adapter is None:
            raise field_error("model", 'set either model = "<model id>" or adapter = "<name>"')
        if self.model is not None and self.adapter is not None:
            raise field_error(
                "adapter", "set model or adapter, not both (an adapter names its own model)"
            )
        return self

    @field_validator("audio", mode="after")
    @classmethod
    def _audio_fields(cls, value: AudioSpec | None, info: ValidationInfo) -> AudioSpec | None:
        endpoint = info.data.get("endpoint")
        if value is not None and isinstance(endpoint, str) and endpoint in AUDIO_ENDPOINTS:
            value.check_fields(endpoint)
        return value

    @model_validator(mode="after")
    def _endpoint_tables(self) -> JobSpec:
        if self.endpoint in AUDIO_ENDPOINTS:
            if self.audio is None:
                raise field_error("audio", f"endpoint {self.endpoint} needs an [audio] table")
            if self.prompt is not None:
                raise field_error("prompt", "an audio job has [audio], not [prompt]")
            if self.adapter is not None:
                raise field_error("adapter", "LoRA adapters are for chat models, not audio")
            self.audio.check_model(self.endpoint, self.model)
        else:
            if self.audio is not None:
                raise field_error("audio", 'set endpoint = "/v1/audio/transcriptions" (or '
                                  '"/v1/audio/translations") to use [audio]')
            if self.prompt is None and not self.steps:
                raise field_error("prompt", "a job needs a [prompt] table with user = \"...\" "
                                  "(or [[steps]], each with its own [steps.prompt])")
        return self

    @property
    def chat_prompt(self) -> PromptSpec:
        """``[prompt]`` of a chat job (raises for an audio job, which has none)."""
        if self.prompt is None:
            raise ValueError(f"job {self.name!r} is an audio job: it has no [prompt]")
        return self.prompt

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
    def state_dir(self) -> Path:
        """The folder of the job's default ledger and workdir: one per config folder, under
        :func:`state_root`, named by the folder's name and a hash of its resolved path
        (``~/.local/state/groqbatch/configs-1a2b3c4d5e/``). So state never lands in the
        config's folder (a checkout), and the same config finds the same ledger from any
        working directory. A ledger left by an earlier version at ``<config folder>/.groqbatch/
        <name>.sqlite`` is still found there, with its workdir, and used in place."""
        legacy = self._base_dir / _LEGACY_STATE
        if (legacy / f"{self.name}.sqlite").is_file():
            return Path(os.path.normpath(legacy))
        folder = self._base_dir.resolve()
        digest = hashlib.blake2b(str(folder).encode(), digest_size=5).hexdigest()
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name)[:40] or "root"
        return state_root() / f"{label}-{digest}"

    @property
    def workdir_path(self) -> Path:
        if self.workdir is not None:
            return self.resolve_path(self.workdir)
        return self.state_dir / self.name

    @property
    def ledger_target(self) -> str:
        """A SQLAlchemy URL as written, else the absolute path of the SQLite file."""
        if self.ledger is not None and _URL_SCHEME.match(self.ledger):
            return self.ledger
        if self.ledger is not None:
            return str(self.resolve_path(self.ledger))
        return str(self.state_dir / f"{self.name}.sqlite")

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
