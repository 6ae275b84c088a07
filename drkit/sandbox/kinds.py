"""The sandbox kinds ``drkit sandbox`` knows, and the small contract each kind's module fulfils.

A kind's module provides three functions (names given in :data:`KINDS`)::

    up(workdir: Path, nodes: int) -> dict       # start, leave running, return JSON-able state
    down(state: dict) -> None                   # stop cleanly what ``up`` started
    ensure() -> str                             # install/build binaries into the cache; say what

``up`` returns connection details plus ``"pids"`` (every server process it left running) and
``"log"``; secrets go to files of mode 0600 next to the state, never into the state itself.
``down`` may leave the final sweep to the CLI: any pid still alive after it is terminated, then
killed.  Modules are imported lazily so that ``drkit --help`` stays fast and a kind whose
toolchain is missing does not break the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Kind:
    name: str
    module: str
    up: str = "sandbox_up"
    down: str = "sandbox_down"
    ensure: str | None = "ensure"
    help: str = ""

    def _fn(self, attr: str) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), attr)  # type: ignore[no-any-return]

    def start(self, workdir: Path, nodes: int) -> dict[str, Any]:
        return self._fn(self.up)(workdir, nodes)  # type: ignore[no-any-return]

    def stop(self, state: dict[str, Any]) -> None:
        self._fn(self.down)(state)

    def install(self) -> str:
        return str(self._fn(self.ensure)()) if self.ensure else "nothing to install"


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("postgres", "drkit.sandbox.postgres", help="PostgreSQL primary; --nodes 2 adds a streaming standby"),
        Kind("redis", "drkit.sandbox.redis", help="redis-server; --nodes 2 adds a replica"),
        Kind("mongodb", "drkit.sandbox.mongodb", help="MongoDB-wire server with an oplog (FerretDB/SQLite)"),
        Kind("cassandra", "drkit.sandbox.cassandra", help="Apache Cassandra 5; --nodes 3 for a ring"),
        Kind("s3", "drkit.sandbox.s3", up="sandbox_up_moto", down="sandbox_down", ensure=None,
             help="moto in server mode"),
        Kind("s3-versitygw", "drkit.sandbox.s3", up="sandbox_up_versitygw", down="sandbox_down",
             ensure="ensure_versitygw", help="versitygw, posix backend with versioning and Object Lock"),
    )
}
