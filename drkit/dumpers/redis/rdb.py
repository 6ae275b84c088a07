"""Streaming Redis RDB reader, validator and rewriter (pure logic, no network).

* :class:`ValidatingReader` passes an RDB stream through unchanged (e.g. into
  ``WriteSession.write_stream``) and checks header, EOF opcode, CRC64 and length at EOF.
* :func:`iter_records` / :class:`RdbParser` walk the file record by record; values are kept as the
  exact serialized bytes (never decoded), so :func:`restore_payload` can build a ``RESTORE`` payload.
* :func:`rewrite` copies an RDB, dropping keys already expired at a point in time ``at_ms`` and
  shifting the other expiries by ``now_ms - at_ms``, with a fresh CRC64.

Memory is bounded by the largest single record (value).  The parser costs one Python iteration
per record (plus one per element of non-blob values); :func:`rewrite` hands the key records to the
optional C extension ``_rdbscan`` (built by setup.py) when it is there, which leaves the input
read, the CRCs (anycrc, ~GB/s) and the copies as its cost.
Formats follow Redis 7.2 src/rdb.c (RDB versions 1..11).  Not supported (clear RdbError): module
types and module aux data, the pre-GA FUNCTION opcode, and Redis 7.4+ (RDB 12) hash field TTLs.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import anycrc

from drkit.errors import DrkitError, IntegrityError

from . import rdb_types as T
from .rdb_types import (
    Aux,
    BadEncoding,
    Entry,
    Eof,
    Function,
    Header,
    Record,
    ResizeDb,
    SelectDb,
    read_len,
    read_str,
    skip_str,
    skip_value,
)

__all__ = [
    "Aux", "Entry", "Eof", "Function", "Header", "RdbError", "RdbParser", "RdbUnsupported", "Record",
    "ChunkStream", "ResizeDb", "RewriteStats", "SelectDb", "ValidatingReader", "crc64", "iter_records",
    "native_available", "restore_payload", "rewrite",
]

_ABI = 2  # the _rdbscan.scan() interface this module calls (the C module's ABI constant)
_STALE: str | None = None  # why a built _rdbscan is not used
try:  # the optional C extension (setup.py); without it rewrite() runs the pure-Python path
    from . import _rdbscan
except ImportError:  # pragma: no cover - depends on the build
    _rdbscan = None
else:
    if getattr(_rdbscan, "ABI", 1) != _ABI:  # built from an older _rdbscan.c (a pull without a rebuild)
        _STALE = (f"{_rdbscan.__file__} was built from another version of _rdbscan.c (interface "
                  f"{getattr(_rdbscan, 'ABI', 1)}, this drkit needs {_ABI}): rebuild it with scripts/install.sh "
                  "or `pip install -e .`")
        _rdbscan = None

MAX_VERSION = 11  # Redis 7.2
_CRC = anycrc.Model("CRC64-REDIS")
_CHUNK = 1 << 22
_BRIDGE = 64 << 10  # the head of the next piece a record straddling two pieces is given at first
_MAGIC = b"REDIS"


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Redis's CRC-64/Jones of ``data``, continuing from ``crc``."""
    return _CRC.calc(data, crc)


class RdbError(IntegrityError):
    """An RDB stream is corrupt, truncated or uses a feature drkit cannot handle.

    Corrupt/truncated data is a corrupt-backup error (exit code of :class:`IntegrityError`);
    ``offset`` is the byte offset the problem was found at (None when not applicable) and
    ``redis_key`` the Redis key whose record it is in, when known.
    """

    def __init__(self, message: str, *, offset: int | None = None, redis_key: bytes | None = None):
        super().__init__(message)
        self.offset = offset
        self.redis_key = redis_key


class RdbUnsupported(RdbError):
    """The RDB is well-formed but uses something drkit refuses (newer version, modules, ...)."""

    exit_code = DrkitError.exit_code


