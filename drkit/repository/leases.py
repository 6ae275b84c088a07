"""Leases: "this long-running process owns this job" records in the repository.

A lease is a small sealed object ``leases/<kind>/<name>`` naming its holder (host, pid, a random
token) and when it was last renewed, in the storage's clock when it has one (S3's ``Date``),
else this host's.  The holder renews it while it works; a lease not renewed for ``ttl`` seconds
is stale and may be taken over, and so is one whose holder process is gone from this very host.

Object stores offer no compare-and-swap on overwrite, so exclusivity is eventual: two processes
starting in the same instant can both write a lease, the later write wins, and the other finds
out at its next renewal and must stop (:class:`LeaseLost`).  What a lease protects must therefore
also be safe against a short overlap -- for a follower, log slice names are deterministic and a
conflicting slice is refused (``LogConflict``), so an overlap fails loudly, never silently.

A lease object that does not open or parse (a flipped byte, a truncated write) is *stale*, not
fatal: :func:`read` logs a warning naming it and treats it as absent, :func:`acquire` takes it
over, a holder's :func:`renew` rewrites it, and :func:`release` deletes it.  No restore needs a
lease; ``drkit verify`` reports a damaged one (:func:`load` raises for it).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from dataclasses import asdict, dataclass
from datetime import datetime

from drkit.errors import IntegrityError, LockedError, NotFoundError
from drkit.proc import pid_alive
from drkit.repository.manifest import iso, parse_iso

from .repo import Repository

log = logging.getLogger(__name__)

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
    # A read lease (leases/read/<id>: a restore, drill or copy) names what it reads, so forget
    # keeps those and prune defers their data; None: it does not say (older records).
    manifests: list[str] | None = None
    logs: list[str] | None = None

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.kind}/{self.name}"

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} (since {self.acquired}, renewed {self.renewed})"


def _key(kind: str, name: str) -> str:
    return f"{PREFIX}{kind}/{name}"


def load(repo: Repository, key: str) -> Lease | None:
    """The lease stored at ``key`` (``None`` if there is none); raise :class:`IntegrityError`
    naming ``key`` if the object does not authenticate, decompress or parse as a lease."""
    try:
        sealed = repo.storage.get(key)
    except NotFoundError:
        return None
    try:
        lease = Lease(**json.loads(repo._open_json("lease", key, sealed)))
        for text in (lease.kind, lease.name, lease.host, lease.token, lease.acquired, lease.renewed):
            if not isinstance(text, str):
                raise TypeError(f"{text!r} is not a string")
        if not isinstance(lease.pid, int) or not isinstance(lease.ttl, int | float):
            raise TypeError("pid or ttl is not a number")
        parse_iso(lease.acquired)
        parse_iso(lease.renewed)
    except IntegrityError as exc:
        reason = str(exc).removeprefix(f"{key}: ")
        raise IntegrityError(f"{key}: {reason}", key=key) from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise IntegrityError(f"{key}: not a lease record ({exc})", key=key) from None
    if lease.key != key:
        raise IntegrityError(f"{key}: lease claims to be {lease.key}", key=key)
    return lease


def _read(repo: Repository, kind: str, name: str) -> tuple[Lease | None, str | None]:
    """(lease or None, why the stored object is damaged or None)."""
    key = _key(kind, name)
    try:
        return load(repo, key), None
    except IntegrityError as exc:
        return None, str(exc).removeprefix(f"{key}: ")


def read(repo: Repository, kind: str, name: str) -> Lease | None:
    """The lease ``kind/name``, or ``None`` if there is none -- or it is damaged: a warning names
    it and it is treated as stale (whoever acquires next overwrites it)."""
    held, damage = _read(repo, kind, name)
    if damage:
        log.warning("lease %s is damaged (%s); treating it as stale", _key(kind, name), damage)
    return held


def _write(repo: Repository, lease: Lease) -> None:
    repo.storage.put(lease.key, repo._seal_json("lease", lease.key, json.dumps(asdict(lease)).encode()),
                     exclusive=False)


def _stale(lease: Lease, now: datetime) -> bool:
    if (now - parse_iso(lease.renewed)).total_seconds() > lease.ttl:
        return True
    if lease.host == socket.gethostname() and lease.pid != os.getpid():
        return not pid_alive(lease.pid)
    return False


def holder(repo: Repository, kind: str, name: str) -> Lease | None:
    """The live holder of the lease ``kind/name``; None when there is none, or it is stale or damaged."""
    held = read(repo, kind, name)
    return held if held is not None and not _stale(held, repo.server_time()) else None


def acquire(repo: Repository, kind: str, name: str, ttl: float, what: str, *, manifests: list[str] | None = None,
            logs: list[str] | None = None) -> Lease:
    """Take the lease ``kind/name`` or raise :class:`LockedError` naming its live holder.
    ``manifests`` / ``logs``: what a read lease reads (see :class:`Lease`)."""
    now = repo.server_time()
    held = read(repo, kind, name)
    if held is not None and not _stale(held, now):
        raise LockedError(f"{what} is already running: {held.describe()}; stop it first, or wait until its lease "
                          f"({held.ttl:.0f} s without renewal) expires")
    lease = Lease(kind, name, socket.gethostname(), os.getpid(), secrets.token_hex(8), iso(now), iso(now), ttl,
                  manifests, logs)
    _write(repo, lease)
    return lease


def renew(repo: Repository, lease: Lease) -> None:
    """Extend ``lease``; raise :class:`LeaseLost` if another process holds it now.

    A damaged lease object is rewritten (with a warning): it cannot name another holder."""
    held, damage = _read(repo, lease.kind, lease.name)
    if damage:
        log.warning("lease %s is damaged (%s); this process holds it and rewrites it", lease.key, damage)
    elif held is not None and held.token != lease.token:
        raise LeaseLost(f"lease {lease.key} was taken over by {held.describe()}; this process stops")
    lease.renewed = iso(repo.server_time())
    _write(repo, lease)


def release(repo: Repository, lease: Lease) -> None:
    """Delete ``lease`` if this process still holds it.  A damaged lease object is deleted too:
    it was this holder's (another holder's renewals would have rewritten it readable)."""
    held, damage = _read(repo, lease.kind, lease.name)
    if damage:
        log.warning("lease %s is damaged (%s); deleting it on release", lease.key, damage)
    if damage or (held is not None and held.token == lease.token):
        repo.storage.delete(lease.key)


class Holding:
    """A lease held by a long-running job (a follower): taken on creation, renewed by
    :meth:`renew_if_due` at a quarter of its TTL, released when the ``with`` block ends."""

    def __init__(self, repo: Repository, kind: str, name: str, ttl: float, what: str) -> None:
        import time

        self.repo = repo
        self.lease = acquire(repo, kind, name, ttl, what)
        self._clock = time.monotonic
        self._renewed = self._clock()

    def renew_if_due(self) -> None:
        if self._clock() - self._renewed >= self.lease.ttl / 4:
            renew(self.repo, self.lease)
            self._renewed = self._clock()

    def __enter__(self) -> Holding:
        return self

    def __exit__(self, *_: object) -> None:
        release(self.repo, self.lease)
