"""Throw-away datastore servers on this machine, for tests, drills and benchmarks.

``drkit.sandbox.postgres`` starts PostgreSQL clusters (primary and streaming standby) as an
unprivileged OS user; see docs/sandbox.md.
"""

from __future__ import annotations

from drkit.errors import DrkitError
from drkit.sandbox.ports import free_port, port_is_free


class SandboxError(DrkitError):
    """A sandbox server could not be set up, started or stopped (the message has the log tail)."""


__all__ = ["SandboxError", "free_port", "port_is_free"]
