"""Low-level RDB value encodings: lengths, strings and where each value type ends.

Internal helpers of :mod:`drkit.dumpers.redis.rdb` (which re-exports the record classes).  Every function works on an in-memory
``bytes`` window ``b`` at position ``p`` and returns the position after what it read.  They do
not bounds-check each byte: running past the end of the window raises ``IndexError`` or returns a
position beyond ``len(b)``; the caller treats both as "need more input" and re-parses the record
from its start with a larger window (positions only ever grow, so one check at the end of a record
suffices).  Structural problems raise :class:`BadEncoding` with the window position.

Formats follow Redis's src/rdb.c / rdb.h (7.2, RDB version 11).
"""

from __future__ import annotations

from dataclasses import dataclass

# Opcodes (rdb.h).
OP_SLOT_INFO = 0xF4
OP_FUNCTION2 = 0xF5
OP_FUNCTION_PRE_GA = 0xF6
OP_MODULE_AUX = 0xF7
OP_IDLE = 0xF8
OP_FREQ = 0xF9
OP_AUX = 0xFA
OP_RESIZEDB = 0xFB
OP_EXPIRETIME_MS = 0xFC
OP_EXPIRETIME = 0xFD
OP_SELECTDB = 0xFE
OP_EOF = 0xFF

TYPE_NAMES: dict[int, str] = {
    0: "string", 1: "list", 2: "set", 3: "zset", 4: "hash", 5: "zset2",
    6: "module (pre-GA)", 7: "module", 9: "hash zipmap", 10: "list ziplist", 11: "set intset",
    12: "zset ziplist", 13: "hash ziplist", 14: "list quicklist", 15: "stream listpacks",
    16: "hash listpack", 17: "zset listpack", 18: "list quicklist2", 19: "stream listpacks 2",
    20: "set listpack", 21: "stream listpacks 3",
}
# Redis 7.4 hash field expiration: 22/23 written by the 7.4 release candidates, 24/25 by 7.4 GA.
NEWER_TYPES: dict[int, str] = {
    22: "hash with field TTLs, Redis 7.4+", 23: "hash listpack with field TTLs, Redis 7.4+",
    24: "hash with field TTLs, Redis 7.4+", 25: "hash listpack with field TTLs, Redis 7.4+",
}
# Types whose value is one serialized blob (a string in RDB terms).
BLOB_TYPES = frozenset({0, 9, 10, 11, 12, 13, 16, 17, 20})


class BadEncoding(Exception):
    """A structural error at window position ``pos`` (converted to RdbError by the caller)."""

    def __init__(self, message: str, pos: int, unsupported: bool = False) -> None:
        super().__init__(message)
        self.pos = pos
        self.unsupported = unsupported


def read_len(b: bytes, p: int) -> tuple[int, int]:
    """A plain RDB length (6/14/32/64-bit); returns (value, new position)."""
    c = b[p]
    t = c >> 6
    if t == 0:
        return c, p + 1
    if t == 1:
        return ((c & 0x3F) << 8) | b[p + 1], p + 2
    if c == 0x80:
        return int.from_bytes(b[p + 1:p + 5], "big"), p + 5
    if c == 0x81:
        return int.from_bytes(b[p + 1:p + 9], "big"), p + 9
    if t == 3:
        raise BadEncoding(f"string encoding byte 0x{c:02x} where a length was expected", p)
    raise BadEncoding(f"invalid length prefix 0x{c:02x}", p)


def skip_str(b: bytes, p: int) -> int:
    """Skip one RDB string (raw, int8/16/32 or LZF) without decoding it."""
    c = b[p]
    t = c >> 6
    if t == 0:
        return p + 1 + c
    if t == 1:
        return p + 2 + (((c & 0x3F) << 8) | b[p + 1])
    if t == 2:
        n, p = read_len(b, p)
        return p + n
    enc = c & 0x3F
    if enc == 0:
        return p + 2
    if enc == 1:
        return p + 3
    if enc == 2:
        return p + 5
    if enc == 3:
        clen, q = read_len(b, p + 1)
        _, q = read_len(b, q)
        return q + clen
    raise BadEncoding(f"unknown string encoding 0x{c:02x}", p)


def read_str(b: bytes, p: int) -> tuple[bytes, int]:
    """Read and decode one RDB string: int encodings become decimal ASCII, LZF is expanded."""
    c = b[p]
    t = c >> 6
    if t == 0:
        e = p + 1 + c
        return b[p + 1:e], e
    if t == 1:
        e = p + 2 + (((c & 0x3F) << 8) | b[p + 1])
        return b[p + 2:e], e
    if t == 2:
        n, p = read_len(b, p)
        return b[p:p + n], p + n
    enc = c & 0x3F
    if enc <= 2:
        width = 1 << enc
        e = p + 1 + width
        if e > len(b):
            raise IndexError
        return str(int.from_bytes(b[p + 1:e], "little", signed=True)).encode(), e
    if enc == 3:
        clen, q = read_len(b, p + 1)
        ulen, q = read_len(b, q)
        e = q + clen
        if e > len(b):
            raise IndexError
        return lzf_decompress(b[q:e], ulen, q), e
    raise BadEncoding(f"unknown string encoding 0x{c:02x}", p)


