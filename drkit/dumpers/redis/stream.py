"""The recorded command stream of ``drkit redis follow``: slice framing, RESP parsing, time shifts.

A slice is a sequence of frames, one per command the primary sent on the replication link::

    <u64 LE: receipt time, Unix ms> <u32 LE: length> <the command's raw RESP bytes>

The raw bytes are kept exactly as received (so the slice covers the replication offsets it says
it covers); replay parses them to drop link-only commands and to shift absolute expiry times.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import IO

from drkit.errors import IntegrityError

FRAME = struct.Struct("<QI")

# Commands on the link that only concern the link itself: never replayed.
LINK_ONLY = {b"PING", b"REPLCONF"}


def frame(ts_ms: int, raw: bytes | memoryview) -> bytes:
    return FRAME.pack(ts_ms, len(raw)) + bytes(raw)


def iter_frames(reader: IO[bytes], name: str) -> Iterator[tuple[int, bytes]]:
    """(receipt ms, raw command) of every frame in a slice; a truncated frame is an integrity error."""
    while True:
        head = reader.read(FRAME.size)
        if not head:
            return
        if len(head) < FRAME.size:
            raise IntegrityError(f"command slice {name} is truncated (partial frame header)")
        ts, n = FRAME.unpack(head)
        raw = reader.read(n)
        if len(raw) < n:
            raise IntegrityError(f"command slice {name} is truncated (frame of {n} bytes cut short)")
        yield ts, raw


def parse_command(raw: bytes) -> list[bytes]:
    """The arguments of one RESP array command (``*N\\r\\n$len\\r\\narg\\r\\n...``)."""
    if not raw.startswith(b"*"):
        # Inline commands never travel on a replication link; refuse rather than guess.
        raise IntegrityError(f"recorded command is not a RESP array: {raw[:40]!r}")
    end = raw.index(b"\r\n")
    count = int(raw[1:end])
    pos = end + 2
    args: list[bytes] = []
    for _ in range(count):
        end = raw.index(b"\r\n", pos)
        n = int(raw[pos + 1 : end])
        start = end + 2
        args.append(raw[start : start + n])
        pos = start + n + 2
    return args


def encode_command(args: list[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def command_length(buf: bytes | bytearray, pos: int) -> int | None:
    """Length of the complete RESP array starting at ``buf[pos]``, or None if more bytes are needed."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    if buf[pos : pos + 1] != b"*":
        raise IntegrityError(f"replication stream out of sync: {bytes(buf[pos:pos + 40])!r}")
    count = int(buf[pos + 1 : end])
    p = end + 2
    for _ in range(count):
        end = buf.find(b"\r\n", p)
        if end < 0:
            return None
        n = int(buf[p + 1 : end])
        p = end + 2 + n + 2
        if p > len(buf):
            return None
    return p - pos


def _shift_at(args: list[bytes], i: int, shift_ms: int, unit_ms: int) -> None:
    value = int(args[i])
    if value > 0:
        args[i] = str(value + shift_ms // unit_ms).encode()


def shift_times(args: list[bytes], shift_ms: int) -> list[bytes]:
    """Move every absolute expiry time in ``args`` by ``shift_ms`` (restore-time TTL semantics).

    Redis 7 propagates expiries in absolute form (SET ... PXAT, PEXPIREAT, GETEX PXAT,
    RESTORE ... ABSTTL); shifting them by (restore time - T) keeps each key's remaining TTL as it
    was at T.  Relative forms are left alone.
    """
    if not shift_ms or not args:
        return args
    name = args[0].upper()
    out = list(args)
    if name in (b"PEXPIREAT", b"EXPIREAT") and len(out) >= 3:
        _shift_at(out, 2, shift_ms, 1 if name == b"PEXPIREAT" else 1000)
    elif name in (b"SET", b"GETEX"):
        for i in range(3 if name == b"SET" else 2, len(out) - 1):  # options follow key (and value)
            flag = out[i].upper()
            if flag in (b"PXAT", b"EXAT"):
                _shift_at(out, i + 1, shift_ms, 1 if flag == b"PXAT" else 1000)
    elif name == b"RESTORE" and len(out) >= 4 and any(a.upper() == b"ABSTTL" for a in out[4:]):
        _shift_at(out, 2, shift_ms, 1)
    return out
