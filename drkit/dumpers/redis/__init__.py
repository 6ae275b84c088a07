"""The Redis dumper: snapshots over the replication protocol (or BGSAVE on the node), restored
as of a point in time into a data directory or a running instance."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from drkit.catalog import Catalog, RestorePoints, check_present
from drkit.dumpers import Dumper, RestoreRequest, RestoreResult, Shipping
from drkit.dumpers.latest import past_gap, wait_out_in_flight
from drkit.dumpers.options import OptionSpec
from drkit.errors import BackupNotFound, ConfigError, OutsideWindow
from drkit.repository import Manifest, Repository
from drkit.repository.manifest import iso

from .chain import Chain, build_chains, merge, snapshot_time
from .options import RedisOptions, parse_options

__all__ = ["RedisDumper"]


class RedisDumper(Dumper):
    datastore = "redis"
    runbook = "runbooks/redis-recovery.md"
    backup_types = ("full", "incremental")
    needs_target_dir = False  # --to redis://... restores into a running instance
    restore_options = (
        OptionSpec("--to", "Load into this running, empty instance (redis://[user@]host:port) instead of a "
                   "directory.", metavar="URL"),
        OptionSpec("--to-password-env", "With --to: name of the environment variable holding the target's "
                   "password.", metavar="VAR"),
        OptionSpec("--drop", "With --to: delete the target's data first (refused without it if not empty).",
                   kind=bool, aliases=("--flush",)),
    )
    options: RedisOptions

    def validate_options(self, options: dict[str, Any]) -> RedisOptions:
        return parse_options(self.source.name, options)

    def backup(self, repo: Repository, backup_type: str) -> Manifest:
        if backup_type not in ("full", "incremental"):
            raise ConfigError(f"unknown backup type {backup_type!r} for redis (full, incremental)")
        if self.options.data_dir:  # node-local: AOF rewrite + increments when the server runs AOF
            from .aofbackup import aof_full, aof_incremental
            from .full import server_facts

            if server_facts(self.options)["aof_enabled"]:
                return (aof_full if backup_type == "full" else aof_incremental)(repo, self.source.name, self.options)
        if backup_type == "incremental":
            raise ConfigError(
                f"incrementals of Redis source {self.source.name}: either node-local AOF increments (set data_dir "
                "and run the server with appendonly yes, aof-timestamp-enabled yes), or the recorded replication "
                f"stream: run 'drkit redis follow {self.source.name}' as a long-running service (see docs/redis.md)")
        from .full import full_backup

        return full_backup(repo, self.source.name, self.options)

    def restore_points(self, catalog: Catalog) -> RestorePoints:
        from .chain import restore_points

        return restore_points(catalog)

    def _chains(self, repo: Repository, catalog: Catalog | None = None) -> list[Chain]:
        catalog = catalog or self.catalog(repo)
        return build_chains(catalog.manifests, catalog.logs)

    def describe_chain(self, repo: Repository) -> dict[str, Any]:
        chains = self._chains(repo)
        return {"chains": [{"chain": c.name, "base": c.base.id, "slices": len(c.slices),
                            "commands": sum(int(s.metadata.get("commands", 0)) for s in c.slices)}
                           for c in chains if c.base.metadata.get("chain")]}

    def _plan(self, repo: Repository, request: RestoreRequest) -> tuple[Chain, datetime]:
        catalog = self.catalog(repo)
        if request.point_in_time is None and not request.backup_id:
            catalog = wait_out_in_flight(self, repo, catalog, request.wait_in_flight)
        chains = self._chains(repo, catalog)
        if request.backup_id:
            found = [c for c in chains if c.base.id == request.backup_id]
            for c in chains:  # an AOF incremental: its chain, as of the end it covers
                for piece in c.slices:
                    if piece.name == request.backup_id and request.point_in_time is None:
                        return c, _dt_ms(int(piece.metadata["last_ts_ms"]))
            if not found:
                repo.get_manifest(request.backup_id, self.source.name)  # BackupNotFound if absent
                raise BackupNotFound(f"backup {request.backup_id} is not a full Redis snapshot")
            chain = found[0]
            t = request.point_in_time or snapshot_time(chain.base)
            if not chain.covers(t):
                raise OutsideWindow(f"backup {chain.base.id} cannot reach {iso(t)}: its chain covers "
                                    f"{_describe(chain.intervals)}")
            return chain, t
        if not chains:
            raise BackupNotFound(f"source {self.source.name} has no backup")
        if request.point_in_time is None:
            newest = max(chains, key=lambda c: c.intervals[-1][1])
            return newest, newest.intervals[-1][1]
        t = request.point_in_time
        usable = [c for c in chains if c.covers(t)]
        if not usable:
            window = merge([iv for c in chains for iv in c.intervals])
            raise past_gap(self.restore_points(catalog), t, OutsideWindow(
                f"{iso(t)} is outside the recoverable window of source {self.source.name}: "
                f"{_describe(window)}. See 'drkit list {self.source.name}'"))
        return max(usable, key=lambda c: snapshot_time(c.base)), t

    def restore(self, repo: Repository, request: RestoreRequest) -> RestoreResult:
        from . import restore as r

        t0 = time.monotonic()
        pw_env = request.options.get("to_password_env")
        if pw_env and os.environ.get(pw_env) is None:  # up front, not as a refused login after the download
            raise ConfigError(f"--to-password-env {pw_env}: the environment variable {pw_env} is not set; set it "
                              "to the target instance's password (or leave the option out for no password)")
        chain, at = self._plan(repo, request)
        base = chain.base
        snap = snapshot_time(base)
        # An AOF base is the state at its fork: the commands up to the end of that second are replayed.
        slices = chain.slices_until(at) if at > snap or chain.aof else []
        slices = [s for s in slices if s.metadata.get("commands")]
        check_present(repo, [(f"backup {base.id} {st.name}", st) for st in base.streams]
                      + [(f"slice {s.name}", s.stream) for s in slices])  # before the target is touched
        phases = {"plan": time.monotonic() - t0}
        details: dict[str, Any] = {"restored_to": iso(at), "base_snapshot": iso(snap), "chain": chain.name,
                                   "slices_replayed": len(slices)}
        if chain.aof:
            details["resolution"] = ("AOF mode: 1 s; the commands of every whole second that ended by the point in "
                                     "time are restored")
        now = int(time.time() * 1000)
        if slices:  # base far in the future, replay, then settle TTLs relative to T (see replay.py)
            from .replay import replay_shift

            drop_before, shift = _ms(snap), replay_shift(_ms(snap), now)
        else:
            drop_before, shift = _ms(at), now - _ms(at)
        to_url = request.options.get("to")  # a password in it is refused (options.parse_url)
        t1 = time.monotonic()
        if to_url:
            if request.start:
                raise ConfigError("--start applies to --target-dir restores; --to loads a running instance")
            if not request.sync:
                raise ConfigError("--no-sync applies to --target-dir restores; --to writes no local files (the "
                                  "target instance's own persistence settings decide its durability)")
            details.update(r.restore_to_instance(
                repo, base, to_url, drop_before_ms=drop_before, shift_ms=shift,
                password=os.environ.get(pw_env) if pw_env else None, flush=bool(request.options.get("drop"))))
            phases["load"] = time.monotonic() - t1
            if slices:
                t2 = time.monotonic()
                details.update(r.replay_into(repo, self.source.name, slices, to_url, pw_env, at, shift, _ms(snap)))
                phases["replay"] = time.monotonic() - t2
            return RestoreResult(self.source.name, base.id, request.target_dir, at, phases, details, into=to_url)
        if request.target_dir is None:
            raise ConfigError("give --target-dir DIR (a data directory) or --to redis://host:port (a running, "
                              "empty instance)")
        r.prepare_target(request.target_dir)
        try:
            details.update(r.restore_to_dir(repo, base, request.target_dir, drop_before_ms=drop_before,
                                            shift_ms=shift, sync=request.sync))
            details["durable"] = request.sync
            phases["download"] = time.monotonic() - t1
            if slices or request.start:
                from drkit.proc import free_port

                t2 = time.monotonic()
                port = request.port or free_port()
                details.update(r.start_server(request.target_dir, port, None if slices else details["keys"]))
                phases["start"] = time.monotonic() - t2
                if slices:
                    t3 = time.monotonic()
                    try:
                        details.update(r.replay_into(repo, self.source.name, slices, f"redis://127.0.0.1:{port}",
                                                     None, at, shift, _ms(snap)))
                        if request.start:
                            details["keys_served"] = r.count_served(port)  # after the replay, not before it
                        else:
                            details.update(r.save_and_stop(port, details["pid"]))
                    except BaseException:
                        r.kill_server(details["pid"])
                        raise
                    phases["replay"] = time.monotonic() - t3
        except BaseException:
            r.clear_target(request.target_dir)
            raise
        return RestoreResult(self.source.name, base.id, request.target_dir, at, phases, details)

    def scratch(self, workdir: Path, restored: Path | None = None) -> Any:
        from .scratch import redis_scratch

        return redis_scratch(workdir, restored)

    def shipping(self, live: bool = True) -> Shipping:
        s = self.options.slice_seconds
        return Shipping(s + 1.0, f"'drkit redis follow' seals a slice of the command stream every {s:g} s "
                        "(slice_seconds) and commits it within about a second", "lower slice_seconds",
                        cron_incremental=bool(self.options.data_dir))

    def follower_command(self, source: str) -> list[str] | None:
        if self.options.data_dir:
            return None  # node-local AOF mode: incrementals are 'backup --type incremental'

        return ["redis", "follow", source]

    def check_restored(self, result: RestoreResult) -> dict[str, Any]:
        import redis

        port = result.details.get("port")
        if not port:
            raise ConfigError("the restore left no server to check")
        try:
            with redis.Redis(host="127.0.0.1", port=int(port), socket_timeout=10) as c:
                keys = sum(int(v["keys"]) for v in c.info("keyspace").values())
                role = c.info("replication")["role"]
        except redis.RedisError as exc:
            from drkit.errors import SourceError

            raise SourceError(f"the restored redis-server on port {port} does not answer: {exc}") from None
        return {"serving": f"redis://127.0.0.1:{port}", "keys": keys, "role": role}

    def stop_restored(self, result: RestoreResult) -> None:
        from .restore import kill_server

        if result.details.get("pid"):
            kill_server(int(result.details["pid"]))

    @classmethod
    def describe_result(cls, result: RestoreResult) -> list[str]:
        d = result.details
        lines = []
        if "url" in d and "pid" in d:
            lines.append(f"  serving at {d['url']} (pid {d['pid']})")
        if "keys" in d:
            lines.append(f"  keys restored: {d['keys']} (expired by then, not restored: "
                         f"{d.get('keys_expired_by_then', 0)})")
        return lines

    @classmethod
    def cli_group(cls) -> click.Group:
        from .cli import redis_group

        return redis_group

    # -- a drill's user checks (checks.py) --
    @classmethod
    def query_problem(cls, query: Any) -> str | None:
        from .checks import query_problem

        return query_problem(query)

    def run_query(self, result: RestoreResult, query: Any, database: str | None = None) -> list[str]:
        from .checks import run_query

        return run_query(result, query, database)

    def restored_env(self, result: RestoreResult) -> dict[str, str]:
        from .checks import restored_env

        return restored_env(result)


def _dt_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _describe(intervals: list[tuple[datetime, datetime]]) -> str:
    if not intervals:
        return "nothing (no backup)"
    parts = [iso(a) if a == b else f"{iso(a)} .. {iso(b)}" for a, b in intervals[-6:]]
    more = f" (and {len(intervals) - 6} earlier)" if len(intervals) > 6 else ""
    return "restore points/intervals " + ", ".join(parts) + more
