"""Multi-step jobs: ``[[steps]]``, each a job of its own whose input is the previous step's results.

    name = "triage"
    model = "llama-3.1-8b-instant"       # inherited by steps that do not name their own
    [input]
    path = "data/tickets.jsonl"
    id_column = "id"

    [[steps]]
    name = "classify"                    # reads [input]
    [steps.prompt]
    user = "Classify: {{ text }}"
    response_format = { type = "json_schema", name = "c", schema = { ... topic ... } }

    [[steps]]
    name = "summarise"                   # reads classify's results
    where = { topic = "bug" }
    [steps.prompt]
    user = "Summarise this {{ topic }}: {{ text }}"

**A step is a job of its own** (:func:`job_steps`): in the ledger it is the job
``<job>.<step>``, with its own rows, requests and shards, so everything a job does — claims,
crash-exact submission, reconcile, the fallback, the budget — a step does the same way. What a
step does not set it inherits from the job: the model (or adapter), the backend, ledger,
workdir and local server, and each ``[policy]`` key it does not set (``[steps.policy]`` keys
replace the job's one by one; a sub-table replaces that whole sub-table). The prompt is always
the step's own.

**A step's input rows** are the previous step's answered rows, each the previous step's input
row, then its parsed fields (an output schema's properties, or a ``json_object``'s keys;
replacing columns of the same name), then ``answer`` (the message content), kept when they
pass the step's ``where``. A row keeps its key along the chain. Rows whose request failed, or
that were rejected, go no further: a step's failures never hold back the rows that succeeded.

**Feeding** (:func:`feed_step`) is how rows move on: the previous step's rows answered since
the last feed (``rows.fed`` holds the ``custom_id`` whose answer a row last passed on) become
this step's rows and requests, and are sharded at once — so the next step starts on the first
shard's answers while the previous step's other shards are still running. Each page is
recorded before it is marked fed, and every write is an idempotent upsert, so a crash between
them only means the page is fed again. A row that no longer reaches a step (now filtered out,
or its request failed) is removed from every later step.

**Incremental.** Requests are content-addressed, so a step's request is the same as long as its
prompt and its input row are: changing step 2's prompt re-sends step 2 (and whatever later
steps see change), an input row changed re-sends that row's chain only, and everything else
is answered from the ledger. Every run's compile feeds every step again from scratch (the
markers are reset), as compile reads the input again, so a changed config is always seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from jobs.outputs import answer_content
from jobs.requests import RequestBuilder
from jobs.spec import JobSpec, OutputSpec, StepSpec, row_matches
from jobs.template import RowRejected
from pipeline.errors import ConfigError
from state import Ledger, RequestRecord, RequestStatus, RowRecord

__all__ = ["ANSWER_COLUMN", "FeedReport", "Step", "feed_step", "find_step", "job_steps",
           "row_data", "step_row"]

ANSWER_COLUMN = "answer"
"""The column of a step's input row holding the previous step's answer."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a job (a job without ``[[steps]]`` is one step: itself)."""

    name: str
    index: int
    spec: JobSpec
    """The step as a job of its own; ``spec.name`` is its job in the ledger."""
    where: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    """The ledger job of the previous step (None for the first, which reads ``[input]``)."""
    later: tuple[str, ...] = ()
    """The ledger jobs of the steps after this one."""

    @property
    def job(self) -> str:
        return self.spec.name


def step_job_name(job: str, step: str) -> str:
    """A step's job in the ledger: ``<job>.<step>`` (a ``.`` is never in a job's own name)."""
    return f"{job}.{step}"


def _step_spec(spec: JobSpec, step: StepSpec, last: bool) -> JobSpec:
    policy = spec.policy
    if step.policy is not None:
        policy = policy.model_copy(update={key: getattr(step.policy, key)
                                           for key in step.policy.model_fields_set})
    output = step.output
    if output is None:
        if last:
            output = spec.output.model_copy(update={"path": str(spec.output_path)})
        else:
            top = spec.output_path
            output = OutputSpec(path=str(top.with_name(f"{top.stem}.{step.name}{top.suffix}")),
                                format=spec.output.format)
    else:
        output = output.model_copy(
            update={"path": str(spec.resolve_path(output.path)) if output.path else None})
    update: dict[str, Any] = {
        "name": step_job_name(spec.name, step.name),
        "description": step.description or spec.description,
        "prompt": step.prompt,
        "steps": (),
        "policy": policy,
        "output": output,
        # Pinned: the defaults derive from the name, and a step shares the job's places.
        "workdir": str(spec.workdir_path),
        "ledger": spec.ledger_target,
        "local": spec.local.model_copy(update={"data_dir": str(spec.local_data_dir)}),
    }
    if step.model is not None or step.adapter is not None:
        update["model"], update["adapter"] = step.model, step.adapter
    return spec.model_copy(update=update)


