"""Node-local AOF backups: a rewrite's BASE as the full, timestamped INCR bytes as incrementals.

``backup --type full`` on a source with ``data_dir`` whose server runs ``appendonly yes``:
``BGREWRITEAOF``, wait for *that* rewrite, then store its BASE (an RDB) as the base of a new
*chain*.  ``backup --type incremental``: ship the INCR bytes written since the chain's last
position -- across rewrites, since a rewrite opens the next INCR file at its fork, so the INCR
files in ``seq`` order continue every earlier BASE.  Each incremental is a manifest (type
``incremental``, ``parent`` = the base) whose one stream holds the shipped bytes as they are, only
whole commands, checked structurally on the way in.

Chain continuity is checked, not assumed: the position is (INCR ``seq``, byte offset, inode, CRC
of the 256 bytes before it).  If the file at the position is gone before its tail was shipped
(a rewrite dropped it), replaced, or the next ``seq`` is missing, the chain ends there and a new
chain starts from the current BASE, said in the log and in the new base's metadata.  A file that
shrank or changed before the position, or bytes that are not AOF, fail the backup naming the file
and offset, and nothing is committed.

Times: see :mod:`.aof` (1 s resolution).  Each incremental records ``inherited_ts`` (seconds)
and ``inherited_from`` (the previous piece's id, or ``base``): the annotation in effect where its
bytes start, which the commands before its first ``#TS`` belong to (an INCR file opened by a rewrite
in the same second as the last annotation starts without one); ``ts_at_start_ms`` is its end, which
the replay gives those commands, and ``first_ts_ms`` counts them.  Only when the chain has no
annotation at all (none shipped, none inherited from an earlier piece) and the server does not
confirm ``aof-timestamp-enabled yes`` are such commands refused.

A base's time is the end of the second in its RDB
``ctime`` aux field (the rewrite child writes it right after the fork; commands between the fork
and the end of that second are in the next INCR file and are replayed).  An incremental covers
up to the server ``TIME`` read before the files were measured, when the server reports an empty
AOF buffer (everything executed before that instant was written to the file); otherwise up to
the last whole second annotated in what it shipped.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from drkit.dumpers.streams import Prefix
from drkit.errors import ConfigError, IntegrityError, SourceError
from drkit.repository import Manifest, Repository
from drkit.repository.manifest import StreamRef, iso, utcnow
from drkit.repository.transaction import BackupTransaction

from .aof import AofFile, second_end_ms
from .aoffiles import AofDir, Hold, Pieces, resume
from .chain import snapshot_time
from .full import commit_snapshot, query_errors, server_facts, start_child, wait_child
from .options import RedisOptions
from .rdb import Aux, Header, RdbError, iter_records

log = logging.getLogger(__name__)

METHOD = "aof-rewrite"
STREAM = "incr.aof"


def _client(opts: RedisOptions) -> Any:
    return opts.client(socket_timeout=60)


def aof_dir(opts: RedisOptions, c: Any) -> AofDir:
    """The server's AOF directory, checked against the configured ``data_dir``."""
    import redis

    assert opts.data_dir is not None
    try:
        cfg = c.config_get("dir") | c.config_get("appenddirname") | c.config_get("appendfilename")
        data, dirname, filename = Path(cfg["dir"]), cfg["appenddirname"], cfg["appendfilename"]
    except (redis.ResponseError, KeyError):  # CONFIG renamed/disabled: Redis 7 defaults under data_dir
        data, dirname, filename = opts.data_dir, "appendonlydir", "appendonly.aof"
    if data.resolve() != opts.data_dir.resolve():
        raise SourceError(f"Redis at {opts.url} keeps its data in {data}, not the configured data_dir "
                          f"{opts.data_dir}: fix data_dir (node-local mode reads the files)")
    return AofDir(data / dirname, f"{filename}.manifest")


# -- full -----------------------------------------------------------------------------------------

def aof_full(repo: Repository, source: str, opts: RedisOptions, *, previous: str | None = None,
             reason: str | None = None) -> Manifest:
    """BGREWRITEAOF, wait for it, store the new BASE as the base of a new chain."""

    facts = server_facts(opts)
    started = utcnow()
    with query_errors(opts), _client(opts) as c:
        adir = aof_dir(opts, c)
        deadline = time.monotonic() + opts.sync_timeout
        before = start_child(c, c.bgrewriteaof, "BGREWRITEAOF", opts.url, deadline, "aof_rewrites")
        wait_child(c, lambda p: (not int(p["aof_rewrite_in_progress"]) and not int(p["aof_rewrite_scheduled"])
                                 and int(p.get("aof_rewrites", 0)) > before),
                   "aof_last_bgrewrite_status", "BGREWRITEAOF", opts.url, deadline)
    return _commit_base(repo, source, opts, adir, facts, started, previous, reason)


