"""The AOF files on the node: where they are, holding them across rewrites, reading INCR bytes.

See :mod:`.aofbackup` for how a backup uses them.
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from drkit.errors import IntegrityError, SourceError

from .aof import AofFile, AofManifest, AofScanner, parse_manifest

log = logging.getLogger(__name__)

TAIL = 256  # bytes before a position whose CRC32 proves the file did not change under it


@dataclass(frozen=True)
class AofDir:
    path: Path
    manifest_name: str

    def manifest(self) -> AofManifest:
        where = self.path / self.manifest_name
        try:
            text = where.read_text()
        except OSError as exc:
            raise SourceError(f"cannot read the AOF manifest {where}: {exc.strerror}") from None
        return parse_manifest(text, str(where))



class Pieces(io.RawIOBase):
    """The complete commands of INCR files from a position: each file up to its measured size;
    every file but the last must end on a whole command.

    ``ts_seconds`` is the annotation in effect where the bytes start (inherited from earlier in
    the chain, see :mod:`.aof`); it carries over from file to file, since a new INCR file need not
    start with an annotation.  ``untimed`` counts the commands before the first annotation of the
    shipped bytes (``first_ts``): they belong to ``ts_seconds``."""

    def __init__(self, files: list[tuple[AofFile, IO[bytes], int, int]], ts_seconds: int | None) -> None:
        self.files = files
        self.i = -1
        self.fh: IO[bytes] | None = None
        self.left = 0
        self.scanner: AofScanner | None = None
        self.out = b""
        self.pieces: list[dict[str, Any]] = []
        self.ts = ts_seconds  # annotation in effect (seconds)
        self.first_command_ts: int | None = None
        self.first_ts: int | None = None  # first annotation in the shipped bytes
        self.untimed = 0
        self.commands = 0
        self.end_ino: int | None = None
        self.end_tail_crc: int | None = None
        self._next()

    def _next(self) -> bool:
        self._close_file()
        self.i += 1
        if self.i >= len(self.files):
            return False
        f, self.fh, start, end = self.files[self.i]
        self.fh.seek(start)
        self.left = end - start
        self.scanner = AofScanner(f.name, start)
        self.scanner.last_ts = self.ts
        return True

    def _close_file(self) -> None:
        if self.fh is None or self.scanner is None:
            return
        f, _, start, _ = self.files[self.i]
        sc = self.scanner
        if sc.pending and self.i < len(self.files) - 1:
            raise IntegrityError(f"AOF file {f.name} is truncated: it was closed by a later file, yet its last "
                                 f"{sc.pending} bytes (offset {sc.offset}) are an incomplete command; check it "
                                 "with redis-check-aof")
        self.pieces.append({"file": f.name, "seq": f.seq, "from": start, "to": sc.offset})
        if self.i == len(self.files) - 1:  # where the next incremental continues
            self.end_ino = os.fstat(self.fh.fileno()).st_ino
            self.fh.seek(max(0, sc.offset - TAIL))
            self.end_tail_crc = zlib.crc32(self.fh.read(min(TAIL, sc.offset))) if sc.offset else None
        if not self.commands and sc.commands:
            self.first_command_ts = sc.first_command_ts
        if self.first_ts is None:
            self.untimed += sc.untimed
            self.first_ts = sc.first_ts
        self.commands += sc.commands
        self.ts = sc.last_ts
        self.fh = None

    def close(self) -> None:
        for _, fh, _, _ in self.files:
            fh.close()
        super().close()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self.out:
            if self.fh is None:
                return 0
            data = self.fh.read(min(self.left, 1 << 20)) if self.left > 0 else b""
            if not data:
                if self.left > 0:
                    raise IntegrityError(f"AOF file {self.files[self.i][0].name} shrank while drkit read it")
                self._next()
                continue
            self.left -= len(data)
            assert self.scanner is not None
            self.out = self.scanner.feed(data)
        n = min(len(b), len(self.out))
        b[:n] = self.out[:n]
        self.out = self.out[n:]
        return n

    @property
    def end(self) -> tuple[AofFile, int]:
        return self.files[-1][0], self.pieces[-1]["to"]


class Hold:
    """Hard links that keep shipped-from INCR files readable after a rewrite deletes them.

    A rewrite drops the older INCR files as soon as it finishes; the bytes written to the current
    one after the last incremental would be gone with it, and the chain with them.  So after every
    backup drkit links the file it will continue from into ``<data_dir>/drkit-aof-hold/`` (same
    filesystem); the next incremental ships its tail from the link, then drops it.  If the link
    cannot be made, a rewrite between two incrementals starts a new chain (said in the log).
    """

    def __init__(self, adir: AofDir, source: str) -> None:
        self.dir = adir.path.parent / "drkit-aof-hold"
        self.adir, self.prefix = adir, f"{source}."

    def path(self, name: str) -> Path:
        return self.dir / (self.prefix + name)

    def keep(self, name: str, ino: int | None) -> None:
        """Hold ``name`` (if it is still the inode ``ino``) and release every other hold."""
        dst = self.path(name)
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            if not (dst.exists() and dst.stat().st_ino == ino):
                dst.unlink(missing_ok=True)
                os.link(self.adir.path / name, dst)
                if dst.stat().st_ino != ino:
                    dst.unlink()
            for other in self.dir.glob(self.prefix + "*"):
                if other != dst:
                    other.unlink(missing_ok=True)
        except FileNotFoundError:
            pass  # rewritten away already: the next incremental says so
        except OSError as exc:
            log.warning("cannot hold %s in %s (%s): a rewrite between two incrementals will start a new chain",
                        name, self.dir, exc.strerror)

    def release(self) -> None:
        for other in self.dir.glob(self.prefix + "*") if self.dir.is_dir() else ():
            other.unlink(missing_ok=True)


def open_at(candidates: list[Path], ino: int | None) -> IO[bytes] | None:
    """The first candidate that exists and is the inode ``ino`` (any inode if None)."""
    for path in candidates:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - returned
        except FileNotFoundError:
            continue
        if ino is None or os.fstat(fh.fileno()).st_ino == ino:
            return fh
        fh.close()
    return None


def resume(adir: AofDir, hold: Hold, m: AofManifest, pos: dict[str, Any],
            chain: str) -> tuple[list[tuple[AofFile, IO[bytes], int, int]], str | None]:
    """Open the INCR files from ``pos`` on (each with the size to ship up to), or say why the chain breaks."""
    seq, offset, ino, name = int(pos["seq"]), int(pos["offset"]), pos.get("ino"), pos.get("file")
    listed = m.incr(seq)
    name = listed.name if listed else name
    fh = open_at([adir.path / name, hold.path(name)], ino) if name else None
    if fh is None:
        return [], (f"INCR file seq {seq} (where chain {chain} continues at byte {offset}) is gone: a rewrite "
                    "dropped it, and drkit holds no link to it (see drkit-aof-hold in the data directory)")
    files = [(listed or AofFile(name, seq, "h"), fh, offset, os.fstat(fh.fileno()).st_size)]
    try:
        if files[0][3] < offset:
            raise IntegrityError(f"AOF file {adir.path / name} is {files[0][3]} bytes but drkit already shipped "
                                 f"{offset} bytes of it: it was truncated (redis-check-aof --fix?); take a full "
                                 "backup to start a new chain")
        if offset and pos.get("tail_crc") is not None:
            fh.seek(max(0, offset - TAIL))
            if zlib.crc32(fh.read(min(TAIL, offset))) != pos["tail_crc"]:
                raise IntegrityError(f"AOF file {adir.path / name} changed before byte {offset}, which drkit already "
                                     "shipped: it was modified in place; take a full backup to start a new chain")
        for f in (g for g in m.incrs if g.seq > seq):
            if f.seq != files[-1][0].seq + 1:
                for _, h, _, _ in files:
                    h.close()
                return [], f"INCR file seq {files[-1][0].seq + 1} is missing from the AOF manifest (next: {f.seq})"
            h = open(adir.path / f.name, "rb")  # noqa: SIM115 - closed by _Pieces
            files.append((f, h, 0, os.fstat(h.fileno()).st_size))
    except FileNotFoundError as exc:
        for _, h, _, _ in files:
            h.close()
        raise SourceError(f"the AOF in {adir.path} changed while drkit read it ({exc.filename} is gone: a rewrite "
                          "finished); run the incremental again") from None
    except BaseException:
        for _, h, _, _ in files:
            h.close()
        raise
    return files, None
