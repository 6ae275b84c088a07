"""``drkit prune``: garbage collection of unreferenced packs (mark -> grace -> delete).

The protocol (docs/repository-format.md, "Prune and the locking protocol"):

1. Take the prune lock: a conditional create of ``prune/lock/<epoch>`` (exactly one of racing
   pruners wins) plus the lease ``leases/prune/repository`` (which ``forget`` holds too).
2. Read the whole catalog: every manifest and every log record of every source.  If any cannot
   be read, nothing is deleted (an unreadable manifest might reference anything).
3. Check the listing is plausible (every referenced pack listed; no empty ``data/`` while
   backups exist; every pack an index names listed), else refuse.
4. Packs no reference reaches are *marked* (``prune/marks/<run id>``).  Only packs marked by an
   earlier run at least ``grace`` ago, still unreferenced, not rescued by a writer's un-mark and
   with no read lease live are deleted: first the index files naming them are rewritten without
   them, then the packs go.  ``grace == 0`` marks and deletes in one run and refuses while any
   writer lease is live.

Ages are judged by the storage's clock (:meth:`Repository.server_time`).  The lease is renewed
before every deletion batch; a holder that was paused past its TTL, or whose lock was taken
over, stops before deleting (:class:`~drkit.repository.leases.LeaseLost`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from drkit.errors import (
    AlreadyExistsError,
    ConfigError,
    DrkitError,
    IntegrityError,
    LockedError,
    NotFoundError,
)
from drkit.repository import crashpoints, leases
from drkit.repository import format as fmt
from drkit.repository import prunemarks as pm
from drkit.repository.crypto import random_hex
from drkit.repository.index import decode_index, encode_index
from drkit.repository.manifest import iso, new_backup_id, parse_iso
from drkit.repository.repo import Repository

log = logging.getLogger(__name__)

LOCK_PREFIX = "prune/lock/"
RELEASED_PREFIX = "prune/released/"
DEFAULT_GRACE = timedelta(hours=24)
DEFAULT_TTL = 600.0
DEFAULT_REPACK_THRESHOLD = 0.5
DELETE_BATCH = 1000
_PRUNE_LEASE = "leases/prune/repository"


def parse_duration(text: str, what: str = "--grace") -> timedelta:
    """``"24h"``, ``"30m"``, ``"45s"``, ``"7d"``, ``"0"`` -> timedelta; ConfigError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m or (not m.group(2) and float(m.group(1)) != 0):
        raise ConfigError(f"{what} {text!r} is not a duration: give a number with a unit s, m, h or d "
                          "(e.g. 24h, 30m) or 0")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}[m.group(2)]
    return timedelta(seconds=float(m.group(1)) * unit)


def parse_size(text: str, what: str = "--max-repack-size") -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?i?b?)?\s*", (text or "").lower())
    if not m:
        raise ConfigError(f"{what} {text!r} is not a size: give bytes or a number with K, M, G or T (e.g. 2G)")
    unit = (m.group(2) or "").rstrip("b").rstrip("i")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]


# -- the lock ------------------------------------------------------------------------------------