def _commit_base(repo: Repository, source: str, opts: RedisOptions, adir: AofDir, facts: dict[str, Any],
                 started: datetime, previous: str | None, reason: str | None) -> Manifest:
    fh, base, first = _open_base(adir)
    try:
        ctime = _rdb_ctime(fh, base.name)
        snap = datetime.fromtimestamp(second_end_ms(ctime) / 1000, UTC)
        st = os.fstat(fh.fileno())
        chain = f"{snap:%Y%m%dT%H%M%SZ}-aof{base.seq}"
        try:
            first_ino: int | None = (adir.path / first.name).stat().st_ino
        except FileNotFoundError:
            first_ino = None
        if chain == previous:
            raise IntegrityError(f"chain {chain} cannot continue ({reason}), and the AOF BASE is still the one "
                                 "it started from; take a full backup (it rewrites the AOF)")
        meta: dict[str, Any] = {
            "method": METHOD, "chain": chain, "repl_offset": 0, "aof_dir": str(adir.path),
            "aof_base": base.name, "aof_base_seq": base.seq, "rdb_ctime": ctime, "size": st.st_size,
            "aof_position": {"seq": first.seq, "file": first.name, "offset": 0, "ino": first_ino,
                             "tail_crc": None},
        }
        if previous:
            meta["previous_chain"] = previous
            meta["reason"] = reason
        manifest = commit_snapshot(repo, source, fh, meta, snap, facts, started)
    finally:
        fh.close()
    Hold(adir, source).keep(first.name, first_ino)
    log.info("chain %s: AOF base %s committed as backup %s", chain, base.name, manifest.id)
    return manifest


