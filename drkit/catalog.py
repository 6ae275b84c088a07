"""What a source's restore points are, computed from what the repository holds.

The repository is the catalog: a source's committed manifests and log records.  This module
loads them *tolerantly* -- an object that fails to open is recorded as :class:`Damaged` and left
out, so one corrupt manifest or log record never blocks the restores and listings that do not
need it -- and defines the shapes every dumper's pure ``restore_points`` function returns:

- :class:`RestorePoint` -- a time (``kind="backup"``) or a time range (``kind="range"``) with
  exactly the manifests and log records a restore to it needs (``list --json`` key
  ``restore_points``, as pinned in CONTRACTS.md);
- :class:`Gap` -- a log record missing (or damaged) between committed ones: *in flight* while
  its successors were committed less than ``gap_grace`` ago (parallel pushes commit out of
  order), a *gap* after that.  A gap cuts a chain: times past it are not reachable through it.

``window()``, ``list``, the restore planners, ``verify`` and (later) ``forget`` all derive from
these, so they cannot disagree about what is restorable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from drkit.errors import DrkitError, IntegrityError, NotFoundError
from drkit.repository import LogRecord, Manifest, Repository, logcat
from drkit.repository import format as fmt
from drkit.repository.manifest import iso

GAP_GRACE = timedelta(minutes=10)


def merge_intervals(intervals: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Closed intervals merged where they touch or overlap, sorted."""
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def checked_index(i: int, n: int) -> int:
    """``i`` (negative counts from the end) as an index into a sequence of ``n``, or IndexError."""
    k = i + n if i < 0 else i
    if not 0 <= k < n:
        raise IndexError(i)
    return k


class LogList(Sequence[str]):
    """The log record names a restore point needs: ``head`` (a few names) followed by
    ``base[start:stop]``.  Restore points of one chain share ``base``, so thousands of points
    over tens of thousands of records cost O(records + points), not their product; ``index``
    (name -> position in ``base``) makes membership O(1)."""

    __slots__ = ("head", "base", "start", "stop", "index")

    def __init__(self, head: Sequence[str] = (), base: Sequence[str] = (), start: int = 0,
                 stop: int | None = None, index: dict[str, int] | None = None) -> None:
        self.head = tuple(head)
        self.base = base
        self.start = start
        self.stop = len(base) if stop is None else stop
        self.index = index

    def __len__(self) -> int:
        return len(self.head) + max(0, self.stop - self.start)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = checked_index(i, len(self))
        h = len(self.head)
        return self.head[i] if i < h else self.base[self.start + i - h]

    def __iter__(self) -> Iterator[str]:
        yield from self.head
        for k in range(self.start, self.stop):
            yield self.base[k]

    def __contains__(self, name: object) -> bool:
        if name in self.head:
            return True
        if self.index is not None:
            k = self.index.get(name)  # type: ignore[call-overload]
            return k is not None and self.start <= k < self.stop
        return any(self.base[k] == name for k in range(self.start, self.stop))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, LogList)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LogList({list(self)!r})" if len(self) <= 6 else f"LogList({self[0]!r} .. {self[-1]!r}, {len(self)})"


@dataclass(frozen=True)
class Damaged:
    """A catalog object that exists but could not be opened (or vanished while listed)."""

    key: str
    kind: str  # "manifest" | "log"
    name: str  # backup id or log record name
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"object": self.key, "kind": self.kind, "name": self.name, "error": self.error}


@dataclass
class Catalog:
    """A source's committed manifests and log records, as far as they could be read."""

    source: str
    manifests: list[Manifest]
    logs: list[LogRecord]
    damaged: list[Damaged] = field(default_factory=list)
    now: datetime | None = None  # the storage's clock when it was loaded
    gap_grace: timedelta = GAP_GRACE
    # Log records retention removed on purpose (drkit/repository/forgotten.py): a hole at one of
    # them ends a chain, it is not a gap.
    forgotten: frozenset[str] = frozenset()

    def damaged_log(self, name: str) -> Damaged | None:
        for d in self.damaged:
            if d.kind == "log" and d.name == name:
                return d
        return None


