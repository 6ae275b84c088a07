"""drkit's repository format: content-addressed, deduplicated, compressed, encrypted."""

from drkit.repository.manifest import LogRecord, Manifest, StreamRef
from drkit.repository.repo import Repository

__all__ = ["LogRecord", "Manifest", "Repository", "StreamRef"]
