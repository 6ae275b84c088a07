"""Typed configuration, validated once at load time and passed explicitly.

The file is YAML (``--config FILE`` or ``$DRKIT_CONFIG``).  Each datastore plugin owns the schema
of its own source section: the core keeps a source's options as a mapping and hands it to the
plugin's ``validate_options``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drkit.errors import ConfigError

ENV_CONFIG = "DRKIT_CONFIG"


class Secret:
    """A value that never prints: repr/str show ``***``.  Call :meth:`reveal` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value = value

    def reveal(self) -> str | bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None
    region: str | None = "us-east-1"
    sse: str | None = None  # None | "AES256" | "aws:kms"
    sse_kms_key_id: str | None = None
    storage_class: str | None = None
    multipart_threshold: int = 16 * 1024 * 1024
    part_size: int = 8 * 1024 * 1024
    max_concurrency: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    addressing_style: str = "auto"
    verify_tls: bool = True
    require_object_lock: bool = False


@dataclass(frozen=True)
class RepositoryConfig:
    url: str
    s3: S3Options = field(default_factory=S3Options)
    pack_size: int = 16 * 1024 * 1024
    compression_level: int = 3
    workers: int = 0  # 0 = one per core


@dataclass(frozen=True)
class EncryptionConfig:
    key_file: Path | None = None
    key_env: str | None = None
    kms_key_id: str | None = None
    kms_endpoint_url: str | None = None
    kms_region: str | None = None


@dataclass(frozen=True)
class SourceConfig:
    name: str
    type: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Config:
    repository: RepositoryConfig
    encryption: EncryptionConfig
    sources: dict[str, SourceConfig]
    path: Path | None = None

    def source(self, name: str) -> SourceConfig:
        try:
            return self.sources[name]
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "none"
            where = f" in {self.path}" if self.path else ""
            raise ConfigError(f"no source named {name!r}{where} (configured: {known})") from None


def read_password(env_name: str | None, file: Path | None) -> str | None:
    """A source's password: the environment variable ``env_name`` if set, else the file's first
    line (stripped), else None.  Shared by every dumper so they behave alike."""
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    if file:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read password_file {file}: {exc.strerror}") from None
    return None


def _take(section: dict[str, Any], cls: type, where: str) -> Any:
    allowed = set(cls.__dataclass_fields__)
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    try:
        return cls(**section)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_config(data: Any, path: Path | None = None) -> Config:
    where = str(path) if path else "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    repo = data.get("repository")
    if not isinstance(repo, dict) or not repo.get("url"):
        raise ConfigError(f"{where}: repository.url is required")
    repo = dict(repo)
    s3 = _take(dict(repo.pop("s3", None) or {}), S3Options, f"{where}: repository.s3")
    repository = _take({**repo, "s3": s3}, RepositoryConfig, f"{where}: repository")
    if repository.url.startswith("file://") or "://" not in repository.url:
        local = repository.url.removeprefix("file://")
        if not local.startswith("/") and path is not None:
            local = str((path.parent / local).resolve())
        repository = RepositoryConfig(**{**repository.__dict__, "url": "file://" + local})
    enc = dict(data.get("encryption") or {})
    if enc.get("key_file"):
        kf = Path(str(enc["key_file"]))
        if not kf.is_absolute() and path is not None:
            kf = (path.parent / kf).resolve()
        enc["key_file"] = kf
    encryption = _take(enc, EncryptionConfig, f"{where}: encryption")
    chosen = [k for k in ("key_file", "key_env", "kms_key_id") if getattr(encryption, k)]
    if len(chosen) != 1:
        raise ConfigError(
            f"{where}: encryption needs exactly one of key_file, key_env, kms_key_id "
            f"(got {', '.join(chosen) or 'none'})"
        )
    sources: dict[str, SourceConfig] = {}
    raw_sources = data.get("sources") or {}
    if not isinstance(raw_sources, dict):
        raise ConfigError(f"{where}: sources must be a mapping of name -> settings")
    for name, body in raw_sources.items():
        if not isinstance(body, dict) or not body.get("type"):
            raise ConfigError(f"{where}: sources.{name}.type is required")
        if "/" in str(name) or not str(name).strip():
            raise ConfigError(f"{where}: invalid source name {name!r}")
        opts = {k: v for k, v in body.items() if k != "type"}
        sources[str(name)] = SourceConfig(str(name), str(body["type"]), opts)
    unknown = set(data) - {"repository", "encryption", "sources", "schedules", "targets"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level section(s) {', '.join(sorted(unknown))}")
    return Config(repository, encryption, sources, path)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the configuration from ``path`` or ``$DRKIT_CONFIG``."""
    chosen = path or os.environ.get(ENV_CONFIG)
    if not chosen:
        raise ConfigError(f"no configuration: pass --config FILE or set {ENV_CONFIG}")
    p = Path(chosen)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: invalid YAML{at}") from None
    return parse_config(data, p.resolve())
