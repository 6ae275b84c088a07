"""Full physical backup: ``pg_basebackup`` (tar to stdout) streamed straight into the repository, or
(with ``data_dir``) the data directory read directly (:mod:`.localbackup`), stored the same way."""

from __future__ import annotations

import fcntl
import io
import logging
import re
import subprocess
import threading
from collections import deque
from typing import Any

from drkit.errors import SourceError
from drkit.repository import Manifest, Repository
from drkit.repository.manifest import iso, utcnow
from drkit.repository.writer import WriteSession

from .options import PgOptions
from .server import read_server_files, server_now
from .standby import Node
from .wal import check_system_id
from .walnames import lsn_segno, parse_lsn, segment_name

log = logging.getLogger(__name__)

_START_RE = re.compile(r"write-ahead log start point: ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)")
_END_RE = re.compile(r"write-ahead log end point: ([0-9A-F]+/[0-9A-F]+)")
_STUCK = "still waiting for all required WAL segments to be archived"


def _archiving(repo: Repository, source: str, node: Node) -> bool:
    """Whether WAL reaches this source's archive: judged by the primary's settings, or -- when
    the backup reads a standby and the primary is not known -- by the archive in the repository
    (a standby's own archive_mode says nothing about what the primary archives)."""
    primary = node.primary
    if primary is not None:
        on = primary["archive_mode"] in ("on", "always") and "wal-push" in primary["archive_command"]
        what = f"on the primary (archive_mode={primary['archive_mode']})"
    else:
        on = bool(repo.list_log_names(source))
        what = "in the repository (no WAL archived for this source yet)"
    if not on:
        log.warning(
            f"WAL archiving into drkit is not enabled {what} for source {source}: this backup restores only "
            f"to its own end point. For point-in-time recovery set archive_mode=on and "
            f"archive_command='drkit --config FILE pg wal-push --source {source} %p' on the primary"
        )
    return on


def full_backup(repo: Repository, source: str, opts: PgOptions) -> Manifest:
    from .standby import choose_node

    node = choose_node(source, opts)
    facts, opts = node.facts, node.opts
    check_system_id(repo, source, int(facts["system_identifier"]))
    archiving = _archiving(repo, source, node)
    started = utcnow()
    label = f"drkit {source} {iso(started)}"
    local = False
    if opts.data_dir is not None:
        from .localbackup import local_refusal

        refusal = local_refusal(opts, facts)
        if refusal:
            log.warning(f"source {source}: {refusal}; backing up through pg_basebackup instead")
        local = refusal is None
    if not local:
        _refuse_tablespaces(facts, source, opts)  # before a transaction is opened
    with repo.begin_backup(source, "postgres", "full", started=started) as txn:
        session = txn.session  # streams written through it are the backup's
        base = _local_base(session, opts, facts, label, source) if local else None
        if base is None:
            _refuse_tablespaces(facts, source, opts)
            base = _pg_basebackup(session, opts, label, source)
        ref, method, start_lsn, tli, stop_lsn, tablespaces = base
        stop_time = server_now(opts)
        seg = facts["segment_size"]
        config_refs, config_warnings = _config_outside(repo, session, opts, facts)
        return txn.commit(metadata={
            "method": method,
            "start_lsn": start_lsn,
            "stop_lsn": stop_lsn,
            "timeline": tli,
            "start_wal": segment_name(tli, lsn_segno(parse_lsn(start_lsn), seg), seg),
            "stop_wal": segment_name(tli, lsn_segno(parse_lsn(stop_lsn), seg), seg),
            "stop_time": iso(stop_time),
            "server_version": facts["server_version"],
            "server_version_num": facts["server_version_num"],
            "system_identifier": facts["system_identifier"],
            "segment_size": seg,
            "from_standby": facts["in_recovery"],
            **({"standby": node.standby, "standby_lag_seconds": node.lag_seconds} if node.standby else {}),
            "wal_included": True,
            "archiving": archiving,
            "config_outside_data_dir": [r.name for r in config_refs],
            "tablespaces": tablespaces,
            "warnings": config_warnings,
            "chunks_new": session.chunks_new,
            "chunks_reused": session.chunks_reused,
        }, provides=["backup", "range"] if archiving else ["backup"])


