"""Sealed log catalog objects: many log records of one source in one object.

A catalog object ``logcat/<source>/<YYYYMMDD>~<first>~<last>~<count>~<hash>`` holds the full
:class:`LogRecord` documents of one *span*: the records of one source pushed on one UTC day
(by their ``pushed`` time), at most :data:`MAX_SPAN` of them (a day with more is split, in
name order, into several spans).  ``<first>``/``<last>`` are the first and last record names it
holds, ``<count>`` their number and ``<hash>`` a digest of the names and stream digests, so the
key is deterministic: two writers sealing the same records compute the same key, and the
exclusive put lets exactly one of them win.  The key alone tells a reader which names a damaged
object would have held (the names between first and last), so damage stays contained.

Authority: once written and read back a catalog object is authoritative for the records it
holds -- readers take those records from it and never read their single ``logs/`` objects.
See docs/repository-format.md ("Log catalog objects").
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from drkit.errors import AlreadyExistsError, DrkitError, IntegrityError, NotFoundError
from drkit.repository import format as fmt
from drkit.repository.manifest import LogRecord, StreamRef, parse_iso

if TYPE_CHECKING:
    from drkit.repository.repo import Repository

log = logging.getLogger(__name__)

KIND = "logcat"
FORMAT = 1
SEP = "~"
MAX_SPAN = 5000  # records per catalog object: a day of WAL at archive_timeout=60 is 1,440
SEAL_DELAY = timedelta(hours=1)  # a day is sealed only this long after it ended (storage clock)
SEAL_THRESHOLD = 2000  # put_log seals once this many single records lie outside every catalog object
SEAL_CHECK_EVERY = 64  # put_log checks the threshold for one push name in this many (by hash)


@dataclass(frozen=True)
class CatKey:
    """What a catalog object's key says about it (readable even when the object is damaged)."""

    key: str
    source: str
    day: str
    first: str
    last: str
    count: int
    digest: str

    def covers(self, name: str) -> bool:
        return self.first <= name <= self.last

    @property
    def span(self) -> str:
        return f"{self.first}..{self.last}"


@dataclass
class CatalogView:
    """One pass over a source's catalog objects and single records."""

    source: str
    singles: set[str]
    cats: list[CatKey]
    records: dict[str, LogRecord] = field(default_factory=dict)  # name -> record, from catalog objects
    holder: dict[str, str] = field(default_factory=dict)  # name -> catalog key it was taken from
    damaged: list[tuple[CatKey, str]] = field(default_factory=list)  # (catalog, reason)
    conflicts: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (key a, key b)

    def names(self) -> list[str]:
        """Every record name readable: from catalog objects and single records."""
        return sorted((self.singles | set(self.records)) - set(self.conflicts))

    def uncovered_singles(self) -> list[str]:
        """Single records no healthy catalog object holds (read one by one)."""
        return sorted(n for n in self.singles if n not in self.records and n not in self.conflicts)

    def lost(self, cat: CatKey) -> int:
        """How many of a damaged catalog object's records have no single object to fall back on
        (a lower bound from the key's count: the single records in its span are the fallback)."""
        here = sum(1 for n in self.singles if cat.covers(n)) + sum(
            1 for n, k in self.holder.items() if k != cat.key and cat.covers(n) and n not in self.singles)
        return max(0, cat.count - here)


def prefix(source: str) -> str:
    return f"{fmt.LOGCAT_PREFIX}{source}/"


def sealable_name(name: str) -> bool:
    return bool(name) and SEP not in name and "/" not in name


