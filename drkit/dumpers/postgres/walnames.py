"""WAL file names, LSNs and timeline history (pure functions)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
PARTIAL_RE = re.compile(r"^([0-9A-F]{24})\.partial$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
BACKUP_RE = re.compile(r"^([0-9A-F]{24})\.([0-9A-F]{8})\.backup$")
#: A sealed partial copy of a segment from ``drkit pg receive``: the segment's name and the
#: byte offset its received WAL reaches (hex), so each seal is its own, immutable record.
RECEIVED_RE = re.compile(r"^([0-9A-F]{24})\.([0-9A-F]{8})\.received$")
DEFAULT_SEG_SIZE = 16 * 1024 * 1024


def parse_lsn(text: str) -> int:
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segs_per_xlogid(seg_size: int) -> int:
    return 0x100000000 // seg_size


def segment_name(tli: int, segno: int, seg_size: int = DEFAULT_SEG_SIZE) -> str:
    per = segs_per_xlogid(seg_size)
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment(name: str, seg_size: int = DEFAULT_SEG_SIZE) -> tuple[int, int] | None:
    m = SEGMENT_RE.match(name)
    if not m:
        return None
    tli, log, seg = (int(g, 16) for g in m.groups())
    return tli, log * segs_per_xlogid(seg_size) + seg


def lsn_segno(lsn: int, seg_size: int = DEFAULT_SEG_SIZE) -> int:
    return lsn // seg_size


def is_valid_wal_name(name: str) -> bool:
    return bool(
        SEGMENT_RE.match(name) or PARTIAL_RE.match(name) or HISTORY_RE.match(name) or BACKUP_RE.match(name)
    )


@dataclass(frozen=True)
class HistoryEntry:
    parent_tli: int
    switch_lsn: int


def parse_history(text: str) -> list[HistoryEntry]:
    """Parse a ``NNNNNNNN.history`` file: lines ``parentTLI<TAB>switchpoint<TAB>reason``."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        entries.append(HistoryEntry(int(parts[0]), parse_lsn(parts[1])))
    return entries