@dataclass
class RestorePoint:
    """A time (``backup``) or a closed time range (``range``) the source can be restored to."""

    kind: str  # "backup" | "range"
    start: datetime
    end: datetime
    backup: str
    manifests: list[str]  # ids of every manifest a restore to ``end`` needs
    logs: Sequence[str] = field(default_factory=list)  # every log record it needs, in order
    window: bool = True  # False: restorable only by naming the backup (e.g. a logical dump), not by time

    def contains(self, t: datetime) -> bool:
        return self.start <= t <= self.end

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "start": iso(self.start), "end": iso(self.end), "backup": self.backup,
            "point_in_time": self.window,
            "needs": {"manifests": list(self.manifests),
                      "logs": {"first": self.logs[0] if self.logs else None,
                               "last": self.logs[-1] if self.logs else None, "count": len(self.logs)}},
        }

    def describe(self) -> str:
        span = iso(self.start) if self.start == self.end else f"{iso(self.start)} .. {iso(self.end)}"
        return f"{span} (backup {self.backup})"


@dataclass
class Gap:
    """Log records missing between committed ones in a chain."""

    chain: str  # the backup (or chain name) whose chain it cuts
    missing: str  # the first missing (or damaged) record, as the dumper names it
    after: datetime | None  # the newest point reachable before it
    beyond: list[str]  # committed records past it, unreachable through it
    state: str = "gap"  # "gap" | "in_flight"
    damaged: Damaged | None = None
    # The hole is itself a record past every restore point (a damaged newest segment): nothing
    # beyond it, but its commits are lost to a latest restore all the same.
    lost: bool = False

    def __post_init__(self) -> None:
        # A record that is there but damaged will not arrive later: never "in flight" (a latest
        # restore would wait for it in vain, then refuse anyway).
        if self.damaged is not None:
            self.state = "gap"

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain, "missing": self.missing, "state": self.state,
            "newest_reachable": iso(self.after) if self.after else None,
            "unreachable_logs": {"first": self.beyond[0] if self.beyond else None,
                                 "last": self.beyond[-1] if self.beyond else None, "count": len(self.beyond)},
            "damaged": self.damaged.as_dict() if self.damaged else None,
        }

    def text(self) -> str:
        why = f"damaged ({self.damaged.error})" if self.damaged else (
            "in flight (its successors were committed moments ago)" if self.state == "in_flight" else "missing")
        past = (f"; {len(self.beyond)} archived log record(s) after it ({self.beyond[0]} .. {self.beyond[-1]}) "
                "are unreachable through it" if self.beyond else "")
        reach = f"; newest point reachable before it: {iso(self.after)}" if self.after else ""
        return f"{self.state} in the chain of {self.chain}: {self.missing} is {why}{past}{reach}"


@dataclass
class RestorePoints:
    """What a dumper's ``restore_points`` returns."""

    points: list[RestorePoint] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def intervals(self) -> list[tuple[datetime, datetime]]:
        """The merged recoverable window (what ``window`` / ``windows`` show)."""
        return merge_intervals((p.start, p.end) for p in self.points if p.window)

    def newest_safe_time(self) -> datetime | None:
        return max((p.end for p in self.points if p.window), default=None)

    def covering(self, t: datetime) -> list[RestorePoint]:
        return [p for p in self.points if p.window and p.contains(t)]

    def blocking_latest(self) -> list[Gap]:
        """Gaps with committed log records past them that no restore point reaches: a restore of
        "the latest state" would stop at them quietly, so it must refuse (or wait, while they
        are in flight)."""
        return [g for g in self.gaps if g.beyond or g.lost]

    def notes_all(self) -> list[str]:
        return list(self.notes) + [g.text() for g in self.gaps]


def classify(beyond_pushed: list[datetime], now: datetime | None, grace: timedelta) -> str:
    """"in_flight" while every record past a hole was committed less than ``grace`` ago."""
    if now is None or not beyond_pushed:
        return "gap"
    return "in_flight" if min(now - t for t in beyond_pushed) < grace and max(beyond_pushed) > now - grace else "gap"


