"""Redis 7 multi-part AOF: the manifest, and the timestamped command stream of its INCR files.

A Redis >= 7 AOF directory (``appenddirname``) holds one BASE file (an RDB when
``aof-use-rdb-preamble yes``, the default), INCR files numbered by ``seq``, and a manifest::

    file appendonly.aof.2.base.rdb seq 2 type b
    file appendonly.aof.2.incr.aof seq 2 type i

A rewrite (``BGREWRITEAOF``) opens the next INCR file at its fork, writes the new BASE as of that
fork, and then drops the older files from the manifest.  So BASE + the INCR files listed with it,
in ``seq`` order, is always a consistent history, and an INCR file is *closed* (never written
again) once a file with a higher ``seq`` is listed.

With ``aof-timestamp-enabled yes`` the INCR files carry ``#TS:<unix seconds>\\r\\n`` annotations:
one before the first command of every second.  A command after ``#TS:S`` ran during second S;
drkit gives it the time ``S*1000 + 999`` ms -- the end of its second -- so "replay every command
with time <= T" replays exactly the whole seconds that ended by T (1 s resolution, never a command
from after T).

An INCR file does *not* always start with an annotation: Redis 7 (``genAofTimestampAnnotationIfNeeded``
in aof.c) writes one only when the server's second is later than the last one it wrote
(``server.aof_cur_timestamp``), and opening the next INCR file at a rewrite does not reset that;
the RDB-preamble BASE has no annotation at all (the forced one is written only by the child, and
only for an AOF-format BASE).  So commands at the start of an INCR file written in the same second
as the last annotation (in the previous INCR file) carry none of their own: they belong to that
second.  The backup knows it when it ships them (the chain's previous piece ended under it, or,
for the first piece of a chain, it is at or before the BASE's ``ctime`` second) and records it in
the piece (``inherited_ts``, ``ts_at_start_ms``); see :mod:`.aofbackup`.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from drkit.errors import IntegrityError

TS_PREFIX = b"#TS:"
_READ = 1 << 20


def second_end_ms(seconds: int) -> int:
    """The time drkit gives a command annotated ``#TS:seconds``: the last ms of that second."""
    return seconds * 1000 + 999


@dataclass(frozen=True)
class AofFile:
    name: str
    seq: int
    type: str  # "b" base, "i" incr, "h" history


@dataclass(frozen=True)
class AofManifest:
    base: AofFile | None
    incrs: tuple[AofFile, ...]  # in seq order

    def incr(self, seq: int) -> AofFile | None:
        for f in self.incrs:
            if f.seq == seq:
                return f
        return None


def parse_manifest(text: str, where: str) -> AofManifest:
    """Parse an ``appendonly.aof.manifest``; anything unexpected is an integrity error naming ``where``."""
    base: AofFile | None = None
    incrs: list[AofFile] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            parts = shlex.split(line)
            fields = dict(zip(parts[::2], parts[1::2], strict=True))
            f = AofFile(fields["file"], int(fields["seq"]), fields["type"])
        except (ValueError, KeyError):
            raise IntegrityError(f"{where} line {lineno} is not an AOF manifest line: {line[:80]!r}") from None
        if f.type == "b":
            base = f
        elif f.type == "i":
            incrs.append(f)
    incrs.sort(key=lambda f: f.seq)
    return AofManifest(base, tuple(incrs))


