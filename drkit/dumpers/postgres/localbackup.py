"""Node-local full backup: ``pg_backup_start``/``pg_backup_stop`` and the data files read directly.

Used when the source names its data directory (``data_dir:``) and drkit runs on the database
host.  It stores exactly what ``pg_basebackup -D - -Ft -X fetch`` would: one ``base.tar`` stream
holding the data directory, the ``backup_label`` (and ``tablespace_map``) returned by
``pg_backup_stop``, and the WAL from the start to the stop segment under ``pg_wal/`` (marked
``.done`` in ``archive_status``), so restore and verify are the same for both methods.

Why: the replication protocol costs CPU on both ends (the walsender reads and checksums every
page and sends it, ``pg_basebackup`` receives and writes it into a pipe, drkit reads the pipe);
reading the files straight into the chunker's buffer is one copy from the page cache.

Correctness, as for any non-exclusive base backup:

- one session holds the backup open from ``pg_backup_start`` to ``pg_backup_stop``; if drkit
  dies the session ends and PostgreSQL aborts the backup;
- files are copied while the server writes them: torn or stale pages are repaired by replaying
  the WAL from the backup's checkpoint, which is why full_page_writes is forced during a backup;
  a file that shrank while being read is padded with zeros and one that grew is cut at the size
  it had when opened (as pg_basebackup does); files that vanished are skipped;
- what pg_basebackup leaves out is left out here (postmaster.pid, pg_internal.init, temporary
  and unlogged relations except their init fork, the contents of pg_wal, pg_replslot, pg_stat_tmp,
  ... — the list is PostgreSQL's ``basebackup.c``);
- the WAL from the start to the stop LSN is copied from ``pg_wal`` after ``pg_backup_stop``
  (which switches to a new segment, so the last one is complete and flushed).  A temporary
  physical replication slot, created before the backup starts and dropped when the session
  ends, keeps the server from recycling any of those segments in the meantime; each copied
  segment's first page header is checked (system identifier, segment address).

Not done here (pg_basebackup does it): page checksum verification of the data files.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import struct
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from drkit.errors import SourceError
from drkit.repository.crypto import random_hex
from drkit.repository.writer import WriteSession

from .options import PgOptions
from .server import connect
from .walnames import lsn_segno, parse_lsn, segment_name

log = logging.getLogger(__name__)

BLOCK = 512
# PostgreSQL 15 src/backend/backup/basebackup.c (excludeDirContents / excludeFiles).
EXCLUDE_DIR_CONTENTS = frozenset(
    {"pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans"}
)
EXCLUDE_FILES = frozenset(
    {"postgresql.auto.conf.tmp", "current_logfiles.tmp", "backup_label", "tablespace_map",
     "backup_manifest", "postmaster.pid", "postmaster.opts"}
)
EXCLUDE_PREFIX = ("pg_internal.init",)
TEMP_PREFIX = "pgsql_tmp"
_REL_FILE = re.compile(r"^(\d+)(?:_(fsm|vm|init))?(?:\.\d+)?$")
_TEMP_REL = re.compile(r"^t\d+_\d+(?:_(?:fsm|vm|init))?(?:\.\d+)?$")
_TIMELINE_RE = re.compile(r"^START TIMELINE: (\d+)$", re.M)
_HISTORY_RE = re.compile(r"^[0-9A-F]{8}\.history$")
_READ_MAX = 8 * 1024 * 1024
#: Chunk size for the contents of large files (relation segments, WAL): a file of at least this
#: size is cut at multiples of it from its own first byte (1 MiB = 128 pages of 8 kB).
FILE_CHUNK = 1024 * 1024


def local_refusal(opts: PgOptions, facts: dict[str, Any]) -> str | None:
    """Why this backup cannot be node-local (None when it can).  Raises on misconfiguration."""
    assert opts.data_dir is not None
    data_dir = Path(opts.data_dir)
    control = data_dir / "global" / "pg_control"
    try:
        with open(control, "rb") as fh:
            sysid = struct.unpack("<Q", fh.read(8))[0]
    except OSError as exc:
        raise SourceError(f"data_dir {data_dir}: cannot read {control}: {exc.strerror}") from None
    if str(sysid) != str(facts["system_identifier"]) or (
        os.path.realpath(facts["data_directory"]) != os.path.realpath(data_dir)
    ):
        raise SourceError(
            f"data_dir {data_dir} is not the data directory of the server drkit connects to "
            f"(server: {facts['data_directory']}, system identifier {facts['system_identifier']}; "
            f"{control}: {sysid}); fix data_dir or remove it to back up through pg_basebackup"
        )
    if opts.max_rate:
        return "max_rate is set (node-local backups are not rate-limited)"
    if int(facts["server_version_num"]) < 100000:
        return "node-local backups need PostgreSQL 10 or later"
    return None


@dataclass
class LocalResult:
    start_lsn: str
    stop_lsn: str
    timeline: int
    files: int
    skipped: int
    #: The user tablespaces outside the data directory, each stored as its own stream:
    #: ``{"oid", "name", "location", "stream"}`` (see :func:`_tablespaces`).
    tablespaces: list[dict[str, Any]] = field(default_factory=list)


def local_base_backup(
    session: WriteSession, opts: PgOptions, facts: dict[str, Any], label: str,
    progress: Callable[[int], None] | None = None,
) -> tuple[Any, LocalResult]:
    """Stream the data directory into ``session`` as ``base.tar``; return (StreamRef, result)."""
    assert opts.data_dir is not None
    conn = connect(opts)
    slot = f"drkit_{os.getpid()}_{random_hex(4)}"
    pg15 = int(facts["server_version_num"]) >= 150000
    fast = opts.checkpoint == "fast"
    try:
        try:
            # Temporary: dropped when this session ends, however it ends.  Reserves WAL from the
            # last checkpoint's redo point on, i.e. from before the backup's own checkpoint.
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", (slot,))
        except psycopg.Error as exc:
            raise SlotUnavailable(str(exc).strip().splitlines()[0]) from None
        start_sql = "SELECT pg_backup_start(%s, %s)::text" if pg15 else "SELECT pg_start_backup(%s, %s, false)::text"
        try:
            row = conn.execute(start_sql, (label, fast)).fetchone()
        except psycopg.Error as exc:
            raise SourceError(f"pg_backup_start failed: {str(exc).strip()}") from None
        assert row is not None
        start_lsn = row[0]
        # Inside the backup: files a tablespace gains or loses from here on are WAL-logged.
        spaces = _tablespaces(conn, Path(opts.data_dir))
        for space in spaces:  # before base.tar, whose end is pg_backup_stop
            tree = _DataDirTar(Path(space["location"]), 0, 0, start_lsn, None, top=space["version_dir"])
            _read_into(session, tree, space["stream"], {"format": "tar", "tablespace": space["name"],
                                                        "oid": space["oid"]}, progress)
        tar = _DataDirTar(Path(opts.data_dir), int(facts["segment_size"]), int(facts["system_identifier"]),
                          start_lsn, lambda: _stop(conn, pg15, bool(facts["in_recovery"])))
        ref = _read_into(session, tar, "base.tar", {"format": "tar"}, progress)
        if tar.result is None:
            raise SourceError("internal error: the data directory stream ended before pg_backup_stop")
        tar.result.tablespaces = [{k: v for k, v in sp.items() if k != "version_dir"} for sp in spaces]
        return ref, tar.result
    finally:
        conn.close()


def _read_into(session: WriteSession, tar: _DataDirTar, name: str, meta: dict[str, Any],
               progress: Callable[[int], None] | None) -> Any:
    try:
        return session.write_chunks(name, tar.chunks(session.cdc), meta=meta, progress=progress)
    except PermissionError as exc:
        raise SourceError(
            f"node-local backup: cannot read {exc.filename}: {exc.strerror} (run drkit as the "
            "server's OS user or root, or remove data_dir to back up through pg_basebackup)"
        ) from None
    finally:
        tar.close()


def _tablespaces(conn: psycopg.Connection, data_dir: Path) -> list[dict[str, Any]]:
    """The user tablespaces whose directory is outside the data directory, as the server lists
    them.  Of each, what pg_basebackup sends: the directory of this server version
    (``PG_<major>_<catalog version>``, the server's TABLESPACE_VERSION_DIRECTORY) -- another
    version's directory (left by pg_upgrade) is not this cluster's.  In-place tablespaces
    (``allow_in_place_tablespaces``: a directory under pg_tblspc/) are in base.tar."""
    rows = conn.execute(
        "SELECT t.oid::int, t.spcname, pg_tablespace_location(t.oid),"
        " 'PG_' || current_setting('server_version_num')::int / 10000 || '_' || c.catalog_version_no"
        " FROM pg_tablespace t, pg_control_system() c"
        " WHERE t.spcname NOT IN ('pg_default', 'pg_global') ORDER BY t.oid"
    ).fetchall()
    out = []
    for oid, name, location, version_dir in rows:
        if not location or not os.path.isabs(location):
            continue
        link = data_dir / "pg_tblspc" / str(oid)
        if os.path.realpath(link) != os.path.realpath(location):
            raise SourceError(f"tablespace {name}: {link} does not lead to its location {location}; "
                              "the data directory is not the one the server runs on")
        out.append({"oid": oid, "name": name, "location": location, "version_dir": version_dir,
                    "stream": f"tablespaces/{oid}.tar"})
    return out


class SlotUnavailable(SourceError):
    """A temporary replication slot could not be created (e.g. max_replication_slots = 0)."""


def _stop(conn: psycopg.Connection, pg15: bool, standby: bool = False) -> tuple[str, str, str]:
    sql = ("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)" if pg15
           else "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)")
    try:
        row = conn.execute(sql).fetchone()
    except psycopg.Error as exc:
        raise SourceError(f"pg_backup_stop failed: {str(exc).strip()}") from None
    assert row is not None
    stop_lsn, labelfile, spcmap = row[0], row[1] or "", row[2] or ""
    if standby:
        # On a standby the stop point is its minimum recovery point: WAL it has received,
        # flushed and replayed already.  There is no segment switch: the stop segment in
        # pg_wal is the standby's partial copy (restores past it read the archive's).
        return stop_lsn, labelfile, spcmap
    # pg_backup_stop switched WAL segments, which flushes; make sure before reading pg_wal.
    deadline = time.monotonic() + 60
    while not conn.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (stop_lsn,)).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise SourceError(f"WAL up to the backup's stop point {stop_lsn} was not flushed within 60 s")
        time.sleep(0.05)
    return stop_lsn, labelfile, spcmap


@dataclass
class _File:
    fd: int
    size: int
    path: str


class _DataDirTar(io.RawIOBase):
    """The tar stream of a data directory, produced while it is read (``readinto`` fills the
    caller's buffer straight from the files)."""

    def __init__(self, data_dir: Path, seg_size: int, sysid: int, start_lsn: str,
                 stop: Callable[[], tuple[str, str, str]] | None, *, top: str | None = None) -> None:
        """``stop`` ends the backup after the walk (the data directory); with ``top`` the stream
        is one tablespace's tree instead: ``data_dir/top`` and nothing after it."""
        self.root = data_dir
        self.top = top
        self.seg_size = seg_size
        self.sysid = sysid
        self.start_lsn = start_lsn
        self._stop = stop
        self.result: LocalResult | None = None
        self._pieces = self._generate()
        self._cur: bytes | _File | None = None
        self._pos = 0
        self._files = 0
        self._skipped = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if isinstance(self._cur, _File):
            os.close(self._cur.fd)
            self._cur = None
        self._pieces.close()
        super().close()

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        out = memoryview(b).cast("B")
        n, want = 0, len(out)
        while n < want:
            cur = self._cur
            if cur is None:
                cur = self._cur = next(self._pieces, None)
                self._pos = 0
                if cur is None:
                    break
            if isinstance(cur, _File):
                k = min(want - n, cur.size - self._pos, _READ_MAX)
                got = os.readv(cur.fd, [out[n : n + k]]) if k else 0
                if got == 0 and k:  # the file shrank while we read it: zeros, as pg_basebackup does
                    log.debug("%s shrank while being read; padding with zeros", cur.path)
                    out[n : n + k] = bytes(k)
                    got = k
                n += got
                self._pos += got
                if self._pos >= cur.size:
                    os.close(cur.fd)
                    self._cur = None
            else:
                k = min(want - n, len(cur) - self._pos)
                out[n : n + k] = cur[self._pos : self._pos + k]
                n += k
                self._pos += k
                if self._pos >= len(cur):
                    self._cur = None
        return n

    # -- the stream, cut into chunks ------------------------------------------------------------
    def chunks(self, cdc: Any, file_chunk: int = FILE_CHUNK) -> Iterator[bytes | bytearray]:
        """The same bytes as :meth:`readinto` yields, already cut into chunks for the writer.

        The contents of every file of at least ``file_chunk`` bytes are cut at multiples of
        ``file_chunk`` counted from the start of the file and read straight into each chunk's own
        buffer (no content-defined chunking pass, no copy).  Data files are arrays of 8 kB
        pages, so a page written between two backups changes exactly one chunk, and a file that
        grows or shrinks changes only its last chunks.  Everything between two such runs (tar
        headers and padding, small files, the last ``size % file_chunk`` bytes of a large file)
        is collected and cut with the repository's content-defined chunker ``cdc``, restarted
        after every large file, so cut points depend only on the content either way.
        """
        if self._cur is not None:
            raise ValueError("chunks() must be the only reader of this stream")
        limit = 2 * cdc.max_size
        gap = bytearray()
        for piece in self._pieces:
            if not isinstance(piece, _File):
                gap += piece
            else:
                cur = self._cur = piece  # closed by close() if the consumer stops early
                full = cur.size - cur.size % file_chunk if cur.size >= file_chunk else 0
                if full:
                    yield from _cdc_cut(cdc, gap, final=True)
                    while self._pos < full:
                        yield self._read_file(cur, file_chunk)
                if self._pos < cur.size:
                    gap += self._read_file(cur, cur.size - self._pos)
                os.close(cur.fd)
                self._cur = None
                self._pos = 0
            if len(gap) >= limit:
                yield from _cdc_cut(cdc, gap, final=False)
        yield from _cdc_cut(cdc, gap, final=True)

    def _read_file(self, cur: _File, k: int) -> bytes:
        """The next ``k`` bytes of ``cur`` (zeros past its end if it shrank while being read).

        ``os.read`` reads straight into a new, uninitialised bytes object: one copy from the
        page cache, no zero-filling, and the chunk is immutable from then on."""
        data = os.read(cur.fd, k)
        if len(data) < k:  # rare: a short read, or the end of a file that shrank
            parts = [data]
            n = len(data)
            while n < k:
                more = os.read(cur.fd, k - n)
                if not more:  # the file shrank while we read it: zeros, as pg_basebackup does
                    log.debug("%s shrank while being read; padding with zeros", cur.path)
                    parts.append(bytes(k - n))
                    break
                parts.append(more)
                n += len(more)
            data = b"".join(parts)
        self._pos += k
        return data

    # -- the stream, piece by piece ------------------------------------------------------------
    def _generate(self) -> Iterator[bytes | _File]:
        if self.top is not None:
            top = self.root / self.top
            try:
                st = os.stat(top)
            except FileNotFoundError:
                raise SourceError(f"tablespace directory {top} is missing") from None
            yield _header(self.top, 0, st.st_mode, int(st.st_mtime), tarfile.DIRTYPE)
            yield from self._walk(top, self.top)
            yield bytes(2 * BLOCK)
            return
        yield from self._walk(self.root, "")
        assert self._stop is not None
        stop_lsn, labelfile, spcmap = self._stop()
        m = _TIMELINE_RE.search(labelfile)
        if not m:
            raise SourceError(f"pg_backup_stop returned a backup_label without START TIMELINE:\n{labelfile}")
        tli = int(m.group(1))
        now = int(time.time())
        yield from _content("backup_label", labelfile.encode(), now)
        if spcmap:
            yield from _content("tablespace_map", spcmap.encode(), now)
        wal = self.root / "pg_wal"
        first = lsn_segno(parse_lsn(self.start_lsn), self.seg_size)
        last = lsn_segno(parse_lsn(stop_lsn) - 1, self.seg_size)
        names = [segment_name(tli, segno, self.seg_size) for segno in range(first, last + 1)]
        for segno, name in zip(range(first, last + 1), names, strict=True):
            try:
                fd = os.open(wal / name, os.O_RDONLY)
            except FileNotFoundError:
                raise SourceError(
                    f"WAL segment {name}, needed by this backup, is not in {wal}; the backup is "
                    "incomplete and is not stored"
                ) from None
            st = os.fstat(fd)
            head = os.pread(fd, 40, 0)
            if st.st_size != self.seg_size or not self._segment_ok(head, segno):
                os.close(fd)
                raise SourceError(f"WAL segment {wal / name} is not the segment {name} (recycled or damaged)")
            yield _header(f"pg_wal/{name}", st.st_size, 0o600, int(st.st_mtime))
            yield _File(fd, st.st_size, str(wal / name))
            yield from _pad(st.st_size)
        for name in sorted(os.listdir(wal)):
            if _HISTORY_RE.match(name):
                yield from self._file(wal / name, f"pg_wal/{name}")
        for name in names:
            yield from _content(f"pg_wal/archive_status/{name}.done", b"", now)
        yield bytes(2 * BLOCK)
        self.result = LocalResult(self.start_lsn, stop_lsn, tli, self._files, self._skipped)

    def _segment_ok(self, head: bytes, segno: int) -> bool:
        # XLogLongPageHeaderData: magic u16, info u16, tli u32, pageaddr u64, rem_len u32 (+pad),
        # sysid u64, seg_size u32, blcksz u32.
        if len(head) < 40:
            return False
        pageaddr = struct.unpack_from("<Q", head, 8)[0]
        sysid, seg_size = struct.unpack_from("<QI", head, 24)
        return pageaddr == segno * self.seg_size and sysid == self.sysid and seg_size == self.seg_size

    def _walk(self, path: Path, rel: str) -> Iterator[bytes | _File]:
        try:
            names = sorted(os.listdir(path))
        except FileNotFoundError:
            return
        in_db_dir = (rel.startswith(("base/", "pg_tblspc/")) or rel == "global"
                     or (self.top is not None and rel.startswith(f"{self.top}/")))
        unlogged = _unlogged_relfilenodes(names) if in_db_dir else set()
        for name in names:
            sub_rel = f"{rel}/{name}" if rel else name
            full = path / name
            if name in EXCLUDE_FILES or name.startswith(EXCLUDE_PREFIX) or name.startswith(TEMP_PREFIX):
                continue
            if in_db_dir:
                if _TEMP_REL.match(name):
                    continue
                m = _REL_FILE.match(name)
                if m and m.group(1) in unlogged and m.group(2) != "init":
                    continue
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            if sub_rel == "pg_wal":  # a symlink (initdb -X) is stored as a directory
                yield _header("pg_wal", 0, 0o700, int(st.st_mtime), tarfile.DIRTYPE)
                yield _header("pg_wal/archive_status", 0, 0o700, int(st.st_mtime), tarfile.DIRTYPE)
                continue
            if stat.S_ISDIR(st.st_mode):
                yield _header(sub_rel, 0, st.st_mode, int(st.st_mtime), tarfile.DIRTYPE)
                if name in EXCLUDE_DIR_CONTENTS and not rel:
                    continue
                yield from self._walk(full, sub_rel)
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(full)
                except FileNotFoundError:
                    continue
                yield _header(sub_rel, 0, 0o777, int(st.st_mtime), tarfile.SYMTYPE, target)
            elif stat.S_ISREG(st.st_mode):
                yield from self._file(full, sub_rel)
            # sockets, fifos, devices: skipped (pg_basebackup skips them too)

    def _file(self, full: Path, rel: str) -> Iterator[bytes | _File]:
        try:
            fd = os.open(full, os.O_RDONLY)
        except FileNotFoundError:  # dropped while we walked: WAL replay accounts for it
            self._skipped += 1
            return
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        self._files += 1
        yield _header(rel, st.st_size, st.st_mode, int(st.st_mtime))
        if st.st_size:
            yield _File(fd, st.st_size, str(full))
            yield from _pad(st.st_size)
        else:
            os.close(fd)


def _cdc_cut(cdc: Any, gap: bytearray, *, final: bool) -> Iterator[bytearray]:
    """Cut chunks off the front of ``gap`` with the content-defined chunker; with ``final`` cut
    all of it, else only chunks whose cut point cannot depend on bytes not yet in ``gap``
    (FastCDC looks at most ``max_size`` bytes ahead of a chunk's start)."""
    if not gap:
        return
    done = 0
    cuts = cdc.cut_buf(gap)  # holds a view of gap: released (del) before gap is resized
    for c in cuts:
        if not final and len(gap) - c.offset < cdc.max_size:
            break
        yield bytearray(c.data)
        done = c.offset + c.length
    del cuts, c
    del gap[:done]


def _unlogged_relfilenodes(names: list[str]) -> set[str]:
    return {m.group(1) for n in names if (m := _REL_FILE.match(n)) and m.group(2) == "init"}


def _header(name: str, size: int, mode: int, mtime: int, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = stat.S_IMODE(mode)
    info.mtime = mtime
    info.type = kind
    info.linkname = link
    info.uname = info.gname = "postgres"
    try:
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    except ValueError:  # a name or link too long for ustar: GNU long-name records
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _pad(size: int) -> Iterator[bytes]:
    if size % BLOCK:
        yield bytes(BLOCK - size % BLOCK)


def _content(name: str, body: bytes, mtime: int) -> Iterator[bytes]:
    yield _header(name, len(body), 0o600, mtime)
    if body:
        yield body
        yield from _pad(len(body))
