"""Storage backends, picked by URL scheme from one registry.

``file:///path`` (default, :mod:`drkit.storage.local`), ``s3://bucket/prefix``
(:mod:`drkit.storage.s3`), ``memory://name`` (tests).  Retry with backoff is a wrapper
(:mod:`drkit.storage.retry`) around any backend, not code inside each driver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from drkit.errors import ConfigError
from drkit.storage.base import Capabilities, ObjectInfo, Storage

__all__ = ["Capabilities", "ObjectInfo", "Storage", "open_storage", "register_scheme"]

_Factory = Callable[[str, Any], Storage]
_REGISTRY: dict[str, _Factory] = {}


def register_scheme(scheme: str, factory: _Factory) -> None:
    _REGISTRY[scheme] = factory


def _file(url: str, _opts: Any) -> Storage:
    from drkit.storage.local import LocalStorage

    parsed = urlparse(url)
    path = parsed.path if parsed.scheme else url
    if parsed.netloc:
        raise ConfigError(f"file URL must be file:///absolute/path, got {url!r}")
    return LocalStorage(path)


def _memory(url: str, _opts: Any) -> Storage:
    from drkit.storage.memory import MemoryStorage

    return MemoryStorage(urlparse(url).netloc or "default")


def _s3(url: str, opts: Any) -> Storage:
    from drkit.storage.s3 import S3Storage

    parsed = urlparse(url)
    if not parsed.netloc:
        raise ConfigError(f"S3 URL must be s3://bucket[/prefix], got {url!r}")
    return S3Storage(bucket=parsed.netloc, prefix=parsed.path.lstrip("/"), options=opts)


register_scheme("file", _file)
register_scheme("", _file)
register_scheme("memory", _memory)
register_scheme("s3", _s3)


def open_storage(url: str, s3_options: Any = None, *, retry: bool = True) -> Storage:
    """Open the storage for ``url``; wrap it in retries unless ``retry`` is false."""
    scheme = urlparse(url).scheme
    try:
        factory = _REGISTRY[scheme]
    except KeyError:
        known = ", ".join(sorted(s for s in _REGISTRY if s))
        raise ConfigError(f"unknown repository URL scheme {scheme!r} (known: {known})") from None
    storage = factory(url, s3_options)
    if retry:
        from drkit.storage.retry import RetryingStorage

        storage = RetryingStorage(storage)
    return storage