class AofScanner:
    """Incremental structure check of AOF bytes: commands (RESP arrays) and ``#TS`` annotations.

    :meth:`feed` takes the next bytes and returns how many of the bytes held so far form complete
    elements; the rest (one element cut short) is kept for the next call.  Tracks the command
    count (``untimed``: those before this file's first annotation) and the first/last annotation
    seen (``last_ts`` may be preset to the annotation in effect where the bytes start).  Anything that is neither a RESP array nor an
    annotation raises :class:`IntegrityError` with ``name`` and the file offset.
    """

    def __init__(self, name: str, offset: int = 0) -> None:
        self.name = name
        self.offset = offset  # file offset of the first byte not yet consumed
        self.commands = 0
        self.untimed = 0  # commands before the first annotation of these bytes
        self.first_ts: int | None = None  # seconds
        self.last_ts: int | None = None
        self.first_command_ts: int | None = None  # annotation in effect at the first command
        self._pending = b""

    @property
    def pending(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> bytes:
        """Return the complete elements among the held bytes + ``data`` (and keep the rest)."""
        buf = self._pending + data if self._pending else data
        pos, n = 0, len(buf)
        while pos < n:
            c = buf[pos]
            if c == 0x2A:  # '*'
                end = _command_end(buf, pos, self)
                if end is None:
                    break
                if not self.commands:
                    self.first_command_ts = self.last_ts
                if self.first_ts is None:
                    self.untimed += 1
                self.commands += 1
                pos = end
            elif c == 0x23:  # '#'
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if n - pos > 64:
                        self._bad(buf, pos, "an annotation line without its end")
                    break
                line = buf[pos:nl]
                if line.startswith(TS_PREFIX):
                    try:
                        ts = int(line[len(TS_PREFIX):])
                    except ValueError:
                        self._bad(buf, pos, "a malformed #TS annotation")
                    self.first_ts = ts if self.first_ts is None else self.first_ts
                    self.last_ts = ts
                pos = nl + 2
            else:
                self._bad(buf, pos, "neither a command nor an annotation")
        self.offset += pos
        self._pending = bytes(buf[pos:])
        return buf[:pos] if pos < n else buf

    def _bad(self, buf: bytes, pos: int, what: str) -> None:
        raise IntegrityError(f"AOF file {self.name} is corrupt at offset {self.offset + pos}: {what} "
                             f"({bytes(buf[pos:pos + 32])!r}); check it with redis-check-aof")


def _command_end(buf: bytes, pos: int, sc: AofScanner) -> int | None:
    """End of the RESP array at ``buf[pos]`` (``*``), None if cut short; malformed -> error."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        if len(buf) - pos > 32:
            sc._bad(buf, pos, "a command header without its end")
        return None
    try:
        count = int(buf[pos + 1:end])
        p = end + 2
        for _ in range(count):
            end = buf.find(b"\r\n", p)
            if end < 0:
                if len(buf) - p > 32:
                    sc._bad(buf, p, "an argument header without its end")
                return None
            if buf[p] != 0x24:  # '$'
                sc._bad(buf, p, "an argument that is not a bulk string")
            p = end + 2 + int(buf[p + 1:end])
            if p + 2 > len(buf):
                return None
            if buf[p:p + 2] != b"\r\n":
                sc._bad(buf, p, "an argument longer than its declared length")
            p += 2
    except ValueError:
        sc._bad(buf, pos, "a malformed length")
    if count <= 0:
        sc._bad(buf, pos, "an empty command")
    return p


def iter_aof(reader: IO[bytes], name: str, ts_at_start_ms: int | None) -> Iterator[tuple[int, bytes]]:
    """(time ms, raw command) of every command in stored AOF bytes (see :func:`second_end_ms`).

    Commands before the first annotation get ``ts_at_start_ms`` (the annotation in effect where
    the piece starts: a piece's ``ts_at_start_ms``, which the backup sets to its ``inherited_ts``;
    None only in pieces written before that, at a chain's start).  A piece cut short or malformed is an integrity error naming ``name``.
    """
    sc = AofScanner(name)
    ts = ts_at_start_ms
    while True:
        data = reader.read(_READ)
        if not data:
            break
        chunk = sc.feed(data)
        pos, n = 0, len(chunk)
        while pos < n:
            if chunk[pos] == 0x23:
                nl = chunk.index(b"\r\n", pos)
                line = chunk[pos:nl]
                if line.startswith(TS_PREFIX):
                    ts = second_end_ms(int(line[len(TS_PREFIX):]))
                pos = nl + 2
                continue
            end = _command_end(chunk, pos, sc)
            assert end is not None
            if ts is None:
                raise IntegrityError(f"AOF piece {name} has a command before any #TS annotation: it was not "
                                     "written with aof-timestamp-enabled yes")
            yield ts, bytes(chunk[pos:end])
            pos = end
    if sc.pending:
        raise IntegrityError(f"AOF piece {name} is truncated: its last {sc.pending} bytes are an incomplete "
                             "command")
