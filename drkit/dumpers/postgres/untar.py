"""A streaming tar extractor for base backups, writing file data straight from the chunks.

Python's ``tarfile`` in stream mode reads through 10 KiB buffers and copies each byte several
times; on a base backup that made extraction, not decryption, the slowest step of a restore.
This reader handles what ``pg_basebackup -Ft`` produces (ustar regular files, directories and
symlinks, plus GNU long names and pax headers for safety), verifies every header checksum, and
refuses anything that could escape the target directory or that it does not understand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from drkit.errors import DrkitError, IntegrityError

BLOCK = 512


class _Feed:
    """Exact-size reads over an iterator of byte chunks, without joining the chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = chunks
        self._cur = memoryview(b"")

    def _fill(self) -> bool:
        while not self._cur:
            nxt = next(self._it, None)
            if nxt is None:
                return False
            self._cur = memoryview(nxt)
        return True

    def take(self, n: int) -> bytes | None:
        parts = []
        while n > 0:
            if not self._fill():
                return None if not parts else b"".join(parts)
            k = min(n, len(self._cur))
            parts.append(self._cur[:k])
            self._cur = self._cur[k:]
            n -= k
        return b"".join(parts)

    def pipe(self, n: int, fd: int | None) -> None:
        """Write the next ``n`` bytes to ``fd`` (or drop them when ``fd`` is None)."""
        while n > 0:
            if not self._fill():
                raise IntegrityError("tar stream ends inside a file")
            k = min(n, len(self._cur))
            piece = self._cur[:k]
            while fd is not None and piece:
                written = os.write(fd, piece)
                piece = piece[written:]
            self._cur = self._cur[k:]
            n -= k


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU) for large values
        value = int.from_bytes(field[1:], "big")
        return value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _cstr(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _safe(name: str, what: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DrkitError(f"refusing unsafe {what} {name!r} in the backup")
    return path


def extract(chunks: Iterator[bytes], target: Path, relink: dict[str, Path] | None = None) -> int:
    """Extract a tar stream into ``target``; return the number of entries written.

    ``relink`` maps the path of a symlink in the stream (``pg_tblspc/16400``) to the directory it
    is to point at instead of its stored target (a tablespace's new place); every other symlink
    must stay inside the target.  A mapped entry missing from the stream is created anyway."""
    relink = dict(relink or {})
    feed = _Feed(chunks)
    entries = 0
    long_name: str | None = None
    long_link: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = feed.take(BLOCK)
        if header is None or len(header) < BLOCK:
            raise IntegrityError("tar stream ends without its end-of-archive marker")
        if header == bytes(BLOCK):  # end of archive (a second zero block may follow; not needed)
            for rel_link, where in relink.items():
                dest = target.joinpath(*_safe(rel_link, "path").parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(where, dest)
                entries += 1
            return entries
        stored = _octal(header[148:156])
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != computed:
            raise IntegrityError("tar header checksum mismatch in the backup stream")
        kind = header[156:157]
        size = int(pax.get("size", _octal(header[124:136])))
        padded = size + (-size % BLOCK)
        if kind in (b"L", b"K", b"x", b"g"):
            data = feed.take(padded) or b""
            body = data[:size]
            if kind == b"L":
                long_name = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"K":
                long_link = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"x":
                pax = _pax(body)
            continue
        name = pax.get("path") or long_name or _cstr(header[0:100])
        prefix = _cstr(header[345:500]) if header[257:262] == b"ustar" else ""
        if prefix and not (long_name or "path" in pax):
            name = f"{prefix}/{name}"
        link = pax.get("linkpath") or long_link or _cstr(header[157:257])
        long_name = long_link = None
        pax = {}
        mode = _octal(header[100:108]) & 0o7777
        mtime = _octal(header[136:148])
        rel = _safe(name.rstrip("/") or ".", "path")
        dest = target.joinpath(*rel.parts) if rel.parts else target
        if kind in (b"0", b"\0", b"7"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode or 0o600)
            try:
                feed.pipe(size, fd)
            finally:
                os.close(fd)
            feed.pipe(padded - size, None)
            os.utime(dest, (mtime, mtime))
        elif kind == b"5":
            dest.mkdir(parents=True, exist_ok=True)
            os.chmod(dest, mode or 0o700)
            feed.pipe(padded, None)
        elif kind == b"2":
            mapped = relink.pop(str(rel), None)
            if mapped is None:
                _safe(link, "symlink target")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(mapped if mapped is not None else link, dest)
            feed.pipe(padded, None)
        else:
            raise DrkitError(f"unsupported tar entry type {kind!r} for {name!r} in the backup")
        entries += 1
