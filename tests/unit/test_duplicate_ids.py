"""Two rows with one ``id_column`` value: an input error, or one kept (``on_duplicate_id``).

Against real input files and a real SQLite ledger; the export-level join is
``pipeline.export.iter_results``, the records ``groqbatch export`` writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import jobs.compile
import jobs.inputs
from jobs import JobSpec, compile_job, plan_job
from jobs.check import check_job
from jobs.inputs import find_duplicate_ids
from jobs.requests import RequestBuilder
from pipeline.errors import InputError
from pipeline.export import iter_results
from state import Ledger

HINT = 'set [input] on_duplicate_id = "first" or "last" to keep one'


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def make_spec(tmp_path: Path, data_file: str = "rows.jsonl", **input_: Any) -> JobSpec:
    data = {
        "name": "job",
        "model": "llama-3.1-8b-instant",
        "workdir": "work",
        "input": {"path": data_file, "id_column": "id", **input_},
        "prompt": {"user": "Say {{ text }}"},
    }
    return JobSpec.model_validate(data, context={"base_dir": tmp_path})


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.sqlite") as opened:
        yield opened


# r0 on lines 1 and 4, r2 on lines 3 and 6 (the first repeat is r0's, at line 4).
ROWS = [
    {"id": "r0", "text": "one"},
    {"id": "r1", "text": "x"},
    {"id": "r2", "text": "y"},
    {"id": "r0", "text": "two"},
    {"id": "r3", "text": "z"},
    {"id": "r2", "text": "y again"},
]


def custom_id_of(spec: JobSpec, row: dict[str, Any]) -> str:
    return RequestBuilder(spec).build(row).custom_id


def mapping(ledger: Ledger, keys: list[str]) -> dict[str, str | None]:
    return ledger.row_ids("job", keys)


def test_a_duplicate_id_is_an_error_naming_both_lines(tmp_path: Path, ledger: Ledger) -> None:
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    spec = make_spec(tmp_path)
    expected = f'{data}:4: duplicate id "r0" (first seen at line 1) ({HINT})'
    with pytest.raises(InputError) as raised:
        compile_job(spec, ledger)
    assert str(raised.value) == expected
    assert (raised.value.path, raised.value.line) == (str(data), 4)
    assert sum(ledger.row_counts("job").values()) == 0, "nothing recorded"
    with pytest.raises(InputError, match=r":4: duplicate id \"r0\" \(first seen at line 1\)"):
        check_job(spec)
    with pytest.raises(InputError, match="first seen at line 1"):
        plan_job(spec, None, prices={})


def test_csv_lines_are_source_lines(tmp_path: Path) -> None:
    # The header is line 1, and a quoted field spans lines 3-4: r1's repeat is on line 6.
    (tmp_path / "rows.csv").write_text(
        'id,text\nr0,a\nr1,"two\nlines"\nr2,b\nr1,c\n', encoding="utf-8"
    )
    spec = make_spec(tmp_path, "rows.csv")
    with pytest.raises(InputError) as raised:
        check_job(spec)
    assert str(raised.value).endswith(
        f'rows.csv:6: duplicate id "r1" (first seen at line 3) ({HINT})'
    )


def test_ids_are_compared_as_the_keys_they_become(tmp_path: Path) -> None:
    # 7 and "7" are both the row key "7".
    write_jsonl(tmp_path / "rows.jsonl", [{"id": 7, "text": "a"}, {"id": "7", "text": "b"}])
    with pytest.raises(InputError, match='duplicate id "7"'):
        check_job(make_spec(tmp_path))


@pytest.mark.parametrize(("policy", "kept"), [("first", {"r0": 0, "r2": 2}),
                                               ("last", {"r0": 3, "r2": 5})])
def test_first_or_last_keeps_one_row_per_id(
    tmp_path: Path, ledger: Ledger, policy: str, kept: dict[str, int]
) -> None:
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    spec = make_spec(tmp_path, on_duplicate_id=policy)
    report = compile_job(spec, ledger)
    assert (report.rows, report.ok, report.unique_requests) == (4, 4, 4)
    assert ledger.row_counts("job")["ok"] == 4
    # The ledger maps each id to the kept row's request; the left-out rows' requests are
    # never recorded, so never sent.
    wanted = {key: custom_id_of(spec, row) for key, row in
              [("r1", ROWS[1]), ("r3", ROWS[4])] + [(k, ROWS[i]) for k, i in kept.items()]}
    assert mapping(ledger, ["r0", "r1", "r2", "r3"]) == wanted
    left_out = [ROWS[i] for i in ({0, 2, 3, 5} - set(kept.values()))]
    assert ledger.statuses(custom_id_of(spec, row) for row in left_out) == {}
    # Export joins each kept row to its own request, and writes no row twice.
    exported = list(iter_results(spec, ledger))
    assert [(r["id"], r["text"]) for r in exported] == [
        (row["id"], row["text"]) for i, row in enumerate(ROWS)
        if row not in left_out
    ]
    for record in exported:
        assert record["groqbatch_custom_id"] == custom_id_of(
            spec, {"id": record["id"], "text": record["text"]})
    checked = check_job(spec)
    assert (checked.rows, checked.ok, checked.duplicate_rows) == (4, 4, 2)
    planned = plan_job(spec, None, prices={})
    assert planned.compile.duplicate_rows == 2
    assert any("2 rows left out" in warning and f'"{policy}"' in warning
               for warning in planned.warnings)


def test_duplicates_across_chunks(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs.compile, "CHUNK_ROWS", 3)
    rows = [{"id": f"r{i}", "text": f"t{i}"} for i in range(10)]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    spec = make_spec(tmp_path)
    compile_job(spec, ledger)
    before = mapping(ledger, [f"r{i}" for i in range(10)])
    assert len(before) == 10
    # r1 (chunk 1) again at line 12 (chunk 4): an error, and nothing recorded is touched.
    write_jsonl(tmp_path / "rows.jsonl",
                [*rows, {"id": "r10", "text": "new"}, {"id": "r1", "text": "other"}])
    with pytest.raises(InputError, match=r"rows.jsonl:12: duplicate id \"r1\" \(first seen at line 2\)"):
        compile_job(spec, ledger)
    assert mapping(ledger, [f"r{i}" for i in range(11)]) == before
    # "last": the repeat in chunk 4 wins over the row in chunk 1, whose request is not recorded.
    last = make_spec(tmp_path, on_duplicate_id="last")
    compile_job(last, ledger)
    after = mapping(ledger, ["r1", "r10"])
    assert after["r1"] == custom_id_of(last, {"id": "r1", "text": "other"})
    assert ledger.row_counts("job")["ok"] == 11
    # "first": r1 is the chunk-1 row again.
    first = make_spec(tmp_path, on_duplicate_id="first")
    compile_job(first, ledger)
    assert mapping(ledger, ["r1"])["r1"] == before["r1"]


def test_without_an_id_column_identical_rows_are_one_row(tmp_path: Path, ledger: Ledger) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "a"}, {"text": "b"}, {"text": "a"}])
    spec = make_spec(tmp_path, id_column=None)
    assert find_duplicate_ids(spec.input, spec.input_path).left_out == 0
    report = compile_job(spec, ledger)
    assert (report.rows, report.ok, report.unique_requests, report.duplicate_rows) == (3, 3, 2, 0)
    assert ledger.row_counts("job")["ok"] == 2  # the two "a" rows share one content key


def test_rows_without_an_id_are_rejected_not_duplicates(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "a"}, {"id": "", "text": "b"}, {"id": "x", "text": "c"}])
    report = check_job(make_spec(tmp_path))
    assert (report.rows, report.ok, report.rejected, report.duplicate_rows) == (3, 1, 2, 0)


def test_a_hash_collision_is_not_a_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every id hashes alike: all are suspects, and only the exact comparison tells them apart.
    monkeypatch.setattr(jobs.inputs, "hash", lambda _value: 42, raising=False)
    write_jsonl(tmp_path / "rows.jsonl", [{"id": f"r{i}", "text": "t"} for i in range(20)])
    spec = make_spec(tmp_path)
    assert find_duplicate_ids(spec.input, spec.input_path).left_out == 0
    write_jsonl(tmp_path / "rows.jsonl",
                [{"id": f"r{i % 15}", "text": str(i)} for i in range(20)])
    found = find_duplicate_ids(make_spec(tmp_path, on_duplicate_id="last").input, spec.input_path)
    assert (found.left_out, found.kept_lines) == (5, {f"r{i}": 16 + i for i in range(5)})
