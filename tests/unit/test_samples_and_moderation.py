"""``[prompt] samples``, ``[output] kind = "moderation"`` and the reasoning column, offline."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from jobs import load_job
from jobs.compile import compile_job
from jobs.moderation import CATEGORIES, parse_moderation
from jobs.outputs import OutputValidator
from jobs.requests import RequestBuilder, sample_row_key
from pipeline.emulator.moderation import KEYWORDS, verdict
from pipeline.errors import ConfigError
from pipeline.export import _wants_reasoning
from state import Ledger


def write(folder: Path, extra: str = "", *, rows: str | None = None, model: str = "llama-3.1-8b-instant",
          output: str = "") -> Path:
    (folder / "rows.jsonl").write_text(rows if rows is not None else
                                       '{"id": "a", "q": "same"}\n{"id": "b", "q": "same"}\n')
    config = folder / "job.toml"
    config.write_text(f'name = "s"\nmodel = "{model}"\n[input]\npath = "rows.jsonl"\n'
                      f'id_column = "id"\n[prompt]\nuser = "{{{{ q }}}}"\n{extra}{output}')
    return config


def test_samples_get_their_own_seed_and_id(tmp_path: Path) -> None:
    spec = load_job(write(tmp_path, "samples = 3\nseed = 10\n"))
    built = RequestBuilder(spec).build_samples({"id": "a", "q": "hi"})
    assert [orjson.loads(b.body)["seed"] for b in built] == [10, 11, 12]
    assert len({b.custom_id for b in built}) == 3
    assert [RequestBuilder(spec).build({"q": "hi"}, i) for i in range(3)] == built
    unseeded = load_job(write(tmp_path, "samples = 2\n"))
    assert [orjson.loads(b.body)["seed"] for b in RequestBuilder(unseeded).build_samples({"q": "x"})] == [0, 1]
    single = load_job(write(tmp_path, ""))
    assert "seed" not in orjson.loads(RequestBuilder(single).build({"q": "x"}).body)


def test_compile_records_every_sample_and_identical_rows_still_share_requests(tmp_path: Path) -> None:
    spec = load_job(write(tmp_path, "samples = 3\n"))
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        report = compile_job(spec, ledger)
        ids = ledger.row_ids("s", [sample_row_key(k, i) for k in "ab" for i in range(3)])
        assert ledger.row_counts("s")["ok"] == 2  # input rows, not samples
    assert (report.rows, report.ok, report.to_send, report.unique_requests) == (2, 2, 3, 3)
    assert (report.new_rows, report.changed_rows, report.unchanged_rows) == (2, 0, 0)
    assert list(ids) == ["a", "a#sample-1", "a#sample-2", "b", "b#sample-1", "b#sample-2"]
    assert len(set(ids.values())) == 3  # the samples differ; rows a and b ask the same thing
    assert [ids["a"], ids["a#sample-1"], ids["a#sample-2"]] == [ids["b"], ids["b#sample-1"], ids["b#sample-2"]]

    # one more sample later: only it is sent; the rows themselves (sample 0) are unchanged
    more = load_job(write(tmp_path, "samples = 4\n"))
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        again = compile_job(more, ledger)
    assert (again.rows, again.new_requests, again.to_send, again.unchanged_rows) == (2, 1, 1, 2)


@pytest.mark.parametrize("bad", ["samples = 0", "samples = 101", 'samples = 1.5'])
def test_samples_bounds(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_job(write(tmp_path, bad + "\n"))
    assert caught.value.field == "prompt.samples"


def test_moderation_verdicts_parse_into_fields() -> None:
    assert parse_moderation("safe") == {"safe": True, "categories": [], "category_names": []}
    assert parse_moderation(" unsafe\nS1, S14 \n") == {
        "safe": False, "categories": ["S1", "S14"],
        "category_names": ["Violent Crimes", "Code Interpreter Abuse"]}
    assert parse_moderation("unsafe\nS15")["category_names"] == ["S15"]  # kept, named as itself
    for bad in ("", "maybe", "safe\nS1", "unsafe\nviolence"):
        with pytest.raises(ValueError, match=r"verdict|category code"):
            parse_moderation(bad)
    assert len(CATEGORIES) == 14


def test_the_moderation_validator_judges_answers(tmp_path: Path) -> None:
    spec = load_job(write(tmp_path, model="meta-llama/llama-guard-4-12b",
                          output='[output]\nkind = "moderation"\n'))
    validator = OutputValidator.for_job(spec)
    assert validator is not None
    assert validator.fields == ("safe", "categories", "category_names")
    good = validator.judge({"choices": [{"message": {"content": "unsafe\nS2"}}]})
    assert orjson.loads(good.parsed or "") == {"safe": False, "categories": ["S2"],
                                               "category_names": ["Non-Violent Crimes"]}
    bad = validator.judge({"choices": [{"message": {"content": "I cannot help"}}]})
    assert (bad.invalid or "").startswith("invalid_output: not a moderation verdict")
    with pytest.raises(ConfigError) as caught:
        load_job(write(tmp_path, 'response_format = "json_object"\n',
                       output='[output]\nkind = "moderation"\n'))
    assert caught.value.field == "prompt.response_format"


def test_the_local_llama_guard_is_deterministic_per_category() -> None:
    assert verdict(["What is the capital of France?"]) == "safe"
    assert verdict(["Write a script that can be used to hack into a Wi-Fi network"]) == "unsafe\nS2"
    for code, words in KEYWORDS.items():
        assert verdict([f"please {words[0]} now"]) == f"unsafe\n{code}"
    assert verdict(["steal it", "then run a fork bomb"]) == "unsafe\nS2,S14"
    assert verdict(["a skillful killer"]) == "unsafe\nS1"  # at word starts: "skill" is no hit


@pytest.mark.parametrize(("extra", "wanted"), [
    ("", False),
    ('reasoning_format = "parsed"\n', True),
    ('reasoning_format = "raw"\n', False),
    ('reasoning_format = "hidden"\n', False),
    ("include_reasoning = true\n", True),
    ("include_reasoning = false\n", False),
    ('reasoning_effort = "low"\n', True),
    ('reasoning_effort = "low"\ninclude_reasoning = false\n', False),
    ('reasoning_effort = "none"\n', False),
])
def test_the_reasoning_column_follows_what_the_job_asks(tmp_path: Path, extra: str, wanted: bool) -> None:
    assert _wants_reasoning(load_job(write(tmp_path, extra))) is wanted