def lzf_decompress(data: bytes, ulen: int, pos: int = 0) -> bytes:
    """Expand LibLZF-compressed ``data`` to ``ulen`` bytes (used for keys and aux fields only)."""
    out = bytearray()
    i, n = 0, len(data)
    try:
        while i < n:
            ctrl = data[i]
            i += 1
            if ctrl < 32:
                out += data[i:i + ctrl + 1]
                i += ctrl + 1
                continue
            length = ctrl >> 5
            if length == 7:
                length += data[i]
                i += 1
            ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
            i += 1
            length += 2
            if ref < 0:
                raise IndexError
            if ref + length <= len(out):
                out += out[ref:ref + length]
            else:
                for k in range(length):
                    out.append(out[ref + k])
    except IndexError:
        raise BadEncoding("corrupt LZF-compressed string", pos) from None
    if len(out) != ulen:
        raise BadEncoding(f"LZF string expands to {len(out)} bytes, header says {ulen}", pos)
    return bytes(out)


def _skip_stream(t: int, b: bytes, p: int) -> int:
    # rdbLoadObject, RDB_TYPE_STREAM_LISTPACKS{,_2,_3}.
    n, p = read_len(b, p)
    for _ in range(n):
        p = skip_str(b, skip_str(b, p))  # master id (16 bytes) + listpack
    _, p = read_len(b, p)  # length
    _, p = read_len(b, p)  # last id ms
    _, p = read_len(b, p)  # last id seq
    if t >= 19:
        for _ in range(5):  # first id, max deleted id (ms, seq each), entries_added
            _, p = read_len(b, p)
    groups, p = read_len(b, p)
    consumer_extra = 16 if t >= 21 else 8  # seen time [+ active time]
    for _ in range(groups):
        p = skip_str(b, p)  # name
        _, p = read_len(b, p)
        _, p = read_len(b, p)  # last id
        if t >= 19:
            _, p = read_len(b, p)  # entries_read
        pel, p = read_len(b, p)
        for _ in range(pel):
            _, p = read_len(b, p + 24)  # raw id 16 + delivery time 8, delivery count
        consumers, p = read_len(b, p)
        for _ in range(consumers):
            p = skip_str(b, p) + consumer_extra
            pel, p = read_len(b, p)
            p += 16 * pel
        if p > len(b):
            raise IndexError
    return p


def skip_value(t: int, b: bytes, p: int) -> int:
    """Position after the serialized value of RDB type ``t`` starting at ``p``."""
    if t in BLOB_TYPES:
        return skip_str(b, p)
    if t == 1 or t == 2 or t == 14 or t == 4:
        n, p = read_len(b, p)
        for _ in range(2 * n if t == 4 else n):
            c = b[p]  # inlined skip_str for the common short raw string
            p = p + 1 + c if c < 64 else skip_str(b, p)
        return p
    if t == 5:
        n, p = read_len(b, p)
        for _ in range(n):
            c = b[p]
            p = (p + 9 + c) if c < 64 else skip_str(b, p) + 8
        return p
    if t == 18:
        n, p = read_len(b, p)
        for _ in range(n):
            _, p = read_len(b, p)  # container
            p = skip_str(b, p)
        return p
    if t == 3:
        n, p = read_len(b, p)
        for _ in range(n):
            p = skip_str(b, p)
            c = b[p]
            p += 1 if c >= 253 else 1 + c  # 253 nan, 254 +inf, 255 -inf, else ASCII of length c
        return p
    if t in (15, 19, 21):
        return _skip_stream(t, b, p)
    if t in (6, 7):
        raise BadEncoding(f"RDB type {t} (module data type) is not supported", p, unsupported=True)
    if t in NEWER_TYPES:
        raise BadEncoding(f"RDB type {t} ({NEWER_TYPES[t]}) is not supported", p, unsupported=True)
    raise BadEncoding(f"unknown RDB type {t}", p)


# -- records ---------------------------------------------------------------------------------

@dataclass(slots=True)
class Header:
    """The file header (always the first record)."""

    version: int
    offset: int = 0


@dataclass(slots=True)
class Aux:
    """An AUX field (0xFA): ``redis-ver``, ``ctime``, ``repl-id``, ... (int values as ASCII)."""

    key: bytes
    value: bytes
    offset: int


@dataclass(slots=True)
class SelectDb:
    """SELECTDB (0xFE): the following keys belong to database ``db``."""

    db: int
    offset: int


@dataclass(slots=True)
class ResizeDb:
    """RESIZEDB (0xFB) size hints for the current database."""

    db_size: int
    expires_size: int
    offset: int


@dataclass(slots=True)
class Function:
    """A FUNCTION2 (0xF5) record: one function library's source code."""

    payload: bytes
    offset: int


@dataclass(slots=True)
class Entry:
    """One key: ``value`` is the serialized value exactly as in the file (after the type byte).

    ``expire_ms`` is the absolute expiry in Unix ms (None: no TTL); ``offset`` is where the
    record (including its EXPIRETIME/IDLE/FREQ prefix) starts.
    """

    db: int
    key: bytes
    type: int
    value: bytes
    expire_ms: int | None
    lru_idle: int | None
    lfu_freq: int | None
    offset: int


@dataclass(slots=True)
class Eof:
    """The EOF record (always last): total size and the stored CRC64 (0 = not checksummed)."""

    offset: int
    size: int
    crc: int
    checksummed: bool


Record = Header | Aux | SelectDb | ResizeDb | Function | Entry | Eof
