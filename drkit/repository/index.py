"""Index files: which pack holds which chunk, at which offset.

An index object ``index/<random id>`` is sealed JSON::

    {"version": 1, "packs": [{"id": PACKID, "blobs": [[ID, OFFSET, LENGTH, RAW_LENGTH], ...]}]}

Writers add index files; they never change one.  The in-memory :class:`Index` merges them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    pack: str
    offset: int
    length: int
    raw_length: int

    def as_list(self, blob_id: str) -> list[object]:
        return [blob_id, self.pack, self.offset, self.length, self.raw_length]


class Index:
    """Thread-safe map chunk id (hex) -> :class:`Location`."""

    def __init__(self) -> None:
        self._map: dict[str, Location] = {}
        self._lock = threading.Lock()

    def __contains__(self, blob_id: str) -> bool:
        return blob_id in self._map

    def __len__(self) -> int:
        return len(self._map)

    def get(self, blob_id: str) -> Location | None:
        return self._map.get(blob_id)

    def add(self, blob_id: str, loc: Location) -> None:
        with self._lock:
            self._map.setdefault(blob_id, loc)

    def packs(self) -> set[str]:
        return {loc.pack for loc in self._map.values()}

    def merge_document(self, doc: dict) -> None:
        for pack in doc.get("packs", []):
            for blob_id, offset, length, raw in pack["blobs"]:
                self.add(blob_id, Location(pack["id"], int(offset), int(length), int(raw)))


def encode_index(packs: dict[str, list[tuple[str, int, int, int]]]) -> bytes:
    doc = {
        "version": 1,
        "packs": [{"id": pid, "blobs": [list(b) for b in blobs]} for pid, blobs in packs.items()],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_index(data: bytes) -> dict:
    return json.loads(data)
