"""The library behind the CLI: each command is one function here, returning data."""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from typing import Any

from drkit.catalog import load_catalog
from drkit.config import Config, EncryptionConfig
from drkit.dumpers import LogShipment, RestoreRequest, RestoreResult, dumper_for
from drkit.errors import ConfigError, DrkitError
from drkit.repository import Manifest, Repository
from drkit.repository.keys import wrapper_from_config
from drkit.repository.manifest import iso
from drkit.storage import open_storage

log = logging.getLogger(__name__)


def open_repository(config: Config) -> Repository:
    storage = open_storage(config.repository.url, config.repository.s3)
    repo = Repository.open(storage, wrapper_from_config(config.encryption))
    _tune(repo, config)
    return repo


def _tune(repo: Repository, config: Config) -> None:
    repo.pack_size = config.repository.pack_size
    repo.compression_level = config.repository.compression_level
    if config.repository.workers:
        repo.workers = config.repository.workers


def init_repository(config: Config) -> Repository:
    storage = open_storage(config.repository.url, config.repository.s3)
    repo = Repository.init(storage, wrapper_from_config(config.encryption))
    _tune(repo, config)
    return repo


@dataclass
class BackupResult:
    manifest: Manifest | LogShipment
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.manifest.summary(), "seconds": round(self.seconds, 3)}


def backup(config: Config, source: str, backup_type: str) -> BackupResult:
    dumper = dumper_for(config, source)
    repo = open_repository(config)
    t0 = time.monotonic()
    manifest = dumper.backup(repo, backup_type)
    result = BackupResult(manifest, time.monotonic() - t0)
    log.info("backup of %s (%s) committed", source, backup_type, extra={
        "event": "backup", "source": source, "type": backup_type, "backup": manifest.id,
        "bytes": manifest.size, "seconds": round(result.seconds, 3),
        **({"stored_bytes": manifest.stored_bytes} if isinstance(manifest, Manifest) else {})})
    return result


def list_sources(config: Config, source: str | None = None) -> list[dict[str, Any]]:
    """Each source's backups, restore points, gaps and damaged catalog objects.

    Tolerant: a manifest or log record that cannot be read is listed under ``damaged`` and left
    out of the restore points, never an error for the whole listing."""
    repo = open_repository(config)
    stored = set(repo.list_sources())
    if source and source not in config.sources and source not in stored:
        known = ", ".join(sorted(set(config.sources) | stored)) or "none"
        raise ConfigError(f"no source named {source!r} in the configuration or the repository (known: {known})")
    names = [source] if source else sorted(set(config.sources) | stored)
    out = []
    now = repo.server_time()
    for name in names:
        if name not in config.sources:
            catalog = load_catalog(repo, name)
            out.append({"source": name, "type": None, "window": None, "windows": [], "restore_points": [],
                        "backups": [m.summary() for m in catalog.manifests],
                        "damaged": [d.as_dict() for d in catalog.damaged],
                        "notes": [f"source {name} is in the repository but not in this configuration"]})
            continue
        dumper = dumper_for(config, name)
        catalog = dumper.catalog(repo)
        points = dumper.restore_points(catalog)
        intervals = points.intervals()
        newest = points.newest_safe_time()
        entry: dict[str, Any] = {
            "source": name, "type": config.sources[name].type,
            "backups": [m.summary() for m in catalog.manifests],
            "window": {"start": iso(intervals[0][0]), "end": iso(intervals[-1][1])} if intervals else None,
            "windows": [{"start": iso(a), "end": iso(b)} for a, b in intervals],
            "restore_points": [p.as_dict() for p in points.points],
            "gaps": [g.as_dict() for g in points.gaps],
            "damaged": [d.as_dict() for d in catalog.damaged],
            "newest_safe_time": iso(newest) if newest else None,
            "current_rpo_seconds": round((now - newest).total_seconds(), 1) if newest else None,
            "notes": points.notes_all() + [f"damaged: {d.key}: {d.error}" for d in catalog.damaged],
        }
        entry.update(dumper.describe_chain(repo))
        out.append(entry)
    return out


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def restore(config: Config, request: RestoreRequest) -> RestoreResult:
    dumper = dumper_for(config, request.source.name)
    if request.target_dir is None and dumper.needs_target_dir:
        raise ConfigError(f"restoring a {dumper.datastore} source needs --target-dir DIR")
    t0 = time.monotonic()
    repo = open_repository(config)
    open_s = time.monotonic() - t0
    try:
        result = dumper.restore(repo, request)
    except OSError as exc:  # a system error the dumper did not turn into a DrkitError
        left = f"; {request.target_dir} was emptied again" if request.target_dir else ""
        what = ("check the target's free space, quota and disk" if exc.errno in _DISK_ERRNOS
                else "see the error above")
        raise DrkitError(f"restoring {request.source.name} failed: {exc}{left}. {what[0].upper() + what[1:]}, "
                         "then run the restore again") from None
    result.phases = {"open": open_s, **result.phases}
    log.info("restore of %s done", request.source.name, extra={
        "event": "restore", "source": request.source.name, "backup": result.backup_id,
        "point_in_time": iso(result.point_in_time) if result.point_in_time else None,
        "seconds": round(result.seconds, 3), "phases": {k: round(v, 3) for k, v in result.phases.items()}})
    return result


def rotate_key(config: Config, new_encryption: EncryptionConfig) -> dict[str, Any]:
    """Rewrap the master key with the key ``new_encryption`` names; data is not rewritten."""
    repo = open_repository(config)
    old = repo.key_id
    new_id = repo.rotate_key(wrapper_from_config(new_encryption))
    return {"repository": repo.storage.url, "old_key_id": old, "new_key_id": new_id}


def list_keys(config: Config) -> list[dict[str, Any]]:
    """Every key envelope (damaged ones marked), never key material."""
    return open_repository(config).list_keys()


def add_key(config: Config, new_encryption: EncryptionConfig) -> dict[str, Any]:
    """Wrap the master key with one more key (``new_encryption``), proven to unwrap it."""
    repo = open_repository(config)
    new_id = repo.add_key(wrapper_from_config(new_encryption))
    return {"repository": repo.storage.url, "key_id": new_id, "keys": repo.list_keys()}


def remove_key(config: Config, key_id: str, *, force: bool = False) -> dict[str, Any]:
    """Delete the envelope ``keys/<key_id>`` (refusals: see Repository.remove_key)."""
    repo = open_repository(config)
    was_in_use = key_id == repo.key_id
    left = repo.remove_key(key_id, force=force)
    return {"repository": repo.storage.url, "removed_key_id": key_id, "was_in_use": was_in_use, "key_ids": left}
