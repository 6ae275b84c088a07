"""Free TCP ports on the loopback interface, for test servers started by the sandbox (they live
in :mod:`drkit.proc`, which production code imports; re-exported here for the sandbox)."""

from __future__ import annotations

from drkit.proc import free_port, port_is_free

__all__ = ["free_port", "port_is_free"]