class PruneLock:
    """Exclusive prune lock: ``prune/lock/<epoch>`` created conditionally, plus the lease.

    Acquiring reads the newest lock object; if it is neither released (``prune/released/<epoch>``)
    nor older than its TTL, the repository is locked.  Otherwise the next epoch is created with a
    conditional create: of two racers exactly one succeeds, the other gets ``AlreadyExistsError``.
    Lock objects are never deleted, so an epoch can never be created twice.
    """

    def __init__(self, repo: Repository, ttl: float = DEFAULT_TTL) -> None:
        self.repo = repo
        self.ttl = ttl
        self.epoch: int | None = None
        self.token = secrets.token_hex(8)
        self.lease: leases.Lease | None = None
        self._renewed: datetime | None = None

    def _lock_key(self, epoch: int) -> str:
        return f"{LOCK_PREFIX}{epoch:016d}"

    def _newest(self) -> int:
        epochs = [int(i.key[len(LOCK_PREFIX):]) for i in self.repo.storage.list(LOCK_PREFIX)
                  if i.key[len(LOCK_PREFIX):].isdigit()]
        return max(epochs, default=0)

    def _holder(self, epoch: int) -> dict[str, Any] | None:
        key = self._lock_key(epoch)
        try:
            return json.loads(self.repo._open_json("prunelock", key, self.repo.storage.get(key)))
        except NotFoundError:
            return None
        except (DrkitError, ValueError) as exc:
            log.warning("prune lock %s is damaged (%s); treating it as held until its TTL passes", key, exc)
            return {"created": iso(self.repo.server_time()), "ttl": self.ttl, "host": "?", "pid": 0}

    def acquire(self) -> None:
        repo = self.repo
        now = repo.server_time()
        held = leases.read(repo, "prune", "repository")
        if held is not None and not leases._stale(held, now):
            raise LockedError(f"prune or forget is already running on this repository: {held.describe()}; wait "
                              f"for it, or until its lease ({held.ttl:.0f} s without renewal) expires")
        newest = self._newest()
        if newest and not repo.storage.exists(f"{RELEASED_PREFIX}{newest:016d}"):
            doc = self._holder(newest)
            if doc is not None and (now - parse_iso(doc["created"])).total_seconds() <= float(doc["ttl"]) \
                    and not _holder_dead(doc):
                raise LockedError(f"another prune holds {self._lock_key(newest)} ({doc.get('host')} pid "
                                  f"{doc.get('pid')}, since {doc['created']}); wait for it to finish")
        epoch = newest + 1
        key = self._lock_key(epoch)
        doc = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "created": iso(now),
               "ttl": self.ttl}
        try:
            repo.storage.put(key, repo._seal_json("prunelock", key, json.dumps(doc).encode()), exclusive=True)
        except AlreadyExistsError:
            raise LockedError(f"another prune took {key} at the same moment; it proceeds, this one stops") from None
        self.epoch = epoch
        try:
            self.lease = leases.acquire(repo, "prune", "repository", self.ttl, "prune or forget")
        except BaseException:
            self._mark_released()
            self.epoch = None
            raise
        self._renewed = now

    def renew(self) -> None:
        """Before each deletion batch: raise :class:`LeaseLost` if this holder was paused past its
        TTL, if a newer lock epoch exists, or if the lease was taken over."""
        if self.epoch is None or self.lease is None:
            raise leases.LeaseLost("prune does not hold its lock")
        now = self.repo.server_time()
        if self._renewed is not None and (now - self._renewed).total_seconds() > self.ttl:
            raise leases.LeaseLost(
                f"prune was paused {(now - self._renewed).total_seconds():.0f} s, past its {self.ttl:.0f} s lease; "
                "another process may hold the repository now: stopping before deleting anything more")
        if self._newest() > self.epoch:
            raise leases.LeaseLost(f"another prune took the lock after {self._lock_key(self.epoch)}; stopping")
        leases.renew(self.repo, self.lease)
        self._renewed = now

    def _mark_released(self) -> None:
        if self.epoch is not None:
            key = f"{RELEASED_PREFIX}{self.epoch:016d}"
            self.repo.storage.put(key, self.token.encode(), exclusive=False)

    def release(self) -> None:
        if self.epoch is None:
            return
        try:
            if self.lease is not None:
                leases.release(self.repo, self.lease)
        finally:
            if self._newest() == self.epoch:
                self._mark_released()
            self.epoch = None


