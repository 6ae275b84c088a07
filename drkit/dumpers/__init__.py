"""Dumper plugins: one per datastore, discovered through the ``drkit.dumpers`` entry points.

A dumper knows its datastore and nothing about encryption, storage or retention.  It gets a
:class:`~drkit.repository.Repository` (to write named streams into a
:class:`~drkit.repository.writer.WriteSession` and commit a manifest, or to read streams back)
and its source's options.  The built-in PostgreSQL dumper registers through the same entry point
group a third party would use.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import click

from drkit.catalog import Catalog, Damaged, RestorePoints, load_catalog
from drkit.config import Config, SourceConfig
from drkit.dumpers.options import OptionSpec, resolve_options
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
class Shipping:
    """How a datastore's commits reach the repository between backups (for ``schedule lint``)."""

    # Worst-case seconds of commits not yet in the repository while continuous shipping runs
    # (archiving, a follower); None: no continuous shipping, or not bounded.
    interval: float | None
    how: str  # the arithmetic, in words
    fix: str = ""  # how to shorten it
    cron_incremental: bool = False  # 'backup --type incremental' is a real backup a schedule can run


@dataclass
class LogShipment:
    """What ``backup`` returns for a backup type that ships log records rather than committing a
    manifest (e.g. an incremental of oplog slices): the records it committed, in order."""

    source: str
    type: str
    records: list[str]
    size: int  # bytes of log data shipped
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.records[-1] if self.records else "none"

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "type": self.type, "log_records": list(self.records),
                "size": self.size, **self.details}

    def text(self) -> str:
        if not self.records:
            return f"{self.type} of {self.source}: nothing new to ship"
        span = self.records[0] if len(self.records) == 1 else f"{self.records[0]} .. {self.records[-1]}"
        return (f"{self.type} of {self.source} committed: {len(self.records)} log record(s) ({span}), "
                f"{self.size / 1e6:.1f} MB")


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
    # The dumper's own options (its ``restore_options``), by OptionSpec.dest: made read-only and
    # complete (every declared dest, given or empty) for the source's dumper; an undeclared key is
    # a ConfigError.
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cls = available_dumpers().get(self.source.type)
        specs = cls.restore_options if cls is not None else ()
        what = f"restoring source {self.source.name!r} (type {self.source.type})"
        self.options = resolve_options(specs, self.options, what=what)


@dataclass
class RestoreResult:
    source: str
    backup_id: str
    target_dir: Path | None
    point_in_time: datetime | None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    # JSON-serializable facts of the dumper, merged into ``restore --json``; their text lines come
    # from ``Dumper.describe_result`` (the core reads no key of its own here).
    details: dict[str, Any] = field(default_factory=dict)
    into: str | None = None  # where it went when not a directory (a server URL, never a password)

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())