def make_key(source: str, day: str, records: list[LogRecord]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for r in records:
        h.update(f"{r.name}\0{r.stream.digest}\0{r.stream.size}\n".encode())
    return f"{prefix(source)}{day}{SEP}{records[0].name}{SEP}{records[-1].name}{SEP}{len(records)}{SEP}{h.hexdigest()}"


def parse_key(key: str) -> CatKey | None:
    if not key.startswith(fmt.LOGCAT_PREFIX):
        return None
    source, _, rest = key[len(fmt.LOGCAT_PREFIX):].partition("/")
    parts = rest.split(SEP)
    if not source or len(parts) != 5 or not parts[3].isdigit():
        return None
    return CatKey(key, source, parts[0], parts[1], parts[2], int(parts[3]), parts[4])


def encode(source: str, day: str, records: list[LogRecord]) -> bytes:
    doc = {"kind": KIND, "format_version": FORMAT, "source": source, "day": day,
           "first": records[0].name, "last": records[-1].name, "count": len(records),
           "records": [json.loads(r.to_json()) for r in records]}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode(cat: CatKey, data: bytes) -> list[LogRecord]:
    """The records of a catalog object; IntegrityError if it disagrees with its key."""
    try:
        doc = json.loads(data)
        if doc.get("kind") != KIND:
            raise ValueError("not a log catalog object")
        records = []
        append = records.append
        for d in doc["records"]:
            if d.pop("kind", None) != "log":
                raise ValueError("an entry is not a log record")
            st = d["stream"]
            d["stream"] = StreamRef(st["name"], int(st["size"]), st["digest"], st["chunks"], st.get("meta") or {})
            append(LogRecord(**d))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{cat.key}: unreadable log catalog object ({type(exc).__name__}: {exc})",
                             key=cat.key) from None
    names = [r.name for r in records]
    wrong = [r.name for r in records if r.source != cat.source]
    if (doc.get("source") != cat.source or wrong or not records or names != sorted(set(names))
            or names[0] != cat.first or names[-1] != cat.last or len(records) != cat.count):
        raise IntegrityError(f"{cat.key}: log catalog object does not match its key (source, first/last "
                             f"name or count differ{'; records of another source: ' + wrong[0] if wrong else ''})",
                             key=cat.key)
    return records


def load_object(repo: Repository, cat: CatKey) -> list[LogRecord]:
    return decode(cat, repo._open_json(KIND, cat.key, repo.storage.get(cat.key)))


def list_cats(repo: Repository, source: str) -> list[CatKey]:
    out = []
    for info in repo.storage.list(prefix(source)):
        cat = parse_key(info.key)
        if cat is None or cat.source != source:
            # an object under logcat/ whose key is not ours: a damaged one with no known span
            out.append(CatKey(info.key, source, "", "", "", 0, ""))
        else:
            out.append(cat)
    return sorted(out, key=lambda c: c.key)


def scan(repo: Repository, source: str, *, covering: str | None = None) -> CatalogView:
    """Load the catalog objects of ``source`` (only those whose span covers ``covering`` if
    given) and list its single records (not when ``covering`` is given)."""
    cats = list_cats(repo, source)
    if covering is not None:
        cats = [c for c in cats if c.covers(covering)]
        singles: set[str] = set()
    else:
        lp = fmt.log_key(source, "")
        singles = {i.key[len(lp):] for i in repo.storage.list(lp)}
    view = CatalogView(source, singles, cats)

    def load(cat: CatKey) -> list[LogRecord] | str:
        if not cat.first:
            return "its key does not name a span (not a drkit log catalog key)"
        try:
            return load_object(repo, cat)
        except NotFoundError:
            return "listed but gone when read"
        except (DrkitError, ValueError) as exc:
            return str(exc) or type(exc).__name__

    with ThreadPoolExecutor(4) as pool:
        for cat, got in zip(cats, pool.map(load, cats), strict=True):
            if isinstance(got, str):
                view.damaged.append((cat, got))
                continue
            for rec in got:
                prev = view.holder.get(rec.name)
                if prev is not None and rec.to_json() != view.records[rec.name].to_json():
                    view.conflicts[rec.name] = (prev, cat.key)
                    continue
                view.records.setdefault(rec.name, rec)
                view.holder.setdefault(rec.name, cat.key)
    for name in view.conflicts:
        view.records.pop(name, None)
    return view