def _holder_dead(doc: dict[str, Any]) -> bool:
    """A lock held by a process of this very host that no longer exists (killed) is free."""
    from drkit.proc import pid_alive

    pid = doc.get("pid")
    return (doc.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0
            and pid != os.getpid() and not pid_alive(pid))


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class PruneReport:
    dry_run: bool
    grace_seconds: float
    run: str
    now: str
    packs_total: int = 0
    packs_referenced: int = 0
    marked: list[str] = field(default_factory=list)
    marked_bytes: int = 0
    deleted: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    indexes_rewritten: list[str] = field(default_factory=list)
    indexes_deleted: list[str] = field(default_factory=list)
    kept: list[dict[str, str]] = field(default_factory=list)
    waiting: list[dict[str, str]] = field(default_factory=list)
    repack_candidates: list[dict[str, Any]] = field(default_factory=list)
    multipart_aborted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def text(self) -> str:
        verb = "would " if self.dry_run else ""
        lines = [
            f"prune run {self.run} at {self.now} (grace {self.grace_seconds:.0f} s){' -- dry run' if self.dry_run else ''}",
            f"packs: {self.packs_total} listed, {self.packs_referenced} referenced",
            f"{verb}mark {len(self.marked)} unreferenced pack(s), {self.marked_bytes} bytes",
            f"{verb}delete {len(self.deleted)} pack(s), {self.deleted_bytes} bytes; "
            f"{verb}rewrite {len(self.indexes_rewritten)} and delete {len(self.indexes_deleted)} index file(s)",
        ]
        lines += [f"  waiting: {w['key']} (deletable after {w['after']})" for w in self.waiting[:20]]
        if len(self.waiting) > 20:
            lines.append(f"  ... and {len(self.waiting) - 20} more waiting")
        lines += [f"  kept: {k['key']}: {k['why']}" for k in self.kept]
        if self.repack_candidates:
            size = sum(int(c["bytes"]) for c in self.repack_candidates)
            lines.append(f"repack candidates: {len(self.repack_candidates)} pack(s), {size} bytes (not repacked: "
                         "repacking is not implemented yet)")
        lines += [f"aborted stale multipart upload: {u}" for u in self.multipart_aborted]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _catalog_chunks(repo: Repository) -> tuple[set[str], dict[str, str], int]:
    """(referenced chunk ids, hint pack id -> one referencing object, objects read).  Any
    unreadable manifest or log record raises IntegrityError naming it: nothing may be deleted."""
    chunks: set[str] = set()
    hints: dict[str, str] = {}
    count = 0

    def take(refs: Iterable[list[Any]], owner: str) -> None:
        for ref in refs:
            chunks.add(str(ref[0]))
            hints.setdefault(str(ref[1]), owner)

    sources = set(repo.list_sources())
    logcat = getattr(fmt, "LOGCAT_PREFIX", None)  # a source whose log records all live in catalog objects
    if logcat:
        sources.update(i.key[len(logcat):].split("/", 1)[0] for i in repo.storage.list(logcat))
    for source in sorted(s for s in sources if s):
        for what, load in (("manifests", repo.list_manifests), ("log records", repo.log_records)):
            try:
                items = load(source)
            except DrkitError as exc:
                key = getattr(exc, "key", None)
                raise IntegrityError(
                    f"prune deletes nothing: the {what} of source {source} cannot all be read ({exc}); an unreadable "
                    "one might reference any pack. Run 'drkit verify', restore or remove the damaged object, then "
                    "prune again", key=key) from None
            except (ValueError, KeyError, TypeError) as exc:
                raise IntegrityError(
                    f"prune deletes nothing: a {what[:-1]} of source {source} does not parse ({exc}); run 'drkit "
                    "verify'") from None
            for item in items:
                count += 1
                if what == "manifests":
                    owner = fmt.manifest_key(item.source, item.id)
                    for stream in item.streams:
                        take(stream.chunks, owner)
                else:
                    take(item.stream.chunks, fmt.log_key(item.source, item.name))
    return chunks, hints, count


