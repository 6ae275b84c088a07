"""Retry with exponential backoff and jitter, as a wrapper around any storage."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TypeVar

from drkit.errors import TransientStorageError
from drkit.storage.base import Capabilities, ObjectInfo, Storage

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryingStorage(Storage):
    """Retries :class:`TransientStorageError` up to ``attempts`` times within ``deadline`` s."""

    def __init__(
        self,
        inner: Storage,
        attempts: int = 8,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        deadline: float = 300.0,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.deadline = deadline

    @property  # type: ignore[override]
    def capabilities(self) -> Capabilities:
        # Delegated, not copied: a backend may probe its capabilities lazily (S3 object lock).
        return self.inner.capabilities

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        start = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStorageError as exc:
                elapsed = time.monotonic() - start
                if attempt == self.attempts or elapsed >= self.deadline:
                    raise TransientStorageError(
                        f"{what} failed after {attempt} attempts in {elapsed:.1f}s: {exc}"
                    ) from exc
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                log.warning("%s: transient failure (%s), retry %d in %.2fs", what, exc, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes, *, exclusive: bool = True) -> None:
        self._call(f"put {key}", lambda: self.inner.put(key, data, exclusive=exclusive))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(f"get {key}", lambda: self.inner.get(key, offset, length))

    def stat(self, key: str) -> ObjectInfo | None:
        return self._call(f"stat {key}", lambda: self.inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # A listing is materialised per attempt so a failure mid-way restarts it rather than
        # yielding a silently short result.
        items = self._call(f"list {prefix!r}", lambda: list(self.inner.list(prefix)))
        return iter(items)

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.inner.delete(key))

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        keys = list(keys)
        return self._call("delete_many", lambda: self.inner.delete_many(keys))

    def now(self) -> datetime | None:
        return self._call("server time", self.inner.now)

    def close(self) -> None:
        self.inner.close()
