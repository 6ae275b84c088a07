"""The MongoDB dumper: consistent full backups (documents + their oplog window), oplog slices as
incrementals, restored as of a point in time into a running server.  See docs/mongodb.md."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from drkit.catalog import Catalog, RestorePoints, check_present
from drkit.dumpers import Dumper, LogShipment, RestoreRequest, RestoreResult, Shipping
from drkit.dumpers.latest import past_gap, wait_out_in_flight
from drkit.dumpers.options import OptionSpec
from drkit.dumpers.scratch import Instance
from drkit.errors import BackupNotFound, ConfigError, OutsideWindow
from drkit.repository import Manifest, Repository
from drkit.repository.manifest import iso

from .chain import Plan, build_chains, consistent_at, dt_ms, plans
from .options import MongoOptions, check_uri, make_client, parse_options

__all__ = ["MongoDumper"]


class MongoDumper(Dumper):
    datastore = "mongodb"
    runbook = "runbooks/mongodb-recovery.md"
    backup_types = ("full", "incremental")
    needs_target_dir = False
    restore_options = (
        OptionSpec("--to", "Restore into this running server (mongodb://host:port/...; no password in it).",
                   metavar="URI"),
        OptionSpec("--to-password-env", "With --to: the environment variable holding the target's password "
                   "(the user is the URI's, or the source's username).", metavar="VAR"),
        OptionSpec("--drop", "Drop the target's collections that the restore writes first (refused without it "
                   "when they hold documents).", kind=bool),
        OptionSpec("--namespace", "Only this database or collection, DB or DB.COLL (* wildcards; repeatable).",
                   multiple=True, metavar="NS"),
        OptionSpec("--database", "Only this database (the same as --namespace DB).", metavar="NAME"),
        OptionSpec("--ns-from", "Rename on restore: namespaces matching this pattern (e.g. 'prod.*')...",
                   metavar="PATTERN"),
        OptionSpec("--ns-to", "... get this name (e.g. 'staging.*'; as many * as --ns-from).", metavar="PATTERN"),
    )
    options: MongoOptions

    def validate_options(self, options: dict[str, Any]) -> MongoOptions:
        return parse_options(self.source.name, options)

    # -- backup ---------------------------------------------------------------------------------
    def backup(self, repo: Repository, backup_type: str) -> Manifest | LogShipment:  # type: ignore[override]
        if backup_type == "full":
            from .full import full_backup

            return full_backup(repo, self.source.name, self.options)
        if backup_type != "incremental":
            raise ConfigError(f"unknown backup type {backup_type!r} for mongodb (full, incremental)")
        from .connect import query_errors, source_client
        from .slices import ship_once

        with query_errors(self.options), source_client(self.options) as (client, _member):
            report = ship_once(repo, self.source.name, self.options, client)
        names = [r.name for r in report.records or []]
        return LogShipment(self.source.name, "incremental", names, report.bytes,
                           {"entries": report.entries, "slices": report.slices, "heartbeat": report.heartbeat})

    # -- restore points ---------------------------------------------------------------------------
    def restore_points(self, catalog: Catalog) -> RestorePoints:
        from .chain import restore_points

        return restore_points(catalog)

    def describe_chain(self, repo: Repository) -> dict[str, Any]:
        catalog = self.catalog(repo)
        chains = build_chains(catalog.logs)
        return {"oplog_chains": [{"first": c.name, "last": c.last_name, "slices": len(c.slices),
                                  "heartbeats": len(c.heartbeats),
                                  "entries": sum(int(s.metadata.get("entries", 0)) for s in c.slices),
                                  "safe_until": iso(dt_ms(c.safe_ms()))} for c in chains]}

    def _plan(self, repo: Repository, request: RestoreRequest) -> tuple[Plan, datetime]:
        catalog = self.catalog(repo)
        if request.point_in_time is None and not request.backup_id:
            catalog = wait_out_in_flight(self, repo, catalog, request.wait_in_flight)
        chains = build_chains(catalog.logs)
        all_plans = plans([m for m in catalog.manifests if m.type == "full"], chains)
        if request.backup_id:
            found = [p for p in all_plans if p.base.id == request.backup_id]
            if not found:
                repo.get_manifest(request.backup_id, self.source.name)  # BackupNotFound if absent
                raise BackupNotFound(f"backup {request.backup_id} is not a full MongoDB backup")
            p = found[0]
            t = request.point_in_time or p.start
            if not p.start <= t <= p.end:
                raise OutsideWindow(f"backup {p.base.id} cannot reach {iso(t)}: it covers {_span(p)}")
            return p, t
        if not all_plans:
            raise BackupNotFound(f"source {self.source.name} has no full backup")
        if request.point_in_time is None:
            newest = max(all_plans, key=lambda p: (p.end, p.start))
            return newest, newest.end
        t = request.point_in_time
        usable = [p for p in all_plans if p.start <= t <= p.end]
        if not usable:
            window = ", ".join(_span(p) for p in sorted(all_plans, key=lambda p: p.start)[-6:])
            raise past_gap(self.restore_points(catalog), t, OutsideWindow(
                f"{iso(t)} is outside the recoverable window of source {self.source.name}: {window}. "
                f"See 'drkit list {self.source.name}'"))
        return max(usable, key=lambda p: p.start), t

    # -- restore --------------------------------------------------------------------------------
    def restore(self, repo: Repository, request: RestoreRequest) -> RestoreResult:
        from .connect import query_errors
        from .namespaces import Namespaces
        from .restore import restore_into

        t0 = time.monotonic()
        opts = request.options
        to = opts.get("to")
        if to and request.target_dir is not None:
            raise ConfigError("give --to URI (a running server) or --target-dir DIR (a new scratch server), not both")
        if not to and request.target_dir is None:
            raise ConfigError("give --to mongodb://host:port/ (a running server to restore into), or --target-dir DIR "
                              "(drkit starts a scratch server on DIR and restores into it; --start leaves it running)")
        if to:
            check_uri(to, "--to")
            if request.start:
                raise ConfigError("--start applies to --target-dir restores; --to restores into a running server")
        pw_env = opts.get("to_password_env")
        if pw_env and os.environ.get(pw_env) is None:
            raise ConfigError(f"--to-password-env {pw_env}: the environment variable {pw_env} is not set")
        include = list(opts.get("namespace") or ())
        if opts.get("database"):
            include.append(opts["database"])
        if bool(opts.get("ns_from")) != bool(opts.get("ns_to")):
            raise ConfigError("--ns-from and --ns-to go together")
        namespaces = Namespaces(include, (), opts.get("ns_from"), opts.get("ns_to"))
        plan, at = self._plan(repo, request)
        slices = plan.slices_until(at) if at > plan.start else []
        check_present(repo, [(f"backup {plan.base.id} {st.name}", st) for st in plan.base.streams]
                      + [(f"oplog slice {s.name}", s.stream) for s in slices])
        phases = {"plan": time.monotonic() - t0}
        server = None
        if to is None:
            from drkit.dumpers.targets import clear_target, prepare_target

            assert request.target_dir is not None
            prepare_target(request.target_dir)
            t1 = time.monotonic()
            try:
                server = self.scratch(request.target_dir)
            except BaseException:
                clear_target(request.target_dir)
                raise
            phases["start"] = time.monotonic() - t1
            to = server.url
        t1 = time.monotonic()
        user = _uri_user(to) or (self.options.username if pw_env else None)
        client = make_client(to, username=None if _uri_user(to) else user,
                             password=os.environ.get(pw_env) if pw_env else None, timeout=30)
        try:
            with query_errors(None, to):
                client.admin.command("ping")
                details = restore_into(repo, plan.base, slices, client, to, namespaces=namespaces,
                                       drop=bool(opts.get("drop")), at=at if slices else None,
                                       parallel=self.options.parallel)
        except BaseException:
            if server is not None:
                from drkit.dumpers.targets import clear_target

                server.stop()
                assert request.target_dir is not None
                clear_target(request.target_dir)
            raise
        finally:
            client.close()
        phases["restore"] = time.monotonic() - t1
        details.update({"restored_to": iso(at), "base_consistent_at": iso(consistent_at(plan.base)),
                        "slices_read": len(slices)})
        if server is not None:
            details["server"] = server.kind
            if request.start:
                details.update({"url": server.url, "pid": server.pids[0]})
            else:
                server.stop()
                details["stopped"] = f"the {server.kind} data files are in {request.target_dir / 'data'}"
        return RestoreResult(self.source.name, plan.base.id, request.target_dir, at, phases, details,
                             into=None if server is not None and not request.start else to)

    def shipping(self, live: bool = True) -> Shipping:
        s = self.options.slice_seconds
        return Shipping(s + 1.0, f"'drkit mongodb follow' seals a slice every {s:g} s (slice_seconds) and commits it "
                        "within about a second", "lower slice_seconds (or --slice-seconds)", cron_incremental=True)

    def follower_command(self, source: str) -> list[str] | None:
        return ["mongodb", "follow", source]

    def check_restored(self, result: RestoreResult) -> dict[str, Any]:
        from .connect import query_errors

        url = result.details.get("url") or result.into
        if not url:
            raise ConfigError("the restore left no server to check")
        client = make_client(url, timeout=10, directConnection=True)
        try:
            with query_errors(None, url):
                client.admin.command("ping")
                counts = {}
                for db in client.list_database_names():
                    if db in ("admin", "local", "config"):
                        continue
                    for coll in client[db].list_collection_names():
                        if not coll.startswith("system."):
                            counts[f"{db}.{coll}"] = client[db][coll].count_documents({})
        finally:
            client.close()
        return {"serving": url, "collections": len(counts), "documents": sum(counts.values()), "counts": counts}

    def stop_restored(self, result: RestoreResult) -> None:
        from drkit.proc import pid_alive

        pid = result.details.get("pid")
        if not pid:
            return
        import signal

        os.kill(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + 60
        while pid_alive(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(int(pid)):
            os.kill(int(pid), signal.SIGKILL)

    def scratch(self, workdir: Path, restored: Path | None = None) -> Instance:
        from .scratch import scratch

        return scratch(workdir)

    @classmethod
    def describe_result(cls, result: RestoreResult) -> list[str]:
        d = result.details
        lines = [f"  serving at {d['url']} (pid {d['pid']}, {d.get('server')})"] if d.get("url") else []
        lines += [f"  documents restored: {d.get('documents', 0)} in {d.get('collections', 0)} collections; "
                 f"indexes built: {d.get('indexes_built', 0)}"]
        if d.get("oplog_entries_applied") is not None:
            lines.append(f"  oplog entries replayed: {d['oplog_entries_applied']} from {d.get('slices_read', 0)} "
                         "slice(s)")
        if d.get("users_and_roles"):
            lines.append(f"  note: {d['users_and_roles']}")
        return lines

    @classmethod
    def cli_group(cls) -> click.Group:
        from .cli import mongodb_group

        return mongodb_group

    # -- a drill's user checks (checks.py) --
    @classmethod
    def query_problem(cls, query: Any) -> str | None:
        from .checks import query_problem

        return query_problem(query)

    def run_query(self, result: RestoreResult, query: Any, database: str | None = None) -> list[str]:
        from .checks import run_query

        return run_query(make_client, result, query, database)

    def restored_env(self, result: RestoreResult) -> dict[str, str]:
        from .checks import restored_env

        return restored_env(result)


def _uri_user(uri: str) -> str | None:
    from urllib.parse import unquote, urlsplit

    user = urlsplit(uri).username
    return unquote(user) if user else None


def _span(p: Plan) -> str:
    return iso(p.start) if p.start == p.end else f"{iso(p.start)} .. {iso(p.end)}"