def damaged_reason(view: CatalogView, cat: CatKey, why: str) -> str:
    lost = view.lost(cat) if cat.first else None
    tail = ("its records are read from their single objects" if lost == 0 else
            f"{lost} of its {cat.count} records have no single object and are unreadable" if lost else
            "the records it holds are unknown")
    span = f" (span {cat.span}, {cat.count} records)" if cat.first else ""
    return f"damaged log catalog object{span}: {why}; {tail}"


@dataclass
class SealResult:
    written: list[str] = field(default_factory=list)  # catalog keys this call wrote
    existing: list[str] = field(default_factory=list)  # keys another writer had written identically
    sealed: int = 0  # records now held by the objects above
    deleted: list[str] = field(default_factory=list)  # single record keys removed
    not_deleted: list[str] = field(default_factory=list)


def write_object(repo: Repository, source: str, day: str, records: list[LogRecord]) -> tuple[str, bool]:
    """Write one catalog object exclusively and read it back.  Returns (key, written_by_us).
    Another writer's object under the same key must hold exactly the same records."""
    records = sorted(records, key=lambda r: r.name)
    key = make_key(source, day, records)
    cat = parse_key(key)
    assert cat is not None
    data = encode(source, day, records)
    ours = True
    try:
        repo.storage.put(key, repo._seal_json(KIND, key, data), exclusive=True)
    except AlreadyExistsError:
        ours = False
    back = load_object(repo, cat)
    if [r.to_json() for r in back] != [r.to_json() for r in records]:
        raise IntegrityError(f"{key}: the log catalog object read back differs from what was "
                             f"{'written' if ours else 'about to be written (another writer sealed the span)'}; "
                             "the single records are kept. Run 'drkit verify'.", key=key)
    return key, ours


def day_of(rec: LogRecord) -> str | None:
    try:
        return parse_iso(rec.pushed).astimezone(UTC).strftime("%Y%m%d")
    except (ValueError, TypeError):
        return None


def seal(repo: Repository, source: str, *, min_records: int = 1, before: datetime | None = None,
         delete_replaced: bool = False) -> SealResult:
    """Seal the complete days of single records into catalog objects (see module doc)."""
    result = SealResult()
    cutoff = before if before is not None else repo.server_time() - SEAL_DELAY
    if cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=UTC)
    view = scan(repo, source)
    todo = [n for n in view.uncovered_singles() if sealable_name(n)]
    with ThreadPoolExecutor(16) as pool:
        recs = [r for r in pool.map(lambda n: read_single(repo, source, n), todo) if r is not None]
    by_day: dict[str, list[LogRecord]] = {}
    for rec in recs:
        day = day_of(rec)
        if day is None:
            continue
        end = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC) + timedelta(days=1)
        if end <= cutoff:
            by_day.setdefault(day, []).append(rec)
    if sum(len(v) for v in by_day.values()) >= max(1, min_records):
        for day, items in sorted(by_day.items()):
            items.sort(key=lambda r: r.name)
            for i in range(0, len(items), MAX_SPAN):
                part = items[i:i + MAX_SPAN]
                key, ours = write_object(repo, source, day, part)
                (result.written if ours else result.existing).append(key)
                result.sealed += len(part)
                for r in part:
                    view.records[r.name] = r
                    view.holder[r.name] = key
    if delete_replaced:
        doomed = []
        for name in sorted(view.singles):
            held = view.records.get(name)
            if held is None or name in view.conflicts:
                continue
            single = read_single(repo, source, name)
            if single is not None and single.to_json() != held.to_json():
                log.warning("log record %s differs from %s; both kept", fmt.log_key(source, name),
                            view.holder[name])
                continue
            doomed.append(fmt.log_key(source, name))
        result.not_deleted = repo.storage.delete_many(doomed)
        result.deleted = [k for k in doomed if k not in set(result.not_deleted)]
    return result


