"""Named crash points for fault-injection tests.

``DRKIT_CRASH_AT=name[:n]`` makes the process SIGKILL itself the n-th time (default first) it
reaches the named point.  With ``DRKIT_CRASH_ONCE=/path`` it crashes only if that file does not
exist yet (and creates it first), so a retried command (a datastore re-running a failed archive command)
succeeds the second time.  Unset (the normal case) this costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("DRKIT_CRASH_AT", "")
_target, _, _count = _spec.partition(":")
_remaining = int(_count or 1)


def hit(name: str) -> None:
    global _remaining
    if not _target or name != _target:
        return
    _remaining -= 1
    if _remaining <= 0:
        once = os.environ.get("DRKIT_CRASH_ONCE")
        if once:
            try:
                fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return
            os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
