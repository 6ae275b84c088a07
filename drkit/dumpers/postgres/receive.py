"""``drkit pg receive SOURCE``: stream WAL over the replication protocol and seal it every few seconds.

PostgreSQL hands a segment to ``archive_command`` only when it is full or ``archive_timeout``
forces a switch, so archiving alone loses up to a segment's worth (or ``archive_timeout``) of
commits.  The receiver runs PostgreSQL's own ``pg_receivewal`` (psycopg has no replication
protocol) on a physical replication slot into a spool directory, and drkit:

- pushes every **complete** segment pg_receivewal finishes as the ordinary WAL record of that
  name -- the same bytes ``archive_command`` pushes, so the repository keeps one copy whichever
  arrives first (the other is "identical", never a conflict);
- **seals** the segment being written (pg_receivewal's ``.partial`` file) every ``seal_seconds``
  when it grew: a record ``<segment>.<offset>.received`` holding the file as it is (zero-padded
  to the segment size, as PostgreSQL's restore_command must hand it over), with the commit times
  ``pg_waldump`` finds in it.  A restore that reaches the end of the archived segments is served
  the newest sealed copy of the next one, replays what it holds and ends recovery there;
- seals at once when the connection drops (pg_receivewal exits; it is restarted with backoff)
  and on SIGTERM/SIGINT, before exiting.

A sealed copy is superseded by the complete segment: restore points then name the complete one,
so ``forget`` removes the sealed copies like any log record no restore point needs.

The slot (``drkit_<source>`` unless ``--slot``) keeps the primary from recycling WAL the receiver
has not received, across receiver restarts and crashes -- so a stopped receiver makes the
primary keep WAL without bound: set ``max_slot_wal_keep_size`` on the server.  The spool
directory keeps pg_receivewal's position across restarts; if it is lost, streaming restarts at
the slot's position.

``--synchronous`` makes pg_receivewal flush and report every write at once; with its
``application_name`` (``drkit_receive_<source>``) in the primary's ``synchronous_standby_names``
a commit returns only once the receiver has it on disk, and the seal at disconnect puts it in the
repository: RPO 0 for every acknowledged commit, as long as the receiver's host survives the
primary (run it elsewhere).

A lease ``leases/follow/<source>`` keeps a second receiver (or another follower) away.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.dumpers.streams import Prefix
from drkit.errors import ConfigError, DrkitError, SourceError
from drkit.repository import Repository, leases

from .options import PgOptions, safe_dsn
from .walnames import SEGMENT_RE, format_lsn, parse_segment

log = logging.getLogger(__name__)

LEASE_MIN = 60.0
_SLOT_RE = re.compile(r"^[a-z0-9_]{1,63}$")


@dataclass
class ReceiveReport:
    segments: int = 0  # complete segments pushed (stored or identical)
    seals: int = 0  # sealed partial copies stored
    restarts: int = 0  # pg_receivewal restarts (dropped connections)
    last_seal: str | None = None
    errors: list[str] = field(default_factory=list)


def slot_name(source: str, given: str | None) -> str:
    name = given or "drkit_" + re.sub(r"[^a-z0-9_]", "_", source.lower())
    if not _SLOT_RE.match(name):
        raise ConfigError(f"replication slot name {name!r}: lower-case letters, digits and _ only (max 63)")
    return name


class Receiver:
    def __init__(self, repo: Repository, source: str, opts: PgOptions, spool: Path, *,
                 seal_seconds: float = 5.0, synchronous: bool = False, slot: str | None = None,
                 stop: threading.Event | None = None) -> None:
        if seal_seconds <= 0:
            raise ConfigError("--seal-seconds must be positive")
        self.repo, self.source, self.opts, self.spool = repo, source, opts, spool
        self.seal_seconds, self.synchronous = seal_seconds, synchronous
        self.slot = slot_name(source, slot)
        self.app_name = f"drkit_receive_{re.sub(r'[^a-z0-9_]', '_', source.lower())}"
        self.stop = stop or threading.Event()
        self.report = ReceiveReport()
        self._sealed: dict[str, int] = {}  # segment -> the offset last sealed
        self._proc: subprocess.Popen[bytes] | None = None
        self._seal_started = ""
        self._log_path = spool / "pg_receivewal.log"

    # -- the pg_receivewal child ---------------------------------------------------------------
    def _dsn(self) -> str:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(self.opts.dsn)
        params.setdefault("application_name", self.app_name)
        params.pop("dbname", None)  # a physical replication connection names no database
        return make_conninfo(**params)

    def _create_slot(self) -> None:
        proc = subprocess.run(
            [self.opts.tool("pg_receivewal"), "-d", self._dsn(), "--slot", self.slot, "--create-slot",
             "--if-not-exists", "--no-password"],
            capture_output=True, text=True, env=self.opts.env(), timeout=60, check=False)
        if proc.returncode != 0:
            raise SourceError(f"pg_receivewal could not create replication slot {self.slot} on "
                              f"{safe_dsn(self.opts.dsn)}: {proc.stderr.strip()[-500:]}")

    def _start_child(self) -> subprocess.Popen[bytes]:
        cmd = [self.opts.tool("pg_receivewal"), "-d", self._dsn(), "-D", str(self.spool), "--slot", self.slot,
               "--no-loop", "--no-password", "--status-interval", "1"]
        if self.synchronous:
            cmd.append("--synchronous")
        from drkit.proc import die_with_parent

        # Its messages go to a file (a pipe nobody reads while it runs could fill and stall it).
        self._log_path = self.spool / "pg_receivewal.log"
        with open(self._log_path, "ab") as err:
            # Dies with us (a SIGKILLed receiver must not leave pg_receivewal holding the slot).
            return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=self.opts.env(),
                                    preexec_fn=die_with_parent)  # noqa: PLW1509 - nothing but prctl runs in it

    # -- the loop --------------------------------------------------------------------------------
    def run(self, duration: float | None = None) -> ReceiveReport:
        self.spool.mkdir(parents=True, exist_ok=True)
        with leases.Holding(self.repo, "follow", self.source, max(LEASE_MIN, 3 * self.seal_seconds),
                            f"'drkit pg receive {self.source}'") as hold:
            self._create_slot()
            deadline = time.monotonic() + duration if duration else None
            backoff = 1.0
            while not self.stop.is_set() and not (deadline and time.monotonic() > deadline):
                self._proc = proc = self._start_child()
                log.info("receiving WAL of %s on slot %s into %s", self.source, self.slot, self.spool)
                started = time.monotonic()
                while proc.poll() is None and not self.stop.is_set() and not (deadline and time.monotonic() > deadline):
                    self.stop.wait(self.seal_seconds)
                    hold.renew_if_due()
                    self._ship()
                if proc.poll() is None:  # asked to stop: pg_receivewal flushes on SIGINT
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                err = _tail(self._log_path)
                self._ship()  # at once: the connection dropped, or we are stopping
                if self.stop.is_set() or (deadline and time.monotonic() > deadline):
                    break
                self.report.restarts += 1
                msg = f"pg_receivewal exited {proc.returncode}: {err[-300:] or 'no message'}"
                self.report.errors = (self.report.errors + [msg])[-10:]
                log.warning("%s; reconnecting in %.0f s", msg, backoff)
                self.stop.wait(backoff)
                backoff = 1.0 if time.monotonic() - started > 30 else min(backoff * 2, 30.0)
                hold.renew_if_due()
        return self.report

    def _ship(self) -> None:
        """Push the complete segments in the spool, then seal the one being written."""
        try:
            from .wal import _to_iso_ts

            self._seal_started = _to_iso_ts(time.time())
            flush_lsn = self._primary_flush_lsn()
            names = sorted(os.listdir(self.spool))
            for name in names:
                if SEGMENT_RE.match(name) or name.endswith(".history"):
                    self._push_complete(self.spool / name)
            for name in names:
                if name.endswith(".partial") and SEGMENT_RE.match(name[:24]):
                    self._seal(self.spool / name, flush_lsn)
        except (DrkitError, OSError) as exc:  # storage down, a conflict, a file gone...: keep receiving, retry next time
            log.error("shipping WAL of %s failed: %s", self.source, exc)
            self.report.errors = (self.report.errors + [str(exc)])[-10:]

    def _primary_flush_lsn(self) -> int | None:
        """The primary's flush position now (before the spool is read), or None if unknown."""
        from .server import connect
        from .walnames import parse_lsn

        try:
            with connect(self.opts) as conn:
                row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
            return parse_lsn(row[0]) if row else None
        except (DrkitError, Exception):  # noqa: BLE001 - the primary is gone: seal what we have
            return None

    def _push_complete(self, path: Path) -> None:
        from .wal import wal_push

        status, _ = wal_push(self.repo, self.source, self.opts, path)
        log.info("%s: %s (received)", path.name, status)
        self.report.segments += 1
        # pg_receivewal never reopens a complete segment; the archive holds it now.
        done = self.spool / "done"
        done.mkdir(exist_ok=True)
        os.replace(path, done / path.name)
        for old in sorted(done.iterdir())[:-4]:  # keep the last few for a look
            old.unlink(missing_ok=True)
        self._sealed.pop(path.name, None)

    def _seal(self, path: Path, flush_lsn: int | None) -> None:
        seg = path.name[:24]
        seg_size = self._seg_size(path)
        parsed = parse_segment(seg, seg_size)
        if parsed is None:
            return
        with tempfile.TemporaryDirectory(prefix="drkit-receive-") as tmp:
            copy = Path(tmp) / seg  # pg_waldump wants the segment's own name
            try:
                with open(path, "rb") as src, open(copy, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except FileNotFoundError:
                return  # pg_receivewal completed it meanwhile (renamed): pushed complete next round
            size = copy.stat().st_size
            if size != seg_size:
                return  # pg_receivewal is still padding a new file
            end = _written_end(copy)
            if end <= self._sealed.get(seg, 0) or end == 0:
                return
            name = f"{seg}.{end:08X}.received"
            from .wal import commit_times, segment_header

            header = segment_header(copy)
            meta: dict[str, Any] = {"kind": "received", "segment": seg, "received_bytes": end,
                                    "received_lsn": format_lsn(parsed[1] * seg_size + end), "segno": parsed[1],
                                    **header, "system_identifier": str(header["system_identifier"])}
            meta.update(commit_times(self.opts, copy))
            if flush_lsn is not None and parsed[1] * seg_size + end >= flush_lsn:
                # Everything the primary had flushed when this seal began is in the copy: every
                # commit before that moment is restorable (the newest safe time on an idle server).
                meta["closed_at"] = self._seal_started
            from .wal import check_system_id

            check_system_id(self.repo, self.source, header["system_identifier"])
            # Stored up to the end of the last written WAL page: the zeros after it are not stored
            # (wal-fetch pads the segment back to its size), so a seal costs what was received.
            keep = min(size, -(-end // 8192) * 8192)
            meta["stored_bytes_of_segment"] = keep
            with open(copy, "rb") as fh:
                status, _ = self.repo.put_log(self.source, name, Prefix(fh, keep), meta)
        self._sealed[seg] = end
        self.report.seals += 1
        self.report.last_seal = name
        log.info("%s: sealed %d bytes of %s (%s)", self.source, end, seg, status)

    def _seg_size(self, path: Path) -> int:
        from .wal import segment_header

        try:
            return int(segment_header(path)["segment_size"]) or 16 << 20
        except SourceError:
            return 16 << 20

    def terminate(self) -> None:
        self.stop.set()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            return fh.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _written_end(path: Path, block: int = 1 << 16) -> int:
    """The offset just past the last non-zero byte (pg_receivewal zero-pads its partial file).

    A record that ends in zero bytes makes this a little short: the restore replays it anyway
    (the whole file is stored); only the recorded offset is conservative."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            data = fh.read(pos - start)
            stripped = data.rstrip(b"\0")
            if stripped:
                return start + len(stripped)
            pos = start
    return 0
