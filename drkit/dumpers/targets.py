"""Restore targets every dumper shares: a directory that must be empty (or new), emptied again on failure."""

from __future__ import annotations

import shutil
from pathlib import Path

from drkit.errors import DrkitError


def prepare_target(target: Path) -> None:
    if target.exists():
        if any(target.iterdir()):
            raise DrkitError(
                f"target directory {target} is not empty; restore into an empty or new directory "
                "(drkit never overwrites a data directory)"
            )
    else:
        target.mkdir(parents=True)
    target.chmod(0o700)


def clear_target(target: Path) -> None:
    """Remove what a failed restore laid down in ``target`` (which was empty before it)."""
    if not target.is_dir():
        return
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
