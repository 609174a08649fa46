"""Init: a commented job config and a tiny sample input that run as they are
(``groqbatch init [DIR]``).

    report = init_job(Path("my-job"))
    # then: groqbatch run my-job/job.toml

The config runs on the bundled local server in-process (``backend = "local"``): no key, no
network. Changing ``backend`` to ``"groq"`` (with ``GROQ_API_KEY`` set) runs the same job on
Groq. Existing files are never overwritten unless ``force`` is given.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, os_error_reason

__all__ = ["CONFIG_NAME", "SAMPLE_PATH", "InitReport", "init_job"]

CONFIG_NAME = "job.toml"
SAMPLE_PATH = "data/sample.jsonl"

_SAMPLE_ROWS = (
    '{"id": "r1", "text": "The checkout page times out when I pay with a card.", "lang": "en"}',
    '{"id": "r2", "text": "Please add a dark mode to the mobile app.", "lang": "en"}',
    '{"id": "r3", "text": "I was charged twice for my March invoice.", "lang": "en"}',
    '{"id": "r4", "text": "How do I change the email address on my account?", "lang": "en"}',
    '{"id": "r5", "text": "Exporting a report to CSV crashes the desktop app.", "lang": "en"}',
)

_CONFIG = '''\
# A groqbatch job: every row of the input becomes one request, sent through the Groq Batch API.
#
#   groqbatch validate {config}   # check this file and every input row; spends nothing
#   groqbatch plan {config}       # what a run would send and cost
#   groqbatch run {config}        # run it (run again at any time: it resumes)
#   groqbatch export {config}     # results joined to the input rows
#
# Paths are relative to this file's folder. Every key is described in the configuration
# reference of the documentation.

name = "{name}"                  # lowercase letters, digits, - and _
description = "Sort short customer messages by topic."

# "local" runs the bundled Groq-compatible server in this process: no key, no network.
# Set backend = "groq" (and GROQ_API_KEY in the environment) to run on Groq.
backend = "local"
model = "llama-3.1-8b-instant"

[input]
path = "{sample}"      # .jsonl, .csv or .parquet
id_column = "id"                 # a row's key in the ledger; without it, a hash of the row
# where = {{ lang = "en" }}        # only rows whose columns equal these values
# limit = 100                    # only the first N rows, for a trial run

[prompt]
system = "You sort customer messages. Answer with JSON only."
user = """Message {{{{ id }}}}: {{{{ text }}}}

Reply with {{"topic": one of billing|bug|account|feature}}."""
temperature = 0.0
max_completion_tokens = 256      # room for the whole answer: a cut-off one is an invalid output
response_format = "json_object"  # or a JSON schema: {{ type = "json_schema", ... }}

[policy]
completion_window = "24h"        # how long Groq may take: 24h to 7d
poll_interval_min_s = 0.2        # quick polling for a small job; the default is 5 s
poll_interval_max_s = 2.0

# [policy.fallback]              # what the batch path leaves undone goes through flex calls
# triggers = ["expired", "missing", "retryable_errors", "deadline"]

# [policy.budget]                # stop sending once any of these is spent
# max_dollars = 1.00

[output]
path = "out/results.jsonl"       # where `groqbatch export` writes
'''


@dataclass(slots=True)
class InitReport:
    """The files ``init`` wrote. ``as_dict()`` is JSON-ready."""

    directory: str
    job: str
    config: str
    input: str
    written: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    next: list[str] = field(default_factory=list)
    """The commands to try next."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_name_for(directory: Path) -> str:
    """A job name from the folder's name (lowercase, ``-`` for anything else), else ``my-job``."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", directory.resolve().name.lower()).strip("-_")[:64]
    return slug if slug and slug[0].isalnum() else "my-job"


def init_job(directory: str | os.PathLike[str] = ".", *, force: bool = False,
             name: str | None = None) -> InitReport:
    """Write ``DIR/job.toml`` (commented) and ``DIR/data/sample.jsonl`` (five rows).

    Refuses, before writing anything, when either file exists, unless ``force``. Raises
    :class:`ConfigError` (exit 2) naming the file.
    """
    folder = Path(directory)
    job = name or job_name_for(folder)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", job):
        raise ConfigError(f"{job!r} is not a job name: lowercase letters, digits, - and _, "
                          "at most 64 characters", field="name")
    config, sample = folder / CONFIG_NAME, folder / SAMPLE_PATH
    files = {config: _CONFIG.format(name=job, sample=SAMPLE_PATH, config=config),
             sample: "\n".join(_SAMPLE_ROWS) + "\n"}
    existing = [path for path in files if path.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} already exists; nothing was written",
                          hint="give --force to overwrite it")
    report = InitReport(directory=str(folder), job=job, config=str(config), input=str(sample),
                        next=[f"groqbatch validate {config}", f"groqbatch run {config}",
                              f"groqbatch export {config}"])
    for path, text in files.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {os_error_reason(exc, path)}") from exc
        (report.overwritten if path in existing else report.written).append(str(path))
    return report
