"""compile_job and plan_job against a real SQLite ledger."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from jobs import JobSpec, compile_job, load_job, plan_job
from jobs.plan import Price, load_prices, price_for
from jobs.requests import batch_line
from state import Ledger, RequestStatus

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def make_spec(tmp_path: Path, rows: list[dict[str, object]], **extra: object) -> JobSpec:
    data_file = tmp_path / "rows.jsonl"
    data_file.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    policy = {"max_lines_per_shard": 4, **extra.pop("policy", {})}  # type: ignore[dict-item]
    prompt = {"user": "Say {{ text }}", **extra.pop("prompt", {})}  # type: ignore[dict-item]
    data = {
        "name": "job",
        "model": "llama-3.1-8b-instant",
        "input": {"path": "rows.jsonl", **extra.pop("input", {})},  # type: ignore[dict-item]
        "prompt": prompt,
        "policy": policy,
        **extra,
    }
    return JobSpec.model_validate(data, context={"base_dir": tmp_path})


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.sqlite") as opened:
        yield opened


def shard_bytes(report_paths: list[str | None]) -> list[bytes]:
    return [Path(p).read_bytes() for p in report_paths if p]


def test_quickstart_compiles(tmp_path: Path) -> None:
    spec = load_job(CONFIGS / "quickstart.toml")
    spec = spec.model_copy(update={"workdir": str(tmp_path / "w")})
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        report = compile_job(spec, ledger)
    assert report.rows == report.ok == report.unique_requests == report.to_send == 20
    assert [s.lines for s in report.shards] == [8, 8, 4]
    json.dumps(report.as_dict())
    first = orjson.loads(Path(report.shards[0].path or "").read_bytes().splitlines()[0])
    assert first["method"] == "POST"
    assert first["url"] == "/v1/chat/completions"
    assert first["body"]["response_format"] == {"type": "json_object"}


def test_identical_requests_are_sent_once_and_fanned_out(tmp_path: Path, ledger: Ledger) -> None:
    rows = [{"id": i, "text": ["a", "b", "c"][i % 3]} for i in range(30)]
    spec = make_spec(tmp_path, rows, input={"id_column": "id"})
    report = compile_job(spec, ledger)
    assert (report.rows, report.ok, report.unique_requests, report.to_send) == (30, 30, 3, 3)
    assert ledger.row_counts("job")["ok"] == 30
    lines = b"".join(shard_bytes([s.path for s in report.shards])).splitlines()
    assert len(lines) == 3


def test_rejected_rows_recorded_with_reasons(tmp_path: Path, ledger: Ledger) -> None:
    rows = [{"id": 1, "text": "ok"}, {"id": 2}, {"text": "no id"}, {"id": 4, "text": "x" * 3000}]
    spec = make_spec(
        tmp_path, rows, input={"id_column": "id"}, policy={"max_bytes_per_shard": 2048}
    )
    report = compile_job(spec, ledger)
    assert (report.rows, report.ok, report.rejected) == (4, 1, 3)
    rejected = ledger.rejected_rows("job")
    reasons = {index: reason for _, index, reason in rejected}
    assert "missing column: 'text' is undefined" in reasons[1]
    assert "id column 'id'" in reasons[2]
    assert "over max_bytes_per_shard" in reasons[3]


def test_shards_do_not_depend_on_input_order(tmp_path: Path) -> None:
    rows = [{"id": i, "text": f"row {i}"} for i in range(23)]
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    contents = []
    for name, data in (("a", rows), ("b", shuffled)):
        folder = tmp_path / name
        folder.mkdir()
        spec = make_spec(folder, data, input={"id_column": "id"})
        with Ledger.open(folder / "l.sqlite") as ledger:
            report = compile_job(spec, ledger)
        contents.append(
            [(Path(s.path or "").name, Path(s.path or "").read_bytes()) for s in report.shards]
        )
    assert contents[0] == contents[1]
    assert len(contents[0]) == 6


def test_recompile_sends_nothing_new(tmp_path: Path, ledger: Ledger) -> None:
    spec = make_spec(tmp_path, [{"text": str(i)} for i in range(10)])
    first = compile_job(spec, ledger)
    second = compile_job(spec, ledger)
    assert first.to_send == 10
    assert (second.new_requests, second.to_send, second.shards) == (0, 0, [])
    assert ledger.request_counts("job")["queued"] == 10


def answer_all(ledger: Ledger, ids: list[str]) -> None:
    ledger.transition(ids, RequestStatus.QUEUED, RequestStatus.SUBMITTED)
    ledger.transition(ids, RequestStatus.SUBMITTED, RequestStatus.SUCCEEDED)


def test_answered_requests_are_not_sent_again_and_refresh_resends(
    tmp_path: Path, ledger: Ledger
) -> None:
    spec = make_spec(tmp_path, [{"text": str(i)} for i in range(6)])
    first = compile_job(spec, ledger)
    ids = [
        orjson.loads(line)["custom_id"]
        for s in first.shards
        for line in Path(s.path or "").read_bytes().splitlines()
    ]
    answer_all(ledger, ids)
    # a second job asking the same things gets them for free
    other = spec.model_copy(update={"name": "other"})
    again = compile_job(other, ledger)
    assert (again.already_answered, again.to_send) == (6, 0)
    plan = plan_job(other, ledger, prices={})
    assert (plan.compile.already_answered, plan.compile.to_send) == (6, 0)
    refreshed = compile_job(spec, ledger, refresh=True)
    assert (refreshed.refreshed, refreshed.to_send) == (6, 6)


def test_plan_persists_nothing_and_prices(tmp_path: Path, ledger: Ledger) -> None:
    spec = make_spec(
        tmp_path,
        [{"text": "x" * 396}] + [{"text": str(i)} for i in range(8)],
        prompt={"max_completion_tokens": 100},
    )
    prices = {"llama-3.1-8b-instant": Price("llama-3.1-8b-instant", 0.05, 0.08)}
    plan = plan_job(spec, ledger, prices=prices)
    assert plan.compile.to_send == 9
    assert [s.lines for s in plan.compile.shards] == [4, 4, 1]
    assert plan.compile.est_completion_tokens == 900
    prompt = plan.compile.est_prompt_tokens
    assert plan.cost_batch_usd == pytest.approx((prompt * 0.05 + 900 * 0.08) / 1e6 / 2, abs=1e-6)
    assert ledger.request_counts("job") == {s: 0 for s in ledger.request_counts("job")}
    assert not spec.workdir_path.exists()
    json.dumps(plan.as_dict())
    # the same plan's sizes as the real compile's
    report = compile_job(spec, ledger)
    assert [(s.lines, s.bytes) for s in report.shards] == [
        (s.lines, s.bytes) for s in plan.compile.shards
    ]
    assert report.est_prompt_tokens == prompt


def test_plan_warns_over_budget_and_unknown_price(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, [{"text": str(i)} for i in range(5)], policy={"budget": {"max_requests": 2}}
    )
    plan = plan_job(spec, None, prices={})
    assert any("max_requests" in w for w in plan.warnings)
    assert any("no price" in w for w in plan.warnings)
    assert plan.cost_batch_usd is None


def test_price_table() -> None:
    prices = load_prices()
    for model in (
        "llama-3.1-8b-instant",
        "llama-3.3-70b-versatile",
        "openai/gpt-oss-20b",
        "openai/gpt-oss-120b",
        "meta-llama/llama-4-scout-17b-16e-instruct",
        "qwen/qwen3-32b",
    ):
        assert prices[model].input_per_m > 0
    lora = price_for("ft:llama-3.1-8b-instant:org:abc", prices)
    assert lora is prices["llama-3.1-8b-instant"]
    price = prices["llama-3.1-8b-instant"]
    assert price.cost(1_000_000, 0, "batch") == pytest.approx(
        price.cost(1_000_000, 0, "on_demand") / 2
    )
    assert price.cost(1_000_000, 0, "flex") == pytest.approx(price.input_per_m)


def test_batch_line_bytes_match_shard_bytes(tmp_path: Path, ledger: Ledger) -> None:
    spec = make_spec(tmp_path, [{"text": "é" * 10}])
    report = compile_job(spec, ledger)
    ((custom_id, body),) = [
        (line["custom_id"], line["body"])
        for line in map(orjson.loads, Path(report.shards[0].path or "").read_bytes().splitlines())
    ]
    assert report.shards[0].bytes == len(
        batch_line(custom_id, orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    )


def test_prompt_tokens_are_estimated_from_the_text_not_the_body(tmp_path: Path) -> None:
    from jobs.compile import estimate_prompt_tokens
    from pipeline.emulator.responder import estimate_tokens

    text = "Summarise this review in one line: the battery lasts two days and the screen is sharp."
    body = orjson.dumps({"model": "llama-3.1-8b-instant", "temperature": 0, "seed": 7,
                         "max_completion_tokens": 256,
                         "messages": [{"role": "system", "content": "You are terse."},
                                      {"role": "user", "content": text}]})
    # 3 for the reply, 4 a message, the text at 4 characters a token: what the local server
    # (like Groq's tokenizers, roughly) counts — not the body's size / 4, ~2x that here.
    expected = 3 + 4 + estimate_tokens("You are terse.") + 4 + estimate_tokens(text)
    assert estimate_prompt_tokens(body) == expected
    assert len(body) // 4 > 1.5 * expected
    with_image = orjson.dumps({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/" + "x" * 400}}]}]})
    assert estimate_prompt_tokens(with_image) == 3 + 4 + estimate_tokens("What is this?") + 85
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    plain = orjson.dumps({"messages": [{"role": "user", "content": text}]})
    constrained = orjson.dumps({"messages": [{"role": "user", "content": text}],
                                "response_format": schema})
    assert estimate_prompt_tokens(constrained) > estimate_prompt_tokens(plain)
    assert estimate_prompt_tokens(b'{"model":"whisper-large-v3","file":"a.wav"}') == 11


def test_plan_cost_is_a_range_at_most_and_expected(tmp_path: Path, ledger: Ledger) -> None:
    spec = make_spec(tmp_path, [{"text": str(i)} for i in range(8)],
                     prompt={"max_completion_tokens": 100})
    prices = {"llama-3.1-8b-instant": Price("llama-3.1-8b-instant", 0.05, 0.08)}
    plan = plan_job(spec, ledger, prices=prices)
    assert plan.max_completion_tokens == 100
    assert plan.expected_from == "the upper bound"
    prompt = plan.compile.est_prompt_tokens
    assert plan.cost_batch_usd == pytest.approx((prompt * 0.05 + 800 * 0.08) / 1e6 / 2)
    assert plan.cost_expected_usd == pytest.approx(plan.cost_batch_usd)
    unbounded = plan_job(make_spec(tmp_path, [{"text": "a"}]), ledger, prices=prices)
    assert any("max_completion_tokens is not set" in w for w in unbounded.warnings)
