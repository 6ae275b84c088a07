"""Small file-object adapters the dumpers share."""

from __future__ import annotations

import io
from typing import IO


class Prefix(io.RawIOBase):
    """The first ``limit`` bytes of ``fh``, read from its current position."""

    def __init__(self, fh: IO[bytes], limit: int) -> None:
        self.fh, self.left = fh, limit

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.fh.read(min(len(b), self.left)) if self.left > 0 else b""
        self.left -= len(data)
        b[: len(data)] = data
        return len(data)
