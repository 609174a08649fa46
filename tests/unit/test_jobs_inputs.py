"""Input readers: JSONL, CSV, Parquet, streamed; broken input names file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.inputs import iter_job_rows, read_rows
from jobs.spec import InputSpec
from pipeline.errors import InputError


def test_jsonl_skips_blank_lines_and_counts_source_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n{"a": "\xc3\xa9"}\n')
    assert list(read_rows(path)) == [(0, 1, {"a": 1}), (1, 4, {"a": "é"})]


@pytest.mark.parametrize(
    ("data", "words"),
    [(b'{"a": 1}\n{"a": \n', "not valid JSON"), (b'{"a":1}\n[1]\n', "JSON object")],
)
def test_jsonl_broken_line(tmp_path: Path, data: bytes, words: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(data)
    with pytest.raises(InputError, match=words) as info:
        list(read_rows(path))
    assert info.value.line == 2
    assert f"{path}:2" in str(info.value)


def test_csv_with_bom_and_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes('\ufeffid,text\n1,"two\nlines"\n2,x\n'.encode())
    assert list(read_rows(path)) == [
        (0, 2, {"id": "1", "text": "two\nlines"}),
        (1, 4, {"id": "2", "text": "x"}),
    ]


def test_csv_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(b"id,text\n1,ok\n2,\xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8") as info:
        list(read_rows(path))
    assert info.value.path == str(path)
    assert info.value.line == 3


def test_csv_too_many_fields(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("a,b\n1,2\n1,2,3\n")
    with pytest.raises(InputError, match="more fields") as info:
        list(read_rows(path))
    assert info.value.line == 3


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa  # a test dependency: a missing one must fail, not skip
    import pyarrow.parquet as pq
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"id": list(range(5000)), "t": ["x"] * 5000}), path)
    rows = list(read_rows(path))
    assert len(rows) == 5000
    assert rows[4999] == (4999, 5000, {"id": 4999, "t": "x"})


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown input format"):
        read_rows(tmp_path / "r.xml")
    with pytest.raises(InputError, match="not found"):
        read_rows(tmp_path / "r.jsonl")


def test_where_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(
        "".join(f'{{"i": {i}, "lang": "{"en" if i % 2 else "de"}"}}\n' for i in range(10))
    )
    spec = InputSpec(path="r.jsonl", where={"lang": "en"}, limit=3)
    assert [row["i"] for _, _, row in iter_job_rows(spec, path)] == [1, 3, 5]
    spec = InputSpec(path="r.jsonl", where={"i": [0, 9]})
    assert [row["i"] for _, _, row in iter_job_rows(spec, path)] == [0, 9]
