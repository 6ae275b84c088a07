"""Redis's replication protocol on a raw connection, as a replica (or ``redis-cli --rdb``) speaks it.

A full sync goes::

    -> AUTH ...                      (when a password is configured)
    -> REPLCONF rdb-only 1           (7.0+: "I only want the snapshot"; older servers say -ERR: fine)
    -> REPLCONF capa eof capa psync2 (the server may stream a diskless snapshot, ended by a marker)
    -> PSYNC ? -1
    <- +FULLRESYNC <replid> <offset>
    <- "\\n" ...                      (keep-alives while the server forks and saves)
    <- $<length>\\r\\n<RDB bytes>        or   $EOF:<40-byte mark>\\r\\n<RDB bytes><mark>

and then, unless rdb-only, the command stream from ``offset`` on.  :class:`ReplicationLink`
exposes the snapshot as a file-like object (:meth:`ReplicationLink.snapshot`) so it streams
into the repository with bounded memory; the bytes after it stay buffered for the follower.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from drkit.errors import SourceError

from .options import RedisOptions

_RECV = 256 * 1024
_MARK_LEN = 40


class ReplyError(SourceError):
    """The server answered a command with an error reply."""


@dataclass
class FullSync:
    replid: str
    offset: int
    size: int | None  # None: diskless, ended by a marker


class ReplicationLink:
    """One connection to a Redis server, used for the replication handshake and streams."""

    def __init__(self, opts: RedisOptions, *, timeout: float = 60.0) -> None:
        self.opts = opts
        self.timeout = timeout
        self._buf = bytearray()
        self._pos = 0
        self.bytes_received = 0
        self.last_recv = 0
        try:
            self.sock = socket.create_connection((opts.host, opts.port), timeout=opts.connect_timeout)
        except OSError as exc:
            raise SourceError(f"cannot connect to Redis at {opts.url}: {exc.strerror or exc}; is the "
                              "server running and reachable from here?") from None
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        password = opts.password()
        if password:
            args = ["AUTH", opts.username, password] if opts.username else ["AUTH", password]
            try:
                self.call(*args)
            except ReplyError:
                self.close()
                raise SourceError(f"Redis at {opts.url} refused the credentials (AUTH failed); check "
                                  "password_env/password_file and username") from None

    # -- plumbing -------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> ReplicationLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *args: str | bytes | int) -> None:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        try:
            self.sock.sendall(b"".join(out))
        except OSError as exc:
            raise SourceError(f"connection to Redis at {self.opts.url} failed while sending: {exc}") from None

    def _fill(self) -> bool:
        """Read more bytes from the socket; False at EOF."""
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        try:
            data = self.sock.recv(_RECV)
        except TimeoutError:
            raise SourceError(f"Redis at {self.opts.url} sent nothing for {self.timeout:.0f} s") from None
        except OSError as exc:
            raise SourceError(f"connection to Redis at {self.opts.url} failed: {exc}") from None
        self.last_recv = len(data)
        if not data:
            return False
        self._buf += data
        self.bytes_received += len(data)
        return True

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def readline(self) -> bytes:
        while True:
            i = self._buf.find(b"\n", self._pos)
            if i >= 0:
                line = bytes(self._buf[self._pos : i + 1])
                self._pos = i + 1
                return line
            if not self._fill():
                raise SourceError(f"Redis at {self.opts.url} closed the connection mid-reply")

    def readexact(self, n: int) -> bytes:
        while self.buffered() < n:
            if not self._fill():
                raise SourceError(f"Redis at {self.opts.url} closed the connection mid-reply")
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return data

    def read_reply(self, *, raise_errors: bool = True) -> object:
        """One reply; error replies raise ReplyError, or with ``raise_errors=False`` are returned
        as ReplyError objects (also inside arrays, so the stream never desynchronises)."""
        line = self.readline()
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            err = ReplyError(f"Redis at {self.opts.url}: {rest.decode(errors='replace')}")
            if raise_errors:
                raise err
            return err
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.readexact(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read_reply(raise_errors=raise_errors) for _ in range(n)]
        raise SourceError(f"Redis at {self.opts.url} sent an unexpected reply {line[:40]!r}")

    def call(self, *args: str | bytes | int) -> object:
        self.send(*args)
        return self.read_reply()

    # -- full sync --------------------------------------------------------------------------
    def full_sync(self, *, rdb_only: bool, deadline: float, on_fork: Callable[[], None] | None = None) -> FullSync:
        """Ask for a snapshot (``PSYNC ? -1``); return once its first byte is next in the stream."""
        if rdb_only:
            try:
                self.call("REPLCONF", "rdb-only", "1")
            except ReplyError:
                pass  # Redis < 7.0: it streams commands after the snapshot; we just stop reading
        self.call("REPLCONF", "capa", "eof", "capa", "psync2")
        self.send("PSYNC", "?", "-1")
        line = self._skip_keepalives(deadline)
        if line.startswith(b"-"):
            raise SourceError(f"Redis at {self.opts.url} refused to sync: {line[1:].decode(errors='replace').strip()}"
                              " (a replica must be connected to its primary to serve a snapshot)")
        parts = line.decode(errors="replace").split()
        if len(parts) != 3 or parts[0] != "+FULLRESYNC":
            raise SourceError(f"Redis at {self.opts.url} answered PSYNC with {line[:80]!r}, not +FULLRESYNC")
        replid, offset = parts[1], int(parts[2])
        if on_fork:  # +FULLRESYNC is sent as the server forks: the snapshot's moment, to within an RTT
            on_fork()
        return self._snapshot_header(replid, offset, self._skip_keepalives(deadline))

    def psync(self, replid: str, next_offset: int, *, deadline: float,
              on_fork: Callable[[], None] | None = None) -> FullSync | str:
        """Resume at ``next_offset``: the replid to continue with (+CONTINUE), or a new FullSync."""
        self.call("REPLCONF", "capa", "eof", "capa", "psync2")
        self.send("PSYNC", replid, next_offset)
        line = self._skip_keepalives(deadline)
        text = line.decode(errors="replace").strip()
        if text.startswith("+CONTINUE"):
            parts = text.split()
            return parts[1] if len(parts) > 1 else replid
        if text.startswith("+FULLRESYNC"):
            parts = text.split()
            if on_fork:
                on_fork()
            header = self._skip_keepalives(deadline)
            return self._snapshot_header(parts[1], int(parts[2]), header)
        raise SourceError(f"Redis at {self.opts.url} answered PSYNC with {text[:80]!r}")

    def _snapshot_header(self, replid: str, offset: int, header: bytes) -> FullSync:
        if not header.startswith(b"$"):
            raise SourceError(f"Redis at {self.opts.url} sent {header[:40]!r} instead of a snapshot")
        body = header[1:].rstrip(b"\r\n")
        if body.startswith(b"EOF:"):
            self._mark = body[4:]
            if len(self._mark) != _MARK_LEN:
                raise SourceError(f"Redis at {self.opts.url} sent a malformed end marker")
            return FullSync(replid, offset, None)
        self._mark = b""
        return FullSync(replid, offset, int(body))

    def poll(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for more bytes; False on timeout.  EOF raises SourceError."""
        self.sock.settimeout(timeout)
        try:
            if self._fill():
                return True
        except SourceError as exc:
            if "sent nothing" in str(exc):
                return False
            raise
        finally:
            self.sock.settimeout(self.timeout)
        raise SourceError(f"Redis at {self.opts.url} closed the replication link")

    def next_command(self) -> bytes | None:
        """The next complete command of the replication stream (raw RESP), if buffered."""
        from .stream import command_length

        if self._pos >= len(self._buf):
            return None
        n = command_length(self._buf, self._pos)
        if n is None:
            return None
        raw = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return raw

    def _skip_keepalives(self, deadline: float) -> bytes:
        while True:
            line = self.readline()
            if line.strip():
                return line
            if time.monotonic() > deadline:
                raise SourceError(f"Redis at {self.opts.url} did not start sending its snapshot in time "
                                  "(sync_timeout); is a BGSAVE stuck or the disk full?")

    def snapshot(self, sync: FullSync) -> io.BufferedReader:
        """The snapshot's bytes as a stream that ends exactly where the snapshot ends."""
        return io.BufferedReader(_SnapshotStream(self, sync.size, getattr(self, "_mark", b"")), _RECV)


