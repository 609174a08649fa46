"""Batch input files ("shards"): JSONL within a line and a byte limit, named by content.

Lines go in order; a shard closes when the next line would break either limit. A shard is
written to a temporary name, hashed while written, then renamed to ``<sha256>.jsonl``: the
same lines in give byte-identical files with the same names, and a crash leaves no file
that looks finished::

    writer = ShardWriter(workdir / "shards", max_lines=50_000, max_bytes=100_000_000)
    for custom_id, body in pending:
        for shard in writer.add(custom_id, batch_line(custom_id, body)):
            ledger.record_shard(job, shard.record, shard.custom_ids)
    for shard in writer.close():
        ...
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from state import ShardRecord

__all__ = ["ShardSizer", "ShardWriter", "WrittenShard", "shard_key"]

_BUFFER_BYTES = 1 << 20


def shard_key(job: str, sha256: str, tag: str) -> str:
    """The key a shard is known by (ledger, upload filename, batch metadata).

    ``<job>-<first 16 hex of sha256>-<tag>``: the content hash makes it recognisable, the
    per-compile ``tag`` keeps a shard re-made later with the same content (after
    ``--refresh``) from being mistaken for the earlier one's upload or batch on resume.
    """
    return f"{job[:40]}-{sha256[:16]}-{tag}"


@dataclass(slots=True)
class ShardSizer:
    """Where shard boundaries fall, without writing anything (``plan`` uses it)."""

    max_lines: int
    max_bytes: int
    lines: int = 0
    bytes: int = 0
    closed: list[tuple[int, int]] = field(default_factory=list)

    def fits(self, size: int) -> bool:
        """Whether a line of ``size`` bytes fits in the open shard."""
        return self.lines < self.max_lines and self.bytes + size <= self.max_bytes

    def add(self, size: int) -> bool:
        """Count a line; True when it opened a new shard (the previous one closed)."""
        if size > self.max_bytes:
            raise ValueError(f"a line of {size} bytes cannot fit a shard of {self.max_bytes}")
        rolled = self.lines > 0 and not self.fits(size)
        if rolled:
            self.close()
        self.lines += 1
        self.bytes += size
        return rolled

    def close(self) -> None:
        if self.lines:
            self.closed.append((self.lines, self.bytes))
        self.lines = 0
        self.bytes = 0


@dataclass(frozen=True, slots=True)
class WrittenShard:
    """A finished shard file and the requests in it, in file order."""

    record: ShardRecord
    custom_ids: tuple[str, ...]


class ShardWriter:
    """Writes lines into shard files in ``directory``, within both limits.

    ``job`` and ``tag`` make the shard key (see :func:`shard_key`); ``tag`` defaults to a
    random 8-character value per writer. ``key_for`` (the file's sha256 → its key) replaces
    both: compile passes one that makes keys deterministic from the content.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_lines: int,
        max_bytes: int,
        job: str = "shard",
        tag: str | None = None,
        key_for: Callable[[str], str] | None = None,
    ) -> None:
        self.directory = directory
        self.job = job
        self.tag = tag or secrets.token_hex(4)
        self._key_for = key_for
        self._sizer = ShardSizer(max_lines=max_lines, max_bytes=max_bytes)
        self._file: BinaryIO | None = None
        self._temp: Path | None = None
        self._hash = hashlib.sha256()
        self._ids: list[str] = []

    def fits(self, line: bytes) -> bool:
        """Whether ``line`` goes into the open shard (True when none is open)."""
        return self._sizer.lines == 0 or self._sizer.fits(len(line))

    def add(self, custom_id: str, line: bytes) -> list[WrittenShard]:
        """Write ``line``; returns the shard it closed, if it did not fit the open one."""
        finished = [] if self.fits(line) else self.close()
        self._sizer.add(len(line))  # raises if the line can never fit
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._temp = self.directory / f".tmp-{os.getpid()}-{secrets.token_hex(6)}.jsonl"
            self._file = self._temp.open("wb", buffering=_BUFFER_BYTES)
        self._file.write(line)
        self._hash.update(line)
        self._ids.append(custom_id)
        return finished

    def close(self) -> list[WrittenShard]:
        """Finish the open shard, if any: flush, fsync, rename to ``<sha256>.jsonl``."""
        if self._file is None or self._temp is None:
            return []
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._hash.hexdigest()
        final = self.directory / f"{digest}.jsonl"
        os.replace(self._temp, final)
        record = ShardRecord(
            key=self._key_for(digest) if self._key_for else shard_key(self.job, digest, self.tag),
            path=str(final),
            sha256=digest,
            lines=self._sizer.lines,
            bytes=self._sizer.bytes,
        )
        shard = WrittenShard(record, tuple(self._ids))
        self._sizer.close()
        self._file = None
        self._temp = None
        self._hash = hashlib.sha256()
        self._ids = []
        return [shard]

    def abort(self) -> None:
        """Drop the open shard's temporary file (after an error)."""
        if self._file is not None:
            self._file.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
        self._file = None
        self._temp = None
        self._hash = hashlib.sha256()
        self._ids = []
        self._sizer.lines = self._sizer.bytes = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()
