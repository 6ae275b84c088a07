"""WAL archiving: ``drkit pg wal-push`` (archive_command) and ``wal-fetch`` (restore_command)."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drkit.errors import AlreadyExistsError, ChainBroken, ConfigError, NotFoundError, SourceError
from drkit.repository import Repository, crashpoints
from drkit.repository.format import object_aad

from .options import PgOptions
from .walnames import (
    BACKUP_RE,
    HISTORY_RE,
    PARTIAL_RE,
    RECEIVED_RE,
    SEGMENT_RE,
    is_valid_wal_name,
    parse_segment,
)

log = logging.getLogger(__name__)

_TS_RE = re.compile(
    r"desc: (?:COMMIT|ABORT)\w* (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (UTC|GMT|[+-]\d\d)"
)


def segment_header(path: Path) -> dict[str, int]:
    """System identifier, timeline and segment size from the segment's long page header."""
    with open(path, "rb") as fh:
        head = fh.read(40)
    if len(head) < 40:
        raise SourceError(f"{path} is too short to be a WAL segment")
    tli = int.from_bytes(head[4:8], "little")
    sysid = int.from_bytes(head[24:32], "little")
    seg_size = int.from_bytes(head[32:36], "little")
    return {"timeline": tli, "system_identifier": sysid, "segment_size": seg_size}


def commit_times(opts: PgOptions, path: Path) -> dict[str, Any]:
    """First/last commit (and abort) timestamps in one segment, via pg_waldump.

    ``commit_times_ok`` is false when pg_waldump could not decode the segment at all (missing
    tool, another major version, garbage): the chain logic then treats the segment's times as
    unknown instead of "no commits".
    """
    def waldump(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [opts.tool("pg_waldump"), *args, str(path)],
            capture_output=True, text=True, env=opts.env(), timeout=300, check=False,
        )

    # Only the Transaction records are printed (pg_waldump still decodes every record): a busy
    # segment holds ~100k records, and printing and parsing all of them cost ~0.2 s of CPU.
    # pg_waldump exits non-zero at the segment's end (a record continues in the next file):
    # that is expected; what it printed before is valid.
    try:
        proc = waldump("--rmgr=Transaction")
        stamps, records = [], 0
        for line in proc.stdout.splitlines():
            if not line.startswith("rmgr:"):
                continue
            records += 1
            m = _TS_RE.search(line)
            if m:
                stamps.append(_to_iso(m.group(1)))
        if records == 0:
            # No transaction record: a segment without commits, or one pg_waldump cannot decode
            # at all.  Its first record (any kind) tells which.
            proc = waldump("--limit=1")
            records = sum(1 for line in proc.stdout.splitlines() if line.startswith("rmgr:"))
    except (OSError, subprocess.TimeoutExpired, ConfigError) as exc:
        log.warning("pg_waldump failed on %s: %s", path.name, exc)
        return {"commit_times_ok": False, "first_commit": None, "last_commit": None, "commits": 0}
    ok = records > 0
    if not ok:
        log.warning("pg_waldump decoded no record in %s: %s", path.name, proc.stderr.strip()[-300:])
    return {
        "commit_times_ok": ok,
        "first_commit": min(stamps) if stamps else None,
        "last_commit": max(stamps) if stamps else None,
        "commits": len(stamps),
    }


