"""The storage contract every backend implements.

A storage is a flat namespace of immutable objects addressed by ``/``-separated keys.  The
contract (checked by ``tests/integration/test_storage_conformance.py`` against every backend):

- ``put(key, data)`` is atomic: readers see the whole object or nothing, never a prefix.  With
  ``exclusive=True`` (the default) it is a conditional create: if ``key`` exists it raises
  :class:`~drkit.errors.AlreadyExistsError` -- unless the existing object has exactly the same
  bytes, which is treated as success (an ambiguous commit that was in fact applied).
  ``exclusive=False`` replaces (used only for lock objects).
- ``get(key)`` returns the whole object, ``get(key, offset, length)`` a range; a missing key
  raises :class:`~drkit.errors.NotFoundError`; a short read is never returned (it raises).
- ``stat(key)`` returns :class:`ObjectInfo` or ``None``.
- ``list(prefix)`` yields every object under the prefix, in any order, across all pages; a failed
  listing raises -- it never ends early and silently.
- ``delete(key)`` removes one object (missing is not an error); ``delete_many(keys)`` returns the
  keys that could NOT be deleted (per-key errors are never swallowed).
- Transient failures raise :class:`~drkit.errors.TransientStorageError` (retried by
  :class:`drkit.storage.retry.RetryingStorage`); all others raise their specific error.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, so callers never test the backend's type."""

    conditional_create: bool = True
    server_time: bool = False
    object_lock: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class Storage(abc.ABC):
    """Abstract storage; see the module docstring for the contract."""

    url: str = ""
    capabilities = Capabilities()

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, exclusive: bool = True) -> None: ...

    @abc.abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        failed: list[str] = []
        for key in keys:
            try:
                self.delete(key)
            except Exception:  # noqa: BLE001 - reported to the caller per key
                failed.append(key)
        return failed

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def now(self) -> datetime | None:
        """The storage's own clock, if it has one (used to judge ages under client clock skew)."""
        return None

    def abort_stale_uploads(self, older_than: datetime) -> list[str]:
        """Abort unfinished multipart uploads started before ``older_than`` (storage clock);
        returns the keys whose uploads were aborted.  Backends without multipart: nothing."""
        return []

    def close(self) -> None:  # pragma: no cover - default no-op
        return None
