"""A scratch PostgreSQL server: a new, empty cluster in a work directory (``initdb``), or the
server of a restored data directory, for restores and drills (the contract's ``Dumper.scratch``).

The binaries are the source's ``bin_dir`` (the server's major version). It runs as ``os_user``
when drkit runs as root (PostgreSQL refuses root). It listens on its Unix socket only
(``listen_addresses=''``, the socket in the data directory or ``/tmp`` when that path would be
too long), on a free port unless one is given: a scratch server is private to the restore.
A new cluster trusts local connections (nobody else can reach its socket directory). Ready means
answering and out of recovery: over a restored directory, after the WAL replay and promotion.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from drkit.dumpers.scratch import Instance
from drkit.errors import SourceError
from drkit.proc import free_port, log_tail

from .options import PgOptions
from .restore import _as_user, chown_tree, cluster_state, socket_dir_for


def pg_scratch(opts: PgOptions, workdir: Path, restored: Path | None = None, port: int | None = None,
               timeout: float = 3600.0) -> Instance:
    data = restored if restored is not None else workdir / "pgdata"
    env = {**opts.env(), "LC_ALL": "C", "LANG": "C"}
    if restored is None:
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        chown_tree(data, opts.os_user)
        proc = subprocess.run(_as_user([opts.tool("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                        "-E", "UTF8", "--no-sync"], opts.os_user),
                              capture_output=True, text=True, env=env, timeout=300, check=False)
        if proc.returncode != 0:
            raise SourceError(f"initdb of a scratch cluster in {data} failed: {proc.stderr.strip()[-500:]}")
    port = port or free_port()
    sockets = socket_dir_for(data, port)
    log = data / "drkit-scratch.log"
    options = f"-p {port} -k {sockets} -c listen_addresses=''"
    proc = subprocess.run(_as_user([opts.tool("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
                                    "-t", str(int(timeout)), "start"], opts.os_user),
                          capture_output=True, text=True, env=env, timeout=timeout + 30, check=False)
    pid_file = data / "postmaster.pid"
    if proc.returncode != 0 or not pid_file.exists():
        raise SourceError(f"the scratch PostgreSQL in {data} did not start: {proc.stderr.strip()[-300:]}\n"
                          f"{log_tail(log, 20) or '(no log)'}")
    pid = int(pid_file.read_text().split("\n", 1)[0])

    def ready() -> bool:  # answering, and done with recovery (a restored directory replays its WAL first)
        r = subprocess.run([opts.tool("pg_isready"), "-q", "-h", str(sockets), "-p", str(port), "-t", "2"],
                           env=env, check=False, timeout=30)
        return r.returncode == 0 and cluster_state(opts, data) == "in production"

    url = f"host={sockets} port={port} user=postgres dbname=postgres"
    inst = Instance("postgres", url, port, [pid], log, ready)
    inst.wait_ready(timeout)
    return inst
