"""Process, log and port helpers for production code (restores that start a server, leases).

The sandbox package re-exports these; production modules import them from here, never from the
sandbox (the sandbox may import production code, not the reverse).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited process its parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log ('' when it does not exist); reads at most the last 64 KiB."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The kernel picks it (bind to port 0), so two calls in a row return different ports in
    practice.  There is an unavoidable window between this call and the server's bind: callers
    that auto-pick a port retry with a new one when the server reports "Address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a listening socket could bind ``host:port`` now (nothing holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Without SO_REUSEADDR, sockets of a just-closed server in TIME_WAIT would make a free
        # port look busy; servers (PostgreSQL included) set it too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def install_stop_handlers(stop: threading.Event, what: str = "sealing the current slice and stopping") -> None:
    """SIGTERM/SIGINT set ``stop`` (a long-running follower then finishes its unit of work and exits)."""
    import logging
    import signal

    def handler(signum: int, _frame: object) -> None:
        logging.getLogger("drkit").info("signal %d: %s", signum, what)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive this process, even after a SIGKILL of
    it (Linux PR_SET_PDEATHSIG: the kernel sends the child SIGTERM when we die); a no-op
    elsewhere."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
