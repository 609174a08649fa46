"""Files: multipart upload, list, retrieve, delete and streamed content.

Contents live on disk under the emulator's data directory, never whole in memory, so a
100 MB batch file costs the server only a copy buffer. With a ``data_dir``, each file's
metadata is saved (:mod:`.persist`) once its content is on disk, and removed before the
content is deleted, so a crash can leave only an unnamed content file (removed on load).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .errors import APIProblem, bad_request, not_found
from .http import DroppedResponse, JSONResponse, query_int
from .ids import new_id

if TYPE_CHECKING:
    from .persist import StateStore
    from .server import Emulator

UPLOAD_PURPOSES = frozenset({"batch", "fine_tuning"})
CHUNK_BYTES = 1 << 20


@dataclass(slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path
    lines: int

    def as_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
        }


class FileStore:
    """Files by id, contents on disk. Thread-safe: batch processing writes from a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, StoredFile] = {}
        self._lock = threading.Lock()
        self.persist: StateStore | None = None
        """Where metadata is saved (the server sets it when it has a data_dir)."""

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id)

    def require(self, file_id: str) -> StoredFile:
        found = self.get(file_id)
        if found is None:
            raise not_found("File", file_id, code="file_not_found")
        return found

    def all(self) -> list[StoredFile]:
        with self._lock:
            return list(self._files.values())

    def new_path(self) -> tuple[str, Path]:
        file_id = new_id("file")
        return file_id, self.root / file_id

    def add(self, file_id: str, path: Path, *, filename: str, purpose: str, created_at: int,
            save: bool = True) -> StoredFile:
        """Register a file already written at ``path`` (counts its bytes and lines).

        ``save=False`` leaves saving to the caller (a batch saves the files it publishes in
        its own transaction).
        """
        size = 0
        lines = 0
        last = b"\n"
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                size += len(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        if size and last != b"\n":
            lines += 1
        stored = StoredFile(file_id, filename, purpose, size, created_at, path, lines)
        if save and self.persist is not None:
            self.persist.save_file(stored)
        with self._lock:
            self._files[file_id] = stored
        return stored

    def restore(self, stored: StoredFile) -> None:
        """Take back a file saved by an earlier process."""
        with self._lock:
            self._files[stored.id] = stored

    def delete(self, file_id: str) -> StoredFile:
        with self._lock:
            stored = self._files.pop(file_id, None)
        if stored is None:
            raise not_found("File", file_id, code="file_not_found")
        if self.persist is not None:
            self.persist.delete_file(file_id)
        stored.path.unlink(missing_ok=True)
        return stored


def _emulator(request: Request) -> Emulator:
    emulator: Emulator = request.app.state.emulator
    return emulator


def _copy_upload(upload: UploadFile, target: Path, max_bytes: int) -> int:
    """Copy the spooled upload to ``target``; stop with 413 past ``max_bytes``."""
    written = 0
    upload.file.seek(0)
    with target.open("wb") as out:
        while chunk := upload.file.read(CHUNK_BYTES):
            written += len(chunk)
            if written > max_bytes:
                out.close()
                target.unlink(missing_ok=True)
                raise APIProblem(
                    413,
                    f"File is too large: the limit is {max_bytes} bytes.",
                    code="file_too_large",
                    param="file",
                )
            out.write(chunk)
    return written


async def upload_file(request: Request) -> JSONResponse:
    emulator = _emulator(request)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise bad_request("Uploads must be multipart/form-data with `file` and `purpose`.")
    async with request.form(max_files=1, max_fields=8) as form:
        purpose = form.get("purpose")
        upload = form.get("file")
        if not isinstance(purpose, str) or not purpose:
            raise bad_request("Missing required parameter: `purpose`.", param="purpose",
                              code="missing_required_parameter")
        if purpose not in UPLOAD_PURPOSES:
            raise bad_request(
                f"Invalid purpose {purpose!r}: expected one of {sorted(UPLOAD_PURPOSES)}.",
                param="purpose",
            )
        if not isinstance(upload, UploadFile):
            raise bad_request("Missing required parameter: `file`.", param="file",
                              code="missing_required_parameter")
        filename = upload.filename or "upload"
        file_id, path = emulator.files.new_path()
        config = emulator.config
        await anyio.to_thread.run_sync(_copy_upload, upload, path, config.max_file_bytes)
    stored = await anyio.to_thread.run_sync(
        lambda: emulator.files.add(
            file_id, path, filename=filename, purpose=purpose, created_at=emulator.clock.now_int()
        )
    )
    if purpose == "batch":
        problem = None
        if stored.bytes == 0:
            problem = bad_request("The batch file is empty.", param="file", code="empty_file")
        elif stored.lines > config.max_file_lines:
            problem = bad_request(
                f"The batch file has {stored.lines} lines; the limit is {config.max_file_lines}.",
                param="file",
                code="too_many_lines",
            )
        if problem is not None:
            emulator.files.delete(file_id)
            raise problem
    return JSONResponse(stored.as_api())


async def list_files(request: Request) -> JSONResponse:
    if not _emulator(request).faults.scenario.quirks.list_files:
        raise APIProblem(405, f"Method GET is not allowed on {request.url.path}.",
                         code="method_not_allowed")
    files = _emulator(request).files.all()
    params = request.query_params
    if purpose := params.get("purpose"):
        files = [f for f in files if f.purpose == purpose]
    if params.get("order", "desc") == "desc":
        files.reverse()
    if after := params.get("after"):
        ids = [f.id for f in files]
        files = files[ids.index(after) + 1 :] if after in ids else []
    limit = query_int(params, "limit", 10_000, low=1, high=10_000)
    page = files[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": [f.as_api() for f in page],
            "has_more": len(files) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
    )


async def retrieve_file(request: Request) -> JSONResponse:
    return JSONResponse(_emulator(request).files.require(request.path_params["file_id"]).as_api())


async def delete_file(request: Request) -> JSONResponse:
    stored = _emulator(request).files.delete(request.path_params["file_id"])
    return JSONResponse({"id": stored.id, "object": "file", "deleted": True})


async def _stream(path: Path, limit: int) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as handle:
        left = limit
        while left > 0:
            chunk = await handle.read(min(CHUNK_BYTES, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


async def file_content(request: Request) -> Response:
    emulator = _emulator(request)
    stored = emulator.files.require(request.path_params["file_id"])
    faults = emulator.faults
    downloads = faults.scenario.downloads
    if faults.chance("download:drop", downloads.drop_connection_rate):
        return DroppedResponse()
    send_bytes = stored.bytes
    if faults.chance("download:truncate", downloads.truncate_rate):
        # Declares the whole length but ends early: the client sees an incomplete body.
        send_bytes = int(stored.bytes * downloads.truncate_at_fraction)
    return StreamingResponse(
        _stream(stored.path, send_bytes),
        media_type="application/octet-stream",
        headers={
            "content-length": str(stored.bytes),
            "content-disposition": f'attachment; filename="{stored.filename}"',
        },
    )


routes = [
    Route("/files", upload_file, methods=["POST"]),
    Route("/files", list_files, methods=["GET"]),
    Route("/files/{file_id}", retrieve_file, methods=["GET"]),
    Route("/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/files/{file_id}/content", file_content, methods=["GET"]),
]


def copy_into_store(store: FileStore, source: Path, *, filename: str, purpose: str, created_at: int) -> StoredFile:
    """Add a file the server itself produced (batch output) to the store."""
    file_id, path = store.new_path()
    shutil.move(os.fspath(source), path)
    return store.add(file_id, path, filename=filename, purpose=purpose, created_at=created_at)


def link_into_store(store: FileStore, source: Path, *, filename: str, purpose: str,
                    created_at: int) -> StoredFile:
    """Add a server-made file to the store, leaving ``source`` in place and the metadata
    unsaved: the caller saves it, then deletes ``source``."""
    file_id, path = store.new_path()
    try:
        os.link(source, path)
    except OSError:  # no hard links here
        shutil.copyfile(source, path)
    return store.add(file_id, path, filename=filename, purpose=purpose, created_at=created_at,
                     save=False)
