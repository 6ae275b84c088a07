"""Logical backup: ``pg_dump -Fc`` per database, one stream each, for restoring one database or table."""

from __future__ import annotations

import subprocess
import threading
from collections import deque
from pathlib import Path

from drkit.errors import DrkitError, SourceError
from drkit.repository import Manifest, Repository
from drkit.repository.manifest import iso, utcnow

from .options import PgOptions
from .server import databases, server_facts


def logical_backup(repo: Repository, source: str, opts: PgOptions) -> Manifest:
    facts = server_facts(opts)
    dbs = list(opts.databases) or databases(opts)
    started = utcnow()
    with repo.begin_backup(source, "postgres", "logical", started=started) as txn:
        for db in dbs:
            cmd = [
                opts.tool("pg_dump"), "-Fc", "-Z0", f"--dbname={_with_db(opts.dsn, db)}",
            ]
            tail: deque[str] = deque(maxlen=20)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=opts.env())
            t = threading.Thread(target=_drain, args=(proc, tail), daemon=True)
            t.start()
            txn.write_stream(f"{db}.dump", proc.stdout, meta={"database": db, "format": "pg_dump custom"})
            rc = proc.wait()
            t.join(5)
            if rc != 0:
                raise SourceError(f"pg_dump of database {db} failed (exit {rc}): {''.join(tail).strip()}")
        return txn.commit(metadata={
            "method": "pg_dump",
            "databases": dbs,
            "server_version": facts["server_version"],
            "system_identifier": facts["system_identifier"],
            "snapshot_time": iso(started),
        })


def _drain(proc: subprocess.Popen, tail: deque[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        tail.append(line.decode(errors="replace"))


def _params(dsn: str) -> dict:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(dsn)


def _with_db(dsn: str, db: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["dbname"] = db
    return make_conninfo(**params)


def restore_logical(
    repo: Repository, manifest: Manifest, target: Path, opts: PgOptions,
    *, into_dsn: str | None = None, database: str | None = None,
) -> dict[str, str]:
    """Write each database's dump to ``target/<db>.dump``; with ``into_dsn`` also pg_restore it."""
    if into_dsn:
        from .options import check_no_password

        check_no_password(into_dsn, "--into-dsn")
    target.mkdir(parents=True, exist_ok=True)
    written = {}
    for ref in manifest.streams:
        db = ref.meta.get("database", ref.name.removesuffix(".dump"))
        if database and db != database:
            continue
        path = target / f"{db}.dump"
        if path.exists():
            raise DrkitError(f"{path} exists; restore into an empty directory")
        tmp = path.with_name(path.name + ".partial")
        try:
            with repo.open_stream(ref) as src, open(tmp, "wb") as out:
                while block := src.read(1024 * 1024):
                    out.write(block)
            tmp.replace(path)  # only a fully verified dump gets its real name
        finally:
            tmp.unlink(missing_ok=True)
        written[db] = str(path)
        if into_dsn:
            # With --database, restore into the database the DSN names (e.g. a scratch copy);
            # otherwise each database goes into the database of the same name.
            dest_dsn = into_dsn if (database and "dbname" in _params(into_dsn)) else _with_db(into_dsn, db)
            proc = subprocess.run(
                [opts.tool("pg_restore"), "--no-owner", f"--dbname={dest_dsn}", str(path)],
                capture_output=True, text=True, env=opts.env(), check=False,
            )
            if proc.returncode != 0:
                raise SourceError(f"pg_restore of {db} failed: {proc.stderr.strip()[-2000:]}")
    if database and not written:
        raise DrkitError(f"backup {manifest.id} has no database {database!r} (has {manifest.metadata.get('databases')})")
    return written
