"""Dumper plugins: one per datastore, discovered through the ``drkit.dumpers`` entry points.

A dumper knows its datastore and nothing about encryption, storage or retention.  It gets a
:class:`~drkit.repository.Repository` (to write named streams into a
:class:`~drkit.repository.writer.WriteSession` and commit a manifest, or to read streams back)
and its source's options.  The built-in PostgreSQL dumper registers through the same entry point
group a third party would use.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

from drkit.catalog import Catalog, RestorePoints, load_catalog
from drkit.config import Config, SourceConfig
from drkit.errors import ConfigError
from drkit.repository import Manifest, Repository

GROUP = "drkit.dumpers"


@dataclass
class Window:
    """The times a source can be restored to: one or more disjoint closed intervals."""

    intervals: list[tuple[datetime, datetime]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def start(self) -> datetime | None:
        return self.intervals[0][0] if self.intervals else None

    @property
    def end(self) -> datetime | None:
        return self.intervals[-1][1] if self.intervals else None

    def contains(self, t: datetime) -> bool:
        return any(a <= t <= b for a, b in self.intervals)


@dataclass
class RestoreRequest:
    source: SourceConfig
    target_dir: Path | None
    backup_id: str | None = None
    point_in_time: datetime | None = None
    start: bool = False
    port: int | None = None
    sync: bool = True  # the restored files are durable before restore returns (see dumpers/durable.py)
    wait_in_flight: float = 60.0  # a latest restore waits this long for in-flight log records
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RestoreResult:
    source: str
    backup_id: str
    target_dir: Path | None
    point_in_time: datetime | None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())


class Dumper(abc.ABC):
    """The contract every datastore plugin implements."""

    datastore: str = ""
    backup_types: tuple[str, ...] = ("full",)
    needs_target_dir: bool = True  # False: the dumper can also restore into a running server

    def __init__(self, config: Config, source: SourceConfig) -> None:
        self.config = config
        self.source = source
        self.options = self.validate_options(dict(source.options))

    @abc.abstractmethod
    def validate_options(self, options: dict[str, Any]) -> Any:
        """Check this source's settings; raise ConfigError naming the bad field."""

    @abc.abstractmethod
    def backup(self, repo: Repository, backup_type: str) -> Manifest:
        """Take a backup of ``backup_type`` and commit its manifest; return it."""

    @abc.abstractmethod
    def restore_points(self, catalog: Catalog) -> RestorePoints:
        """Pure: every restore point the source's manifests and log records provide, with exactly
        what each needs, and the gaps that cut its chains (see :mod:`drkit.catalog`).  No I/O:
        ``window``, ``list``, the restore planner, ``verify`` and retention all derive from it."""

    def catalog(self, repo: Repository) -> Catalog:
        """This source's manifests and log records, the unreadable ones recorded as damaged."""
        grace = getattr(self.config.repository, "gap_grace", None)
        return load_catalog(repo, self.source.name, gap_grace=grace)

    def window(self, repo: Repository) -> Window:
        """The recoverable window from what the repository holds."""
        points = self.restore_points(self.catalog(repo))
        return Window(points.intervals(), points.notes_all())

    @abc.abstractmethod
    def restore(self, repo: Repository, request: RestoreRequest) -> RestoreResult:
        """Restore a backup or a point in time as the request says."""

    def describe_chain(self, repo: Repository) -> dict[str, Any]:
        """Extra per-source facts for ``list`` (e.g. log segment counts)."""
        return {}

    def source_objects(self, repo: Repository) -> list[tuple[str, str | None, str]]:
        """For ``verify``: every object this dumper keeps under ``sources/<name>/`` that exists, as
        ``(key, error or None, affects)``: ``error`` says why it does not open or parse, ``affects``
        which restore points a damaged copy breaks (e.g. "none: affects future backups only").
        Objects under ``sources/`` that no configured dumper names are reported as unknown."""
        return []

    @classmethod
    def cli_group(cls) -> click.Group | None:
        """A click group of datastore-specific commands (``drkit pg ...``), if any."""
        return None


def available_dumpers() -> dict[str, type[Dumper]]:
    """All installed dumper plugins by datastore type (built lazily, no import-time effects)."""
    found: dict[str, type[Dumper]] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        found[ep.name] = cls
    return found


def dumper_for(config: Config, source_name: str) -> Dumper:
    source = config.source(source_name)
    dumpers = available_dumpers()
    try:
        cls = dumpers[source.type]
    except KeyError:
        known = ", ".join(sorted(dumpers)) or "none installed"
        raise ConfigError(
            f"source {source_name!r} has type {source.type!r}, for which no dumper is installed "
            f"(installed: {known})"
        ) from None
    return cls(config, source)
