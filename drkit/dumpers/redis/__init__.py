"""The Redis dumper: snapshots over the replication protocol (or BGSAVE on the node), restored
as of a point in time into a data directory or a running instance."""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from drkit.dumpers import Dumper, RestoreRequest, RestoreResult, Window
from drkit.errors import BackupNotFound, ConfigError, OutsideWindow
from drkit.repository import Manifest, Repository
from drkit.repository.manifest import iso, parse_iso

from .options import RedisOptions, parse_options

__all__ = ["RedisDumper"]


def snapshot_time(m: Manifest) -> datetime:
    return parse_iso(m.metadata.get("snapshot_time") or m.finished)


class RedisDumper(Dumper):
    datastore = "redis"
    backup_types = ("full",)
    needs_target_dir = False  # --to redis://... restores into a running instance
    options: RedisOptions

    def validate_options(self, options: dict[str, Any]) -> RedisOptions:
        return parse_options(self.source.name, options)

    def backup(self, repo: Repository, backup_type: str) -> Manifest:
        if backup_type != "full":
            raise ConfigError(f"redis sources take --type full backups (a snapshot); {backup_type!r} is not "
                              "available yet for Redis")
        from .full import full_backup

        return full_backup(repo, self.source.name, self.options)

    def _fulls(self, repo: Repository) -> list[Manifest]:
        return sorted((m for m in repo.list_manifests(self.source.name) if m.type == "full"), key=snapshot_time)

    def window(self, repo: Repository) -> Window:
        """Each snapshot is a restore point; there is no continuous log for Redis yet."""
        points = [snapshot_time(m) for m in self._fulls(repo)]
        notes = ["Redis restore points are the snapshots' times (no command-stream log yet)"] if points else []
        return Window([(t, t) for t in points], notes)

    def describe_chain(self, repo: Repository) -> dict[str, Any]:
        return {"restore_points": [iso(snapshot_time(m)) for m in self._fulls(repo)]}

    def _plan(self, repo: Repository, request: RestoreRequest) -> tuple[Manifest, datetime]:
        if request.backup_id:
            m = repo.get_manifest(request.backup_id, self.source.name)
            if request.point_in_time and request.point_in_time != snapshot_time(m):
                raise OutsideWindow(f"backup {m.id} restores to {iso(snapshot_time(m))} only; Redis has no "
                                    "command log to reach another time yet")
            return m, snapshot_time(m)
        fulls = self._fulls(repo)
        if not fulls:
            raise BackupNotFound(f"source {self.source.name} has no backup")
        if request.point_in_time is None:
            return fulls[-1], snapshot_time(fulls[-1])
        t = request.point_in_time
        exact = [m for m in fulls if snapshot_time(m) == t]
        if exact:
            return exact[-1], t
        before = [m for m in fulls if snapshot_time(m) < t]
        hint = (f"the nearest earlier restore point is {iso(snapshot_time(before[-1]))} (backup {before[-1].id})"
                if before else f"the earliest restore point is {iso(snapshot_time(fulls[0]))}")
        raise OutsideWindow(f"{iso(t)} is not a recoverable point of source {self.source.name}: Redis restore "
                            f"points are its snapshot times ({len(fulls)} of them); {hint}. See 'drkit list'.")

    def restore(self, repo: Repository, request: RestoreRequest) -> RestoreResult:
        from . import restore as r

        t0 = time.monotonic()
        manifest, at = self._plan(repo, request)
        phases = {"plan": time.monotonic() - t0}
        details: dict[str, Any] = {"restored_to": iso(at)}
        to_url = request.options.get("to")
        t1 = time.monotonic()
        if to_url:
            if request.start:
                raise ConfigError("--start applies to --target-dir restores; --to loads a running instance")
            pw_env = request.options.get("to_password_env")
            details.update(r.restore_to_instance(
                repo, manifest, to_url, at, password=os.environ.get(pw_env) if pw_env else None,
                flush=bool(request.options.get("flush"))))
            phases["load"] = time.monotonic() - t1
            return RestoreResult(self.source.name, manifest.id, request.target_dir, at, phases, details)
        if request.target_dir is None:
            raise ConfigError("give --target-dir DIR (a data directory) or --to redis://host:port (a running, "
                              "empty instance)")
        r.prepare_target(request.target_dir)
        try:
            details.update(r.restore_to_dir(repo, manifest, request.target_dir, at))
        except BaseException:
            r.clear_target(request.target_dir)
            raise
        phases["download"] = time.monotonic() - t1
        if request.start:
            from drkit.sandbox.ports import free_port

            t2 = time.monotonic()
            details.update(r.start_server(request.target_dir, request.port or free_port(), details["keys"]))
            phases["start"] = time.monotonic() - t2
        return RestoreResult(self.source.name, manifest.id, request.target_dir, at, phases, details)