def _open_base(adir: AofDir) -> tuple[IO[bytes], AofFile, AofFile]:
    """Open the BASE and name the first INCR file of one manifest reading (retried if a rewrite
    swaps the files in between; an open file stays readable after the server deletes it)."""
    for _ in range(20):
        m = adir.manifest()
        if m.base is None or not m.incrs:
            raise SourceError(f"the AOF manifest in {adir.path} lists no BASE or no INCR file; is appendonly on?")
        if not m.base.name.endswith(".rdb"):
            raise ConfigError(f"the AOF BASE {m.base.name} is in AOF format; drkit's AOF mode needs "
                              "aof-use-rdb-preamble yes (the Redis default)")
        try:
            fh = open(adir.path / m.base.name, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            time.sleep(0.1)
            continue
        if adir.manifest().base == m.base:
            return fh, m.base, m.incrs[0]
        fh.close()
    raise SourceError(f"the AOF in {adir.path} kept changing while drkit opened its BASE (rewrites in a loop?)")


def _rdb_ctime(fh: IO[bytes], name: str) -> int:
    """The ``ctime`` aux field of an RDB (seconds); the file position is restored."""
    try:
        for rec in iter_records(Prefix(fh, 1 << 16), values=False):
            if isinstance(rec, Aux):
                if rec.key == b"ctime":
                    return int(rec.value)
            elif not isinstance(rec, Header):
                break
    except RdbError as exc:
        if "truncated" not in str(exc):
            raise IntegrityError(f"AOF BASE {name}: {exc}") from None
    finally:
        fh.seek(0)
    raise IntegrityError(f"AOF BASE {name} has no ctime field; it was not written by Redis >= 7")


# -- incremental ----------------------------------------------------------------------------------

@dataclass
class _ChainState:
    base: Manifest
    last: Manifest | None

    @property
    def meta(self) -> dict[str, Any]:
        return (self.last or self.base).metadata

    @property
    def position(self) -> dict[str, Any]:
        return self.meta["aof_position"]

    @property
    def offset(self) -> int:
        return int(self.last.metadata["end_offset"]) if self.last else 0

    @property
    def ts_ms(self) -> int | None:
        return self.last.metadata.get("ts_at_end_ms") if self.last else None

    @property
    def inherited(self) -> tuple[int, str]:
        """The annotation (seconds) in effect where the next piece starts, and whose it is.

        Commands at the start of the piece that carry no ``#TS`` of their own were written in that
        second (see :mod:`.aof`): the last annotation the chain's previous piece shipped (or itself
        inherited); for the first piece of a chain, the BASE's ``ctime`` second -- the RDB BASE has
        no annotation, and the commands before the first one in the INCR file opened at the fork
        ran in the second of the last annotation before the fork, which is at or before ``ctime``.
        """
        if self.last is not None and self.ts_ms is not None:
            return self.ts_ms // 1000, self.last.id
        ctime = self.base.metadata.get("rdb_ctime")
        return (int(ctime) if ctime is not None else int(snapshot_time(self.base).timestamp())), "base"

    @property
    def covered_ms(self) -> int:
        return int(self.last.metadata["last_ts_ms"]) if self.last else int(snapshot_time(self.base).timestamp() * 1000)


def chain_state(repo: Repository, source: str) -> _ChainState | None:
    manifests = repo.list_manifests(source)
    bases = [m for m in manifests if m.type == "full" and m.metadata.get("method") == METHOD]
    if not bases:
        return None
    base = max(bases, key=snapshot_time)
    incs = [m for m in manifests if m.type == "incremental" and m.metadata.get("chain") == base.metadata["chain"]]
    return _ChainState(base, max(incs, key=lambda m: int(m.metadata["end_offset"])) if incs else None)


def aof_incremental(repo: Repository, source: str, opts: RedisOptions) -> Manifest:
    """Ship the INCR bytes written since the newest chain's position (see the module doc)."""
    import redis

    state = chain_state(repo, source)
    if state is None:
        log.warning("source %s has no AOF base yet: taking a full backup (AOF rewrite) instead", source)
        return aof_full(repo, source, opts)
    started = utcnow()
    with query_errors(opts), _client(opts) as c:
        adir = aof_dir(opts, c)
        # Measure just after a second boundary: the window then ends after the whole second
        # of the newest command shipped (times have 1 s resolution), not before it.
        _, usec = c.time()
        time.sleep((1_000_000 - usec) / 1e6 + 0.005)
        sec, usec = c.time()
        t_ms = sec * 1000 + usec // 1000
        p = c.info("persistence")
        try:
            stamps = c.config_get("aof-timestamp-enabled").get("aof-timestamp-enabled")
        except redis.ResponseError:
            stamps = None
    if not int(p.get("aof_enabled", 0)):
        raise ConfigError(f"Redis at {opts.url} runs with appendonly no: AOF incrementals need appendonly yes "
                          "and aof-timestamp-enabled yes (or use 'drkit redis follow')")
    if stamps == "no":
        raise ConfigError(f"Redis at {opts.url} runs with aof-timestamp-enabled no: without #TS annotations "
                          "no point in time can be found; set it to yes and take a full backup")
    drained = int(p.get("aof_buffer_length", 1)) == 0
    m = adir.manifest()
    chain = state.base.metadata["chain"]
    hold = Hold(adir, source)
    files, broken = resume(adir, hold, m, state.position, chain)
    if broken:
        log.warning("CHAIN BREAK: %s; chain %s ends at %s and a new chain starts from the current AOF BASE",
                    broken, chain, iso(datetime.fromtimestamp(state.covered_ms / 1000, UTC)))
        hold.release()
        facts = server_facts(opts)
        return _commit_base(repo, source, opts, adir, facts, started, chain, broken)
    inherited, inherited_from = state.inherited
    reader = Pieces(files, inherited)
    with repo.begin_backup(source, "redis", "incremental", parent=state.base.id, started=started) as txn:
        try:
            ref = txn.write_stream(STREAM, reader, meta={"format": "aof"})
        finally:
            reader.close()
        manifest = _commit_incremental(txn, state, reader, ref, inherited, inherited_from, stamps, t_ms,
                                       drained, opts)
    hold.keep(manifest.metadata["aof_position"]["file"], reader.end_ino)
    return manifest


def _commit_incremental(txn: BackupTransaction, state: _ChainState, reader: Pieces, ref: StreamRef,
                        inherited: int, inherited_from: str, stamps: str | None, t_ms: int, drained: bool,
                        opts: RedisOptions) -> Manifest:
    chain = state.base.metadata["chain"]
    if reader.untimed and inherited_from == "base" and reader.first_ts is None and stamps != "yes":
        # No annotation anywhere in the chain, and the server does not say it writes them: the
        # base's second cannot be trusted for these commands.
        raise ConfigError(f"the AOF of {opts.url} has commands without #TS annotations: set "
                          "aof-timestamp-enabled yes and take a full backup")
    last_file, end_off = reader.end
    ts_end = second_end_ms(reader.ts) if reader.ts is not None else None
    if reader.untimed:
        log.info("AOF piece: the first %d commands carry no #TS of their own; they belong to second %d "
                 "(inherited from %s)", reader.untimed, inherited, inherited_from)
    covered = max(state.covered_ms, t_ms if drained else (reader.ts * 1000 - 1 if reader.ts else 0))
    meta: dict[str, Any] = {
        "method": METHOD, "format": "aof", "chain": chain, "parent": state.base.id,
        "start_offset": state.offset, "end_offset": state.offset + ref.size,
        "first_ts_ms": second_end_ms(reader.first_command_ts) if reader.first_command_ts is not None else None,
        "last_ts_ms": covered, "caught_up_ms": int(snapshot_time(state.base).timestamp() * 1000), "session": 0,
        "ts_at_start_ms": second_end_ms(inherited), "ts_at_end_ms": ts_end, "commands": reader.commands,
        "inherited_ts": inherited, "inherited_from": inherited_from, "untimed_commands": reader.untimed,
        "pieces": reader.pieces, "server_time_ms": t_ms, "aof_buffer_drained": drained,
        "aof_position": {"seq": last_file.seq, "file": last_file.name, "offset": end_off, "ino": reader.end_ino,
                         "tail_crc": reader.end_tail_crc},
    }
    return txn.commit(metadata=meta, provides=["range"])
