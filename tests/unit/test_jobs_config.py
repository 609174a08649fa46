"""Job configs: every file in configs/ loads; every bad config names file, line and field."""

from __future__ import annotations

import json
import textwrap
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs import JobSpec, load_job, spec_hash, spec_json
from jobs.locate import key_lines, line_of
from pipeline.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
JOB_FILES = sorted(
    p
    for p in CONFIGS.iterdir()
    if p.suffix in {".toml", ".yaml", ".yml", ".json"} and p.name != "prices.toml"
)

BASE_TOML = """\
name = "t"
model = "llama-3.1-8b-instant"

[input]
path = "rows.jsonl"

[prompt]
system = "Be brief."
user = "Say {{ text }}"

[policy]
completion_window = "24h"

[policy.fallback]
service_tier = "flex"
"""


def write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, name: str = "job.toml") -> ConfigError:
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(path) in str(info.value)
    return info.value


def assert_points_at(error: ConfigError, line: int, field: str) -> None:
    assert error.line == line, str(error)
    assert error.field == field, str(error)
    assert f":{line}: {field}:" in str(error)


# -- every shipped config --------------------------------------------------------------


def test_configs_folder_has_the_example_jobs() -> None:
    names = {p.name for p in JOB_FILES}
    assert {"quickstart.toml", "enrich.toml", "evaluate.yaml", "reprocess.json"} <= names


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_config_loads_and_points_at_shipped_data(path: Path) -> None:
    spec = load_job(path)
    assert spec.input_path.is_file()
    assert spec.input_path.is_relative_to(CONFIGS / "data")
    assert spec.base_dir == CONFIGS


def test_quickstart_is_local_and_small() -> None:
    spec = load_job(CONFIGS / "quickstart.toml")
    assert spec.backend == "local"
    assert spec.model == "llama-3.1-8b-instant"
    assert spec.policy.completion_window == "24h"
    assert spec.policy.max_lines_per_shard < 20
    lines = spec.input_path.read_text(encoding="utf-8").splitlines()
    assert 15 <= len(lines) <= 30


# -- good configs ----------------------------------------------------------------------


def test_defaults_and_resolved_paths(tmp_path: Path) -> None:
    spec = load_job(write(tmp_path, BASE_TOML))
    assert spec.backend == "groq"
    assert spec.input_path == tmp_path / "rows.jsonl"
    assert spec.ledger_target == str(spec.state_dir / "t.sqlite")
    assert spec.workdir_path == spec.state_dir / "t"
    assert not spec.state_dir.is_relative_to(tmp_path)  # state is kept out of the config's folder
    assert spec.policy.max_lines_per_shard == 50_000
    assert spec.policy.max_bytes_per_shard == 100_000_000
    assert spec.policy.fallback.triggers[0] == "expired"
    assert spec.effective_base_url({}) == "https://api.groq.com"
    assert spec.effective_base_url({"GROQ_BASE_URL": "http://x:1"}) == "http://x:1"


def test_sqlalchemy_url_ledger_kept_as_written(tmp_path: Path) -> None:
    text = BASE_TOML.replace('name = "t"', 'name = "t"\nledger = "postgresql://h/db"')
    assert load_job(write(tmp_path, text)).ledger_target == "postgresql://h/db"


def test_durations_sizes_and_windows(tmp_path: Path) -> None:
    text = BASE_TOML.replace(
        'completion_window = "24h"',
        'completion_window = "7d"\ndeadline = "36h"\nmax_bytes_per_shard = "50MB"',
    )
    policy = load_job(write(tmp_path, text)).policy
    assert policy.completion_window_s == 7 * 86400
    assert policy.deadline == timedelta(hours=36)
    assert policy.max_bytes_per_shard == 50_000_000


def test_same_config_in_three_formats_has_one_hash(tmp_path: Path) -> None:
    toml_spec = load_job(write(tmp_path, BASE_TOML))
    data = toml_spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    json_spec = load_job(write(tmp_path, json.dumps(data), "job.json"))
    yaml_spec = load_job(write(tmp_path, yaml.safe_dump(data), "job.yaml"))
    assert spec_hash(toml_spec) == spec_hash(json_spec) == spec_hash(yaml_spec)
    assert len(spec_hash(toml_spec)) == 64
    assert spec_json(JobSpec.model_validate_json(spec_json(toml_spec))) == spec_json(toml_spec)


