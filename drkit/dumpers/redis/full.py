"""Full Redis backups: a snapshot over the replication protocol, or BGSAVE on the node.

Remote (default): the snapshot a replica would get (``PSYNC ? -1``, rdb-only), streamed straight
into the repository -- no access to the server's disk, and it works against a replica.  Node-local
(``data_dir`` set): ``BGSAVE``, wait for *that* save to finish, stream the finished file.  Either
way the bytes pass a :class:`~drkit.dumpers.redis.rdb.ValidatingReader` on their way in: a
truncated snapshot or a bad checksum aborts the backup before its manifest is written, so nothing
becomes visible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drkit.errors import SourceError
from drkit.repository import Manifest, Repository
from drkit.repository.manifest import iso, utcnow

from .options import RedisOptions
from .rdb import ValidatingReader
from .replication import ReplicationLink

log = logging.getLogger(__name__)

STREAM = "dump.rdb"


def server_facts(opts: RedisOptions) -> dict[str, Any]:
    with query_errors(opts), opts.client() as c:
        info = c.info("server") | c.info("replication") | c.info("persistence")
    return {
        "redis_version": info.get("redis_version"), "run_id": info.get("run_id"), "role": info.get("role"),
        "master_replid": info.get("master_replid"), "aof_enabled": bool(info.get("aof_enabled")),
        "master_link_status": info.get("master_link_status"),
    }


@contextmanager
def query_errors(opts: RedisOptions) -> Iterator[None]:
    """Turn a refused AUTH or an unreachable server into a :class:`SourceError` naming the server."""
    import redis

    try:
        yield
    except redis.AuthenticationError:
        raise SourceError(f"Redis at {opts.url} refused the credentials; check password_env/password_file") from None
    except redis.RedisError as exc:
        raise SourceError(f"cannot query Redis at {opts.url}: {type(exc).__name__}: {exc}") from None


def server_time(opts: RedisOptions) -> datetime:
    with opts.client() as c:
        sec, usec = c.time()
    return datetime.fromtimestamp(sec + usec / 1e6, UTC)


class ForkClock:
    """Reads the server's clock the moment ``+FULLRESYNC`` arrives (the fork), on a connection
    opened beforehand so the reading costs one round trip."""

    def __init__(self, opts: RedisOptions) -> None:
        self.client = opts.client()
        self.client.ping()
        self.at: datetime | None = None

    def skew_ms(self) -> int:
        """Server clock minus this host's clock (ms), read over one round trip."""
        before = time.time_ns()
        sec, usec = self.client.time()
        after = time.time_ns()
        return (sec * 1_000_000 + usec) // 1000 - (before + after) // 2_000_000

    def __call__(self) -> None:
        sec, usec = self.client.time()
        self.at = datetime.fromtimestamp(sec + usec / 1e6, UTC)
        self.client.close()

    def close(self) -> None:
        self.client.close()


def full_backup(repo: Repository, source: str, opts: RedisOptions) -> Manifest:
    facts = server_facts(opts)
    if facts["role"] == "slave" and facts["master_link_status"] != "up":
        raise SourceError(f"Redis replica at {opts.url} is not connected to its primary (link "
                          f"{facts['master_link_status']}); its data may be stale -- back up the primary "
                          "or repair replication first")
    started = utcnow()
    if opts.data_dir:
        reader, meta, snapshot_time, closer = _bgsave(opts)
    else:
        reader, meta, snapshot_time, closer = _psync(opts)
    try:
        return commit_snapshot(repo, source, reader, meta, snapshot_time, facts, started)
    finally:
        closer()


def commit_snapshot(repo: Repository, source: str, reader: Any, meta: dict[str, Any], snapshot_time: datetime,
                    facts: dict[str, Any], started: datetime) -> Manifest:
    """Stream one RDB snapshot through the validator into the repository and commit its manifest."""
    validator = ValidatingReader(reader, expected_size=meta.get("size"))
    with repo.begin_backup(source, "redis", "full", started=started) as txn:
        ref = txn.write_stream(STREAM, validator, meta={"format": "rdb"})
        ref.meta["rdb_version"] = validator.version
        return txn.commit(metadata={
            **meta,
            "snapshot_time": iso(snapshot_time),
            "redis_version": facts["redis_version"], "run_id": facts["run_id"], "role": facts["role"],
            "rdb_version": validator.version, "rdb_checksummed": validator.checksummed,
            "rdb_crc64": f"{validator.crc:016x}",
            "chunks_new": txn.session.chunks_new, "chunks_reused": txn.session.chunks_reused,
        }, provides=["backup", "range"] if meta.get("chain") else ["backup"])


