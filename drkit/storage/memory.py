"""In-memory storage (``memory://``): for fast unit tests of the core only."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from drkit.errors import AlreadyExistsError, NotFoundError, StorageError
from drkit.storage.base import ObjectInfo, Storage

_STORES: dict[str, dict[str, bytes]] = {}


class MemoryStorage(Storage):
    def __init__(self, name: str = "default") -> None:
        self.url = f"memory://{name}"
        self._objects = _STORES.setdefault(name, {})
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, *, exclusive: bool = True) -> None:
        with self._lock:
            old = self._objects.get(key)
            if exclusive and old is not None:
                if old == bytes(data):
                    return
                raise AlreadyExistsError(f"object already exists: {key}")
            self._objects[key] = bytes(data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            try:
                data = self._objects[key]
            except KeyError:
                raise NotFoundError(f"object not found: {key}") from None
        end = len(data) if length is None else offset + length
        if end > len(data):
            raise StorageError(f"range {offset}+{length} beyond end of {key} ({len(data)} bytes)")
        return data[offset:end]

    def stat(self, key: str) -> ObjectInfo | None:
        with self._lock:
            data = self._objects.get(key)
        return None if data is None else ObjectInfo(key, len(data))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = [(k, len(v)) for k, v in self._objects.items() if k.startswith(prefix)]
        for key, size in sorted(items):
            yield ObjectInfo(key, size)

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    @staticmethod
    def reset(name: str | None = None) -> None:
        if name is None:
            _STORES.clear()
        else:
            _STORES.pop(name, None)
