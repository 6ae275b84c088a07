"""The one exception tree of drkit.

The library raises these; only ``drkit.cli`` maps them to exit codes (documented in
``drkit --help`` and docs/user-guide.md).  Messages say what happened and what to do, and never
contain secrets.
"""

from __future__ import annotations


class DrkitError(Exception):
    """Base of every error drkit reports to a user."""

    exit_code = 1


class ConfigError(DrkitError):
    """The configuration file is missing, malformed or inconsistent."""

    exit_code = 2


class RepositoryError(DrkitError):
    """The repository cannot be opened or is in a state drkit does not accept."""

    exit_code = 3


class RepositoryNotFound(RepositoryError):
    """No repository exists at the configured URL (run ``drkit init``)."""


class RepositoryExists(RepositoryError):
    """``init`` found an existing repository."""


class UnsupportedFormat(RepositoryError):
    """The repository was written by a newer (or unknown) format version."""


class WrongKey(DrkitError):
    """The configured key does not unwrap any master key of the repository."""

    exit_code = 4


class IntegrityError(DrkitError):
    """Stored data failed authentication or its hash: corruption or tampering.

    ``key`` names the storage object; ``affected`` lists restore points that need it, when known.
    """

    exit_code = 5

    def __init__(self, message: str, *, key: str | None = None, affected: list[str] | None = None):
        super().__init__(message)
        self.key = key
        self.affected = affected or []


class LockedError(DrkitError):
    """An exclusive lock is held by another process."""

    exit_code = 6


class StorageError(DrkitError):
    """A storage operation failed (after retries, if transient)."""

    exit_code = 7


class NotFoundError(StorageError):
    """The object does not exist."""


class AlreadyExistsError(StorageError):
    """A conditional create found an object with the same key."""


class TransientStorageError(StorageError):
    """A failure that may succeed when retried (5xx, throttling, timeouts, resets)."""


class OutsideWindow(DrkitError):
    """A requested point in time is outside the recoverable window."""

    exit_code = 8


class ChainBroken(DrkitError):
    """A log chain (WAL, oplog, AOF) has a gap or a foreign member."""

    exit_code = 9


class SourceError(DrkitError):
    """The datastore could not be reached or refused the operation."""

    exit_code = 10


class BackupNotFound(DrkitError):
    """No backup with the given id (or none suitable) exists."""

    exit_code = 11


class LogConflict(DrkitError):
    """A different log segment already exists under the same name (e.g. WAL re-push differs)."""

    exit_code = 12


EXIT_CODES: dict[str, int] = {
    "success": 0,
    "general failure": DrkitError.exit_code,
    "configuration error": ConfigError.exit_code,
    "repository missing, exists, unsupported or inconsistent": RepositoryError.exit_code,
    "wrong key": WrongKey.exit_code,
    "integrity failure (corrupt or tampered data)": IntegrityError.exit_code,
    "repository locked": LockedError.exit_code,
    "storage failure": StorageError.exit_code,
    "point in time outside the recoverable window": OutsideWindow.exit_code,
    "log chain broken": ChainBroken.exit_code,
    "datastore unreachable or refused": SourceError.exit_code,
    "backup not found": BackupNotFound.exit_code,
    "conflicting log segment": LogConflict.exit_code,
    "objective missed (a policy or drill does not meet its RPO/RTO target)": 13,
}
