"""LoRA adapters on an account, kept in step with a ledger: upload, list, show, delete.

    home = AdapterHome.from_config("configs/job.toml")     # the job's backend and ledger
    async with home.open() as (ledger, client):
        record = (await upload_adapter(ledger, client, Path("adapter.zip"), name="support-v2")).record
    # a job config with  adapter = "support-v2"  now runs on record.model_id (ft:…)

An adapter belongs to the account, a name → ``ft:`` id to a ledger: jobs resolve
``adapter = "NAME"`` from their own ledger, never from the API, so ``validate`` and ``plan``
spend nothing. ``upload`` records its intent (the uploaded file) before registering and the
outcome after; an upload cut short is finished by the next one (the registration is adopted
by name and file). ``list`` brings the ledger in step with the account both ways: adapters
registered elsewhere (another job's ledger, the console) are adopted, adapters gone from the
account are marked deleted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jobs import JobSpec
from state import Ledger
from state.records import AdapterRecord

from .adapter_zip import ADAPTER_NAME, SUPPORTED_BASE_MODELS, AdapterInfo, check_adapter_zip
from .client import GroqClient
from .errors import APIError, ConfigError, PermanentAPIError

__all__ = [
    "AdapterHome",
    "AdapterListing",
    "DeleteReport",
    "UploadReport",
    "delete_adapter",
    "show_adapter",
    "sync_adapters",
    "upload_adapter",
]


@dataclass(frozen=True, slots=True)
class AdapterHome:
    """Where the adapter commands record (a ledger) and call (a backend).

    From a job config (:meth:`from_config`): that job's ledger and backend — with
    ``backend = "local"`` and no base URL, the in-process server on the job's
    ``[local].data_dir``, where the job's runs will find the adapter. Or given outright
    (:meth:`standalone`): a ledger and Groq, or a running ``groqbatch serve``.
    """

    ledger_target: str
    backend: Literal["groq", "local"]
    base_url: str | None = None
    spec: JobSpec | None = None

    @classmethod
    def from_config(cls, path: str | Path) -> AdapterHome:
        from jobs import load_job

        spec = load_job(path)
        return cls(spec.ledger_target, spec.backend, spec.base_url, spec)

    @classmethod
    def standalone(cls, ledger: str, backend: Literal["groq", "local"],
                   base_url: str | None) -> AdapterHome:
        import os

        if backend == "local" and not (base_url or os.environ.get("GROQ_BASE_URL")):
            raise ConfigError(
                "--backend local needs --base-url (a running `groqbatch serve`): the in-process "
                "server keeps its state in a job's [local].data_dir",
                hint="pass --config CONFIG to use that job's server",
            )
        target = ledger if "://" in ledger else str(Path(ledger).expanduser().resolve())
        return cls(target, backend, base_url.rstrip("/") if base_url else None)

    def describe(self) -> str:
        from .backend import describe_backend

        if self.spec is not None:
            return describe_backend(self.spec)
        import os

        return self.base_url or os.environ.get("GROQ_BASE_URL") or "https://api.groq.com"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[Ledger, GroqClient]]:
        with Ledger.open(self.ledger_target) as ledger:
            async with self._client() as client:
                yield ledger, client

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[GroqClient]:
        if self.spec is not None:
            from .backend import open_client

            async with open_client(self.spec) as client:
                yield client
            return
        import os

        if self.backend == "groq":
            async with GroqClient.from_env(self.base_url) as client:
                yield client
            return
        from .emulator.config import DEFAULT_API_KEY

        url = self.base_url or os.environ["GROQ_BASE_URL"]
        async with GroqClient(url, os.environ.get("GROQ_API_KEY") or DEFAULT_API_KEY) as client:
            yield client


# -- the operations ------------------------------------------------------------------------------


def _record_from_api(item: Mapping[str, Any], fallback_id: str | None = None) -> dict[str, Any]:
    """The ledger fields of a fine tuning as the API gives it (list item or ``data``)."""
    created = item.get("created_at")
    return {
        "base_model": str(item.get("base_model") or ""),
        "file_id": item.get("input_file_id"),
        "fine_tuning_id": item.get("id") or fallback_id,
        "model_id": item.get("fine_tuned_model"),
        "created_at": float(created) if isinstance(created, int | float) else None,
    }


async def _remote_by_name(client: GroqClient, name: str) -> Mapping[str, Any] | None:
    for item in await client.list_fine_tunings():
        if item.get("name") == name:
            return item
    return None


def _adopt(ledger: Ledger, name: str, item: Mapping[str, Any]) -> AdapterRecord:
    ledger.record_adapter(name, **_record_from_api(item))
    record = ledger.adapter(name)
    assert record is not None
    return record


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown adapter {name!r}: neither the ledger nor the account has it",
                       hint="`groqbatch adapters list` shows what there is")


@dataclass(frozen=True, slots=True)
class UploadReport:
    record: AdapterRecord
    info: AdapterInfo
    adopted: bool = False
    """True when an earlier, interrupted upload had registered it already."""

    def as_dict(self) -> dict[str, Any]:
        return {**_record_dict(self.record), "adopted": self.adopted, "zip": self.info.as_dict()}


def _check_upload_args(name: str, base_model: str | None, info: AdapterInfo) -> str:
    if not ADAPTER_NAME.fullmatch(name):
        raise ConfigError(f"adapter name {name!r}: use 1-64 letters, digits, `.`, `_` or `-`, "
                          "starting with a letter or digit", field="--name")
    chosen = base_model or info.base_model
    if chosen is None:
        raise ConfigError("which base model? the adapter config names none",
                          field="--base-model",
                          hint="supported: " + ", ".join(sorted(SUPPORTED_BASE_MODELS)))
    return chosen


async def upload_adapter(ledger: Ledger, client: GroqClient, zip_path: Path, *, name: str,
                         base_model: str | None = None) -> UploadReport:
    """Check the zip, upload it (``purpose=fine_tuning``), register it, record its ``ft:`` id.

    ``base_model`` defaults to the one the adapter config names. Refuses (ConfigError) a bad
    zip, a name the ledger or the account already has, before anything is uploaded.
    """
    info = check_adapter_zip(zip_path, base_model=base_model)
    base = _check_upload_args(name, base_model, info)
    earlier = ledger.adapter(name)
    if earlier is not None and earlier.live:
        raise ConfigError(f"adapter {name!r} is registered already ({earlier.model_id})",
                          field="--name", hint="delete it first, or choose another name")
    remote = await _remote_by_name(client, name)
    if remote is not None:
        if earlier is not None and earlier.pending and remote.get("input_file_id") == earlier.file_id:
            return UploadReport(_adopt(ledger, name, remote), info, adopted=True)
        raise ConfigError(f"the account already has an adapter named {name!r} "
                          f"({remote.get('fine_tuned_model')})", field="--name",
                          hint="`groqbatch adapters list` brings it into this ledger")
    uploaded = await client.upload_file(zip_path, filename=f"{name}.zip", purpose="fine_tuning")
    ledger.record_adapter(name, base_model=base, file_id=uploaded.id)  # the intent
    try:
        created = await client.create_fine_tuning(input_file_id=uploaded.id, name=name,
                                                  base_model=base)
    except PermanentAPIError:
        # A retried create whose first answer was lost is refused as a duplicate: adopt ours.
        mine = await _remote_by_name(client, name)
        if mine is not None and mine.get("input_file_id") == uploaded.id:
            return UploadReport(_adopt(ledger, name, mine), info, adopted=True)
        ledger.mark_adapter_deleted(name)
        await _delete_file_quietly(client, uploaded.id)
        raise
    data = created.get("data")
    fields = _record_from_api(data if isinstance(data, Mapping) else created,
                              fallback_id=created.get("id"))
    fields["file_id"] = fields["file_id"] or uploaded.id
    fields["base_model"] = fields["base_model"] or base
    if not fields["model_id"]:
        raise APIError(f"registering adapter {name!r} returned no fine_tuned_model: {created}")
    ledger.record_adapter(name, **fields)  # the outcome
    record = ledger.adapter(name)
    assert record is not None
    return UploadReport(record, info)


@dataclass(frozen=True, slots=True)
class AdapterListing:
    adapters: list[AdapterRecord]
    """The live adapters, after the sync."""
    adopted: list[str] = field(default_factory=list)
    """Names the account had and the ledger did not (now recorded)."""
    gone: list[str] = field(default_factory=list)
    """Names the ledger had and the account no longer has (now marked deleted)."""

    def as_dict(self) -> dict[str, Any]:
        return {"adapters": [_record_dict(r) for r in self.adapters], "adopted": self.adopted,
                "gone": self.gone}


async def sync_adapters(ledger: Ledger, client: GroqClient) -> AdapterListing:
    """The account's adapters, with the ledger brought in step (adopted / marked deleted)."""
    remote = {str(item.get("name")): item for item in await client.list_fine_tunings()}
    known = {record.name: record for record in ledger.adapters()}
    gone = [name for name in known if name not in remote]
    for name in gone:
        ledger.mark_adapter_deleted(name)
    adopted = []
    for name, item in sorted(remote.items()):
        record = known.get(name)
        if record is None or not record.live or record.model_id != item.get("fine_tuned_model"):
            _adopt(ledger, name, item)
            adopted.append(name)
    return AdapterListing(ledger.adapters(), adopted, gone)


