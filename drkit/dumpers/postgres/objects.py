"""The objects the PostgreSQL dumper keeps under ``sources/<source>/`` (for ``drkit verify``).

Today that is one: ``sources/<source>/postgres-system-id``, which binds the source name to one
cluster (:func:`~drkit.dumpers.postgres.wal.check_system_id`).  No restore reads it; a damaged
copy makes every later backup and ``wal-push`` of the source fail until it is fixed.
"""

from __future__ import annotations

from drkit.errors import IntegrityError
from drkit.repository import Repository
from drkit.repository import format as fmt

from .wal import _sysid_key, read_system_id

SYSID_AFFECTS = "none: affects future backups and WAL archiving only"


def source_objects(repo: Repository, source: str) -> list[tuple[str, str | None, str]]:
    """(key, error or None, what a damaged copy affects) for each such object that exists."""
    try:
        found = read_system_id(repo, source)
    except IntegrityError as exc:
        key = exc.key or _sysid_key(source)
        return [(key, f"{str(exc).removeprefix(f'{key}: ')}; backups and wal-push of source {source!r} fail until "
                 "it is restored from a copy (or, if you are sure which cluster the source belongs to, deleted: "
                 "the next push binds it again)", SYSID_AFFECTS)]
    if found is None:
        key = _sysid_key(source)
        used = next(iter(repo.storage.list(fmt.manifest_key(source, ""))), None) or \
            next(iter(repo.storage.list(fmt.log_key(source, ""))), None)
        if used is None:
            return []  # nothing bound the source yet
        return [(key, f"missing, although source {source!r} has backups or archived WAL (e.g. {used.key}): "
                 "nothing now stops another cluster from archiving into this source name; the next backup or "
                 "wal-push of the right cluster binds it again", SYSID_AFFECTS)]
    return [(found[0], None, SYSID_AFFECTS)]
