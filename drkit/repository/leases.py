"""Leases: "this long-running process owns this job" records in the repository.

A lease is a small sealed object ``leases/<kind>/<name>`` naming its holder (host, pid, a random
token) and when it was last renewed, in the storage's clock when it has one (S3's ``Date``),
else this host's.  The holder renews it while it works; a lease not renewed for ``ttl`` seconds
is stale and may be taken over, and so is one whose holder process is gone from this very host.

Object stores offer no compare-and-swap on overwrite, so exclusivity is eventual: two processes
starting in the same instant can both write a lease, the later write wins, and the other finds
out at its next renewal and must stop (:class:`LeaseLost`).  What a lease protects must therefore
also be safe against a short overlap -- for ``redis follow``, slice names are deterministic and a
conflicting slice is refused (``LogConflict``), so an overlap fails loudly, never silently.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass
from datetime import datetime

from drkit.errors import LockedError, NotFoundError
from drkit.repository.manifest import iso, parse_iso

from .repo import Repository

PREFIX = "leases/"


class LeaseLost(LockedError):
    """Another process took over a lease this process held."""


@dataclass
class Lease:
    kind: str
    name: str
    host: str
    pid: int
    token: str
    acquired: str
    renewed: str
    ttl: float

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.kind}/{self.name}"

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} (since {self.acquired}, renewed {self.renewed})"


def _key(kind: str, name: str) -> str:
    return f"{PREFIX}{kind}/{name}"


def read(repo: Repository, kind: str, name: str) -> Lease | None:
    key = _key(kind, name)
    try:
        sealed = repo.storage.get(key)
    except NotFoundError:
        return None
    return Lease(**json.loads(repo._open_json("lease", key, sealed)))


def _write(repo: Repository, lease: Lease) -> None:
    repo.storage.put(lease.key, repo._seal_json("lease", lease.key, json.dumps(asdict(lease)).encode()),
                     exclusive=False)


def _stale(lease: Lease, now: datetime) -> bool:
    if (now - parse_iso(lease.renewed)).total_seconds() > lease.ttl:
        return True
    if lease.host == socket.gethostname() and lease.pid != os.getpid():
        from drkit.sandbox.procs import pid_alive

        return not pid_alive(lease.pid)
    return False


def acquire(repo: Repository, kind: str, name: str, ttl: float, what: str) -> Lease:
    """Take the lease ``kind/name`` or raise :class:`LockedError` naming its live holder."""
    now = repo.server_time()
    held = read(repo, kind, name)
    if held is not None and not _stale(held, now):
        raise LockedError(f"{what} is already running: {held.describe()}; stop it first, or wait until its lease "
                          f"({held.ttl:.0f} s without renewal) expires")
    lease = Lease(kind, name, socket.gethostname(), os.getpid(), secrets.token_hex(8), iso(now), iso(now), ttl)
    _write(repo, lease)
    return lease


def renew(repo: Repository, lease: Lease) -> None:
    """Extend ``lease``; raise :class:`LeaseLost` if another process holds it now."""
    held = read(repo, lease.kind, lease.name)
    if held is not None and held.token != lease.token:
        raise LeaseLost(f"lease {lease.key} was taken over by {held.describe()}; this process stops")
    lease.renewed = iso(repo.server_time())
    _write(repo, lease)


def release(repo: Repository, lease: Lease) -> None:
    held = read(repo, lease.kind, lease.name)
    if held is not None and held.token == lease.token:
        repo.storage.delete(lease.key)
