"""Richer inputs and answers through the CLI on the local server (in-process): a conversation
column (JSONL and CSV), several samples per row, reasoning kept, and Llama Guard moderation."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import orjson

from tests.e2e.cli import run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CHATS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Name a river."}],
    [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Nile."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "bot", "content": "Name a river."}],  # rejected: not a role
]


def job(folder: Path, prompt: str, *, model: str = "llama-3.1-8b-instant", data: str = "rows.jsonl",
        extra: str = "") -> Path:
    config = folder / "job.toml"
    config.write_text(f'name = "inputs"\nbackend = "local"\nmodel = "{model}"\n'
                      f'[input]\npath = "{data}"\nid_column = "id"\n[prompt]\n{prompt}'
                      "max_completion_tokens = 64\n[policy]\npoll_interval_min_s = 0.1\n"
                      f'poll_interval_max_s = 0.5\n{extra}[output]\npath = "out.jsonl"\n')
    return config


def run_and_export(config: Path, *export_args: str) -> dict[str, Any]:
    ran = run_cli("run", "--quiet", "--json", str(config))
    assert ran.returncode == 0, ran.stderr
    exported = run_cli("export", "--json", *export_args, str(config))
    assert exported.returncode == 0, exported.stderr
    summary: dict[str, Any] = json.loads(ran.stdout)
    return summary


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_conversation_column_from_jsonl_and_csv(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text("".join(
        json.dumps({"id": f"c{i}", "chat": chat}) + "\n" for i, chat in enumerate(CHATS)))
    config = job(tmp_path, 'system = "Answer in one word."\nmessages = "{{ chat }}"\n')
    checked = run_cli("validate", "--json", str(config))
    assert checked.returncode == 0, checked.stderr
    rejection = json.loads(checked.stdout)["first_rejections"][0]
    assert (rejection["row_key"], rejection["line"]) == ("c2", 3)
    assert rejection["reason"].startswith("messages[0].role: 'bot' is not one of")

    summary = run_and_export(config)
    assert summary["requests"]["succeeded"] == 2
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["c0"]["groqbatch_answer"].endswith(".")
    assert '"Another one"' in rows["c1"]["groqbatch_answer"]  # the last user turn was asked
    assert rows["c2"]["groqbatch_status"] == "rejected"
    assert rows["c2"]["groqbatch_error"].startswith("messages[0].role")

    # the same conversations as JSON text in CSV cells get the same requests, answered already
    with (tmp_path / "rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "chat"])
        writer.writerows([f"c{i}", json.dumps(chat)] for i, chat in enumerate(CHATS))
    as_csv = job(tmp_path, 'system = "Answer in one word."\nmessages = "{{ chat }}"\n', data="rows.csv")
    again = run_and_export(as_csv)
    assert again["requests"]["succeeded"] == 2
    assert [r["groqbatch_custom_id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [
        rows[f"c{i}"]["groqbatch_custom_id"] for i in range(3)]


def test_samples_are_sent_each_and_exported_as_rows_with_reasoning(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(
        '{"id": "a", "q": "Why is the sky blue?"}\n{"id": "b", "q": "Why is the sky blue?"}\n')
    config = job(tmp_path, 'user = "{{ q }}"\nsamples = 3\nseed = 100\nreasoning_format = "parsed"\n',
                 model="qwen/qwen3-32b")
    summary = run_and_export(config)
    assert summary["requests"]["succeeded"] == 3  # 3 samples; rows a and b ask the same
    assert summary["rows"]["ok"] == 2
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["id"], r["groqbatch_sample"]) for r in rows] == [
        ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert len({r["groqbatch_custom_id"] for r in rows}) == 3
    assert len({r["groqbatch_answer"] for r in rows}) == 3  # a seed each: different answers
    assert all(r["groqbatch_reasoning"].startswith('Thinking about "Why is the sky blue"') for r in rows)
    assert all("<think>" not in r["groqbatch_answer"] for r in rows)

    as_csv = run_cli("export", "--json", "-o", str(tmp_path / "out.csv"), str(config))
    assert as_csv.returncode == 0, as_csv.stderr
    with (tmp_path / "out.csv").open(newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert list(cells[0])[-2:] == ["groqbatch_sample", "groqbatch_reasoning"]
    assert [c["groqbatch_sample"] for c in cells] == ["0", "1", "2"] * 2


def test_the_shipped_moderation_job_runs_and_exports_verdict_columns(tmp_path: Path) -> None:
    shutil.copytree(CONFIGS, tmp_path / "configs", ignore=shutil.ignore_patterns(".groqbatch"))
    config = tmp_path / "configs" / "moderate.toml"
    summary = run_and_export(config)
    assert summary["requests"]["succeeded"] == 8
    rows = {r["chat_id"]: r for r in read_jsonl(tmp_path / "out" / "moderate.jsonl")}
    assert rows["C01"]["safe"] is True
    assert (rows["C01"]["categories"], rows["C01"]["category_names"]) == ([], [])
    assert (rows["C02"]["safe"], rows["C02"]["categories"]) == (False, ["S2"])
    assert rows["C02"]["groqbatch_answer"] == "unsafe\nS2"
    assert rows["C06"]["category_names"] == ["Non-Violent Crimes", "Suicide & Self-Harm"]
    assert sum(r["safe"] for r in rows.values()) == 5
