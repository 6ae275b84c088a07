"""Process and log helpers shared by every sandbox kind (they live in :mod:`drkit.proc`, which
production code imports; re-exported here for the sandbox)."""

from __future__ import annotations

from drkit.proc import log_tail, pid_alive

__all__ = ["log_tail", "pid_alive"]
