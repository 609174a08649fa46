"""Multi-step jobs, without a server: ``[[steps]]`` validation (file, line, field), what a step
inherits, ``where`` filters on a step's input rows, and content-addressed ids along a chain."""

from __future__ import annotations

import textwrap
from pathlib import Path

import orjson
import pytest

from jobs import RequestBuilder, load_job
from jobs.spec import row_matches
from jobs.steps import ANSWER_COLUMN, feed_step, find_step, job_steps, row_data, step_row
from pipeline.errors import ConfigError
from state import Ledger, RequestRecord, RequestStatus, ResultRecord, ResultSource, RowRecord

STEPS_TOML = """\
name = "chain"
model = "llama-3.1-8b-instant"

[input]
path = "rows.jsonl"
id_column = "id"

[policy]
completion_window = "48h"
max_lines_per_shard = 10

[output]
path = "out/chain.jsonl"

[[steps]]
name = "classify"
[steps.prompt]
user = "Classify {{ text }}"
response_format = { type = "json_schema", name = "c", schema = { type = "object", properties = { topic = { type = "string", enum = ["bug", "question"] } }, required = ["topic"] } }

[[steps]]
name = "summarise"
model = "llama-3.3-70b-versatile"
where = { topic = "bug" }
[steps.prompt]
user = "Summarise the {{ topic }}: {{ text }}"
[steps.policy]
max_lines_per_shard = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_job(write(tmp_path, text))
    return info.value


def test_steps_become_jobs_of_their_own_inheriting_what_they_do_not_set(tmp_path: Path) -> None:
    spec = load_job(write(tmp_path, STEPS_TOML))
    classify, summarise = job_steps(spec)
    assert (classify.job, summarise.job) == ("chain.classify", "chain.summarise")
    assert (classify.source, summarise.source) == (None, "chain.classify")
    assert classify.later == ("chain.summarise",)
    assert classify.spec.model == "llama-3.1-8b-instant"  # inherited
    assert summarise.spec.model == "llama-3.3-70b-versatile"  # its own
    # [steps.policy] replaces the keys it sets; the others are the job's.
    assert summarise.spec.policy.max_lines_per_shard == 3
    assert summarise.spec.policy.completion_window == "48h"
    assert classify.spec.policy.max_lines_per_shard == 10
    # One ledger, one workdir, one local server for every step; outputs per step.
    assert {s.spec.ledger_target for s in (classify, summarise)} == {spec.ledger_target}
    assert {s.spec.workdir_path for s in (classify, summarise)} == {spec.workdir_path}
    assert summarise.spec.output_path == spec.output_path  # the last step: [output]
    assert classify.spec.output_path == tmp_path / "out" / "chain.classify.jsonl"
    assert find_step(spec, None) is not None
    assert find_step(spec, None).name == "summarise"
    with pytest.raises(ConfigError, match="no step 'nope'; its steps: classify, summarise"):
        find_step(spec, "nope")


def test_a_job_without_steps_is_one_step_itself(tmp_path: Path) -> None:
    text = STEPS_TOML.split("[[steps]]")[0] + '[prompt]\nuser = "{{ text }}"\n'
    spec = load_job(write(tmp_path, text))
    (only,) = job_steps(spec)
    assert only.spec is spec
    assert only.job == "chain"
    assert only.source is None


def test_an_unknown_key_in_a_step_names_its_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, STEPS_TOML.replace('where = { topic = "bug" }', 'wher = 1'))
    assert (error.line, error.field) == (24, "steps[1].wher"), str(error)
    assert 'did you mean "where"?' in (error.hint or "")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda t: t.replace('name = "summarise"', 'name = "classify"'), "steps",
         "two steps are named 'classify'"),
        (lambda t: t.replace('name = "classify"\n', 'name = "classify"\nwhere = { a = 1 }\n'),
         "steps", "filter it with [input].where"),
        (lambda t: t.replace("[[steps]]", '[prompt]\nuser = "x"\n\n[[steps]]', 1), "prompt",
         "no top-level [prompt]"),
        (lambda t: t.split("[[steps]]")[0], "prompt", "a job needs a [prompt] table"),
        (lambda t: t.replace('model = "llama-3.3-70b-versatile"',
                             'model = "m"\nadapter = "a"'), "steps[1].adapter",
         "set model or adapter, not both"),
        (lambda t: t.replace('name = "Summarise"', "").replace('"summarise"', '"Sum Up"'),
         "steps[1].name", "should match pattern"),
    ],
)
def test_bad_steps_are_config_errors_naming_the_field(tmp_path: Path, change, field: str,
                                                      message: str) -> None:
    error = load_error(tmp_path, change(STEPS_TOML))
    assert error.field == field, str(error)
    assert message in str(error)


def test_where_matches_equal_values_and_lists() -> None:
    row = {"topic": "bug", "urgent": True, "n": 3}
    assert row_matches({}, row)
    assert row_matches({"topic": "bug"}, row)
    assert row_matches({"topic": ["question", "bug"], "urgent": True}, row)
    assert not row_matches({"topic": "question"}, row)
    assert not row_matches({"missing": "x"}, row)


def test_a_step_row_is_the_input_row_then_parsed_fields_then_the_answer() -> None:
    body = orjson.dumps({"choices": [{"message": {"content": '{"topic": "bug"}'}}]})
    row = step_row({"id": 1, "text": "crash", "topic": "old"}, '{"topic": "bug"}', body)
    assert row == {"id": 1, "text": "crash", "topic": "bug", ANSWER_COLUMN: '{"topic": "bug"}'}
    assert list(row) == ["id", "text", "topic", ANSWER_COLUMN]


def _answer(ledger: Ledger, custom_id: str, content: str, parsed: str | None = None,
            ok: bool = True) -> None:
    ledger.transition([custom_id], RequestStatus.PENDING, RequestStatus.RETRYABLE)
    ledger.transition([custom_id], RequestStatus.RETRYABLE, RequestStatus.IN_FLIGHT)
    body = orjson.dumps({"choices": [{"message": {"content": content}}]})
    ledger.record_results([ResultRecord(
        custom_id, RequestStatus.SUCCEEDED if ok else RequestStatus.FAILED, ResultSource.FLEX,
        status_code=200 if ok else 400, body=body, parsed=parsed)])


def _first_step(spec, ledger: Ledger, rows: dict[str, str]) -> dict[str, str]:
    """Record the first step's rows as compile does (with their data); row key → custom_id."""
    step = job_steps(spec)[0]
    builder = RequestBuilder(step.spec)
    ledger.record_job(step.job, "h", "{}")
    ids = {}
    records = []
    for index, (key, text) in enumerate(rows.items()):
        row = {"id": key, "text": text}
        built = builder.build(row)
        ids[key] = built.custom_id
        ledger.record_requests([RequestRecord(built.custom_id, builder.endpoint, built.body)])
        records.append(RowRecord(key, index, built.custom_id, None, row_data(row)))
    ledger.record_rows(step.job, records)
    return ids


