"""Workers: who is doing the work, and keeping its claims alive while it does.

Any number of ``groqbatch run`` processes, on any number of machines, may work on one job
through one ledger (:mod:`state.claims`). Each is a :class:`Worker` with an id — ``host:pid``
unless ``--worker-id`` names it — and a lease length. :func:`keep_alive` renews every claim
the worker holds a third of a lease before it would run out, so a live worker never loses one;
a worker killed with ``kill -9`` stops renewing, and after one lease its work is free for the
others to take over.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import anyio

from state import DEFAULT_LEASE_S, Ledger

from .errors import LedgerError

log = logging.getLogger("groqbatch.workers")

__all__ = ["Worker", "default_worker_id", "keep_alive", "pid_alive", "reap_dead_local_workers"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def default_worker_id() -> str:
    """``host:pid:xxxx`` — says where to look; the random part keeps it unique where pids
    repeat (every container's first process is pid 1)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


def host_identity() -> str:
    """This machine *and* PID namespace: only a worker recorded with the same identity can be
    judged dead by its pid being gone. Hostnames alone repeat (containers on the host network,
    cloned VMs), and a pid means nothing outside its namespace."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(path) if path.endswith("/pid") else Path(path).read_text().strip())
        except OSError:
            return ""  # cannot tell: never reap by pid, wait for leases
    return "|".join(parts)


@dataclass(frozen=True, slots=True)
class Worker:
    """One process working on a job: its id (in claims and logs) and its lease length."""

    id: str
    lease_s: float = DEFAULT_LEASE_S

    @classmethod
    def make(cls, worker_id: str | None = None, lease_s: float | None = None) -> Worker:
        return cls(worker_id or default_worker_id(), lease_s or DEFAULT_LEASE_S)

    @property
    def slug(self) -> str:
        """The id made safe for a file name (per-worker download and rebuild names)."""
        return _UNSAFE.sub("_", self.id)[:64]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def register(ledger: Ledger, worker: Worker, job: str, run_id: int) -> None:
    ledger.register_worker(worker.id, job, run_id, lease_s=worker.lease_s,
                           host=host_identity() or None, pid=os.getpid())


def reap_dead_local_workers(ledger: Ledger, worker: Worker, job: str) -> list[str]:
    """Free at once what dead workers of this machine held (see :mod:`state.claims`)."""
    host = host_identity()
    if not host:
        return []
    dead = ledger.reap_dead_local_workers(job, host, worker.id, pid_alive)
    for gone in dead:
        log.info("worker %s is gone (its process no longer exists): its claims are free", gone)
    return dead


async def keep_alive(ledger: Ledger, worker: Worker) -> None:
    """Renew ``worker``'s claims and heartbeat every third of a lease, until cancelled.

    A renewal that fails (the database briefly unreachable) is tried again at the next beat:
    two more chances before the lease could run out.
    """
    while True:
        await anyio.sleep(worker.lease_s / 3)
        try:
            await anyio.to_thread.run_sync(lambda: ledger.renew(worker.id, lease_s=worker.lease_s))
        except LedgerError as exc:  # the database briefly unreachable: next beat
            log.warning("worker %s: renewing its claims failed: %s; will try again", worker.id, exc)