def _to_iso_ts(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _to_iso(text: str) -> str:
    dt = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return dt.isoformat().replace("+00:00", "Z")


def _sysid_key(source: str) -> str:
    return f"sources/{source}/postgres-system-id"


def check_system_id(repo: Repository, source: str, sysid: int) -> None:
    """Bind a source name to one PostgreSQL cluster; refuse another cluster's WAL or backups."""
    key = _sysid_key(source)
    body = json.dumps({"system_identifier": str(sysid)}).encode()
    try:
        sealed = repo.storage.get(key)
    except NotFoundError:
        try:
            repo.storage.put(key, repo.keys.seal(body, object_aad("sysid", key)))
            return
        except AlreadyExistsError:  # a concurrent first push won the race: compare with it
            sealed = repo.storage.get(key)
    stored = json.loads(repo.keys.open(sealed, object_aad("sysid", key), what=key))["system_identifier"]
    if stored != str(sysid):
        raise ChainBroken(
            f"source {source!r} belongs to PostgreSQL cluster {stored}, but this cluster is {sysid}: "
            "refusing to mix another cluster's WAL or backups into it. Configure a new source name "
            "for this cluster."
        )


def read_system_id(repo: Repository, source: str) -> tuple[str, str] | None:
    """The stored system identifier of ``source`` as (key, identifier), without writing anything.

    ``None`` when no WAL push or backup has bound the source yet.  A stored object that does not
    authenticate or parse raises :class:`IntegrityError` naming its key (``drkit verify``).
    """
    from drkit.errors import IntegrityError

    key = _sysid_key(source)
    try:
        sealed = repo.storage.get(key)
    except NotFoundError:
        return None
    try:
        doc = json.loads(repo.keys.open(sealed, object_aad("sysid", key), what=key))
        stored = doc["system_identifier"]
        int(stored)
    except IntegrityError:
        raise
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{key}: not a system identifier record", key=key) from None
    return key, str(stored)


def wal_push(repo: Repository, source: str, opts: PgOptions, path: Path) -> tuple[str, dict[str, Any]]:
    name = path.name
    if not is_valid_wal_name(name):
        raise ConfigError(f"{name} is not a WAL file name")
    if not path.is_file():
        raise SourceError(f"WAL file {path} does not exist")
    meta: dict[str, Any] = {"kind": _kind(name)}
    if SEGMENT_RE.match(name) or PARTIAL_RE.match(name):
        header = segment_header(path)
        check_system_id(repo, source, header["system_identifier"])
        meta.update(header)
        meta["system_identifier"] = str(header["system_identifier"])
        meta.update(commit_times(opts, path))
        if SEGMENT_RE.match(name):
            # A complete segment's last write: every commit before it is in this or an earlier
            # segment, so the chain's newest safe time reaches it even on an idle database.
            meta["closed_at"] = _to_iso_ts(path.stat().st_mtime)
        parsed = parse_segment(name[:24], header["segment_size"])
        if parsed:
            meta["segno"] = parsed[1]
    else:
        # History and backup-label files carry no system identifier of their own: take the
        # cluster's from pg_control beside pg_wal (archive_command runs in the data directory).
        sysid = _cluster_system_id(path)
        if sysid is not None:
            check_system_id(repo, source, sysid)
            meta["system_identifier"] = str(sysid)
    if HISTORY_RE.match(name):
        from .walnames import parse_history

        text = path.read_text(errors="replace")
        meta["history"] = [[e.parent_tli, e.switch_lsn] for e in parse_history(text)]
    with open(path, "rb") as fh:
        status, record = repo.put_log(source, name, fh, meta)
    return status, record.metadata


PUSH_AHEAD = 8
ARCHIVED_DIR = "drkit-archived"
STALE_MARKER_SECONDS = 24 * 3600
_REPO_ID_RE = re.compile(r"[0-9a-f]{8,64}")
_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class Destination:
    """Where one wal-push archives to: a repository (its id and storage URL) and a source.

    Push-ahead markers are kept per destination, so a marker answers only the archive_command
    call of the destination that wrote it (``A && B`` archive commands: see docs/user-guide.md).
    The URL is part of it because a copied repository keeps its id.
    """

    repository_id: str
    source: str
    url: str

    @property
    def url_tag(self) -> str:
        import blake3

        return blake3.blake3(self.url.encode()).hexdigest()[:16]

    def record(self, digest: str) -> str:
        """A marker's content: the file's BLAKE3 and the destination it was archived to."""
        return json.dumps({"blake3": digest, "repository": self.repository_id,
                           "source": self.source, "url": self.url_tag}, sort_keys=True)


def destination_of(repo: Repository, source: str) -> Destination:
    return Destination(repo.id, source, repo.storage.url)


def peek_destination(storage: Any, source: str) -> Destination | None:
    """The destination read from the repository's plaintext ``config`` object, without the key.

    Cheap enough for archive_command's fast path (one small GET).  ``None`` when it cannot be
    read or does not look like a drkit config: the caller then opens the repository properly,
    which reports any real problem.  The id is not authenticated here; a marker only exists
    for an id a full open (config MAC checked) wrote, so a forged id can only miss markers.
    """
    from drkit.repository.format import CONFIG_KEY

    try:
        config = json.loads(storage.get(CONFIG_KEY))["config"]
        repo_id = config["id"]
    except Exception as exc:  # noqa: BLE001 - no fast path; the full open names the problem
        log.debug("reading the repository id for the push-ahead fast path failed: %s", exc)
        return None
    if not isinstance(repo_id, str) or not _REPO_ID_RE.fullmatch(repo_id):
        return None
    return Destination(repo_id, source, storage.url)


def _marker_dir(path: Path, dest: Destination | None = None) -> Path | None:
    """``<data dir>/drkit-archived`` (``dest`` None) or that destination's marker directory in it."""
    parent = path.absolute().parent
    if parent.name != "pg_wal":
        return None
    root = parent.parent / ARCHIVED_DIR
    return root if dest is None else root / _dirname(dest.repository_id) / _dirname(dest.source)


def _dirname(text: str) -> str:
    """``text`` as one safe directory name ("main" stays "main"; "." or "a/b" cannot escape)."""
    return "".join(c if c in _SAFE_CHARS else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def has_marker(path: Path, source: str) -> bool:
    """Whether a push-ahead marker of some repository for ``source`` exists for this file.

    A local check only: when it is false, archive_command's call skips the fast path without
    touching the repository's storage.
    """
    root = _marker_dir(path)
    return root is not None and any(root.glob(f"*/{glob.escape(_dirname(source))}/{glob.escape(path.name)}"))


def _file_digest(path: Path) -> str:
    import blake3

    h = blake3.blake3()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def pushed_ahead(path: Path, dest: Destination) -> bool:
    """True when an earlier wal-push already archived exactly this file to ``dest``.

    The marker (``drkit-archived/<repository id>/<source>/<name>``) names the file's BLAKE3
    and the destination; it is consumed here, so the call PostgreSQL makes for that file
    returns at once without opening the repository.  Another destination's marker never
    answers.  A marker for this destination that does not match the file (or cannot be read)
    is removed and the file is pushed normally; one whose content names another destination
    (a copy of the repository at another URL keeps its id) is left to it, or to the sweep.
    """
    markers = _marker_dir(path, dest)
    if markers is None:
        return False
    marker = markers / path.name
    try:
        stored = marker.read_text()
    except OSError:
        return False
    try:
        doc = json.loads(stored)
        digest = doc["blake3"]
        if not isinstance(digest, str):
            raise TypeError(digest)
    except (ValueError, KeyError, TypeError):
        marker.unlink(missing_ok=True)
        return False
    if dest.record(digest) != stored:
        return False
    marker.unlink(missing_ok=True)
    # Leave no empty directories behind (a concurrent push-ahead that loses its directory here
    # only skips that marker: the file is then pushed by its own call).
    for empty in (markers, markers.parent):
        with contextlib.suppress(OSError):
            empty.rmdir()
    return digest == _file_digest(path)


def write_marker(path: Path, dest: Destination, digest: str) -> None:
    """Record that ``path`` (with BLAKE3 ``digest``) is archived to ``dest``: tmp + rename.

    Call only once the file's log record is committed in the repository.
    """
    markers = _marker_dir(path, dest)
    if markers is None:
        return
    markers.mkdir(parents=True, exist_ok=True)
    tmp = markers / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(dest.record(digest))
    os.replace(tmp, markers / path.name)


def sweep_markers(path: Path, keep: Destination | None = None, max_age: float = STALE_MARKER_SECONDS) -> int:
    """Remove markers that can no longer answer a call; return how many were removed.

    That is: markers of the old layout (``drkit-archived/<name>``, which named no destination),
    markers whose WAL file is gone from pg_wal (its archive_command call has passed), and markers
    (or leftover temporary files) older than ``max_age`` — left by a destination that is no
    longer in archive_command.  Removing a marker is always safe: that destination's own call
    then pushes the file again, which is idempotent.  Empty directories of other destinations
    are removed once old.
    """
    root = _marker_dir(path)
    if root is None or not root.is_dir():
        return 0
    wal_dir = path.absolute().parent
    own = _marker_dir(path, keep) if keep is not None else None
    now = time.time()
    removed = 0

    def old(p: Path) -> bool:
        try:
            return now - p.lstat().st_mtime > max_age
        except OSError:
            return False

    def drop(p: Path) -> None:
        nonlocal removed
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass

    for top in list(root.iterdir()):
        if not top.is_dir() or top.is_symlink():
            drop(top)  # old layout, or something that is not ours to keep
            continue
        for sub in list(top.iterdir()):
            if not sub.is_dir() or sub.is_symlink():
                drop(sub)
                continue
            for marker in list(sub.iterdir()):
                if marker.name.startswith("."):
                    if old(marker):
                        drop(marker)
                elif old(marker) or not (wal_dir / marker.name).exists():
                    drop(marker)
            if sub != own and old(sub):
                with contextlib.suppress(OSError):
                    sub.rmdir()
        if own is None or top != own.parent:
            with contextlib.suppress(OSError):
                if old(top):
                    top.rmdir()
    return removed


def push_ahead(repo: Repository, source: str, opts: PgOptions, path: Path, count: int = PUSH_AHEAD) -> list[str]:
    """Archive up to ``count`` more WAL files PostgreSQL has marked ``.ready``, in parallel,
    leaving a marker for each (for this repository and source only) so its own archive_command
    call for this destination returns immediately.

    Best effort: a failure here only means PostgreSQL's own call for that file does the work.
    """
    dest = destination_of(repo, source)
    markers = _marker_dir(path, dest)
    status_dir = path.absolute().parent / "archive_status"
    if markers is None or not status_dir.is_dir() or count <= 0:
        return []
    try:
        sweep_markers(path, keep=dest)
    except OSError as exc:
        log.info("sweeping stale push-ahead markers failed: %s", exc)
    ready = sorted(p.name[: -len(".ready")] for p in status_dir.glob("*.ready"))
    todo = [n for n in ready if n != path.name and is_valid_wal_name(n) and not (markers / n).exists()][:count]
    if not todo:
        return []

    def one(name: str) -> str | None:
        file = path.absolute().parent / name
        try:
            digest = _file_digest(file)
            wal_push(repo, source, opts, file)  # returns once the log record is committed
            write_marker(file, dest, digest)
            return name
        except Exception as exc:  # noqa: BLE001 - best effort, see docstring
            log.info("push-ahead of %s skipped: %s", name, exc)
            return None

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        return [n for n in pool.map(one, todo) if n]


# -- the background pusher -----------------------------------------------------------------
#
# PostgreSQL calls archive_command for one file at a time, in order.  A call that has to push
# its file itself starts (if none runs) a detached *pusher* for its destination, which keeps
# archiving the ``.ready`` files after it, in parallel, each followed by its marker, while
# PostgreSQL's calls for them return at once on the marker.  The pusher lingers a few seconds
# after the backlog is empty, so a sustained load keeps one pusher, not one per call.
#
# Acknowledgement: a call returns 0 only after its own push committed, or on a marker written
# after the pusher's push committed (and checked against the file's BLAKE3).  Claims keep the
# pusher and PostgreSQL's own call from pushing the same file (and the pusher from leaving a
# marker no call will consume): each call first writes ``fg.<name>`` and then looks for the
# pusher's ``bg.<name>``; the pusher writes ``bg.<name>`` and then looks for ``fg.<name>``, so
# at least one of them sees the other.  The pusher skips a file with a ``fg`` claim; a call that
# sees a ``bg`` claim of a live pusher waits for it (the marker is written before the claim is
# removed).  Claims and the pusher's lock live in ``<data dir>/drkit-pusher/<repo id>/<source>``.

PUSHER_DIR = "drkit-pusher"
PUSHER_THREADS = 3
PUSHER_LINGER = 5.0  # seconds the pusher waits for new .ready files before it exits
PUSHER_MAX_SECONDS = 600.0  # a pusher exits after this long; the next call starts another
PUSHER_WAIT = 120.0  # how long a call waits for the pusher's push of its own file


def _pusher_dir(path: Path, dest: Destination) -> Path | None:
    parent = path.absolute().parent
    if parent.name != "pg_wal":
        return None
    return parent.parent / PUSHER_DIR / _dirname(dest.repository_id) / _dirname(dest.source)


def _ready(wal_dir: Path, name: str) -> bool:
    return (wal_dir / "archive_status" / f"{name}.ready").exists()


def _touch(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def _lock_held(lock: Path) -> bool:
    """Whether a live pusher holds ``lock`` (a flock, released by the kernel when it dies)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken just now
    return False


def claim_foreground(path: Path, dest: Destination) -> None:
    """Tell the pusher that PostgreSQL's own call for ``path`` runs (it then leaves the file
    alone); also drop the claims of files PostgreSQL has archived since (no one pushes those)."""
    pdir = _pusher_dir(path, dest)
    if pdir is None:
        return
    try:
        pdir.mkdir(parents=True, exist_ok=True)
        _touch(pdir / f"fg.{path.name}")
        _drop_done_claims(pdir, path.absolute().parent, keep=path.name)
    except OSError as exc:  # then no pusher can coordinate with this call: it pushes itself
        log.info("claiming %s for archive_command failed: %s", path.name, exc)


def _drop_done_claims(pdir: Path, wal_dir: Path, keep: str | None = None) -> None:
    for claim in pdir.glob("fg.*"):
        name = claim.name[3:]
        if name != keep and not _ready(wal_dir, name):
            claim.unlink(missing_ok=True)


def wait_for_pusher(path: Path, dest: Destination, timeout: float = PUSHER_WAIT) -> bool:
    """If a live pusher is pushing ``path`` right now, wait until it is done; True when it left
    a marker (the caller still checks it with :func:`pushed_ahead`)."""
    pdir = _pusher_dir(path, dest)
    markers = _marker_dir(path, dest)
    if pdir is None or markers is None:
        return False
    bg = pdir / f"bg.{path.name}"
    deadline = time.monotonic() + timeout
    while bg.exists() and _lock_held(pdir / "pusher.lock") and time.monotonic() < deadline:
        time.sleep(0.02)
    return (markers / path.name).exists()


def run_pusher(repo: Repository, source: str, opts: PgOptions, path: Path, *, threads: int = PUSHER_THREADS,
               linger: float = PUSHER_LINGER, max_seconds: float = PUSHER_MAX_SECONDS) -> list[str]:
    """Archive the ``.ready`` files beside ``path`` (oldest first, ``threads`` at a time, each
    followed by its marker) until none is left for ``linger`` seconds; return the names pushed.

    Returns at once (nothing pushed) when another pusher of this destination runs.  Files with a
    ``fg`` claim (PostgreSQL's own call is at them) are skipped.  Best effort like push-ahead:
    a file that fails is left to PostgreSQL's own call; repeated failures end the pusher.
    """
    import fcntl
    from concurrent.futures import ThreadPoolExecutor

    dest = destination_of(repo, source)
    pdir, markers = _pusher_dir(path, dest), _marker_dir(path, dest)
    wal_dir = path.absolute().parent
    status_dir = wal_dir / "archive_status"
    if pdir is None or markers is None or not status_dir.is_dir():
        return []
    pdir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(pdir / "pusher.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        return []
    pushed: list[str] = []
    done: set[str] = set()
    try:
        for stale in pdir.glob("bg.*"):  # a dead pusher's (we hold the lock)
            stale.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            sweep_markers(path, keep=dest)

        def one(name: str) -> str | None:
            bg = pdir / f"bg.{name}"
            try:
                _touch(bg)
                # After the bg claim: a call that started before it is seen here, one that starts
                # after it sees the bg claim and waits.  A file no longer .ready is archived.
                if (pdir / f"fg.{name}").exists() or not _ready(wal_dir, name):
                    return None
                file = wal_dir / name
                digest = _file_digest(file)
                wal_push(repo, source, opts, file)  # returns once the log record is committed
                crashpoints.hit("wal.pusher.before_marker")
                write_marker(file, dest, digest)
                crashpoints.hit("wal.pusher.after_marker")
                return name
            except Exception as exc:  # noqa: BLE001 - best effort: the file's own call pushes it
                log.info("pusher: %s skipped: %s", name, exc)
                return None
            finally:
                bg.unlink(missing_ok=True)

        started = idle = time.monotonic()
        failed_rounds = 0
        with ThreadPoolExecutor(threads) as pool:
            while time.monotonic() - started < max_seconds:
                ready = sorted(p.name[: -len(".ready")] for p in status_dir.glob("*.ready"))
                todo = [n for n in ready if n not in done and is_valid_wal_name(n)
                        and not (markers / n).exists() and not (pdir / f"fg.{n}").exists()][: 2 * threads]
                if not todo:
                    if time.monotonic() - idle > linger:
                        break
                    time.sleep(0.1)
                    continue
                got = [n for n in pool.map(one, todo) if n]
                done.update(todo)
                pushed += got
                idle = time.monotonic()
                failed_rounds = 0 if got else failed_rounds + 1
                if failed_rounds >= 3:
                    break
        _drop_done_claims(pdir, wal_dir)
    finally:
        os.close(lock_fd)
    return pushed


def spawn_pusher(open_repo: Any, source: str, path: Path) -> bool:
    """Start :func:`run_pusher` in a detached process (double fork, own session) unless a pusher
    of this destination runs or nothing else waits; return whether one was started.

    ``open_repo()`` returns ``(repository, PgOptions)``; the pusher opens its own repository (no
    connection is shared with the process PostgreSQL waits for, which returns at once).
    """
    status_dir = path.absolute().parent / "archive_status"
    if path.absolute().parent.name != "pg_wal" or not status_dir.is_dir():
        return False
    if not any(p.name[: -len(".ready")] != path.name for p in status_dir.glob("*.ready")):
        return False
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)  # the intermediate child exits at once
        return True
    try:  # intermediate child
        os.setsid()
        if os.fork():
            os._exit(0)
        # the pusher: no tie to archive_command's stdin/stdout (stderr stays: PostgreSQL's log)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        repo, opts = open_repo()
        pushed = run_pusher(repo, source, opts, path)
        if pushed:
            log.info("pusher archived ahead: %s", ", ".join(pushed))
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001 - a detached process: nothing to return to
        with contextlib.suppress(Exception):
            log.info("pusher failed: %s", exc)
        os._exit(1)


def _cluster_system_id(path: Path) -> int | None:
    parent = path.absolute().parent
    control = parent.parent / "global" / "pg_control"
    if parent.name != "pg_wal" or not control.is_file():
        return None
    try:
        with open(control, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    return int.from_bytes(head, "little") if len(head) == 8 else None


def _kind(name: str) -> str:
    if SEGMENT_RE.match(name):
        return "segment"
    if PARTIAL_RE.match(name):
        return "partial"
    if HISTORY_RE.match(name):
        return "history"
    if BACKUP_RE.match(name):
        return "backup-label"
    return "other"


PREFETCH = 8


def beyond(name: str, until: str) -> bool:
    """True when WAL segment ``name`` lies after segment ``until`` (timelines aside)."""
    a, b = SEGMENT_RE.match(name[:24]), SEGMENT_RE.match(until)
    return bool(a and b and name[8:24] > until[8:24])
SPOOL = "drkit-prefetch"


def spool_dir(dest: Path) -> Path | None:
    """Where prefetched segments wait: beside pg_wal in the restoring data directory."""
    parent = dest.absolute().parent
    return parent.parent / SPOOL if parent.name == "pg_wal" else None


def fetch_from_spool(name: str, dest: Path) -> bool:
    """Serve ``name`` from the prefetch spool (no repository access, no key needed)."""
    spool = spool_dir(dest)
    if spool is None:
        return False
    cached = spool / name
    if not cached.is_file():
        return False
    os.replace(cached, dest)
    return True


def _write_segment(repo: Repository, record: Any, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".drkit-tmp")
    try:
        with repo.open_stream(record.stream) as src, open(tmp, "wb") as out:
            while block := src.read(1024 * 1024):
                out.write(block)
            if RECEIVED_RE.match(record.name):  # a sealed partial is stored without its zero tail
                size = int(record.metadata.get("segment_size") or 0)
                if out.tell() < size:
                    out.truncate(size)  # zeros, as pg_receivewal padded it; restore_command must hand over a whole segment
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def wal_fetch(repo: Repository, source: str, name: str, dest: Path, prefetch: int = PREFETCH) -> bool:
    """Write WAL file ``name`` to ``dest`` atomically.  False if it is not archived.

    When PostgreSQL asks for a segment during recovery, the next ``prefetch`` segments of the
    same timeline are fetched in parallel into a spool beside pg_wal, so the following
    restore_command calls are served without opening the repository again.
    """
    record = repo.get_log(source, name)
    spool = spool_dir(dest)
    if record is None and SEGMENT_RE.match(name):
        record = newest_received(repo, source, name)
        if record is not None:
            log.info("%s is not archived complete: serving its sealed partial copy %s", name, record.name)
            prefetch = 0  # replay ends inside it
    if record is None:
        if spool is not None and spool.is_dir():
            shutil.rmtree(spool, ignore_errors=True)  # end of the archive: nothing more to serve
        return False
    _write_segment(repo, record, dest)
    if spool is not None and prefetch > 0 and SEGMENT_RE.match(name):
        try:
            _prefetch(repo, source, name, spool, prefetch, int(record.metadata.get("segment_size", 16 << 20)))
        except Exception as exc:  # noqa: BLE001 - best effort: the asked-for segment is already served
            log.warning("prefetch after %s failed (%s); later segments are fetched on demand", name, exc)
            for leftover in spool.glob("*.drkit-tmp"):
                leftover.unlink(missing_ok=True)
    return True


def newest_received(repo: Repository, source: str, segment: str) -> Any:
    """The newest sealed partial copy of ``segment`` (``drkit pg receive``), or None."""
    names = [n for n in repo.list_log_names(source) if RECEIVED_RE.match(n) and n[:24] == segment]
    return repo.get_log(source, max(names)) if names else None


def _prefetch(repo: Repository, source: str, name: str, spool: Path, count: int, seg_size: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from .walnames import segment_name

    tli, segno = parse_segment(name, seg_size) or (0, 0)
    names = [segment_name(tli, segno + k, seg_size) for k in range(1, count + 1)]
    names = [n for n in names if not (spool / n).exists()]
    spool.mkdir(exist_ok=True)

    def one(n: str) -> None:
        try:
            rec = repo.get_log(source, n)
            if rec is not None:
                _write_segment(repo, rec, spool / n)
        except Exception as exc:  # noqa: BLE001 - the on-demand fetch will report it properly
            log.warning("prefetch of %s failed: %s", n, exc)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, names))