async def show_adapter(ledger: Ledger, client: GroqClient, name: str) -> dict[str, Any]:
    """One adapter: the ledger's row and the account's fine tuning, in step."""
    record = ledger.adapter(name)
    if record is not None and record.live and record.fine_tuning_id:
        try:
            remote = await client.get_fine_tuning(record.fine_tuning_id)
        except PermanentAPIError as exc:
            if exc.status_code != 404:
                raise
            ledger.mark_adapter_deleted(name)
            raise ConfigError(f"adapter {name!r} is no longer on the account "
                              f"({record.fine_tuning_id}); the ledger now says so") from None
        data = remote.get("data")
        return {**_record_dict(record), "remote": dict(data) if isinstance(data, Mapping) else dict(remote)}
    found = await _remote_by_name(client, name)
    if found is None:
        raise _unknown(name)
    return {**_record_dict(_adopt(ledger, name, found)), "remote": dict(found), "adopted": True}


@dataclass(frozen=True, slots=True)
class DeleteReport:
    name: str
    fine_tuning_id: str | None
    model_id: str | None
    already_gone: bool
    file_deleted: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fine_tuning_id": self.fine_tuning_id, "model_id": self.model_id,
                "already_gone": self.already_gone, "file_deleted": self.file_deleted}


async def delete_adapter(ledger: Ledger, client: GroqClient, name: str) -> DeleteReport:
    """Delete the adapter's fine tuning and its uploaded zip; mark it deleted in the ledger.

    Jobs naming it then fail at ``validate``/``plan``/``run``, before anything is spent.
    """
    record = ledger.adapter(name)
    if record is None or record.deleted_at is not None or not record.fine_tuning_id:
        found = await _remote_by_name(client, name)
        if found is not None:
            record = _adopt(ledger, name, found)
        elif record is None or record.deleted_at is not None:
            raise _unknown(name)
    already_gone = True
    if record.fine_tuning_id:
        try:
            await client.delete_fine_tuning(record.fine_tuning_id)
            already_gone = False
        except PermanentAPIError as exc:
            if exc.status_code != 404:
                raise
    ledger.mark_adapter_deleted(name)
    file_deleted = bool(record.file_id) and await _delete_file_quietly(client, record.file_id or "")
    return DeleteReport(name, record.fine_tuning_id, record.model_id, already_gone, file_deleted)


async def _delete_file_quietly(client: GroqClient, file_id: str) -> bool:
    """Tidy an adapter's uploaded zip away; it serves nothing once the adapter is gone."""
    try:
        await client.delete_file(file_id)
    except APIError:
        return False
    return True


def _record_dict(record: AdapterRecord) -> dict[str, Any]:
    return {"name": record.name, "model_id": record.model_id, "base_model": record.base_model,
            "fine_tuning_id": record.fine_tuning_id, "file_id": record.file_id,
            "created_at": record.created_at, "deleted_at": record.deleted_at}