def _parse_header(head: bytes) -> int:
    if len(head) < 9 or head[:5] != _MAGIC:
        raise RdbError(f"not an RDB file: starts with {bytes(head[:9])!r}, expected b'REDIS' + "
                       "4-digit version", offset=0)
    digits = bytes(head[5:9])
    if not digits.isdigit():
        raise RdbError(f"bad RDB version field {digits!r} at offset 5", offset=5)
    version = int(digits)
    if version < 1:
        raise RdbError(f"bad RDB version {version} at offset 5", offset=5)
    if version > MAX_VERSION:
        raise RdbUnsupported(f"RDB format version {version} is newer than supported (at most "
                             f"{MAX_VERSION}, Redis 7.2); it was written by a newer Redis", offset=5)
    return version


class ValidatingReader(io.RawIOBase):
    """Pass-through reader that validates an RDB stream when its end is reached.

    Bytes are returned unchanged; per read it only updates the CRC64 and a little bookkeeping
    (no parsing).  The header (magic ``REDIS`` + version 1..11) is checked as soon as 9 bytes
    have passed; at EOF it checks that the stream ends with opcode 0xFF followed (version >= 5)
    by the little-endian CRC64 of everything before it, and that the size equals
    ``expected_size`` when given.  A stored CRC of 0 (``rdbchecksum no``) is accepted and
    reported as ``checksummed = False``.  Problems raise :class:`RdbError`.
    """

    def __init__(self, raw: IO[bytes], *, expected_size: int | None = None) -> None:
        super().__init__()
        self._raw = raw
        self._readinto = getattr(raw, "readinto", None)
        self.expected_size = expected_size
        self.version: int | None = None
        self.size = 0
        self.crc: int | None = None  # the stored CRC64 once validated
        self.checksummed = False
        self._crc = 0
        self._head = bytearray()
        self._hold = b""  # last <= 8 bytes: not hashed yet (they may be the stored CRC)
        self._last = -1  # last hashed byte
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Read into ``buffer`` from the wrapped stream; validate at EOF."""
        if self._readinto is not None:
            n = self._readinto(buffer) or 0
        else:
            data = self._raw.read(len(buffer))
            n = len(data)
            buffer[:n] = data
        if n == 0:
            if len(buffer):
                self._finish()
            return 0
        self._feed(memoryview(buffer)[:n])
        return n

    def _feed(self, mv: memoryview) -> None:
        if self.version is None:
            self._head += mv[:9 - len(self._head)]
            if len(self._head) >= 9:
                self.version = _parse_header(bytes(self._head))
        self.size += len(mv)
        if len(mv) >= 8:
            if self._hold:
                self._crc = _CRC.calc(self._hold, self._crc)
                self._last = self._hold[-1]
            if len(mv) > 8:
                self._crc = _CRC.calc(mv[:-8], self._crc)
                self._last = mv[-9]
            self._hold = bytes(mv[-8:])
        else:
            h = self._hold + bytes(mv)
            if len(h) > 8:
                self._crc = _CRC.calc(h[:-8], self._crc)
                self._last = h[-9]
            self._hold = h[-8:]

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self.version is None or self.size < 10:
            raise RdbError(f"RDB truncated: stream ends at byte {self.size}, before the header and "
                           "EOF opcode", offset=self.size)
        if self.version < 5:  # no checksum: the stream must end with the EOF opcode
            if self._hold[-1] != T.OP_EOF:
                raise RdbError(f"RDB truncated: last byte at offset {self.size - 1} is not the EOF "
                               "opcode 0xff", offset=self.size - 1)
            self._crc = _CRC.calc(self._hold, self._crc)
            self.crc, self.checksummed = 0, False
        else:
            if self._last != T.OP_EOF:
                raise RdbError(f"RDB truncated: byte at offset {self.size - 9} is not the EOF opcode "
                               "0xff followed by the 8-byte checksum", offset=self.size - 9)
            stored = int.from_bytes(self._hold, "little")
            if stored and stored != self._crc:
                raise RdbError(f"RDB checksum mismatch: stored CRC64 {stored:016x} at offset "
                               f"{self.size - 8} != computed {self._crc:016x} over bytes "
                               f"0..{self.size - 9}: the data is corrupt", offset=self.size - 8)
            self.crc, self.checksummed = stored, bool(stored)
        if self.expected_size is not None and self.size != self.expected_size:
            raise RdbError(f"RDB size {self.size} bytes differs from the expected "
                           f"{self.expected_size}", offset=self.size)




_PREFIX_OPS = frozenset({T.OP_EXPIRETIME_MS, T.OP_EXPIRETIME, T.OP_IDLE, T.OP_FREQ})
_KNOWN_TYPES = frozenset(T.TYPE_NAMES) | frozenset(T.NEWER_TYPES)


class _Short(Exception):
    pass


class ChunkStream:
    """Pieces of a stream (e.g. the repository's chunks) as the parser's input, without copies.

    ``read(n)`` returns the next whole piece, whatever ``n`` is (b"" at the end): it is only meant
    for :class:`RdbParser`, which then also ignores its ``chunk_size``.  The parser parses each
    piece where it lies; only a record that straddles two pieces is copied, into a small bridge
    window, or a joined one for records longer than that (see ``RdbParser._refill_pieces``).
    """

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces

    def read(self, n: int = -1) -> bytes:
        for piece in self._pieces:
            if piece:
                return piece
        return b""


class RdbParser:
    """Streaming RDB parser over a binary reader; iterate it for :data:`Record` objects.

    Yields a :class:`Header` first and an :class:`Eof` last; verifies the CRC64 (like
    :class:`ValidatingReader`) and that nothing follows the checksum.  After iteration,
    ``version``, ``size``, ``crc`` and ``checksummed`` are set.  Memory is bounded by the largest
    record.  With ``values=False`` entries carry ``value=b""`` (faster when values are unused).

    ``verify_crc=False`` skips computing the CRC64 of the input (the stored checksum is still read
    and reported): for a stream whose every byte is already authenticated as the bytes that passed
    this check at backup time, the second pass proves nothing and costs a pass over the data.
    ``stream`` may be a :class:`ChunkStream`, whose pieces are parsed where they lie.
    """

    def __init__(self, stream: IO[bytes] | ChunkStream, *, values: bool = True, chunk_size: int = _CHUNK,
                 verify_crc: bool = True) -> None:
        self._stream = stream
        self._values = values
        self._chunk = chunk_size
        self._verify = verify_crc
        self.version = 0
        self.size = 0
        self.crc = 0
        self.checksummed = False
        self._computed = 0  # CRC64 of the file's bytes [0, self._counted)
        self._counted = 0
        self._b = b""
        self._base = 0  # file offset of self._b[0]
        # With a ChunkStream, a window may be a *bridge*: the end of the previous piece plus the
        # first ``off`` bytes of the next one, ``piece``; parsing then moves into ``piece`` itself
        # as soon as it has left the bridge's copied head (see _refill).
        self._tail: tuple[bytes, int] | None = None
        self._gen = 0  # bumped by every refill: a new window (even if it is the same object)
        # Spans of the current record (valid while the generator is suspended at a yield).
        self._span = (0, 0)  # whole record in self._b
        self._body = 0  # position of the type byte
        self._prefix: list[tuple[int, int]] | tuple[()] = ()  # IDLE/FREQ opcodes of the record
        # rewrite()'s native scanner: called as fast(window, pos) before each record is parsed; it
        # returns where Python parsing resumes, or ~pos if the record at pos is incomplete.
        self._fast: Callable[[bytes, int], int] | None = None

    def _refill(self, keep: int) -> int:
        """Drop (and hash) ``self._b[:keep]``, then make the window longer (or raise at EOF).

        Returns where ``b[keep]`` is in the new window (0 unless the parser moved from a bridge
        into the piece it bridges to).
        """
        b = self._b
        self._gen += 1
        if self._verify and self._base + keep > self._counted:
            self._computed = _CRC.calc(memoryview(b)[self._counted - self._base:keep], self._computed)
            self._counted = self._base + keep
        if isinstance(self._stream, ChunkStream):
            return self._refill_pieces(keep)
        self._base += keep
        want = max(self._chunk, len(b) - keep)
        parts = [b[keep:]]
        got = 0
        while got < want:
            data = self._stream.read(want - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        if not got:
            raise self._truncated(len(b) - keep)
        self._b = parts[1] if len(parts) == 2 and not parts[0] else b"".join(parts)
        return 0

    def _refill_pieces(self, keep: int) -> int:
        """_refill for a ChunkStream: copy only what a record straddling two pieces needs.

        The bytes after ``keep`` and the head of the next piece go into a small bridge window;
        once the parser is past the bridge's copied part it continues in the piece itself.  So
        each piece is parsed where it lies, instead of being copied into a joined window.
        """
        b, tail = self._b, self._tail
        if tail is not None:
            piece, off = tail
            into = keep - (len(b) - off)  # where b[keep] is in piece (< 0: still in the head)
            self._tail = None
            if into >= 0:
                self._b, self._base = piece, self._base + keep - into
                return into
            self._b, self._base = b"".join((memoryview(b)[keep:], memoryview(piece)[off:])), self._base + keep
            return 0
        rest = memoryview(b)[keep:]
        self._base += keep
        piece = self._stream.read()
        if not piece:
            raise self._truncated(len(rest))
        if not rest:
            self._b = piece
            return 0
        off = max(_BRIDGE, 2 * len(rest))
        if off < len(piece):
            self._b, self._tail = b"".join((rest, memoryview(piece)[:off])), (piece, off)
            return 0
        # A record longer than what a bridge gives: at least double the window (like the file
        # path), so a value spanning many pieces is copied a bounded number of times, not once
        # per piece.
        parts, got = [rest, piece], len(piece)
        while got < len(rest):
            more = self._stream.read()
            if not more:
                break
            parts.append(more)
            got += len(more)
        self._b = b"".join(parts)
        return 0

    def _truncated(self, have: int) -> RdbError:
        """The stream ended ``have`` bytes into the record at ``self._base``."""
        return RdbError(f"RDB truncated: the record at offset {self._base} is incomplete, the "
                        f"stream ends at byte {self._base + have}", offset=self._base)

    def _error(self, exc: BadEncoding, key: bytes | None = None) -> RdbError:
        where = f" (key {key!r})" if key is not None else ""
        off = self._base + exc.pos
        cls = RdbUnsupported if exc.unsupported else RdbError
        return cls(f"{exc}{where} at offset {off}", offset=off, redis_key=key)

    def __iter__(self) -> Iterator[Record]:
        while len(self._b) < 9:
            self._refill(0)
        self.version = _parse_header(self._b[:9])
        yield Header(self.version)
        known, blob, prefix_ops = _KNOWN_TYPES, T.BLOB_TYPES, _PREFIX_OPS
        p, db, values, done = 9, 0, self._values, False
        b, base = self._b, self._base
        n = len(b)
        fast = self._fast
        while True:
            if fast is not None:
                p = fast(b, p)
                if p < 0:  # the record at ~p is incomplete
                    p = self._refill(~p)
                    b, base = self._b, self._base
                    n = len(b)
                    continue
            s = p
            key = None
            try:
                op = b[p]
                p += 1
                expire = idle = freq = None
                pre: list[tuple[int, int]] | tuple[()] = ()
                if op in prefix_ops:
                    pre = []
                    while op in prefix_ops:
                        if op == 0xFC:  # EXPIRETIME_MS
                            expire = int.from_bytes(b[p:p + 8], "little")
                            p += 8
                        elif op == 0xFD:  # EXPIRETIME (seconds)
                            expire = int.from_bytes(b[p:p + 4], "little", signed=True) * 1000
                            p += 4
                        elif op == 0xF8:  # IDLE
                            idle, q = read_len(b, p)
                            pre.append((p - 1, q))
                            p = q
                        else:  # FREQ
                            freq = b[p]
                            pre.append((p - 1, p + 1))
                            p += 1
                        op = b[p]
                        p += 1
                    if op >= T.OP_SLOT_INFO:
                        raise BadEncoding(f"opcode 0x{op:02x} after an expire/idle/freq prefix", p - 1)
                if op < T.OP_SLOT_INFO:  # a key
                    if op not in known:
                        raise BadEncoding(f"unknown RDB type {op} (0x{op:02x})", p - 1)
                    body = p - 1
                    c = b[p]
                    if c < 64:
                        key = b[p + 1:p + 1 + c]
                        p += 1 + c
                    else:
                        key, p = read_str(b, p)
                    if p > n:  # the key runs past the window: errors about the value would name a cut key
                        raise _Short
                    vs = p
                    if op in blob:
                        c = b[p]
                        p = p + 1 + c if c < 64 else skip_str(b, p)
                    else:
                        p = skip_value(op, b, p)
                    if p > n:
                        raise _Short
                    rec: Record = Entry(db, key, op, b[vs:p] if values else b"", expire, idle, freq,
                                        base + s)
                    self._body, self._prefix = body, pre
                else:
                    rec, p = self._other(op, b, p, s)
                    if p > n:
                        raise _Short
                    if op == T.OP_SELECTDB:
                        db = rec.db  # type: ignore[union-attr]
                    done = op == T.OP_EOF
                self._span = (s, p)
            except (IndexError, _Short):
                p = self._refill(s)
                b, base = self._b, self._base
                n = len(b)
                continue
            except BadEncoding as exc:
                raise self._error(exc, key) from None
            yield rec
            if done:
                return

    def _other(self, op: int, b: bytes, p: int, s: int) -> tuple[Record, int]:
        """A record that is not a key: returns it and the position after it."""
        off = self._base + s
        if op == T.OP_SELECTDB:
            db, p = read_len(b, p)
            return SelectDb(db, off), p
        if op == T.OP_AUX:
            k, p = read_str(b, p)
            v, p = read_str(b, p)
            return Aux(k, v, off), p
        if op == T.OP_RESIZEDB:
            n1, p = read_len(b, p)
            n2, p = read_len(b, p)
            return ResizeDb(n1, n2, off), p
        if op == T.OP_FUNCTION2:
            code, p = read_str(b, p)
            return Function(code, off), p
        if op == T.OP_EOF:
            return self._eof(b, p, s), p + (8 if self.version >= 5 else 0)
        if op == T.OP_FUNCTION_PRE_GA:
            raise BadEncoding("opcode 0xf6 (FUNCTION, Redis 7.0 release candidates) is not supported; "
                              "re-save the data with Redis 7.0 GA or newer", s, unsupported=True)
        if op == T.OP_MODULE_AUX:
            raise BadEncoding("opcode 0xf7 (MODULE_AUX: module data) is not supported", s, unsupported=True)
        raise BadEncoding(f"unknown RDB opcode 0x{op:02x}", s)

    def _eof(self, b: bytes, p: int, s: int) -> Eof:
        crc = _CRC.calc(memoryview(b)[self._counted - self._base:p], self._computed) if self._verify else None
        size = self._base + p
        stored = 0
        if self.version >= 5:
            if p + 8 > len(b):
                raise _Short
            stored = int.from_bytes(b[p:p + 8], "little")
            size += 8
            if stored and crc is not None and stored != crc:
                raise RdbError(f"RDB checksum mismatch: stored CRC64 {stored:016x} at offset "
                               f"{size - 8} != computed {crc:016x} over bytes 0..{size - 9}: the "
                               "data is corrupt", offset=size - 8)
        more = self._tail is not None and self._tail[1] < len(self._tail[0])
        if size - self._base < len(b) or more or self._stream.read(1):
            raise RdbError(f"unexpected data after the RDB end (checksum) at offset {size}", offset=size)
        self.size, self.crc, self.checksummed = size, stored, bool(stored)
        return Eof(self._base + s, size, stored, bool(stored))


def iter_records(reader: IO[bytes], *, values: bool = True) -> Iterator[Record]:
    """Records of the RDB stream ``reader`` in file order (see :class:`RdbParser`)."""
    return iter(RdbParser(reader, values=values))


def restore_payload(entry: Entry, rdb_version: int) -> bytes:
    """The ``DUMP``/``RESTORE`` serialization of ``entry``.

    Type byte + raw value + 2-byte little-endian RDB version + little-endian CRC64 of all
    preceding bytes.  A server refuses payloads with a version newer than its own RDB version
    (Redis 7.0: 10, 7.2: 11).  ``entry`` must come from a parser run with ``values=True``.
    """
    if not entry.value:
        raise ValueError(f"entry {entry.key!r} carries no value (parsed with values=False)")
    body = bytes((entry.type,)) + entry.value + rdb_version.to_bytes(2, "little")
    return body + crc64(body).to_bytes(8, "little")


@dataclass
class RewriteStats:
    """What :func:`rewrite` did."""

    keys_kept: int = 0
    keys_expired: int = 0  # dropped: absolute expiry <= at_ms
    keys_with_ttl: int = 0  # kept keys that carry an expiry
    bytes_in: int = 0
    bytes_out: int = 0
    crc_in: int = 0  # the CRC64 stored at the end of the input (0: none)


_PACK_MS = struct.Struct("<BQ").pack


def native_available() -> bool:
    """True when the C fast path of :func:`rewrite` (``_rdbscan``) is built and importable."""
    return _rdbscan is not None


def _use_native(native: bool | None, at_ms: int, shift: int) -> bool:
    if native is None:
        wanted = os.environ.get("DRKIT_RDB_NATIVE", "1") != "0"
        if wanted and _STALE is not None:
            import logging

            logging.getLogger("drkit.redis").warning("native RDB scanner not used (slower restore): %s", _STALE)
        native = wanted and _rdbscan is not None
    elif native and _rdbscan is None:
        raise RuntimeError(_STALE or "the native RDB scanner (drkit.dumpers.redis._rdbscan) is not built")
    return native and -(1 << 63) <= at_ms < 1 << 63 and -(1 << 63) <= shift < 1 << 63


class _Sink:
    """:func:`rewrite`'s output, with the CRC64 and count of every byte written.

    Written in pieces of at most 1 MiB: the kernel's copy into the page cache runs at about a
    third of the speed from a 4 MiB buffer (which no longer fits the CPU cache) on the machines
    measured.  Runs of unchanged input go out straight from the parser's window, not copied.
    Other output collects in one buffer of fixed size, reused after each spill: a growing
    bytearray was reallocated (and copied) at most appends, ~0.25 CPU s per 1.8 GB restore.
    So ``dst.write`` must be done with the bytes when it returns (a file's write, BytesIO);
    one that kept the view to write later would see it overwritten.
    """

    def __init__(self, dst: IO[bytes]) -> None:
        self.dst, self.crc, self.written = dst, 0, 0
        self.buf = bytearray(_BUF)  # output that precedes the pending run: buf[:used]
        self.used = 0

    def add(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self.used + n > _BUF:
            self.spill()
            if n > _BUF:
                self._put(memoryview(data))
                return
        self.buf[self.used:self.used + n] = data
        self.used += n

    def spill(self) -> None:
        if self.used:
            self._put(memoryview(self.buf)[:self.used])
            self.used = 0

    def run(self, view: memoryview) -> None:
        """Write ``buf``, then the unchanged bytes ``view`` that follow it."""
        self.spill()
        self._put(view)

    def _put(self, view: memoryview) -> None:
        for i in range(0, len(view), _OUT):
            piece = view[i:i + _OUT]
            self.crc = _CRC.calc(piece, self.crc)
            self.dst.write(piece)
        self.written += len(view)


_OUT = 1 << 20
_EOF = bytes([T.OP_EOF])
_BUF = 2 * _OUT  # the output buffer: spilled once it holds _OUT or the next copy would not fit


def rewrite(src: IO[bytes] | ChunkStream, dst: IO[bytes], *, at_ms: int, now_ms: int,
            chunk_size: int = _CHUNK, native: bool | None = None, verify_crc: bool = True) -> RewriteStats:
    """Copy the RDB ``src`` to ``dst`` as of point in time ``at_ms`` (Unix ms), restored at ``now_ms``.

    Keys with an expiry <= ``at_ms`` are dropped; the others keep their remaining TTL at
    ``at_ms``: expiry + (now_ms - at_ms), always written as EXPIRETIME_MS.  Aux fields, function
    libraries, IDLE/FREQ and RESIZEDB hints are copied as they are; the CRC64 is recomputed.
    ``src`` is fully validated (raises :class:`RdbError`); ``dst`` may be left partial then.
    ``dst.write`` must have consumed its argument when it returns (the buffer is reused).
    ``chunk_size`` is the read size (the parser's window grows beyond it for larger records).
    ``verify_crc=False``: see :class:`RdbParser` (the structure is still checked in full).

    ``native``: None uses the C scanner when it is built (unless ``DRKIT_RDB_NATIVE=0``), True
    requires it, False forces the pure-Python path.  Both give byte-identical output and errors:
    the scanner handles the common key records and leaves every other record to the parser.
    """
    parser = RdbParser(src, values=False, chunk_size=chunk_size, verify_crc=verify_crc)
    kept = expired = with_ttl = 0
    shift = now_ms - at_ms
    sink = _Sink(dst)
    # Unchanged records stay in runs: [run, end) of the parser's current window, number ``gen``
    # (compared by number: a source may hand over the same bytes object twice).
    gen, mv, run, end = -1, memoryview(b""), 0, 0

    if _use_native(native, at_ms, shift):
        scan = _rdbscan.scan  # type: ignore[union-attr]

        def fast(b: bytes, p: int) -> int:
            """Let the C scanner take the key records from ``p`` on (see RdbParser._fast)."""
            nonlocal gen, mv, run, end, kept, expired, with_ttl
            if parser._gen != gen:
                sink.run(mv[run:end])
                gen, mv, run = parser._gen, memoryview(b), p
            while True:
                q, run, k, x, t, sink.used, full = scan(b, p, run, sink.buf, sink.used, at_ms, shift)
                kept += k
                expired += x
                with_ttl += t
                end = q if q >= 0 else ~q
                if not full:
                    break
                # The buffer cannot take the run up to the key at q: out with both, then go on.
                # A record that does not fit even then is left to the parser (sink.add).
                stuck = q == run and not sink.used
                sink.run(mv[run:q])
                run = p = q
                if stuck:
                    break
            if sink.used >= _OUT:
                sink.spill()
            return q

        parser._fast = fast

    for rec in parser:
        b = parser._b
        s, e = parser._span
        if parser._gen != gen:  # the parser moved its window: write the run of the old one
            sink.run(mv[run:end])
            gen, mv, run = parser._gen, memoryview(b), s if rec.__class__ is not Header else 0
        add = sink.add
        if rec.__class__ is Entry:
            exp = rec.expire_ms  # type: ignore[union-attr]
            if exp is None:
                kept += 1
            elif exp <= at_ms:
                expired += 1
                add(mv[run:s])
                run = e
            else:
                kept += 1
                with_ttl += 1
                add(mv[run:s])
                add(_PACK_MS(T.OP_EXPIRETIME_MS, exp + shift))
                for a, z in parser._prefix:
                    add(mv[a:z])
                add(mv[parser._body:e])
                run = e
        elif rec.__class__ is Eof:
            add(mv[run:s])
            add(_EOF)
            sink.spill()
            if parser.version >= 5:
                dst.write(sink.crc.to_bytes(8, "little"))
                sink.written += 8
            break
        elif rec.__class__ is Header:
            e = 9
        end = e
        if sink.used >= _OUT:
            sink.spill()
    return RewriteStats(kept, expired, with_ttl, parser.size, sink.written, parser.crc)
