"""Which packs ``drkit verify --sample P`` reads, and the chunk-location check of the packs it
(or ``--quick``) does not read.

**The sample.** Every pack has a fixed position on a ring of ``2**64`` points: the first 8 bytes
(big-endian) of ``BLAKE2b(pack id, person=b"drkit-vsample")``.  A run with seed ``s`` and
percentage ``P`` reads the packs whose position lies on the arc ``[s*w, (s+1)*w)`` (mod
``2**64``), where ``w = ceil(P/100 * 2**64)``.  The arcs of seeds ``s, s+1, ..., s+k-1`` with
``k = ceil(2**64 / w)`` (at most ``ceil(100/P)``) are adjacent and together cover the whole ring,
so **any k consecutive seeds read every pack at least once** -- whatever the pack ids, with no
state kept between runs.  The positions look random (a pack's id is random and the hash mixes
it), so each run reads about P % of the packs.

**The seed.** ``--seed N`` replays a run exactly.  Without it the seed is the number of the
current week since the Unix epoch (``floor(unix time / 604800)``; weeks start on Thursday
00:00 UTC), so a weekly job reads every pack that exists for ``ceil(100/P)`` consecutive weeks
at least once in those weeks (``--sample 25``: every 4 weeks).  Runs within the same week read
the same packs; a daily job wanting a new arc each day passes ``--seed $(( $(date +%s) / 86400 ))``.
The report prints the seed used.

**What is not read.** A chunk in a pack the run does not read (all of them with ``--quick``) is
checked without reading it: its pack exists, its location lies inside the pack, and the pack's
sealed header (or, if the header is damaged, an index file) lists the chunk at that location.
A flipped byte inside a chunk's sealed body is invisible to that check; only a read (the full
verify, or the run whose sample holds the pack) finds it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from fractions import Fraction

from drkit.errors import ConfigError

RING = 1 << 64
WEEK = 7 * 24 * 3600
_PERSON = b"drkit-vsample"


def check_percent(percent: float) -> Fraction:
    """``percent`` as an exact fraction; raise :class:`ConfigError` unless ``0 < percent <= 100``."""
    try:
        value = Fraction(percent)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"--sample {percent!r} is not a number: give a percentage of packs, 0 < P <= 100") from None
    if not 0 < value <= 100:
        raise ConfigError(f"--sample {percent} is out of range: give a percentage of packs, 0 < P <= 100 "
                          "(100 reads every pack, like a full verify)")
    return value


def default_seed(now: float | None = None) -> int:
    """The seed of a run without ``--seed``: the week number since the Unix epoch."""
    return int((time.time() if now is None else now) // WEEK)


def position(pack_id: str) -> int:
    """The pack's fixed point on the ring, in ``[0, 2**64)``."""
    return int.from_bytes(hashlib.blake2b(pack_id.encode(), digest_size=8, person=_PERSON).digest(), "big")


def arc(percent: float, seed: int) -> tuple[int, int]:
    """``(start, width)`` of the arc a run with ``percent`` and ``seed`` reads."""
    width = min(RING, max(1, math.ceil(check_percent(percent) * RING / 100)))
    return (seed * width) % RING, width


def cycle_length(percent: float) -> int:
    """How many consecutive seeds (weeks, by default) read every pack at least once."""
    _, width = arc(percent, 0)
    return -(-RING // width)


def in_sample(pack_id: str, percent: float, seed: int) -> bool:
    start, width = arc(percent, seed)
    return (position(pack_id) - start) % RING < width


def choose(pack_ids: Iterable[str], percent: float, seed: int) -> set[str]:
    """The pack ids a run with ``percent`` and ``seed`` reads."""
    start, width = arc(percent, seed)
    return {p for p in pack_ids if (position(p) - start) % RING < width}


def location_problem(ref: list, size: int | None, header: set[tuple[str, int, int, int]] | None,
                     indexed: set[tuple[str, int, int, int]] | None, first: int) -> str | None:
    """Why chunk reference ``ref`` (``[chunk id, pack id, offset, length, raw length]``) cannot
    be right, without reading the chunk; ``None`` if nothing is wrong that can be seen so.

    ``size``: the pack's stored size (``None``: the pack is missing); ``header``: the blobs its
    sealed header lists (``None``: the header does not read); ``indexed``: what the index files
    say the pack holds (``None``: no index names it); ``first``: where the first blob may start
    (the length of the pack magic)."""
    blob_id, offset, length, raw = str(ref[0]), int(ref[2]), int(ref[3]), int(ref[4])
    what = f"chunk {blob_id[:16]} at {offset}+{length}"
    if size is None:
        return f"{what} unavailable: the pack is missing"
    if offset < first or length <= 0 or offset + length > size:
        return f"{what} lies outside the {size}-byte pack"
    entry = (blob_id, offset, length, raw)
    if header is not None:
        return None if entry in header else f"{what} is not in the pack's sealed header"
    if indexed is not None and entry not in indexed:
        return f"{what} is in neither the pack's header (damaged) nor any index file"
    return None
