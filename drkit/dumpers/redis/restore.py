"""Restore a Redis snapshot as of a point in time: into a data directory, or into a running instance.

TTLs are restored relative to the point in time ``at``: a key whose absolute expiry is at or
before ``at`` had expired by then and is not resurrected; every other key gets the TTL it had left
at ``at``.  (Loading the stored RDB as it is would instead drop every key that expired between
``at`` and the restore, and shorten the rest.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

from drkit.dumpers.durable import RestoreFile, sync_dir
from drkit.dumpers.targets import clear_target, prepare_target  # noqa: F401 - used as r.*
from drkit.errors import DrkitError, IntegrityError, SourceError
from drkit.proc import log_tail
from drkit.proc import pid_alive as _alive
from drkit.repository import Manifest, Repository
from drkit.repository.reader import iter_stream, open_stream

from .full import STREAM
from .options import RedisOptions, parse_url
from .rdb import ChunkStream, Entry, Function, SelectDb, iter_records, restore_payload, rewrite

_BATCH_CMDS = 1000
_BATCH_BYTES = 8 << 20


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def restore_to_dir(repo: Repository, manifest: Manifest, target: Path, *, drop_before_ms: int,
                   shift_ms: int, sync: bool = True) -> dict[str, Any]:
    """Write ``target/dump.rdb``: keys expired at ``drop_before_ms`` dropped, expiries + ``shift_ms``.

    For a restore to the snapshot's own time T: drop_before = T, shift = now - T.  ``sync``:
    the file is durable on return (see :mod:`drkit.dumpers.durable`).
    """
    path = target / "dump.rdb"
    tmp = target / "dump.rdb.drkit-partial"
    # The repository authenticates every chunk, and the backup checked the RDB's CRC64 before it
    # recorded it (rdb_crc64): checking it again here would only cost a pass over the data.
    recorded = manifest.metadata.get("rdb_crc64")
    with closing(iter_stream(repo, manifest.stream(STREAM))) as chunks, RestoreFile(tmp, sync=sync) as dst:
        stats = rewrite(ChunkStream(chunks), dst, at_ms=drop_before_ms, now_ms=drop_before_ms + shift_ms,
                        verify_crc=recorded is None)
        if recorded is not None and stats.crc_in != int(recorded, 16):  # free: the trailer was read anyway
            raise IntegrityError(f"backup {manifest.id}: the stored RDB ends with CRC64 {stats.crc_in:016x}, "
                                 f"its manifest recorded {recorded}", key=manifest.id)
    tmp.rename(path)
    if sync:
        sync_dir(target)
        sync_dir(target.parent)  # the restore may have created target
    return {"rdb": str(path), "keys": stats.keys_kept, "keys_expired_by_then": stats.keys_expired,
            "keys_with_ttl": stats.keys_with_ttl, "bytes_restored": stats.bytes_out}


def write_conf(target: Path, port: int) -> Path:
    """A minimal redis.conf for the restored data, durable (a crash must not leave it empty: a
    redis-server started on an empty file would run with defaults, elsewhere)."""
    conf = target / "redis.conf"
    with RestoreFile(conf) as f:
        f.write((
            "# written by drkit restore: a server for the restored data (edit as needed)\n"
            f"bind 127.0.0.1\nport {port}\ndir {target}\ndbfilename dump.rdb\n"
            f"logfile {target / 'redis.log'}\ndaemonize no\nappendonly no\nsave ''\n"
        ).encode())
    sync_dir(target)
    return conf


def count_served(port: int) -> int:
    """The keys the restored server on ``port`` serves now (after a replay)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, socket_connect_timeout=5)
    try:
        return _count_keys(client)
    finally:
        client.close()


