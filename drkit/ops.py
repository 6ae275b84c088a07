"""The library behind the CLI: each command is one function here, returning data."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from typing import Any

from drkit.config import Config, EncryptionConfig
from drkit.dumpers import RestoreRequest, RestoreResult, dumper_for
from drkit.errors import ConfigError, DrkitError
from drkit.repository import Manifest, Repository
from drkit.repository.keys import wrapper_from_config
from drkit.repository.manifest import iso
from drkit.storage import open_storage


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
    manifest: Manifest
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.manifest.summary(), "seconds": round(self.seconds, 3)}


def backup(config: Config, source: str, backup_type: str) -> BackupResult:
    dumper = dumper_for(config, source)
    repo = open_repository(config)
    t0 = time.monotonic()
    manifest = dumper.backup(repo, backup_type)
    return BackupResult(manifest, time.monotonic() - t0)


def list_sources(config: Config, source: str | None = None) -> list[dict[str, Any]]:
    repo = open_repository(config)
    names = [source] if source else sorted(set(config.sources) | set(repo.list_sources()))
    out = []
    now = repo.server_time()
    for name in names:
        manifests = repo.list_manifests(name)
        entry: dict[str, Any] = {"source": name, "backups": [m.summary() for m in manifests]}
        if name in config.sources:
            dumper = dumper_for(config, name)
            window = dumper.window(repo)
            entry["type"] = config.sources[name].type
            entry["window"] = (
                {"start": iso(window.start), "end": iso(window.end)} if window.start and window.end else None
            )
            entry["windows"] = [{"start": iso(a), "end": iso(b)} for a, b in window.intervals]
            entry["notes"] = window.notes
            entry["current_rpo_seconds"] = (
                round((now - window.end).total_seconds(), 1) if window.end else None
            )
            entry.update(dumper.describe_chain(repo))
        else:
            entry["type"] = None
            entry["window"] = None
            entry["notes"] = [f"source {name} is in the repository but not in this configuration"]
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
    return result


def rotate_key(config: Config, new_encryption: EncryptionConfig) -> dict[str, Any]:
    """Rewrap the master key with the key ``new_encryption`` names; data is not rewritten."""
    repo = open_repository(config)
    old = repo.key_id
    new_id = repo.rotate_key(wrapper_from_config(new_encryption))
    return {"repository": repo.storage.url, "old_key_id": old, "new_key_id": new_id}


def list_keys(config: Config) -> list[dict[str, Any]]:
    return open_repository(config).list_keys()