def read_single(repo: Repository, source: str, name: str) -> LogRecord | None:
    """The single ``logs/`` object of a record (no catalog lookup), or None."""
    key = fmt.log_key(source, name)
    try:
        return LogRecord.from_json(repo._open_json("log", key, repo.storage.get(key)))
    except NotFoundError:
        return None


def maybe_seal(repo: Repository, source: str, name: str) -> None:
    """put_log's cheap threshold check: for one name in SEAL_CHECK_EVERY (by hash), one listing
    of the source's single records and catalog keys; seal (write only) past SEAL_THRESHOLD."""
    if int.from_bytes(hashlib.blake2b(f"{source}/{name}".encode(), digest_size=4).digest(), "big") % SEAL_CHECK_EVERY:
        return
    try:
        cats = list_cats(repo, source)
        lp = fmt.log_key(source, "")
        outside = sum(1 for i in repo.storage.list(lp) if not any(c.covers(i.key[len(lp):]) for c in cats))
        if outside >= SEAL_THRESHOLD:
            res = seal(repo, source, min_records=SEAL_THRESHOLD // 2)
            log.info("sealed %d log records of %s into %d catalog object(s)", res.sealed, source,
                     len(res.written))
    except DrkitError as exc:  # the push is committed; sealing is an optimisation
        log.warning("could not seal the log catalog of %s: %s", source, exc)


def delete_records(repo: Repository, source: str, names: Iterable[str]) -> list[str]:
    """Remove records: rewrite each catalog object holding some of them without them (new
    object written and read back before the old is deleted), then delete the single objects.
    Returns the keys that could not be deleted."""
    gone = set(names)
    failed: list[str] = []
    for cat in list_cats(repo, source):
        if not cat.first or not any(cat.covers(n) for n in gone):
            continue
        try:
            records = load_object(repo, cat)
        except NotFoundError:
            continue
        except (DrkitError, ValueError) as exc:
            raise IntegrityError(f"{cat.key}: cannot remove log records from a damaged log catalog object "
                                 f"(span {cat.span}): {exc}. Nothing was deleted from it; run 'drkit verify'.",
                                 key=cat.key) from None
        keep = [r for r in records if r.name not in gone]
        if len(keep) == len(records):
            continue
        if keep:
            write_object(repo, source, cat.day, keep)
        failed += repo.storage.delete_many([cat.key])
    failed += repo.storage.delete_many([fmt.log_key(source, n) for n in sorted(gone)])
    return failed


class Lookup:
    """get_log's per-repository cache of catalog objects (immutable, so safe to keep)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.cache: dict[str, dict[str, LogRecord]] = {}
        self.lock = threading.Lock()  # wal-fetch's prefetch threads share one repository

    def find(self, repo: Repository, source: str, name: str) -> LogRecord | None:
        for cat in list_cats(repo, source):
            if not cat.first or not cat.covers(name):
                continue
            with self.lock:
                got = self.cache.get(cat.key)
            if got is None:
                try:
                    got = {r.name: r for r in load_object(repo, cat)}
                except NotFoundError:
                    continue
                except (DrkitError, ValueError):
                    continue  # damaged: the caller falls back to the single object
                with self.lock:
                    while len(self.cache) >= self.size:
                        self.cache.pop(next(iter(self.cache)))
                    self.cache[cat.key] = got
            if name in got:
                return got[name]
        return None


def lookup_for(repo: Repository) -> Lookup:
    got = getattr(repo, "_logcat_lookup", None)
    if got is None:
        got = Lookup()
        repo._logcat_lookup = got  # type: ignore[attr-defined]
    return got


def as_dicts(view: CatalogView) -> list[dict[str, Any]]:
    return [{"object": c.key, "span": c.span, "error": why} for c, why in view.damaged]