def test_response_format_forms(tmp_path: Path) -> None:
    text = BASE_TOML.replace(
        'user = "Say {{ text }}"',
        'user = "Say {{ text }}"\nresponse_format = "json_object"',
    )
    assert load_job(write(tmp_path, text)).prompt.request_params(tmp_path) == {
        "response_format": {"type": "json_object"}
    }
    (tmp_path / "answer_schema.py").write_text(
        "from pydantic import BaseModel\nclass Answer(BaseModel):\n    word: str\n"
    )
    text = BASE_TOML.replace(
        'user = "Say {{ text }}"',
        'user = "Say {{ text }}"\nresponse_format = { type = "json_schema", '
        'model = "answer_schema:Answer", strict = true }',
    )
    params = load_job(write(tmp_path, text)).prompt.request_params(tmp_path)
    schema = params["response_format"]["json_schema"]
    assert schema["strict"] is True
    assert schema["schema"]["properties"]["word"]["type"] == "string"


# -- bad configs: file, line, field, hint ----------------------------------------------


def test_misspelt_key_suggests_the_right_one(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE_TOML.replace("completion_window", "completion_windw"))
    assert_points_at(error, 12, "policy.completion_windw")
    assert error.hint == 'did you mean "completion_window"?'


def test_key_in_the_wrong_table_says_where_it_belongs(tmp_path: Path) -> None:
    error = load_error(tmp_path, "temperature = 0.1\n" + BASE_TOML)
    assert_points_at(error, 1, "temperature")
    assert error.hint == '"temperature" belongs under [prompt]'


def test_misspelt_key_in_inline_table(tmp_path: Path) -> None:
    text = BASE_TOML.replace(
        'path = "rows.jsonl"', 'path = "rows.jsonl"\nwhere = { a = 1 }\nopts = { limt = 3 }'
    )
    error = load_error(tmp_path, text)
    assert_points_at(error, 7, "input.opts")


def test_misspelt_key_in_dotted_key(tmp_path: Path) -> None:
    text = BASE_TOML.replace('[policy.fallback]\nservice_tier = "flex"', "fallback.servce_tier = 1")
    error = load_error(tmp_path, text)
    assert_points_at(error, 14, "policy.fallback.servce_tier")
    assert error.hint == 'did you mean "service_tier"?'


def test_wrong_type(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE_TOML.replace('completion_window = "24h"', "cache = 3"))
    assert_points_at(error, 12, "policy.cache")
    assert "valid boolean" in error.message


@pytest.mark.parametrize(
    ("setting", "field", "words"),
    [
        ('completion_window = "12h"', "policy.completion_window", "24h to 7d"),
        ('completion_window = "8d"', "policy.completion_window", "24h to 7d"),
        ('completion_window = "tomorrow"', "policy.completion_window", "not a window"),
        ("max_lines_per_shard = 50001", "policy.max_lines_per_shard", "less than or equal"),
        ('max_bytes_per_shard = "300MB"', "policy.max_bytes_per_shard", "less than or equal"),
        ('deadline = "soon"', "policy.deadline", "neither a duration"),
        ('deadline = "2030-01-01T00:00:00"', "policy.deadline", "UTC offset"),
        (
            "poll_interval_min_s = 60.0\npoll_interval_max_s = 1.0",
            "policy.poll_interval_min_s",
            "above",
        ),
    ],
)
def test_out_of_range_values(tmp_path: Path, setting: str, field: str, words: str) -> None:
    error = load_error(tmp_path, BASE_TOML.replace('completion_window = "24h"', setting))
    assert_points_at(error, 12, field)
    assert words in error.message


def test_out_of_range_in_prompt(tmp_path: Path) -> None:
    text = BASE_TOML.replace('system = "Be brief."', "temperature = 2.5")
    assert_points_at(load_error(tmp_path, text), 8, "prompt.temperature")