class _SnapshotStream(io.RawIOBase):
    def __init__(self, link: ReplicationLink, size: int | None, mark: bytes) -> None:
        self.link = link
        self.remaining = size
        self.mark = mark
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.done:
            return 0
        link = self.link
        if self.remaining is not None:
            if self.remaining == 0:
                self.done = True
                return 0
            if not link.buffered() and not link._fill():
                raise SourceError(f"Redis at {link.opts.url} closed the connection with {self.remaining} "
                                  "snapshot bytes still to come")
            n = min(len(b), self.remaining, link.buffered())
            b[:n] = link._buf[link._pos : link._pos + n]
            link._pos += n
            self.remaining -= n
            return n
        # Diskless: the snapshot ends with the 40-byte mark; never hand out bytes that could be
        # the start of it.
        while True:
            i = link._buf.find(self.mark, link._pos)
            if i >= 0:
                n = min(len(b), i - link._pos)
                b[:n] = link._buf[link._pos : link._pos + n]
                link._pos += n
                if link._pos == i:  # everything before the mark handed out: consume it, end
                    link._pos += len(self.mark)
                    self.done = True
                return n
            safe = link.buffered() - (len(self.mark) - 1)
            if safe > 0:
                n = min(len(b), safe)
                b[:n] = link._buf[link._pos : link._pos + n]
                link._pos += n
                return n
            if not link._fill():
                raise SourceError(f"Redis at {link.opts.url} closed the connection before the end of "
                                  "the diskless snapshot")