def load_catalog(repo: Repository, source: str, gap_grace: float | None = None) -> Catalog:
    """Every readable manifest and log record of ``source``; the unreadable ones as Damaged."""
    damaged: list[Damaged] = []
    mprefix = fmt.manifest_key(source, "")
    lprefix = fmt.log_key(source, "")
    mkeys = sorted(i.key for i in repo.storage.list(mprefix))
    # Catalog objects first: the records they hold are taken from them (authoritative); only
    # the single records none holds are read one by one.
    view = logcat.scan(repo, source)
    lkeys = [lprefix + n for n in view.uncovered_singles()]

    def manifest(key: str) -> Manifest | Damaged:
        try:
            return repo._load_manifest_key(key)
        except (DrkitError, ValueError, KeyError, TypeError) as exc:
            return Damaged(key, "manifest", key[len(mprefix):], _reason(exc))

    def log(key: str) -> LogRecord | Damaged:
        name = key[len(lprefix):]
        try:
            rec = logcat.read_single(repo, source, name)
        except (DrkitError, ValueError, KeyError, TypeError) as exc:
            return Damaged(key, "log", name, _reason(exc))
        if rec is None:
            return Damaged(key, "log", name, "listed but gone when read")
        if rec.name != name or rec.source != source:
            return Damaged(key, "log", name, f"claims to be {rec.source}/{rec.name}")
        return rec

    with ThreadPoolExecutor(16) as pool:
        ms = list(pool.map(manifest, mkeys))
        ls = list(pool.map(log, lkeys))
    manifests = [m for m in ms if isinstance(m, Manifest)]
    logs = [r for r in ls if isinstance(r, LogRecord)] + list(view.records.values())
    logs.sort(key=lambda r: r.name)
    damaged = [d for d in ms + ls if isinstance(d, Damaged)]
    for name, (a, b) in sorted(view.conflicts.items()):
        damaged.append(Damaged(a, "log", name, f"differs between {a} and {b} (neither is used; run 'drkit verify')"))
    for cat, why in view.damaged:
        damaged.append(Damaged(cat.key, "log", cat.first or cat.key, logcat.damaged_reason(view, cat, why)))
    manifests.sort(key=lambda m: (m.finished, m.id))
    grace = GAP_GRACE if gap_grace is None else timedelta(seconds=gap_grace)
    return Catalog(source, manifests, logs, damaged, repo.server_time(), grace)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NotFoundError):
        return "listed but gone when read"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, DrkitError) else f"unreadable ({type(exc).__name__}: {text})"


def check_present(repo: Repository, needs: list[tuple[str, Any]]) -> None:
    """Before a restore touches its target: every chunk the plan reads must be in a pack that
    exists.

    ``needs`` is a list of (what needs it, StreamRef) pairs: a backup's streams, log records.
    One listing of the data prefix, no download; a chunk whose recorded pack is gone counts as
    present when the index places it in a pack that exists (the index is authoritative).
    Raises IntegrityError naming the missing packs and what is in them.
    """
    if not needs:
        return
    present = {i.key for i in repo.storage.list(fmt.DATA_PREFIX)}
    missing: dict[str, list[str]] = {}
    index = None
    for user, stream in needs:
        for ref in stream.chunks:
            if fmt.pack_key(ref[1]) in present:
                continue
            if index is None:
                index = repo.load_index()
            loc = index.get(ref[0])
            if loc is not None and fmt.pack_key(loc.pack) in present:
                continue
            missing.setdefault(ref[1], []).append(user)
    if not missing:
        return
    parts = []
    for pack, users in sorted(missing.items()):
        shown = sorted(set(users))
        more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
        parts.append(f"{fmt.pack_key(pack)} (holds {', '.join(shown[:8])}{more})")
    first = fmt.pack_key(sorted(missing)[0])
    raise IntegrityError(
        f"the restore needs {len(missing)} pack(s) that are missing from the repository: {'; '.join(parts)}. "
        "Nothing was written to the target. Run 'drkit verify' to see every restore point this breaks, and "
        "restore to a point that does not need them (see 'drkit list').", key=first)