def test_missing_field_points_at_its_table_header(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE_TOML.replace('user = "Say {{ text }}"\n', ""))
    assert_points_at(error, 7, "prompt.user")
    assert "missing" in error.message
    assert error.hint == "add user = ... under [prompt]"


def test_missing_table(tmp_path: Path) -> None:
    text = BASE_TOML.replace('[input]\npath = "rows.jsonl"\n', "")
    assert_points_at(load_error(tmp_path, text), 1, "input")


def test_model_and_adapter_both(tmp_path: Path) -> None:
    text = BASE_TOML.replace('name = "t"', 'name = "t"\nadapter = "my-lora"')
    error = load_error(tmp_path, text)
    assert_points_at(error, 2, "adapter")
    assert "not both" in error.message


def test_neither_model_nor_adapter(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE_TOML.replace('model = "llama-3.1-8b-instant"', ""))
    assert error.field == "model"
    assert "either" in error.message


def test_adapter_alone_is_fine(tmp_path: Path) -> None:
    text = BASE_TOML.replace('model = "llama-3.1-8b-instant"', 'adapter = "my-lora"')
    spec = load_job(write(tmp_path, text))
    assert spec.adapter == "my-lora"
    assert spec.model is None


@pytest.mark.parametrize("where", ["top", "policy"])
def test_api_key_in_config_is_refused(tmp_path: Path, where: str) -> None:
    if where == "top":
        text = BASE_TOML.replace('name = "t"', 'name = "t"\napi_key = "gsk_secretsecret"')
        line, field = 2, "api_key"
    else:
        text = BASE_TOML.replace("[policy]\n", '[policy]\napi_key = "gsk_secretsecret"\n')
        line, field = 12, "policy.api_key"
    error = load_error(tmp_path, text)
    assert_points_at(error, line, field)
    assert "GROQ_API_KEY" in str(error)
    assert "gsk_secret" not in str(error)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('{ model = "x" }', "set the model"),
        ("{ stream = true }", "cannot stream"),
        ("{ n = 2 }", "n must be 1"),
        ("{ temperature = 1 }", "[prompt].temperature"),
    ],
)
def test_extra_body_refuses_clashing_keys(tmp_path: Path, body: str, words: str) -> None:
    text = BASE_TOML.replace('system = "Be brief."', f"extra_body = {body}")
    error = load_error(tmp_path, text)
    assert_points_at(error, 8, "prompt.extra_body")
    assert words in error.message


def test_extra_body_passes_other_fields(tmp_path: Path) -> None:
    text = BASE_TOML.replace('system = "Be brief."', 'extra_body = { tool_choice = "none", n = 1 }')
    params = load_job(write(tmp_path, text)).prompt.request_params(tmp_path)
    assert params == {"tool_choice": "none", "n": 1}


def test_template_syntax_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE_TOML.replace("Say {{ text }}", "Say {{ text"))
    assert_points_at(error, 9, "prompt.user")
    assert "template syntax error" in error.message


def test_reasoning_format_and_include_reasoning_exclusive(tmp_path: Path) -> None:
    text = BASE_TOML.replace(
        'system = "Be brief."', 'reasoning_format = "parsed"\ninclude_reasoning = true'
    )
    assert_points_at(load_error(tmp_path, text), 9, "prompt.include_reasoning")


def test_json_schema_needs_exactly_one_source(tmp_path: Path) -> None:
    text = BASE_TOML + '\n[prompt.response_format]\ntype = "json_schema"\nname = "x"\n'
    error = load_error(tmp_path, text)
    assert_points_at(error, 17, "prompt.response_format.schema")


def test_several_problems_are_all_listed(tmp_path: Path) -> None:
    text = BASE_TOML.replace("completion_window", "completion_windw").replace(
        'system = "Be brief."', "temperature = 9"
    )
    error = load_error(tmp_path, text)
    assert "line 12: policy.completion_windw" in str(error) or error.line == 12
    assert "also" in str(error)


def test_unknown_suffix(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE_TOML, "job.ini")
    assert ".ini" in error.message
    assert error.hint is not None
    assert ".toml" in error.hint


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_job(tmp_path / "nope.toml")


def test_unparseable_toml(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE_TOML.replace('completion_window = "24h"', "mode = batch"))
    assert_points_at(error, 12, "policy.mode")
    assert "cannot parse as TOML" in error.message