def start_server(target: Path, port: int, expect_keys: int | None, timeout: float = 600.0) -> dict[str, Any]:
    """Start ``redis-server`` on the restored directory; return once it serves every key."""
    import redis

    exe = shutil.which("redis-server") or os.environ.get("DRKIT_REDIS_SERVER")
    if not exe:
        raise DrkitError("redis-server not found on PATH (set DRKIT_REDIS_SERVER) to --start the restore")
    conf = write_conf(target, port)
    proc = subprocess.Popen([exe, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=1)
    try:
        while True:
            if proc.poll() is not None:
                raise DrkitError(f"the restored redis-server exited with {proc.returncode}; see {target}/redis.log:\n"
                                 + (log_tail(target / "redis.log", 20) or "(no log)"))
            try:
                if client.ping() and not client.info("persistence").get("loading"):
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise DrkitError(f"the restored redis-server did not serve within {timeout:.0f} s; see "
                                 f"{target}/redis.log")
            time.sleep(0.05)
        keys = _count_keys(client)
    finally:
        client.close()
    if expect_keys is not None and keys != expect_keys:
        proc.terminate()
        proc.wait(30)
        raise DrkitError(f"the restored redis-server holds {keys} keys, the snapshot as of the point in time "
                         f"has {expect_keys}; the server was stopped -- do not use {target}")
    return {"port": port, "pid": proc.pid, "url": f"redis://127.0.0.1:{port}", "conf": str(conf), "keys_served": keys}


def _count_keys(client: Any) -> int:
    return sum(int(v["keys"]) for v in client.info("keyspace").values())


def restore_to_instance(repo: Repository, manifest: Manifest, to_url: str, *, drop_before_ms: int, shift_ms: int,
                        password: str | None, flush: bool) -> dict[str, Any]:
    """RESTORE every key not expired at ``drop_before_ms`` into the running instance ``to_url``,
    expiries moved by ``shift_ms`` (see :func:`restore_to_dir`)."""
    import redis

    host, port, username = parse_url(to_url, "--to")
    target = RedisOptions(host=host, port=port, username=username)
    client = redis.Redis(host=host, port=port, username=username, password=password, socket_timeout=120,
                         socket_connect_timeout=10)
    try:
        try:
            role = client.info("replication")["role"]
            existing = _count_keys(client)
        except redis.AuthenticationError:
            raise SourceError(f"Redis at {target.url} refused the credentials (--to-password-env)") from None
        except redis.RedisError as exc:
            raise SourceError(f"cannot reach the restore target {target.url}: {type(exc).__name__}: {exc}") from None
        if role != "master":
            raise SourceError(f"the restore target {target.url} is a replica (read-only); restore into a primary")
        if existing:
            if not flush:
                raise DrkitError(f"the restore target {target.url} is not empty ({existing} keys); restore into an "
                                 "empty instance, or pass --flush to delete its data first")
            client.flushall()
        return _load(repo, manifest, client, drop_before_ms, shift_ms)
    finally:
        client.close()


def _load(repo: Repository, manifest: Manifest, client: Any, drop_before_ms: int, shift_ms: int) -> dict[str, Any]:
    """Pipelined RESTOREs, one connection per database (a reconnect can never switch databases)."""
    version = int(manifest.metadata.get("rdb_version") or manifest.stream(STREAM).meta.get("rdb_version", 9))
    ck = client.connection_pool.connection_kwargs
    kwargs = {k: ck.get(k) for k in ("host", "port", "username", "password", "socket_timeout",
                                      "socket_connect_timeout")}
    clients: dict[int, Any] = {}
    pipes: dict[int, Any] = {}
    db, pending, size = 0, 0, 0
    restored = expired = functions = 0

    def pipe_for(n: int) -> Any:
        if n not in pipes:
            clients[n] = type(client)(**{**kwargs, "db": n})
            pipes[n] = clients[n].pipeline(transaction=False)
        return pipes[n]

    def flush() -> None:
        nonlocal pending, size
        for pipe in pipes.values():
            for reply in pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception):
                    raise SourceError(f"the restore target refused a key: {reply}")
        pending = size = 0

    try:
        with open_stream(repo, manifest.stream(STREAM)) as src:
            for rec in iter_records(src):
                if isinstance(rec, SelectDb):
                    db = rec.db
                elif isinstance(rec, Function):
                    pipe_for(0).execute_command("FUNCTION", "LOAD", "REPLACE", rec.payload)
                    functions += 1
                    pending += 1
                elif isinstance(rec, Entry):
                    if rec.expire_ms is not None and rec.expire_ms <= drop_before_ms:
                        expired += 1
                        continue
                    ttl = 0 if rec.expire_ms is None else rec.expire_ms + shift_ms  # absolute (ABSTTL)
                    pipe_for(db).execute_command("RESTORE", rec.key, ttl, restore_payload(rec, version),
                                                 "REPLACE", "ABSTTL")
                    restored += 1
                    pending += 1
                    size += len(rec.key) + len(rec.value)
                if pending >= _BATCH_CMDS or size >= _BATCH_BYTES:
                    flush()
            flush()
    finally:
        for c in clients.values():
            c.close()
    return {"keys": restored, "keys_expired_by_then": expired, "functions": functions,
            "keys_in_target": _count_keys(client)}


def replay_into(repo: Repository, source: str, slices: list[Any], url: str, password_env: str | None,
                at: datetime, shift_ms: int, snapshot_ms: int) -> dict[str, Any]:
    """Replay ``slices`` up to ``at`` into the server at ``url``, then settle TTLs relative to ``at``."""
    from .replay import replay, settle_ttls
    from .replication import ReplicationLink

    host, port, username = parse_url(url, "restore target")
    link = ReplicationLink(RedisOptions(host=host, port=port, username=username, password_env=password_env),
                           timeout=600)
    try:
        at_ms = _ms(at)
        out = replay(repo, source, slices, link, at_ms=at_ms, shift_ms=shift_ms)
        out.update(settle_ttls(link, at_ms=at_ms, shift_ms=shift_ms, snapshot_ms=snapshot_ms))
        reply = link.call("INFO", "keyspace")
        assert isinstance(reply, bytes)
        out["keys"] = sum(int(part.split(b"=")[1]) for line in reply.split(b"\r\n") if line.startswith(b"db")
                          for part in line.split(b":")[1].split(b",") if part.startswith(b"keys="))
        return out
    finally:
        link.close()


def save_and_stop(port: int, pid: int, timeout: float = 600.0) -> dict[str, Any]:
    """``SHUTDOWN SAVE`` the temporary replay server: its dump.rdb is then the state as of T."""
    import redis

    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout) as c:
        try:
            c.shutdown(save=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise DrkitError(f"the replay server (pid {pid}) did not exit after SHUTDOWN SAVE")
        time.sleep(0.05)
    return {"replay_server": "saved and stopped"}


def kill_server(pid: int) -> None:
    if _alive(pid):
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