def _load_indexes(repo: Repository) -> dict[str, dict[str, list[list[Any]]]]:
    """index key -> {pack id -> blob entries}; a damaged index refuses the run."""
    out: dict[str, dict[str, list[list[Any]]]] = {}
    for info in sorted(repo.storage.list(fmt.INDEX_PREFIX), key=lambda i: i.key):
        try:
            doc = decode_index(repo._open_json("index", info.key, repo.storage.get(info.key)))
            out[info.key] = {str(p["id"]): [list(b) for b in p["blobs"]] for p in doc.get("packs", [])}
        except NotFoundError:
            continue
        except (DrkitError, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"prune deletes nothing: index file {info.key} cannot be read ({exc}); it may "
                                 "locate referenced chunks. Run 'drkit verify'", key=info.key) from None
    return out


def _live_leases(repo: Repository, now: datetime) -> tuple[list[str], list[str]]:
    """(live read leases, live writer leases) -- every other live lease counts as a writer."""
    reads, writers = [], []
    for info in repo.storage.list(leases.PREFIX):
        if info.key == _PRUNE_LEASE:
            continue
        try:
            lease = leases.load(repo, info.key)
        except IntegrityError as exc:
            if info.key.startswith(f"{leases.PREFIX}read/"):
                reads.append(f"{info.key} (damaged: {exc}; counted as live)")
            continue
        if lease is None or leases._stale(lease, now):
            continue
        (reads if lease.kind == "read" else writers).append(f"{info.key} ({lease.describe()})")
    return reads, writers


def _abort_uploads(storage: Any, older_than: datetime) -> list[str]:
    """Abort multipart uploads started before ``older_than`` (through wrappers such as retries)."""
    while getattr(storage, "inner", None) is not None:
        storage = storage.inner
    abort = getattr(storage, "abort_stale_uploads", None)
    return list(abort(older_than)) if abort is not None else []


def prune(repo: Repository, *, grace: timedelta = DEFAULT_GRACE, dry_run: bool = False,
          repack_threshold: float = DEFAULT_REPACK_THRESHOLD, max_repack_size: int | None = None,
          ttl: float = DEFAULT_TTL, lock_acquired: Callable[[], None] | None = None) -> PruneReport:
    """One prune run; see the module docstring.  Raises IntegrityError (exit 5) when the
    catalog is damaged or the listing implausible, LockedError (exit 6) when another prune or
    forget runs, or (``grace == 0``) while a writer lease is live."""
    if grace < timedelta(0):
        raise ConfigError("--grace must not be negative")
    if not 0 <= repack_threshold <= 1:
        raise ConfigError(f"--repack-threshold {repack_threshold} must be between 0 and 1")
    lock = PruneLock(repo, ttl)
    if dry_run:  # reads only: no lock objects written, so it works with read-only credentials
        return _run(repo, lock, grace, dry_run, repack_threshold, max_repack_size)
    lock.acquire()
    try:
        if lock_acquired is not None:
            lock_acquired()
        return _run(repo, lock, grace, dry_run, repack_threshold, max_repack_size)
    finally:
        lock.release()


