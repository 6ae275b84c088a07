"""Where a physical restore puts the backup's user tablespaces, and laying them down there.

A node-local backup stores each user tablespace as its own stream (``tablespaces/<oid>.tar``,
the tree of this server version's directory) and records ``{oid, name, location, stream}`` in
the backup's metadata.  A restore puts tablespace NAME in the directory ``--tablespace-map
NAME=DIR`` names, or by default beside the target: ``<target>-tablespaces/<name>``.  It never
writes into the source's own tablespace directory (refused, also through a symlink), nor into a
directory that holds anything.  ``pg_tblspc/<oid>`` in the restored data directory and its
``tablespace_map`` (which PostgreSQL reads when recovery starts, and recreates the links from)
both lead to the new place.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drkit.errors import ConfigError, DrkitError
from drkit.repository import Manifest, Repository

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class Placement:
    oid: int
    name: str
    source_location: str  # where the tablespace was on the source
    directory: Path  # where this restore puts it
    stream: str
    created: bool = False  # the restore created ``directory`` (removed again if it fails)
    ours: bool = False  # empty or created by this restore (emptied again if it fails)


def place_tablespaces(manifest: Manifest, target: Path, mapping: tuple[str, ...] | list[str]) -> list[Placement]:
    """Where each of the backup's tablespaces goes; ConfigError for a map that cannot be honoured.
    Pure: nothing is created or written."""
    spaces: list[dict[str, Any]] = list(manifest.metadata.get("tablespaces") or [])
    by_name = {sp["name"]: sp for sp in spaces}
    chosen: dict[str, Path] = {}
    for item in mapping:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise ConfigError(f"--tablespace-map {item!r}: expected NAME=DIR")
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise ConfigError(f"--tablespace-map {item!r}: backup {manifest.id} has no tablespace {name!r} "
                              f"(its tablespaces: {known})")
        if name in chosen:
            raise ConfigError(f"--tablespace-map names tablespace {name!r} twice")
        path = Path(where)
        if not path.is_absolute():
            raise ConfigError(f"--tablespace-map {item!r}: DIR must be an absolute path")
        chosen[name] = path
    out = []
    for sp in spaces:
        default = target.parent / f"{target.name}-tablespaces" / (
            sp["name"] if _PLAIN_NAME.match(sp["name"]) else str(sp["oid"]))
        out.append(Placement(int(sp["oid"]), sp["name"], sp["location"], chosen.get(sp["name"], default),
                             sp["stream"]))
    _check_places(out, target)
    return out


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _check_places(places: list[Placement], target: Path) -> None:
    real_target = os.path.realpath(target)
    seen: dict[str, str] = {}
    for p in places:
        real = os.path.realpath(p.directory)
        for other in places:  # the source's own directories, whichever tablespace they held
            src = os.path.realpath(other.source_location)
            if _inside(real, src) or _inside(src, real):
                raise ConfigError(
                    f"tablespace {p.name} would be restored into {p.directory}, which "
                    f"{'is' if real == src else 'overlaps'} the source's tablespace directory "
                    f"{other.source_location}; drkit never restores onto the source: give "
                    f"--tablespace-map {p.name}=DIR with another directory")
        if _inside(real, real_target) or _inside(real_target, real):
            raise ConfigError(f"tablespace {p.name}: {p.directory} overlaps the target directory {target}; "
                              "put tablespaces outside the data directory (--tablespace-map NAME=DIR)")
        for name, where in seen.items():
            if _inside(real, where) or _inside(where, real):
                raise ConfigError(f"tablespaces {name} and {p.name} would share {p.directory}; "
                                  "give each its own directory")
        seen[p.name] = real


def prepare_tablespaces(places: list[Placement]) -> None:
    """Check every directory is empty or new, then create the new ones; before anything is
    written, and a directory that holds something is never touched."""
    for p in places:
        if p.directory.exists() and (not p.directory.is_dir() or any(p.directory.iterdir())):
            raise DrkitError(f"tablespace {p.name}: {p.directory} is not an empty directory; restore "
                             f"into an empty or new one (--tablespace-map {p.name}=DIR)")
    for p in places:
        if not p.directory.exists():
            p.directory.mkdir(parents=True, mode=0o700)
            p.created = True
        p.ours = True
        p.directory.chmod(0o700)


def relinks(places: list[Placement]) -> dict[str, Path]:
    """The data directory's tablespace links and where they lead now (for the tar extractor)."""
    return {f"pg_tblspc/{p.oid}": p.directory for p in places}


def extract_tablespaces(repo: Repository, manifest: Manifest, places: list[Placement]) -> int:
    """Lay each tablespace's stream down in its directory; return the bytes restored."""
    from drkit.repository.reader import iter_stream

    from .untar import extract

    total = 0
    for p in places:
        ref = manifest.stream(p.stream)
        extract(iter_stream(repo, ref), p.directory)
        total += ref.size
    return total


def write_tablespace_map(target: Path, places: list[Placement]) -> None:
    """Rewrite ``tablespace_map`` for the new places, escaped as PostgreSQL writes it
    (``\\``, newline and carriage return preceded by a backslash)."""
    if not places:
        return
    lines = []
    for p in places:
        escaped = re.sub(r"([\\\n\r])", r"\\\1", str(p.directory))
        lines.append(f"{p.oid} {escaped}\n")
    (target / "tablespace_map").write_text("".join(lines))


def clear_tablespaces(places: list[Placement]) -> None:
    """Undo a failed restore: remove the directories it created, empty the ones it was given."""
    for p in places:
        if not p.ours:
            continue
        if p.created:
            shutil.rmtree(p.directory, ignore_errors=True)
            parent = p.directory.parent
            if parent.name.endswith("-tablespaces"):
                try:
                    parent.rmdir()  # the default <target>-tablespaces/, once empty
                except OSError:
                    pass
        elif p.directory.is_dir():
            for child in p.directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