def job_steps(spec: JobSpec) -> list[Step]:
    """The job's steps in order, each with its own spec; ``[spec]`` itself for a one-step job."""
    if not spec.steps:
        return [Step(spec.name, 0, spec)]
    jobs = [step_job_name(spec.name, step.name) for step in spec.steps]
    return [
        Step(step.name, index, _step_spec(spec, step, index == len(spec.steps) - 1),
             dict(step.where), jobs[index - 1] if index else None, tuple(jobs[index + 1:]))
        for index, step in enumerate(spec.steps)
    ]


def find_step(spec: JobSpec, name: str | None) -> Step:
    """The step called ``name`` (default: the last). Raises ``ConfigError`` naming the steps."""
    steps = job_steps(spec)
    if name is None:
        return steps[-1]
    for step in steps:
        if step.name == name:
            return step
    names = ", ".join(s.name for s in steps) if spec.steps else "(none: the job has no [[steps]])"
    raise ConfigError(f"job {spec.name!r} has no step {name!r}; its steps: {names}", field="steps")


def row_data(row: Mapping[str, Any]) -> bytes:
    """A row as the ledger keeps it for the next step (JSON, in its column order)."""
    return orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)


def step_row(data: Mapping[str, Any], parsed_json: str | None, body: bytes | None) -> dict[str, Any]:
    """The next step's input row: this step's input row, its parsed fields, its ``answer``."""
    row = dict(data)
    parsed = orjson.loads(parsed_json) if parsed_json else None
    if isinstance(parsed, dict):
        row.update(parsed)
    row[ANSWER_COLUMN] = answer_content(orjson.loads(body)) if body else None
    return row


@dataclass(slots=True)
class FeedReport:
    """What one feed of a step did."""

    rows: int = 0
    """Rows of the previous step looked at (answered, failed or rejected since the last feed)."""
    kept: int = 0
    """Rows that became (or stayed) this step's rows."""
    left_out: int = 0
    """Rows that go no further: not kept by ``where``, failed, or rejected."""
    new_requests: int = 0


def feed_step(step: Step, ledger: Ledger, builder: RequestBuilder, *,
              reset: bool = False) -> FeedReport:
    """Move the previous step's newly settled rows on into ``step`` (see the module docstring).

    ``reset`` feeds every settled row again (a compile: the config or the input may have
    changed). The rows' pending requests are then the caller's to shard.
    """
    assert step.source is not None, "the first step reads [input]: compile it"
    report = FeedReport()
    if reset:
        ledger.reset_fed(step.source)
    after = ""
    while True:
        page = ledger.rows_to_feed(step.source, after=after)
        if not page:
            return report
        after = page[-1].row_key
        rows: list[RowRecord] = []
        requests: dict[str, RequestRecord] = {}
        dropped: list[str] = []
        for item in page:
            report.rows += 1
            if item.status != RequestStatus.SUCCEEDED or item.data is None:
                dropped.append(item.row_key)
                continue
            row = step_row(orjson.loads(item.data), item.parsed, item.body)
            if not row_matches(step.where, row):
                dropped.append(item.row_key)
                continue
            data = row_data(row)
            try:
                built = builder.build(row)
            except RowRejected as exc:
                rows.append(RowRecord(item.row_key, item.row_index, None, exc.reason, data))
                continue
            rows.append(RowRecord(item.row_key, item.row_index, built.custom_id, None, data))
            requests.setdefault(built.custom_id,
                                RequestRecord(built.custom_id, builder.endpoint, built.body))
        report.kept += len(rows)
        report.left_out += len(dropped)
        report.new_requests += ledger.record_requests(requests.values())
        ledger.record_rows(step.job, rows)
        if dropped:
            ledger.drop_rows((step.job, *step.later), dropped)
        # Last: a crash before this feeds the page again, which changes nothing.
        ledger.mark_fed(step.source, [(item.row_key, item.custom_id or "") for item in page])
