"""The PostgreSQL dumper: pg_basebackup fulls, WAL archiving, pg_dump logicals, PITR restore."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from drkit.catalog import Catalog, RestorePoints, check_present
from drkit.dumpers import Dumper, RestoreRequest, RestoreResult, Shipping
from drkit.dumpers.latest import past_gap, wait_out_in_flight
from drkit.dumpers.options import OptionSpec
from drkit.errors import BackupNotFound, ConfigError, DrkitError, OutsideWindow
from drkit.repository import Manifest, Repository

from .chain import plan_restore, windows
from .options import PgOptions, parse_options

# pg_basebackup/pg_dump/restore helpers import psycopg; they load on first use so the
# archive_command and restore_command (run once per WAL file) start fast.

__all__ = ["PostgresDumper"]


class PostgresDumper(Dumper):
    datastore = "postgres"
    runbook = "runbooks/postgres-recovery.md"
    backup_types = ("full", "incremental", "logical")
    restore_options = (
        OptionSpec("--keep-archiving", "Keep archive_mode from the backup (default: off, so a restored copy "
                   "never archives into the production source).", kind=bool),
        OptionSpec("--to", "Logical backups: pg_restore each database into this running server (a libpq DSN "
                   "or URL without a password).", aliases=("--into-dsn",), metavar="DSN"),
        OptionSpec("--database", "Logical backups: only this database.", metavar="NAME"),
        OptionSpec("--tablespace-map", "Put tablespace NAME in directory DIR (repeatable; default: "
                   "<target-dir>-tablespaces/NAME; never the source's own directory).",
                   multiple=True, metavar="NAME=DIR"),
    )
    options: PgOptions

    def validate_options(self, options: dict[str, Any]) -> PgOptions:
        return parse_options(self.source.name, options)

    # -- backup -----------------------------------------------------------------------------
    def backup(self, repo: Repository, backup_type: str) -> Manifest:
        if backup_type == "full":
            from .basebackup import full_backup

            return full_backup(repo, self.source.name, self.options)
        if backup_type == "logical":
            from .logical import logical_backup

            return logical_backup(repo, self.source.name, self.options)
        if backup_type == "incremental":
            raise ConfigError(
                "PostgreSQL incrementals are continuous WAL archiving: set archive_command to "
                f"'drkit --config FILE pg wal-push --source {self.source.name} %p' (see "
                "docs/user-guide.md); 'backup --type incremental' has nothing to add"
            )
        raise ConfigError(f"unknown backup type {backup_type!r} (postgres: full, logical)")

    # -- window -----------------------------------------------------------------------------
    def restore_points(self, catalog: Catalog) -> RestorePoints:
        from .chain import restore_points

        return restore_points(catalog)

    def _chains(self, repo: Repository) -> tuple[list, list[str], Catalog]:
        catalog = self.catalog(repo)
        chains, notes = windows(catalog.manifests, catalog.logs)
        return chains, notes, catalog

    def source_objects(self, repo: Repository) -> list[tuple[str, str | None, str]]:
        from .objects import source_objects

        return source_objects(repo, self.source.name)

    def check_restored(self, result: RestoreResult) -> dict[str, Any]:
        import subprocess

        from drkit.errors import SourceError

        from .restore import _as_user

        d = result.details
        if not d.get("port") or not d.get("socket_dir"):
            raise ConfigError("the restore left no server to check")
        query = ("SELECT count(*), pg_is_in_recovery()::text, "
                 "(SELECT count(*) FROM pg_database WHERE datallowconn) FROM pg_class")
        proc = subprocess.run(_as_user([self.options.tool("psql"), "-h", d["socket_dir"], "-p", str(d["port"]),
                                        "-d", "postgres", "-At", "-F", " ", "-c", query], self.options.os_user),
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise SourceError(f"the restored server on port {d['port']} does not answer a query: "
                              f"{proc.stderr.strip()[-300:]}")
        relations, recovery, databases = proc.stdout.split()
        return {"serving": f"port {d['port']} (socket {d['socket_dir']})", "relations": int(relations),
                "databases": int(databases), "in_recovery": recovery == "true",
                "last_replayed_commit": d.get("last_replayed_commit")}

    def stop_restored(self, result: RestoreResult) -> None:
        from .restore import stop_server

        if result.target_dir is not None:
            stop_server(self.options, result.target_dir)

    def follower_command(self, source: str) -> list[str] | None:
        o = self.options
        if not o.receive:
            return None
        cmd = ["pg", "receive", "--source", source, "--seal-seconds", f"{o.receive_seal_seconds:g}"]
        if o.receive_dir is not None:
            cmd += ["--dir", str(o.receive_dir)]
        return cmd + (["--synchronous"] if o.receive_synchronous else [])

    def shipping(self, live: bool = True) -> Shipping:
        """WAL archiving: a segment is archived when it is full, or after archive_timeout; with
        the receiver (``receive: true``), every ``receive_seal_seconds``."""
        if self.options.receive:
            s = self.options.receive_seal_seconds
            return Shipping(s + 2.0, f"'drkit pg receive' seals the WAL being written every {s:g} s "
                            "(receive_seal_seconds) and commits it within about 2 s", "lower receive_seal_seconds")
        fix = "set archive_timeout = 60 in postgresql.conf (worst case then about 70 s)"
        if not live:
            return Shipping(None, "archive_timeout unknown (the server was not asked)", fix)
        from drkit.errors import DrkitError

        from .server import server_facts

        try:
            text = str(server_facts(self.options)["archive_timeout"])
        except DrkitError as exc:
            return Shipping(None, f"archive_timeout unknown: the server did not answer ({exc})", fix)
        secs = _setting_seconds(text)
        if not secs:
            return Shipping(None, "archive_timeout = 0: a WAL segment is archived only once it is full (16 MB of "
                            "WAL), which on a quiet database can take hours or days", fix)
        return Shipping(secs + 10.0, f"archive_timeout = {text}: a segment is archived at the latest "
                        f"{secs:g} s after its first write, plus about 10 s for wal-push", fix)

    def scratch(self, workdir: Path, restored: Path | None = None) -> Any:
        from .scratch import pg_scratch

        return pg_scratch(self.options, workdir, restored)

    def describe_chain(self, repo: Repository) -> dict[str, Any]:
        names = repo.list_log_names(self.source.name)
        return {"wal_files": len(names), "newest_wal": names[-1] if names else None}

    # -- restore ----------------------------------------------------------------------------
    def restore(self, repo: Repository, request: RestoreRequest) -> RestoreResult:
        from drkit.dumpers.durable import sync_tree

        from .restore import (
            chown_tree,
            clear_target,
            extract_base,
            prepare_target,
            restore_config_files,
            socket_dir_for,
            start_and_wait,
            stop_server,
            write_recovery_config,
        )
        from .tablespaces import (
            clear_tablespaces,
            extract_tablespaces,
            place_tablespaces,
            prepare_tablespaces,
            relinks,
            write_tablespace_map,
        )

        t0 = time.monotonic()
        if request.backup_id and not request.point_in_time:
            manifest = repo.get_manifest(request.backup_id, self.source.name)
            if manifest.type == "logical":
                if request.options["tablespace_map"]:
                    raise ConfigError("--tablespace-map applies to physical restores; a logical backup is "
                                      "loaded into a running server with --to, whose tablespaces it uses")
                check_present(repo, [(f"backup {manifest.id} {s.name}", s) for s in manifest.streams])
                return self._restore_logical(repo, manifest, request, t0)
        given = [flag for flag, dest in (("--to/--into-dsn", "to"), ("--database", "database"))
                 if request.options.get(dest)]
        if given:
            raise ConfigError(f"{' and '.join(given)} apply to logical backups (restore one with --backup ID); "
                              "a physical restore lays down a data directory in --target-dir")
        plan = self._plan_physical(repo, request)
        check_present(repo, plan.needs)  # before the target is touched
        spaces = place_tablespaces(plan.backup, request.target_dir, request.options["tablespace_map"])
        phases = {"plan": time.monotonic() - t0}
        details = dict(plan.details)
        prepare_target(request.target_dir)
        try:
            prepare_tablespaces(spaces)
        except BaseException:
            clear_tablespaces(spaces)
            raise
        t1 = time.monotonic()
        port = request.port
        if request.start and not port:
            from drkit.proc import free_port

            port = free_port()
        try:
            details["bytes_restored"] = extract_base(repo, plan.backup, request.target_dir, relinks(spaces))
            if spaces:
                details["bytes_restored"] += extract_tablespaces(repo, plan.backup, spaces)
                write_tablespace_map(request.target_dir, spaces)
                details["tablespaces"] = {p.name: str(p.directory) for p in spaces}
            disabled = restore_config_files(repo, plan.backup, request.target_dir)
            if disabled:
                details["config_settings_disabled"] = disabled
            details["settings"] = write_recovery_config(
                request.target_dir, config_path=self.config.path, source=self.source.name,
                point_in_time=plan.target_time, port=port,
                keep_archiving=bool(request.options["keep_archiving"]),
                socket_dir=socket_dir_for(request.target_dir, port) if request.start and port else None,
                until=plan.until,
                timeline=plan.timeline,
            )
            for tree in (request.target_dir, *(p.directory for p in spaces)):
                chown_tree(tree, self.options.os_user)
                if request.sync:
                    sync_tree(tree)
            details["durable"] = request.sync
        except BaseException:
            # The directory was empty when we started: leave it so, never half a data directory.
            clear_target(request.target_dir)
            clear_tablespaces(spaces)
            raise
        phases["download"] = time.monotonic() - t1
        if request.start:
            assert port is not None
            t2 = time.monotonic()
            details.update(start_and_wait(self.options, request.target_dir, port,
                                          socket_dir=socket_dir_for(request.target_dir, port)))
            try:
                _check_replayed(details.get("last_replayed_lsn"), plan.min_segno, plan.backup, request)
            except DrkitError:
                stop_server(self.options, request.target_dir)  # nobody may use an incomplete copy
                raise
            phases["recovery"] = time.monotonic() - t2
            details["port"] = port
            details["socket_dir"] = str(socket_dir_for(request.target_dir, port))
        return RestoreResult(self.source.name, plan.backup.id, request.target_dir, request.point_in_time, phases, details)

    def _restore_logical(self, repo: Repository, manifest: Manifest, request: RestoreRequest, t0: float) -> RestoreResult:
        from .logical import restore_logical
        from .restore import prepare_target

        prepare_target(request.target_dir)
        written = restore_logical(
            repo, manifest, request.target_dir, self.options,
            into_dsn=request.options["to"], database=request.options["database"],
        )
        if request.sync:  # the dump files (with --into-dsn the server's own durability covers the load)
            from drkit.dumpers.durable import sync_tree

            sync_tree(request.target_dir)
        return RestoreResult(self.source.name, manifest.id, request.target_dir, None,
                             {"download": time.monotonic() - t0}, {"files": written, "durable": request.sync})

    def _plan_physical(self, repo: Repository, request: RestoreRequest) -> _PhysicalPlan:
        """Which base backup, which recovery target, and how far WAL may be replayed."""
        chains, notes, catalog = self._chains(repo)
        if request.point_in_time is None and not request.backup_id:
            catalog = wait_out_in_flight(self, repo, catalog, request.wait_in_flight)
            chains, notes = windows(catalog.manifests, catalog.logs)
        records = {r.name: r for r in catalog.logs}
        manifests = catalog.manifests
        if request.backup_id and not request.point_in_time:
            # --backup alone: the backup as of its end.  Recovery replays WAL only through the
            # backup's stop segment, then promotes.  (recovery_target='immediate' fails when the
            # consistent point coincides with the end of the available WAL, as it does for
            # backups taken from a standby.)
            manifest = repo.get_manifest(request.backup_id, self.source.name)
            usable = any(c.backup.id == manifest.id for c in chains)
            if not usable and not manifest.metadata.get("wal_included"):
                raise OutsideWindow(f"backup {manifest.id} is not restorable: the WAL it needs is not archived")
            until = manifest.metadata.get("stop_wal")
            point = next((p for p in self.restore_points(catalog).points
                          if p.kind == "backup" and p.backup == manifest.id), None)
            return _PhysicalPlan(manifest, None, until, int(manifest.metadata.get("timeline", 1)), None,
                                 {"recovery": f"to the end of the backup (WAL through {until})"},
                                 _needs(manifest, point.logs if point else [], records))
        if not [m for m in manifests if m.type == "full"]:
            raise BackupNotFound(f"source {self.source.name} has no full backup")
        if request.backup_id:
            # With --point-in-time, --backup names the base (e.g. to route around a damaged
            # newer backup): plan on that backup's chain only.
            repo.get_manifest(request.backup_id, self.source.name)  # BackupNotFound if absent
            chains = [c for c in chains if c.backup.id == request.backup_id]
            if not chains:
                raise OutsideWindow(f"backup {request.backup_id} has no usable WAL chain: {'; '.join(notes)}")
        try:
            plan = plan_restore(chains, request.point_in_time, self.source.name)
        except OutsideWindow as exc:
            raise past_gap(self.restore_points(catalog), request.point_in_time, exc) from None
        # Pin recovery to the chain this plan was made on: WAL archived later (a primary that is
        # still running during the incident) is never replayed.
        histories = [f"{t:08X}.history" for t, _ in plan.chain.timeline_path[1:]]
        return _PhysicalPlan(
            plan.backup, plan.target, plan.last_segment, plan.timeline, plan.min_replay_segno(),
            {"recovery": "to " + (plan.target.isoformat() if plan.target else "the end of the archived WAL")},
            _needs(plan.backup, histories + [s.name for s in plan.chain.segments], records),
        )

    @classmethod
    def describe_result(cls, result: RestoreResult) -> list[str]:
        d = result.details
        return [f"  serving on port {d['port']} (socket dir {d['socket_dir']})"] if "socket_dir" in d else []

    @classmethod
    def cli_group(cls) -> click.Group:
        from .cli import pg_group

        return pg_group

    # -- a drill's user checks (checks.py) --
    @classmethod
    def query_problem(cls, query: Any) -> str | None:
        from .checks import query_problem

        return query_problem(query)

    def run_query(self, result: RestoreResult, query: Any, database: str | None = None) -> list[str]:
        from .checks import run_query

        return run_query(self.options, result, query, database)

    def restored_env(self, result: RestoreResult) -> dict[str, str]:
        from .checks import restored_env

        return restored_env(self.options, result)


@dataclass
class _PhysicalPlan:
    backup: Manifest
    target_time: datetime | None  # recovery_target_time, or None = replay through ``until``
    until: str | None  # the last WAL segment restore_command may serve
    timeline: int
    min_segno: int | None  # recovery must replay at least through this segment
    details: dict[str, Any]
    needs: list[tuple[str, Any]]  # (what, StreamRef) of every stream the restore reads


def _needs(backup: Manifest, logs: list[str], records: dict[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [(f"backup {backup.id} {s.name}", s) for s in backup.streams]
    out += [(f"WAL {n}", records[n].stream) for n in logs if n in records]
    return out


def _check_replayed(lsn: str | None, min_segno: int | None, backup: Manifest, request: RestoreRequest) -> None:
    """Refuse to call a restore done when recovery stopped before the WAL the plan needs."""
    if min_segno is None or not lsn:
        return
    from .walnames import lsn_segno, parse_lsn, segment_name

    seg = int(backup.metadata.get("segment_size", 16 << 20))
    reached = lsn_segno(parse_lsn(lsn), seg)
    if reached < min_segno:
        raise DrkitError(
            f"recovery ended early at LSN {lsn}: the plan needed WAL through segment "
            f"{segment_name(1, min_segno, seg)[8:]} (any timeline); the restored server in "
            f"{request.target_dir} is missing transactions -- do not use it. See its log "
            "drkit-restore.log and run 'drkit verify'."
        )


def _setting_seconds(text: str) -> float:
    """A PostgreSQL time setting as SHOW prints it ('60s', '1min', '0', '2h') in seconds."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|min|h|d)?\s*", text)
    if not m:
        return 0.0
    unit = {"ms": 0.001, "s": 1, None: 1, "min": 60, "h": 3600, "d": 86400}[m.group(2)]
    return int(m.group(1)) * unit
