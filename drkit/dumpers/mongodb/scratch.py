"""A scratch MongoDB-wire server for restores into a directory (``--target-dir DIR [--start]``)
and drills.

The binary: ``mongod`` from ``$DRKIT_MONGOD`` or PATH (a standalone server on DIR), else the
FerretDB build drkit's own sandbox keeps in ``$DRKIT_CACHE/bin/drkit-ferretdb`` (``drkit sandbox
up mongodb`` builds it; SQLite databases in DIR).  The server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from drkit.dumpers.scratch import Instance
from drkit.errors import ConfigError
from drkit.proc import free_port


def _ferretdb() -> Path | None:
    cache = Path(os.environ.get("DRKIT_CACHE") or Path.home() / ".cache" / "drkit")
    path = cache / "bin" / "drkit-ferretdb"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def find_server() -> tuple[str, Path]:
    explicit = os.environ.get("DRKIT_MONGOD")
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise ConfigError(f"DRKIT_MONGOD={explicit} is not an executable file")
        return "mongod", Path(explicit)
    found = shutil.which("mongod")
    if found:
        return "mongod", Path(found)
    ferret = _ferretdb()
    if ferret:
        return "ferretdb", ferret
    raise ConfigError("no MongoDB server binary for a scratch instance: put mongod on PATH (or set DRKIT_MONGOD), "
                      "or build drkit's FerretDB with 'drkit sandbox up mongodb'")


def scratch(workdir: Path, port: int | None = None) -> Instance:
    """Start a server on ``workdir`` (data in ``workdir/data``, log ``workdir/server.log``) and
    return once it answers ``ping``."""
    kind, binary = find_server()
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "server.log"
    if kind == "mongod":
        argv = [str(binary), "--dbpath", str(data), "--port", str(port), "--bind_ip", "127.0.0.1", "--nounixsocket"]
    else:
        argv = [str(binary), "-listen-addr", f"127.0.0.1:{port}", "-data-dir", str(data), "-log-level", "warn"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=workdir)
    url = f"mongodb://127.0.0.1:{port}/"
    inst = Instance(kind, url, port, [proc.pid], log, lambda: _answers(port), proc)
    inst.wait_ready()
    (workdir / "server.txt").write_text(f"{kind} {binary}\nurl {url}\npid {proc.pid}\n")
    return inst


def _answers(port: int) -> bool:
    import pymongo
    import pymongo.errors

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    try:
        with pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=2000,
                                 connectTimeoutMS=1000, directConnection=True) as c:
            c.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