def test_unparseable_yaml(tmp_path: Path) -> None:
    text = "name: t\nmodel: m\ninput:\n  path: rows.jsonl\n  format: jsonl\n   limit: 3\n"
    error = load_error(tmp_path, text, "job.yaml")
    assert error.line == 6
    assert error.field == "limit"
    assert ":6: limit: cannot parse as YAML" in str(error)


def test_unparseable_json(tmp_path: Path) -> None:
    text = '{\n  "name": "t",\n  "model": "m"\n  "input": {"path": "rows.jsonl"}\n}\n'
    error = load_error(tmp_path, text, "job.json")
    assert_points_at(error, 4, "input")
    assert "cannot parse as JSON" in error.message


def test_config_that_is_not_a_table(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[1, 2]", "job.json")
    assert error.line == 1


def test_yaml_errors_have_lines(tmp_path: Path) -> None:
    text = (
        "name: t\nmodel: m\ninput:\n  path: rows.jsonl\nprompt:\n  user: hi\n"
        "policy:\n  fallback:\n    triggers: [expired, sometimes]\n"
    )
    error = load_error(tmp_path, text, "job.yaml")
    assert_points_at(error, 9, "policy.fallback.triggers[1]")


def test_json_errors_have_lines(tmp_path: Path) -> None:
    text = (
        '{\n  "name": "t",\n  "model": "m",\n  "input": {"path": "rows.jsonl"},\n'
        '  "prompt": {\n    "user": "hi",\n    "stop": ["a", "b", "c", "d", "e"]\n  }\n}\n'
    )
    error = load_error(tmp_path, text, "job.json")
    assert_points_at(error, 7, "prompt.stop")


# -- the key locator -------------------------------------------------------------------


def test_locator_handles_multiline_strings_and_arrays() -> None:
    text = textwrap.dedent(
        '''\
        name = "x"  # a comment with key = value
        [prompt]
        user = """
        fake = "not a key"
        [not.a.table]
        """
        stop = [
          "a",
          "b",
        ]
        "quoted.key" = 1
        [policy.fallback]
        triggers = ["expired"]
        '''
    )
    index = key_lines(text, "toml")
    assert line_of(index, ("prompt", "user")) == 3
    assert ("prompt", "fake") not in index
    assert ("not",) not in index
    assert line_of(index, ("prompt", "stop", 1)) == 9
    assert line_of(index, ("prompt", "quoted.key")) == 11
    assert line_of(index, ("policy", "fallback", "triggers")) == 13
    assert line_of(index, ("policy",)) == 12
    assert line_of(index, ("policy", "fallback", "nothing")) == 12


_KEY = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_VALUE = st.one_of(
    st.integers(),
    st.booleans(),
    st.text(alphabet=st.sampled_from("ab z=#[]{}.,'\"\\é\n"), max_size=20),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(
    tables=st.dictionaries(
        _KEY, st.dictionaries(_KEY, _VALUE, min_size=1, max_size=4), min_size=1, max_size=4
    ),
    style=st.sampled_from(["toml", "json", "yaml"]),
)
def test_locator_finds_every_key_of_generated_files(
    tables: dict[str, dict[str, object]], style: str
) -> None:
    if style == "toml":
        lines: list[str] = []
        expected: dict[tuple[str, str], int] = {}
        for table, keys in tables.items():
            lines.append(f"[{table}]")
            for key, value in keys.items():
                lines.append(f"{key} = {json.dumps(value)}")
                expected[(table, key)] = len(lines)
        text = "\n".join(lines) + "\n"
        assert tomllib.loads(text) == tables
        index = key_lines(text, "toml")
        for path, line in expected.items():
            assert line_of(index, path) == line
        return
    text = json.dumps(tables, indent=2) if style == "json" else yaml.safe_dump(tables)
    index = key_lines(text, style)
    source = text.splitlines()
    for table, keys in tables.items():
        for key in keys:
            line = line_of(index, (table, key))
            assert key in source[line - 1]


def test_public_api_is_named() -> None:
    import jobs

    for name in jobs.__all__:
        assert getattr(jobs, name) is not None