def _local_base(session: WriteSession, opts: PgOptions, facts: dict[str, Any], label: str, source: str):  # noqa: ANN202
    """The node-local base backup, or None when the server cannot hold a replication slot."""
    from .localbackup import SlotUnavailable, local_base_backup

    try:
        ref, res = local_base_backup(session, opts, facts, label)
    except SlotUnavailable as exc:
        log.warning(
            f"source {source}: no temporary replication slot for a node-local backup ({exc}); "
            "backing up through pg_basebackup instead"
        )
        return None
    return ref, "local", res.start_lsn, res.timeline, res.stop_lsn, res.tablespaces


def _refuse_tablespaces(facts: dict[str, Any], source: str, opts: PgOptions) -> None:
    """pg_basebackup writes one tar per tablespace, and only one of them to a stream: a cluster
    with user tablespaces is backed up node-local (which stores each as its own stream)."""
    if not facts["tablespaces"]:
        return
    why = ("set data_dir and run drkit on the database host as the server's OS user"
           if opts.data_dir is None else "the node-local path is not possible here (see the warning above)")
    raise SourceError(
        f"source {source} has {facts['tablespaces']} user tablespace(s): drkit backs them up node-local only "
        f"(pg_basebackup can stream one tablespace, not several); {why}. Nothing was stored"
    )


def _pg_basebackup(session: WriteSession, opts: PgOptions, label: str, source: str):  # noqa: ANN202
    cmd = [
        opts.tool("pg_basebackup"), "-d", opts.dsn, "-D", "-", "-Ft", "-X", "fetch",
        "--no-manifest", "-c", opts.checkpoint, "-v", "--label", label,
    ]
    if opts.max_rate:
        cmd += ["--max-rate", opts.max_rate]
    stderr_tail: deque[str] = deque(maxlen=40)
    stuck = threading.Event()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=opts.env())
    assert proc.stdout is not None and proc.stderr is not None
    _widen_pipe(proc.stdout.fileno())

    def read_stderr() -> None:
        for raw in proc.stderr:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").rstrip()
            stderr_tail.append(line)
            if _STUCK in line:
                stuck.set()
                proc.kill()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        ref = session.write_stream("base.tar", proc.stdout, meta={"format": "tar"})
        rc = proc.wait()
        reader.join(timeout=10)
        text = "\n".join(stderr_tail)
        if stuck.is_set():
            raise SourceError(
                f"pg_basebackup for {source}: the server is still waiting for WAL to be archived "
                "after 60 s; archive_command is failing (see the server log)"
            )
        if rc != 0:
            raise SourceError(f"pg_basebackup for {source} failed (exit {rc}):\n{text}")
        m_start, m_end = _START_RE.search(text), _END_RE.search(text)
        if not (m_start and m_end):
            raise SourceError(f"pg_basebackup for {source}: could not find start/stop LSN in its output:\n{text}")
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    return ref, "pg_basebackup", m_start.group(1), int(m_start.group(2)), m_end.group(1), []


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer reads, writes and context switches per GB."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (OSError, AttributeError):  # capped by /proc/sys/fs/pipe-max-size, or not Linux
        pass


def _config_outside(repo: Repository, session: WriteSession, opts: PgOptions, facts: dict[str, Any]):  # noqa: ANN202
    """Configuration files that live outside the data directory (Debian/Ubuntu keep them in
    /etc/postgresql/...): pg_basebackup does not copy them, so drkit stores them as streams."""
    data_dir = facts["data_directory"].rstrip("/") + "/"
    outside = {n: p for n, p in facts["config_files"].items() if p and not p.startswith(data_dir)}
    if not outside:
        return [], []
    contents, warnings = read_server_files(opts, outside)
    refs = [
        session.write_stream(f"config/{name}", io.BytesIO(body), meta={"path": outside[name]})
        for name, body in contents.items()
    ]
    for w in warnings:
        log.warning("%s", w)
    return refs, warnings