def _run(repo: Repository, lock: PruneLock, grace: timedelta, dry_run: bool, repack_threshold: float,
         max_repack_size: int | None) -> PruneReport:
    now = repo.server_time()
    run_id = new_backup_id(now)
    report = PruneReport(dry_run, grace.total_seconds(), run_id, iso(now))
    reads, writers = _live_leases(repo, now)
    if grace == timedelta(0) and writers and not dry_run:
        raise LockedError(f"prune --grace 0 refuses while a writer holds a lease ({'; '.join(writers)}): packs it "
                          "re-uses could be deleted under it. Wait for it, or prune with a grace period")

    # Order matters: packs are uploaded before the index that names them, and both before the
    # manifest, so listing data/ last means a concurrent writer cannot make the listing look short.
    chunks, hints, n_objects = _catalog_chunks(repo)
    indexes = _load_indexes(repo)
    packs = {i.key.rsplit("/", 1)[-1]: i.size for i in repo.storage.list(fmt.DATA_PREFIX)}
    damaged_marks: list[str] = []
    marks = pm.read_marks(repo, damaged_marks)
    if damaged_marks:
        report.notes.append(f"damaged prune mark(s) {', '.join(damaged_marks)} deleted: their packs are marked "
                            "again (deleting a mark only delays deletion)")
    unmarks = pm.read_unmarks(repo)

    # -- plausibility ---------------------------------------------------------------------------
    if hints and not packs:
        raise IntegrityError(f"prune deletes nothing: the data/ listing is empty but {n_objects} manifest(s) and "
                             "log record(s) reference packs; the listing looks broken (check the storage)",
                             key=fmt.DATA_PREFIX)
    missing = sorted(p for p in hints if p not in packs)
    if missing:
        raise IntegrityError(
            f"prune deletes nothing: {len(missing)} referenced pack(s) are not in the data/ listing, e.g. "
            f"{fmt.pack_key(missing[0])} (referenced by {hints[missing[0]]}); either the listing is incomplete or "
            "data is lost: run 'drkit verify'", key=fmt.pack_key(missing[0]))
    unlisted = sorted({(k, p) for k, doc in indexes.items() for p in doc if p not in packs})
    if unlisted:
        k, p = unlisted[0]
        raise IntegrityError(f"prune deletes nothing: index file {k} names pack {fmt.pack_key(p)}, which is not in "
                             f"the data/ listing ({len(unlisted)} such); the listing looks incomplete, or packs were "
                             "removed behind prune's back: run 'drkit verify'", key=fmt.pack_key(p))

    # -- reachability ---------------------------------------------------------------------------
    # A pack is needed when a reference names it.  Every referenced pack is listed (checked
    # above), so a copy of a chunk in another pack (a re-upload by a backup that did not dedup
    # against a marked pack) is needed by nobody; writers that may still re-use such a pack
    # rescue it through the un-mark protocol.
    referenced = set(hints)
    live_bytes: dict[str, int] = {}
    for doc in indexes.values():
        for pack, blobs in doc.items():
            for blob in blobs:
                if str(blob[0]) in chunks and pack in referenced:
                    live_bytes[pack] = live_bytes.get(pack, 0) + int(blob[2])
    unreferenced = {p for p in packs if p not in referenced}
    report.packs_total, report.packs_referenced = len(packs), len(packs) - len(unreferenced)

    # -- which marks have ripened -----------------------------------------------------------------
    rescued_after: dict[str, datetime] = {}
    for u in unmarks:
        rescued_after[u.pack] = max(rescued_after.get(u.pack, u.written), u.written)
    ripe: set[str] = set()
    pending: dict[str, datetime] = {}  # pack -> earliest valid mark time
    for m in marks:
        for p in m.packs:
            if p not in unreferenced or (p in rescued_after and rescued_after[p] >= m.marked):
                continue
            pending[p] = min(pending.get(p, m.marked), m.marked)
            if max(m.marked + grace, m.unmark_by) <= now:
                ripe.add(p)
    if grace == timedelta(0):
        ripe = set(unreferenced)
    if reads and ripe:
        report.notes.append(f"a read lease is live ({'; '.join(reads)}): nothing is deleted this run")
        ripe = set()
    to_mark = sorted(p for p in unreferenced if p not in ripe and p not in pending)
    for p in sorted(pending):
        if p not in ripe:
            report.waiting.append({"key": fmt.pack_key(p), "after": iso(pending[p] + grace)})

    # index files: rewritten without the ripe packs (deleted when nothing is left in them)
    rewrites: dict[str, dict[str, list[list[Any]]]] = {}
    for k, doc in indexes.items():
        if ripe.intersection(doc):
            rewrites[k] = {p: b for p, b in doc.items() if p not in ripe}
    unref_indexes = sorted(k for k, doc in indexes.items() if all(p in unreferenced for p in doc))

    # repack candidates (reported only)
    budget = max_repack_size if max_repack_size is not None else float("inf")
    for p in sorted(referenced & packs.keys()):
        share = live_bytes.get(p, packs[p]) / max(packs[p], 1)
        if share < repack_threshold and budget >= packs[p]:
            budget -= packs[p]
            report.repack_candidates.append({"pack": p, "bytes": packs[p], "live_share": round(share, 3)})

    report.marked = [fmt.pack_key(p) for p in to_mark]
    report.marked_bytes = sum(packs[p] for p in to_mark)
    report.deleted = [fmt.pack_key(p) for p in sorted(ripe)]
    report.deleted_bytes = sum(packs[p] for p in ripe)
    report.indexes_rewritten = sorted(k for k, d in rewrites.items() if d)
    report.indexes_deleted = sorted(k for k, d in rewrites.items() if not d)
    if dry_run:
        return report

    # -- mark --------------------------------------------------------------------------------------
    if to_mark or (grace == timedelta(0) and ripe):
        marked = to_mark if grace > timedelta(0) else sorted(ripe)
        pm.write_mark(repo, run_id, now, now + grace / 2, marked, unref_indexes)
        crashpoints.hit("prune.after_mark")

    # -- delete -------------------------------------------------------------------------------------
    if ripe:
        lock.renew()
        failed_index: set[str] = set()
        for k, doc in sorted(rewrites.items()):
            if doc:
                name = f"{fmt.LOG_INDEX_PREFIX if k.startswith(fmt.LOG_INDEX_PREFIX) else fmt.INDEX_PREFIX}{random_hex()}"
                data = encode_index({p: [tuple(b) for b in blobs] for p, blobs in doc.items()})
                repo.storage.put(name, repo._seal_json("index", name, data))
                crashpoints.hit("prune.after_index_rewrite")
        keys = sorted(rewrites)
        for i in range(0, len(keys), DELETE_BATCH):
            lock.renew()
            failed_index.update(repo.storage.delete_many(keys[i:i + DELETE_BATCH]))
            crashpoints.hit("prune.after_index_delete")
        report.indexes_deleted = [k for k in report.indexes_deleted if k not in failed_index]
        blocked = {p for k in failed_index for p in indexes[k] if p in ripe}
        for k in sorted(failed_index):
            report.kept.append({"key": k, "why": _refusal(repo, k)})
        doomed = sorted(ripe - blocked)
        for p in sorted(blocked):
            report.kept.append({"key": fmt.pack_key(p), "why": "kept: an index file naming it could not be deleted"})
        failed: set[str] = set()
        for i in range(0, len(doomed), DELETE_BATCH):
            lock.renew()
            failed.update(repo.storage.delete_many([fmt.pack_key(p) for p in doomed[i:i + DELETE_BATCH]]))
            crashpoints.hit("prune.after_pack_delete")
        for key in sorted(failed):
            report.kept.append({"key": key, "why": _refusal(repo, key)})
        report.deleted = [fmt.pack_key(p) for p in doomed if fmt.pack_key(p) not in failed]
        report.deleted_bytes = sum(packs[k.rsplit("/", 1)[-1]] for k in report.deleted)

    # -- housekeeping: marks and un-marks that did their job ------------------------------------
    gone = {k.rsplit("/", 1)[-1] for k in report.deleted}
    waiting = unreferenced - gone

    def still_needed(m: pm.Mark) -> bool:
        return any(p in waiting and not (p in rescued_after and rescued_after[p] >= m.marked) for p in m.packs)

    old = [m.key for m in marks if not still_needed(m)] + damaged_marks
    old += [u.key for u in unmarks if u.written + max(grace, timedelta(seconds=lock.ttl)) <= now]
    if old:
        lock.renew()
        repo.storage.delete_many(old)
        crashpoints.hit("prune.after_cleanup")
    try:
        report.multipart_aborted = _abort_uploads(repo.storage, now - max(grace, timedelta(hours=1)))
    except DrkitError as exc:
        report.notes.append(f"stale multipart uploads were not aborted: {exc}")
    return report


def _refusal(repo: Repository, key: str) -> str:
    if repo.storage.capabilities.object_lock:
        return "kept: the storage refused the delete; the bucket has Object Lock, so it is likely under retention"
    return "kept: the storage refused the delete (see the storage's permissions and retention settings)"