class Dumper(abc.ABC):
    """The contract every datastore plugin implements."""

    datastore: str = ""
    backup_types: tuple[str, ...] = ("full",)  # ``backup --type`` choices; the first is the default
    needs_target_dir: bool = True  # False: the dumper can also restore into a running server
    # ``drkit restore SOURCE`` options of this datastore besides the common ones; one name, one
    # meaning across dumpers (drkit/dumpers/options.py STANDARD, checked by spec_problems).
    restore_options: ClassVar[tuple[OptionSpec, ...]] = ()
    #: The incident runbook for this datastore (a path in the drkit repository); drills record it.
    runbook: ClassVar[str | None] = None

    def __init__(self, config: Config, source: SourceConfig) -> None:
        self.config = config
        self.source = source
        self.options = self.validate_options(dict(source.options))

    @abc.abstractmethod
    def validate_options(self, options: dict[str, Any]) -> Any:
        """Check this source's settings; raise ConfigError naming the bad field."""

    @abc.abstractmethod
    def backup(self, repo: Repository, backup_type: str) -> Manifest | LogShipment:
        """Take a backup of ``backup_type`` and commit its manifest; return it (or, for a type that
        ships log records only, a :class:`LogShipment` naming them)."""

    @abc.abstractmethod
    def restore_points(self, catalog: Catalog) -> RestorePoints:
        """Pure: every restore point the source's manifests and log records provide, with exactly
        what each needs, and the gaps that cut its chains (see :mod:`drkit.catalog`).  No I/O:
        ``window``, ``list``, the restore planner, ``verify`` and retention all derive from it."""

    def catalog(self, repo: Repository) -> Catalog:
        """This source's manifests and log records, the unreadable ones recorded as damaged."""
        from drkit.repository.forgotten import forgotten_logs

        grace = getattr(self.config.repository, "gap_grace", None)
        catalog = load_catalog(repo, self.source.name, gap_grace=grace)
        catalog.forgotten, bad = forgotten_logs(repo, self.source.name)
        catalog.damaged += [Damaged(key, "forgotten", key.rsplit("/", 1)[-1], err) for key, err in bad]
        return catalog

    def window(self, repo: Repository) -> Window:
        """The recoverable window from what the repository holds."""
        points = self.restore_points(self.catalog(repo))
        return Window(points.intervals(), points.notes_all())

    @abc.abstractmethod
    def restore(self, repo: Repository, request: RestoreRequest) -> RestoreResult:
        """Restore a backup or a point in time as the request says."""

    def shipping(self, live: bool = True) -> Shipping:
        """How commits reach the repository between backups; ``live``: the server may be asked
        for its settings (a failure to reach it is not an error: the configured values count)."""
        return Shipping(None, f"the {self.datastore} dumper ships no log continuously", "",
                        "incremental" in self.backup_types)

    def follower_command(self, source: str) -> list[str] | None:
        """The drkit arguments of this datastore's long-running log follower for ``source``
        (e.g. ``["redis", "follow", source]``), which ``schedule run`` supervises; None: none."""
        return None

    def check_restored(self, result: RestoreResult) -> dict[str, Any]:
        """For a drill: ask the instance a ``--start`` restore left serving what it holds (counts,
        whatever the datastore can tell cheaply); raise DrkitError when it does not answer."""
        raise ConfigError(f"the {self.datastore} dumper cannot check a restored instance yet")

    def stop_restored(self, result: RestoreResult) -> None:
        """Stop the instance a ``--start`` restore left serving (a drill's cleanup)."""
        raise ConfigError(f"the {self.datastore} dumper cannot stop a restored instance yet")

    # -- a drill's user checks (drkit/drills/checks.py; policy ``drills: {SOURCE: {checks, app}}``) --
    @classmethod
    def query_problem(cls, query: Any) -> str | None:
        """What is wrong with the form of a data check's ``query`` for this datastore (None: nothing),
        for ``schedule lint`` and the drill, before any server is asked."""
        return f"the {cls.datastore or cls.__name__} dumper has no data checks (remove the check's 'query')"

    def run_query(self, result: RestoreResult, query: Any, database: str | None = None) -> list[str]:
        """Run a data check's ``query`` against the instance a ``--start`` restore left serving;
        return its rows as text (the first row is what ``expect`` compares).  A query the instance
        refuses raises DrkitError with the server's message (never a secret)."""
        raise ConfigError(f"this datastore ({self.datastore}) has no data checks")

    def restored_env(self, result: RestoreResult) -> dict[str, str]:
        """The environment a drill gives the operator's application so it reaches the restored
        instance: ``DRKIT_RESTORED_URL`` (no password), plus the datastore's own variables."""
        return {"DRKIT_RESTORED_URL": result.into} if result.into else {}

    def scratch(self, workdir: Path, restored: Path | None = None) -> Any:
        """A throw-away server of this datastore started on ``workdir`` (over the restored files
        ``restored``, where the datastore restores into a directory), for restores and drills:
        a :class:`drkit.dumpers.scratch.Instance`.  Raises ConfigError when the dumper offers none."""
        raise ConfigError(f"the {self.datastore} dumper offers no scratch instance yet")

    @classmethod
    def describe_result(cls, result: RestoreResult) -> list[str]:
        """The text lines (indented) of ``drkit restore`` for the datastore-specific facts in
        ``result.details``; the core prints the summary and the phases."""
        return []

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


def dumper_class(config: Config, source_name: str) -> type[Dumper]:
    """The dumper plugin of the configured source ``source_name`` (not instantiated)."""
    source = config.source(source_name)
    dumpers = available_dumpers()
    try:
        return dumpers[source.type]
    except KeyError:
        known = ", ".join(sorted(dumpers)) or "none installed"
        raise ConfigError(
            f"source {source_name!r} has type {source.type!r}, for which no dumper is installed "
            f"(installed: {known})"
        ) from None


def dumper_for(config: Config, source_name: str) -> Dumper:
    return dumper_class(config, source_name)(config, config.source(source_name))
