"""Scratch instances: a throw-away server a dumper starts to restore into (restores with
``--target-dir DIR --start``, drills).  The shape every dumper's ``scratch()`` returns.

Binaries come from the machine (PATH, or the dumper's documented setting), never from
``drkit.sandbox``; each dumper says which it looks for (docs/<datastore>.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drkit.errors import DrkitError
from drkit.proc import log_tail, pid_alive


@dataclass
class Instance:
    """A running scratch server.  ``url`` is what a client library accepts; ``ready`` polls the
    server's own protocol (True when it answers)."""

    kind: str
    url: str
    port: int
    pids: list[int]
    log: Path
    ready: Callable[[], bool]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return any(pid_alive(p) for p in self.pids)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.alive():
                rc = self.proc.returncode if self.proc is not None else None
                raise DrkitError(f"the scratch {self.kind} exited (code {rc}) before it answered on {self.url}; "
                                 f"its log {self.log}:\n{log_tail(self.log, 20) or '(empty)'}")
            if time.monotonic() > deadline:
                self.stop()
                raise DrkitError(f"the scratch {self.kind} did not answer on {self.url} within {timeout:.0f} s; "
                                 f"see {self.log}")
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; returns once every process is gone."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 10)
            while self.alive() and time.monotonic() < deadline:
                if self.proc is not None:
                    try:
                        self.proc.wait(0.1)
                    except subprocess.TimeoutExpired:
                        pass
                else:
                    time.sleep(0.1)
            if not self.alive():
                return