def test_feeding_passes_answered_rows_on_filtered_and_keeps_ids_content_addressed(
        tmp_path: Path) -> None:
    spec = load_job(write(tmp_path, STEPS_TOML))
    _, summarise = job_steps(spec)
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        ledger.record_job(summarise.job, "h", "{}")
        ids = _first_step(spec, ledger, {"a": "crash", "b": "how?", "c": "hang", "d": "oops"})
        builder = RequestBuilder(summarise.spec)
        # Nothing answered yet: nothing moves on.
        assert feed_step(summarise, ledger, builder).rows == 0
        _answer(ledger, ids["a"], '{"topic": "bug"}', '{"topic": "bug"}')
        _answer(ledger, ids["b"], '{"topic": "question"}', '{"topic": "question"}')
        _answer(ledger, ids["d"], "no", ok=False)  # a failure holds back nothing else
        report = feed_step(summarise, ledger, builder)
        assert (report.rows, report.kept, report.left_out) == (3, 1, 2)
        outcomes = ledger.row_outcomes(summarise.job, ["a", "b", "c", "d"])
        assert set(outcomes) == {"a"}
        first_id = outcomes["a"].custom_id
        assert orjson.loads(outcomes["a"].data or b"")["topic"] == "bug"
        # Fed rows are not fed again; the row answered later is.
        assert feed_step(summarise, ledger, builder).rows == 0
        _answer(ledger, ids["c"], '{"topic": "bug"}', '{"topic": "bug"}')
        assert feed_step(summarise, ledger, builder).kept == 1
        # A reset feeds everything again to the same content-addressed requests.
        again = feed_step(summarise, ledger, builder, reset=True)
        assert (again.rows, again.kept, again.new_requests) == (4, 2, 0)
        assert ledger.row_outcomes(summarise.job, ["a"])["a"].custom_id == first_id
        # Another prompt for the step: other ids for its rows, the first step's unchanged.
        changed = load_job(write(tmp_path, STEPS_TOML.replace("Summarise the", "Sum up the")))
        _, step2 = job_steps(changed)
        report = feed_step(step2, ledger, RequestBuilder(step2.spec), reset=True)
        assert report.new_requests == 2
        assert ledger.row_outcomes(step2.job, ["a"])["a"].custom_id != first_id
        assert ledger.row_ids("chain.classify", ["a"]) == {"a": ids["a"]}


def test_a_row_that_no_longer_passes_where_leaves_every_later_step(tmp_path: Path) -> None:
    text = STEPS_TOML + '\n[[steps]]\nname = "translate"\n[steps.prompt]\nuser = "{{ answer }}"\n'
    spec = load_job(write(tmp_path, text))
    _, summarise, translate = job_steps(spec)
    assert summarise.later == (translate.job,)
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        for step in (summarise, translate):
            ledger.record_job(step.job, "h", "{}")
        ids = _first_step(spec, ledger, {"a": "crash"})
        _answer(ledger, ids["a"], '{"topic": "bug"}', '{"topic": "bug"}')
        feed_step(summarise, ledger, RequestBuilder(summarise.spec))
        (sid,) = [o.custom_id for o in ledger.row_outcomes(summarise.job, ["a"]).values()]
        assert sid is not None
        _answer(ledger, sid, "a crash")
        feed_step(translate, ledger, RequestBuilder(translate.spec))
        assert set(ledger.row_outcomes(translate.job, ["a"])) == {"a"}
        # The input row changed: classify now says "question", so the chain stops there.
        new_ids = _first_step(spec, ledger, {"a": "how do I?"})
        _answer(ledger, new_ids["a"], '{"topic": "question"}', '{"topic": "question"}')
        assert feed_step(summarise, ledger, RequestBuilder(summarise.spec)).left_out == 1
        assert ledger.row_outcomes(summarise.job, ["a"]) == {}
        assert ledger.row_outcomes(translate.job, ["a"]) == {}
