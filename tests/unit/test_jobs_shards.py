"""Shard files: both limits exact at the boundary, content-named, deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from jobs.shards import ShardSizer, ShardWriter, WrittenShard


def line(n: int, size: int) -> bytes:
    """A line of exactly ``size`` bytes (newline included)."""
    head = f"{n:06d}:".encode()
    return head + b"x" * (size - len(head) - 1) + b"\n"


def write_all(directory: Path, lines: list[bytes], **limits: int) -> list[WrittenShard]:
    writer = ShardWriter(directory, job="j", tag="t", **limits)
    shards: list[WrittenShard] = []
    for i, data in enumerate(lines):
        shards += writer.add(f"id{i}", data)
    return shards + writer.close()


def test_line_limit_exact(tmp_path: Path) -> None:
    shards = write_all(tmp_path, [line(i, 20) for i in range(7)], max_lines=3, max_bytes=10_000)
    assert [s.record.lines for s in shards] == [3, 3, 1]
    shards = write_all(tmp_path, [line(i, 20) for i in range(6)], max_lines=3, max_bytes=10_000)
    assert [s.record.lines for s in shards] == [3, 3]


def test_byte_limit_exact(tmp_path: Path) -> None:
    # 5 lines of 20 bytes fill 100 bytes exactly: the 6th opens a new shard
    shards = write_all(tmp_path, [line(i, 20) for i in range(6)], max_lines=100, max_bytes=100)
    assert [(s.record.lines, s.record.bytes) for s in shards] == [(5, 100), (1, 20)]
    shards = write_all(tmp_path, [line(i, 21) for i in range(5)], max_lines=100, max_bytes=100)
    assert [(s.record.lines, s.record.bytes) for s in shards] == [(4, 84), (1, 21)]


def test_a_line_exactly_filling_a_shard(tmp_path: Path) -> None:
    lines = [line(0, 10), line(1, 100), line(2, 10)]
    shards = write_all(tmp_path, lines, max_lines=100, max_bytes=100)
    assert [(s.record.lines, s.record.bytes) for s in shards] == [(1, 10), (1, 100), (1, 10)]
    assert shards[1].custom_ids == ("id1",)


def test_a_line_too_big_for_any_shard(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, max_lines=10, max_bytes=100)
    with pytest.raises(ValueError, match="cannot fit"):
        writer.add("big", line(0, 101))


def test_files_named_and_hashed_by_content(tmp_path: Path) -> None:
    lines = [line(i, 30) for i in range(5)]
    shards = write_all(tmp_path, lines, max_lines=2, max_bytes=10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s.record.sha256}.jsonl" for s in shards
    )
    for shard in shards:
        data = Path(shard.record.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.record.sha256
        assert len(data) == shard.record.bytes
        assert shard.record.key == f"j-{shard.record.sha256[:16]}-t"
    assert b"".join(Path(s.record.path).read_bytes() for s in shards) == b"".join(lines)
    assert [i for s in shards for i in s.custom_ids] == [f"id{i}" for i in range(5)]


def test_same_lines_give_byte_identical_files(tmp_path: Path) -> None:
    lines = [line(i, 25 + i) for i in range(9)]
    a = write_all(tmp_path / "a", lines, max_lines=4, max_bytes=120)
    b = write_all(tmp_path / "b", lines, max_lines=4, max_bytes=120)
    assert [s.record.sha256 for s in a] == [s.record.sha256 for s in b]
    for x, y in zip(a, b, strict=True):
        assert Path(x.record.path).read_bytes() == Path(y.record.path).read_bytes()


def test_abort_leaves_no_file(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, max_lines=10, max_bytes=1000) as writer:
        writer.add("a", line(0, 20))
    assert list(tmp_path.iterdir()) == []


def test_sizer_matches_writer(tmp_path: Path) -> None:
    sizes = [17, 40, 40, 3, 99, 1, 60, 60, 60]
    sizer = ShardSizer(max_lines=3, max_bytes=100)
    for size in sizes:
        sizer.add(size)
    sizer.close()
    shards = write_all(
        tmp_path,
        [line(i, s) if s > 8 else b"x" * (s - 1) + b"\n" for i, s in enumerate(sizes)],
        max_lines=3,
        max_bytes=100,
    )
    assert sizer.closed == [(s.record.lines, s.record.bytes) for s in shards]