def _psync(opts: RedisOptions) -> tuple[Any, dict[str, Any], datetime, Any]:
    clock = ForkClock(opts)
    link = ReplicationLink(opts)
    try:
        sync = link.full_sync(rdb_only=True, deadline=time.monotonic() + opts.sync_timeout, on_fork=clock)
        assert clock.at is not None
        snapshot_time = clock.at
    except BaseException:
        link.close()
        raise
    finally:
        clock.close()
    meta = {"method": "psync", "replid": sync.replid, "repl_offset": sync.offset,
            "diskless": sync.size is None}
    if sync.size is not None:
        meta["size"] = sync.size
    return link.snapshot(sync), meta, snapshot_time, link.close


def _bgsave(opts: RedisOptions) -> tuple[Any, dict[str, Any], datetime, Any]:
    import redis

    assert opts.data_dir is not None
    with query_errors(opts), opts.client() as c:
        try:
            cfg = c.config_get("dbfilename") | c.config_get("dir")
            path = Path(cfg["dir"]) / cfg["dbfilename"]
        except redis.ResponseError:  # CONFIG renamed/disabled: trust the configured data_dir
            path = opts.data_dir / "dump.rdb"
        if path.parent.resolve() != opts.data_dir.resolve():
            raise SourceError(f"Redis at {opts.url} saves into {path.parent}, not the configured "
                              f"data_dir {opts.data_dir}: fix data_dir (node-local mode reads the file)")
        deadline = time.monotonic() + opts.sync_timeout
        # Read before asking: a small save can finish before a later INFO would see it run.
        saves_before = start_child(c, c.bgsave, "BGSAVE", opts.url, deadline, "rdb_saves")
        # Accepted means no other child ran, and BGSAVE forks before it answers: once no save is
        # in progress and the count grew, ours has finished.
        sec, usec = c.time()
        snapshot_time = datetime.fromtimestamp(sec + usec / 1e6, UTC)
        wait_child(c, lambda p: not p["rdb_bgsave_in_progress"] and (
            int(p.get("rdb_saves", 0)) > saves_before if saves_before >= 0
            else int(p["rdb_last_save_time"]) >= int(snapshot_time.timestamp())),
            "rdb_last_bgsave_status", "BGSAVE", opts.url, deadline)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the caller; a later save renames a new file in
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    size = Path(f"/proc/self/fd/{fh.fileno()}").stat().st_size
    return fh, {"method": "bgsave", "path": str(path), "size": size}, snapshot_time, fh.close


def start_child(c: Any, command: Callable[[], Any], what: str, url: str, deadline: float, counter: str) -> int:
    """Run ``BGSAVE``/``BGREWRITEAOF`` (``command``), retrying while another fork child runs (ours
    must start after it); return the INFO persistence ``counter`` read just before it was accepted
    (-1 if the server has none)."""
    import redis

    while True:
        before = int(c.info("persistence").get(counter, -1))
        try:
            command()
            return before
        except redis.ResponseError as exc:
            if "in progress" not in str(exc) or time.monotonic() > deadline:
                raise SourceError(f"{what} on {url} failed: {exc}") from None
            time.sleep(0.2)


def wait_child(c: Any, done: Callable[[dict[str, Any]], bool], status: str, what: str, url: str,
               deadline: float) -> None:
    """Poll INFO persistence until ``done`` says our child finished; its ``status`` field must be ok."""
    while True:
        p = c.info("persistence")
        if done(p):
            if p[status] != "ok":
                raise SourceError(f"{what} on {url} failed ({status}={p[status]}); see the Redis log")
            return
        if time.monotonic() > deadline:
            raise SourceError(f"{what} on {url} did not finish within sync_timeout")
        time.sleep(0.05)
